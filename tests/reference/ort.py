"""Reference data for tests/ort.rs: a small FP16 graph (tanh(x @ W + b), all in
float16 with a dynamic batch axis) and the outputs onnxruntime's Python API (CPU provider)
computes for an input, so that the Rust backend's f32 -> f16 input conversion and f16 -> f32
read-back can be checked. Run once by hand:

    "$(scripts/pyenv.sh)" tests/reference/ort.py
"""

import json
import pathlib

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper

out_dir = pathlib.Path(__file__).resolve().parents[1] / "data" / "ort"
out_dir.mkdir(parents=True, exist_ok=True)

rng = np.random.default_rng(7)
w = rng.normal(size=(8, 5)).astype(np.float16)
b = rng.normal(size=(5,)).astype(np.float16)
graph = helper.make_graph(
    [
        helper.make_node("MatMul", ["x", "w"], ["xw"]),
        helper.make_node("Add", ["xw", "b"], ["xwb"]),
        helper.make_node("Tanh", ["xwb"], ["y"]),
    ],
    "fp16_dense",
    [helper.make_tensor_value_info("x", TensorProto.FLOAT16, ["batch", 8])],
    [helper.make_tensor_value_info("y", TensorProto.FLOAT16, ["batch", 5])],
    [numpy_helper.from_array(w, "w"), numpy_helper.from_array(b, "b")],
)
model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
model.ir_version = 8
onnx.checker.check_model(model)
path = out_dir / "fp16_dense.onnx"
onnx.save(model, path)

x = rng.normal(size=(3, 8)).astype(np.float32)
session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
(y,) = session.run(None, {"x": x.astype(np.float16)})
(out_dir / "fp16_dense.json").write_text(
    json.dumps(
        {
            "onnxruntime": ort.__version__,
            "x": x.tolist(),
            "x_shape": list(x.shape),
            "y": y.astype(np.float32).tolist(),
            "y_shape": list(y.shape),
        },
        indent=1,
    )
    + "\n"
)
print(path)
