"""Reference ID injection schedule (runtime/src/splice.rs ids_active): ID-Patch's SDXL pipeline
gives the UNet and the ControlNet only the 77 text tokens at denoising step i while

    i < len(timesteps) * (1 - id_injection_ratio)

evaluated by CPython in float64, and the full sequence (text + ID tokens) from then on. This
script evaluates that expression for many step counts and ratios and records, per pair, the first
step that sees the ID tokens (num_steps when none does).

Ratios are written as the decimal strings a user would pass to --id-injection-ratio; Python's
float() and Rust's str::parse::<f64>() both round them correctly, to the same float64.

Run once by hand from the repository root:

    "$(scripts/pyenv.sh)" tests/reference/splice.py

Writes tests/data/splice/schedule.json.
"""

import json
import pathlib
import platform

STEPS = list(range(1, 61)) + [64, 100, 333, 1000]
RATIOS = ["0", "0.05", "0.1", "0.15", "0.2", "0.25", "0.3", "0.3333333333333333", "0.4", "0.45",
          "0.5", "0.55", "0.6", "0.65", "0.7", "0.75", "0.8", "0.85", "0.9", "0.95", "0.99", "1"]


def first_active(num_steps, ratio):
    timesteps = range(num_steps)
    for i, _ in enumerate(timesteps):
        if not i < len(timesteps) * (1 - ratio):
            return i
    return num_steps


def main():
    out = {
        "generated_by": "tests/reference/splice.py",
        "python": platform.python_version(),
        "steps": STEPS,
        # ratio -> first active step for each entry of "steps"
        "first_active": {r: [first_active(n, float(r)) for n in STEPS] for r in RATIOS},
    }
    path = pathlib.Path(__file__).resolve().parents[1] / "data" / "splice" / "schedule.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(out) + "\n")
    print(f"{len(STEPS)} step counts x {len(RATIOS)} ratios -> {path}")


if __name__ == "__main__":
    main()
