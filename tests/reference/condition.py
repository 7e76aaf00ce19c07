"""Reference outputs for the ControlNet condition image (run by hand, not in CI).

Skeletons are drawn with OpenCV the way ID-Patch's draw_openpose_from_mmpose does (COCO-17 ->
OpenPose-18 with a synthesised neck, cv2.circle joints, cv2.ellipse2Poly + cv2.fillConvexPoly limbs,
cv2.addWeighted 0.4/0.6 blend, float32 keypoint arithmetic); ID patches are composited with numpy
the way IDPatchInferencer.generate does (64x64 windows, round half to even, sums, crop of the
32-pixel padding); bf16 windows come from torch.

Writes into tests/data/condition/:
  <case>.json           layout (no faces: the patches are supplied)
  <case>_skeleton.png   skeleton, RGB u8
  <case>_patches.npy    float32 (F,3,64,64)            [composited cases only]
  <case>_condition.npy  float32 (3,H,W)                [composited cases only]
  windows.json          patch windows for sample centres, exact and bf16
"""

import json
import math
import pathlib

import cv2
import numpy as np
import torch

OUT = pathlib.Path(__file__).resolve().parents[1] / "data" / "condition"
THRESHOLD = 0.3
STICK = 4
PAD = 32

# OpenPose-18 slot <- index into COCO-17 extended with the neck at 17.
OPENPOSE_FROM_COCO = [0, 17, 6, 8, 10, 5, 7, 9, 12, 14, 16, 11, 13, 15, 2, 1, 4, 3]
# Limbs as OpenPose slot pairs; limb n is drawn in COLORS[n].
LIMBS = [(1, 2), (1, 5), (2, 3), (3, 4), (5, 6), (6, 7), (1, 8), (8, 9), (9, 10), (1, 11),
         (11, 12), (12, 13), (1, 0), (0, 14), (14, 16), (0, 15), (15, 17)]
COLORS = [(255, 0, 0), (255, 85, 0), (255, 170, 0), (255, 255, 0), (170, 255, 0), (85, 255, 0),
          (0, 255, 0), (0, 255, 85), (0, 255, 170), (0, 255, 255), (0, 170, 255), (0, 85, 255),
          (0, 0, 255), (85, 0, 255), (170, 0, 255), (255, 0, 255), (255, 0, 170), (255, 0, 85)]


def to_openpose(coco):
    """(17,3) float32 [x, y, score] -> (18,3) float32 in OpenPose order."""
    neck = (coco[5] + coco[6]) / 2
    neck[2] = min(coco[5, 2], coco[6, 2])
    extended = np.concatenate([coco, neck[None]], axis=0)
    return extended[OPENPOSE_FROM_COCO]


def draw_skeleton(height, width, people):
    joints = np.zeros((height, width, 3), np.uint8)
    poses = [to_openpose(p) for p in people]
    for pose in poses:
        on_limb = set()
        for a, b in LIMBS:
            if pose[a, 2] > THRESHOLD and pose[b, 2] > THRESHOLD:
                on_limb.update((a, b))
        for j in sorted(on_limb):
            cv2.circle(joints, (int(pose[j, 0]), int(pose[j, 1])), 4, COLORS[j], thickness=-1)
    limbs = joints.copy()
    for pose in poses:
        for n, (a, b) in enumerate(LIMBS):
            if not (pose[a, 2] > THRESHOLD and pose[b, 2] > THRESHOLD):
                continue
            xs, ys = pose[[a, b], 0], pose[[a, b], 1]
            length = ((ys[0] - ys[1]) ** 2 + (xs[0] - xs[1]) ** 2) ** 0.5
            angle = math.degrees(math.atan2(ys[0] - ys[1], xs[0] - xs[1]))
            polygon = cv2.ellipse2Poly((int(xs.mean()), int(ys.mean())), (int(length / 2), STICK),
                                       int(angle), 0, 360, 1)
            cv2.fillConvexPoly(limbs, polygon, COLORS[n])
    return cv2.addWeighted(joints, 0.4, limbs, 0.6, 0)


def windows(centres, bf16):
    """(xmin, ymin, xmax, ymax) per centre, as the reference rounds them."""
    t = torch.tensor(np.asarray(centres, np.float32))
    if bf16:
        t = t.to(torch.bfloat16)
        lo = torch.round(t - PAD).int().numpy()
        hi = torch.round(t + PAD).int().numpy()
    else:
        c = np.asarray(centres, np.float32).astype(np.float64)
        lo = np.round(c - PAD).astype(np.int64)
        hi = np.round(c + PAD).astype(np.int64)
    return [(int(a[0]), int(a[1]), int(b[0]), int(b[1])) for a, b in zip(lo, hi)]


