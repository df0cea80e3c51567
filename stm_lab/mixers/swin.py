"""Shifted-window attention (SW-Attn) of U-Swin.

Liu et al., "Swin Transformer: Hierarchical Vision Transformer using Shifted Windows", ICCV 2021.

Multi-head self-attention inside non-overlapping ``window`` x ``window`` windows with a learned relative position
bias ((2w-1)^2 entries per head). Blocks with an odd index within their stage shift the windows by ``shift``
(half a window by default) with a cyclic roll, so that information crosses window borders every other block.
Tokens that the roll brought together from opposite sides of the map are masked from each other.

Differences from the paper's code, on purpose:
- masks are built for the actual input size (and cached per size) instead of once for 224x224, so any input
  size is handled correctly (the paper's code misaligns its masks at 448, facts sheet section 5.1);
- when a map is not a multiple of the window it is zero-padded at the bottom/right and the padded tokens are
  masked out as keys (the paper's code pads without masking, only in detection);
- masked pairs get exactly zero attention (``-inf`` before softmax) instead of ``-100``.
If the map is no larger than the window, the window shrinks to the map and the shift is dropped (as in Swin).
"""
from __future__ import annotations

from typing import Dict, Optional, Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F

from .base import TokenMixer
from . import register_mixer


def window_partition(x: torch.Tensor, w: int) -> torch.Tensor:
    """(B, Hp, Wp, C) -> (B, nWh * nWw, w * w, C), windows in row-major order."""
    B, Hp, Wp, C = x.shape
    x = x.view(B, Hp // w, w, Wp // w, w, C).transpose(2, 3)
    return x.reshape(B, (Hp // w) * (Wp // w), w * w, C)


def window_merge(x: torch.Tensor, w: int, Hp: int, Wp: int) -> torch.Tensor:
    """Inverse of :func:`window_partition`."""
    B, C = x.shape[0], x.shape[-1]
    x = x.view(B, Hp // w, Wp // w, w, w, C).transpose(2, 3)
    return x.reshape(B, Hp, Wp, C)


@register_mixer('sw_attn')
class ShiftedWindowAttention(TokenMixer):
    no_weight_decay_keys = ('relative_position_bias_table',)  # excluded from weight decay, as in the paper

    def __init__(self, dim, num_heads, *, window: int = 7, shift: Optional[int] = None,
                 qkv_bias: bool = True, **context):
        super().__init__(dim, num_heads, **context)
        if window < 1:
            raise ValueError(f'window must be positive, got {window}')
        self.window = window
        # shift on odd blocks of a stage (W-MSA / SW-MSA alternation); shift=0 disables it everywhere
        base_shift = window // 2 if shift is None else shift
        if not 0 <= base_shift < window:
            raise ValueError(f'shift must be in [0, window), got {base_shift}')
        self.shift = base_shift if self.block_index % 2 == 1 else 0
        self.head_dim = dim // num_heads
        self.qkv = nn.Linear(dim, 3 * dim, bias=qkv_bias)
        self.proj = nn.Linear(dim, dim)
        self.relative_position_bias_table = nn.Parameter(torch.zeros((2 * window - 1) ** 2, num_heads))
        nn.init.trunc_normal_(self.relative_position_bias_table, std=0.02)
        self._masks: Dict[tuple, Optional[torch.Tensor]] = {}  # per input size and device, not saved

    def _rel_index(self, w: int, device) -> torch.Tensor:
        """(w*w, w*w) index into the bias table for a window of side w <= self.window (cached)."""
        key = ('rel', w, str(device))
        if key in self._masks:
            return self._masks[key]
        coords = torch.stack(torch.meshgrid(torch.arange(w), torch.arange(w), indexing='ij')).flatten(1)
        rel = coords[:, :, None] - coords[:, None, :] + (self.window - 1)  # (2, N, N), in [0, 2W-2]
        self._masks[key] = (rel[0] * (2 * self.window - 1) + rel[1]).to(device)
        return self._masks[key]

    def _mask(self, H: int, W: int, w: int, s: int, device) -> Optional[torch.Tensor]:
        """Boolean (nW, N, N) mask, True where a query may attend a key, or None if all pairs are allowed.

        Each position gets a label: whether the cyclic roll wrapped it around (per axis) and whether it is
        padding. Queries attend only to keys with the same label, which also keeps padded keys away from
        real queries while every query still sees itself.
        """
        key = (H, W, w, s, str(device))
        if key not in self._masks:
            Hp, Wp = -(-H // w) * w, -(-W // w) * w
            if s == 0 and Hp == H and Wp == W:
                self._masks[key] = None
            else:
                r, c = torch.arange(Hp, device=device), torch.arange(Wp, device=device)
                label = ((r < s)[:, None].long() + 2 * (c < s)[None, :].long()
                         + 4 * ((r >= H)[:, None] | (c >= W)[None, :]).long())  # (Hp, Wp)
                label = torch.roll(label, (-s, -s), (0, 1))[None, :, :, None]
                label = window_partition(label, w)[0, :, :, 0]  # (nW, N)
                self._masks[key] = label[:, :, None] == label[:, None, :]
        return self._masks[key]

    def forward(self, x):  # (B, H, W, C)
        B, H, W, C = x.shape
        w, s = self.window, self.shift
        if min(H, W) <= w:  # the whole map fits in one window: no shift needed
            w, s = min(H, W, w), 0
        Hp, Wp = -(-H // w) * w, -(-W // w) * w
        x = F.pad(x, (0, 0, 0, Wp - W, 0, Hp - H))
        if s:
            x = torch.roll(x, (-s, -s), (1, 2))
        win = window_partition(x, w)  # (B, nW, N, C)
        nW, N = win.shape[1], win.shape[2]
        qkv = self.qkv(win).view(B, nW, N, 3, self.num_heads, self.head_dim).permute(3, 0, 1, 4, 2, 5)
        q, k, v = qkv.unbind(0)  # each (B, nW, heads, N, dh)
        bias = self.relative_position_bias_table[self._rel_index(w, x.device)]  # (N, N, heads)
        bias = bias.permute(2, 0, 1).to(q.dtype)  # (heads, N, N)
        mask = self._mask(H, W, w, s, x.device)
        if mask is not None:  # (nW, 1, N, N): -inf where not allowed
            bias = bias.masked_fill(~mask[:, None], float('-inf'))
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=bias)  # (B, nW, heads, N, dh)
        out = out.transpose(2, 3).reshape(B, nW, N, C)
        x = window_merge(self.proj(out), w, Hp, Wp)
        if s:
            x = torch.roll(x, (s, s), (1, 2))
        return x[:, :H, :W].contiguous()

    def extra_repr(self):
        return f'dim={self.dim}, num_heads={self.num_heads}, window={self.window}, shift={self.shift}'
