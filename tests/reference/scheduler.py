"""Reference data for the scheduler tests: runs diffusers' schedulers and records what they compute.

Run once by hand (not in CI) from the repository root:
    "$(scripts/pyenv.sh)" tests/reference/scheduler.py
It writes tests/data/scheduler/reference.json.

Every case builds `<Class>.from_config(SDXL_BASE | overrides)` (what the runtime does with a
scheduler_config.json and a --scheduler choice), calls set_timesteps(steps) and records the
timesteps, sigmas and init_noise_sigma. It then runs the whole denoising chain on a 1x2x4x4
sample: step i gets model output `inputs(1000 + i)` and the previous step's output as its sample
(the first sample is `4 * inputs(7)`); Euler ancestral's noise for step i is `inputs(2000 + i)`
(injected in place of torch's random generator). `inputs(seed)` is a 64-bit LCG whose values are
exact float32 numbers in [-2, 2), so the Rust tests regenerate the same inputs bit for bit. For
the recorded steps (all when there are at most 8, else the first 5 and the last 3) the case keeps
scale_model_input's result and step()'s prev_sample.

A sweep records the timesteps alone for many step counts.
"""

import json
import os
import sys
import warnings

import numpy as np
import torch

import diffusers
from diffusers import (
    DDIMScheduler,
    DPMSolverMultistepScheduler,
    EulerAncestralDiscreteScheduler,
    EulerDiscreteScheduler,
)
from diffusers.schedulers import scheduling_euler_ancestral_discrete

warnings.filterwarnings("ignore")

