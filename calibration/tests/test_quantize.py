"""calibration/quantize.py on a small stand-in set whose UNet keeps its weights in an external data
file (as every SDXL-sized graph does): the quantized graph runs in onnxruntime close to the FP32
one, the high-precision layers stay float, the INT8 set names the source set's other files through
`base`, and the output is byte-identical for the same inputs.

Needs onnx, numpy and onnxruntime at the versions calibration/quantize-requirements.txt pins."""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import pathlib
import sys
import tempfile
import unittest

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper

ROOT = pathlib.Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "calibration"))

import quantize  # noqa: E402


def sha256_of(path: pathlib.Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def standin_unet(path: pathlib.Path) -> None:
    """sample [1,4,8,8] -> conv_in (kept float) -> a resnet conv -> flatten -> two Linears of that
    input, added -> noise_pred [1,64,16]; node names are module paths, as the exporter writes
    them."""
    rng = np.random.default_rng(0)

    def weight(name, *shape):
        return numpy_helper.from_array((rng.standard_normal(shape) * 0.2).astype(np.float32), name)

    nodes = [
        helper.make_node("Conv", ["sample", "w_in", "b_in"], ["h0"], name="/unet/conv_in/Conv", pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["h0"], ["h1"], name="/unet/act/Relu"),
        helper.make_node("Conv", ["h1", "w_res", "b_res"], ["h2"], name="/unet/down_blocks.0/resnets.0/conv1/Conv",
                         pads=[1, 1, 1, 1]),
        helper.make_node("Reshape", ["h2", "shape"], ["h3"], name="/unet/flatten/Reshape"),
        # Two projections of one input, as attention's to_q/to_k/to_v.
        helper.make_node("MatMul", ["h3", "w_proj"], ["h4"], name="/unet/down_blocks.0/to_q/MatMul"),
        helper.make_node("MatMul", ["h3", "w_proj2"], ["h5"], name="/unet/down_blocks.0/to_k/MatMul"),
        helper.make_node("Add", ["h4", "h5"], ["noise_pred"], name="/unet/down_blocks.0/Add"),
    ]
    initializers = [
        weight("w_in", 64, 4, 3, 3), weight("b_in", 64), weight("w_res", 64, 64, 3, 3), weight("b_res", 64),
        numpy_helper.from_array(np.array([1, 64, 64], dtype=np.int64), "shape"), weight("w_proj", 64, 16),
        weight("w_proj2", 64, 16),
    ]
    graph = helper.make_graph(
        nodes, "unet", [helper.make_tensor_value_info("sample", TensorProto.FLOAT, [1, 4, 8, 8])],
        [helper.make_tensor_value_info("noise_pred", TensorProto.FLOAT, [1, 64, 16])], initializers)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, path, save_as_external_data=True, all_tensors_to_one_file=True,
              location=path.name + ".data", size_threshold=1024)


def standin_set(root: pathlib.Path) -> tuple[pathlib.Path, pathlib.Path]:
    """An FP32 set (UNet with external data, one tokenizer file) and calibration data for it."""
    fp32, calib = root / "standin", root / "calib"
    fp32.mkdir()
    standin_unet(fp32 / "unet.onnx")
    (fp32 / "tokenizer").mkdir()
    (fp32 / "tokenizer" / "tokenizer.json").write_text("{}")
    (fp32 / "golden" / "unet").mkdir(parents=True)
    (fp32 / "golden" / "unet" / "input.sample.npy").write_bytes(b"")
    entry = {
        "file": "unet.onnx", "sha256": sha256_of(fp32 / "unet.onnx"),
        "external_data": [{"file": "unet.onnx.data", "sha256": sha256_of(fp32 / "unet.onnx.data")}],
        "precision": "fp32", "opset": 17, "golden": "golden/unet",
    }
    manifest = {
        "format": 3, "name": "standin", "precision": "fp32", "source": {"kind": "random"},
        "tokenizers": {"tokenizer": {"file": "tokenizer/tokenizer.json", "sha256": "0" * 64}},
        "graphs": {"unet": entry},
    }
    (fp32 / "manifest.json").write_text(json.dumps(manifest))
    calib.mkdir()
    rng = np.random.default_rng(1)
    records = []
    for g in range(4):
        name = f"sample.{g}.npy"
        np.save(calib / name, rng.standard_normal((1, 4, 8, 8)).astype(np.float32))
        records.append({"graph": "unet", "generation": g, "step": g, "inputs": {"sample": name}})
    index = {"format": 1, "complete": True, "graphs": {"unet": entry["sha256"]}, "steps": 10,
             "guidance": 5.5, "samples_per_generation": 1, "generations": [{"index": g} for g in range(4)],
             "records": records}
    (calib / "calibration.json").write_text(json.dumps(index))
    return fp32, calib


