"""Layouts the exporter must get right without any weights: the ControlNet residuals, the resolved
graph IO specs and the id-patch.bin resampler keys.

Expected values: tests/data/exporter/ (tests/reference/exporter_layouts.py: diffusers 0.42.1 on the
meta device, IP-Adapter's resampler.py at commit bd7d2c1) and models/tiny/manifest.json (written
by the exporter and checked by the runtime against the graphs). Needs torch and diffusers
(target/refenv):

    "$(scripts/pyenv.sh)" -m unittest discover -s exporter-specs/tests_torch
"""

from __future__ import annotations

import json
import pathlib
import sys
import unittest
from types import SimpleNamespace

import numpy as np
import torch

ROOT = pathlib.Path(__file__).resolve().parents[2]
SPECS = ROOT / "exporter-specs"
sys.path.insert(0, str(SPECS))

import specs  # noqa: E402
from checkpoints import unet_config_with_defaults  # noqa: E402
from idpatch_models import Resampler, resampler_state_from_diffusers  # noqa: E402

DATA = ROOT / "tests" / "data" / "exporter"
SIZES = json.loads((SPECS / "sizes.json").read_text())
GRAPHS = json.loads((SPECS / "graphs.json").read_text())


def resolved(size: str, precision: str) -> dict:
    cfg = SIZES[size]["config"]
    layout = specs.residual_layout(SimpleNamespace(**SIZES[size]["unet"]))
    return specs.resolve_specs(GRAPHS, cfg, layout, precision)


def concrete(shape: list, dims: dict) -> list[int]:
    return [d if isinstance(d, int) else dims[d] for d in shape]


class ResidualLayoutTest(unittest.TestCase):
    """The 9 down + 1 mid residuals: channels and strides per SDXL block, as diffusers' ControlNet
    gives them and the UNet takes them."""

    def test_controlnet_outputs_and_unet_inputs_match_diffusers(self):
        reference = json.loads((DATA / "residuals.json").read_text())
        for size, cases in reference["sizes"].items():
            graphs = resolved(size, "fp32")
            for case in cases:
                latent_h, latent_w = case["height"] // 8, case["width"] // 8
                dims = {"batch": case["batch"]}
                for stride in (1, 2, 4):
                    dims[specs.strided_axis("latent_height", stride)] = latent_h // stride
                    dims[specs.strided_axis("latent_width", stride)] = latent_w // stride
                want = case["down"] + [case["mid"]]
                outputs = graphs["controlnet"]["outputs"]
                self.assertEqual([t["name"] for t in outputs], [f"down_residual_{i}" for i in range(9)] + ["mid_residual"])
                self.assertEqual([concrete(t["shape"], dims) for t in outputs], want, f"{size} {case['height']}x{case['width']}")
                inputs = {t["name"]: t for t in graphs["unet"]["inputs"]}
                for index, tensor in enumerate(outputs):
                    self.assertEqual(inputs[tensor["name"]]["shape"], tensor["shape"], f"{size} unet input {tensor['name']}")
                self.assertEqual(case["unet_output"], [case["batch"], 4, latent_h, latent_w])

    def test_full_size_channels_and_strides_per_block(self):
        # SDXL: conv_in, then blocks 320/640/1280 with 2 layers each and a downsampler after the first two.
        layout = specs.residual_layout(SimpleNamespace(**SIZES["full"]["unet"]))
        expected = [(320, 1)] * 3 + [(320, 2), (640, 2), (640, 2), (640, 4), (1280, 4), (1280, 4), (1280, 4)]
        self.assertEqual(layout, expected)

    def test_controlnet_mismatch_is_reported(self):
        unet = unet_config_with_defaults(SIZES["tiny"]["unet"])
        controlnet = dict(unet)
        self.assertEqual(specs.controlnet_mismatches(controlnet, unet), [])
        controlnet["block_out_channels"] = [16, 32, 64]
        controlnet["cross_attention_dim"] = 32
        problems = specs.controlnet_mismatches(controlnet, unet)
        self.assertEqual(len(problems), 2, problems)
        self.assertIn("residuals", problems[0])
        self.assertIn("cross_attention_dim 32, UNet 64", problems[1])


