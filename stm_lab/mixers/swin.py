"""Shifted-window attention (SW-Attn) of U-Swin.

Liu et al., "Swin Transformer: Hierarchical Vision Transformer using Shifted Windows", ICCV 2021.

Multi-head self-attention inside non-overlapping ``window`` x ``window`` windows (narrower on an axis where the map
is no larger than the window, see below) with a learned relative position bias ((2w-1)^2 entries per head). Blocks
with an odd index within their stage shift the windows by ``shift`` (half a window by default) with a cyclic roll,
so that information crosses window borders every other block. Tokens that the roll brought together from opposite
sides of the map are masked from each other.

Differences from the paper's code, on purpose:

- masks are built for the actual input size (and cached per size) instead of once for 224x224, so any input
  size is handled correctly (the paper's code misaligns its masks at 448);
- when a map is not a multiple of the window it is zero-padded at the bottom/right and the padded tokens are
  masked out as keys (the paper's code pads without masking, only in detection);
- masked pairs get exactly zero attention (``-inf`` before softmax) instead of ``-100``;
- window and shift are chosen per axis, as timm's ``SwinTransformerBlock`` does: a side of the map no larger than
  ``window`` is one window on that axis (the window's side there is the map's side) with no shift on that axis,
  while the other axis keeps ``window`` and the block's shift. The paper's classification code, which only meets
  square maps, shrinks the window to ``min(H, W)`` on both axes and drops both shifts: on a non-square map that
  cuts the long side into square windows that are never shifted, so these windows exchange nothing in the whole
  stage. Square maps, and maps larger than the window on both axes, get the same windows and shifts either way.

A window of ``h x w`` tokens (``h, w <= window``) reads the relative position bias of offset ``(dy, dx)`` from the
same table row as a full window does, i.e. the central ``(2h - 1) x (2w - 1)`` part of the ``(2 window - 1)^2`` table.

Implementation notes (speed, same result; ``stm_lab.mixers.reference.swin_attention`` is the plain version and
``tests/test_speed_equivalence.py`` checks values and gradients against it):

- padding, cyclic roll, window partition and the split into heads are one gather of the projected q, k, v with a
  cached permutation (``_Permute``), and so is the way back; ``torch.roll`` alone cost seven copies' worth
  of time. (Padded positions are zeros after the projection rather than projected zeros: they never reach a
  real token either way);
- the attention core is ``window_attention``: for windows of 4-49 tokens, batched matmuls with an in-place
  bias add and an explicit backward beat ``scaled_dot_product_attention`` on the CPU (whose fused kernel is not
  used anyway when the additive bias needs a gradient, as the relative position bias does).
"""

from __future__ import annotations

from typing import Dict, Optional, Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

from .base import TokenMixer
from . import register_mixer


def _scaled_bmm(a: torch.Tensor, b: torch.Tensor, scale: float) -> torch.Tensor:
    """``scale * (a @ b)``, the scale folded into the matrix product (free in BLAS; no pass over the result)."""
    if scale == 1.0:
        return torch.bmm(a, b)
    ignored = a.new_empty(1, 1, 1).expand(a.shape[0], a.shape[1], b.shape[2])  # beta=0: not read
    return torch.baddbmm(ignored, a, b, beta=0, alpha=scale)


class _WindowAttention(torch.autograd.Function):
    """``softmax(scale * q k^T + biases) v`` for many small windows; see :func:`window_attention`."""

    @staticmethod
    def forward(ctx, q, k, v, scale, view, *biases):
        logits = q.new_empty(q.shape[0], q.shape[1], k.shape[1])  # (M, Nq, Nk)
        if len(biases) == 2 and torch.broadcast_shapes(*(b.shape for b in biases)) == logits.view(view).shape:
            # two biases that together span the logits (halo's row and column terms): their sum is written
            # once and q.k accumulated onto it, instead of two more passes over the logits
            torch.add(*biases, out=logits.view(view))
            logits.baddbmm_(q, k.transpose(1, 2), alpha=scale)
        else:
            logits = _scaled_bmm(q, k.transpose(1, 2), scale)
            for bias in biases:  # in place, broadcast against the logits seen as `view`
                logits.view(view).add_(bias.to(logits.dtype))
        # softmax in at least float32 (bf16/fp16 logits under autocast), as autocast itself would
        p = torch.softmax(logits, -1, dtype=torch.promote_types(logits.dtype, torch.float32))
        p_v = p.to(v.dtype)  # p itself unless autocast: saved, so that the backward does not cast it again
        ctx.save_for_backward(q, k, v, p, p_v)
        ctx.scale, ctx.view = scale, view
        # a bias gradient comes back in the bias's dtype, summed in float32: a float32 bias (Swin's table under
        # autocast) gets no bf16 rounding and no cast node on its way back
        ctx.biases = [(b.shape, b.dtype) if need else None for b, need in zip(biases, ctx.needs_input_grad[5:])]
        return torch.bmm(p_v, v)

    @staticmethod
    def backward(ctx, grad):
        q, k, v, p, p_v = ctx.saved_tensors
        grad = grad.to(v.dtype)
        gp = torch.bmm(grad, v.transpose(1, 2)).to(p.dtype)
        gl = torch._softmax_backward_data(gp, p, -1, p.dtype)  # d logits = p * (gp - sum(gp * p))
        gv = torch.bmm(p_v.transpose(1, 2), grad)
        gl_q = gl.to(q.dtype)
        gq = _scaled_bmm(gl_q, k, ctx.scale)
        gk = _scaled_bmm(gl_q.transpose(1, 2), q, ctx.scale)  # computed as (M, Nk, d), the layout of k
        gl = gl.view(ctx.view)
        gbiases = [gl.sum_to_size(b[0]).to(b[1]) if b is not None else None for b in ctx.biases]
        return gq, gk, gv, None, None, *gbiases


