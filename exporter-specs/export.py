#!/usr/bin/env python3
"""Export the ID-Patch graph set (PyTorch -> ONNX) and write its manifest.

Examples:
  python exporter-specs/export.py --random --size tiny --seed 0 --golden --out models/tiny
  python exporter-specs/export.py --from-pretrained --sdxl SDXL_DIR --controlnet ID-Patch/ControlNetModel \
      --id-patch ID-Patch/id-patch.bin --arcface recognition_arcface_ir_se50.pth --precision fp16 --out OUT
"""

from __future__ import annotations

import argparse
import gc
import json
import pathlib
import shlex
import shutil
import sys
import tempfile
import time
from types import SimpleNamespace

import numpy as np
import torch
from torch import nn

SPECS = pathlib.Path(__file__).resolve().parent
sys.path.insert(0, str(SPECS))

from checkpoints import (  # noqa: E402
    VARIANT_NAME, CheckpointError, Pretrained, controlnet_from_unet_config, unet_config_with_defaults,
)
from fusable_attention import FusableAttnProcessor  # noqa: E402
from idpatch_models import ArcFaceIrSe, Resampler, resampler_state_from_diffusers  # noqa: E402
from mtcnn_models import DETECTOR_GRAPHS, FACENET_REQUIREMENT, build_detector, read_weight_files  # noqa: E402
from weights import detach_weights, sha256_of, weight_bytes  # noqa: E402
from onnx_passes import (  # noqa: E402
    EXTERNAL_DATA_THRESHOLD, convert_fp16, fuse_for_cuda, fused_op_counts, optimize_for_cuda, save_model, to_fp16,
)
from specs import controlnet_mismatches, dynamic_axes_of, residual_layout, resolve_specs, strided_axis  # noqa: E402, F401

GRAPH_ORDER = ["text_encoder", "text_encoder_2", "unet", "controlnet", "vae_decoder", "arcface", "patch_proj", "prompt_proj",
               *DETECTOR_GRAPHS]
# Graphs that keep float32 in an FP16 set: the SDXL VAE overflows in FP16, and the face detector is
# small and thresholds its scores.
FP32_GRAPHS = {"vae_decoder", *DETECTOR_GRAPHS}
OPSET = 17
# Format 3: one tokenizer.json per tokenizer ({"file", "sha256"}); format 2 listed vocab.json/merges.txt.
MANIFEST_FORMAT = 3

SDXL_SCHEDULER = {
    "_class_name": "EulerDiscreteScheduler",
    "beta_end": 0.012,
    "beta_schedule": "scaled_linear",
    "beta_start": 0.00085,
    "clip_sample": False,
    "interpolation_type": "linear",
    "num_train_timesteps": 1000,
    "prediction_type": "epsilon",
    "sample_max_value": 1.0,
    "set_alpha_to_one": False,
    "skip_prk_steps": True,
    "steps_offset": 1,
    "timestep_spacing": "leading",
    "trained_betas": None,
    "use_karras_sigmas": False,
}


# ---------------------------------------------------------------- graph wrappers


class TextEncoderGraph(nn.Module):
    def __init__(self, encoder):
        super().__init__()
        self.encoder = encoder

    def forward(self, input_ids):
        out = self.encoder(input_ids=input_ids, output_hidden_states=True)
        return out.hidden_states[-2]


class TextEncoder2Graph(nn.Module):
    def __init__(self, encoder):
        super().__init__()
        self.encoder = encoder

    def forward(self, input_ids):
        out = self.encoder(input_ids=input_ids, output_hidden_states=True)
        return out.hidden_states[-2], out.text_embeds


class UNetGraph(nn.Module):
    def __init__(self, unet, down_residuals: int):
        super().__init__()
        self.unet = unet
        self.down_residuals = down_residuals

    def forward(self, sample, timestep, encoder_hidden_states, text_embeds, time_ids, *residuals):
        down, mid = residuals[: self.down_residuals], residuals[self.down_residuals]
        return self.unet(
            sample,
            timestep,
            encoder_hidden_states=encoder_hidden_states,
            added_cond_kwargs={"text_embeds": text_embeds, "time_ids": time_ids},
            down_block_additional_residuals=list(down),
            mid_block_additional_residual=mid,
            return_dict=False,
        )[0]


