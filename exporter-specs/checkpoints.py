"""Released weights for `export.py --from-pretrained`, and the architectures that follow from configs.

- diffusers folders: the SDXL folder (unet, vae, text_encoder, text_encoder_2, tokenizer,
  tokenizer_2, scheduler) and the ControlNet folder. `--variant NAME` picks the weight files as
  diffusers' pipelines do with `from_pretrained(..., variant=NAME)`: a component that has
  `<stem>.NAME.safetensors` (or `.bin`, or a sharded index of that variant) loads it, one that has
  only the default files loads those (with a notice), and it is an error when no component read
  has the variant. Without `--variant`, a component with only variant files is an error naming
  the `--variant` to pass. Weights are always loaded as float32 (transformers 5 would otherwise
  keep the dtype the config names, float16 in the SDXL folders).
- id-patch.bin: `torch.load` of `{"patch_proj": state_dict, "prompt_proj": state_dict}`, the
  IP-Adapter-Plus resampler layout (or diffusers' converted one), architecture read off the shapes.
- the ArcFace `.pth`: facexlib's `recognition_arcface_ir_se50.pth`, a plain IR-SE50 state dict.

Only what a requested graph needs is read: exporting the ControlNet reads `unet/config.json`, never
the UNet's weights. Every problem is a `CheckpointError` whose message is one line naming the file.
"""

from __future__ import annotations

import inspect
import json
import pathlib
import re
from types import SimpleNamespace

import torch

from idpatch_models import ArcFaceIrSe, Resampler, resampler_state_from_diffusers

VARIANT_NAME = re.compile(r"[A-Za-z0-9_-]{1,32}")
_STEMS = r"(?:diffusion_pytorch_model|model|pytorch_model)"
# model.safetensors, model.fp16.safetensors, shards through their index (diffusers and transformers names).
_SINGLE = re.compile(_STEMS + r"(?:\.([A-Za-z0-9_-]+))?\.(?:safetensors|bin)")
_INDEX = re.compile(_STEMS + r"\.(?:safetensors|bin)\.index(?:\.([A-Za-z0-9_-]+))?\.json")
_LEGACY_INDEX = re.compile(_STEMS + r"(?:\.([A-Za-z0-9_-]+))?\.(?:safetensors|bin)\.index\.json")

# SDXL folder components per graph (the ControlNet also reads unet/config.json, see unet_config).
SDXL_COMPONENTS = {"text_encoder": "text_encoder", "text_encoder_2": "text_encoder_2", "unet": "unet",
                   "vae_decoder": "vae"}


class CheckpointError(Exception):
    """A released file or folder is missing or does not fit the graph; one line naming it."""


def weight_variants(folder: pathlib.Path) -> set[str]:
    """The weight variants a component folder holds: "" for the default files, else the variant name."""
    found = set()
    for path in folder.iterdir() if folder.is_dir() else []:
        match = _SINGLE.fullmatch(path.name) or _INDEX.fullmatch(path.name) or _LEGACY_INDEX.fullmatch(path.name)
        if match:
            found.add(match.group(1) or "")
    return found


def _first_line(error: BaseException) -> str:
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__


def config_with_defaults(cls, config: dict) -> dict:
    """Every constructor argument of the diffusers model class `cls`: `config` (sizes.json's or a
    config.json) over the constructor's defaults; keys the constructor does not take are dropped."""
    parameters = inspect.signature(cls.__init__).parameters
    full = {name: p.default for name, p in parameters.items() if p.default is not inspect.Parameter.empty}
    full.update({key: value for key, value in config.items() if key in full})
    return full


def unet_config_with_defaults(config: dict) -> dict:
    """`config_with_defaults` for UNet2DConditionModel."""
    from diffusers import UNet2DConditionModel

    return config_with_defaults(UNet2DConditionModel, config)


def controlnet_from_unet_config(unet_config: dict, conditioning_embedding_out_channels) -> torch.nn.Module:
    """A randomly initialised ControlNetModel with the trunk of the UNet `unet_config` describes, built
    with the arguments `ControlNetModel.from_unet` passes (diffusers 0.42.1) but without a UNet
    instance: the SDXL UNet has 2.6 B parameters."""
    from diffusers import ControlNetModel

    c = SimpleNamespace(**unet_config_with_defaults(unet_config))
    return ControlNetModel(
        encoder_hid_dim=c.encoder_hid_dim, encoder_hid_dim_type=c.encoder_hid_dim_type,
        addition_embed_type=c.addition_embed_type, addition_time_embed_dim=c.addition_time_embed_dim,
        transformer_layers_per_block=c.transformer_layers_per_block, in_channels=c.in_channels,
        flip_sin_to_cos=c.flip_sin_to_cos, freq_shift=c.freq_shift, down_block_types=c.down_block_types,
        only_cross_attention=c.only_cross_attention, block_out_channels=c.block_out_channels,
        layers_per_block=c.layers_per_block, downsample_padding=c.downsample_padding,
        mid_block_scale_factor=c.mid_block_scale_factor, act_fn=c.act_fn, norm_num_groups=c.norm_num_groups,
        norm_eps=c.norm_eps, cross_attention_dim=c.cross_attention_dim, attention_head_dim=c.attention_head_dim,
        num_attention_heads=c.num_attention_heads, use_linear_projection=c.use_linear_projection,
        class_embed_type=c.class_embed_type, num_class_embeds=c.num_class_embeds,
        upcast_attention=c.upcast_attention, resnet_time_scale_shift=c.resnet_time_scale_shift,
        projection_class_embeddings_input_dim=c.projection_class_embeddings_input_dim,
        mid_block_type=c.mid_block_type, controlnet_conditioning_channel_order="rgb",
        conditioning_embedding_out_channels=tuple(conditioning_embedding_out_channels), conditioning_channels=3,
    )


