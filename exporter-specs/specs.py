"""Graph IO specs: graphs.json resolved for a size and precision, and the ControlNet residual layout.

Torch-free: the exporter and the tests call these with a UNet config (from sizes.json or a diffusers
folder's unet/config.json); no model is built.
"""

from __future__ import annotations


def residual_layout(unet_config) -> list[tuple[int, int]]:
    """(channels, stride) of each ControlNet down residual, in the UNet's skip order, then the mid one.

    `unet_config` is a UNet2DConditionModel / ControlNetModel config (attributes `block_out_channels`,
    `layers_per_block`): conv_in's output, then per down block one skip per layer and, except after
    the last block, one after its downsampler (diffusers' `down_block_res_samples`)."""
    channels = list(unet_config.block_out_channels)
    per_block = unet_config.layers_per_block
    per_block = list(per_block) if isinstance(per_block, (list, tuple)) else [per_block] * len(channels)
    layout = [(channels[0], 1)]
    stride = 1
    for index, width in enumerate(channels):
        for _ in range(per_block[index]):
            layout.append((width, stride))
        if index < len(channels) - 1:
            stride *= 2
            layout.append((width, stride))
    layout.append((channels[-1], stride))
    return layout


def strided_axis(name: str, stride: int) -> str:
    """The dynamic axis of a tensor `stride` times smaller than `name` (latent_height, latent_height_2, ...)."""
    return name if stride == 1 else f"{name}_{stride}"


def resolve_specs(graphs_json: dict, cfg: dict, layout: list[tuple[int, int]], precision: str) -> dict:
    """Every graph's inputs and outputs as the manifest lists them: `{name: {"inputs": [...], "outputs": [...]}}`,
    each tensor `{"name", "dtype", "shape"}`.

    dtype "float" becomes the precision's ("float16" for "fp16", else "float32"); explicit dtypes stay
    (the timestep is float32 in FP16 graphs). `$name` dims come from `cfg`; `down_residual_{i}` expands
    to `cfg["down_residuals"]` tensors with `layout`'s channels and strides, `mid_residual` takes its
    last entry; `latent_height{stride_i}` becomes `strided_axis("latent_height", stride)`."""
    float_dtype = "float16" if precision == "fp16" else "float32"

    def resolve_tensor(entry: dict, index: int | None, channels: int | None, stride: int | None) -> dict:
        shape = []
        for dim in entry["shape"]:
            if isinstance(dim, int):
                shape.append(dim)
            elif dim.startswith("$residual_channels") or dim == "$mid_channels":
                shape.append(channels)
            elif dim.startswith("$"):
                shape.append(int(cfg[dim[1:]]))
            elif "{stride" in dim:
                shape.append(strided_axis(dim.split("{")[0], stride))
            else:
                shape.append(dim)
        name = entry["name"].replace("{i}", str(index)) if index is not None else entry["name"]
        dtype = float_dtype if entry["dtype"] == "float" else entry["dtype"]
        return {"name": name, "dtype": dtype, "shape": shape}

    def expand(entries: list[dict]) -> list[dict]:
        out = []
        for entry in entries:
            if "{i}" in entry["name"]:
                for i in range(cfg["down_residuals"]):
                    channels, stride = layout[i]
                    out.append(resolve_tensor(entry, i, channels, stride))
            elif entry["name"] == "mid_residual":
                channels, stride = layout[-1]
                out.append(resolve_tensor(entry, None, channels, stride))
            else:
                out.append(resolve_tensor(entry, None, None, None))
        return out

    return {
        name: {"inputs": expand(spec["inputs"]), "outputs": expand(spec["outputs"])}
        for name, spec in graphs_json["graphs"].items()
    }


def dynamic_axes_of(spec: dict) -> dict:
    """torch.onnx.export's dynamic_axes: for each tensor, its symbolic dims by position."""
    axes = {}
    for tensor in spec["inputs"] + spec["outputs"]:
        dynamic = {i: d for i, d in enumerate(tensor["shape"]) if isinstance(d, str)}
        if dynamic:
            axes[tensor["name"]] = dynamic
    return axes



# Config entries that fix a ControlNet's inputs; they must equal the UNet's.
CONTROLNET_INPUT_KEYS = ("in_channels", "cross_attention_dim", "addition_embed_type", "addition_time_embed_dim",
                         "projection_class_embeddings_input_dim")


def controlnet_mismatches(controlnet_config, unet_config: dict) -> list[str]:
    """Why a ControlNet (its config: a mapping) cannot feed the UNet of `unet_config` (a dict with
    every UNet2DConditionModel argument): its residual layout differs from the UNet's skips, or an
    input-defining entry differs. Empty when it fits."""
    from types import SimpleNamespace

    problems = []
    ours = residual_layout(SimpleNamespace(**{k: controlnet_config[k] for k in ("block_out_channels", "layers_per_block")}))
    theirs = residual_layout(SimpleNamespace(**unet_config))
    if ours != theirs:
        problems.append(f"residuals (channels, stride) {ours} but the UNet's skips are {theirs}")
    for key in CONTROLNET_INPUT_KEYS:
        if controlnet_config.get(key) != unet_config.get(key):
            problems.append(f"{key} {controlnet_config.get(key)!r}, UNet {unet_config.get(key)!r}")
    return problems
