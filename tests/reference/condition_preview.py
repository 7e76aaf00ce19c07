"""Reference preview of the ControlNet condition (`idpatch generate --save-condition`,
`idpatch condition --out`): the condition tensor of the PyTorch pipeline run
(tests/data/pipeline/condition.npy, float32 (3, H, W) RGB, from tests/reference/pipeline.py)
clamped to [0, 1], times 255, rounded to 8 bits and written as an RGB PNG with Pillow.

Run once by hand from the repository root:

    "$(scripts/pyenv.sh)" tests/reference/condition_preview.py

Writes tests/data/pipeline/condition_preview.png and prints the versions used.
"""

import pathlib

import numpy as np
import PIL
from PIL import Image

DATA = pathlib.Path(__file__).resolve().parents[1] / "data" / "pipeline"


def main():
    condition = np.load(DATA / "condition.npy")
    assert condition.dtype == np.float32 and condition.ndim == 3 and condition.shape[0] == 3
    rgb = np.round(np.clip(condition, 0.0, 1.0) * 255.0).astype(np.uint8).transpose(1, 2, 0)
    Image.fromarray(np.ascontiguousarray(rgb), mode="RGB").save(DATA / "condition_preview.png")
    print(f"numpy {np.__version__}, Pillow {PIL.__version__}: {rgb.shape} -> "
          f"{DATA / 'condition_preview.png'}")


if __name__ == "__main__":
    main()