class Pretrained:
    """The released files named on the command line, read lazily and at most once each.

    Construction checks that every folder a graph in `graphs` needs exists and holds weights of
    the chosen variant (file names only, nothing is loaded) and prints which files will be read."""

    def __init__(self, args, graphs: list[str]):
        self.sdxl = pathlib.Path(args.sdxl) if args.sdxl else None
        self.controlnet_dir = pathlib.Path(args.controlnet) if args.controlnet else None
        self.id_patch = pathlib.Path(args.id_patch) if args.id_patch else None
        self.arcface_file = pathlib.Path(args.arcface) if args.arcface else None
        self.variant = args.variant
        self._id_patch_state = None
        self.chosen: dict[str, str | None] = {}
        folders = {graph: self.sdxl / sub for graph, sub in SDXL_COMPONENTS.items() if graph in graphs}
        if "controlnet" in graphs:
            folders["controlnet"] = self.controlnet_dir
        for graph, folder in folders.items():
            self.chosen[graph] = self._pick_variant(graph, folder)
        if self.variant and not folders:
            raise CheckpointError(f"--variant {self.variant}: none of the graphs {', '.join(graphs)} reads the SDXL "
                                  "or ControlNet folder")
        if self.variant and not any(v == self.variant for v in self.chosen.values()):
            raise CheckpointError(f"--variant {self.variant}: none of {', '.join(map(str, folders.values()))} "
                                  f"has {self.variant} weights")
        for graph, choice in self.chosen.items():
            if self.variant and choice is None:
                print(f"notice: {folders[graph]} has no {self.variant} weights; {graph} loads its default ones", flush=True)
        for path, what in ((self.id_patch, "--id-patch"), (self.arcface_file, "--arcface")):
            if path is not None and not path.is_file():
                raise CheckpointError(f"{what} {path}: no such file")

    def _pick_variant(self, graph: str, folder: pathlib.Path) -> str | None:
        if not (folder / "config.json").is_file():
            raise CheckpointError(f"{graph}: {folder}/config.json is missing (not a diffusers component folder)")
        variants = weight_variants(folder)
        if self.variant and self.variant in variants:
            return self.variant
        if "" in variants:
            return None
        others = sorted(v for v in variants if v)
        if others:
            hint = f"; pass --variant {others[0]}" if not self.variant else ""
            raise CheckpointError(f"{graph}: {folder} has only {'/'.join(others)} variant weights"
                                  f"{' (no ' + self.variant + ')' if self.variant else ''}{hint}")
        raise CheckpointError(f"{graph}: {folder} holds no weight files (*.safetensors, *.bin)")

    def _load(self, graph: str, cls, folder: pathlib.Path, **kwargs):
        dtype_key = "dtype" if cls.__module__.startswith("transformers") else "torch_dtype"
        kwargs[dtype_key] = torch.float32
        try:
            return cls.from_pretrained(folder, variant=self.chosen[graph], **kwargs)
        except (OSError, ValueError) as error:
            raise CheckpointError(f"{graph}: {folder}: {_first_line(error)}") from error

    def text_encoder(self):
        from transformers import CLIPTextModel

        return self._load("text_encoder", CLIPTextModel, self.sdxl / "text_encoder", attn_implementation="eager")

    def text_encoder_2(self):
        from transformers import CLIPTextModelWithProjection

        return self._load("text_encoder_2", CLIPTextModelWithProjection, self.sdxl / "text_encoder_2",
                          attn_implementation="eager")

    def unet(self):
        from diffusers import UNet2DConditionModel

        return self._load("unet", UNet2DConditionModel, self.sdxl / "unet")

    def vae(self):
        from diffusers import AutoencoderKL

        return self._load("vae_decoder", AutoencoderKL, self.sdxl / "vae")

    def controlnet(self):
        from diffusers import ControlNetModel

        return self._load("controlnet", ControlNetModel, self.controlnet_dir)

    def _config(self, component: str) -> dict:
        path = self.sdxl / component / "config.json"
        try:
            config = json.loads(path.read_text())
        except (OSError, ValueError) as error:
            raise CheckpointError(f"{component} config {path}: {_first_line(error)}") from error
        if not isinstance(config, dict):
            raise CheckpointError(f"{component} config {path}: not a JSON object")
        return config

    def unet_config(self) -> dict:
        """sdxl/unet/config.json over the constructor's defaults; reads no weights."""
        return unet_config_with_defaults(self._config("unet"))

    def config_values(self, down_residuals: int) -> dict:
        """The manifest config entries the SDXL folder's config.json files give (no weights read)."""
        from diffusers import AutoencoderKL

        unet = self.unet_config()
        text_1, text_2 = self._config("text_encoder"), self._config("text_encoder_2")
        vae = config_with_defaults(AutoencoderKL, self._config("vae"))
        try:
            return {
                "cross_attention_dim": int(unet["cross_attention_dim"]), "latent_channels": int(unet["in_channels"]),
                "down_residuals": down_residuals, "text_dim_1": int(text_1["hidden_size"]),
                "text_dim_2": int(text_2["hidden_size"]), "pooled_dim": int(text_2["projection_dim"]),
                "vae_scaling_factor": float(vae["scaling_factor"]),
                "vae_scale_factor": 2 ** (len(vae["block_out_channels"]) - 1),
            }
        except (KeyError, TypeError, ValueError) as error:
            raise CheckpointError(f"{self.sdxl}: config.json files lack or garble {_first_line(error)}") from error

    def scheduler(self) -> dict:
        """sdxl/scheduler/scheduler_config.json, as the set's scheduler section."""
        path = self.sdxl / "scheduler" / "scheduler_config.json"
        try:
            config = json.loads(path.read_text())
        except (OSError, ValueError) as error:
            raise CheckpointError(f"scheduler {path}: {_first_line(error)}") from error
        if not isinstance(config, dict) or "_class_name" not in config:
            raise CheckpointError(f"scheduler {path}: not a diffusers scheduler config")
        return config

    def resampler(self, name: str) -> Resampler:
        """patch_proj or prompt_proj from id-patch.bin, loaded strictly."""
        if self._id_patch_state is None:
            try:
                state = torch.load(self.id_patch, map_location="cpu", weights_only=True)
            except Exception as error:  # torch.load raises pickle, zip and runtime errors alike
                raise CheckpointError(f"--id-patch {self.id_patch}: {_first_line(error)}") from error
            if not isinstance(state, dict):
                raise CheckpointError(f"--id-patch {self.id_patch}: holds a {type(state).__name__}, not a dict")
            self._id_patch_state = state
        entry = self._id_patch_state.get(name)
        if not isinstance(entry, dict):
            raise CheckpointError(f"--id-patch {self.id_patch}: no {name} state dict "
                                  f"(top-level keys: {sorted(map(str, self._id_patch_state))})")
        try:
            state = resampler_state_from_diffusers(entry)
            resampler = Resampler(**Resampler.config_from_state_dict(state))
            resampler.load_state_dict(state, strict=True)
        except (KeyError, ValueError, RuntimeError) as error:
            raise CheckpointError(f"--id-patch {self.id_patch}: {name}: {_first_line(error)}") from error
        return resampler

    def arcface(self, config: dict) -> ArcFaceIrSe:
        """The IR-SE backbone of `config` (sizes.json's full arcface: facexlib's IR-SE50), loaded strictly."""
        try:
            state = torch.load(self.arcface_file, map_location="cpu", weights_only=True)
            model = ArcFaceIrSe(**config)
            model.load_state_dict(state, strict=True)
        except Exception as error:  # torch.load and load_state_dict raise several kinds
            raise CheckpointError(f"--arcface {self.arcface_file}: {_first_line(error)}") from error
        return model

    def tokenizers(self, out: pathlib.Path) -> dict:
        """Writes the SDXL folder's tokenizer and tokenizer_2 as tokenizer.json files under `out` (read
        through transformers' CLIPTokenizer, so the pad token is the folder's) and returns
        {name: path relative to `out`}."""
        from clip_vocab import SDXL_TOKENIZERS, write_sdxl_tokenizers

        for name in SDXL_TOKENIZERS:
            source = self.sdxl / name
            if not (source / "tokenizer.json").is_file() and not all(
                    (source / file).is_file() for file in ("vocab.json", "merges.txt")):
                raise CheckpointError(f"{name}: {source} has neither tokenizer.json nor vocab.json and merges.txt")
        try:
            return write_sdxl_tokenizers(out, self.sdxl)
        except (OSError, ValueError) as error:
            raise CheckpointError(f"tokenizers of {self.sdxl}: {_first_line(error)}") from error
