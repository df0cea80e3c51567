"""Tests of the halo attention mixer against a per-query reference and of its window geometry."""
import itertools

import pytest
import torch

from stm_lab.mixers import MIXERS, create_mixer
from stm_lab.mixers.halo import HaloAttention


def window_origin(m, i, j):
    """Image row/col of the top-left key of the window that the query at (i, j) attends to."""
    top = m.halo if m.centric else 0
    return (i // m.block) * m.block - top, (j // m.block) * m.block - top


def reference(m, x):
    """Straightforward halo attention: for every query, gather the keys of its window that lie inside the
    image, add the relative logits, softmax, average the values. Returns (output, {(i, j): probs over window})."""
    B, H, W, C = x.shape
    b, win, nh, dh = m.block, m.win, m.num_heads, m.head_dim
    q = (x @ m.q.weight.T).reshape(B, H, W, nh, dh)
    kv = x @ m.kv.weight.T
    k = kv[..., :C].reshape(B, H, W, nh, dh)
    v = kv[..., C:].reshape(B, H, W, nh, dh)
    out = torch.zeros(B, H, W, nh, dh, dtype=x.dtype)
    probs = {}
    for i, j in itertools.product(range(H), range(W)):
        r0, c0 = window_origin(m, i, j)
        qy, qx = i % b, j % b
        keys = [(ky, kx) for ky in range(win) for kx in range(win)
                if 0 <= r0 + ky < H and 0 <= c0 + kx < W]
        rows = torch.tensor([r0 + ky for ky, _ in keys])
        cols = torch.tensor([c0 + kx for _, kx in keys])
        rel_h = m.height_rel[torch.tensor([ky - qy + win - 1 for ky, _ in keys])]  # (n, dh)
        rel_w = m.width_rel[torch.tensor([kx - qx + win - 1 for _, kx in keys])]
        qv = q[:, i, j]                                   # (B, nh, dh)
        kk, vv = k[:, rows, cols], v[:, rows, cols]       # (B, n, nh, dh)
        logits = (torch.einsum('bhd,bnhd->bhn', qv * dh ** -0.5, kk)
                  + torch.einsum('bhd,nd->bhn', qv, rel_h + rel_w))
        p = torch.exp(logits - logits.amax(-1, keepdim=True))
        p = p / p.sum(-1, keepdim=True)
        out[:, i, j] = torch.einsum('bhn,bnhd->bhd', p, vv)
        full = torch.zeros(B, nh, win * win, dtype=x.dtype)
        full[..., torch.tensor([ky * win + kx for ky, kx in keys])] = p
        probs[i, j] = full
    return m.proj(out.reshape(B, H, W, C)), probs


def make(dim=4, heads=2, dtype=torch.float64, **kw):
    torch.manual_seed(0)
    return HaloAttention(dim, heads, **kw).to(dtype)


SIZES = [(1, 1), (3, 5), (8, 9), (9, 9)]


@pytest.mark.parametrize('H,W', SIZES)
@pytest.mark.parametrize('block,halo', [(3, 0), (3, 1), (3, 2), (4, 1), (4, 2)])
@pytest.mark.parametrize('centric', [True, False])
@pytest.mark.parametrize('heads', [1, 2])
def test_matches_reference(H, W, block, halo, centric, heads):
    m = make(heads=heads, block=block, halo=halo, centric=centric)
    x = torch.randn(2, H, W, 4, dtype=torch.float64)
    expected, ref_probs = reference(m, x)
    with torch.no_grad():
        got = m(x)
        probs = m.attention_probs(x)  # (B, n_blocks, heads, b*b, win*win)
    assert got.shape == x.shape
    torch.testing.assert_close(got, expected, rtol=0, atol=1e-10)
    nbx = -(-W // block)
    for (i, j), p in ref_probs.items():
        blk = (i // block) * nbx + j // block
        torch.testing.assert_close(probs[:, blk, :, (i % block) * block + j % block], p, rtol=0, atol=1e-10)


@pytest.mark.parametrize('centric', [True, False])
def test_keys_outside_image_get_exactly_zero_attention(centric):
    # 7 x 5 with block 3: both halo padding and padding to multiples of the block
    H, W, block, halo = 7, 5, 3, 2
    m = make(block=block, halo=halo, centric=centric)
    x = torch.randn(1, H, W, 4, dtype=torch.float64) * 10  # large logits: masking must not just be "small"
    with torch.no_grad():
        probs = m.attention_probs(x)[0]  # (n_blocks, heads, b*b, win*win)
    win, nbx = m.win, -(-W // block)
    for blk in range(probs.shape[0]):
        r0, c0 = window_origin(m, (blk // nbx) * block, (blk % nbx) * block)
        for ky, kx in itertools.product(range(win), range(win)):
            p = probs[blk, :, :, ky * win + kx]
            if 0 <= r0 + ky < H and 0 <= c0 + kx < W:
                continue
            assert torch.all(p == 0), (blk, ky, kx)
    # and every row (padded queries included) is a proper distribution: never all masked, no NaN
    torch.testing.assert_close(probs.sum(-1), torch.ones_like(probs.sum(-1)))


def dependence(m, x, i, j):
    """Bool (H, W): the input pixels that the output at (i, j) depends on (through autograd)."""
    x = x.clone().requires_grad_(True)
    m(x)[0, i, j].sum().backward()
    return x.grad[0].abs().sum(-1) > 0


def expected_support(H, W, rows, cols):
    s = torch.zeros(H, W, dtype=torch.bool)
    s[max(rows[0], 0):max(rows[1], 0), max(cols[0], 0):max(cols[1], 0)] = True
    return s


@pytest.mark.parametrize('i,j', [(0, 0), (4, 5), (7, 2), (8, 8)])
def test_shift_variant_window_is_at_block_top_left(i, j):
    H = W = 11
    block, halo = 3, 2
    m = make(block=block, halo=halo, centric=False)
    x = torch.randn(1, H, W, 4, dtype=torch.float64)
    by, bx = i // block, j // block
    rows = (by * block, by * block + block + 2 * halo)
    cols = (bx * block, bx * block + block + 2 * halo)
    assert torch.equal(dependence(m, x, i, j), expected_support(H, W, rows, cols))


@pytest.mark.parametrize('i,j', [(0, 0), (4, 5), (10, 10)])
def test_centric_window_is_block_plus_halo(i, j):
    H = W = 11
    block, halo = 3, 2
    m = make(block=block, halo=halo, centric=True)
    x = torch.randn(1, H, W, 4, dtype=torch.float64)
    by, bx = i // block, j // block
    rows = (by * block - halo, by * block + block + halo)
    cols = (bx * block - halo, bx * block + block + halo)
    assert torch.equal(dependence(m, x, i, j), expected_support(H, W, rows, cols))


@pytest.mark.parametrize('block_index,halo_used', [(0, 0), (1, 2), (2, 0), (3, 2)])
def test_switch_variant_alternates_halo(block_index, halo_used):
    H = W = 9
    block = 3
    m = create_mixer('halo_attn', 4, 2, block=block, halo=2, switch=True, block_index=block_index).double()
    assert m.halo == halo_used and m.win == block + 2 * halo_used
    assert 'switch=True' in repr(m)
    x = torch.randn(1, H, W, 4, dtype=torch.float64)
    i, j = 4, 4  # centre block: rows/cols 3..5
    rows = cols = (3 - halo_used, 6 + halo_used)
    assert torch.equal(dependence(m, x, i, j), expected_support(H, W, rows, cols))


def test_single_pixel_and_registry():
    assert MIXERS['halo_attn'] is HaloAttention
    m = create_mixer('halo_attn', 8, 2)  # default block 7, halo 3
    x = torch.randn(3, 1, 1, 8)
    y = m(x)
    assert y.shape == x.shape and torch.isfinite(y).all()
    # a lone pixel attends only to itself: output = proj(v)
    v = (x @ m.kv.weight.T)[..., 8:]
    torch.testing.assert_close(y, m.proj(v))


def test_dim_not_divisible_by_heads():
    with pytest.raises(ValueError, match='divisible'):
        HaloAttention(10, 3)


def test_bad_block_or_halo():
    with pytest.raises(ValueError, match='block'):
        HaloAttention(8, 2, block=0)
    with pytest.raises(ValueError, match='halo'):
        HaloAttention(8, 2, halo=-1)


def test_parameters_and_mask_cache():
    C, heads = 96, 3
    m = HaloAttention(C, heads)
    dh = C // heads
    # q, kv, proj (+ bias) and the two (2 * 13 - 1, dh) relative tables
    assert sum(p.numel() for p in m.parameters()) == 4 * C * C + C + 2 * 25 * dh
    assert 'rel_index' not in m.state_dict()
    x = torch.randn(1, 10, 12, C)
    m(x)
    m(x)
    assert len(m._mask_cache) == 1
    m(torch.randn(1, 14, 14, C))  # multiple of block, halo padding still masked
    assert len(m._mask_cache) == 2 and m._mask_cache[(14, 14, 'cpu', True, False)] is not None
    assert HaloAttention(8, 2, block=4, halo=0)._key_mask(8, 8, 'cpu') is None  # nothing to mask


def test_gradients_reach_all_parameters():
    m = make(dim=8, heads=2, dtype=torch.float32, block=3, halo=1)
    m(torch.randn(2, 5, 4, 8)).square().sum().backward()
    for name, p in m.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, name


@pytest.mark.parametrize('centric', [True, False])
@pytest.mark.parametrize('block,halo', [(7, 3), (4, 1), (4, 0), (3, 2), (8, 0)])
def test_key_mask_decision_needs_no_tensor(block, halo, centric):
    """Whether any key falls outside the image is decided from the geometry (Python integers, so that torch.export
    can trace the mixer): it agrees with the mask tensors, found by brute force over every kept window position."""
    m = HaloAttention(8, 2, block=block, halo=halo, centric=centric)
    for H in range(1, 20):
        for W in (1, 5, block, 2 * block, 2 * block + 1):
            for trim in (True, False):
                outside = False
                for n in (H, W):
                    a = m._axis(n, trim)
                    outside |= any(not 0 <= b * block + j - m._top_pad < n
                                   for b in range(a.n_blocks) for j in range(a.first, a.first + a.k))
                mask = m._key_mask(H, W, 'cpu', trim)
                assert (mask is not None) == outside, (H, W, trim)
                if mask is not None:
                    assert bool(mask[0].any() or mask[1].any())


def test_halo_model_exports_to_onnx():
    """torch.export traces the halo mixer (no data-dependent branch) and ONNX Runtime gives PyTorch's outputs."""
    pytest.importorskip('onnxscript')
    pytest.importorskip('onnxruntime')
    import timm
    from stm_lab.export import OnnxClassifier, export_onnx, torch_logits
    torch.manual_seed(0)
    model = timm.create_model('u_halonet_test', num_classes=10, img_size=32).eval()
    x = torch.rand(3, 3, 32, 32)
    got = OnnxClassifier(export_onnx(model, 32, weights='fp32').SerializeToString())(x)
    assert abs(got - torch_logits(model, x, None, None)).max() < 1e-4
    model(torch.randn(1, 3, 32, 32))  # the mask cache still works after a trace (no traced tensors cached)