class ResolveSpecsTest(unittest.TestCase):
    def test_tiny_fp32_equals_the_committed_manifest(self):
        manifest = json.loads((ROOT / "models" / "tiny" / "manifest.json").read_text())
        graphs = resolved("tiny", "fp32")
        for name, entry in manifest["graphs"].items():
            self.assertEqual(graphs[name]["inputs"], entry["inputs"], name)
            self.assertEqual(graphs[name]["outputs"], entry["outputs"], name)

    def test_fp16_changes_only_float_dtypes_and_keeps_the_timestep_float32(self):
        fp32, fp16 = resolved("full", "fp32"), resolved("full", "fp16")
        # Graphs whose every tensor has an explicit dtype (the face detector, always float32).
        explicit = {name for name, graph in GRAPHS["graphs"].items()
                    if all(t["dtype"] != "float" for t in graph["inputs"] + graph["outputs"])}
        self.assertEqual(explicit, {"face_detector_pnet", "face_detector_rnet", "face_detector_onet"})
        self.assertEqual(set(fp32), set(GRAPHS["graphs"]))
        for name in fp32:
            for kind in ("inputs", "outputs"):
                for a, b in zip(fp32[name][kind], fp16[name][kind], strict=True):
                    self.assertEqual((a["name"], a["shape"]), (b["name"], b["shape"]))
                    if a["name"] == "timestep" or a["dtype"] == "int64" or name in explicit:
                        self.assertEqual(b["dtype"], a["dtype"], f"{name}.{a['name']}")
                    else:
                        self.assertEqual((a["dtype"], b["dtype"]), ("float32", "float16"), f"{name}.{a['name']}")
        unet = {t["name"]: t for t in fp16["unet"]["inputs"]}
        self.assertEqual(unet["timestep"]["dtype"], "float32")
        self.assertEqual(unet["time_ids"]["dtype"], "float16")

    def test_full_size_dims(self):
        graphs = resolved("full", "fp32")
        unet = {t["name"]: t["shape"] for t in graphs["unet"]["inputs"]}
        self.assertEqual(unet["encoder_hidden_states"], ["batch", "sequence", 2048])
        self.assertEqual(unet["text_embeds"], ["batch", 1280])
        self.assertEqual(unet["down_residual_3"], ["batch", 320, "latent_height_2", "latent_width_2"])
        self.assertEqual(unet["mid_residual"], ["batch", 1280, "latent_height_4", "latent_width_4"])
        self.assertEqual(graphs["prompt_proj"]["outputs"][0]["shape"], ["faces", 16, 2048])
        self.assertEqual(graphs["patch_proj"]["outputs"][0]["shape"], ["faces", 3, 64, 64])
        self.assertEqual(graphs["text_encoder_2"]["outputs"][1]["shape"], ["batch", 1280])


class ResamplerKeysTest(unittest.TestCase):
    """id-patch.bin's patch_proj / prompt_proj: our names and shapes <-> the released layout
    (IP-Adapter's Resampler), both ways, and diffusers' converted layout back to ours."""

    @classmethod
    def setUpClass(cls):
        cls.reference = json.loads((DATA / "resampler_keys.json").read_text())["projections"]

    def ours(self, name: str) -> dict[str, list[int]]:
        with torch.device("meta"):
            model = Resampler(**SIZES["full"][name])
        return {key: list(value.shape) for key, value in model.state_dict().items()}

    def test_our_keys_and_shapes_are_the_released_ones(self):
        for name, entry in self.reference.items():
            ours, released = self.ours(name), entry["released"]
            self.assertEqual(sorted(set(ours) - set(released)), [], f"{name}: keys only we have")
            self.assertEqual(sorted(set(released) - set(ours)), [], f"{name}: released keys we lack")
            for key, shape in released.items():
                self.assertEqual(ours[key], shape, f"{name}.{key}")
            self.assertEqual(len(released), 51)

    def test_architecture_read_off_the_released_shapes(self):
        for name, entry in self.reference.items():
            state = {key: torch.empty(shape, device="meta") for key, shape in entry["released"].items()}
            self.assertEqual(Resampler.config_from_state_dict(state), SIZES["full"][name], name)

    def test_diffusers_layout_maps_back_to_ours_exactly(self):
        from diffusers.loaders.unet import UNet2DConditionLoadersMixin

        for name, entry in self.reference.items():
            torch.manual_seed(1)
            ours = Resampler(**SIZES["full"][name]).state_dict()
            converted = UNet2DConditionLoadersMixin()._convert_ip_adapter_image_proj_to_diffusers(ours)
            self.assertEqual(type(converted).__name__, entry["diffusers_class"])
            diffusers_state = converted.state_dict()
            self.assertEqual({k: list(v.shape) for k, v in diffusers_state.items()}, entry["diffusers"], name)
            back = resampler_state_from_diffusers(diffusers_state)
            self.assertEqual(set(back), set(ours), name)
            for key, value in ours.items():
                self.assertTrue(torch.equal(back[key], value), f"{name}.{key}")

    def test_forward_matches_ip_adapter_resampler(self):
        data = np.load(DATA / "resampler_small.npz")
        config = json.loads(str(data["config"]))
        model = Resampler(embed_dim=config["embedding_dim"], hidden_dim=config["dim"], depth=config["depth"],
                          heads=config["heads"], head_dim=config["dim_head"], num_queries=config["num_queries"],
                          output_dim=config["output_dim"], ff_mult=config["ff_mult"]).eval()
        # The reference filled IP-Adapter's state dict in sorted key order from one generator.
        rng = np.random.default_rng(int(data["seed"]))
        state = model.state_dict()
        filled = {k: torch.from_numpy((0.2 * rng.standard_normal(state[k].shape)).astype(np.float32)) for k in sorted(state)}
        model.load_state_dict(filled, strict=True)
        with torch.no_grad():
            got = model(torch.from_numpy(data["id_embeds"])).numpy()
        scale = float(np.abs(data["output"]).max())
        self.assertLess(float(np.abs(got - data["output"]).max()) / scale, 1e-5)


if __name__ == "__main__":
    unittest.main()
