"""Test photos for face detection, made from the photos scikit-image's wheel bundles.

Run once by hand from the repository root (then tests/reference/mtcnn.py, which runs
facenet-pytorch's MTCNN on them):
    "$(scripts/pyenv.sh)" tests/reference/mtcnn_images.py

Writes tests/data/mtcnn/<name>.png:
  astronaut   skimage.data.astronaut(), the 320x320 around the face (one frontal face)
  camera      skimage.data.camera(), 8-bit grey (a face in three-quarter view)
  group       512x512: the astronaut's head at four sizes (face about 110, 60, 34 and 24 px wide)
              and four LFW faces (skimage.data.lfw_subset(), 25x25, enlarged 4x), on a grey
              gradient
  border      320x240: faces cut by the left, top and right borders
  rotated     384x256: the astronaut's head turned by +20 and -30 degrees
  small       256x192: the astronaut's head with a face about 22 and 30 px wide
  lfw         200x200: four LFW faces enlarged 4x (four different people)
  coffee      skimage.data.coffee(), halved (no face)
  chelsea     skimage.data.chelsea(), halved (a cat; no human face)
"""

import os

import numpy as np
import skimage
import skimage.data
from PIL import Image

OUT = os.path.join(os.path.dirname(__file__), "..", "data", "mtcnn")

# The astronaut's head (and some shoulder) in skimage.data.astronaut(): x 150..310, y 20..200.
HEAD = (150, 20, 310, 200)


def save(name, array):
    Image.fromarray(array).save(os.path.join(OUT, f"{name}.png"), optimize=True)


def gradient(width, height):
    """A grey left-to-right gradient, RGB."""
    row = np.linspace(90, 170, width).astype(np.uint8)
    return np.repeat(np.repeat(row[None, :, None], height, axis=0), 3, axis=2)


def head(scale, angle=0.0):
    """The astronaut's head resized by `scale` (bicubic) and turned by `angle` degrees, with a mask
    of the pixels that belong to it (rotation leaves corners empty)."""
    img = Image.fromarray(skimage.data.astronaut()).crop(HEAD)
    size = (round(img.width * scale), round(img.height * scale))
    img = img.resize(size, Image.Resampling.BICUBIC)
    mask = Image.new("L", img.size, 255)
    if angle:
        img = img.rotate(angle, Image.Resampling.BICUBIC, expand=True)
        mask = mask.rotate(angle, Image.Resampling.BICUBIC, expand=True)
    return np.asarray(img), np.asarray(mask) > 127


def lfw_faces(indices, factor=4):
    """LFW faces (grey float 0..1, 25x25) enlarged `factor` times (bicubic), RGB."""
    faces = skimage.data.lfw_subset()
    out = []
    for i in indices:
        grey = Image.fromarray(np.round(faces[i] * 255).astype(np.uint8))
        grey = grey.resize((25 * factor, 25 * factor), Image.Resampling.BICUBIC)
        out.append(np.repeat(np.asarray(grey)[:, :, None], 3, axis=2))
    return out


def paste(canvas, patch, x, y, mask=None):
    """Pastes `patch` with its top-left corner at (x, y), clipped to the canvas."""
    h, w = patch.shape[:2]
    x0, y0 = max(x, 0), max(y, 0)
    x1, y1 = min(x + w, canvas.shape[1]), min(y + h, canvas.shape[0])
    part = patch[y0 - y : y1 - y, x0 - x : x1 - x]
    if mask is None:
        canvas[y0:y1, x0:x1] = part
    else:
        keep = mask[y0 - y : y1 - y, x0 - x : x1 - x]
        canvas[y0:y1, x0:x1][keep] = part[keep]


def main():
    os.makedirs(OUT, exist_ok=True)
    astronaut = skimage.data.astronaut()
    save("astronaut", np.ascontiguousarray(astronaut[0:320, 64:384]))
    save("camera", skimage.data.camera())

    group = gradient(512, 512)
    for scale, x, y in [(1.1, 10, 10), (0.6, 230, 20), (0.34, 360, 40), (0.24, 440, 50)]:
        paste(group, head(scale)[0], x, y)
    for face, x in zip(lfw_faces([0, 3, 7, 12]), [10, 135, 260, 385]):
        paste(group, face, x, 370)
    save("group", group)

    border = gradient(320, 240)
    paste(border, head(0.8)[0], -40, 60)
    paste(border, head(0.6)[0], 130, -45)
    paste(border, head(0.7)[0], 250, 70)
    save("border", border)

    rotated = gradient(384, 256)
    img, mask = head(0.8, 20.0)
    paste(rotated, img, 0, 10, mask)
    img, mask = head(0.8, -30.0)
    paste(rotated, img, 190, 10, mask)
    save("rotated", rotated)

    small = gradient(256, 192)
    paste(small, head(0.22)[0], 40, 60)
    paste(small, head(0.3)[0], 150, 50)
    save("small", small)

    lfw = np.zeros((200, 200, 3), np.uint8)
    for face, (x, y) in zip(lfw_faces([1, 20, 41, 66]), [(0, 0), (100, 0), (0, 100), (100, 100)]):
        paste(lfw, face, x, y)
    save("lfw", lfw)

    coffee = Image.fromarray(skimage.data.coffee())
    save("coffee", np.asarray(coffee.resize((coffee.width // 2, coffee.height // 2), Image.Resampling.BOX)))
    chelsea = Image.fromarray(skimage.data.chelsea())
    save("chelsea", np.asarray(chelsea.resize((chelsea.width // 2, chelsea.height // 2), Image.Resampling.BOX)))
    print(f"scikit-image {skimage.__version__}: wrote the test photos to {os.path.normpath(OUT)}")


if __name__ == "__main__":
    main()
