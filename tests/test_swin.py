"""Shifted-window attention against a straightforward reference, and its masks."""
import itertools

import pytest
import torch

from stm_lab.mixers import create_mixer


def make(window, block_index=1, dim=8, heads=2, shift=None):
    torch.manual_seed(0)
    m = create_mixer('sw_attn', dim, heads, window=window, shift=shift, block_index=block_index).double()
    with torch.no_grad():  # a bias table large enough to matter
        m.relative_position_bias_table.normal_(0, 1.0)
    return m


def reference(m, x):
    """Per-query loop. Regions follow the original Swin recipe (three slices per axis on the padded map:
    [0, Hp-w), [Hp-w, Hp-s), [Hp-s, Hp)), padded positions are separate; a query attends to the keys of its
    shifted window that share its region and are not padding."""
    B, H, W, C = x.shape
    w, s = m.window, m.shift
    if min(H, W) <= w:
        w, s = min(H, W, w), 0
    Hp, Wp = -(-H // w) * w, -(-W // w) * w
    nh, dh = m.num_heads, C // m.num_heads

    def region(p, size):
        return 0 if p < size - w else (1 if p < size - s else 2)

    xp = torch.zeros(B, Hp, Wp, C, dtype=x.dtype)
    xp[:, :H, :W] = x
    xs = torch.roll(xp, (-s, -s), (1, 2)) if s else xp
    # which original position each shifted position holds
    orig = lambda i, j: ((i + s) % Hp, (j + s) % Wp)
    qkv = m.qkv(xs)
    q, k, v = qkv[..., :C], qkv[..., C:2 * C], qkv[..., 2 * C:]
    out = torch.zeros(B, Hp, Wp, C, dtype=x.dtype)
    table = m.relative_position_bias_table
    for i, j in itertools.product(range(Hp), range(Wp)):
        wi, wj = i // w * w, j // w * w
        oi, oj = orig(i, j)
        keys = []
        for a, b in itertools.product(range(wi, wi + w), range(wj, wj + w)):
            oa, ob = orig(a, b)
            same_region = (region(a, Hp), region(b, Wp)) == (region(i, Hp), region(j, Wp))
            if (oi < H and oj < W) and not (oa < H and ob < W):
                continue  # real queries never see padding
            if same_region or not s:
                keys.append((a, b))
        for h in range(nh):
            sl = slice(h * dh, (h + 1) * dh)
            logits = []
            for a, b in keys:
                idx = (i - a + m.window - 1) * (2 * m.window - 1) + (j - b + m.window - 1)
                logits.append((q[:, i, j, sl] * k[:, a, b, sl]).sum(-1) * dh ** -0.5 + table[idx, h])
            p = torch.softmax(torch.stack(logits, -1), -1)
            out[:, i, j, sl] = sum(p[:, n, None] * v[:, a, b, sl] for n, (a, b) in enumerate(keys))
    out = m.proj(out)
    if s:
        out = torch.roll(out, (s, s), (1, 2))
    return out[:, :H, :W]


@pytest.mark.parametrize('H,W,window,block_index', [
    (8, 8, 4, 1), (8, 8, 4, 0), (7, 10, 4, 1), (9, 6, 3, 1), (3, 3, 4, 1), (5, 12, 4, 1), (2, 9, 4, 1),
])
def test_matches_the_reference(H, W, window, block_index):
    m = make(window, block_index)
    x = torch.randn(2, H, W, 8, dtype=torch.float64)
    with torch.no_grad():
        torch.testing.assert_close(m(x), reference(m, x), rtol=0, atol=1e-10)


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
