#!/usr/bin/env python3
"""What keeping the timestep embedding in float32 changes in FP16 graphs (numbers in README.md).

1. The SDXL timestep path at full size: diffusers' own `get_time_embed` / `get_aug_embed` (of
   UNet2DConditionModel) on `Timesteps(320)` + `TimestepEmbedding(320, 1280)` and
   `Timesteps(256)` + `TimestepEmbedding(2816, 1280)`, random weights, summed as the UNet sums
   them. Exported to ONNX, converted by onnx_passes.to_fp16 with and without the float32 timestep
   embedding, run by onnxruntime's CPU provider and compared with PyTorch in float32, one row per
   timestep (999 ... 1, and fractional ones as Karras sigmas give).
2. With --tiny-set: the tiny set's unet and controlnet (rebuilt from the exporter, as models/tiny
   was made) converted both ways, compared with the committed goldens (PyTorch float32).

    "$(scripts/pyenv.sh)" exporter-specs/fp16_timestep.py [--tiny-set]
"""

from __future__ import annotations

import argparse
import copy
import json
import pathlib
import sys
import tempfile
from types import SimpleNamespace

import numpy as np
import torch
from torch import nn

SPECS = pathlib.Path(__file__).resolve().parent
sys.path.insert(0, str(SPECS))

from onnx_passes import to_fp16  # noqa: E402

TIMESTEPS = [999.0, 998.5, 981.0, 500.0, 261.0, 21.0, 1.0, 0.25]


class TimestepPath(nn.Module):
    """The UNet's timestep and added-condition embedding, through diffusers' own methods."""

    def __init__(self, channels: int = 320, time_dim: int = 1280, time_ids_dim: int = 256, pooled: int = 1280):
        super().__init__()
        from diffusers.models.embeddings import TimestepEmbedding, Timesteps

        self.config = SimpleNamespace(addition_embed_type="text_time")
        self.time_proj = Timesteps(channels, flip_sin_to_cos=True, downscale_freq_shift=0)
        self.time_embedding = TimestepEmbedding(channels, time_dim)
        self.add_time_proj = Timesteps(time_ids_dim, flip_sin_to_cos=True, downscale_freq_shift=0)
        self.add_embedding = TimestepEmbedding(pooled + 6 * time_ids_dim, time_dim)

    def forward(self, sample, timestep, text_embeds, time_ids):
        from diffusers import UNet2DConditionModel

        t_emb = UNet2DConditionModel.get_time_embed(self, sample=sample, timestep=timestep)
        emb = self.time_embedding(t_emb)
        added = {"text_embeds": text_embeds, "time_ids": time_ids}
        return emb + UNet2DConditionModel.get_aug_embed(self, emb=emb, encoder_hidden_states=None, added_cond_kwargs=added)


