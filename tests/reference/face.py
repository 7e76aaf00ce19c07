"""Reference values for face alignment (ArcFace input preparation).

Run once by hand from the repository root:
    "$(scripts/pyenv.sh)" tests/reference/face.py

Inputs: crops of scikit-image's bundled astronaut photo (upright, rotated, scaled down, face near
the image edge), with five hand-placed keypoints each (left eye, right eye, nose, mouth left, mouth
right, in image x/y). Outputs, written to tests/data/face/:
  <case>.png            the source image (RGB)
  upright_aligned.png   the 112x112 crop cv2.warpAffine produced for "upright" (RGB)
  <case>_jpeg.jpg/.npy  a JPEG of the upright crop and cv2's decoding of it (RGB), for the loader
  cases.json            per case: keypoints, image file names, library versions
  <case>_transform.npy  SimilarityTransform().estimate(keypoints, template).params[:2] (2x3 f64)
  <case>_input.npy      the ArcFace input: aligned crop, BGR, NCHW (1,3,112,112), x/255*2-1, f32
"""

import json
import os

import cv2
import numpy as np
import skimage
import skimage.data
from skimage.transform import SimilarityTransform

OUT = os.path.join(os.path.dirname(__file__), "..", "data", "face")

TEMPLATE = np.array(
    [
        [38.2946, 51.6963],
        [73.5318, 51.5014],
        [56.0252, 71.7366],
        [41.5493, 92.3655],
        [70.7299, 92.2041],
    ],
    dtype=np.float64,
)

# Keypoints picked by eye on the full 512x512 astronaut image.
ASTRONAUT_KEYPOINTS = np.array(
    [[205.0, 101.0], [246.7, 102.7], [225.0, 127.3], [205.0, 141.7], [244.0, 140.0]],
    dtype=np.float64,
)


PNG_SMALL = [cv2.IMWRITE_PNG_COMPRESSION, 9]


def crop(img, kps, x0, y0, w, h):
    return np.ascontiguousarray(img[y0 : y0 + h, x0 : x0 + w]), kps - np.array([x0, y0])


def make_cases():
    full = skimage.data.astronaut()  # RGB uint8, 512x512
    cases = {}

    cases["upright"] = crop(full, ASTRONAUT_KEYPOINTS, 113, 16, 224, 224)

    # Rotated by 20 degrees about the face centre, so the transform has a rotation.
    centre = tuple(ASTRONAUT_KEYPOINTS.mean(axis=0))
    rot = cv2.getRotationMatrix2D(centre, 20.0, 1.0)
    rotated = cv2.warpAffine(full, rot, (512, 512), flags=cv2.INTER_LINEAR)
    rot_kps = ASTRONAUT_KEYPOINTS @ rot[:, :2].T + rot[:, 2]
    cases["rotated20"] = crop(rotated, rot_kps, 113, 16, 224, 224)

    # Scaled down to 0.45 and rotated by -12 degrees: the transform enlarges the face.
    small = cv2.resize(full, (230, 230), interpolation=cv2.INTER_AREA)
    small_kps = (ASTRONAUT_KEYPOINTS + 0.5) * (230 / 512) - 0.5
    rot = cv2.getRotationMatrix2D(tuple(small_kps.mean(axis=0)), -12.0, 1.0)
    small = cv2.warpAffine(small, rot, (230, 230), flags=cv2.INTER_LINEAR)
    small_kps = small_kps @ rot[:, :2].T + rot[:, 2]
    cases["small"] = crop(small, small_kps, 10, 0, 200, 160)

    # Face close to the left and top edges: the aligned crop samples outside the image (zero border).
    cases["edge"] = crop(full, ASTRONAUT_KEYPOINTS, 185, 80, 160, 176)
    return cases


def arcface_input(aligned_rgb):
    bgr = aligned_rgb[:, :, ::-1].astype(np.float32)
    x = bgr / np.float32(255.0) * np.float32(2.0) - np.float32(1.0)
    return np.ascontiguousarray(x.transpose(2, 0, 1)[None]).astype(np.float32)


def main():
    os.makedirs(OUT, exist_ok=True)
    meta = {
        "versions": {
            "scikit-image": skimage.__version__,
            "opencv": cv2.__version__,
            "numpy": np.__version__,
        },
        "template": TEMPLATE.tolist(),
        "cases": {},
    }
    for name, (img, kps) in make_cases().items():
        tform = SimilarityTransform.from_estimate(kps, TEMPLATE)
        assert tform, f"{name}: {tform}"
        m = tform.params[:2].copy()
        aligned = cv2.warpAffine(
            img, m, (112, 112), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT, borderValue=0
        )
        cv2.imwrite(os.path.join(OUT, f"{name}.png"), img[:, :, ::-1], PNG_SMALL)
        if name == "upright":
            cv2.imwrite(os.path.join(OUT, f"{name}_aligned.png"), aligned[:, :, ::-1], PNG_SMALL)
        np.save(os.path.join(OUT, f"{name}_transform.npy"), m)
        np.save(os.path.join(OUT, f"{name}_input.npy"), arcface_input(aligned))
        meta["cases"][name] = {
            "image": f"{name}.png",
            "width": img.shape[1],
            "height": img.shape[0],
            "keypoints": kps.tolist(),
        }

    # A small JPEG and OpenCV's decoding of it, for the loader test.
    upright = make_cases()["upright"][0][48:112, 80:144]
    ok, jpg = cv2.imencode(".jpg", upright[:, :, ::-1], [cv2.IMWRITE_JPEG_QUALITY, 90])
    assert ok
    with open(os.path.join(OUT, "upright_jpeg.jpg"), "wb") as f:
        f.write(jpg.tobytes())
    decoded = cv2.imdecode(jpg, cv2.IMREAD_COLOR)[:, :, ::-1]
    np.save(os.path.join(OUT, "upright_jpeg.npy"), np.ascontiguousarray(decoded))

    with open(os.path.join(OUT, "cases.json"), "w") as f:
        json.dump(meta, f, indent=1)
        f.write("\n")


if __name__ == "__main__":
    main()
