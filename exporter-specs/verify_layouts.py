#!/usr/bin/env python3
"""Check our checkpoint layouts against the public code that loads the released weights.

ArcFace: compares ArcFaceIrSe with facexlib's Backbone(50, 0.6, 'ir_se') (pass the path of a copy of
facexlib/recognition/arcface_arch.py; facexlib itself need not be installed): key names, shapes and
outputs with facexlib's weights loaded strictly into ours.
Resamplers: passes our state dict through diffusers' _convert_ip_adapter_image_proj_to_diffusers
(what ID-Patch's inferencer does with id-patch.bin) and compares outputs; then maps the diffusers
layout back with resampler_state_from_diffusers.
Run once by hand; results are recorded in exporter-specs/README.md.
"""

import argparse
import importlib.util
import json
import pathlib
import sys

import torch

SPECS = pathlib.Path(__file__).resolve().parent
sys.path.insert(0, str(SPECS))

from idpatch_models import ArcFaceIrSe, Resampler, resampler_state_from_diffusers  # noqa: E402


def check_arcface(arch_file: pathlib.Path) -> bool:
    spec = importlib.util.spec_from_file_location("facexlib_arcface_arch", arch_file)
    facexlib_arch = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(facexlib_arch)
    reference = facexlib_arch.Backbone(num_layers=50, drop_ratio=0.6, mode="ir_se").eval()
    ours = ArcFaceIrSe().eval()
    ref_state, our_state = reference.state_dict(), ours.state_dict()
    same_keys = set(ref_state) == set(our_state)
    same_shapes = same_keys and all(ref_state[k].shape == our_state[k].shape for k in ref_state)
    with torch.no_grad():
        for module in reference.modules():
            if isinstance(module, (torch.nn.BatchNorm1d, torch.nn.BatchNorm2d)):
                module.running_mean.normal_(0, 0.1)
                module.running_var.uniform_(0.5, 1.5)
                module.weight.normal_(1, 0.1)
                module.bias.normal_(0, 0.1)
    ours.load_state_dict(reference.state_dict(), strict=True)
    face = torch.rand(2, 3, 112, 112) * 2 - 1
    with torch.no_grad():
        difference = float((reference(face) - ours(face)).abs().max())
    print(f"arcface: {len(ref_state)} keys, same names {same_keys}, same shapes {same_shapes}, "
          f"output difference {difference:.3e}, parameters {sum(p.numel() for p in ours.parameters()):,}")
    return same_shapes and difference < 1e-5


def check_resamplers() -> bool:
    from diffusers.loaders.unet import UNet2DConditionLoadersMixin

    sizes = json.loads((SPECS / "sizes.json").read_text())["full"]
    ok = True
    for name in ("patch_proj", "prompt_proj"):
        ours = Resampler(**sizes[name]).eval()
        with torch.no_grad():
            for parameter in ours.parameters():
                parameter.normal_(0, 0.05)
        state = ours.state_dict()
        converted = UNet2DConditionLoadersMixin()._convert_ip_adapter_image_proj_to_diffusers(
            state, low_cpu_mem_usage=False
        ).eval()
        embeds = torch.randn(3, 1, 512)
        with torch.no_grad():
            difference = float((converted(embeds) - ours(embeds)).abs().max())
        back = resampler_state_from_diffusers(converted.state_dict())
        round_trip = set(back) == set(state) and all(torch.equal(back[k], state[k]) for k in state)
        inferred = Resampler.config_from_state_dict(state) == sizes[name]
        print(f"{name}: diffusers {type(converted).__name__} output difference {difference:.3e}, "
              f"diffusers layout maps back exactly {round_trip}, architecture inferred from shapes {inferred}")
        ok = ok and difference < 1e-5 and round_trip and inferred
    return ok


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--facexlib-arcface-arch", type=pathlib.Path, required=True)
    args = parser.parse_args()
    torch.manual_seed(0)
    ok = check_arcface(args.facexlib_arcface_arch) & check_resamplers()
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