def timestep_path_inputs(timesteps: list[float], pooled: int = 1280, seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    batch = len(timesteps)
    return {
        "sample": rng.standard_normal((batch, 4, 1, 1)).astype(np.float32),
        "timestep": np.array(timesteps, dtype=np.float32),
        "text_embeds": rng.standard_normal((batch, pooled)).astype(np.float32),
        "time_ids": np.tile(np.array([1024, 1024, 0, 0, 1024, 1024], dtype=np.float32), (batch, 1)),
    }


def export_timestep_path(module: nn.Module, inputs: dict[str, np.ndarray], path: pathlib.Path):
    """FP32 ONNX ModelProto of `module` (legacy exporter, opset 17, dynamic batch)."""
    import onnx

    names = list(inputs)
    with torch.no_grad():
        torch.onnx.export(module, tuple(torch.from_numpy(inputs[n]) for n in names), str(path), input_names=names,
                          output_names=["emb"], dynamic_axes={n: {0: "batch"} for n in names + ["emb"]},
                          opset_version=17, do_constant_folding=True, dynamo=False)
    return onnx.load(str(path))


def run_onnx(model, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Runs a ModelProto on onnxruntime's CPU provider, casting inputs to the types it declares."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = 3
    session = ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
    feed = {}
    for meta in session.get_inputs():
        feed[meta.name] = inputs[meta.name].astype(np.float16 if meta.type == "tensor(float16)" else np.float32)
    names = [o.name for o in session.get_outputs()]
    return {n: v.astype(np.float32) for n, v in zip(names, session.run(names, feed))}


def timestep_path_errors(seed: int = 0) -> dict:
    """Per timestep, the largest |FP16 graph - PyTorch FP32| of the embedding, with and without the
    float32 timestep embedding, and the largest reference value."""
    torch.manual_seed(seed)
    module = TimestepPath().eval()
    inputs = timestep_path_inputs(TIMESTEPS, seed=seed)
    with torch.no_grad():
        reference = module(*(torch.from_numpy(v) for v in inputs.values())).numpy()
    result = {"timesteps": TIMESTEPS, "scale": float(np.abs(reference).max())}
    # diffusers itself in float16: the module halved, float32 timesteps (as its schedulers give them).
    half = {k: torch.from_numpy(v if k == "timestep" else v.astype(np.float16)) for k, v in inputs.items()}
    with torch.no_grad():
        diffusers_fp16 = copy.deepcopy(module).half()(*half.values()).float().numpy()
    result["diffusers_fp16"] = [float(v) for v in np.abs(diffusers_fp16 - reference).max(axis=1)]
    with tempfile.TemporaryDirectory() as scratch:
        fp32 = export_timestep_path(module, inputs, pathlib.Path(scratch) / "path.onnx")
        for label, keep in (("fp32_embedding", True), ("fp16_embedding", False)):
            model = type(fp32)()
            model.CopyFrom(fp32)
            got = run_onnx(to_fp16(model, disable_shape_infer=False, fp32_timestep_embedding=keep), inputs)["emb"]
            result[label] = [float(v) for v in np.abs(got - reference).max(axis=1)]
    return result


def tiny_set_errors() -> dict:
    """unet and controlnet of models/tiny in FP16, both ways, against the committed goldens."""
    import onnx

    import export

    root = SPECS.parent / "models" / "tiny"
    manifest = json.loads((root / "manifest.json").read_text())
    params = json.loads((SPECS / "sizes.json").read_text())["tiny"]
    with tempfile.TemporaryDirectory() as scratch:
        args = export.parse_args(["--random", "--size", "tiny", "--seed", str(manifest["source"]["seed"]), "--out", scratch])
        torch.manual_seed(args.seed)
        modules = export.build_graph_modules(args, params, list(export.GRAPH_ORDER))
        out = {}
        for name in ("unet", "controlnet"):
            entry = manifest["graphs"][name]
            spec = {"inputs": entry["inputs"], "outputs": entry["outputs"]}
            folder = root / entry["golden"]
            inputs = {t["name"]: np.load(folder / f"input.{t['name']}.npy") for t in entry["inputs"]}
            expected = {t["name"]: np.load(folder / f"output.{t['name']}.npy") for t in entry["outputs"]}
            path = pathlib.Path(scratch) / f"{name}.onnx"
            export.export_graph(name, modules[name], spec, inputs, path)
            out[name] = {}
            for label, keep in (("fp32_embedding", True), ("fp16_embedding", False)):
                model = to_fp16(onnx.load(str(path)), disable_shape_infer=False, fp32_timestep_embedding=keep)
                got = run_onnx(model, inputs)
                scale = max(float(np.abs(v).max()) for v in expected.values())
                error = max(float(np.abs(got[k] - v).max()) for k, v in expected.items())
                out[name][label] = {"max_abs": error, "max_rel": error / scale}
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tiny-set", action="store_true", help="also measure models/tiny's unet and controlnet")
    opts = parser.parse_args()
    path = timestep_path_errors()
    print(f"full-size timestep path, largest reference value {path['scale']:.3f}")
    print("| timestep | FP16 graph, embedding in fp32 | FP16 graph, embedding in fp16 | diffusers in float16 |")
    print("|---:|---:|---:|---:|")
    for t, kept, converted, diffusers_fp16 in zip(path["timesteps"], path["fp32_embedding"], path["fp16_embedding"],
                                                   path["diffusers_fp16"]):
        print(f"| {t:g} | {kept:.2e} | {converted:.2e} | {diffusers_fp16:.2e} |")
    if opts.tiny_set:
        print("| graph | fp32 embedding: max abs / rel | fp16 embedding: max abs / rel |")
        print("|---|---:|---:|")
        for name, row in tiny_set_errors().items():
            a, b = row["fp32_embedding"], row["fp16_embedding"]
            print(f"| {name} | {a['max_abs']:.2e} / {a['max_rel']:.2e} | {b['max_abs']:.2e} / {b['max_rel']:.2e} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
