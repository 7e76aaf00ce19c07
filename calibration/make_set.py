#!/usr/bin/env python3
"""Write the calibration layout set: face photos from scikit-image's bundled data and layout files.

usage: make_set.py [--out calibration]

Faces (no download: every image ships inside the scikit-image wheel):
- `faces/lfw_NN.png`: 16 of the 100 face images of `skimage.data.lfw_subset()` (25x25 grey crops
  of Labeled Faces in the Wild, already centred on the face), upscaled to the 112x112 ArcFace
  input with OpenCV's bicubic filter and replicated to RGB. They are used as aligned crops (no
  `face_keypoints`).
- `faces/astronaut.png` and `faces/astronaut_rotated.png`: 224x224 crops of
  `skimage.data.astronaut()`, upright and rotated by 20 degrees about the face, with their five
  face points (picked by eye on the full photo, as in tests/reference/face.py), so the runtime's
  face alignment runs too.

Layouts (`layouts/NN_<W>x<H>_<P>p.json`): 20 files, 1 to 5 people (each count four times), at
eight sizes from 512x512 to 1216x832 (all multiples of 32); even-numbered layouts give every person
a COCO-17 pose, odd-numbered ones mix posed and pose-free people (a bare `position`), and the
first five are pose-free throughout. People stand side by side across the image with a little
jitter. Everything is drawn from numpy's default_rng(seed), so the output is byte for byte the
same on every run.
"""

from __future__ import annotations

import argparse
import json
import pathlib

import cv2
import numpy as np
import skimage.data

SIZES = [(512, 512), (768, 512), (512, 768), (640, 640), (768, 768), (1024, 1024), (832, 1216), (1216, 832)]
LFW_PICKS = list(range(0, 96, 6))  # 16 of the 100 faces (the first 100 images of lfw_subset are faces)

# Five face points (left eye, right eye, nose, mouth left, mouth right) on the full 512x512
# astronaut photo, picked by eye (the values of tests/reference/face.py).
ASTRONAUT_KEYPOINTS = np.array(
    [[205.0, 101.0], [246.7, 102.7], [225.0, 127.3], [205.0, 141.7], [244.0, 140.0]], dtype=np.float64
)

# A standing person's COCO-17 keypoints relative to the nose, in units of the person's height
# (nose to ankles): nose, eyes, ears, shoulders, elbows, wrists, hips, knees, ankles.
POSE = np.array(
    [
        [0.0, 0.0], [-0.03, -0.03], [0.03, -0.03], [-0.07, -0.01], [0.07, -0.01],
        [-0.12, 0.14], [0.12, 0.15], [-0.17, 0.32], [0.17, 0.30], [-0.20, 0.48], [0.22, 0.44],
        [-0.08, 0.50], [0.08, 0.51], [-0.09, 0.75], [0.09, 0.76], [-0.10, 1.0], [0.12, 1.02],
    ]
)


def write_png(path: pathlib.Path, rgb: np.ndarray) -> None:
    ok, data = cv2.imencode(".png", np.ascontiguousarray(rgb[:, :, ::-1]), [cv2.IMWRITE_PNG_COMPRESSION, 9])
    if not ok:
        raise SystemExit(f"make_set.py: cannot encode {path}")
    path.write_bytes(data.tobytes())


def write_faces(out: pathlib.Path) -> list[dict]:
    """Writes the face photos; returns one layout `face` entry (file plus optional points) each."""
    faces_dir = out / "faces"
    faces_dir.mkdir(parents=True, exist_ok=True)
    entries = []
    lfw = skimage.data.lfw_subset()
    for n, index in enumerate(LFW_PICKS):
        grey = np.clip(np.rint(lfw[index] * 255.0), 0, 255).astype(np.uint8)
        big = cv2.resize(grey, (112, 112), interpolation=cv2.INTER_CUBIC)
        name = f"lfw_{n:02d}.png"
        write_png(faces_dir / name, np.repeat(big[:, :, None], 3, axis=2))
        entries.append({"face": f"../faces/{name}"})
    full = skimage.data.astronaut()
    x0, y0 = 113, 16
    upright = full[y0 : y0 + 224, x0 : x0 + 224]
    write_png(faces_dir / "astronaut.png", upright)
    entries.append({"face": "../faces/astronaut.png", "face_keypoints": ASTRONAUT_KEYPOINTS - [x0, y0]})
    centre = tuple(ASTRONAUT_KEYPOINTS.mean(axis=0))
    rotation = cv2.getRotationMatrix2D(centre, 20.0, 1.0)
    rotated = cv2.warpAffine(full, rotation, (512, 512), flags=cv2.INTER_LINEAR)
    points = ASTRONAUT_KEYPOINTS @ rotation[:, :2].T + rotation[:, 2]
    write_png(faces_dir / "astronaut_rotated.png", rotated[y0 : y0 + 224, x0 : x0 + 224])
    entries.append({"face": "../faces/astronaut_rotated.png", "face_keypoints": points - [x0, y0]})
    for entry in entries:
        if "face_keypoints" in entry:
            entry["face_keypoints"] = [[round(float(x), 2), round(float(y), 2)] for x, y in entry["face_keypoints"]]
    return entries


def person(rng, faces: list[dict], face_index: int, x: float, height: int, posed: bool) -> dict:
    entry = dict(faces[face_index % len(faces)])
    body = height * rng.uniform(0.5, 0.7)
    nose_y = height * rng.uniform(0.1, 0.25)
    if posed:
        jitter = rng.normal(0.0, 0.004, size=POSE.shape)
        points = (POSE + jitter) * body + [x, nose_y]
        entry["keypoints"] = [[round(float(px), 1), round(float(py), 1), 0.9] for px, py in points]
    else:
        entry["position"] = [round(float(x), 1), round(float(nose_y), 1)]
    return entry


def write_layouts(out: pathlib.Path, faces: list[dict], seed: int) -> None:
    rng = np.random.default_rng(seed)
    layouts_dir = out / "layouts"
    layouts_dir.mkdir(parents=True, exist_ok=True)
    face_order = rng.permutation(len(faces))
    next_face = 0
    for i in range(20):
        people = 1 + i % 5
        width, height = SIZES[i % len(SIZES)]
        spacing = width / (people + 1)
        members = []
        for p in range(people):
            x = spacing * (p + 1) + rng.uniform(-0.15, 0.15) * spacing
            posed = i >= 5 and (i % 2 == 0 or p % 2 == 0)
            members.append(person(rng, faces, int(face_order[next_face % len(faces)]), x, height, posed))
            next_face += 1
        layout = {"width": width, "height": height, "people": members}
        name = f"{i:02d}_{width}x{height}_{people}p.json"
        (layouts_dir / name).write_text(json.dumps(layout, indent=1) + "\n")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=pathlib.Path, default=pathlib.Path(__file__).resolve().parent)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    faces = write_faces(args.out)
    write_layouts(args.out, faces, args.seed)


if __name__ == "__main__":
    main()