def qdq_types(model) -> dict[str, set[int]]:
    """The element types DequantizeLinear nodes read: of activations (from a QuantizeLinear) and
    of weights (initializers)."""
    initializers = {t.name: t for t in model.graph.initializer}
    produced = {o: n for n in model.graph.node for o in n.output}
    types = {"activation": set(), "weight": set()}
    for dq in (n for n in model.graph.node if n.op_type == "DequantizeLinear"):
        source = dq.input[0]
        if source in initializers:
            types["weight"].add(initializers[source].data_type)
        elif produced[source].op_type == "QuantizeLinear":
            types["activation"].add(initializers[produced[source].input[2]].data_type)
    return types


def run(path: pathlib.Path, sample: np.ndarray) -> np.ndarray:
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return session.run(None, {"sample": sample})[0]


class QuantizeExternalData(unittest.TestCase):
    def test_quantizes_a_graph_with_external_data_beside_its_set(self):
        with tempfile.TemporaryDirectory() as tmp:
            root = pathlib.Path(tmp)
            fp32, calib = standin_set(root)
            out = root / "standin-int8"
            self.assertEqual(quantize.main([str(fp32), str(calib), str(out), "--graphs", "unet", "--holdout", "2"]), 0)

            manifest = json.loads((out / "manifest.json").read_text())
            self.assertEqual(manifest["precision"], "int8")
            self.assertEqual(manifest["base"], "standin")
            self.assertEqual(manifest["tokenizers"]["tokenizer"]["file"], "../standin/tokenizer/tokenizer.json")
            entry = manifest["graphs"]["unet"]
            self.assertEqual((entry["file"], entry["precision"], entry["golden"]),
                             ("unet.onnx", "int8", "../standin/golden/unet"))
            self.assertEqual(entry["sha256"], sha256_of(out / "unet.onnx"))
            report = entry["quantization"]
            self.assertEqual(report["quantized_nodes"], 3)
            self.assertEqual(report["float_weight_nodes"], {"/unet/conv_in/Conv": "conv_in"})
            self.assertEqual(report["calibration_records"], 2)
            self.assertEqual(report["holdout"]["records"], 2)
            self.assertGreater(report["holdout"]["min_cosine"], 0.99)

            model = onnx.load(out / "unet.onnx")
            by_name = {n.name: n for n in model.graph.node}
            conv_in_inputs = by_name["/unet/conv_in/Conv"].input
            self.assertIn("w_in", conv_in_inputs, "conv_in must keep its float weight")
            types = [n.op_type for n in model.graph.node]
            self.assertGreater(types.count("DequantizeLinear"), 2)
            # S8S8: int8 activations and weights (the convolutions' biases in int32).
            self.assertEqual(qdq_types(model), {"activation": {TensorProto.INT8},
                                                "weight": {TensorProto.INT8, TensorProto.INT32}})

            sample = np.random.default_rng(7).standard_normal((1, 4, 8, 8)).astype(np.float32)
            a, b = run(fp32 / "unet.onnx", sample), run(out / "unet.onnx", sample)
            cosine = float(np.dot(a.ravel(), b.ravel()) / (np.linalg.norm(a) * np.linalg.norm(b)))
            self.assertGreater(cosine, 0.99)
            self.assertGreater(float(np.max(np.abs(a - b))), 0.0, "the graph was not quantized")

            again = root / "again" / "standin-int8"
            again.parent.mkdir()
            self.assertEqual(quantize.main([str(fp32), str(calib), str(again), "--graphs", "unet",
                                            "--holdout", "2"]), 0)
            self.assertEqual(sha256_of(again / "unet.onnx"), entry["sha256"])
            # Not beside the source: the shared files are copied, external data included.
            copied = json.loads((again / "manifest.json").read_text())
            self.assertNotIn("base", copied)
            self.assertTrue((again / "tokenizer" / "tokenizer.json").is_file())
            self.assertTrue((again / "golden" / "unet" / "input.sample.npy").is_file())
            # The FP32 graph being replaced is not copied: no stale external data beside the INT8 one.
            self.assertEqual(copied["graphs"]["unet"]["external_data"], [])
            self.assertFalse((again / "unet.onnx.data").exists())

    def test_uint8_activations_with_int8_weights(self):
        with tempfile.TemporaryDirectory() as tmp:
            root = pathlib.Path(tmp)
            fp32, calib = standin_set(root)
            out = root / "u8s8"
            self.assertEqual(quantize.main([str(fp32), str(calib), str(out), "--graphs", "unet",
                                            "--activation-type", "uint8"]), 0)
            manifest = json.loads((out / "manifest.json").read_text())
            self.assertEqual(manifest["graphs"]["unet"]["quantization"]["activations"], "uint8 per-tensor symmetric")
            model = onnx.load(out / "unet.onnx")
            self.assertEqual(qdq_types(model), {"activation": {TensorProto.UINT8},
                                                "weight": {TensorProto.INT8, TensorProto.INT32}})
            # Symmetric in uint8: the activations' zero point is the middle of the range.
            initializers = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
            zero_points = {int(initializers[n.input[2]]) for n in model.graph.node if n.op_type == "QuantizeLinear"}
            self.assertEqual(zero_points, {128})
            sample = np.random.default_rng(7).standard_normal((1, 4, 8, 8)).astype(np.float32)
            a, b = run(fp32 / "unet.onnx", sample), run(out / "unet.onnx", sample)
            cosine = float(np.dot(a.ravel(), b.ravel()) / (np.linalg.norm(a) * np.linalg.norm(b)))
            self.assertGreater(cosine, 0.99)

    def test_data_recorded_on_another_graph_is_refused(self):
        with tempfile.TemporaryDirectory() as tmp:
            root = pathlib.Path(tmp)
            fp32, calib = standin_set(root)
            index = json.loads((calib / "calibration.json").read_text())
            index["graphs"]["unet"] = "f" * 64
            (calib / "calibration.json").write_text(json.dumps(index))
            with self.assertRaises(SystemExit) as raised:
                quantize.main([str(fp32), str(calib), str(root / "out"), "--graphs", "unet"])
            self.assertEqual(raised.exception.code, 2)
            self.assertFalse((root / "out").exists())
            self.assertEqual(list(root.glob("out.partial*")), [])

    def test_bad_inputs_are_one_line_refusals_that_leave_nothing(self):
        def edit_manifest(change):
            def apply(fp32, calib):
                path = fp32 / "manifest.json"
                manifest = json.loads(path.read_text())
                change(manifest)
                path.write_text(json.dumps(manifest))
            return apply

        def edit_index(change):
            def apply(fp32, calib):
                path = calib / "calibration.json"
                index = json.loads(path.read_text())
                change(index)
                path.write_text(json.dumps(index))
            return apply

        def write_sample(value):
            def apply(fp32, calib):
                np.save(calib / "sample.0.npy", value)
            return apply

        def flip_weight(fp32, calib):
            data = bytearray((fp32 / "unet.onnx.data").read_bytes())
            data[100] ^= 0xFF
            (fp32 / "unet.onnx.data").write_bytes(bytes(data))

        cases = [
            (edit_manifest(lambda m: m.update(base="tiny")), "shares files with the set 'tiny'"),
            (edit_manifest(lambda m: m["graphs"]["unet"].update(file="../x/unet.onnx")), "relative path inside"),
            (edit_manifest(lambda m: m.update(precision="int8")), "is not an FP32 set"),
            (edit_manifest(lambda m: m.pop("tokenizers")), "tokenizers must be a JSON object"),
            (edit_index(lambda i: i.update(complete=False)), "the calibration is not complete"),
            (edit_index(lambda i: i.update(format=True)), "calibration format True"),
            (edit_index(lambda i: i["records"][0]["inputs"].update(sample="../../etc/passwd")),
             "relative path inside"),
            (edit_index(lambda i: i["records"][0].pop("generation")), "generation must be a whole number"),
            (edit_index(lambda i: i.update(records=None)), "records must be a list"),
            (write_sample(np.full((1, 4, 8, 8), np.nan, dtype=np.float32)), "holds NaN or infinity"),
            (write_sample(np.zeros((1, 4, 8, 8), dtype=np.float64)), "is not a float32 array"),
            (write_sample(np.zeros((4,), dtype=np.float32)), "does not fit the graph"),
            (flip_weight, "unet.onnx.data does not match its sha256"),
        ]
        for make_bad, needle in cases:
            with self.subTest(needle), tempfile.TemporaryDirectory() as tmp:
                root = pathlib.Path(tmp)
                fp32, calib = standin_set(root)
                make_bad(fp32, calib)
                stderr = io.StringIO()
                with self.assertRaises(SystemExit) as raised, contextlib.redirect_stderr(stderr):
                    quantize.main([str(fp32), str(calib), str(root / "out"), "--graphs", "unet"])
                self.assertEqual(raised.exception.code, 2)
                message = stderr.getvalue()
                self.assertIn(needle, message)
                self.assertEqual(message.count("\n"), 1, message)
                self.assertEqual(sorted(p.name for p in root.iterdir()), ["calib", "standin"])

    def test_a_source_set_reached_through_a_link_beside_out_is_the_base(self):
        with tempfile.TemporaryDirectory() as tmp:
            root = pathlib.Path(tmp)
            fp32, calib = standin_set(root)
            (root / "links").mkdir()
            (root / "links" / "linked").symlink_to(fp32)
            out = root / "links" / "linked-int8"
            self.assertEqual(quantize.main([str(root / "links" / "linked"), str(calib), str(out),
                                            "--graphs", "unet"]), 0)
            manifest = json.loads((out / "manifest.json").read_text())
            self.assertEqual(manifest["base"], "linked")
            self.assertEqual(sorted(p.name for p in out.iterdir()), ["manifest.json", "unet.onnx"])

    def test_an_out_folder_inside_the_source_set_is_refused(self):
        with tempfile.TemporaryDirectory() as tmp:
            root = pathlib.Path(tmp)
            fp32, calib = standin_set(root)
            with self.assertRaises(SystemExit) as raised:
                quantize.main([str(fp32), str(calib), str(fp32 / "int8"), "--graphs", "unet"])
            self.assertEqual(raised.exception.code, 2)
            self.assertFalse((fp32 / "int8").exists())


if __name__ == "__main__":
    unittest.main()
