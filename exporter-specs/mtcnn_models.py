"""MTCNN's three face detection networks (P-Net, R-Net, O-Net) and their released weights.

The weights are the ones the `facenet-pytorch` wheel on PyPI ships (facenet_pytorch/data/
{pnet,rnet,onet}.pt, MIT licence): state dicts whose key names (conv1, prelu1, dense4, ...) fix the
attribute names below. The networks here are written from the MTCNN paper's layer table
(Zhang et al. 2016) and checked against those state dicts (`load_state_dict(strict=True)`).

Graph conventions (see graphs.json): every stage takes `image`, (N, 3, H, W) RGB float32 scaled as
(x - 127.5) / 128, and returns its heads in this order:
  P-Net: regression (N, 4, h, w), probability (N, 2, h, w)    [fully convolutional]
  R-Net: regression (N, 4), probability (N, 2)                 [24x24 crops]
  O-Net: regression (N, 4), landmarks (N, 10), probability (N, 2)  [48x48 crops]
`probability` is the softmax over (not a face, face); O-Net's landmarks are the five x then the
five y, relative to the crop (0..1).
"""

from __future__ import annotations

import hashlib
import pathlib
import subprocess
import sys
import tempfile
import zipfile

import torch
from torch import nn

# The wheel the weights come from, and the sha256 of each state dict inside it.
FACENET_REQUIREMENT = "facenet-pytorch==2.6.0"
FACENET_WHEEL = "facenet_pytorch-2.6.0-py3-none-any.whl"
FACENET_WHEEL_SHA256 = "ecb82b27beb226d106f2219efe8f829b01b87a8595badd01545679bdb9f19cca"
WEIGHT_SHA256 = {
    "pnet": "a2a71925e0b9996a42f63e47efc1ca19043e69558b5c523b978d611dfae49c8f",
    "rnet": "bbb937de72efc9ef83b186c49f5f558467a1d7e3453a8ece0d71a886633f6a86",
    "onet": "165bfbe42940416ccfb977545cf0e976d5bf321f67083ae2aaaa5c764280118d",
}
# Graph name in a set -> network.
DETECTOR_GRAPHS = {"face_detector_pnet": "pnet", "face_detector_rnet": "rnet", "face_detector_onet": "onet"}


class _Trunk(nn.Module):
    """Convolution + per-channel PReLU layers, each optionally followed by a ceil-mode max pool.

    `layers` holds (in_channels, out_channels, kernel, pool) with pool = (kernel, stride) or None;
    layer i is stored as conv{i+1} / prelu{i+1}, the names the released state dicts use."""

    def __init__(self, layers):
        super().__init__()
        self.pools = []
        for index, (cin, cout, kernel, pool) in enumerate(layers, start=1):
            setattr(self, f"conv{index}", nn.Conv2d(cin, cout, kernel_size=kernel))
            setattr(self, f"prelu{index}", nn.PReLU(cout))
            self.pools.append(nn.MaxPool2d(pool[0], pool[1], ceil_mode=True) if pool else None)

    def trunk(self, x):
        for index, pool in enumerate(self.pools, start=1):
            x = getattr(self, f"prelu{index}")(getattr(self, f"conv{index}")(x))
            if pool is not None:
                x = pool(x)
        return x


class PNet(_Trunk):
    """Proposal network: 12x12 windows at stride 2 over any image size."""

    def __init__(self):
        super().__init__([(3, 10, 3, (2, 2)), (10, 16, 3, None), (16, 32, 3, None)])
        self.conv4_1 = nn.Conv2d(32, 2, kernel_size=1)
        self.conv4_2 = nn.Conv2d(32, 4, kernel_size=1)

    def forward(self, image):
        features = self.trunk(image)
        return self.conv4_2(features), torch.softmax(self.conv4_1(features), dim=1)


def _flatten_transposed(x):
    """(N, C, H, W) -> (N, W*H*C) in (W, H, C) order: the layout the Caffe-converted dense
    weights expect."""
    return x.permute(0, 3, 2, 1).reshape(x.shape[0], -1)


