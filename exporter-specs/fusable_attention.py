"""Attention processor whose ONNX export ONNX Runtime's transformer optimizer can fuse.

The optimizer (model_type "unet") recognises attention written as explicit batched matrix
products in (batch*heads, tokens, head_dim) layout: Q/K/V projections, reshape -> transpose ->
reshape, MatMul(Q, K^T) -> Mul(scale) -> Softmax -> MatMul(V). diffusers' default processor
calls scaled_dot_product_attention instead, which the legacy exporter lowers into a pattern
the optimizer does not match.
"""

import torch


def _split_heads(x: torch.Tensor, heads: int) -> torch.Tensor:
    batch, tokens, width = x.shape
    head_dim = width // heads
    x = x.reshape(batch, tokens, heads, head_dim).transpose(1, 2)
    return x.reshape(batch * heads, tokens, head_dim)


def _merge_heads(x: torch.Tensor, heads: int) -> torch.Tensor:
    batch_heads, tokens, head_dim = x.shape
    batch = batch_heads // heads
    x = x.reshape(batch, heads, tokens, head_dim).transpose(1, 2)
    return x.reshape(batch, tokens, heads * head_dim)


class FusableAttnProcessor:
    """Drop-in replacement for diffusers' attention processors (no masks, no IP-adapter)."""

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, temb=None, *args, **kwargs):
        if attention_mask is not None:
            raise ValueError("FusableAttnProcessor does not support attention masks")
        residual = hidden_states
        if attn.spatial_norm is not None:
            hidden_states = attn.spatial_norm(hidden_states, temb)

        image_layout = hidden_states.ndim == 4
        if image_layout:
            batch, channels, height, width = hidden_states.shape
            hidden_states = hidden_states.reshape(batch, channels, height * width).transpose(1, 2)

        if attn.group_norm is not None:
            hidden_states = attn.group_norm(hidden_states.transpose(1, 2)).transpose(1, 2)

        if encoder_hidden_states is None:
            encoder_hidden_states = hidden_states
        elif attn.norm_cross:
            encoder_hidden_states = attn.norm_encoder_hidden_states(encoder_hidden_states)

        query = attn.to_q(hidden_states)
        key = attn.to_k(encoder_hidden_states)
        value = attn.to_v(encoder_hidden_states)
        if attn.norm_q is not None or attn.norm_k is not None:
            raise ValueError("FusableAttnProcessor does not support q/k normalisation")

        query = _split_heads(query, attn.heads)
        key = _split_heads(key, attn.heads)
        value = _split_heads(value, attn.heads)

        if attn.upcast_attention:
            query, key = query.float(), key.float()
        scores = torch.bmm(query, key.transpose(1, 2)) * attn.scale
        probs = scores.softmax(dim=-1).to(value.dtype)
        hidden_states = _merge_heads(torch.bmm(probs, value), attn.heads)

        hidden_states = attn.to_out[0](hidden_states)
        hidden_states = attn.to_out[1](hidden_states)

        if image_layout:
            hidden_states = hidden_states.transpose(1, 2).reshape(batch, channels, height, width)
        if attn.residual_connection:
            hidden_states = hidden_states + residual
        return hidden_states / attn.rescale_output_factor
