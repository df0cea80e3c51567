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

Implementation notes (speed, same result; ``stm_lab.mixers.reference.halo_attention`` is the plain version and
``tests/test_speed_equivalence.py`` checks values and gradients against it):

- k/v windows are gathered by ``_HaloWindows``, one strided copy forward; its backward adds the window
  gradients back with a few strided in-place adds (ceil(win / block)^2 of them) instead of the generic unfold
  backward, which dominated the profile;
- the relative logits are one small matmul against both tables, read through strided views; the mask is
  applied to those per-axis logits (a key is outside iff its row or column is), and they are added to q.k in
  place by ``stm_lab.mixers.swin.window_attention`` without forming the full bias;
- an axis that fits in one block keeps only its real keys and queries (see ``HaloAttention._axis``).
"""
from __future__ import annotations

from typing import Dict, NamedTuple, Optional, Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F

from .base import TokenMixer
from . import register_mixer
from .swin import window_attention, window_for_side


def _pad(x: torch.Tensor, pad) -> torch.Tensor:
    """``F.pad`` with zeros, without its copy when there is nothing to pad."""
    return F.pad(x, pad) if any(pad) else x


class _HaloWindows(torch.autograd.Function):
    """Overlapping windows of a zero-padded key/value map: ``(B, Hk, Wk, 2, nh, d)`` -> keys and values, each
    ``(B * nby * nbx * nh, wy * wx, d)`` and contiguous, ready for batched matmuls. Per axis ``(step, w)``:
    windows of ``w`` positions every ``step``; ``Hk = (nby - 1) * step + w``.

    Forward is one strided copy (the unfold view, materialized in the layout the matmuls want). Backward adds
    the window gradients back onto the map with ``ceil(w / step)`` strided in-place adds per axis; the generic
    backward of unfold took most of the mixer's time."""

    @staticmethod
    def forward(ctx, kv: torch.Tensor, rows, cols):
        (sy, wy), (sx, wx) = rows, cols
        B, Hk, Wk, T, nh, d = kv.shape
        nby, nbx = (Hk - wy) // sy + 1, (Wk - wx) // sx + 1
        sB, sH, sW, sT, sh, sd = kv.stride()
        windows = kv.as_strided((T, B, nby, nbx, nh, wy, wx, d), (sT, sB, sy * sH, sx * sW, sh, sH, sW, sd))
        ctx.geometry, ctx.dtype = (kv.shape, rows, cols, nby, nbx), kv.dtype
        k, v = windows.contiguous().view(T, -1, wy * wx, d).unbind(0)
        return k, v

    @staticmethod
    def backward(ctx, gk: torch.Tensor, gv: torch.Tensor):
        (B, Hk, Wk, T, nh, d), (sy, wy), (sx, wx), nby, nbx = ctx.geometry
        qy, qx = -(-wy // sy), -(-wx // sx)  # a window spans this many steps per axis
        # accumulate on the map cut into steps: window position (iy * sy + ty) of block by lands on step by + iy;
        # half-precision gradients (bf16 autocast) are summed in float32 and rounded once, as a matmul would
        low = ctx.dtype in (torch.bfloat16, torch.float16)
        out = gk.new_zeros(B, nby + qy - 1, sy, nbx + qx - 1, sx, T, nh, d, dtype=torch.float32 if low else None)
        for t, g in enumerate((gk, gv)):
            if g is None:
                continue
            g = g.reshape(B, nby, nbx, nh, wy, wx, d).permute(0, 1, 4, 2, 5, 3, 6)  # (B, by, ky, bx, kx, nh, d)
            for iy in range(qy):
                ly = min(sy, wy - iy * sy)
                for ix in range(qx):
                    lx = min(sx, wx - ix * sx)
                    out[:, iy:iy + nby, :ly, ix:ix + nbx, :lx, t] += g[:, :, iy * sy:iy * sy + ly, :,
                                                                         ix * sx:ix * sx + lx]
        out = out.view(B, (nby + qy - 1) * sy, (nbx + qx - 1) * sx, T, nh, d)
        return out[:, :Hk, :Wk].to(ctx.dtype), None, None


class _Axis(NamedTuple):
    """How one axis (rows or columns) of a map of size n is cut into query blocks and key windows."""
    n_blocks: int
    q: int           # query positions per block (block, or n when the whole axis is one block)
    k: int           # key positions per window (win, or n)
    first: int       # window position of the first key kept (0, or the top padding)
    pad_before: int  # zeros before the k/v map
    pad_after: int   # zeros after it (halo + padding to a multiple of the block)


@register_mixer('halo_attn')
class HaloAttention(TokenMixer):
    """Halo attention (module docstring): ``block`` x ``block`` query blocks, each attending to its block widened by
    ``halo`` pixels on every side; ``centric=False`` and ``switch=True`` are Table VII's Shift and Switch variants."""
    _MAX_CACHED_MASKS = 8
    no_weight_decay_keys = ('height_rel', 'width_rel')  # position tables: no weight decay
    display_name, color = 'Halo-Attn', '#1f77b4'

    @classmethod
    def size_options(cls, sides):
        """The query block follows the first stage as Swin's window does; the halo is half a block (224: 7/3)."""
        block = window_for_side(sides[0])
        return dict(block=block, halo=block // 2), tuple({} for _ in sides)

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
        # (H, W, device[, 'full']) -> per-axis masks of window positions outside the image, or None
        self._mask_cache: Dict[tuple, Optional[Tuple[torch.Tensor, torch.Tensor]]] = {}

    # ------------------------------------------------------------------ geometry
    @property
    def _top_pad(self) -> int:
        """Zero rows/cols added above/left of the map: the halo when centred, none when the block is top-left."""
        return self.halo if self.centric else 0

    def _axis(self, n: int, trim: bool = True) -> _Axis:
        """Blocks and windows along an axis of size n. With ``trim``, an axis that fits in one block keeps only
        its real positions: every other key of its window is outside the image (masked, exactly zero weight)
        and the extra queries are padding, so dropping them changes nothing but the work (at 64x64 the last
        two stages of the micro models are one block, and most of their 8 x 8 window is padding)."""
        b, win, top = self.block, self.win, self._top_pad
        if trim and n <= b:
            return _Axis(1, n, n, top, 0, 0)
        nb = -(-n // b)
        return _Axis(nb, b, win, 0, top, 2 * self.halo - top + nb * b - n)

    def _key_mask(self, H: int, W: int, device, trim: bool = True
                  ) -> Optional[Tuple[torch.Tensor, torch.Tensor]]:
        """Which window rows / columns lie outside the real image: bool ``(nby, ky)`` and ``(nbx, kx)``, or
        None if no key is outside. A key is outside iff its row or its column is, so the mask is applied to the
        (small) per-axis relative logits instead of the full logits. Depends only on the size: cached."""
        def outside(n):  # (n_blocks, k): image row/col of each kept window position is not in [0, n)
            a = self._axis(n, trim)
            pos = (torch.arange(a.n_blocks, device=device)[:, None] * self.block
                   + torch.arange(a.first, a.first + a.k, device=device)[None, :] - self._top_pad)
            return (pos < 0) | (pos >= n)

        def any_outside(n):  # the same question from the geometry alone: no data-dependent branch (exportable)
            a = self._axis(n, trim)
            lo = a.first - self._top_pad
            return lo < 0 or (a.n_blocks - 1) * self.block + lo + a.k - 1 >= n

        def make():
            # every window contains its block's first pixel, which is real, so no query row is all masked
            return (outside(H), outside(W)) if any_outside(H) or any_outside(W) else None

        if torch.compiler.is_compiling():  # tracing (torch.export / ONNX): tensors of the trace are not cached
            return make()
        # tensors made under inference_mode cannot be saved for a later backward: keep them apart
        key = (H, W, str(device), trim, torch.is_inference_mode_enabled())
        if key not in self._mask_cache:
            if len(self._mask_cache) >= self._MAX_CACHED_MASKS:
                self._mask_cache.clear()
            self._mask_cache[key] = make()
        return self._mask_cache[key]

    # ------------------------------------------------------------------ attention pieces
    def _rel_logits(self, q: torch.Tensor, ay: _Axis, ax: _Axis, mask) -> Tuple[torch.Tensor, torch.Tensor]:
        """Relative position logits per axis, ``lh`` (M, qy, qx, ky) and ``lw`` (M, qy, qx, kx), -inf on rows /
        columns outside the image. q: (M, qy*qx, dh).

        One matmul against both whole tables gives q . table[r] for every row r; the row a (query, key) pair
        needs is ``key + first - query + win - 1``, i.e. a window of the table that slides back one row per
        query row: a strided view of the product, no gather."""
        win, R = self.win, 2 * self.win - 1
        tables = torch.cat([self.height_rel, self.width_rel])  # (2R, dh)
        full = torch.matmul(q, tables.t()).view(-1, ay.q, ax.q, 2 * R)  # (M, qy, qx, 2R), contiguous
        M, (sM, sy, sx, _), o = full.shape[0], full.stride(), full.storage_offset()
        lh = full.as_strided((M, ay.q, ax.q, ay.k), (sM, sy - 1, sx, 1), o + ay.first + win - 1)
        lw = full.as_strided((M, ay.q, ax.q, ax.k), (sM, sy, sx - 1, 1), o + R + ax.first + win - 1)
        if mask is not None:  # -inf on rows / columns outside the image (the sum is then -inf too)
            rows, cols = mask
            nh = self.num_heads
            lh = lh.view(-1, ay.n_blocks, ax.n_blocks, nh, ay.q, ax.q, ay.k)
            lh = lh.masked_fill(rows[:, None, None, None, None, :], float('-inf')).view(M, ay.q, ax.q, ay.k)
            lw = lw.view(-1, ay.n_blocks, ax.n_blocks, nh, ay.q, ax.q, ax.k)
            lw = lw.masked_fill(cols[:, None, None, None, :], float('-inf')).view(M, ay.q, ax.q, ax.k)
        return lh, lw

    def _qkv(self, x: torch.Tensor, trim: bool = True):
        """q (M, qy*qx, dh), k and v (M, ky*kx, dh), the per-axis relative logits and the axes;
        M = B * n_blocks * heads, blocks in row-major order."""
        B, H, W, C = x.shape
        nh, dh = self.num_heads, self.head_dim
        ay, ax = self._axis(H, trim), self._axis(W, trim)

        q = _pad(self.q(x), (0, 0, 0, ax.n_blocks * ax.q - W, 0, ay.n_blocks * ay.q - H))  # whole blocks
        q = q.view(B, ay.n_blocks, ay.q, ax.n_blocks, ax.q, nh, dh).permute(0, 1, 3, 5, 2, 4, 6)
        q = q.reshape(-1, ay.q * ax.q, dh)
        # k/v come from the un-padded map, then zeros (halo, and padding to whole blocks)
        kv = _pad(self.kv(x), (0, 0, ax.pad_before, ax.pad_after, ay.pad_before, ay.pad_after))
        k, v = _HaloWindows.apply(kv.unflatten(-1, (2, nh, dh)), (self.block, ay.k), (self.block, ax.k))
        lh, lw = self._rel_logits(q, ay, ax, self._key_mask(H, W, x.device, trim))
        return q, k, v, lh, lw, ay, ax

    # ------------------------------------------------------------------ public
    def forward(self, x):  # (B, H, W, C)
        B, H, W, C = x.shape
        q, k, v, lh, lw, ay, ax = self._qkv(x)
        out = window_attention(q, k, v, lh[..., :, None], lw[..., None, :], scale=self.scale,
                               view=(q.shape[0], ay.q, ax.q, ay.k, ax.k))  # (B * nby * nbx * heads, qy*qx, dh)
        out = out.view(B, ay.n_blocks, ax.n_blocks, self.num_heads, ay.q, ax.q, self.head_dim)
        out = out.permute(0, 1, 4, 2, 5, 3, 6).reshape(B, ay.n_blocks * ay.q, ax.n_blocks * ax.q, C)
        if out.shape[1] != H or out.shape[2] != W:  # crop block padding
            out = out[:, :H, :W]
        return self.proj(out)

    def attention_probs(self, x: torch.Tensor) -> torch.Tensor:
        """Softmax attention weights, (B, n_blocks, heads, block*block, win*win), blocks in row-major order, over
        the full windows (padding included); for inspection and tests."""
        q, k, _, lh, lw, ay, ax = self._qkv(x, trim=False)
        logits = (q @ k.transpose(1, 2) * self.scale).view(-1, ay.q, ax.q, ay.k, ax.k)
        probs = (logits + lh[..., :, None] + lw[..., None, :]).flatten(-2).flatten(1, 2).softmax(-1)
        return probs.view(x.shape[0], ay.n_blocks * ax.n_blocks, self.num_heads, *probs.shape[1:])

    def resize_loaded(self, name: str, tensor: torch.Tensor) -> torch.Tensor:
        """A height or width table saved for another window, resized linearly over its 2 win - 1 offsets (as the
        paper's detection code does)."""
        if name not in ('height_rel', 'width_rel'):
            raise ValueError(f'{type(self).__name__}: cannot refit {name!r} to another input size')
        rows = F.interpolate(tensor.t()[None].float(), size=2 * self.win - 1, mode='linear', align_corners=True)
        return rows[0].t().to(tensor.dtype).contiguous()

    def extra_repr(self):
        return (f'dim={self.dim}, num_heads={self.num_heads}, block={self.block}, halo={self.halo}, '
                f'centric={self.centric}, switch={self.switch}')
