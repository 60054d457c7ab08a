"""Building blocks of the Hallo-layout networks: spatial transformer, audio module, motion module
and the small conditioning encoders. Module and parameter names follow Hallo's checkpoint keys.

All spatial tensors are frame-flattened: (B*F, C, H, W); the number of frames travels beside them.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from diffusers.models.attention import BasicTransformerBlock, FeedForward
from diffusers.models.attention_processor import Attention
from torch import nn

from .attention import ScaledSDPAProcessor, SDPAProcessor


def _tokens(x: torch.Tensor) -> torch.Tensor:
    """(N, C, H, W) -> (N, H*W, C)."""
    n, c, h, w = x.shape
    return x.permute(0, 2, 3, 1).reshape(n, h * w, c)


def _grid(t: torch.Tensor, h: int, w: int) -> torch.Tensor:
    """(N, H*W, C) -> (N, C, H, W)."""
    n, _, c = t.shape
    return t.reshape(n, h, w, c).permute(0, 3, 1, 2).contiguous()


def pointwise(conv: nn.Conv2d, t: torch.Tensor) -> torch.Tensor:
    """A 1x1 ``conv`` applied to tokens (N, L, C_in) -> (N, L, C_out) as one linear on its own
    weight (shape and key unchanged): the same result up to rounding as grid -> conv -> tokens,
    without the two layout copies (measured 0.92x of a full call of the embedded model on one
    thread: docs/PROFILE.md)."""
    return F.linear(t, conv.weight.flatten(1), conv.bias)


def _attention(dim: int, heads: int, context_dim: int | None = None, head_dim: int | None = None) -> Attention:
    """Bias-free q/k/v, biased output; ``head_dim`` defaults to dim // heads."""
    return Attention(dim, cross_attention_dim=context_dim, heads=heads, dim_head=head_dim or dim // heads,
                     bias=False, out_bias=True, processor=SDPAProcessor())


class SpatialTransformer(nn.Module):
    """Hallo's ``attentions.j`` (Transformer2D/3D): GroupNorm -> 1x1 proj_in -> one
    BasicTransformerBlock (self-attn with reference K/V, cross-attn to the context, GEGLU FF)
    -> 1x1 proj_out -> residual. ``key`` names the layer for the reference bank.

    ``context_dim`` None builds the block without norm2/attn2 (EchoMimic's reference UNet); its
    ``context`` is then unused. ``context_scale`` multiplies attn2's output before the residual add
    (EchoMimic's ``audio_feature_ratio``)."""

    def __init__(self, channels: int, heads: int, context_dim: int | None, groups: int, eps: float, key: str,
                 context_scale: float = 1.0):
        super().__init__()
        self.key = key
        self.norm = nn.GroupNorm(groups, channels, eps=eps)
        self.proj_in = nn.Conv2d(channels, channels, 1)
        block = BasicTransformerBlock(channels, heads, channels // heads, cross_attention_dim=context_dim,
                                      activation_fn="geglu", attention_bias=False)
        block.attn1.set_processor(SDPAProcessor())
        if block.attn2 is not None:
            block.attn2.set_processor(SDPAProcessor() if context_scale == 1.0 else ScaledSDPAProcessor(context_scale))
        self.transformer_blocks = nn.ModuleList([block])
        self.proj_out = nn.Conv2d(channels, channels, 1)

    def forward(self, x: torch.Tensor, context: torch.Tensor | None) -> torch.Tensor:
        _, _, h, w = x.shape
        t = pointwise(self.proj_in, _tokens(self.norm(x)))
        t = self.transformer_blocks[0](t, encoder_hidden_states=context)
        return _grid(pointwise(self.proj_out, t), h, w) + x