class RNet(_Trunk):
    """Refinement network on 24x24 crops."""

    def __init__(self):
        super().__init__([(3, 28, 3, (3, 2)), (28, 48, 3, (3, 2)), (48, 64, 2, None)])
        self.dense4 = nn.Linear(3 * 3 * 64, 128)
        self.prelu4 = nn.PReLU(128)
        self.dense5_1 = nn.Linear(128, 2)
        self.dense5_2 = nn.Linear(128, 4)

    def forward(self, image):
        hidden = self.prelu4(self.dense4(_flatten_transposed(self.trunk(image))))
        return self.dense5_2(hidden), torch.softmax(self.dense5_1(hidden), dim=1)


class ONet(_Trunk):
    """Output network on 48x48 crops: box regression, five landmarks, score."""

    def __init__(self):
        super().__init__([(3, 32, 3, (3, 2)), (32, 64, 3, (3, 2)), (64, 64, 3, (2, 2)), (64, 128, 2, None)])
        self.dense5 = nn.Linear(3 * 3 * 128, 256)
        self.prelu5 = nn.PReLU(256)
        self.dense6_1 = nn.Linear(256, 2)
        self.dense6_2 = nn.Linear(256, 4)
        self.dense6_3 = nn.Linear(256, 10)

    def forward(self, image):
        hidden = self.prelu5(self.dense5(_flatten_transposed(self.trunk(image))))
        return self.dense6_2(hidden), self.dense6_3(hidden), torch.softmax(self.dense6_1(hidden), dim=1)


NETWORKS = {"pnet": PNet, "rnet": RNet, "onet": ONet}


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def download_wheel(folder: pathlib.Path) -> pathlib.Path:
    """`pip download --no-deps facenet-pytorch==2.6.0` into `folder`; returns the wheel's path."""
    subprocess.run(
        [sys.executable, "-m", "pip", "download", "-q", "--disable-pip-version-check", "--no-deps",
         "--only-binary=:all:", "-d", str(folder), FACENET_REQUIREMENT],
        check=True,
    )
    return folder / FACENET_WHEEL


def read_weight_files(source: pathlib.Path | None) -> dict[str, bytes]:
    """The three state-dict files, checked against their known sha256.

    `source` is the facenet-pytorch 2.6.0 wheel, or a folder holding pnet.pt, rnet.pt and onet.pt
    (e.g. an unpacked wheel's facenet_pytorch/data); None downloads the wheel from PyPI."""
    if source is None:
        with tempfile.TemporaryDirectory() as scratch:
            return read_weight_files(download_wheel(pathlib.Path(scratch)))
    if source.is_dir():
        files = {name: (source / f"{name}.pt").read_bytes() for name in NETWORKS}
    else:
        wheel_sha = _sha256(source.read_bytes())
        if wheel_sha != FACENET_WHEEL_SHA256:
            raise SystemExit(f"{source}: sha256 {wheel_sha} is not that of {FACENET_WHEEL} ({FACENET_WHEEL_SHA256})")
        with zipfile.ZipFile(source) as wheel:
            files = {name: wheel.read(f"facenet_pytorch/data/{name}.pt") for name in NETWORKS}
    for name, data in files.items():
        if _sha256(data) != WEIGHT_SHA256[name]:
            raise SystemExit(f"{source}: {name}.pt has sha256 {_sha256(data)}, expected {WEIGHT_SHA256[name]}")
    return files


def build_detector(files: dict[str, bytes]) -> dict[str, nn.Module]:
    """Graph name -> eval-mode network with the released weights. The global torch RNG is left as
    it was (layer initialisation would otherwise consume it and change later random graphs)."""
    import io

    modules = {}
    with torch.random.fork_rng():
        for graph, net in DETECTOR_GRAPHS.items():
            module = NETWORKS[net]()
            state = torch.load(io.BytesIO(files[net]), map_location="cpu", weights_only=True)
            module.load_state_dict(state, strict=True)
            modules[graph] = module.eval()
    return modules
