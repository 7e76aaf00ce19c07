"""Stand-in checkpoints in the released formats, with random weights, for the --from-pretrained tests.

- a diffusers SDXL folder of the `tiny` architecture: unet, vae, text_encoder, text_encoder_2
  written by `save_pretrained` (default `*.safetensors` from one set of weights, `*.fp16.safetensors`
  from another, so a test can tell which was read), tokenizer and tokenizer_2 (transformers'
  CLIPTokenizer files; tokenizer_2 pads with "!"), scheduler/scheduler_config.json;
- a ControlNet folder (`ControlNetModel.from_unet` of the UNet, both variants);
- id-patch.bin: `torch.save({"patch_proj": state_dict, "prompt_proj": state_dict})` in the
  IP-Adapter-Plus layout (the layout test checks it against IP-Adapter's module);
- an ArcFace `.pth`: the full-size IR-SE50 state dict, as facexlib's recognition_arcface_ir_se50.pth.
"""

from __future__ import annotations

import copy
import json
import pathlib
import shutil
import sys

import torch

ROOT = pathlib.Path(__file__).resolve().parents[2]
SPECS = ROOT / "exporter-specs"
sys.path.insert(0, str(SPECS))

import export  # noqa: E402
from idpatch_models import ArcFaceIrSe, Resampler  # noqa: E402

SIZES = json.loads((SPECS / "sizes.json").read_text())
SDXL_PARTS = ("text_encoder", "text_encoder_2", "unet", "vae")


def diffusers_modules(seed: int) -> dict[str, torch.nn.Module]:
    """text_encoder, text_encoder_2, unet, vae and controlnet of the tiny architecture, eval mode,
    with zero- and one-initialised tensors made random (so no output ignores them)."""
    from diffusers import AutoencoderKL, ControlNetModel, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    params = SIZES["tiny"]
    torch.manual_seed(seed)
    unet = UNet2DConditionModel(**params["unet"])
    modules = {
        "text_encoder": CLIPTextModel(CLIPTextConfig(**params["text_encoder"])),
        "text_encoder_2": CLIPTextModelWithProjection(CLIPTextConfig(**params["text_encoder_2"])),
        "unet": unet,
        "vae": AutoencoderKL(**params["vae"]),
        "controlnet": ControlNetModel.from_unet(
            unet, conditioning_embedding_out_channels=tuple(params["controlnet"]["conditioning_embedding_out_channels"]),
            load_weights_from_unet=False),
    }
    generator = torch.Generator().manual_seed(seed)
    for module in modules.values():
        export.perturb_trivial_parameters(module, generator)
        module.eval()
    return modules


def rounded_to_fp16(modules: dict) -> dict:
    """float32 copies holding the values a float16 file stores."""
    return {name: copy.deepcopy(module).half().float() for name, module in modules.items()}


def write_tokenizers(sdxl: pathlib.Path, scratch: pathlib.Path) -> None:
    from transformers import CLIPTokenizer

    from clip_vocab import write_vocab

    vocab = scratch / "clip-vocab"
    vocab.mkdir(parents=True, exist_ok=True)
    write_vocab(vocab)
    files = {"vocab_file": str(vocab / "vocab.json"), "merges_file": str(vocab / "merges.txt"), "model_max_length": 77}
    # The SDXL folders' files: vocab.json, merges.txt and tokenizer_config.json (no tokenizer.json).
    for name, extra in (("tokenizer", {}), ("tokenizer_2", {"pad_token": "!"})):
        CLIPTokenizer(**files, **extra).save_pretrained(sdxl / name)
        (sdxl / name / "tokenizer.json").unlink()
        for file in ("vocab.json", "merges.txt"):
            shutil.copyfile(vocab / file, sdxl / name / file)