class ControlNetGraph(nn.Module):
    def __init__(self, controlnet):
        super().__init__()
        self.controlnet = controlnet

    def forward(self, sample, timestep, encoder_hidden_states, text_embeds, time_ids, controlnet_cond, conditioning_scale):
        down, mid = self.controlnet(
            sample,
            timestep,
            encoder_hidden_states=encoder_hidden_states,
            controlnet_cond=controlnet_cond,
            conditioning_scale=conditioning_scale,
            added_cond_kwargs={"text_embeds": text_embeds, "time_ids": time_ids},
            guess_mode=False,
            return_dict=False,
        )
        return (*down, mid)


class VaeDecoderGraph(nn.Module):
    """post_quant_conv + decoder of AutoencoderKL; input already divided by the scaling factor."""

    def __init__(self, vae):
        super().__init__()
        self.post_quant_conv = vae.post_quant_conv
        self.decoder = vae.decoder
        self.scaling_factor = float(vae.config.scaling_factor)
        self.latent_channels = int(vae.config.latent_channels)

    def forward(self, latent):
        if self.post_quant_conv is not None:
            latent = self.post_quant_conv(latent)
        return self.decoder(latent)


class PatchProjGraph(nn.Module):
    def __init__(self, resampler: Resampler, patch_size: int):
        super().__init__()
        self.resampler = resampler
        self.patch_size = patch_size

    def forward(self, id_embeds):
        patches = self.resampler(id_embeds)
        # Query c becomes channel c; the 4096 vector is a row-major 64x64 patch.
        return patches.reshape(patches.shape[0], patches.shape[1], self.patch_size, self.patch_size)


# ---------------------------------------------------------------- building models


def build_text_encoder(params: dict, name: str):
    """Random CLIPTextModel (text_encoder) or CLIPTextModelWithProjection (text_encoder_2) of sizes.json."""
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    config = CLIPTextConfig(**params[name])
    config._attn_implementation = "eager"
    return (CLIPTextModel if name == "text_encoder" else CLIPTextModelWithProjection)(config)


def build_unet(params: dict):
    from diffusers import UNet2DConditionModel

    return UNet2DConditionModel(**params["unet"])


def build_controlnet(params: dict):
    """Random ControlNet on the sizes.json UNet's trunk, as ControlNetModel.from_unet(unet,
    load_weights_from_unet=False) builds it, without building the UNet."""
    return controlnet_from_unet_config(params["unet"], params["controlnet"]["conditioning_embedding_out_channels"])


def build_vae(params: dict):
    from diffusers import AutoencoderKL

    return AutoencoderKL(**params["vae"])


def arcface_config(params: dict) -> dict:
    cfg = dict(params["arcface"])
    cfg["stage_channels"] = tuple(cfg["stage_channels"])
    cfg["stage_units"] = tuple(cfg["stage_units"])
    return cfg


def build_arcface(params: dict):
    return ArcFaceIrSe(**arcface_config(params))


def perturb_trivial_parameters(module: nn.Module, generator: torch.Generator) -> None:
    """Give zero- or one-initialised tensors (zero convs, biases, norm affines, BN statistics)
    random values so that no output of a random tiny graph is trivially zero or insensitive."""
    with torch.no_grad():
        for name, tensor in list(module.named_parameters()) + list(module.named_buffers()):
            if not tensor.is_floating_point() or tensor.numel() == 0:
                continue
            if name.endswith("running_var"):
                tensor.copy_(torch.rand(tensor.shape, generator=generator) + 0.5)
            elif bool((tensor == 0).all()):
                if tensor.ndim >= 2:
                    fan_in = tensor[0].numel()
                    tensor.copy_(torch.randn(tensor.shape, generator=generator) / fan_in**0.5)
                else:
                    tensor.copy_(torch.randn(tensor.shape, generator=generator) * 0.1)
            elif bool((tensor == 1).all()):
                tensor.copy_(1 + torch.randn(tensor.shape, generator=generator) * 0.1)


