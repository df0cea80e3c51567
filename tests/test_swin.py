"""Shifted-window attention against a straightforward reference and against timm's Swin block, its masks, the
windows every output depends on, and the committed micro model's logits."""
import itertools
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from stm_lab.mixers import create_mixer


def make(window, block_index=1, dim=8, heads=2, shift=None):
    torch.manual_seed(0)
    m = create_mixer('sw_attn', dim, heads, window=window, shift=shift, block_index=block_index).double()
    with torch.no_grad():  # a bias table large enough to matter
        m.relative_position_bias_table.normal_(0, 1.0)
    return m


def window_and_shift(n, m):
    """Per axis of size n: one unshifted window if the side fits in the module's window, else its window and shift."""
    return (n, 0) if n <= m.window else (m.window, m.shift)


def reference(m, x):
    """Per-query loop. Window and shift per axis (:func:`window_and_shift`). Regions follow the original Swin
    recipe (three slices per axis on the padded map: [0, Hp-w), [Hp-w, Hp-s), [Hp-s, Hp)), padded positions are
    separate; a query attends to the keys of its shifted window that share its region and are not padding."""
    B, H, W, C = x.shape
    (wy, sy), (wx, sx) = window_and_shift(H, m), window_and_shift(W, m)
    Hp, Wp = -(-H // wy) * wy, -(-W // wx) * wx
    nh, dh = m.num_heads, C // m.num_heads

    def region(p, size, w, s):
        return 0 if p < size - w else (1 if p < size - s else 2)

    xp = torch.zeros(B, Hp, Wp, C, dtype=x.dtype)
    xp[:, :H, :W] = x
    xs = torch.roll(xp, (-sy, -sx), (1, 2))
    # which original position each shifted position holds
    orig = lambda i, j: ((i + sy) % Hp, (j + sx) % Wp)  # noqa: E731
    qkv = m.qkv(xs)
    q, k, v = qkv[..., :C], qkv[..., C:2 * C], qkv[..., 2 * C:]
    out = torch.zeros(B, Hp, Wp, C, dtype=x.dtype)
    table = m.relative_position_bias_table
    for i, j in itertools.product(range(Hp), range(Wp)):
        wi, wj = i // wy * wy, j // wx * wx
        oi, oj = orig(i, j)
        keys = []
        for a, b in itertools.product(range(wi, wi + wy), range(wj, wj + wx)):
            oa, ob = orig(a, b)
            if (oi < H and oj < W) and not (oa < H and ob < W):
                continue  # real queries never see padding
            if (region(a, Hp, wy, sy), region(b, Wp, wx, sx)) == (region(i, Hp, wy, sy), region(j, Wp, wx, sx)):
                keys.append((a, b))
        for h in range(nh):
            sl = slice(h * dh, (h + 1) * dh)
            logits = []
            for a, b in keys:
                idx = (i - a + m.window - 1) * (2 * m.window - 1) + (j - b + m.window - 1)
                logits.append((q[:, i, j, sl] * k[:, a, b, sl]).sum(-1) * dh ** -0.5 + table[idx, h])
            p = torch.softmax(torch.stack(logits, -1), -1)
            out[:, i, j, sl] = sum(p[:, n, None] * v[:, a, b, sl] for n, (a, b) in enumerate(keys))
    out = torch.roll(m.proj(out), (sy, sx), (1, 2))
    return out[:, :H, :W]


@pytest.mark.parametrize('H,W,window,block_index', [
    (8, 8, 4, 1), (8, 8, 4, 0), (7, 10, 4, 1), (9, 6, 3, 1), (3, 3, 4, 1), (5, 12, 4, 1), (2, 9, 4, 1),
    (7, 5, 7, 1), (10, 7, 7, 1), (4, 9, 4, 1), (3, 2, 4, 1),  # a side no larger than the window
])
def test_matches_the_reference(H, W, window, block_index):
    m = make(window, block_index)
    x = torch.randn(2, H, W, 8, dtype=torch.float64)
    with torch.no_grad():
        torch.testing.assert_close(m(x), reference(m, x), rtol=0, atol=1e-10)


@pytest.mark.parametrize('H,W,window,block_index,expected', [
    (7, 5, 7, 1, (7, 5, 0, 0)),
    (10, 7, 7, 1, (7, 7, 3, 0)),
    (3, 2, 4, 1, (3, 2, 0, 0)),
    (2, 9, 4, 1, (2, 4, 0, 2)),
    (8, 8, 4, 1, (4, 4, 2, 2)),   # square and larger: as before
    (4, 4, 4, 1, (4, 4, 0, 0)),   # square, one window: as before
    (9, 13, 7, 0, (7, 7, 0, 0)),
])
def test_window_and_shift_are_chosen_per_axis(H, W, window, block_index, expected):
    g = make(window, block_index)._geometry(H, W, 'cpu')
    assert (g.wh, g.ww, g.sh, g.sw) == expected


def test_the_issue_example_sees_the_whole_map():
    """7x5 map, window 7, shifted block: one 7x5 window, so output (6, 0) depends on every row (the old rule,
    5x5 windows of min(H, W) without shift, gave rows 5 and 6 only)."""
    m = make(7, block_index=1)
    x = torch.randn(1, 7, 5, 8, dtype=torch.float64, requires_grad=True)
    g, = torch.autograd.grad(m(x)[0, 6, 0].sum(), x)
    assert (g[0].abs().sum(-1) > 0).all()


def _groups(n, window, shift):
    """A group id per token of an axis of size n (tokens attend within their group), written as cut points rather
    than roll/pad/mask: one group if the side fits in a window, else groups cut at shift + k * window (the first
    ``shift`` tokens, which the roll wraps into the last window, are masked into a group of their own; the last
    group ends at the map's edge, padding is in none)."""
    if n <= window:
        return torch.zeros(n, dtype=torch.long)
    return torch.div(torch.arange(n) - shift, window, rounding_mode='floor')


SUPPORT_CASES = ([(3, H, W) for H, W in itertools.product(range(1, 9), repeat=2)]
                 + [(4, H, W) for H, W in itertools.product(range(1, 11), repeat=2)]
                 + [(7, H, W) for H, W in [(7, 5), (5, 7), (10, 7), (7, 10), (9, 7), (14, 5), (3, 2), (15, 8)]])


@pytest.mark.parametrize('block_index', [0, 1])
def test_every_output_depends_on_exactly_its_whole_window(block_index):
    """For every map size up to 8x8 with window 3 and up to 10x10 with window 4 (and a few with window 7), shifted
    and unshifted blocks: output (i, j) depends on input (a, b) if and only if they share a group on both axes
    (:func:`_groups`); so an output sees every token of its window (the whole side, where the side fits in one) and
    nothing else. Dependence is read from the Jacobian: masked pairs get exactly zero weight, all others do not."""
    for window, H, W in SUPPORT_CASES:
        m = make(window, block_index)
        x = torch.randn(1, H, W, 8, dtype=torch.float64)
        jac = torch.autograd.functional.jacobian(m, x, vectorize=True)  # (1, H, W, 8, 1, H, W, 8)
        depends = jac.abs().sum((0, 3, 4, 7)) > 0  # (H, W, H, W)
        gy, gx = _groups(H, window, m.shift), _groups(W, window, m.shift)
        same = ((gy[:, None, None, None] == gy[None, None, :, None])
                & (gx[None, :, None, None] == gx[None, None, None, :]))
        assert torch.equal(depends, same), (window, H, W, block_index)


# timm's SwinTransformerBlock rolls before padding and leaves padding unmasked (we pad first and mask it, see the
# module docstring), so the comparison uses maps whose sides need no padding: each side fits in one window or is a
# multiple of the window
TIMM_CASES = [
    (7, 5, 7, 1), (5, 7, 7, 0), (3, 2, 4, 1), (2, 8, 4, 1), (14, 5, 7, 1), (6, 21, 7, 1), (1, 8, 4, 1),
    (8, 3, 4, 0), (6, 6, 3, 1), (4, 4, 4, 1),
]


@pytest.mark.parametrize('H,W,window,block_index', TIMM_CASES)
def test_matches_timm_swin_block_attention(H, W, window, block_index):
    """Our mixer against the attention of timm's ``SwinTransformerBlock`` (built for the map size, so timm picks
    window and shift per axis itself) with the same weights, float64: outputs, input gradients and parameter
    gradients equal to rounding. timm's bias table for an (h, w) window has (2h-1)(2w-1) rows; it gets the rows of
    ours for the same offsets (the central part of our table), and ours must get no gradient outside that part."""
    from timm.models.swin_transformer import SwinTransformerBlock
    m = make(window, block_index)
    nh, n_rel = m.num_heads, 2 * window - 1
    wy, wx = min(H, window), min(W, window)
    blk = SwinTransformerBlock(8, (H, W), num_heads=nh, window_size=window, shift_size=m.shift).double()
    assert blk.window_size == (wy, wx)
    assert blk.shift_size == tuple(0 if n <= window else m.shift for n in (H, W))
    # the block is x + attn(norm1(x)) + mlp(norm2(.)): no norm and a zero MLP leave x + attn(x)
    blk.norm1 = nn.Identity()
    central = (slice(window - wy, window + wy - 1), slice(window - wx, window + wx - 1))
    with torch.no_grad():
        for p in blk.mlp.fc2.parameters():
            p.zero_()
        for ours, theirs in [(m.qkv, blk.attn.qkv), (m.proj, blk.attn.proj)]:
            theirs.weight.copy_(ours.weight)
            theirs.bias.copy_(ours.bias)
        blk.attn.relative_position_bias_table.copy_(
            m.relative_position_bias_table.view(n_rel, n_rel, nh)[central].reshape(-1, nh))

    x = torch.randn(2, H, W, 8, dtype=torch.float64)
    up = torch.randn(2, H, W, 8, dtype=torch.float64)
    x1, x2 = x.clone().requires_grad_(True), x.clone().requires_grad_(True)
    ours = m(x1)
    theirs = blk(x2) - x2
    (ours * up).sum().backward()
    (theirs * up).sum().backward()
    tol = dict(rtol=0, atol=1e-12)
    torch.testing.assert_close(ours, theirs, **tol)
    torch.testing.assert_close(x1.grad, x2.grad, **tol)
    for a, b in [(m.qkv, blk.attn.qkv), (m.proj, blk.attn.proj)]:
        torch.testing.assert_close(a.weight.grad, b.weight.grad, **tol)
        torch.testing.assert_close(a.bias.grad, b.bias.grad, **tol)
    table_grad = m.relative_position_bias_table.grad.view(n_rel, n_rel, nh)
    torch.testing.assert_close(table_grad[central].reshape(-1, nh), blk.attn.relative_position_bias_table.grad, **tol)
    table_grad[central] = 0
    assert not table_grad.any()


def test_no_token_attends_across_the_cyclic_wrap():
    m = make(4, block_index=1)  # shift 2
    x = torch.randn(1, 8, 8, 8, dtype=torch.float64, requires_grad=True)
    m(x)[0, 0, 0].sum().backward()  # token (0, 0) shares a shifted window with rows/cols 6, 7
    g = x.grad[0].abs().sum(-1)
    assert g[0, 1] > 0 and g[1, 1] > 0  # its own (wrapped) region
    for pos in [(7, 7), (0, 7), (7, 0), (6, 0), (0, 6), (6, 6)]:
        assert g[pos] == 0, f'token (0,0) depends on {pos} across the wrap'
    assert torch.count_nonzero(g) == 4  # exactly rows {0,1} x cols {0,1}


def test_unshifted_block_stays_in_its_window():
    m = make(4, block_index=0)
    x = torch.randn(1, 8, 8, 8, dtype=torch.float64, requires_grad=True)
    m(x)[0, 5, 6].sum().backward()
    nz = torch.nonzero(x.grad[0].abs().sum(-1)).tolist()
    assert {tuple(p) for p in nz} == {(i, j) for i in range(4, 8) for j in range(4, 8)}


def test_masks_are_cached_per_size():
    m = make(4)
    x = torch.randn(1, 8, 8, 8, dtype=torch.float64)
    m(x)
    cached = dict(m._masks)
    m(x)
    assert all(m._masks[k] is v for k, v in cached.items())
    m(torch.randn(1, 9, 9, 8, dtype=torch.float64))
    assert len(m._masks) > len(cached)


def test_shift_alternates_and_small_maps_drop_it():
    assert [make(7, i).shift for i in range(4)] == [0, 3, 0, 3]
    assert make(7, 1, shift=0).shift == 0
    with pytest.raises(ValueError, match='shift'):
        make(4, 1, shift=4)


# --- the committed micro model: square inputs and maps larger than the window are unchanged by the per-axis rule

LOGITS = Path(__file__).parent / 'data' / 'u_swin_micro_logits.npz'
WEIGHTS = Path(__file__).parents[1] / 'results' / 'cpu' / 'u_swin_micro.safetensors'


def _committed_model_inputs():
    """The committed u_swin_micro and three inputs: the first 8 fixture val photos through its eval pipeline (64x64,
    the size it was trained and evaluated at: square stage maps 16 to 2), and the first 2 of them resized to
    224x160 (stage maps 56x40 to 7x5, larger than its window of 4 on both axes) and to 72x56 (stage maps 18x14,
    9x7, 5x4, 3x2: the last two have a side that fits in one window)."""
    from stm_lab.data import BatchFinish, DataConfig, image_transform, load_dataset
    from stm_lab.training.checkpoint import load_model
    model, record = load_model(WEIGHTS)
    rec = record['data']
    cfg = DataConfig(dataset='fixture', img_size=rec['img_size'], crop_pct=rec['crop_pct'],
                     interpolation=rec['interpolation'], mean=tuple(rec['mean']), std=tuple(rec['std']))
    ds = load_dataset(cfg, 'val', image_transform(cfg, False))
    x64 = BatchFinish(cfg, False)(torch.stack([ds[i][0] for i in range(8)]))
    resized = {f'{h}x{w}': F.interpolate(x64[:2], size=(h, w), mode='bilinear', align_corners=False)
               for h, w in [(224, 160), (72, 56)]}
    return model, {'64x64': x64, **resized}


def _write_logits_fixture():
    model, inputs = _committed_model_inputs()
    with torch.no_grad():
        np.savez(LOGITS, **{k: model(x).numpy() for k, x in inputs.items()})


@pytest.mark.skipif(not WEIGHTS.exists(), reason=f'{WEIGHTS} not present')
def test_committed_micro_model_logits_change_only_where_a_side_fits_in_a_window():
    """The logits in ``tests/data/u_swin_micro_logits.npz`` were computed by the code before the per-axis rule
    (commit 3e4696f's ``stm_lab``, float32, one thread), written by
    ``python -c "import runpy; runpy.run_path('tests/test_swin.py')['_write_logits_fixture']()"`` from the
    repository root. At 64x64 (the committed results) and 224x160 every stage map is square or larger than the
    window on both axes, so the new code must reproduce them; at 72x56 two stages are narrower than a window on
    one axis, so it must not."""
    torch.manual_seed(0)
    expected = np.load(LOGITS)
    model, inputs = _committed_model_inputs()
    with torch.no_grad():
        logits = {k: model(x) for k, x in inputs.items()}
    for k in ('64x64', '224x160'):
        torch.testing.assert_close(logits[k], torch.from_numpy(expected[k]), rtol=0, atol=1e-5)
    assert (logits['72x56'] - torch.from_numpy(expected['72x56'])).abs().max() > 1e-2
