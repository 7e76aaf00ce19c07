#!/usr/bin/env python3
"""Fill a weightless graph set (export.py --weightless) with random weights.

A weightless set holds each graph's full structure, already fused and converted exactly as a
normal export would be, but none of its weight data: every floating initializer over 1 KiB points
into a `<graph>.onnx.data` file that does not exist yet. This script writes those files with random
values on the machine that will run the graphs, so a full-size FP16 set (~10 GB) never has to be
exported or copied there. Timing does not depend on weight values; numerical results do, so a
materialized set has no goldens.

usage: materialize.py SET OUT [--seed N] [--device auto|cpu|cuda]

Values: normal with standard deviation 1/sqrt(max(dims[0], numel/dims[0])) for tensors of rank
2 and up (never larger than the usual fan-in scaling, so FP16 activations stay finite), 0.02 for
rank 1, and uniform in [0.5, 1.5] wherever the graph needs a positive value (BatchNormalization
variances, divisors, square roots, logarithms, reciprocals and power bases).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import pathlib
import shutil
import sys
import time

import numpy as np

from weights import sha256_of

POSITIVE_INPUTS = {"BatchNormalization": {4}, "Div": {1}, "Sqrt": {0}, "Log": {0}, "Reciprocal": {0}, "Pow": {0}}


def positive_initializers(graph) -> set[str]:
    names = set()
    for node in graph.node:
        for index in POSITIVE_INPUTS.get(node.op_type, ()):
            if index < len(node.input):
                names.add(node.input[index])
    return names


def std_of(dims: list[int]) -> float:
    if len(dims) >= 2 and dims[0] > 0:
        numel = math.prod(dims)
        return 1.0 / math.sqrt(max(dims[0], numel // dims[0], 1))
    return 0.02


class Values:
    """Random tensors as raw little-endian bytes; torch (GPU when asked) or numpy."""

    def __init__(self, device: str, seed: int):
        self.seed = seed
        self.torch, self.device = None, "cpu"
        if device != "cpu":
            try:
                import torch
            except ImportError:
                torch = None
            if torch is not None:
                self.torch = torch
                self.device = "cuda" if torch.cuda.is_available() else "cpu"
            if device == "cuda" and self.device != "cuda":
                raise SystemExit("materialize.py: --device cuda asked for, but torch with CUDA is not available")

    def make(self, stream: list[int], numel: int, data_type: int, std: float, positive: bool) -> bytes:
        from onnx import TensorProto

        if self.torch is not None:
            torch = self.torch
            generator = torch.Generator(self.device).manual_seed(hash_stream(stream))
            if positive:
                values = torch.rand(numel, generator=generator, device=self.device) + 0.5
            else:
                values = torch.randn(numel, generator=generator, device=self.device) * std
            dtype = {
                TensorProto.FLOAT: torch.float32,
                TensorProto.FLOAT16: torch.float16,
                TensorProto.BFLOAT16: torch.bfloat16,
                TensorProto.DOUBLE: torch.float64,
            }[data_type]
            values = values.to(dtype)
            if dtype == torch.bfloat16:
                values = values.view(torch.int16)
            return values.cpu().numpy().tobytes()
        rng = np.random.default_rng(stream)
        if positive:
            values = rng.random(numel, dtype=np.float32) + 0.5
        else:
            values = rng.standard_normal(numel, dtype=np.float32) * np.float32(std)
        if data_type == TensorProto.FLOAT:
            return values.tobytes()
        if data_type == TensorProto.FLOAT16:
            return values.astype(np.float16).tobytes()
        if data_type == TensorProto.DOUBLE:
            return values.astype(np.float64).tobytes()
        if data_type == TensorProto.BFLOAT16:
            # Round to nearest even on the upper 16 bits.
            bits = values.view(np.uint32)
            bits = bits + 0x7FFF + ((bits >> 16) & 1)
            return (bits >> 16).astype(np.uint16).tobytes()
        raise ValueError(f"unsupported element type {data_type}")


def hash_stream(stream: list[int]) -> int:
    digest = hashlib.sha256(",".join(str(s) for s in stream).encode()).digest()
    return int.from_bytes(digest[:8], "little") & ((1 << 63) - 1)


def materialize_graph(src: pathlib.Path, dst_dir: pathlib.Path, entry: dict, graph_index: int, values: Values) -> dict:
    import onnx
    from onnx.external_data_helper import uses_external_data

    model = onnx.load(str(src / entry["file"]), load_external_data=False)
    positive = positive_initializers(model.graph)
    expected = {item["file"]: item.get("bytes") for item in entry.get("external_data", [])}
    tensors = []
    for index, tensor in enumerate(model.graph.initializer):
        if not uses_external_data(tensor):
            continue
        info = {item.key: item.value for item in tensor.external_data}
        location = info.get("location")
        if location not in expected:
            raise SystemExit(f"{entry['file']}: initializer {tensor.name} points at {location!r}, "
                             f"which the manifest does not list")
        tensors.append((location, int(info.get("offset", 0)), int(info["length"]), index, tensor))
    written: dict[str, dict] = {}
    handles = {}
    try:
        for location, offset, length, index, tensor in sorted(tensors, key=lambda t: (t[0], t[1])):
            if location not in handles:
                handles[location] = open(dst_dir / location, "wb")
            numel = math.prod(tensor.dims)
            blob = values.make([values.seed, graph_index, index], numel, tensor.data_type, std_of(list(tensor.dims)),
                               tensor.name in positive)
            if len(blob) != length:
                raise SystemExit(f"{entry['file']}: initializer {tensor.name} is {length} bytes in the graph, "
                                 f"{len(blob)} by its shape")
            handles[location].seek(offset)
            handles[location].write(blob)
        for location, size in expected.items():
            handle = handles.get(location) or open(dst_dir / location, "wb")
            handles[location] = handle
            if size is not None:
                handle.truncate(size)
    finally:
        for handle in handles.values():
            handle.close()
    for location in expected:
        written[location] = {"file": location, "sha256": sha256_of(dst_dir / location)}
    return {"tensors": len(tensors), "external_data": [written[loc] for loc in expected]}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("set", type=pathlib.Path, help="weightless set (manifest.json with \"weightless\": true)")
    parser.add_argument("out", type=pathlib.Path, help="folder for the materialized set (created; must not be SET)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto",
                        help="where random values are drawn (auto: CUDA when torch sees a GPU)")
    args = parser.parse_args(argv)

    manifest_path = args.set / "manifest.json"
    try:
        manifest = json.loads(manifest_path.read_text())
    except (OSError, ValueError) as error:
        print(f"materialize.py: cannot read {manifest_path}: {error}", file=sys.stderr)
        return 2
    if not manifest.get("weightless"):
        print(f"materialize.py: {args.set} is not a weightless set (its manifest has no \"weightless\": true)",
              file=sys.stderr)
        return 2
    if args.out.resolve() == args.set.resolve():
        print("materialize.py: OUT must differ from SET", file=sys.stderr)
        return 2
    args.out.mkdir(parents=True, exist_ok=True)
    values = Values(args.device, args.seed)
    where = f"torch on {values.device}" if values.torch is not None else "numpy"
    started = time.time()
    # Everything but the manifest and data files is copied as is (graphs, tokenizer files).
    data_files = {item["file"] for entry in manifest["graphs"].values() for item in entry.get("external_data", [])}
    for item in args.set.iterdir():
        if item.name == "manifest.json" or item.name in data_files:
            continue
        target = args.out / item.name
        if item.is_dir():
            shutil.copytree(item, target, dirs_exist_ok=True)
        else:
            shutil.copy2(item, target)
    total = 0
    for graph_index, (name, entry) in enumerate(manifest["graphs"].items()):
        t0 = time.time()
        result = materialize_graph(args.set, args.out, entry, graph_index, values)
        entry["external_data"] = result["external_data"]
        size = sum((args.out / item["file"]).stat().st_size for item in result["external_data"])
        total += size
        print(f"{name}: {result['tensors']} tensors, {size / 1e9:.2f} GB in {time.time() - t0:.1f} s", flush=True)
    del manifest["weightless"]
    manifest["source"]["materialized"] = {
        "by": "exporter-specs/materialize.py",
        "seed": args.seed,
        "values": where,
        "from": str(args.set),
    }
    (args.out / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")
    print(f"wrote {args.out} ({total / 1e9:.2f} GB of weights, {where}) in {time.time() - started:.1f} s", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
