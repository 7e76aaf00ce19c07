"""Reference face detections: facenet-pytorch 2.6.0's MTCNN on the test photos.

Run once by hand from the repository root, after tests/reference/mtcnn_images.py, in the
environment with facenet-pytorch's pinned dependencies:
    "$(scripts/pyenv.sh tests/reference/mtcnn-requirements.txt)" tests/reference/mtcnn.py

Writes to tests/data/mtcnn/:
  reference.json   per photo, MTCNN().detect(img, landmarks=True) with the defaults (min face
                   20, thresholds 0.6/0.7/0.7, factor 0.709, largest face first): boxes
                   [x1, y1, x2, y2], scores and the five landmarks, as the float32 values it
                   returned; plus the library versions
  replay_<photo>/  for two photos, every network call of that detection: the sha256 of the input
                   batch (float32, NCHW, little-endian) in replay.json and the outputs as
                   <net>_<call>_<output>.npy, so the runtime can run its own code between the
                   networks on exactly these network outputs
  nms.json         torchvision.ops.nms and facenet-pytorch's "Min" NMS (batched_nms_numpy) on
                   random boxes with tied scores
"""

import hashlib
import json
import os

import numpy as np
import PIL
import torch
import torchvision
from facenet_pytorch import MTCNN
from facenet_pytorch.models.utils.detect_face import batched_nms_numpy
from PIL import Image

DATA = os.path.join(os.path.dirname(__file__), "..", "data", "mtcnn")
PHOTOS = ["astronaut", "camera", "group", "border", "rotated", "small", "lfw", "coffee", "chelsea"]
REPLAY = ["small", "border"]
OUTPUT_NAMES = {"pnet": ["regression", "probability"], "rnet": ["regression", "probability"],
                "onet": ["regression", "landmarks", "probability"]}


class Recorder(torch.nn.Module):
    """Passes a network's calls through and keeps their inputs and outputs."""

    def __init__(self, net):
        super().__init__()
        self.net = net
        self.calls = []

    def forward(self, x):
        out = self.net(x)
        self.calls.append((x.detach().contiguous().numpy().copy(), [o.detach().numpy().copy() for o in out]))
        return out


def load(name):
    # Grey photos are expanded to RGB, as the runtime's image loader does.
    return Image.open(os.path.join(DATA, f"{name}.png")).convert("RGB")


def detections(mtcnn, img):
    boxes, probs, points = mtcnn.detect(img, landmarks=True)
    if boxes is None:
        return []
    return [
        {"box": [float(v) for v in box], "score": float(prob), "landmarks": [[float(x), float(y)] for x, y in pts]}
        for box, prob, pts in zip(boxes, probs, points)
    ]


def sha256(array):
    return hashlib.sha256(np.ascontiguousarray(array, dtype="<f4").tobytes()).hexdigest()


def replay(name):
    """Runs MTCNN on one photo with every network call recorded."""
    mtcnn = MTCNN()
    recorders = {net: Recorder(getattr(mtcnn, net)) for net in OUTPUT_NAMES}
    for net, recorder in recorders.items():
        setattr(mtcnn, net, recorder)
    faces = detections(mtcnn, load(name))
    folder = os.path.join(DATA, f"replay_{name}")
    os.makedirs(folder, exist_ok=True)
    calls = {}
    for net, recorder in recorders.items():
        batches = recorder.calls
        if net != "pnet" and len(batches) > 1:
            # fixed_batch_process splits at 512 crops; the runtime sends one batch.
            batches = [(np.concatenate([b[0] for b in batches]),
                        [np.concatenate([b[1][k] for b in batches]) for k in range(len(OUTPUT_NAMES[net]))])]
        calls[net] = []
        for index, (inputs, outputs) in enumerate(batches):
            entry = {"input_shape": list(inputs.shape), "input_sha256": sha256(inputs), "outputs": {}}
            for output_name, value in zip(OUTPUT_NAMES[net], outputs):
                file = f"{net}_{index}_{output_name}.npy"
                np.save(os.path.join(folder, file), value.astype(np.float32))
                entry["outputs"][output_name] = file
            calls[net].append(entry)
    with open(os.path.join(folder, "replay.json"), "w") as f:
        json.dump({"photo": f"{name}.png", "calls": calls, "faces": faces}, f, indent=1)


def nms_cases():
    rng = np.random.default_rng(12)
    cases = []
    for n, clusters in [(40, 4), (120, 10), (300, 6)]:
        centres = rng.uniform(0, 400, size=(clusters, 2))
        pick = rng.integers(0, clusters, size=n)
        size = rng.uniform(12, 80, size=n)
        xy = centres[pick] + rng.normal(0, 6, size=(n, 2))
        boxes = np.concatenate([xy - size[:, None] / 2, xy + size[:, None] / 2], axis=1).astype(np.float32)
        # Scores from a coarse set, so that ties happen.
        scores = rng.choice(np.array([0.61, 0.7, 0.85, 0.9, 0.99, 0.999, 1.0], np.float32), size=n)
        tb, ts = torch.from_numpy(boxes), torch.from_numpy(scores)
        zeros = torch.zeros(n, dtype=torch.int64)
        case = {"boxes": boxes.tolist(), "scores": scores.tolist()}
        for threshold in (0.5, 0.7):
            case[f"iou_{threshold}"] = torchvision.ops.nms(tb, ts, threshold).tolist()
            case[f"batched_iou_{threshold}"] = torchvision.ops.batched_nms(tb, ts, zeros, threshold).tolist()
        # The "Min" NMS facenet-pytorch runs after O-Net sees a handful of boxes (numpy's argsort
        # is then stable); give it the first 14.
        few_b, few_s = tb[:14], ts[:14]
        case["min_0.7_first14"] = batched_nms_numpy(few_b, few_s, zeros[:14], 0.7, "Min").tolist()
        cases.append(case)
    return cases


def main():
    torch.set_num_threads(1)
    mtcnn = MTCNN()
    reference = {
        "versions": {"facenet-pytorch": "2.6.0", "torch": torch.__version__, "torchvision": torchvision.__version__,
                     "numpy": np.__version__, "pillow": PIL.__version__},
        "settings": "MTCNN() defaults: min_face_size 20, thresholds [0.6, 0.7, 0.7], factor 0.709, select_largest",
        "photos": {},
    }
    for name in PHOTOS:
        img = load(name)
        reference["photos"][name] = {"size": [img.width, img.height], "faces": detections(mtcnn, img)}
    with open(os.path.join(DATA, "reference.json"), "w") as f:
        json.dump(reference, f, indent=1)
    for name in REPLAY:
        replay(name)
    with open(os.path.join(DATA, "nms.json"), "w") as f:
        json.dump({"torchvision": torchvision.__version__, "cases": nms_cases()}, f)
    print("wrote", os.path.normpath(DATA))


if __name__ == "__main__":
    main()
