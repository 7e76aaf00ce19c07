"""Weightless sets (weights.py strip, export.py --weightless) and materialize.py, on models/tiny.

Needs onnx and numpy only (materialize.py falls back to numpy without torch). The last test runs
the idpatch binary (IDPATCH_BIN, default target/debug/idpatch) on a materialized set.

    python -m unittest discover -s exporter-specs/tests
"""

from __future__ import annotations

import hashlib
import json
import os
import pathlib
import subprocess
import sys
import tempfile
import unittest

import numpy as np

ROOT = pathlib.Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "exporter-specs"))

import compare_structure  # noqa: E402
import materialize  # noqa: E402
import weights  # noqa: E402

TINY = ROOT / "models" / "tiny"


def load_graph(path: pathlib.Path):
    import onnx

    return onnx.load(str(path), load_external_data=False)


def digest(path: pathlib.Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


class WeightlessTest(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.scratch = tempfile.TemporaryDirectory()
        cls.dir = pathlib.Path(cls.scratch.name)
        cls.stripped = cls.dir / "stripped"
        weights.strip_set(TINY, cls.stripped)
        cls.filled = cls.dir / "filled"
        code = materialize.main([str(cls.stripped), str(cls.filled), "--seed", "3", "--device", "cpu"])
        assert code == 0, code

    @classmethod
    def tearDownClass(cls):
        cls.scratch.cleanup()

    def test_strip_keeps_small_and_integer_tensors_and_lays_out_the_rest(self):
        from onnx import TensorProto
        from onnx.external_data_helper import uses_external_data

        manifest = json.loads((self.stripped / "manifest.json").read_text())
        self.assertTrue(manifest["weightless"])
        floating = {TensorProto.FLOAT, TensorProto.FLOAT16, TensorProto.BFLOAT16, TensorProto.DOUBLE}
        for name, entry in manifest["graphs"].items():
            self.assertNotIn("golden", entry)
            self.assertFalse((self.stripped / entry["external_data"][0]["file"]).exists())
            model = load_graph(self.stripped / entry["file"])
            end, spans = 0, []
            for tensor in model.graph.initializer:
                nbytes = weights.tensor_nbytes(tensor)
                detached = tensor.data_type in floating and nbytes > weights.INLINE_LIMIT
                self.assertEqual(uses_external_data(tensor), detached, f"{name}/{tensor.name}")
                if not detached:
                    continue
                self.assertEqual(len(tensor.raw_data), 0)
                info = {e.key: e.value for e in tensor.external_data}
                offset, length = int(info["offset"]), int(info["length"])
                self.assertEqual(info["location"], entry["file"] + ".data")
                self.assertEqual(offset % weights.ALIGNMENT, 0)
                self.assertEqual(length, nbytes)
                spans.append((offset, offset + length))
                end = max(end, offset + length)
            spans.sort()
            for (_, stop), (start, _) in zip(spans, spans[1:]):
                self.assertLessEqual(stop, start, f"{name}: overlapping tensors")
            self.assertGreater(len(spans), 0, name)
            self.assertEqual(entry["external_data"][0]["bytes"], end, name)

    def test_materialized_set_has_the_original_structure(self):
        graphs = json.loads((TINY / "manifest.json").read_text())["graphs"]
        for name, entry in graphs.items():
            difference = compare_structure.compare(TINY / entry["file"], self.filled / entry["file"])
            self.assertIsNone(difference, name)

    def test_materialized_values_are_finite_scaled_and_positive_where_needed(self):
        from onnx import numpy_helper
        from onnx.external_data_helper import uses_external_data

        manifest = json.loads((self.filled / "manifest.json").read_text())
        self.assertNotIn("weightless", manifest)
        self.assertEqual(manifest["source"]["materialized"]["seed"], 3)
        positives_seen = 0
        for name, entry in manifest["graphs"].items():
            for item in entry["external_data"]:
                self.assertEqual(item["sha256"], digest(self.filled / item["file"]), name)
            model = load_graph(self.filled / entry["file"])
            positive = materialize.positive_initializers(model.graph)
            for tensor in model.graph.initializer:
                if not uses_external_data(tensor):
                    continue
                values = numpy_helper.to_array(tensor, str(self.filled)).astype(np.float64)
                self.assertTrue(np.isfinite(values).all(), f"{name}/{tensor.name}")
                if tensor.name in positive:
                    positives_seen += 1
                    self.assertGreaterEqual(values.min(), 0.5, f"{name}/{tensor.name}")
                elif values.size >= 4096:
                    expected = materialize.std_of(list(tensor.dims))
                    self.assertAlmostEqual(values.std() / expected, 1.0, delta=0.1, msg=f"{name}/{tensor.name}")
        # ArcFace keeps BatchNormalization nodes: their variances must not be negative.
        self.assertGreater(positives_seen, 0)

    def test_same_seed_same_bytes_other_seed_other_bytes(self):
        again, other = self.dir / "again", self.dir / "other"
        self.assertEqual(materialize.main([str(self.stripped), str(again), "--seed", "3", "--device", "cpu"]), 0)
        self.assertEqual(materialize.main([str(self.stripped), str(other), "--seed", "4", "--device", "cpu"]), 0)
        data = "unet.onnx.data"
        self.assertEqual(digest(self.filled / data), digest(again / data))
        self.assertNotEqual(digest(self.filled / data), digest(other / data))

    def test_materialize_refuses_a_set_with_weights(self):
        self.assertEqual(materialize.main([str(TINY), str(self.dir / "refused"), "--device", "cpu"]), 2)
        self.assertFalse((self.dir / "refused").exists())

    def test_idpatch_refuses_weightless_and_runs_materialized(self):
        binary = pathlib.Path(os.environ.get("IDPATCH_BIN", ROOT / "target" / "debug" / "idpatch"))
        self.assertTrue(binary.is_file(), f"{binary} not built (cargo build, or set IDPATCH_BIN)")
        refused = subprocess.run(
            [str(binary), "validate", "--models", str(self.stripped)], capture_output=True, text=True
        )
        self.assertEqual(refused.returncode, 2, refused.stderr)
        self.assertIn("materialize.py", refused.stderr)
        image = self.dir / "out.png"
        run = subprocess.run(
            [str(binary), "generate", "--models", str(self.filled), "--layout",
             str(TINY / "examples" / "layout.json"), "--prompt", "three friends", "--steps", "2",
             "--out", str(image)],
            capture_output=True, text=True,
        )
        self.assertEqual(run.returncode, 0, run.stderr)
        self.assertEqual(image.read_bytes()[:8], b"\x89PNG\r\n\x1a\n")


if __name__ == "__main__":
    unittest.main()
