"""PyTorch eager FP16 reference timings for the GPU figures in BENCHMARKS.md.

Times, on one CUDA GPU, an SDXL UNet and the ControlNet built from it (diffusers, random weights,
default SDPA attention) at 1024x1024 (128x128 latents), batch 2 (CFG):
  - one UNet call and one ControlNet call, sequence 77 and 77+16*people,
  - one ControlNet + UNet step, both sequence lengths,
  - the whole denoising loop (default 50 steps, 2 people) with the ID injection schedule: steps
    i < steps*(1 - id_injection_ratio) see the 77 text tokens only, later ones 77+16*people;
    Euler discrete scheduler with the SDXL base config, CFG 5.5, ControlNet scale 0.8.
Prints one JSON object with the medians and p90s in milliseconds.

usage (GPU machine; diffusers installed with --target DIR and put on PYTHONPATH):
    python benches/gpu/torch_reference.py [--steps 50] [--people 2] [--warmup 3] [--runs 20]

Timing does not depend on weight values, so random weights stand in for the released ones.
"""

import argparse
import json
import platform
import time

import numpy as np
import torch
from diffusers import ControlNetModel, EulerDiscreteScheduler, UNet2DConditionModel

# SDXL base UNet (stabilityai/stable-diffusion-xl-base-1.0 unet/config.json).
SDXL_UNET = dict(
    sample_size=128,
    in_channels=4,
    out_channels=4,
    down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
    up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
    block_out_channels=(320, 640, 1280),
    layers_per_block=2,
    transformer_layers_per_block=(1, 2, 10),
    attention_head_dim=(5, 10, 20),
    cross_attention_dim=2048,
    use_linear_projection=True,
    addition_embed_type="text_time",
    addition_time_embed_dim=256,
    projection_class_embeddings_input_dim=2816,
)
# A small UNet of the same structure, for checking this script on a CPU (--tiny).
TINY_UNET = dict(
    SDXL_UNET,
    block_out_channels=(32, 64, 64),
    transformer_layers_per_block=(1, 1, 1),
    attention_head_dim=(2, 4, 4),
    cross_attention_dim=2048,
    norm_num_groups=8,
)
SDXL_SCHEDULER = dict(
    beta_start=0.00085,
    beta_end=0.012,
    beta_schedule="scaled_linear",
    num_train_timesteps=1000,
    timestep_spacing="leading",
    steps_offset=1,
    prediction_type="epsilon",
)


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


def timed(fn, warmup, runs, device):
    for _ in range(warmup):
        fn()
    sync(device)
    samples = []
    for _ in range(runs):
        start = time.perf_counter()
        fn()
        sync(device)
        samples.append((time.perf_counter() - start) * 1e3)
    return {
        "median_ms": float(np.median(samples)),
        "p90_ms": float(np.percentile(samples, 90)),
        "min_ms": float(np.min(samples)),
        "runs": runs,
    }


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--height", type=int, default=1024)
    parser.add_argument("--width", type=int, default=1024)
    parser.add_argument("--people", type=int, default=2)
    parser.add_argument("--steps", type=int, default=50)
    parser.add_argument("--id-injection-ratio", type=float, default=0.8)
    parser.add_argument("--guidance", type=float, default=5.5)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--runs", type=int, default=20)
    parser.add_argument("--loop-runs", type=int, default=3)
    parser.add_argument("--tiny", action="store_true", help="small UNet in FP32 on the CPU, to check the script runs")
    args = parser.parse_args()

    if args.tiny:
        device, dtype, config = torch.device("cpu"), torch.float32, TINY_UNET
    else:
        device, dtype, config = torch.device("cuda"), torch.float16, SDXL_UNET
    torch.manual_seed(0)
    with torch.device(device):
        unet = UNet2DConditionModel(**config).to(dtype).eval()
        controlnet = ControlNetModel.from_unet(unet).to(dtype).eval()

    batch, h, w = 2, args.height // 8, args.width // 8
    seqs = [77, 77 + 16 * args.people]
    sample = torch.randn(batch, 4, h, w, device=device, dtype=dtype)
    timestep = torch.tensor([500.0] * batch, device=device)
    cond = torch.rand(batch, 3, args.height, args.width, device=device, dtype=dtype)
    added = {
        "text_embeds": torch.randn(batch, 2816 - 6 * 256, device=device, dtype=dtype),
        "time_ids": torch.tensor(
            [[args.height, args.width, 0, 0, args.height, args.width]] * batch, device=device, dtype=dtype
        ),
    }
    hidden = {s: torch.randn(batch, s, 2048, device=device, dtype=dtype) for s in seqs}

    def unet_call(s, x=sample, t=timestep, down=None, mid=None):
        return unet(
            x,
            t,
            encoder_hidden_states=hidden[s],
            added_cond_kwargs=added,
            down_block_additional_residuals=down,
            mid_block_additional_residual=mid,
            return_dict=False,
        )[0]

    def controlnet_call(s, x=sample, t=timestep):
        return controlnet(
            x,
            t,
            encoder_hidden_states=hidden[s],
            controlnet_cond=cond,
            conditioning_scale=0.8,
            added_cond_kwargs=added,
            return_dict=False,
        )

    def step(s, x=sample, t=timestep):
        down, mid = controlnet_call(s, x, t)
        return unet_call(s, x, t, down, mid)

    scheduler = EulerDiscreteScheduler(**SDXL_SCHEDULER)

    def loop():
        scheduler.set_timesteps(args.steps, device=device)
        latents = torch.randn(1, 4, h, w, device=device, dtype=torch.float32) * scheduler.init_noise_sigma
        first_id_step = int(args.steps * (1 - args.id_injection_ratio))
        for i, t in enumerate(scheduler.timesteps):
            s = seqs[0] if i < first_id_step else seqs[1]
            x = scheduler.scale_model_input(torch.cat([latents] * 2), t).to(dtype)
            eps = step(s, x, t.expand(batch)).float()
            eps_u, eps_c = eps.chunk(2)
            latents = scheduler.step(eps_u + args.guidance * (eps_c - eps_u), t, latents).prev_sample
        return latents

    results = {
        "torch": torch.__version__,
        "device": torch.cuda.get_device_name() if device.type == "cuda" else "cpu (--tiny)",
        "python": platform.python_version(),
        "height": args.height,
        "width": args.width,
        "batch": batch,
        "people": args.people,
        "attention": "sdpa",
    }
    with torch.inference_mode():
        for s in seqs:
            results[f"unet_seq{s}"] = timed(lambda: unet_call(s), args.warmup, args.runs, device)
            results[f"controlnet_seq{s}"] = timed(lambda: controlnet_call(s), args.warmup, args.runs, device)
            results[f"controlnet_unet_step_seq{s}"] = timed(lambda: step(s), args.warmup, args.runs, device)
        results[f"loop_{args.steps}_steps"] = timed(loop, 1, args.loop_runs, device)
    print(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