def write_sdxl(sdxl: pathlib.Path, default: dict | None, fp16: dict | None, scratch: pathlib.Path) -> None:
    """An SDXL folder with the default weights of `default` and/or the fp16 variant of `fp16`."""
    from diffusers import EulerDiscreteScheduler

    for part in SDXL_PARTS:
        if default is not None:
            default[part].save_pretrained(sdxl / part)
        if fp16 is not None:
            copy.deepcopy(fp16[part]).half().save_pretrained(sdxl / part, variant="fp16")
    write_tokenizers(sdxl, scratch)
    EulerDiscreteScheduler.from_config(export.SDXL_SCHEDULER).save_pretrained(sdxl / "scheduler")


def write_controlnet(folder: pathlib.Path, default: dict | None, fp16: dict | None) -> None:
    if default is not None:
        default["controlnet"].save_pretrained(folder)
    if fp16 is not None:
        copy.deepcopy(fp16["controlnet"]).half().save_pretrained(folder, variant="fp16")


def write_id_patch(path: pathlib.Path, seed: int) -> dict[str, Resampler]:
    """id-patch.bin with tiny resamplers (prompt_proj emits the tiny UNet's 64-wide tokens)."""
    torch.manual_seed(seed)
    resamplers = {name: Resampler(**SIZES["tiny"][name]).eval() for name in ("patch_proj", "prompt_proj")}
    generator = torch.Generator().manual_seed(seed)
    for module in resamplers.values():
        export.perturb_trivial_parameters(module, generator)
    torch.save({name: module.state_dict() for name, module in resamplers.items()}, path)
    return resamplers


def write_arcface(path: pathlib.Path, seed: int) -> ArcFaceIrSe:
    """Full-size IR-SE50 with random BatchNorm statistics."""
    torch.manual_seed(seed)
    model = ArcFaceIrSe().eval()
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, (torch.nn.BatchNorm1d, torch.nn.BatchNorm2d)):
                module.running_mean.normal_(0, 0.1)
                module.running_var.uniform_(0.5, 1.5)
    torch.save(model.state_dict(), path)
    return model


def reference_outputs(name: str, modules: dict, inputs: dict) -> dict:
    """What the stand-in modules compute for one graph's golden inputs, through diffusers' and
    transformers' own calls (not the exporter's graph wrappers); float32 numpy arrays."""
    t = {k: torch.from_numpy(v) for k, v in inputs.items()}
    with torch.no_grad():
        if name in ("text_encoder", "text_encoder_2"):
            out = modules[name](input_ids=t["input_ids"], output_hidden_states=True)
            result = {"hidden_states": out.hidden_states[-2]}
            if name == "text_encoder_2":
                result["text_embeds"] = out.text_embeds
        elif name == "unet":
            down = [t[f"down_residual_{i}"] for i in range(9)]
            result = {"noise_pred": modules["unet"](
                t["sample"], t["timestep"], encoder_hidden_states=t["encoder_hidden_states"],
                added_cond_kwargs={"text_embeds": t["text_embeds"], "time_ids": t["time_ids"]},
                down_block_additional_residuals=down, mid_block_additional_residual=t["mid_residual"]).sample}
        elif name == "controlnet":
            down, mid = modules["controlnet"](
                t["sample"], t["timestep"], encoder_hidden_states=t["encoder_hidden_states"],
                controlnet_cond=t["controlnet_cond"], conditioning_scale=float(t["conditioning_scale"][0]),
                added_cond_kwargs={"text_embeds": t["text_embeds"], "time_ids": t["time_ids"]}, return_dict=False)
            result = {f"down_residual_{i}": d for i, d in enumerate(down)} | {"mid_residual": mid}
        elif name == "vae_decoder":
            result = {"image": modules["vae"].decode(t["latent"]).sample}
        elif name == "arcface":
            result = {"embedding": modules["arcface"](t["face"])}
        elif name == "patch_proj":
            patches = modules["patch_proj"](t["id_embeds"])
            result = {"id_patches": patches.reshape(patches.shape[0], 3, 64, 64)}
        else:
            result = {"id_tokens": modules["prompt_proj"](t["id_embeds"])}
    return {k: v.float().numpy() for k, v in result.items()}
