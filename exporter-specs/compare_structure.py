#!/usr/bin/env python3
"""Check that two graph sets have the same graphs apart from weight values.

usage: compare_structure.py SET_A SET_B

For every graph both manifests list: the same nodes in the same order (operator, domain, inputs,
outputs, attributes), the same graph inputs and outputs, and the same initializers (name, element
type, shape). Initializers stored inline (small ones, integer ones) must also hold the same values;
external ones may differ. Used to show that a weightless export (export.py --weightless) builds
exactly the graph a normal export builds. Exit status 1 on the first difference.
"""

from __future__ import annotations

import json
import pathlib
import sys


def structure(path: pathlib.Path):
    import onnx
    from onnx.external_data_helper import uses_external_data

    model = onnx.load(str(path), load_external_data=False)
    graph = model.graph
    nodes = []
    for node in graph.node:
        copy = onnx.NodeProto()
        copy.CopyFrom(node)
        copy.ClearField("name")  # names are labels; the wiring is in inputs/outputs
        copy.ClearField("doc_string")
        nodes.append(copy.SerializeToString(deterministic=True))
    initializers = {}
    for tensor in graph.initializer:
        inline = None if uses_external_data(tensor) else onnx.numpy_helper.to_array(tensor).tobytes()
        initializers[tensor.name] = (tensor.data_type, tuple(tensor.dims), inline)
    io = [v.SerializeToString(deterministic=True) for v in list(graph.input) + list(graph.output)]
    opsets = sorted((o.domain, o.version) for o in model.opset_import)
    return nodes, initializers, io, opsets


def compare(a: pathlib.Path, b: pathlib.Path) -> str | None:
    nodes_a, init_a, io_a, ops_a = structure(a)
    nodes_b, init_b, io_b, ops_b = structure(b)
    if ops_a != ops_b:
        return f"opsets differ: {ops_a} vs {ops_b}"
    if io_a != io_b:
        return "graph inputs/outputs differ"
    if len(nodes_a) != len(nodes_b):
        return f"{len(nodes_a)} vs {len(nodes_b)} nodes"
    for index, (x, y) in enumerate(zip(nodes_a, nodes_b)):
        if x != y:
            return f"node {index} differs"
    if init_a.keys() != init_b.keys():
        return f"initializer names differ: {sorted(init_a.keys() ^ init_b.keys())[:5]}"
    for name, (type_a, dims_a, inline_a) in init_a.items():
        type_b, dims_b, inline_b = init_b[name]
        if (type_a, dims_a) != (type_b, dims_b):
            return f"initializer {name}: {type_a}{list(dims_a)} vs {type_b}{list(dims_b)}"
        if inline_a is not None and inline_b is not None and inline_a != inline_b:
            return f"initializer {name}: inline values differ"
    return None


def main(argv: list[str]) -> int:
    if len(argv) != 2:
        print(__doc__, file=sys.stderr)
        return 2
    set_a, set_b = (pathlib.Path(p) for p in argv)
    graphs_a = json.loads((set_a / "manifest.json").read_text())["graphs"]
    graphs_b = json.loads((set_b / "manifest.json").read_text())["graphs"]
    status = 0
    for name in graphs_a:
        if name not in graphs_b:
            continue
        difference = compare(set_a / graphs_a[name]["file"], set_b / graphs_b[name]["file"])
        print(f"{name}: {'same structure' if difference is None else 'DIFFERENT: ' + difference}")
        status |= difference is not None
    return status


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