class AudioBlock(nn.Module):
    """Hallo's AudioTemporalBasicTransformerBlock: self-attention, then three audio
    cross-attentions gated by the full / face / lip masks, each through a 1x1 zero-conv, then FF."""

    def __init__(self, dim: int, heads: int, audio_dim: int):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.attn1 = _attention(dim, heads)
        self.norm2 = nn.LayerNorm(dim)
        self.attn2_0 = _attention(dim, heads, audio_dim)
        self.attn2_1 = _attention(dim, heads, audio_dim)
        self.attn2_2 = _attention(dim, heads, audio_dim)
        self.zero_conv_full = nn.Conv2d(dim, dim, 1)
        self.zero_conv_face = nn.Conv2d(dim, dim, 1)
        self.zero_conv_lip = nn.Conv2d(dim, dim, 1)
        self.norm3 = nn.LayerNorm(dim)
        self.ff = FeedForward(dim, activation_fn="geglu")

    def forward(self, t, audio, masks, weights) -> torch.Tensor:
        t = self.attn1(self.norm1(t)) + t
        n = self.norm2(t)
        branches = (
            (self.attn2_0, self.zero_conv_full),
            (self.attn2_1, self.zero_conv_face),
            (self.attn2_2, self.zero_conv_lip),
        )
        for (attn, conv), mask, weight in zip(branches, masks, weights):
            a = attn(n, encoder_hidden_states=audio) * mask.unsqueeze(-1)
            t = t + weight * pointwise(conv, a)
        return self.ff(self.norm3(t)) + t


class AudioModule(nn.Module):
    """Hallo's ``audio_modules.j``: GroupNorm -> proj_in C->Ci -> AudioBlock(Ci) -> proj_out -> residual."""

    def __init__(self, channels: int, inner: int, heads: int, audio_dim: int, groups: int, eps: float, level: int):
        super().__init__()
        self.level = level  # which mask resolution this module reads (0 = latent size)
        self.norm = nn.GroupNorm(groups, channels, eps=eps)
        self.proj_in = nn.Conv2d(channels, inner, 1)
        self.transformer_blocks = nn.ModuleList([AudioBlock(inner, heads, audio_dim)])
        self.proj_out = nn.Conv2d(inner, channels, 1)

    def forward(self, x, audio, masks, weights) -> torch.Tensor:
        _, _, h, w = x.shape
        t = pointwise(self.proj_in, _tokens(self.norm(x)))
        level_masks = tuple(m[self.level] for m in masks)
        t = self.transformer_blocks[0](t, audio, level_masks, weights)
        return _grid(pointwise(self.proj_out, t), h, w) + x


class PositionalEncoding(nn.Module):
    """Sinusoidal frame-position table stored as the (1, max_len, C) buffer ``pe``."""

    def __init__(self, dim: int, max_len: int):
        super().__init__()
        pos = torch.arange(max_len, dtype=torch.float32).unsqueeze(1)
        div = torch.exp(torch.arange(0, dim, 2, dtype=torch.float32) * (-math.log(10000.0) / dim))
        pe = torch.zeros(1, max_len, dim)
        pe[0, :, 0::2] = torch.sin(pos * div)
        pe[0, :, 1::2] = torch.cos(pos * div)
        self.register_buffer("pe", pe)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[1] > self.pe.shape[1]:
            raise ValueError(f"{x.shape[1]} frames exceed the motion module's {self.pe.shape[1]} positions")
        return x + self.pe[:, : x.shape[1]].to(x.dtype)


