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
    """(median, fastest) seconds per detection, and the number of faces."""
    mtcnn = MTCNN()
    boxes, _ = mtcnn.detect(img)
    for _ in range(warmup):
        mtcnn.detect(img)
    samples = []
    for _ in range(runs):
        start = time.perf_counter()
        mtcnn.detect(img)
        samples.append(time.perf_counter() - start)
    return statistics.median(samples), min(samples), len(boxes)


def read_medians():
    """Criterion's median estimate and fastest sample of each case, in seconds per detection."""
    medians = {}
    for case in CASES:
        folder = ROOT / "target/criterion/detect_1024" / case / "new"
        median = json.loads((folder / "estimates.json").read_text())["median"]["point_estimate"] / 1e9
        sample = json.loads((folder / "sample.json").read_text())
        fastest = min(t / n for t, n in zip(sample["times"], sample["iters"])) / 1e9
        medians[case] = (median, fastest)
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
    load = [os.getloadavg()[0]]
    before, fast_before, faces = time_facenet(img, args.warmup, args.runs)
    rust = rust_medians() if not args.skip_cargo else read_medians()
    after, fast_after, _ = time_facenet(img, args.warmup, args.runs)
    load.append(os.getloadavg()[0])
    facenet, fastest = (before + after) / 2, min(fast_before, fast_after)
    print(f"1024x1024 photo, {faces} faces, {os.cpu_count()} CPUs, torch {torch.__version__} with "
          f"{torch.get_num_threads()} threads; load average {load[0]:.1f} at the start, {load[1]:.1f} at the end")
    print(f"facenet-pytorch 2.6.0 MTCNN.detect: median {before * 1e3:.1f} ms before, {after * 1e3:.1f} ms after "
          f"({args.runs} runs each), mean of the two {facenet * 1e3:.1f} ms; fastest run {fastest * 1e3:.1f} ms")
    for case in CASES:
        median, fast = rust[case]
        print(f"idpatch detect ({case}): median {median * 1e3:.1f} ms, fastest {fast * 1e3:.1f} ms; "
              f"facenet-pytorch / idpatch: {facenet / median:.2f}x (medians), {fastest / fast:.2f}x (fastest)")


if __name__ == "__main__":
    main()
