"""Reference .npy files (runtime/src/npy.rs): numpy.save of small arrays in every dtype the
runtime reads and writes (float32, float16, int64, int32, float64, uint8), with shapes whose
headers pad differently, a 0-d and an empty array, and two files numpy writes in another layout
than the runtime's writer: a Fortran-order array and a big-endian one.

Run once by hand from the repository root:

    "$(scripts/pyenv.sh)" tests/reference/npy.py

Writes into tests/data/npy/:
  <name>.npy   numpy.save(path, array) (format 1.0; C order and little-endian but for the
               two cases named so)
  cases.json   per file: dtype, shape, the values in C order (floats as their IEEE-754 bit
               patterns) and `native` (whether the file is C order and little-endian, so that
               writing the values back gives the same bytes), plus numpy's version
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
    yield "f64_2x3", np.array([[0.1, -2.5, 1e-300], [np.pi, -0.0, 1e300]], np.float64)
    yield "u8_2x3x3", np.arange(0, 255, 14, dtype=np.uint8)[:18].reshape(2, 3, 3)
    yield "f32_fortran", np.asfortranarray(np.arange(6, dtype=np.float32).reshape(2, 3) - 2.5)
    yield "f32_big_endian", np.array([[1.5, -2.0], [3e-5, 1e30]], ">f4")


def main():
    OUT.mkdir(parents=True, exist_ok=True)
    out = {"generated_by": "tests/reference/npy.py", "numpy": np.__version__, "cases": []}
    for name, array in cases():
        np.save(OUT / f"{name}.npy", array)
        # C-order values in native (little-endian) byte order, so that a view as unsigned
        # integers gives the IEEE-754 bit patterns.
        flat = np.ascontiguousarray(array).reshape(-1).astype(array.dtype.newbyteorder("<"))
        bits = {np.float16: np.uint16, np.float32: np.uint32, np.float64: np.uint64}.get(
            array.dtype.type)
        values = (flat.view(bits) if bits else flat).tolist()
        native = bool(array.flags.c_contiguous and array.dtype.byteorder in "<=|")
        out["cases"].append({"file": f"{name}.npy", "dtype": str(flat.dtype),
                             "shape": list(array.shape), "values": values, "native": native})
    (OUT / "cases.json").write_text(json.dumps(out, indent=1) + "\n")
    print(f"{len(out['cases'])} files -> {OUT}")


if __name__ == "__main__":
    main()
