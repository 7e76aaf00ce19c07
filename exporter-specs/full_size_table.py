#!/usr/bin/env python3
"""Parameter counts, file-size estimates and IO shapes of the full-size graphs, built on the meta
device (no weights allocated). Prints a Markdown table for exporter-specs/README.md."""

import argparse
import json
import pathlib
import sys
from types import SimpleNamespace

import torch

SPECS = pathlib.Path(__file__).resolve().parent
sys.path.insert(0, str(SPECS))

import export  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--size", default="full", choices=["tiny", "full"])
    parser.add_argument("--height", type=int, default=1024)
    parser.add_argument("--width", type=int, default=1024)
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--faces", type=int, default=2)
    opts = parser.parse_args()
    params = json.loads((SPECS / "sizes.json").read_text())[opts.size]
    graphs_json = json.loads((SPECS / "graphs.json").read_text())
    args = SimpleNamespace(from_pretrained=False, random=True, size=opts.size, seed=0)
    with torch.device("meta"):
        modules = export.build_graph_modules(args, params, export.GRAPH_ORDER)
    cfg = export.config_from_models(params, modules)
    layout = export.residual_layout(modules["unet"].unet.config)
    specs = export.resolve_specs(graphs_json, cfg, layout, "fp32")
    factor = cfg["vae_scale_factor"]
    dims = {"batch": opts.batch, "faces": opts.faces,
            "sequence": cfg["text_len"] + cfg["id_tokens_per_face"] * opts.faces,
            "image_height": opts.height, "image_width": opts.width}
    for stride in (1, 2, 4, 8):
        dims[export.strided_axis("latent_height", stride)] = opts.height // factor // stride
        dims[export.strided_axis("latent_width", stride)] = opts.width // factor // stride

    def shapes(tensors):
        concrete = []
        for t in tensors:
            concrete.append(f"{t['name']} {'x'.join(str(d if isinstance(d, int) else dims[d]) for d in t['shape'])}")
        if len(concrete) > 6:
            concrete = concrete[:5] + [f"... ({len(concrete) - 5} more)"]
        return "<br>".join(concrete)

    print(f"| graph | parameters | FP16 file (est.) | FP32 file (est.) | inputs ({opts.height}x{opts.width}, batch {opts.batch}, {opts.faces} people) | outputs |")
    print("|---|---:|---:|---:|---|---|")
    total = 0
    for name in export.GRAPH_ORDER:
        count = export.count_parameters(modules[name])
        total += count
        print(f"| {name} | {count:,} | {count * 2 / 1e9:.2f} GB | {count * 4 / 1e9:.2f} GB | "
              f"{shapes(specs[name]['inputs'])} | {shapes(specs[name]['outputs'])} |")
    print(f"| total | {total:,} | {total * 2 / 1e9:.2f} GB | {total * 4 / 1e9:.2f} GB | | |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