# scheduler/scheduler_config.json of stabilityai/stable-diffusion-xl-base-1.0.
SDXL_BASE = {
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

CLASSES = {
    "euler": EulerDiscreteScheduler,
    "euler-a": EulerAncestralDiscreteScheduler,
    "ddim": DDIMScheduler,
    "dpmpp-2m": DPMSolverMultistepScheduler,
}

SHAPE = (1, 2, 4, 4)
MASK = (1 << 64) - 1


def inputs(seed, n=int(np.prod(SHAPE))):
    """n exact float32 values in [-2, 2) from a 64-bit LCG started at `seed`."""
    x = seed & MASK
    out = []
    for _ in range(n):
        x = (x * 6364136223846793005 + 1442695040888963407) & MASK
        out.append(((x >> 40) / 16777216.0) * 4.0 - 2.0)
    return np.array(out, dtype=np.float32)


def tensor(values):
    return torch.from_numpy(values.reshape(SHAPE).copy())


def f32_list(t):
    """Shortest decimal that reads back as the same float32."""
    return [float(str(v)) for v in np.asarray(t, dtype=np.float32).reshape(-1)]


class InjectedNoise:
    """Stands in for randn_tensor in the ancestral scheduler: step i gets inputs(2000 + i)."""

    def __init__(self):
        self.step = 0

    def __call__(self, shape, **kwargs):
        values = tensor(inputs(2000 + self.step))
        self.step += 1
        return values


def build(kind, overrides):
    config = dict(SDXL_BASE)
    config.update(overrides)
    return CLASSES[kind].from_config(config), config


def run_case(name, kind, overrides, steps):
    scheduler, config = build(kind, overrides)
    scheduler.set_timesteps(steps)
    timesteps = scheduler.timesteps
    has_sigmas = kind != "ddim"
    init_noise_sigma = float(scheduler.init_noise_sigma)
    case = {
        "name": name,
        "kind": kind,
        "config": config,
        "steps": steps,
        "timesteps": [float(t) if timesteps.is_floating_point() else int(t) for t in timesteps],
        "sigmas": [float(s) for s in scheduler.sigmas] if has_sigmas else None,
        "init_noise_sigma": init_noise_sigma,
    }
    n = len(timesteps)
    recorded = list(range(n)) if n <= 8 else [0, 1, 2, 3, 4, n - 3, n - 2, n - 1]
    noise = InjectedNoise()
    scheduling_euler_ancestral_discrete.randn_tensor = noise
    sample = tensor(inputs(7) * np.float32(4.0))
    scaled_inputs, outputs = [], []
    for i, t in enumerate(timesteps):
        noise.step = i
        scaled = scheduler.scale_model_input(sample, t)
        prev = scheduler.step(tensor(inputs(1000 + i)), t, sample).prev_sample
        if i in recorded:
            scaled_inputs.append(f32_list(scaled))
            outputs.append(f32_list(prev))
        sample = prev
    case["recorded_steps"] = recorded
    case["scaled_inputs"] = scaled_inputs
    case["outputs"] = outputs
    return case


CASES = [
    # (name, kind, overrides, step counts)
    ("sdxl", "euler", {}, [1, 7, 30, 50]),
    ("linear_betas", "euler", {"beta_schedule": "linear", "beta_start": 0.0001, "beta_end": 0.02}, [30]),
    ("trailing", "euler", {"timestep_spacing": "trailing"}, [7, 30]),
    ("linspace", "euler", {"timestep_spacing": "linspace"}, [7, 50]),
    ("v_prediction", "euler", {"prediction_type": "v_prediction"}, [30]),
    ("karras", "euler", {"use_karras_sigmas": True}, [7, 30]),
    ("final_sigma_min", "euler", {"final_sigmas_type": "sigma_min"}, [30]),
    ("sdxl", "euler-a", {}, [1, 7, 30]),
    ("trailing", "euler-a", {"timestep_spacing": "trailing"}, [30]),
    ("linspace", "euler-a", {"timestep_spacing": "linspace"}, [7]),
    ("v_prediction", "euler-a", {"prediction_type": "v_prediction"}, [7]),
    ("sdxl", "ddim", {}, [1, 7, 50]),
    ("alpha_to_one", "ddim", {"set_alpha_to_one": True}, [30]),
    ("clip_sample", "ddim", {"clip_sample": True}, [7]),
    ("clip_sample_range", "ddim", {"clip_sample": True, "clip_sample_range": 1.5}, [7]),
    ("trailing", "ddim", {"timestep_spacing": "trailing"}, [30]),
    ("linspace", "ddim", {"timestep_spacing": "linspace"}, [7]),
    ("v_prediction", "ddim", {"prediction_type": "v_prediction"}, [7]),
    ("sdxl", "dpmpp-2m", {}, [1, 7, 30, 50]),
    ("sigma_min", "dpmpp-2m", {"final_sigmas_type": "sigma_min"}, [7, 30]),
    ("karras", "dpmpp-2m", {"use_karras_sigmas": True}, [7, 30]),
    ("trailing", "dpmpp-2m", {"timestep_spacing": "trailing"}, [30]),
    ("linspace", "dpmpp-2m", {"timestep_spacing": "linspace"}, [7]),
    ("v_prediction", "dpmpp-2m", {"prediction_type": "v_prediction"}, [30]),
    ("euler_at_final", "dpmpp-2m", {"final_sigmas_type": "sigma_min", "euler_at_final": True}, [30]),
    ("no_lower_order_final", "dpmpp-2m", {"final_sigmas_type": "sigma_min", "lower_order_final": False}, [7]),
    ("order1", "dpmpp-2m", {"solver_order": 1}, [7]),
    ("order3", "dpmpp-2m", {"solver_order": 3}, [30]),
    ("heun", "dpmpp-2m", {"solver_type": "heun"}, [30]),
]

SWEEP_STEPS = list(range(1, 51)) + [64, 100, 333]
SWEEPS = [
    (kind, spacing, overrides)
    # Euler ancestral builds its timesteps exactly like Euler.
    for kind in ["euler", "ddim", "dpmpp-2m"]
    for spacing, overrides in [
        ("leading", {}),
        ("trailing", {"timestep_spacing": "trailing"}),
        ("linspace", {"timestep_spacing": "linspace"}),
    ]
] + [("euler", "karras", {"use_karras_sigmas": True}), ("dpmpp-2m", "karras", {"use_karras_sigmas": True})]


def main():
    out_dir = os.path.join(os.path.dirname(__file__), "..", "data", "scheduler")
    os.makedirs(out_dir, exist_ok=True)
    cases = []
    for name, kind, overrides, step_counts in CASES:
        for steps in step_counts:
            cases.append(run_case(f"{kind}/{name}/{steps}", kind, overrides, steps))
    sweeps = []
    for kind, label, overrides in SWEEPS:
        scheduler, config = build(kind, overrides)
        entries = []
        for steps in SWEEP_STEPS:
            scheduler.set_timesteps(steps)
            ts = scheduler.timesteps
            entries.append([float(t) if ts.is_floating_point() else int(t) for t in ts])
        sweeps.append({"kind": kind, "label": label, "config": config, "steps": SWEEP_STEPS, "timesteps": entries})
    data = {
        "generated_by": "tests/reference/scheduler.py",
        "versions": {
            "diffusers": diffusers.__version__,
            "torch": torch.__version__,
            "numpy": np.__version__,
            "python": sys.version.split()[0],
        },
        "sample_shape": list(SHAPE),
        "cases": cases,
        "timestep_sweeps": sweeps,
    }
    path = os.path.join(out_dir, "reference.json")
    with open(path, "w") as f:
        json.dump(data, f, separators=(",", ":"))
        f.write("\n")
    print(f"wrote {path}: {len(cases)} cases, {os.path.getsize(path)} bytes")


if __name__ == "__main__":
    main()
