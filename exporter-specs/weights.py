#!/usr/bin/env python3
"""Weightless graph sets: graphs whose weight values are dropped, keeping shapes and dtypes.

Used by export.py --weightless, and on its own to strip an existing set:

    python exporter-specs/weights.py strip SET OUT

writes OUT with the same graphs and tokenizer files, every floating initializer over 1 KiB turned
into a placeholder in `<graph>.onnx.data` (not written), and a manifest marked "weightless" that
lists each data file's size. materialize.py fills such a set with random weights. Needs only onnx
and numpy.
"""

from __future__ import annotations

import hashlib
import json
import pathlib
import shutil
import sys

import numpy as np

# Initializers up to this size keep their values: shape constants, Resize scales, position ids.
INLINE_LIMIT = 1024
ALIGNMENT = 4096


def tensor_nbytes(tensor) -> int:
    import onnx

    itemsize = onnx.helper.tensor_dtype_to_np_dtype(tensor.data_type).itemsize
    return int(np.prod(tensor.dims, dtype=np.int64)) * itemsize


def weight_bytes(model) -> int:
    return sum(tensor_nbytes(t) for t in model.graph.initializer)


def detach_weights(model, base_dir: pathlib.Path, location: str) -> int:
    """Point every floating initializer over 1 KiB at `location` (4 KiB-aligned offsets) and drop
    its values; smaller or integer initializers are read in (from `base_dir` when external) and
    kept inline. Returns the size the data file must have."""
    from onnx import TensorProto
    from onnx.external_data_helper import load_external_data_for_tensor, uses_external_data

    floating = {TensorProto.FLOAT, TensorProto.FLOAT16, TensorProto.BFLOAT16, TensorProto.DOUBLE}
    offset = 0
    for tensor in model.graph.initializer:
        nbytes = tensor_nbytes(tensor)
        if tensor.data_type in floating and nbytes > INLINE_LIMIT:
            for field in ("raw_data", "float_data", "int32_data", "double_data"):
                tensor.ClearField(field)
            del tensor.external_data[:]
            offset = (offset + ALIGNMENT - 1) // ALIGNMENT * ALIGNMENT
            for key, value in (("location", location), ("offset", str(offset)), ("length", str(nbytes))):
                entry = tensor.external_data.add()
                entry.key, entry.value = key, value
            tensor.data_location = TensorProto.EXTERNAL
            offset += nbytes
        elif uses_external_data(tensor):
            load_external_data_for_tensor(tensor, str(base_dir))
            del tensor.external_data[:]
            tensor.data_location = TensorProto.DEFAULT
    return offset


def sha256_of(path: pathlib.Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 22), b""):
            digest.update(block)
    return digest.hexdigest()


def strip_set(src: pathlib.Path, out: pathlib.Path) -> dict:
    """Write a weightless copy of the set `src` to `out`; returns the new manifest."""
    import onnx

    manifest = json.loads((src / "manifest.json").read_text())
    if manifest.get("weightless"):
        raise ValueError(f"{src} is already weightless")
    out.mkdir(parents=True, exist_ok=True)
    skip = {"manifest.json", "golden"}
    for entry in manifest["graphs"].values():
        skip.add(entry["file"])
        skip.update(item["file"] for item in entry.get("external_data", []))
    for item in src.iterdir():
        if item.name in skip:
            continue
        if item.is_dir():
            shutil.copytree(item, out / item.name, dirs_exist_ok=True)
        else:
            shutil.copy2(item, out / item.name)
    for entry in manifest["graphs"].values():
        model = onnx.load(str(src / entry["file"]), load_external_data=False)
        data_name = entry["file"] + ".data"
        size = detach_weights(model, src, data_name)
        onnx.save_model(model, str(out / entry["file"]))
        entry["sha256"] = sha256_of(out / entry["file"])
        entry["external_data"] = [{"file": data_name, "bytes": size}]
        # Golden outputs belong to the original weights.
        entry.pop("golden", None)
    manifest["weightless"] = True
    (out / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")
    return manifest


def main(argv: list[str]) -> int:
    if len(argv) != 3 or argv[0] != "strip":
        print(__doc__, file=sys.stderr)
        return 2
    src, out = pathlib.Path(argv[1]), pathlib.Path(argv[2])
    try:
        manifest = strip_set(src, out)
    except (OSError, ValueError) as error:
        print(f"weights.py: {error}", file=sys.stderr)
        return 2
    total = sum(item["bytes"] for entry in manifest["graphs"].values() for item in entry["external_data"])
    print(f"wrote {out}: {len(manifest['graphs'])} graphs, {total / 1e6:.1f} MB of weights to materialize")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