def window_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, *biases: torch.Tensor,
                     scale: float = 1.0, view: Optional[Sequence[int]] = None) -> torch.Tensor:
    """``softmax(scale * q . k^T + sum(biases)) . v`` batched over many small windows.

    q: (M, Nq, d); k, v: (M, Nk, d) (any batch stride). Each bias is added to the logits seen as ``view``
    (default ``(M, Nq, Nk)``) with broadcasting, e.g. a ``(nW, heads, N, N)`` bias with
    ``view = (B, nW, heads, N, N)``; ``-inf`` marks pairs that may not attend (every row must allow at least one
    key). Returns (M, Nq, d). Biases of another dtype than q (a float32 table under autocast) are cast inside, and
    their gradients come back in their own dtype.

    The same computation as ``F.scaled_dot_product_attention(q, k, v, attn_mask=sum(biases), scale=scale)``,
    with an explicit backward: the scale rides in the matrix products, the biases are added in place without
    being expanded to full size, and every gradient comes out contiguous in the layout of its input. For windows
    of 4-169 tokens this is faster on the CPU than SDPA's math path (taken in training, since the biases need
    gradients) and than its fused CPU kernel (inference)."""
    view = tuple(view) if view is not None else (q.shape[0], q.shape[1], k.shape[1])
    return _WindowAttention.apply(q, k, v, float(scale), view, *biases)


class _Permute(torch.autograd.Function):
    """``x.index_select(1, index)`` for a permutation ``index``; the backward is the inverse permutation
    (another gather), not ``index_select``'s scatter-add."""

    @staticmethod
    def forward(ctx, x, index, inverse):
        ctx.inverse = inverse
        return x.index_select(1, index)

    @staticmethod
    def backward(ctx, grad):
        return grad.index_select(1, ctx.inverse), None, None


