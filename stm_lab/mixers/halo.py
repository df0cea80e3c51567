"""Halo attention mixer of U-HaloNet.

HaloNet (Vaswani et al., "Scaling Local Self-Attention for Parameter Efficient Visual Backbones", CVPR 2021)
splits the map into non-overlapping ``block x block`` query blocks; each block attends to a key/value window
of ``block + 2 * halo`` pixels per side, i.e. the block plus a "halo" band around it, so neighbouring windows
overlap and information flows between blocks in every layer. The paper uses it inside the unified
transformer-style block (Fig. 2a) rather than HaloNet's ResNet bottleneck:

- q = Linear(C -> C, no bias); k, v = Linear(C -> 2C, no bias) (a 1x1 conv) on the un-padded map, which is then
  zero-padded; head dim dh = C / num_heads;
- logits = (q * dh^-0.5) . k + query-related 2-D relative position logits: separate height and width tables of
  shape (2 * win - 1, dh), initialised randn * dh^-0.5, dotted with the *un-scaled* q. A query at (qy, qx) of
  its block and a key at (ky, kx) of its window (both block/window-local) use rows ``ky - qy + win - 1`` and
  ``kx - qx + win - 1``. (This only uses rows ``win - block .. 2 * win - 2`` of each table; kept as is so that
  the table shape and indexing follow the reference code.);
- keys outside the image get exactly zero attention; output projection Linear(C -> C, with bias).

Default block 7, halo 3 (13 x 13 windows). Variants of the paper's Table VII (local attention ablation):

- ``halo=1``: U-HaloNet-1px;
- ``centric=False``: U-HaloNet-Shift -- the same window size, but the query block sits at the window's
  top-left corner (the window of block row ``by`` covers rows ``[by * block, by * block + block + 2 * halo)``),
  so aggregation is no longer centred on the queries;
- ``switch=True``: U-HaloNet-Switch -- halo 0 on blocks with an even ``block_index`` within the stage, ``halo``
  on odd ones (inter-window transfer every second block, like Swin's shifted-window alternation).

Deviation from the paper's code: maps whose size is not a multiple of ``block`` are padded on the right/bottom;
the paper's code masks only the halo padding, so those extra zero keys take part in the softmax. Here every
key outside the real image is masked, so the output does not depend on how much padding a size needs.
"""
from __future__ import annotations

from typing import Dict, Optional, Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F
from einops import rearrange

from .base import TokenMixer
from . import register_mixer


