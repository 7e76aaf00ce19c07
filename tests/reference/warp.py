"""Reference crops for the bilinear warp (runtime/src/face.rs warp_affine_bilinear) on a noise
image, where every grey level of rounding shows: OpenCV's
cv2.warpAffine(img, M, (112, 112), flags=INTER_LINEAR, borderMode=BORDER_CONSTANT, borderValue=0)
for several similarity transforms (any rotation, scale from 0.4 to 3, the source's centre placed
at random in the crop, so that crops also sample outside the source).

Run once by hand from the repository root, on an x86-64 CPU with AVX2 and FMA (OpenCV's warp
uses fused multiply-adds there, which the Rust code reproduces on every CPU):

    "$(scripts/pyenv.sh)" tests/reference/warp.py

Writes into tests/data/warp/:
  noise.png        the 97x61 RGB source (uniform random bytes, seeded)
  <n>.png          the 112x112 RGB crop for case n
  cases.json       per case the 2x3 float64 matrix M given to warpAffine and its count of
                   non-black pixels, plus the versions and the CPU features OpenCV reported
"""

import json
import math
import pathlib

import cv2
import numpy as np

OUT = pathlib.Path(__file__).resolve().parents[1] / "data" / "warp"
SIZE = 112


def similarity(deg, scale, tx, ty):
    c, s = math.cos(math.radians(deg)), math.sin(math.radians(deg))
    return np.array([[scale * c, -scale * s, tx], [scale * s, scale * c, ty]], dtype=np.float64)


def main():
    OUT.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(20261201)
    img = rng.integers(0, 256, size=(61, 97, 3), dtype=np.uint8)  # H x W x RGB
    matrices = [similarity(23.0, 1.7, -40.0, 12.0), similarity(0.0, 1.0, 0.25, -0.5)]
    for _ in range(6):
        deg = float(rng.uniform(-180, 180))
        scale = float(np.exp(rng.uniform(math.log(0.4), math.log(3.0))))
        # The source centre lands somewhere in the crop, so that crops cross the source's edges.
        m = similarity(deg, scale, 0.0, 0.0)
        target = rng.uniform(10, SIZE - 10, size=2)
        m[:, 2] = target - m[:, :2] @ np.array([48.0, 30.0])
        matrices.append(m)
    # cv2 works on BGR, but the warp treats channels alike: write RGB files from RGB arrays.
    cv2.imwrite(str(OUT / "noise.png"), img[:, :, ::-1])
    cases = []
    for n, m in enumerate(matrices):
        crop = cv2.warpAffine(img, m, (SIZE, SIZE), flags=cv2.INTER_LINEAR,
                              borderMode=cv2.BORDER_CONSTANT, borderValue=0)
        cv2.imwrite(str(OUT / f"{n}.png"), crop[:, :, ::-1])
        cases.append({"file": f"{n}.png", "m": m.tolist(),
                      "nonzero": int(np.count_nonzero(crop.any(axis=2)))})
    out = {
        "generated_by": "tests/reference/warp.py",
        "versions": {"opencv": cv2.__version__, "numpy": np.__version__},
        "cpu_features": cv2.getCPUFeaturesLine(),
        "source": "noise.png",
        "size": SIZE,
        "cases": cases,
    }
    (OUT / "cases.json").write_text(json.dumps(out, indent=1) + "\n")
    print(f"{len(cases)} crops -> {OUT}")


if __name__ == "__main__":
    main()
