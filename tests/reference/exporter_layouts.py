"""Reference data for the exporter's layout tests (exporter-specs/tests_torch/test_layouts.py).

Writes tests/data/exporter/:
- residuals.json: the shapes diffusers 0.42.1 gives the ControlNet's 9 down and 1 mid residuals,
  for the sizes.json `full` (SDXL) and `tiny` UNets at two image sizes, batch 2. The ControlNet is
  made by `ControlNetModel.from_unet` and run on the meta device; the UNet then takes those
  residuals as `down_block_additional_residuals` / `mid_block_additional_residual` (it adds each to
  its own skip, so a shape that differs fails there).
- resampler_keys.json: the state-dict keys and shapes of IP-Adapter's `Resampler` (the module the
  IP-Adapter-Plus checkpoints, and the layout diffusers' converter reads in id-patch.bin, come from)
  at ID-Patch's two full-size configurations, and of the `IPAdapterPlusImageProjection` diffusers'
  `_convert_ip_adapter_image_proj_to_diffusers` builds from it.
- resampler_small.npz: a small IP-Adapter `Resampler` filled with seeded values (every state-dict
  tensor in sorted key order from one numpy generator) and its output on seeded inputs.

IP-Adapter's resampler.py is read from a copy given on the command line (github.com/tencent-ailab/
IP-Adapter, ip_adapter/resampler.py at commit bd7d2c1, before the optional einops-based extras):

    "$(scripts/pyenv.sh)" tests/reference/exporter_layouts.py --ip-adapter-resampler resampler.py
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import pathlib

import diffusers
import numpy as np
import torch
from diffusers import ControlNetModel, UNet2DConditionModel
from diffusers.loaders.unet import UNet2DConditionLoadersMixin

ROOT = pathlib.Path(__file__).resolve().parents[2]
OUT = ROOT / "tests" / "data" / "exporter"
SIZES = json.loads((ROOT / "exporter-specs" / "sizes.json").read_text())
IMAGE_SIZES = [(1024, 1024), (896, 1152)]
# Small configuration for the numerical comparison (IP-Adapter's argument names).
SMALL = {"dim": 64, "depth": 2, "dim_head": 32, "heads": 2, "num_queries": 3, "embedding_dim": 512,
         "output_dim": 96, "ff_mult": 4}


def residual_shapes(size: str, height: int, width: int) -> dict:
    params = SIZES[size]
    unet_params = params["unet"]
    pooled = unet_params["projection_class_embeddings_input_dim"] - 6 * unet_params["addition_time_embed_dim"]
    with torch.device("meta"):
        unet = UNet2DConditionModel(**unet_params)
        controlnet = ControlNetModel.from_unet(
            unet, conditioning_embedding_out_channels=tuple(params["controlnet"]["conditioning_embedding_out_channels"]),
            load_weights_from_unet=False,
        )
        batch = 2
        sample = torch.empty(batch, unet_params["in_channels"], height // 8, width // 8)
        timestep = torch.empty(batch)
        states = torch.empty(batch, 77 + 32, unet_params["cross_attention_dim"])
        added = {"text_embeds": torch.empty(batch, pooled), "time_ids": torch.empty(batch, 6)}
        down, mid = controlnet(sample, timestep, encoder_hidden_states=states, controlnet_cond=torch.empty(batch, 3, height, width),
                               added_cond_kwargs=added, return_dict=False)
        noise = unet(sample, timestep, encoder_hidden_states=states, added_cond_kwargs=added,
                     down_block_additional_residuals=list(down), mid_block_additional_residual=mid).sample
    return {"height": height, "width": width, "batch": batch, "down": [list(t.shape) for t in down],
            "mid": list(mid.shape), "unet_output": list(noise.shape)}


def load_ip_adapter(path: pathlib.Path):
    spec = importlib.util.spec_from_file_location("ip_adapter_resampler", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def resampler_keys(ip_adapter) -> dict:
    out = {}
    for name in ("patch_proj", "prompt_proj"):
        ours = SIZES["full"][name]
        config = {"dim": ours["hidden_dim"], "depth": ours["depth"], "dim_head": ours["head_dim"], "heads": ours["heads"],
                  "num_queries": ours["num_queries"], "embedding_dim": ours["embed_dim"],
                  "output_dim": ours["output_dim"], "ff_mult": ours["ff_mult"]}
        torch.manual_seed(0)
        released = ip_adapter.Resampler(**config)
        state = released.state_dict()
        converted = UNet2DConditionLoadersMixin()._convert_ip_adapter_image_proj_to_diffusers(state)
        out[name] = {
            "ip_adapter_config": config,
            "released": {key: list(value.shape) for key, value in state.items()},
            "diffusers_class": type(converted).__name__,
            "diffusers": {key: list(value.shape) for key, value in converted.state_dict().items()},
        }
    return out


def small_reference(ip_adapter) -> dict:
    model = ip_adapter.Resampler(**SMALL).eval()
    rng = np.random.default_rng(20250)
    state = model.state_dict()
    filled = {key: torch.from_numpy((0.2 * rng.standard_normal(state[key].shape)).astype(np.float32)) for key in sorted(state)}
    model.load_state_dict(filled, strict=True)
    id_embeds = rng.standard_normal((3, 1, SMALL["embedding_dim"])).astype(np.float32)
    with torch.no_grad():
        output = model(torch.from_numpy(id_embeds)).numpy()
    return {"id_embeds": id_embeds, "output": output, "seed": np.array(20250)}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--ip-adapter-resampler", type=pathlib.Path, required=True,
                        help="copy of IP-Adapter's ip_adapter/resampler.py (commit bd7d2c1)")
    opts = parser.parse_args()
    OUT.mkdir(parents=True, exist_ok=True)
    residuals = {"diffusers": diffusers.__version__, "torch": torch.__version__.split("+")[0],
                 "sizes": {size: [residual_shapes(size, h, w) for h, w in IMAGE_SIZES] for size in ("full", "tiny")}}
    (OUT / "residuals.json").write_text(json.dumps(residuals, indent=1) + "\n")
    ip_adapter = load_ip_adapter(opts.ip_adapter_resampler)
    keys = {"source": "tencent-ailab/IP-Adapter ip_adapter/resampler.py @ bd7d2c1",
            "diffusers": diffusers.__version__, "projections": resampler_keys(ip_adapter)}
    (OUT / "resampler_keys.json").write_text(json.dumps(keys, indent=1) + "\n")
    small = small_reference(ip_adapter)
    np.savez(OUT / "resampler_small.npz", config=np.array(json.dumps(SMALL)), **small)
    print(f"wrote {OUT}/residuals.json, resampler_keys.json, resampler_small.npz")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