class _Geometry:
    """Everything about an input size that does not depend on the data, built once per size: the window
    ``(wh, ww)`` and shift ``(sh, sw)`` used per axis, the padded size, the gathers to and from windows, the index
    into the relative position table and the mask."""

    def __init__(self, H: int, W: int, window: int, shift: int, heads: int, device):
        # per axis: a side that fits in one window is one window, unshifted (a shift would only wrap it)
        (wh, sh), (ww, sw) = ((n, 0) if n <= window else (window, shift) for n in (H, W))
        self.wh, self.ww, self.sh, self.sw = wh, ww, sh, sw
        self.Hp, self.Wp = Hp, Wp = -(-H // wh) * wh, -(-W // ww) * ww
        self.nW, self.N = (Hp // wh) * (Wp // ww), wh * ww
        nW, N, P = self.nW, self.N, Hp * Wp
        arange = lambda n: torch.arange(n, device=device)  # noqa: E731

        # pos[j, n]: position (in the padded map) of token n of window j, after the cyclic roll by (-sh, -sw)
        pos = arange(P).view(Hp, Wp)
        if sh or sw:
            pos = torch.roll(pos, (-sh, -sw), (0, 1))
        pos = pos.view(Hp // wh, wh, Wp // ww, ww).transpose(1, 2).reshape(nW, N)
        h, t = arange(heads), arange(3)
        # to windows: rows of dh channels, qkv (P, 3, heads) -> (nW, heads, 3, N)
        self.to_win = ((pos[:, None, None, :] * 3 + t[:, None]) * heads + h[:, None, None]).flatten()
        self.to_win_inv = torch.argsort(self.to_win)
        # from windows: rows of dh channels, output (nW, heads, N) -> (P, heads)
        slot = torch.empty(P, dtype=torch.long, device=device)
        slot[pos.flatten()] = arange(nW * N)  # window * N + n of each position
        self.from_win = (((slot // N)[:, None] * heads + h) * N + (slot % N)[:, None]).flatten()
        self.from_win_inv = torch.argsort(self.from_win)

        # relative position of every (query, key) pair of a window -> row of the (2 * window - 1)^2 table; offsets
        # are counted from the full window's centre row so a smaller window reads the same rows for the same offset
        yx = torch.stack(torch.meshgrid(arange(wh), arange(ww), indexing='ij')).flatten(1)  # (2, N)
        rel = yx[:, :, None] - yx[:, None, :] + (window - 1)  # (2, N, N), in [0, 2 * window - 2]
        self.rel_index = rel[0] * (2 * window - 1) + rel[1]

        # mask: a label per position (which side of the cyclic wrap per axis, or padding); only equal labels
        # may attend to each other, which also keeps padded keys away from real queries
        self.forbidden = None  # (nW, 1, N, N), True where a query may not attend a key
        if sh or sw or Hp != H or Wp != W:
            r, c = arange(Hp), arange(Wp)
            label = ((r < sh)[:, None].long() + 2 * (c < sw)[None, :].long()
                     + 4 * ((r >= H)[:, None] | (c >= W)[None, :]).long()).flatten()[pos]  # (nW, N)
            self.forbidden = (label[:, :, None] != label[:, None, :])[:, None]


def window_for_side(side: int) -> int:
    """Window (and HaloNet's query block) for a first-stage map of ``side`` pixels: 7, as in the paper, when 7
    divides the side (224 -> 56); else the largest divisor in 6..4 (64 -> 16 -> 4, 96 -> 24 -> 6); else 7 (the
    maps are then padded)."""
    if side % 7 == 0:
        return 7
    return next((w for w in (6, 5, 4) if side % w == 0), 7)


@register_mixer('sw_attn')
class ShiftedWindowAttention(TokenMixer):
    """Attention within ``window`` x ``window`` windows (module docstring), shifted by ``shift`` (default: half a
    window; 0: never) on the blocks with an odd ``block_index``."""
    no_weight_decay_keys = ('relative_position_bias_table',)  # excluded from weight decay, as in the paper
    _MAX_CACHED = 16
    display_name, color = 'SW-Attn', '#2ca02c'

    @classmethod
    def size_options(cls, sides):
        return dict(window=window_for_side(sides[0])), tuple({} for _ in sides)

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
        self._masks: Dict[tuple, _Geometry] = {}  # per input size and device: index tables and masks, not saved

    def _geometry(self, H: int, W: int, device) -> _Geometry:
        # tensors made under inference_mode cannot be saved for a later backward: keep them apart
        key = (H, W, str(device), torch.is_inference_mode_enabled())
        if key not in self._masks:
            if len(self._masks) >= self._MAX_CACHED:
                self._masks.clear()
            self._masks[key] = _Geometry(H, W, self.window, self.shift, self.num_heads, device)
        return self._masks[key]

    def _bias(self, g: _Geometry) -> torch.Tensor:
        """Relative position bias, -inf where the mask forbids: (heads, N, N), or (nW, heads, N, N) with a mask."""
        bias = self.relative_position_bias_table[g.rel_index].permute(2, 0, 1)  # (heads, N, N)
        if g.forbidden is not None:
            bias = bias.masked_fill(g.forbidden, float('-inf'))
        return bias

    def forward(self, x):  # (B, H, W, C)
        B, H, W, C = x.shape
        nh, dh = self.num_heads, self.head_dim
        g = self._geometry(H, W, x.device)
        qkv = self.qkv(x)  # (B, H, W, 3C)
        if g.Hp != H or g.Wp != W:
            qkv = F.pad(qkv, (0, 0, 0, g.Wp - W, 0, g.Hp - H))
        # pad + roll + partition + split heads: one gather of dh-channel rows
        qkv = _Permute.apply(qkv.reshape(B, -1, dh), g.to_win, g.to_win_inv)
        q, k, v = qkv.view(B * g.nW * nh, 3, g.N, dh).unbind(1)
        bias = self._bias(g)
        out = window_attention(q, k, v, bias, scale=dh ** -0.5, view=(B, -1, *bias.shape[-3:]))  # (B*nW*heads, N, dh)
        # back to the (padded) image, heads merged: one gather
        out = _Permute.apply(out.view(B, -1, dh), g.from_win, g.from_win_inv).view(B, g.Hp, g.Wp, C)
        if g.Hp != H or g.Wp != W:
            out = out[:, :H, :W]
        return self.proj(out)

    def resize_loaded(self, name: str, tensor: torch.Tensor) -> torch.Tensor:
        """A relative position bias table saved for another window, resized bicubically over its (2w-1)^2 offsets
        (as the paper's detection code loads its classification checkpoints)."""
        if name != 'relative_position_bias_table':
            raise ValueError(f'{type(self).__name__}: cannot refit {name!r} to another input size')
        side, heads = 2 * self.window - 1, tensor.shape[-1]
        old = round(tensor.shape[0] ** 0.5)
        grid = tensor.t().reshape(1, heads, old, old).float()
        grid = F.interpolate(grid, size=(side, side), mode='bicubic', align_corners=True)
        return grid.reshape(heads, side * side).t().to(tensor.dtype).contiguous()

    def extra_repr(self):
        return f'dim={self.dim}, num_heads={self.num_heads}, window={self.window}, shift={self.shift}'
