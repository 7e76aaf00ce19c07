"""Reference .npy files (runtime/src/npy.rs): numpy.save of small arrays in every dtype the
runtime reads and writes (float32, float16, int64, int32), with shapes whose headers pad
differently, a 0-d and an empty array.

Run once by hand from the repository root:

    "$(scripts/pyenv.sh)" tests/reference/npy.py

Writes into tests/data/npy/:
  <name>.npy   numpy.save(path, array) (format 1.0, C order, little-endian)
  cases.json   per file: dtype, shape and the values (floats as their IEEE-754 bit patterns),
               plus numpy's version
"""

import json
import pathlib

import numpy as np

OUT = pathlib.Path(__file__).resolve().parents[1] / "data" / "npy"


def cases():
    rng = np.random.default_rng(20261201)
    yield "f32_2x3", np.array([[0.5, -1.0, 2.0], [3.25, 1e-8, np.finfo(np.float32).max]], np.float32)
    yield "f32_noise", rng.standard_normal((1, 4, 8, 12)).astype(np.float32)
    yield "f32_scalar", np.array(7.5, np.float32)
    yield "f16_1x2", np.array([[0.1, 1.0]], np.float16)
    yield "f16_3", np.array([65504.0, -0.0, 6e-8], np.float16)
    yield "i64_3", np.array([49406, -1, 0], np.int64)
    yield "i64_2x77", np.tile(np.r_[49406, np.full(76, 49407)], (2, 1)).astype(np.int64)
    yield "i32_empty", np.zeros((0,), np.int32)
    yield "i32_2x2x2", np.arange(-4, 4, dtype=np.int32).reshape(2, 2, 2)


def main():
    OUT.mkdir(parents=True, exist_ok=True)
    out = {"generated_by": "tests/reference/npy.py", "numpy": np.__version__, "cases": []}
    for name, array in cases():
        np.save(OUT / f"{name}.npy", array)
        flat = array.reshape(-1)
        bits = {np.float16: np.uint16, np.float32: np.uint32}.get(array.dtype.type)
        values = (flat.view(bits) if bits else flat).tolist()
        out["cases"].append({"file": f"{name}.npy", "dtype": str(array.dtype),
                             "shape": list(array.shape), "values": values})
    (OUT / "cases.json").write_text(json.dumps(out, indent=1) + "\n")
    print(f"{len(out['cases'])} files -> {OUT}")


if __name__ == "__main__":
    main()