class TemporalAttention(Attention):
    """Self-attention over frames; the positional encoding is added to its input."""

    def __init__(self, dim: int, heads: int, max_len: int):
        super().__init__(dim, heads=heads, dim_head=dim // heads, bias=False, out_bias=True, processor=SDPAProcessor())
        self.pos_encoder = PositionalEncoding(dim, max_len)


class TemporalBlock(nn.Module):
    def __init__(self, dim: int, heads: int, max_len: int):
        super().__init__()
        self.attention_blocks = nn.ModuleList([TemporalAttention(dim, heads, max_len) for _ in range(2)])
        self.norms = nn.ModuleList([nn.LayerNorm(dim) for _ in range(2)])
        self.ff = FeedForward(dim, activation_fn="geglu")
        self.ff_norm = nn.LayerNorm(dim)

    def forward(self, t: torch.Tensor, frames: int, memory_groups: tuple[int, ...] | None = None) -> torch.Tensor:
        """``memory_groups`` (one reference group per item): passed to the attention processors
        of a memory motion module (MEMO), which read that group's long-term memory."""
        nf, hw, c = t.shape
        b = nf // frames
        extra = {} if memory_groups is None else {"memory_groups": memory_groups}
        for attn, norm in zip(self.attention_blocks, self.norms):
            n = norm(t).reshape(b, frames, hw, c).transpose(1, 2).reshape(b * hw, frames, c)
            n = attn(attn.pos_encoder(n), **extra)
            t = n.reshape(b, hw, frames, c).transpose(1, 2).reshape(nf, hw, c) + t
        return self.ff(self.ff_norm(t)) + t


class TemporalTransformer(nn.Module):
    def __init__(self, channels: int, heads: int, max_len: int, groups: int):
        super().__init__()
        self.norm = nn.GroupNorm(groups, channels, eps=1e-6)
        self.proj_in = nn.Linear(channels, channels)
        self.transformer_blocks = nn.ModuleList([TemporalBlock(channels, heads, max_len)])
        self.proj_out = nn.Linear(channels, channels)

    def forward(self, x: torch.Tensor, frames: int, memory_groups: tuple[int, ...] | None = None) -> torch.Tensor:
        _, _, h, w = x.shape
        t = self.proj_in(_tokens(self.norm(x)))
        t = self.transformer_blocks[0](t, frames, memory_groups)
        return _grid(self.proj_out(t), h, w) + x


class MotionModule(nn.Module):
    """AnimateDiff's vanilla temporal module (``motion_modules.j.temporal_transformer``).

    ``source``: the key of the reference feature that holds this layer's past frames (set on the
    memory modules of MEMO, whose memory those frames update; None otherwise)."""

    def __init__(self, channels: int, heads: int, max_len: int, groups: int):
        super().__init__()
        self.temporal_transformer = TemporalTransformer(channels, heads, max_len, groups)
        self.source: str | None = None

    def forward(self, x: torch.Tensor, frames: int, memory_groups: tuple[int, ...] | None = None) -> torch.Tensor:
        return self.temporal_transformer(x, frames, memory_groups)


class FaceLocator(nn.Module):
    """Conv encoder of the face-region image: conv_in, pairs of (3x3, 3x3 stride 2) convs, conv_out;
    SiLU after every conv but the last. Output width = the UNet's first level, at latent size."""

    def __init__(self, out_channels: int, in_channels: int = 3, widths: tuple[int, ...] = (16, 32, 64, 128)):
        super().__init__()
        self.conv_in = nn.Conv2d(in_channels, widths[0], 3, padding=1)
        blocks = []
        for a, b in zip(widths[:-1], widths[1:]):
            blocks += [nn.Conv2d(a, a, 3, padding=1), nn.Conv2d(a, b, 3, padding=1, stride=2)]
        self.blocks = nn.ModuleList(blocks)
        self.conv_out = nn.Conv2d(widths[-1], out_channels, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.silu(self.conv_in(x))
        for block in self.blocks:
            x = F.silu(block(x))
        return self.conv_out(x)


class ImageProj(nn.Module):
    """Face-identity embedding -> ``tokens`` context tokens (Hallo's ImageProjModel)."""

    def __init__(self, embed_dim: int, context_dim: int, tokens: int):
        super().__init__()
        self.tokens, self.context_dim = tokens, context_dim
        self.proj = nn.Linear(embed_dim, tokens * context_dim)
        self.norm = nn.LayerNorm(context_dim)

    def forward(self, emb: torch.Tensor) -> torch.Tensor:
        return self.norm(self.proj(emb).reshape(emb.shape[0], self.tokens, self.context_dim))


class AudioProj(nn.Module):
    """Windowed per-frame audio features (B, F, window, layers, dim) -> (B, F, tokens, context)."""

    def __init__(self, in_dim: int, hidden: int, tokens: int, context_dim: int):
        super().__init__()
        self.tokens, self.context_dim = tokens, context_dim
        self.proj1 = nn.Linear(in_dim, hidden)
        self.proj2 = nn.Linear(hidden, hidden)
        self.proj3 = nn.Linear(hidden, tokens * context_dim)
        self.norm = nn.LayerNorm(context_dim)

    def forward(self, feats: torch.Tensor) -> torch.Tensor:
        b, f = feats.shape[:2]
        x = feats.reshape(b * f, -1)
        x = self.proj3(F.relu(self.proj2(F.relu(self.proj1(x)))))
        return self.norm(x.reshape(b, f, self.tokens, self.context_dim))