@register_mixer('halo_attn')
class HaloAttention(TokenMixer):
    _MAX_CACHED_MASKS = 8
    no_weight_decay_keys = ('height_rel', 'width_rel')  # position tables: no weight decay

    def __init__(self, dim, num_heads=1, *, block: int = 7, halo: int = 3, centric: bool = True,
                 switch: bool = False, **context):
        super().__init__(dim, num_heads, **context)
        if block < 1:
            raise ValueError(f'HaloAttention: block must be >= 1, got {block}')
        if halo < 0:
            raise ValueError(f'HaloAttention: halo must be >= 0, got {halo}')
        self.block = block
        self.centric = centric
        self.switch = switch
        # Switch variant: even blocks of a stage attend only inside their own block
        self.halo = 0 if (switch and self.block_index % 2 == 0) else halo
        self.win = block + 2 * self.halo
        self.head_dim = dim // num_heads
        self.scale = self.head_dim ** -0.5

        self.q = nn.Linear(dim, dim, bias=False)
        self.kv = nn.Linear(dim, 2 * dim, bias=False)
        self.proj = nn.Linear(dim, dim)
        self.height_rel = nn.Parameter(torch.randn(2 * self.win - 1, self.head_dim) * self.scale)
        self.width_rel = nn.Parameter(torch.randn(2 * self.win - 1, self.head_dim) * self.scale)
        # table row for (query i in block, key j in window): j - i + win - 1, shape (block, win)
        rel_index = torch.arange(self.win)[None, :] - torch.arange(block)[:, None] + self.win - 1
        self.register_buffer('rel_index', rel_index, persistent=False)
        # (H, W, device) -> bool (n_blocks, 1, 1, win*win) of keys inside the image, or None if all are
        self._mask_cache: Dict[tuple, Optional[torch.Tensor]] = {}

    # ------------------------------------------------------------------ geometry
    @property
    def _top_pad(self) -> int:
        """Zero rows/cols added above/left of the map: the halo when centred, none when the block is top-left."""
        return self.halo if self.centric else 0

    def _key_mask(self, H: int, W: int, device) -> Optional[torch.Tensor]:
        """Which window keys lie inside the real image; depends only on the size, so it is cached."""
        key = (H, W, str(device))
        if key not in self._mask_cache:
            b, win, top = self.block, self.win, self._top_pad

            def inside(n):  # (n_blocks, win): image row/col of each window position is in [0, n)
                n_blocks = -(-n // b)
                pos = (torch.arange(n_blocks, device=device)[:, None] * b
                       + torch.arange(win, device=device)[None, :] - top)
                return (pos >= 0) & (pos < n)

            ok = inside(H)[:, None, :, None] & inside(W)[None, :, None, :]  # (nby, nbx, win, win)
            # every window contains its block's first pixel, which is real, so no row is all masked
            mask = None if bool(ok.all()) else rearrange(ok, 'y x ky kx -> (y x) 1 1 (ky kx)')
            if len(self._mask_cache) >= self._MAX_CACHED_MASKS:
                self._mask_cache.clear()
            self._mask_cache[key] = mask
        return self._mask_cache[key]

    # ------------------------------------------------------------------ attention pieces
    def _rel_logits(self, q: torch.Tensor) -> torch.Tensor:
        """Query-related relative position logits. q: (..., block*block, dh), un-scaled -> (..., b*b, win*win)."""
        b = self.block
        q = q.unflatten(-2, (b, b))                 # (..., qy, qx, dh)
        eh = self.height_rel[self.rel_index]        # (qy, ky, dh)
        ew = self.width_rel[self.rel_index]         # (qx, kx, dh)
        lh = torch.einsum('...yxd,ykd->...yxk', q, eh)  # (..., qy, qx, ky)
        lw = torch.einsum('...yxd,xkd->...yxk', q, ew)  # (..., qy, qx, kx)
        logits = lh[..., :, None] + lw[..., None, :]    # (..., qy, qx, ky, kx)
        return logits.flatten(-4, -3).flatten(-2)

    def _qkv_bias(self, x: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """q, k, v and the additive logit bias (relative logits, -inf on keys outside the image), each with
        leading dims (B * n_blocks, heads): q (.., b*b, dh), k/v (.., win*win, dh), bias (.., b*b, win*win)."""
        B, H, W, C = x.shape
        b, h, win, nh = self.block, self.halo, self.win, self.num_heads
        pad_h, pad_w = (-H) % b, (-W) % b  # to multiples of block
        top = self._top_pad

        q = F.pad(self.q(x), (0, 0, 0, pad_w, 0, pad_h))  # (B, Hp, Wp, C)
        # k/v come from the un-padded map, then zeros: `top` before, the rest of 2*halo (+ block padding) after
        kv = F.pad(self.kv(x), (0, 0, top, 2 * h - top + pad_w, top, 2 * h - top + pad_h))  # (B, Hp+2h, Wp+2h, 2C)
        kv = kv.unfold(1, win, b).unfold(2, win, b)  # (B, nby, nbx, 2C, win, win): overlapping windows, a view
        k, v = rearrange(kv, 'B y x (two nh d) ky kx -> two (B y x) nh (ky kx) d', two=2, nh=nh)
        q = rearrange(q, 'B (y qy) (x qx) (nh d) -> B (y x) nh (qy qx) d', qy=b, qx=b, nh=nh)

        bias = self._rel_logits(q)  # (B, n_blocks, nh, b*b, win*win)
        ok = self._key_mask(H, W, x.device)
        if ok is not None:
            bias = bias.masked_fill(~ok, float('-inf'))
        return q.flatten(0, 1), k, v, bias.flatten(0, 1)

    def _merge(self, out: torch.Tensor, x_shape) -> torch.Tensor:
        """(B*n_blocks, heads, b*b, dh) -> projected (B, H, W, C), padding queries cropped."""
        B, H, W, _ = x_shape
        b = self.block
        out = rearrange(out, '(B y x) nh (qy qx) d -> B (y qy) (x qx) (nh d)',
                        B=B, y=-(-H // b), qy=b, qx=b)
        return self.proj(out[:, :H, :W])

    # ------------------------------------------------------------------ public
    def forward(self, x):  # (B, H, W, C)
        q, k, v, bias = self._qkv_bias(x)
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=bias, scale=self.scale)
        return self._merge(out, x.shape)

    def attention_probs(self, x: torch.Tensor) -> torch.Tensor:
        """Softmax attention weights, (B, n_blocks, heads, block*block, win*win), blocks in row-major order;
        for inspection and tests (forward does the same through scaled_dot_product_attention)."""
        q, k, _, bias = self._qkv_bias(x)
        probs = ((q * self.scale) @ k.transpose(-2, -1) + bias).softmax(dim=-1)
        return probs.unflatten(0, (x.shape[0], -1))

    def extra_repr(self):
        return (f'dim={self.dim}, num_heads={self.num_heads}, block={self.block}, halo={self.halo}, '
                f'centric={self.centric}, switch={self.switch}')
