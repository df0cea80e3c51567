"""Spatial-reduction attention (SR-Attn) of U-PVT.

Wang et al., "Pyramid Vision Transformer: A Versatile Backbone for Dense Prediction without Convolutions",
ICCV 2021 (PVT v1).

Global multi-head attention in which every query attends to a key/value map reduced by a strided convolution
(kernel = stride = ``sr_ratio``, with bias) followed by LayerNorm; with ``sr_ratio`` 1 keys and values come from
the full map. The reduction is applied before the key/value projection, so the projection runs on the small map.

A learned absolute position embedding is added to the input of each stage (before its first block), as in PVT;
it is built for the stage's feature size at the model's image size and bilinearly resized
(``align_corners=True``, as the paper's detection code does) for other input sizes.

Deviation, on purpose: a map whose side is not a multiple of ``sr_ratio`` is zero-padded at the bottom/right
before the reduction (ceil instead of floor), so that any size >= 1 works; at the paper's sizes nothing changes.
"""
from __future__ import annotations

from typing import Optional, Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F

from .base import TokenMixer
from . import register_mixer


class AbsolutePositionEmbedding(nn.Module):
    """Adds a learned (H0, W0, C) embedding to a (B, H, W, C) map, resized when (H, W) != (H0, W0)."""

    no_weight_decay_keys = ('pos_embed',)

    def __init__(self, dim: int, feat_size: Tuple[int, int]):
        super().__init__()
        self.pos_embed = nn.Parameter(torch.zeros(1, feat_size[0], feat_size[1], dim))
        nn.init.trunc_normal_(self.pos_embed, std=0.02)

    def resized(self, H: int, W: int) -> torch.Tensor:
        pos = self.pos_embed
        if pos.shape[1:3] != (H, W):
            pos = F.interpolate(pos.permute(0, 3, 1, 2), size=(H, W), mode='bilinear', align_corners=True)
            pos = pos.permute(0, 2, 3, 1)
        return pos

    def forward(self, x):
        return x + self.resized(x.shape[1], x.shape[2]).to(x.dtype)

    def resize_loaded(self, name: str, tensor: torch.Tensor) -> torch.Tensor:
        """An embedding saved for another feature size, resized as at run time (bilinear, corners aligned)."""
        if name != 'pos_embed':
            raise ValueError(f'{type(self).__name__}: cannot refit {name!r} to another input size')
        pos = F.interpolate(tensor.permute(0, 3, 1, 2).float(), size=tuple(self.pos_embed.shape[1:3]),
                            mode='bilinear', align_corners=True)
        return pos.permute(0, 2, 3, 1).to(tensor.dtype).contiguous()


