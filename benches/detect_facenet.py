#!/usr/bin/env python3
"""Face detection speed: the runtime (benches/detect.rs, criterion, release build) against
facenet-pytorch 2.6.0's MTCNN, on the same 1024x1024 photo and the same CPU, in one run.

The photo is tests/data/mtcnn/group.png (512x512, eight faces) with every pixel doubled, built the
same way on both sides. facenet-pytorch runs with its defaults (the same detection settings) on
the CPU with torch's default thread count, unless --torch-threads says otherwise.

Run from the repository root in the facenet-pytorch environment:
    "$(scripts/pyenv.sh tests/reference/mtcnn-requirements.txt)" benches/detect_facenet.py
It runs `cargo bench --bench detect` (which needs the ONNX Runtime library: ORT_DYLIB_PATH, or
scripts/fetch-onnxruntime.sh), then times facenet-pytorch, and prints the medians and ratios.
"""

import argparse
import json
import os
import pathlib
import statistics
import subprocess
import time

import numpy as np
import torch
from facenet_pytorch import MTCNN
from PIL import Image

ROOT = pathlib.Path(__file__).resolve().parent.parent
CASES = ["tract", "ort-cpu"]


def photo_1024():
    small = np.asarray(Image.open(ROOT / "tests/data/mtcnn/group.png").convert("RGB"))
    return Image.fromarray(np.repeat(np.repeat(small, 2, axis=0), 2, axis=1))


def time_facenet(img, warmup, runs):
    mtcnn = MTCNN()
    boxes, _ = mtcnn.detect(img)
    for _ in range(warmup):
        mtcnn.detect(img)
    samples = []
    for _ in range(runs):
        start = time.perf_counter()
        mtcnn.detect(img)
        samples.append(time.perf_counter() - start)
    return statistics.median(samples), len(boxes)


def read_medians():
    """Criterion's median estimate of each case, in seconds."""
    medians = {}
    for case in CASES:
        estimates = ROOT / "target/criterion/detect_1024" / case / "new/estimates.json"
        medians[case] = json.loads(estimates.read_text())["median"]["point_estimate"] / 1e9
    return medians


def rust_medians():
    subprocess.run(["cargo", "bench", "--locked", "--bench", "detect", "--", "--noplot"], cwd=ROOT, check=True)
    return read_medians()


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--runs", type=int, default=20)
    parser.add_argument("--torch-threads", type=int, help="torch.set_num_threads (default: torch's choice)")
    parser.add_argument("--skip-cargo", action="store_true",
                        help="read the last `cargo bench --bench detect` results instead of running it")
    args = parser.parse_args()
    if args.torch_threads:
        torch.set_num_threads(args.torch_threads)
    img = photo_1024()
    # facenet-pytorch is timed before and after the runtime, so that a change in the machine's
    # load during the run shows.
    before, faces = time_facenet(img, args.warmup, args.runs)
    rust = rust_medians() if not args.skip_cargo else read_medians()
    after, _ = time_facenet(img, args.warmup, args.runs)
    facenet = (before + after) / 2
    print(f"1024x1024 photo, {faces} faces, {os.cpu_count()} CPUs, torch {torch.__version__} with "
          f"{torch.get_num_threads()} threads, load average {os.getloadavg()[0]:.1f}")
    print(f"facenet-pytorch 2.6.0 MTCNN.detect: median {before * 1e3:.1f} ms before, {after * 1e3:.1f} ms after "
          f"({args.runs} runs each); mean {facenet * 1e3:.1f} ms")
    for case in CASES:
        print(f"idpatch detect ({case}): median {rust[case] * 1e3:.1f} ms; facenet-pytorch / idpatch = "
              f"{facenet / rust[case]:.2f}x")


if __name__ == "__main__":
    main()