def count_parameters(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def build_graph_modules(args, params: dict, wanted: list[str], source: Pretrained | None = None) -> dict[str, nn.Module]:
    """Graph name -> eval-mode wrapper module holding the weights, for the graphs in `wanted` only:
    random ones of the `params` architecture, or with `args.from_pretrained` the released weights
    `source` reads (made from `args` when not given). Nothing is built or read for other graphs;
    the ControlNet is built from the UNet's config, never from a UNet. Raises CheckpointError."""
    cfg = params["config"]
    modules: dict[str, nn.Module] = {}
    pretrained = args.from_pretrained
    if pretrained and source is None:
        source = Pretrained(args, wanted)

    for name in ("text_encoder", "text_encoder_2"):
        if name in wanted:
            encoder = getattr(source, name)() if pretrained else build_text_encoder(params, name)
            modules[name] = (TextEncoderGraph if name == "text_encoder" else TextEncoder2Graph)(encoder)
    if "unet" in wanted:
        unet = source.unet() if pretrained else build_unet(params)
        modules["unet"] = UNetGraph(unet, cfg["down_residuals"])
    if "controlnet" in wanted:
        controlnet = source.controlnet() if pretrained else build_controlnet(params)
        modules["controlnet"] = ControlNetGraph(controlnet)
    if "vae_decoder" in wanted:
        vae = source.vae() if pretrained else build_vae(params)
        modules["vae_decoder"] = VaeDecoderGraph(vae)
    if "arcface" in wanted:
        arcface = source.arcface(arcface_config(params)) if pretrained else build_arcface(params)
        modules["arcface"] = arcface
    for name in ("patch_proj", "prompt_proj"):
        if name not in wanted:
            continue
        if pretrained:
            resampler = source.resampler(name)
        else:
            resampler = Resampler(**params[name])
        modules[name] = PatchProjGraph(resampler, cfg["patch_size"]) if name == "patch_proj" else resampler
    if any(name in DETECTOR_GRAPHS for name in wanted):
        # Released weights in every set, random or not: built after everything else and without
        # touching the global RNG, so the random graphs stay what they were.
        modules.update(build_detector(read_weight_files(args.facenet_weights)))

    for name, module in modules.items():
        module.eval()
        if name in ("unet", "controlnet"):
            inner = module.unet if name == "unet" else module.controlnet
            inner.set_attn_processor(FusableAttnProcessor())
        if name == "vae_decoder":
            # The mid-block attention: same explicit formulation, avoids SDPA lowering issues.
            for sub in module.modules():
                if hasattr(sub, "set_processor"):
                    sub.set_processor(FusableAttnProcessor())
    if args.random and args.size != "full":
        generator = torch.Generator().manual_seed(args.seed + 1)
        for name in GRAPH_ORDER:
            if name in modules and name not in DETECTOR_GRAPHS:
                perturb_trivial_parameters(modules[name], generator)
    return {name: modules[name] for name in wanted}


def config_from_models(params: dict, modules: dict[str, nn.Module], previous: dict | None = None,
                       folder_values: dict | None = None) -> dict:
    """The manifest's config section; for pretrained sets, read off the SDXL folder's configs
    (`folder_values`, see Pretrained.config_values) and the loaded models.

    `previous` (the config of the set being extended) supplies what this run's models do not show."""
    cfg = dict(params["config"])
    cfg.update(previous or {})
    cfg.update(folder_values or {})
    if "text_encoder" in modules:
        cfg["text_dim_1"] = modules["text_encoder"].encoder.config.hidden_size
    if "text_encoder_2" in modules:
        cfg["text_dim_2"] = modules["text_encoder_2"].encoder.config.hidden_size
        cfg["pooled_dim"] = modules["text_encoder_2"].encoder.config.projection_dim
    if "unet" in modules:
        cfg["cross_attention_dim"] = modules["unet"].unet.config.cross_attention_dim
    if "vae_decoder" in modules:
        cfg["vae_scaling_factor"] = modules["vae_decoder"].scaling_factor
        cfg["latent_channels"] = modules["vae_decoder"].latent_channels
    if "prompt_proj" in modules:
        cfg["id_tokens_per_face"] = modules["prompt_proj"].latents.shape[1]
    if "patch_proj" in modules:
        outputs = modules["patch_proj"].resampler.proj_out.out_features
        if outputs != cfg["patch_size"] ** 2:
            raise CheckpointError(f"patch_proj gives {outputs} values per patch; the runtime's "
                                  f"{cfg['patch_size']}x{cfg['patch_size']} patches need {cfg['patch_size'] ** 2}")
    return cfg


# ---------------------------------------------------------------- golden inputs


def golden_inputs(name: str, spec: dict, cfg: dict, seed: int, dims: dict) -> dict[str, np.ndarray]:
    """Deterministic, non-trivial inputs for one graph (fp32 / int64)."""
    rng = np.random.default_rng([seed, GRAPH_ORDER.index(name)])
    out = {}
    for tensor in spec["inputs"]:
        shape = [d if isinstance(d, int) else dims[d] for d in tensor["shape"]]
        tname = tensor["name"]
        if tname == "input_ids":
            ids = np.full(shape, 49407 if name == "text_encoder" else 0, dtype=np.int64)
            for row in range(shape[0]):
                length = [5, 20, 40, 75][row % 4]
                ids[row, 0] = 49406
                ids[row, 1 : 1 + length] = rng.integers(0, 49406, size=length)
                ids[row, 1 + length] = 49407
            out[tname] = ids
        elif tname == "timestep":
            out[tname] = np.array([999.0, 261.0, 500.0, 21.0][: shape[0]], dtype=np.float32)
        elif tname == "time_ids":
            height, width = dims["image_height"], dims["image_width"]
            out[tname] = np.tile(np.array([height, width, 0, 0, height, width], dtype=np.float32), (shape[0], 1))
        elif tname == "conditioning_scale":
            out[tname] = np.array([0.8], dtype=np.float32)
        elif tname == "controlnet_cond":
            out[tname] = rng.uniform(0.0, 1.0, size=shape).astype(np.float32)
        elif tname in ("face", "image"):
            out[tname] = rng.uniform(-1.0, 1.0, size=shape).astype(np.float32)
        elif tname == "id_embeds":
            x = rng.standard_normal(shape)
            out[tname] = (x / np.linalg.norm(x, axis=-1, keepdims=True)).astype(np.float32)
        elif tname.endswith("residual") or tname.startswith("down_residual"):
            out[tname] = (0.5 * rng.standard_normal(shape)).astype(np.float32)
        else:
            out[tname] = rng.standard_normal(shape).astype(np.float32)
    return out


def golden_dims(cfg: dict, batch: int, latent: int, faces: int) -> dict:
    dims = {"batch": batch, "faces": faces, "sequence": cfg["text_len"] + cfg["id_tokens_per_face"] * faces}
    dims["image_height"] = dims["image_width"] = latent * cfg["vae_scale_factor"]
    for stride in (1, 2, 4, 8):
        dims[strided_axis("latent_height", stride)] = latent // stride
        dims[strided_axis("latent_width", stride)] = latent // stride
    return dims


def run_torch(module: nn.Module, spec: dict, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    args = [torch.from_numpy(inputs[t["name"]]) for t in spec["inputs"]]
    with torch.no_grad():
        result = module(*args)
    if isinstance(result, torch.Tensor):
        result = (result,)
    return {t["name"]: r.float().numpy() for t, r in zip(spec["outputs"], result)}


# ---------------------------------------------------------------- export


def torch_export(module: nn.Module, spec: dict, example: dict[str, np.ndarray], raw: pathlib.Path) -> None:
    """Legacy TorchScript exporter, opset 17, FP32, constants folded; torch writes external data
    files beside `raw` when the graph is over the protobuf limit."""
    args = tuple(torch.from_numpy(example[t["name"]]) for t in spec["inputs"])
    with torch.no_grad():
        torch.onnx.export(
            module,
            args,
            str(raw),
            input_names=[t["name"] for t in spec["inputs"]],
            output_names=[t["name"] for t in spec["outputs"]],
            dynamic_axes=dynamic_axes_of(spec),
            opset_version=OPSET,
            do_constant_folding=True,
            dynamo=False,
        )


def export_graph(name: str, module: nn.Module, spec: dict, example: dict[str, np.ndarray], path: pathlib.Path) -> None:
    """Legacy TorchScript exporter, opset 17, FP32; one external data file when over the protobuf limit."""
    import onnx

    with tempfile.TemporaryDirectory(dir=path.parent) as scratch:
        raw = pathlib.Path(scratch) / f"{name}.onnx"
        torch_export(module, spec, example, raw)
        model = onnx.load(str(raw), load_external_data=True)
        stamp_io_shapes(model, spec)
        save_model(model, path)


def stamp_io_shapes(model, spec: dict) -> None:
    """Write the spec's dims onto the graph's inputs and outputs: the tracer leaves some static
    dims (e.g. the 77 text tokens, the 16 ID tokens) as anonymous symbols."""
    by_name = {t["name"]: t for t in spec["inputs"] + spec["outputs"]}
    for value in list(model.graph.input) + list(model.graph.output):
        wanted = by_name[value.name]["shape"]
        dims = value.type.tensor_type.shape.dim
        if len(dims) != len(wanted):
            raise RuntimeError(f"{value.name}: exported rank {len(dims)}, spec rank {len(wanted)}")
        for dim, size in zip(dims, wanted):
            if isinstance(size, int):
                if dim.HasField("dim_value") and dim.dim_value != size:
                    raise RuntimeError(f"{value.name}: exported dim {dim.dim_value}, spec {size}")
                dim.dim_value = size
            else:
                dim.dim_param = size


# ---------------------------------------------------------------- weightless export

def export_weightless(name: str, modules: dict, spec: dict, example: dict[str, np.ndarray], path: pathlib.Path,
                      optimize: bool, precision: str) -> tuple[dict | None, int]:
    """Export, fuse and convert one graph exactly as the normal path does, holding at most one copy
    of its weights: the torch module is freed before the ONNX graph is loaded, the optimizer reads
    external tensors lazily (relative to the working directory), and only the FP16 conversion loads
    them. The weights are then dropped, so nothing of them is written."""
    import os

    import onnx
    from onnx.external_data_helper import load_external_data_for_model

    with tempfile.TemporaryDirectory(dir=path.parent) as scratch:
        raw = pathlib.Path(scratch) / f"{name}.onnx"
        torch_export(modules[name], spec, example, raw)
        del modules[name]
        gc.collect()
        model = onnx.load(str(raw), load_external_data=False)
        stamp_io_shapes(model, spec)
        big = weight_bytes(model) > EXTERNAL_DATA_THRESHOLD
        previous = os.getcwd()
        os.chdir(scratch)
        try:
            fused = None
            if optimize:
                model = fuse_for_cuda(model)
                fused = fused_op_counts(model)
            if precision == "fp16":
                # The converter reads every initializer after retyping it, so the values must be in
                # memory: the FP32 weights once (about 10 GB for the full UNet), never two copies.
                load_external_data_for_model(model, scratch)
                model = to_fp16(model, disable_shape_infer=big)
        finally:
            os.chdir(previous)
        placeholder = path.with_name(path.name + ".data")
        data_bytes = detach_weights(model, pathlib.Path(scratch), placeholder.name)
        for stale in (path, placeholder):
            if stale.exists():
                stale.unlink()
        onnx.save_model(model, str(path))
    # The checker wants the data file to exist: a sparse placeholder of the right size, removed after.
    with open(placeholder, "wb") as handle:
        handle.truncate(data_bytes)
    try:
        onnx.checker.check_model(str(path))
    finally:
        placeholder.unlink()
    return fused, data_bytes


# ---------------------------------------------------------------- checking


def check_with_onnxruntime(path: pathlib.Path, inputs: dict[str, np.ndarray], expected: dict[str, np.ndarray], precision: str):
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = 3
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    feed = {}
    for meta in session.get_inputs():
        value = inputs[meta.name]
        if meta.type == "tensor(float16)":
            value = value.astype(np.float16)
        feed[meta.name] = value
    names = [o.name for o in session.get_outputs()]
    results = dict(zip(names, session.run(names, feed)))
    worst_abs, worst_rel = 0.0, 0.0
    for name, reference in expected.items():
        got = results[name].astype(np.float32)
        if got.shape != reference.shape:
            raise RuntimeError(f"{path.name}: output {name} has shape {got.shape}, PyTorch gave {reference.shape}")
        error = float(np.abs(got - reference).max())
        scale = float(np.abs(reference).max())
        worst_abs = max(worst_abs, error)
        worst_rel = max(worst_rel, error / max(scale, 1e-12))
    return worst_abs, worst_rel


def write_tokenizers(out: pathlib.Path, sdxl: str | None) -> dict:
    """Both SDXL tokenizers as tokenizer.json files under `out`: from the SDXL folder's tokenizer/ and
    tokenizer_2/ when one is given, else from the rebuilt CLIP vocabulary (see clip_vocab.py)."""
    from clip_vocab import write_sdxl_tokenizers

    return write_sdxl_tokenizers(out, pathlib.Path(sdxl) if sdxl else None)


def tokenizer_entries(out: pathlib.Path, tokenizers: dict) -> dict:
    """The manifest's tokenizers section: each tokenizer.json with the sha256 of what is in `out`."""
    entries = {}
    for name, file in tokenizers.items():
        path = out / file
        if not path.is_file():
            raise RuntimeError(f"tokenizers.{name}: {path} is missing")
        entries[name] = {"file": file, "sha256": sha256_of(path)}
    return entries


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--random", action="store_true", help="random weights of the --size architecture")
    source.add_argument("--from-pretrained", action="store_true", help="load released weights (paths below)")
    parser.add_argument("--size", choices=["tiny", "medium", "full"], default="tiny")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--sdxl", help="diffusers SDXL folder (unet, vae, text_encoder, text_encoder_2, tokenizer, "
                                       "tokenizer_2, scheduler)")
    parser.add_argument("--variant", help="weight variant of the --sdxl and --controlnet folders, as diffusers' "
                                          "from_pretrained(variant=...) picks it: e.g. fp16 for *.fp16.safetensors")
    parser.add_argument("--controlnet", help="ID-Patch ControlNetModel folder")
    parser.add_argument("--id-patch", help="id-patch.bin holding patch_proj and prompt_proj")
    parser.add_argument("--arcface", help="IR-SE50 checkpoint (facexlib recognition_arcface_ir_se50.pth)")
    parser.add_argument("--facenet-weights", type=pathlib.Path,
                        help=f"MTCNN weights for the face_detector graphs: the {FACENET_REQUIREMENT} wheel, or a folder "
                             "with its pnet.pt, rnet.pt and onet.pt (default: pip download the wheel from PyPI)")
    parser.add_argument("--precision", choices=["fp32", "fp16"], default="fp32")
    parser.add_argument("--graphs", default=",".join(GRAPH_ORDER), help="comma-separated subset")
    parser.add_argument("--out", required=True, type=pathlib.Path)
    parser.add_argument("--name", help="set name in the manifest (default: the output folder's name)")
    parser.add_argument("--golden", action="store_true", help="write golden inputs/outputs under OUT/golden")
    parser.add_argument("--golden-batch", type=int, default=2)
    parser.add_argument("--golden-latent", type=int, default=8, help="latent side of golden inputs")
    parser.add_argument("--golden-faces", type=int, default=3)
    parser.add_argument("--optimize", choices=["none", "cuda"], default="none",
                        help="cuda: fuse unet/controlnet with ONNX Runtime's transformer optimizer (CUDA-only ops)")
    parser.add_argument("--no-check", action="store_true", help="skip the onnxruntime comparison")
    parser.add_argument("--weightless", action="store_true",
                        help="write graph structure only (no weight data), for exporter-specs/materialize.py to fill "
                             "with random values on the machine that runs it; needs --random, implies --no-check")
    args = parser.parse_args(argv)
    if args.weightless and not args.random:
        parser.error("--weightless needs --random: released weights are not to be replaced by random ones")
    if args.weightless and args.golden:
        parser.error("--weightless cannot write goldens: the materialized weights differ from the exported ones")
    if args.variant is not None and not args.from_pretrained:
        parser.error("--variant needs --from-pretrained: it picks the released weight files")
    if args.variant is not None and not VARIANT_NAME.fullmatch(args.variant):
        parser.error(f"--variant {args.variant!r}: a variant is 1 to 32 letters, digits, '_' or '-' (e.g. fp16)")
    if args.from_pretrained:
        args.size = "full"
    args.graphs = [g for g in args.graphs.split(",") if g]
    unknown = [g for g in args.graphs if g not in GRAPH_ORDER]
    if unknown:
        parser.error(f"--graphs: unknown graph(s) {unknown}; known: {GRAPH_ORDER}")
    if args.from_pretrained:
        needs = {"sdxl": {"text_encoder", "text_encoder_2", "unet", "controlnet", "vae_decoder"},
                 "controlnet": {"controlnet"}, "id_patch": {"patch_proj", "prompt_proj"}, "arcface": {"arcface"}}
        for option, graphs in needs.items():
            if graphs & set(args.graphs) and not getattr(args, option):
                parser.error(f"--{option.replace('_', '-')} is required for graphs {sorted(graphs & set(args.graphs))}")
    return args


def main(argv=None) -> int:
    """Exit status: 0 when every graph was written and checked, 1 when a check failed, 2 when a
    released file is missing or does not fit (one line on stderr)."""
    args = parse_args(argv)
    try:
        return export_set(args, argv)
    except CheckpointError as error:
        print(f"export.py: {error}", file=sys.stderr)
        return 2


def export_set(args, argv) -> int:
    """The export `main` runs; raises CheckpointError before writing anything when a released
    file is missing or its names do not fit."""
    torch.manual_seed(args.seed)
    params = json.loads((SPECS / "sizes.json").read_text())[args.size]
    graphs_json = json.loads((SPECS / "graphs.json").read_text())
    started = time.time()
    # Checks the released files' names before anything is loaded or written.
    source = Pretrained(args, args.graphs) if args.from_pretrained else None
    out: pathlib.Path = args.out
    out.mkdir(parents=True, exist_ok=True)
    modules = build_graph_modules(args, params, [g for g in GRAPH_ORDER if g in args.graphs], source)
    print(f"built models in {time.time() - started:.1f} s", flush=True)
    # A run with --graphs extends the set's manifest when it is of the same size and source kind.
    manifest_path = out / "manifest.json"
    manifest = json.loads(manifest_path.read_text()) if manifest_path.exists() else {}
    kind = "pretrained" if args.from_pretrained else "random"
    if manifest and (
        manifest.get("size") != args.size
        or manifest.get("source", {}).get("kind") != kind
        or bool(manifest.get("weightless")) != args.weightless
    ):
        print(f"warning: {manifest_path} is of another size, source or kind; starting a new manifest", flush=True)
        manifest = {}
    from_folder = source is not None and source.sdxl is not None
    unet_config = source.unet_config() if from_folder else unet_config_with_defaults(params["unet"])
    layout = residual_layout(SimpleNamespace(**unet_config))
    if "controlnet" in modules:
        mismatches = controlnet_mismatches(modules["controlnet"].controlnet.config, unet_config)
        if mismatches:
            raise CheckpointError(f"controlnet {args.controlnet or 'built'} does not fit the UNet: {'; '.join(mismatches)}")
    folder_values = source.config_values(len(layout) - 1) if from_folder else None
    cfg = config_from_models(params, modules, manifest.get("config"), folder_values)
    if len(layout) != cfg["down_residuals"] + 1:
        raise RuntimeError(f"UNet has {len(layout) - 1} down residuals, config says {cfg['down_residuals']}")
    specs = resolve_specs(graphs_json, cfg, layout, args.precision)
    dims = golden_dims(cfg, args.golden_batch, args.golden_latent, args.golden_faces)

    entries = manifest.get("graphs", {})
    failures = []
    for name in args.graphs:
        spec = specs[name]
        parameters = count_parameters(modules[name])
        t0 = time.time()
        inputs = golden_inputs(name, spec, cfg, args.seed, dims)
        path = out / f"{name}.onnx"
        data = path.with_name(path.name + ".data")
        fuse = args.optimize == "cuda" and name in ("unet", "controlnet")
        graph_precision = "fp32" if name in FP32_GRAPHS else args.precision
        expected = None
        if args.weightless:
            fused, data_bytes = export_weightless(name, modules, spec, inputs, path, fuse, graph_precision)
        else:
            expected = run_torch(modules[name], spec, inputs)
            export_graph(name, modules[name], spec, inputs, path)
            fused = optimize_for_cuda(path, graph_precision) if fuse else None
            if not fuse and graph_precision == "fp16":
                convert_fp16(path)
        graph_spec = resolve_specs(graphs_json, cfg, layout, graph_precision)[name]
        entry = {
            "file": path.name,
            "sha256": sha256_of(path),
            "external_data": [],
            "precision": graph_precision,
            "opset": OPSET,
            "parameters": parameters,
            "inputs": graph_spec["inputs"],
            "outputs": graph_spec["outputs"],
        }
        if args.weightless:
            entry["external_data"] = [{"file": data.name, "bytes": data_bytes}]
        elif data.exists():
            entry["external_data"] = [{"file": data.name, "sha256": sha256_of(data)}]
        if fused is not None:
            entry["fused_ops"] = fused
            entry["requires"] = "onnxruntime CUDA execution provider (com.microsoft fused operators)"
        if args.golden:
            folder = out / "golden" / name
            if folder.exists():
                shutil.rmtree(folder)
            folder.mkdir(parents=True)
            for tname, value in inputs.items():
                np.save(folder / f"input.{tname}.npy", value)
            for tname, value in expected.items():
                np.save(folder / f"output.{tname}.npy", value)
            entry["golden"] = f"golden/{name}"
        if args.weightless:
            entry_note = f"weightless: {data_bytes / 1e9:.2f} GB of weights to materialize"
        elif not args.no_check and fused is None:
            err_abs, err_rel = check_with_onnxruntime(path, inputs, expected, graph_precision)
            tolerance = 1e-4 if graph_precision == "fp32" else 2e-2
            verdict = "ok" if err_rel <= tolerance else "FAIL"
            if verdict == "FAIL":
                failures.append(name)
            entry_note = f"max abs err {err_abs:.3e} (relative to output scale {err_rel:.3e}, limit {tolerance:g}) {verdict}"
        else:
            entry_note = "not checked (fused CUDA-only operators)" if fused is not None else "not checked"
        size = path.stat().st_size + (data.stat().st_size if data.exists() and not args.weightless else 0)
        print(f"{name}: {entry['parameters']:,} parameters, {size / 1e6:.2f} MB, {time.time() - t0:.1f} s; {entry_note}", flush=True)
        if fused is not None:
            print(f"{name}: fused operators {fused}", flush=True)
        entries[name] = entry

    try:
        tokenizers = source.tokenizers(out) if from_folder else write_tokenizers(out, None)
    except ImportError as error:
        listed = manifest.get("tokenizers") or {}
        if manifest.get("format") != MANIFEST_FORMAT or not listed:
            raise RuntimeError(f"tokenizer files cannot be written ({error}) and {manifest_path} lists none") from error
        print(f"warning: tokenizer files not written ({error}); keeping those {manifest_path} lists", flush=True)
        tokenizers = {name: entry["file"] for name, entry in listed.items()}
    tokenizers = tokenizer_entries(out, tokenizers)
    scheduler = source.scheduler() if from_folder else manifest.get("scheduler") or dict(SDXL_SCHEDULER)
    import diffusers
    import onnx
    import transformers

    manifest = {
        "format": MANIFEST_FORMAT,
        "name": args.name or out.name,
        "size": args.size,
        "precision": args.precision,
        "source": {
            "kind": kind,
            "seed": args.seed,
            "torch": torch.__version__.split("+")[0],
            "diffusers": diffusers.__version__,
            "transformers": transformers.__version__,
            "onnx": onnx.__version__,
            "exporter": "exporter-specs/export.py " + " ".join(shlex.quote(a) for a in (argv if argv is not None else sys.argv[1:])),
            "face_detector": f"MTCNN weights of {FACENET_REQUIREMENT} (PyPI, MIT licence)",
        },
        "config": cfg,
        "tokenizers": tokenizers,
        "scheduler": scheduler,
        "graphs": {name: entries[name] for name in GRAPH_ORDER if name in entries},
    }
    if args.precision == "fp16":
        manifest["notes"] = ["vae_decoder stays fp32: the SDXL VAE overflows in fp16",
                             "the face_detector graphs stay fp32"]
    if args.weightless:
        manifest["weightless"] = True
    manifest_path.write_text(json.dumps(manifest, indent=2) + "\n")
    print(f"wrote {manifest_path} in {time.time() - started:.1f} s", flush=True)
    if failures:
        print(f"FAILED: onnxruntime differs from PyTorch for {failures}", flush=True)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