def composite(skeleton, centres, patches):
    height, width = skeleton.shape[:2]
    canvas = np.zeros((3, height + 2 * PAD, width + 2 * PAD), np.float32)
    for (xmin, ymin, xmax, ymax), patch in zip(windows(centres, False), patches):
        if xmin + PAD < 0 or xmax - PAD >= width or ymin + PAD < 0 or ymax - PAD >= height:
            continue
        canvas[:, ymin + PAD:ymax + PAD, xmin + PAD:xmax + PAD] += patch
    return skeleton.transpose(2, 0, 1).astype(np.float32) / 255 + canvas[:, PAD:-PAD, PAD:-PAD]


def f32_list(a):
    return [float(v) for v in np.asarray(a, np.float32).ravel()]


def person_json(p):
    if "keypoints" in p:
        k = np.asarray(p["keypoints"], np.float32)
        return {"keypoints": [f32_list(row) for row in k]}
    return {"position": f32_list(p["position"])}


def centre_of(p):
    return p["position"] if "position" in p else np.asarray(p["keypoints"], np.float32)[0, :2]


def standing(cx, top, scale, scores=None):
    """A plausible standing COCO-17 pose, nose at (cx, top), `scale` ~ shoulder half-width."""
    s = scale
    pts = [(0, 0), (-0.3, -0.3), (0.3, -0.3), (-0.7, -0.1), (0.7, -0.1),  # nose eyes ears
           (-1.3, 1.5), (1.2, 1.6), (-1.8, 3.4), (1.9, 3.2), (-2.1, 5.0), (2.4, 4.6),  # arms
           (-0.8, 5.2), (0.8, 5.3), (-0.9, 7.9), (1.1, 8.0), (-1.0, 10.5), (1.3, 10.7)]  # legs
    scores = scores if scores is not None else [0.9] * 17
    return [[cx + dx * s, top + dy * s, sc] for (dx, dy), sc in zip(pts, scores)]


def random_person(rng, width, height):
    cx, cy = rng.uniform(-30, width + 30), rng.uniform(-30, height + 30)
    spread = rng.uniform(10, 120)
    kps = [[cx + rng.normal() * spread, cy + rng.normal() * spread, rng.uniform(0.0, 1.0)]
           for _ in range(17)]
    return {"keypoints": [[round(a, 2), round(b, 2), round(c, 3)] for a, b, c in kps]}


def write_case(name, width, height, people, seed=None):
    layout = {"width": width, "height": height, "people": [person_json(p) for p in people]}
    (OUT / f"{name}.json").write_text(json.dumps(layout, indent=1) + "\n")
    poses = [np.asarray(p["keypoints"], np.float32) for p in layout["people"] if "keypoints" in p]
    skeleton = draw_skeleton(height, width, poses)
    cv2.imwrite(str(OUT / f"{name}_skeleton.png"), skeleton[:, :, ::-1])  # file holds RGB
    if seed is not None:
        rng = np.random.default_rng(seed)
        patches = rng.standard_normal((len(people), 3, 64, 64)).astype(np.float32)
        centres = [centre_of(p) for p in layout["people"]]
        np.save(OUT / f"{name}_patches.npy", patches)
        np.save(OUT / f"{name}_condition.npy", composite(skeleton, centres, patches))


def main():
    OUT.mkdir(parents=True, exist_ok=True)
    write_case("single", 384, 512, [{"keypoints": standing(190, 90, 22)}])

    low = [0.9] * 17
    low[3], low[9], low[14] = 0.1, 0.29, 0.3  # left ear, left wrist, right knee dropped
    no_neck = [0.8] * 17
    no_neck[6] = 0.2  # right shoulder below threshold: neck invalid too
    write_case("group", 896, 1152, [
        {"keypoints": standing(200, 300, 40)},
        {"keypoints": standing(450, 280, 45, low)},
        {"keypoints": standing(700, 320, 38, no_neck)},
    ])

    write_case("edge", 320, 256, [
        {"keypoints": standing(300, -20, 30)},   # off the right and bottom edges
        {"keypoints": standing(10, 120, 25)},    # off the left edge
    ])

    write_case("tiny", 64, 64, [{"keypoints": standing(31.6, 8.4, 2.5)}], seed=7)

    write_case("overlap", 96, 80, [
        {"keypoints": standing(30.4, 28.5, 3)},
        {"position": [50.5, 35.5]},   # overlaps the first patch; .5 rounds to even
        {"position": [94.0, 78.7]},   # clipped by the right and bottom edges
        {"position": [-5.0, 40.0]},   # centre outside the image: skipped
    ], seed=11)

    rng = np.random.default_rng(1234)
    for k in range(12):
        write_case(f"random{k}", 256, 192, [random_person(rng, 256, 192) for _ in range(3)])

    samples = [[498.0, 10.0], [301.3, 700.7], [-0.5, 0.5], [31.5, 32.5], [255.9, 511.0],
               [1000.6, 77.5], [0.49, 99.51]]
    samples = [f32_list(s) for s in samples]
    (OUT / "windows.json").write_text(json.dumps({
        "centres": samples,
        "exact": windows(samples, False),
        "bf16": windows(samples, True),
    }, indent=1) + "\n")


if __name__ == "__main__":
    main()
