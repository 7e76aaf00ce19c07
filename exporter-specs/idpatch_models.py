"""Model definitions owned by the exporter: the ArcFace IR-SE backbone and the ID-Patch resampler.

Parameter names follow the released checkpoints so they load with strict=True:
- ArcFace: facexlib's recognition_arcface_ir_se50.pth (input_layer.*, body.<k>.*, output_layer.*).
- Resampler: the IP-Adapter-Plus layout stored under patch_proj.* / prompt_proj.* in id-patch.bin
  (latents, proj_in, proj_out, norm_out, layers.<i>.0.{norm1,norm2,to_q,to_kv,to_out},
  layers.<i>.1.{0,1,3}). See exporter-specs/README.md for what was checked.
"""

from __future__ import annotations

import torch
from torch import nn


# ---------------------------------------------------------------- ArcFace IR-SE


class SqueezeExcite(nn.Module):
    def __init__(self, channels: int, reduction: int):
        super().__init__()
        self.fc1 = nn.Conv2d(channels, channels // reduction, kernel_size=1, bias=False)
        self.fc2 = nn.Conv2d(channels // reduction, channels, kernel_size=1, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        gate = x.mean(dim=(2, 3), keepdim=True)
        gate = torch.sigmoid(self.fc2(torch.relu(self.fc1(gate))))
        return x * gate


class IrSeUnit(nn.Module):
    """Pre-activation residual unit: BN, conv3x3, PReLU, conv3x3 (strided), BN, SE."""

    def __init__(self, in_channels: int, out_channels: int, stride: int, se_reduction: int):
        super().__init__()
        if in_channels == out_channels:
            # Identity shortcut, subsampled when strided (a 1x1 max pool with a stride).
            self.shortcut_layer = nn.MaxPool2d(1, stride)
        else:
            self.shortcut_layer = nn.Sequential(
                nn.Conv2d(in_channels, out_channels, 1, stride, bias=False), nn.BatchNorm2d(out_channels)
            )
        self.res_layer = nn.Sequential(
            nn.BatchNorm2d(in_channels),
            nn.Conv2d(in_channels, out_channels, 3, 1, 1, bias=False),
            nn.PReLU(out_channels),
            nn.Conv2d(out_channels, out_channels, 3, stride, 1, bias=False),
            nn.BatchNorm2d(out_channels),
            SqueezeExcite(out_channels, se_reduction),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.res_layer(x) + self.shortcut_layer(x)


class ArcFaceIrSe(nn.Module):
    """IR-SE backbone returning the L2-normalised embedding.

    Full size (IR-SE50): input width 64, stage widths (64, 128, 256, 512), units (3, 4, 14, 3).
    Each stage starts with a stride-2 unit, so a 112x112 crop ends at 7x7.
    """

    def __init__(
        self,
        input_width: int = 64,
        stage_channels: tuple[int, ...] = (64, 128, 256, 512),
        stage_units: tuple[int, ...] = (3, 4, 14, 3),
        embedding_dim: int = 512,
        input_size: int = 112,
        se_reduction: int = 16,
        dropout: float = 0.6,
    ):
        super().__init__()
        self.input_layer = nn.Sequential(
            nn.Conv2d(3, input_width, 3, 1, 1, bias=False), nn.BatchNorm2d(input_width), nn.PReLU(input_width)
        )
        units = []
        in_channels = input_width
        for channels, count in zip(stage_channels, stage_units):
            for index in range(count):
                units.append(IrSeUnit(in_channels, channels, 2 if index == 0 else 1, se_reduction))
                in_channels = channels
        self.body = nn.Sequential(*units)
        final_side = input_size // 2 ** len(stage_channels)
        self.output_layer = nn.Sequential(
            nn.BatchNorm2d(in_channels),
            nn.Dropout(dropout),
            nn.Flatten(),
            nn.Linear(in_channels * final_side * final_side, embedding_dim),
            nn.BatchNorm1d(embedding_dim),
        )

    def forward(self, face: torch.Tensor) -> torch.Tensor:
        x = self.output_layer(self.body(self.input_layer(face)))
        return x / torch.linalg.vector_norm(x, dim=1, keepdim=True)


# ---------------------------------------------------------------- Perceiver resampler


class PerceiverAttention(nn.Module):
    """Learned latents attend to [input tokens; latents]."""

    def __init__(self, width: int, heads: int, head_dim: int):
        super().__init__()
        self.heads = heads
        self.head_dim = head_dim
        inner = heads * head_dim
        self.norm1 = nn.LayerNorm(width)
        self.norm2 = nn.LayerNorm(width)
        self.to_q = nn.Linear(width, inner, bias=False)
        self.to_kv = nn.Linear(width, 2 * inner, bias=False)
        self.to_out = nn.Linear(inner, width, bias=False)

    def _heads(self, x: torch.Tensor) -> torch.Tensor:
        batch, tokens, _ = x.shape
        return x.reshape(batch, tokens, self.heads, self.head_dim).transpose(1, 2)

    def forward(self, tokens: torch.Tensor, latents: torch.Tensor) -> torch.Tensor:
        tokens = self.norm1(tokens)
        latents = self.norm2(latents)
        query = self._heads(self.to_q(latents))
        key, value = self.to_kv(torch.cat([tokens, latents], dim=1)).chunk(2, dim=-1)
        key, value = self._heads(key), self._heads(value)
        scores = torch.matmul(query, key.transpose(-1, -2)) * self.head_dim**-0.5
        mixed = torch.matmul(scores.softmax(dim=-1), value)
        batch, _, queries, _ = mixed.shape
        mixed = mixed.transpose(1, 2).reshape(batch, queries, self.heads * self.head_dim)
        return self.to_out(mixed)


def _feed_forward(width: int, mult: int) -> nn.Sequential:
    # Indices 0 (LayerNorm), 1 and 3 (Linear) are the checkpoint's key names.
    return nn.Sequential(
        nn.LayerNorm(width),
        nn.Linear(width, width * mult, bias=False),
        nn.GELU(),
        nn.Linear(width * mult, width, bias=False),
    )


class Resampler(nn.Module):
    """ID-Patch's ID mapper: (faces, 1, embed_dim) -> (faces, num_queries, output_dim)."""

    def __init__(
        self,
        embed_dim: int = 512,
        hidden_dim: int = 1280,
        depth: int = 4,
        heads: int = 20,
        head_dim: int = 64,
        num_queries: int = 16,
        output_dim: int = 2048,
        ff_mult: int = 4,
    ):
        super().__init__()
        self.latents = nn.Parameter(torch.randn(1, num_queries, hidden_dim) / hidden_dim**0.5)
        self.proj_in = nn.Linear(embed_dim, hidden_dim)
        self.proj_out = nn.Linear(hidden_dim, output_dim)
        self.norm_out = nn.LayerNorm(output_dim)
        self.layers = nn.ModuleList(
            nn.ModuleList([PerceiverAttention(hidden_dim, heads, head_dim), _feed_forward(hidden_dim, ff_mult)])
            for _ in range(depth)
        )

    def forward(self, id_embeds: torch.Tensor) -> torch.Tensor:
        latents = self.latents.expand(id_embeds.shape[0], -1, -1)
        tokens = self.proj_in(id_embeds)
        for attention, feed_forward in self.layers:
            latents = attention(tokens, latents) + latents
            latents = feed_forward(latents) + latents
        return self.norm_out(self.proj_out(latents))

    @staticmethod
    def config_from_state_dict(state: dict[str, torch.Tensor], head_dim: int = 64) -> dict:
        """Architecture implied by a checkpoint (IP-Adapter layout)."""
        _, num_queries, hidden_dim = state["latents"].shape
        depth = 1 + max(int(key.split(".")[1]) for key in state if key.startswith("layers."))
        return {
            "embed_dim": state["proj_in.weight"].shape[1],
            "hidden_dim": hidden_dim,
            "depth": depth,
            "heads": state["layers.0.0.to_q.weight"].shape[0] // head_dim,
            "head_dim": head_dim,
            "num_queries": num_queries,
            "output_dim": state["proj_out.weight"].shape[0],
            "ff_mult": state["layers.0.1.1.weight"].shape[0] // hidden_dim,
        }


def resampler_state_from_diffusers(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Map diffusers' IPAdapterPlusImageProjection names back to the IP-Adapter layout.

    Accepts either layout; a checkpoint already in the IP-Adapter layout passes unchanged.
    """
    if not any(".attn." in key for key in state):
        return dict(state)
    out: dict[str, torch.Tensor] = {}
    pending_kv: dict[str, dict[str, torch.Tensor]] = {}
    for key, value in state.items():
        parts = key.split(".")
        if parts[0] != "layers":
            out[key] = value
            continue
        prefix = f"layers.{parts[1]}"
        rest = ".".join(parts[2:])
        if rest.startswith("ln0."):
            out[f"{prefix}.0.norm1.{parts[-1]}"] = value
        elif rest.startswith("ln1."):
            out[f"{prefix}.0.norm2.{parts[-1]}"] = value
        elif rest == "attn.to_q.weight":
            out[f"{prefix}.0.to_q.weight"] = value
        elif rest in ("attn.to_k.weight", "attn.to_v.weight"):
            pending_kv.setdefault(prefix, {})[rest[len("attn.to_")]] = value
        elif rest == "attn.to_out.0.weight":
            out[f"{prefix}.0.to_out.weight"] = value
        elif rest.startswith("ff.0."):
            out[f"{prefix}.1.0.{parts[-1]}"] = value
        elif rest == "ff.1.net.0.proj.weight":
            out[f"{prefix}.1.1.weight"] = value
        elif rest == "ff.1.net.2.weight":
            out[f"{prefix}.1.3.weight"] = value
        else:
            raise KeyError(f"unexpected resampler key {key}")
    for prefix, kv in pending_kv.items():
        out[f"{prefix}.0.to_kv.weight"] = torch.cat([kv["k"], kv["v"]], dim=0)
    return out
