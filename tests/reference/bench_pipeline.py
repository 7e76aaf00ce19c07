"""Reference summary of whole-pipeline timings (`idpatch bench --pipeline`, runtime/src/bench.rs
PipelineStats::from_runs), from the definitions in README.md, with numpy:

  - each of the ten per-run stages (faces, tokenize, text_encoders, id_graphs, condition,
    controlnet, unet, scheduler, vae_decode, to_rgb) gets numpy.median and numpy.percentile(90)
    (linear method) over the runs;
  - the total of a run is the sum of those ten stages (graph loading happens once, before the
    runs, and the first runs per sequence length are part of controlnet and unet, so neither is
    added); the total's median and p90 are taken over the runs' totals, which is not the sum of
    the stage medians;
  - the Rust-owned time of a run is faces + tokenize + condition + scheduler + to_rgb; the share
    is the median Rust-owned time over the median total;
  - the ControlNet time a control guidance window saved in a run is its skipped steps times its
    measured per-call time (controlnet_skipped * controlnet_call), summarised like a stage over
    the runs that skipped a step (a run that skipped none saved nothing to report); the call and
    skip counts reported are the last run's.

The per-run times are made up (integer nanoseconds, seeded), with per-run load_graphs and
first_runs values that must not reach the total. Run once by hand from the repository root:

    "$(scripts/pyenv.sh)" tests/reference/bench_pipeline.py

Writes tests/data/bench/pipeline_stats.json.
"""

import json
import pathlib

import numpy as np

STAGES = ["faces", "tokenize", "text_encoders", "id_graphs", "condition", "controlnet", "unet",
          "scheduler", "vae_decode", "to_rgb"]
RUST_OWNED = ["faces", "tokenize", "condition", "scheduler", "to_rgb"]
# Fields of a run's timings that are not per-run stages.
OTHER = ["load_graphs", "first_runs"]


def summary(values):
    return {"median_ms": float(np.median(values)), "p90_ms": float(np.percentile(values, 90))}


def make_case(rng, runs):
    # Typical magnitudes (ms) with a wide spread, so that run order and stage order both matter.
    scale_ms = {"faces": 2, "tokenize": 0.5, "text_encoders": 60, "id_graphs": 120,
                "condition": 0.6, "controlnet": 1500, "unet": 4000, "scheduler": 0.3,
                "vae_decode": 130, "to_rgb": 0.2, "load_graphs": 100, "first_runs": 3000}
    timings = []
    for _ in range(runs):
        run = {name: int(rng.integers(1, 4 * ms * 1e6)) for name, ms in scale_ms.items()}
        run["controlnet_call"] = int(rng.integers(1, 200e6))
        run["controlnet_calls"] = int(rng.integers(1, 50))
        run["controlnet_skipped"] = int(rng.integers(0, 10))
        timings.append(run)
    ms = {name: np.array([t[name] for t in timings]) / 1e6 for name in STAGES + OTHER}
    totals = sum(ms[name] for name in STAGES)
    rust = sum(ms[name] for name in RUST_OWNED)
    case = {
        "runs_ns": timings,
        "stages": {name: summary(ms[name]) for name in STAGES},
        "total": summary(totals),
        "rust_owned": summary(rust),
        "first_runs": summary(ms["first_runs"]),
        "rust_owned_share": float(np.median(rust) / np.median(totals)),
        "controlnet_saved": summary(
            [t["controlnet_skipped"] * t["controlnet_call"] / 1e6
             for t in timings if t["controlnet_skipped"] > 0]),
        "controlnet_calls": timings[-1]["controlnet_calls"],
        "controlnet_skipped": timings[-1]["controlnet_skipped"],
    }
    # The case only tells the two definitions apart when they differ.
    sum_of_medians = sum(case["stages"][name]["median_ms"] for name in STAGES)
    assert abs(sum_of_medians - case["total"]["median_ms"]) > 1.0, (runs, sum_of_medians)
    return case


def main():
    rng = np.random.default_rng(20261201)
    out = {
        "generated_by": "tests/reference/bench_pipeline.py",
        "numpy": np.__version__,
        "cases": [make_case(rng, runs) for runs in (3, 4, 7)],
    }
    path = pathlib.Path(__file__).resolve().parents[1] / "data" / "bench" / "pipeline_stats.json"
    path.write_text(json.dumps(out, indent=1) + "\n")
    print(path)


if __name__ == "__main__":
    main()
