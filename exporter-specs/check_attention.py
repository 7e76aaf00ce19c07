#!/usr/bin/env python3
"""Check that FusableAttnProcessor matches diffusers' default attention on the tiny UNet,
ControlNet and VAE decoder (random weights, fp32, CPU)."""

import json
import pathlib
import sys

import torch

SPECS = pathlib.Path(__file__).resolve().parent
sys.path.insert(0, str(SPECS))

from diffusers.models.attention_processor import AttnProcessor2_0  # noqa: E402

import export  # noqa: E402
from fusable_attention import FusableAttnProcessor  # noqa: E402


def main() -> int:
    torch.manual_seed(0)
    params = json.loads((SPECS / "sizes.json").read_text())["tiny"]
    unet = export.build_unet(params).eval()
    controlnet = export.build_controlnet(params).eval()
    vae = export.build_vae(params).eval()
    generator = torch.Generator().manual_seed(1)
    for module in (unet, controlnet, vae):
        export.perturb_trivial_parameters(module, generator)
    cfg = params["config"]
    batch, seq, side = 2, 77 + 32, 8
    sample = torch.randn(batch, 4, side, side)
    timestep = torch.tensor([999.0, 261.0])
    context = torch.randn(batch, seq, cfg["cross_attention_dim"])
    added = {"text_embeds": torch.randn(batch, cfg["pooled_dim"]), "time_ids": torch.tensor([[64.0, 64, 0, 0, 64, 64]] * batch)}
    cond = torch.rand(batch, 3, side * 8, side * 8)

    def run():
        with torch.no_grad():
            noise = unet(sample, timestep, encoder_hidden_states=context, added_cond_kwargs=added).sample
            down, mid = controlnet(sample, timestep, encoder_hidden_states=context, controlnet_cond=cond,
                                   added_cond_kwargs=added, return_dict=False)
            image = vae.decode(sample).sample
        return [noise, *down, mid, image]

    for module in (unet, controlnet, vae):
        module.set_attn_processor(AttnProcessor2_0())
    reference = run()
    for module in (unet, controlnet, vae):
        module.set_attn_processor(FusableAttnProcessor())
    fused = run()
    worst = max(float((a - b).abs().max() / b.abs().max()) for a, b in zip(fused, reference))
    print(f"max difference relative to output scale: {worst:.3e}")
    return 0 if worst < 1e-5 else 1


if __name__ == "__main__":
    sys.exit(main())
