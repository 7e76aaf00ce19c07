"""Reference previews of the ControlNet condition (`idpatch condition --out`,
`idpatch generate --save-condition`): a float32 (3, H, W) RGB condition clamped to [0, 1], times
255, rounded to 8 bits and written as an RGB PNG with Pillow. Two conditions:

  tests/data/pipeline/condition.npy          the PyTorch pipeline run (tests/reference/pipeline.py)
  tests/data/condition/overlap_condition.npy  skeleton + overlapping patches
                                              (tests/reference/condition.py)

Run once by hand from the repository root:

    "$(scripts/pyenv.sh)" tests/reference/condition_preview.py

Writes tests/data/pipeline/condition_preview.png and tests/data/condition/overlap_preview.png
and prints the versions used.
"""

import pathlib

import numpy as np
import PIL
from PIL import Image

DATA = pathlib.Path(__file__).resolve().parents[1] / "data"
PAIRS = [
    ("pipeline/condition.npy", "pipeline/condition_preview.png"),
    ("condition/overlap_condition.npy", "condition/overlap_preview.png"),
]


def main():
    for source, target in PAIRS:
        condition = np.load(DATA / source)
        assert condition.dtype == np.float32 and condition.ndim == 3 and condition.shape[0] == 3
        rgb = np.round(np.clip(condition, 0.0, 1.0) * 255.0).astype(np.uint8).transpose(1, 2, 0)
        Image.fromarray(np.ascontiguousarray(rgb), mode="RGB").save(DATA / target)
        print(f"numpy {np.__version__}, Pillow {PIL.__version__}: {source} {rgb.shape} -> {target}")


if __name__ == "__main__":
    main()
