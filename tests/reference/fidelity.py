"""Reference values for the fidelity comparison (runtime/src/fidelity.rs): cosine similarity,
largest absolute and relative error with numpy in float64, PSNR with scikit-image's
`peak_signal_noise_ratio(a, b, data_range=255)`, and the face crop with OpenCV's
`cv2.warpAffine(img, [[s, 0, 56 - s*cx], [0, s, 56 - s*cy]], (112, 112), INTER_LINEAR,
BORDER_CONSTANT, 0)` where s = 112 / side. Inputs are seeded. Run once by hand from the repository
root:

    "$(scripts/pyenv.sh)" tests/reference/fidelity.py

Writes tests/data/fidelity/metrics.json.
"""

import json
import pathlib

import cv2
import numpy as np
from skimage.metrics import peak_signal_noise_ratio

OUT = pathlib.Path(__file__).resolve().parents[1] / "data" / "fidelity" / "metrics.json"


def vector_case(a: np.ndarray, b: np.ndarray) -> dict:
    a64, b64 = a.astype(np.float64), b.astype(np.float64)
    err = np.abs(b64 - a64)
    return {
        "a": a.tolist(),
        "b": b.tolist(),
        "cosine": float(np.dot(a64, b64) / (np.linalg.norm(a64) * np.linalg.norm(b64))),
        "max_abs_err": float(err.max()),
        "max_rel_err": float(err.max() / np.abs(a64).max()),
    }


def main() -> None:
    rng = np.random.default_rng(13)
    vectors = []
    for n, noise in [(16, 0.01), (257, 0.2), (1000, 1.0)]:
        a = rng.standard_normal(n).astype(np.float32)
        b = (a + noise * rng.standard_normal(n)).astype(np.float32)
        vectors.append(vector_case(a, b))
    images = []
    for w, h, flips in [(5, 3, 4), (17, 9, 200), (4, 4, 0)]:
        a = rng.integers(0, 256, size=(h, w, 3), dtype=np.uint8)
        b = a.copy()
        idx = rng.choice(a.size, size=flips, replace=False)
        flat = b.reshape(-1)
        flat[idx] = rng.integers(0, 256, size=flips, dtype=np.uint8)
        psnr = None if flips == 0 or np.array_equal(a, b) else float(peak_signal_noise_ratio(a, b, data_range=255))
        images.append({"width": w, "height": h, "a": a.reshape(-1).tolist(), "b": b.reshape(-1).tolist(), "psnr": psnr})
    # The crop: the same made-up image the test builds, pixel i of the flat RGB buffer = i*7 % 251.
    w, h, cx, cy, side = 150, 90, 40.5, 30.25, 128.0
    img = (np.arange(w * h * 3) * 7 % 251).astype(np.uint8).reshape(h, w, 3)
    s = 112.0 / side
    m = np.array([[s, 0.0, 56.0 - s * cx], [0.0, s, 56.0 - s * cy]])
    crop = cv2.warpAffine(img, m, (112, 112), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT, borderValue=0)
    data = {
        "vectors": vectors,
        "images": images,
        "crop": {"width": w, "height": h, "cx": cx, "cy": cy, "side": side, "expected": crop.reshape(-1).tolist()},
    }
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text(json.dumps(data) + "\n")


if __name__ == "__main__":
    main()
