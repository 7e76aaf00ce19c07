"""FP16 graphs keep the timestep embedding in float32, as diffusers computes it.

The reference is PyTorch in float32 (diffusers' own get_time_embed / get_aug_embed on the SDXL
timestep path, exporter-specs/fp16_timestep.py) and the committed goldens of models/tiny; the
graphs run on onnxruntime's CPU provider. Needs torch, diffusers, onnx and onnxruntime (target/refenv).
"""

from __future__ import annotations

import functools
import json
import pathlib
import sys
import unittest

import numpy as np

ROOT = pathlib.Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "exporter-specs"))

import fp16_timestep  # noqa: E402
from onnx_passes import to_fp16  # noqa: E402

TINY = ROOT / "models" / "tiny"


@functools.cache
def fp16_graph(name: str, keep: bool = True):
    """models/tiny's graph converted to FP16 (shared by the tests: the conversion takes seconds)."""
    import onnx

    return to_fp16(onnx.load(str(TINY / f"{name}.onnx")), disable_shape_infer=False, fp32_timestep_embedding=keep)


def tensor_types(model) -> dict[str, int]:
    import onnx

    inferred = onnx.shape_inference.infer_shapes(model)
    types = {v.name: v.type.tensor_type.elem_type for v in
             list(inferred.graph.value_info) + list(inferred.graph.input) + list(inferred.graph.output)}
    types.update({t.name: t.data_type for t in inferred.graph.initializer})
    return types


class TimestepEmbeddingTest(unittest.TestCase):
    def test_tiny_unet_and_controlnet_structure(self):
        import onnx
        from onnx import TensorProto

        for name in ("unet", "controlnet"):
            model = fp16_graph(name)
            onnx.checker.check_model(model)
            inputs = {v.name: v.type.tensor_type.elem_type for v in model.graph.input}
            self.assertEqual(inputs.pop("timestep"), TensorProto.FLOAT, name)
            self.assertEqual(set(inputs.values()), {TensorProto.FLOAT16}, name)
            types = tensor_types(model)
            trig = [n for n in model.graph.node if n.op_type in ("Sin", "Cos")]
            # One sin and one cos each for the timestep and for time_ids.
            self.assertEqual(len(trig), 4, name)
            for node in trig:
                self.assertEqual(types[node.input[0]], TensorProto.FLOAT, f"{name}: {node.name} reads {node.input[0]}")
                producer = next(n for n in model.graph.node if node.input[0] in n.output)
                self.assertNotEqual(producer.op_type, "Cast", f"{name}: {node.name} reads a cast, not the float32 product")
            unconverted = fp16_graph(name, keep=False)
            types = tensor_types(unconverted)
            for node in (n for n in unconverted.graph.node if n.op_type in ("Sin", "Cos")):
                self.assertEqual(types[node.input[0]], TensorProto.FLOAT16, name)

    def test_tiny_unet_and_controlnet_against_goldens(self):
        manifest = json.loads((TINY / "manifest.json").read_text())
        for name in ("unet", "controlnet"):
            entry = manifest["graphs"][name]
            folder = TINY / entry["golden"]
            inputs = {t["name"]: np.load(folder / f"input.{t['name']}.npy") for t in entry["inputs"]}
            expected = {t["name"]: np.load(folder / f"output.{t['name']}.npy") for t in entry["outputs"]}
            got = fp16_timestep.run_onnx(fp16_graph(name), inputs)
            scale = max(float(np.abs(v).max()) for v in expected.values())
            error = max(float(np.abs(got[k] - v).max()) for k, v in expected.items()) / scale
            # Measured 1.2e-3 (unet) and 9.0e-4 (controlnet); 2.4e-3 / 2.7e-3 with the embedding in float16.
            self.assertLess(error, 2e-3, name)

    def test_full_size_timestep_path_near_999_and_1(self):
        errors = fp16_timestep.timestep_path_errors()
        self.assertEqual(errors["timesteps"][0], 999.0)
        self.assertIn(1.0, errors["timesteps"])
        for t, kept, converted in zip(errors["timesteps"], errors["fp32_embedding"], errors["fp16_embedding"]):
            # Measured at most 3.7e-4 (largest value 0.755); in float16 the sinusoids alone give 1e-2 to 2.3e-2.
            self.assertLess(kept, 1e-3, f"timestep {t}")
            self.assertGreater(converted, 5e-3, f"timestep {t}: float16 sinusoids should be visibly worse")
            self.assertLess(kept, 2 * max(errors["diffusers_fp16"]), f"timestep {t}: worse than diffusers in float16")


if __name__ == "__main__":
    unittest.main()
