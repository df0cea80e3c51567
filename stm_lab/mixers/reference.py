"""Straightforward implementations of the attention mixers, kept as references for equivalence tests.

Each function takes a mixer module (for its parameters and options) and an input ``(B, H, W, C)`` and computes
the mixer's output the plain way: every intermediate is materialized (unfolded windows, full logits,
``-inf`` masks), softmax is written out, and nothing is cached. The fast ``forward`` methods must agree with these
to rounding, in values and gradients (``tests/test_speed_equivalence.py``). They are slow; besides the tests, only
:func:`reference_mixers` uses them, for tools that count the operations a model executes.
"""
from __future__ import annotations

import contextlib

import torch
import torch.nn.functional as F
from einops import rearrange

NEG_INF = float('-inf')


def attention(q, k, v, bias):
    """softmax(q . k^T + bias) . v with the softmax written out; q is already scaled."""
    logits = q @ k.transpose(-2, -1) + bias
    logits = logits - logits.amax(-1, keepdim=True)
    p = logits.exp()
    return (p / p.sum(-1, keepdim=True)) @ v


def _halo_logits(m, x: torch.Tensor):
    """q (scaled), k, v and the full additive bias of halo attention, blocks as leading dims
    ``(B, nby, nbx, heads, ...)``."""
    B, H, W, C = x.shape
    b, h, win, nh = m.block, m.halo, m.win, m.num_heads
    top = h if m.centric else 0
    ph, pw = (-H) % b, (-W) % b
    q = F.pad(m.q(x), (0, 0, 0, pw, 0, ph))
    kv = F.pad(m.kv(x), (0, 0, top, 2 * h - top + pw, top, 2 * h - top + ph))
    kv = kv.unfold(1, win, b).unfold(2, win, b)  # (B, nby, nbx, 2C, win, win)
    k, v = rearrange(kv, 'B y x (two nh d) ky kx -> two B y x nh (ky kx) d', two=2, nh=nh)
    q = rearrange(q, 'B (y qy) (x qx) (nh d) -> B y x nh qy qx d', qy=b, qx=b, nh=nh)

    # relative logits with the un-scaled q: query (qy, qx), key (ky, kx) -> rows ky - qy + win - 1, kx - qx + win - 1
    rel = torch.arange(win, device=x.device)[None, :] - torch.arange(b, device=x.device)[:, None] + win - 1
    lh = torch.einsum('...yxd,ykd->...yxk', q, m.height_rel[rel])  # (..., qy, qx, ky)
    lw = torch.einsum('...yxd,xkd->...yxk', q, m.width_rel[rel])  # (..., qy, qx, kx)
    bias = (lh[..., :, None] + lw[..., None, :]).flatten(-4, -3).flatten(-2)  # (B, y, x, nh, b*b, win*win)

    def outside(n):  # (n_blocks, win): window position -> image row/col outside [0, n)
        pos = torch.arange(-(-n // b), device=x.device)[:, None] * b + torch.arange(win, device=x.device) - top
        return (pos < 0) | (pos >= n)
    mask = outside(H)[:, None, :, None] | outside(W)[None, :, None, :]  # (nby, nbx, ky, kx)
    bias = bias.masked_fill(mask.flatten(-2)[:, :, None, None, :], NEG_INF)
    return q.flatten(-3, -2) * m.scale, k, v, bias


def halo_attention(m, x: torch.Tensor) -> torch.Tensor:
    """Halo attention (``stm_lab.mixers.halo.HaloAttention``): zero-pad k/v, unfold overlapping windows,
    add the query-related relative logits, mask keys outside the image."""
    B, H, W, C = x.shape
    out = attention(*_halo_logits(m, x))  # (B, y, x, nh, b*b, d)
    out = rearrange(out, 'B y x nh (qy qx) d -> B (y qy) (x qx) (nh d)', qy=m.block)
    return m.proj(out[:, :H, :W])


def halo_attention_probs(m, x: torch.Tensor) -> torch.Tensor:
    """Attention weights of :func:`halo_attention`: ``(B, n_blocks, heads, b*b, win*win)``."""
    q, k, _, bias = _halo_logits(m, x)
    return (q @ k.transpose(-2, -1) + bias).softmax(-1).flatten(1, 2)


def swin_attention(m, x: torch.Tensor) -> torch.Tensor:
    """Shifted-window attention (``stm_lab.mixers.swin.ShiftedWindowAttention``): window and shift per axis (a side
    no larger than the window is one unshifted window), zero-pad, cyclic roll, partition, attention with the
    relative position bias and a materialized region mask, merge, roll back."""
    B, H, W, C = x.shape
    (wh, sh), (ww, sw) = ((n, 0) if n <= m.window else (m.window, m.shift) for n in (H, W))
    Hp, Wp = -(-H // wh) * wh, -(-W // ww) * ww
    nh, dh = m.num_heads, C // m.num_heads
    xp = F.pad(x, (0, 0, 0, Wp - W, 0, Hp - H))
    xs = torch.roll(xp, (-sh, -sw), (1, 2))
    win = rearrange(xs, 'B (y wy) (x wx) C -> B (y x) (wy wx) C', wy=wh, wx=ww)
    q, k, v = rearrange(m.qkv(win), 'B n N (three nh d) -> three B n nh N d', three=3, nh=nh)

    # bias[h, i, j] = table[(yi - yj + W - 1) * (2W - 1) + (xi - xj + W - 1), h], W = the module's window
    ys, xs_ = torch.meshgrid(torch.arange(wh, device=x.device), torch.arange(ww, device=x.device), indexing='ij')
    ys, xs_ = ys.flatten(), xs_.flatten()
    idx = (ys[:, None] - ys[None, :] + m.window - 1) * (2 * m.window - 1) + (xs_[:, None] - xs_[None, :] + m.window - 1)
    bias = m.relative_position_bias_table[idx].permute(2, 0, 1)  # (nh, N, N)

    # region of every position of the rolled map: which side of the wrap (per axis), or padding
    r = (torch.arange(Hp, device=x.device) + sh) % Hp  # original row held by rolled row i
    c = (torch.arange(Wp, device=x.device) + sw) % Wp
    region = ((r < sh)[:, None].long() + 2 * (c < sw)[None, :].long()
              + 4 * ((r >= H)[:, None] | (c >= W)[None, :]).long())
    region = rearrange(region, '(y wy) (x wx) -> (y x) (wy wx)', wy=wh, wx=ww)  # (nW, N)
    mask = region[:, :, None] != region[:, None, :]  # (nW, N, N): True = not allowed
    bias = bias[None].masked_fill(mask[:, None], NEG_INF)  # (nW, nh, N, N)

    out = attention(q * dh ** -0.5, k, v, bias)  # (B, nW, nh, N, d)
    out = rearrange(out, 'B (y x) nh (wy wx) d -> B (y wy) (x wx) (nh d)', y=Hp // wh, wy=wh)
    out = torch.roll(m.proj(out), (sh, sw), (1, 2))
    return out[:, :H, :W]


def sr_attention(m, x: torch.Tensor) -> torch.Tensor:
    """Spatial-reduction attention (``stm_lab.mixers.sr_attn.SpatialReductionAttention``): keys and values from
    the strided-conv-reduced, normalized map (zero-padded to a multiple of the ratio), global attention."""
    B, H, W, C = x.shape
    r, nh, dh = m.sr_ratio, m.num_heads, C // m.num_heads
    if r > 1:
        xp = F.pad(x, (0, 0, 0, (-W) % r, 0, (-H) % r))
        red = F.conv2d(xp.permute(0, 3, 1, 2), m.sr.weight, m.sr.bias, stride=r)
        kv_in = m.norm(red.flatten(2).transpose(1, 2))
    else:
        kv_in = x.reshape(B, H * W, C)
    q = rearrange(m.q(x), 'B H W (nh d) -> B nh (H W) d', nh=nh)
    k, v = rearrange(m.kv(kv_in), 'B M (two nh d) -> two B nh M d', two=2, nh=nh)
    out = attention(q * dh ** -0.5, k, v, torch.zeros(()))
    return m.proj(rearrange(out, 'B nh (H W) d -> B H W (nh d)', H=H))


@contextlib.contextmanager
def reference_mixers():
    """Within this context, the attention mixers run their reference implementation above.

    For tools that count what a forward pass executes (``torch.utils.flop_counter``): the fast paths skip
    work whose result is known (e.g. halo windows that lie entirely outside a small map) and fuse operators,
    so their executed MACs describe the implementation, not the model. The reference paths compute every
    window in full, like the paper's code."""
    from .halo import HaloAttention
    from .sr_attn import SpatialReductionAttention
    from .swin import ShiftedWindowAttention
    originals = {cls: cls.forward for cls in (HaloAttention, ShiftedWindowAttention, SpatialReductionAttention)}
    HaloAttention.forward = halo_attention
    ShiftedWindowAttention.forward = swin_attention
    SpatialReductionAttention.forward = sr_attention
    try:
        yield
    finally:
        for cls, forward in originals.items():
            cls.forward = forward