@register_mixer('sr_attn')
class SpatialReductionAttention(TokenMixer):
    """Global attention to keys and values reduced ``sr_ratio`` times per side (module docstring); ``pos_embed``:
    PVT's absolute position embedding at the input of each stage."""
    display_name, color = 'SR-Attn', '#ff7f0e'
    PAPER_SR_RATIOS = (8, 4, 2, 1)  # per stage at 224 (PVT v1)

    @classmethod
    def size_options(cls, sides):
        """Per stage, the paper's reduction ratio halved until the reduced map keeps at least 7 tokens per side (or
        down to 1): 224 -> (8, 4, 2, 1), 64 -> (2, 1, 1, 1)."""
        ratios = []
        for side, r in zip(sides, cls.PAPER_SR_RATIOS + (1,) * max(0, len(sides) - len(cls.PAPER_SR_RATIOS))):
            while r > 1 and side // r < 7:
                r //= 2
            ratios.append(dict(sr_ratio=r))
        return {}, tuple(ratios)

    def __init__(self, dim, num_heads, *, sr_ratio: int = 1, qkv_bias: bool = True, pos_embed: bool = True,
                 **context):
        super().__init__(dim, num_heads, **context)
        if sr_ratio < 1:
            raise ValueError(f'sr_ratio must be >= 1, got {sr_ratio}')
        self.sr_ratio = sr_ratio
        self.head_dim = dim // num_heads
        self.q = nn.Linear(dim, dim, bias=qkv_bias)
        self.kv = nn.Linear(dim, 2 * dim, bias=qkv_bias)
        self.proj = nn.Linear(dim, dim)
        if sr_ratio > 1:
            self.sr = nn.Conv2d(dim, dim, kernel_size=sr_ratio, stride=sr_ratio)
            self.norm = nn.LayerNorm(dim)
        else:
            self.sr = self.norm = None

    @classmethod
    def stage_input(cls, dim, feat_size, *, pos_embed: bool = True, **options) -> Optional[nn.Module]:
        if not pos_embed or feat_size is None:
            return None
        return AbsolutePositionEmbedding(dim, feat_size)

    def reduce(self, x: torch.Tensor) -> torch.Tensor:
        """(B, H, W, C) -> (B, M, C) tokens for keys and values.

        The reduction conv has kernel = stride = r, so it is a linear map of each r x r patch: computed as one
        matrix product on the channels-last patches (same weights, ``self.sr``), which is faster on the CPU
        than the convolution and leaves the tokens contiguous for the norm."""
        B, H, W, C = x.shape
        if self.sr is None:
            return x.reshape(B, H * W, C)
        r = self.sr_ratio
        if H % r or W % r:
            x = F.pad(x, (0, 0, 0, (-W) % r, 0, (-H) % r))
        Hr, Wr = x.shape[1] // r, x.shape[2] // r
        patches = x.reshape(B, Hr, r, Wr, r, C).transpose(2, 3).reshape(B, Hr * Wr, r * r * C)
        weight = self.sr.weight.permute(0, 2, 3, 1).reshape(C, r * r * C)  # (out, (ky, kx, in))
        return self.norm(F.linear(patches, weight, self.sr.bias))  # (B, M, C)

    def forward(self, x):  # (B, H, W, C)
        B, H, W, C = x.shape
        q = self.q(x).view(B, H * W, self.num_heads, self.head_dim).transpose(1, 2)  # (B, heads, N, dh)
        kv = self.kv(self.reduce(x))
        k, v = kv.view(B, -1, 2, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4)  # (B, heads, M, dh)
        out = F.scaled_dot_product_attention(q, k, v)
        return self.proj(out.transpose(1, 2).reshape(B, H, W, C))

    def resize_loaded(self, name: str, tensor: torch.Tensor) -> torch.Tensor:
        """A reduction kernel saved for another ratio r, refitted to this ratio r': each output still averages the
        same image area at the old kernel's resolution. r' = k r: every old tap spread over k x k taps with weight
        1 / k^2 (the same as average-pooling k x k, then the old kernel); r = k r': each new tap the sum of k x k old
        taps (the old kernel on the map upsampled k times by repetition). The bias is unchanged. None when this
        mixer has no reduction (r' = 1): the saved reduction and its norm are not used."""
        if self.sr is None and name in ('sr.weight', 'sr.bias', 'norm.weight', 'norm.bias'):
            return None  # this ratio is 1: no reduction, nothing to refit
        if name == 'sr.bias':
            return tensor
        if name != 'sr.weight':
            raise ValueError(f'{type(self).__name__}: cannot refit {name!r} to another input size')
        old, new = tensor.shape[-1], self.sr_ratio
        if new % old == 0:
            k = new // old
            return tensor.repeat_interleave(k, -2).repeat_interleave(k, -1) / (k * k)
        if old % new == 0:
            k = old // new
            c_out, c_in = tensor.shape[:2]
            return tensor.reshape(c_out, c_in, new, k, new, k).sum((3, 5))
        raise ValueError(f'{type(self).__name__}: a {old}x{old} reduction kernel cannot be refitted to {new}x{new}')

    def extra_repr(self):
        return f'dim={self.dim}, num_heads={self.num_heads}, sr_ratio={self.sr_ratio}'
