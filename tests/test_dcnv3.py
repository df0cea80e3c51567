"""DCNv3: the pure-PyTorch operator against a direct loop, known answers, errors; the mixer built on it."""
import math

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from stm_lab.ops import dcnv3_core
from stm_lab.mixers import MIXERS, create_mixer
from stm_lab.mixers.dcnv3 import DCNv3Mixer


def _pair(v):
    return (v, v) if isinstance(v, int) else tuple(v)


def _bilinear(img, y, x):
    """Sample ``img`` (H, W, C) at pixel position (y, x), pixel centres at integers, zeros outside the map."""
    h, w, c = img.shape
    y0, x0 = math.floor(y), math.floor(x)
    out = torch.zeros(c, dtype=img.dtype)
    for yy, wy in ((y0, 1 - (y - y0)), (y0 + 1, y - y0)):
        for xx, wx in ((x0, 1 - (x - x0)), (x0 + 1, x - x0)):
            if 0 <= yy < h and 0 <= xx < w:
                out += wy * wx * img[yy, xx]
    return out


def direct_dcnv3(x, offset, mask, kernel_size, stride, pad, dilation, group, offset_scale):
    """Straightforward loop version of DCNv3 (InternImage's CUDA kernel semantics), float64."""
    (kh, kw), (sh, sw), (ph, pw), (dh, dw) = map(_pair, (kernel_size, stride, pad, dilation))
    n, h, w, c = x.shape
    xp = torch.zeros(n, h + 2 * ph, w + 2 * pw, c, dtype=torch.float64)
    xp[:, ph:ph + h, pw:pw + w] = x
    h_out = (h + 2 * ph - (dh * (kh - 1) + 1)) // sh + 1
    w_out = (w + 2 * pw - (dw * (kw - 1) + 1)) // sw + 1
    cg, k = c // group, kh * kw
    ch, cw = dh * (kh - 1) // 2, dw * (kw - 1) // 2
    off, m = offset.tolist(), mask.tolist()
    out = torch.zeros(n, h_out, w_out, c, dtype=torch.float64)
    for b in range(n):
        for i in range(h_out):
            for j in range(w_out):
                for g in range(group):
                    chans = slice(g * cg, (g + 1) * cg)
                    for a in range(kw):  # kernel column (x)
                        for r in range(kh):  # kernel row (y)
                            p = g * k + a * kh + r
                            dx, dy = off[b][i][j][2 * p], off[b][i][j][2 * p + 1]
                            px = cw + j * sw + (a * dw - cw) * offset_scale + dx * offset_scale
                            py = ch + i * sh + (r * dh - ch) * offset_scale + dy * offset_scale
                            out[b, i, j, chans] += m[b][i][j][p] * _bilinear(xp[b, :, :, chans], py, px)
    return out


def _random_inputs(n, h, w, c, group, kernel_size, stride, pad, dilation, offset_range, seed=0):
    (kh, kw), (sh, sw), (ph, pw), (dh, dw) = map(_pair, (kernel_size, stride, pad, dilation))
    h_out = (h + 2 * ph - (dh * (kh - 1) + 1)) // sh + 1
    w_out = (w + 2 * pw - (dw * (kw - 1) + 1)) // sw + 1
    gen = torch.Generator().manual_seed(seed)
    k = kh * kw
    x = torch.randn(n, h, w, c, generator=gen, dtype=torch.float64)
    offset = (2 * torch.rand(n, h_out, w_out, group * k * 2, generator=gen, dtype=torch.float64) - 1) * offset_range
    mask = torch.rand(n, h_out, w_out, group * k, generator=gen, dtype=torch.float64)
    return x, offset, mask


# (n, h, w, c, group, kernel, stride, pad, dilation, offset_scale, offset_range)
CASES = [
    (1, 4, 4, 2, 1, 3, 1, 1, 1, 1.0, 0.0),  # plain 3x3, zero offsets
    (2, 5, 6, 4, 2, 3, 1, 1, 1, 1.0, 3.0),  # groups, odd/even sizes, offsets leaving the image
    (1, 7, 6, 3, 3, 3, 2, 1, 1, 1.0, 2.5),  # stride 2
    (1, 6, 7, 4, 2, 3, 1, 2, 2, 1.0, 2.0),  # dilation 2
    (2, 5, 5, 4, 4, 3, 2, 2, 2, 0.5, 4.0),  # stride and dilation, offset_scale 0.5
    (1, 5, 4, 2, 1, 5, 1, 2, 1, 2.0, 1.5),  # 5x5, offset_scale 2 (scales the grid too)
    (1, 6, 5, 2, 2, (3, 2), (1, 2), (1, 0), (1, 3), 1.0, 1.5),  # rectangular kernel, even width, pairs
    (1, 4, 6, 2, 1, 2, 1, 0, 3, 0.5, 1.0),  # even kernel, dilation 3: centre (3 * 1) // 2 = 1 (seen when scale != 1)
    (1, 1, 1, 2, 1, 3, 1, 1, 1, 1.0, 1.0),  # 1x1 map
]


@pytest.mark.parametrize('case', CASES)
def test_matches_direct_loop(case):
    n, h, w, c, group, kernel, stride, pad, dil, scale, offset_range = case
    x, offset, mask = _random_inputs(n, h, w, c, group, kernel, stride, pad, dil, offset_range)
    got = dcnv3_core(x, offset, mask, kernel, stride, pad, dil, group, scale)
    want = direct_dcnv3(x, offset, mask, kernel, stride, pad, dil, group, scale)
    assert got.dtype == torch.float64 and got.shape == want.shape
    torch.testing.assert_close(got, want, rtol=0, atol=1e-10)


def test_float32_close_to_float64():
    x, offset, mask = _random_inputs(2, 6, 5, 4, 2, 3, 1, 1, 1, 2.0)
    got = dcnv3_core(x.float(), offset.float(), mask.float(), 3, 1, 1, 1, 2, 1.0)
    assert got.dtype == torch.float32
    torch.testing.assert_close(got.double(), dcnv3_core(x, offset, mask, 3, 1, 1, 1, 2, 1.0), rtol=0, atol=1e-5)


@pytest.mark.parametrize('stride,group', [(1, 1), (1, 2), (2, 2)])
def test_zero_offsets_uniform_mask_is_average_pooling(stride, group):
    x = torch.randn(2, 7, 6, 4, dtype=torch.float64)
    h_out, w_out = (7 - 1) // stride + 1, (6 - 1) // stride + 1
    offset = torch.zeros(2, h_out, w_out, group * 9 * 2, dtype=torch.float64)
    mask = torch.full((2, h_out, w_out, group * 9), 1 / 9, dtype=torch.float64)
    got = dcnv3_core(x, offset, mask, 3, stride, 1, 1, group, 1.0)
    want = F.avg_pool2d(x.permute(0, 3, 1, 2), 3, stride, 1, count_include_pad=True).permute(0, 2, 3, 1)
    torch.testing.assert_close(got, want, rtol=0, atol=1e-12)


def test_gradcheck():
    x, offset, mask = _random_inputs(1, 3, 4, 4, 2, 3, 1, 1, 1, 1.5, seed=1)
    for t in (x, offset, mask):
        t.requires_grad_(True)
    assert torch.autograd.gradcheck(lambda a, b, c: dcnv3_core(a, b, c, 3, 1, 1, 1, 2, 1.0), (x, offset, mask))
    x, offset, mask = _random_inputs(1, 5, 4, 2, 1, 3, 2, 2, 2, 1.5, seed=2)
    for t in (x, offset, mask):
        t.requires_grad_(True)
    assert torch.autograd.gradcheck(lambda a, b, c: dcnv3_core(a, b, c, 3, 2, 2, 2, 1, 0.5), (x, offset, mask))


def _good():
    return (torch.zeros(1, 4, 4, 4), torch.zeros(1, 4, 4, 2 * 9 * 2), torch.zeros(1, 4, 4, 2 * 9))


@pytest.mark.parametrize('change,match', [
    (lambda a: dict(a, input=a['input'][0]), 'input must have rank 4'),
    (lambda a: dict(a, offset=a['offset'][..., :-1]), 'offset must have shape'),
    (lambda a: dict(a, offset=a['offset'][:, :3]), 'offset must have shape'),
    (lambda a: dict(a, mask=a['mask'][..., :-2]), 'mask must have shape'),
    (lambda a: dict(a, mask=a['mask'].expand(2, -1, -1, -1)), 'mask must have shape'),
    (lambda a: dict(a, group=3), 'divisible by group'),
    (lambda a: dict(a, group=0), 'group must be a positive int'),
    (lambda a: dict(a, input=a['input'].long()), 'input must be a floating point'),
    (lambda a: dict(a, mask=a['mask'].int()), 'mask must be a floating point'),
    (lambda a: dict(a, kernel_size=0), 'kernel_size must be >= 1'),
    (lambda a: dict(a, kernel_size=(3, 3, 3)), 'kernel_size must be an int or a pair'),
    (lambda a: dict(a, pad=-1), 'pad must be >= 0'),
    (lambda a: dict(a, stride=(1, 0)), 'stride must be >= 1'),
    (lambda a: dict(a, pad=0, kernel_size=5, dilation=2), 'smaller than the dilated kernel'),
])
def test_bad_inputs(change, match):
    x, offset, mask = _good()
    args = dict(input=x, offset=offset, mask=mask, kernel_size=3, stride=1, pad=1, dilation=1, group=2,
                offset_scale=1.0)
    dcnv3_core(**args)  # the unchanged arguments are fine
    with pytest.raises(ValueError, match=match):
        dcnv3_core(**change(args))


# ---- the mixer -------------------------------------------------------------------------------------------------

def _avg_pool_mixer(mixer, x):
    """What the mixer computes with zero offsets and uniform mask: projections around a k x k average."""
    k = mixer.kernel_size
    v = mixer.input_proj(x).permute(0, 3, 1, 2)
    v = F.avg_pool2d(v, k, 1, k // 2, count_include_pad=True).permute(0, 2, 3, 1)
    return mixer.output_proj(v)


@pytest.mark.parametrize('kernel_size', [3, 5])
def test_mixer_at_init_is_projected_average_pooling(kernel_size):
    torch.manual_seed(0)
    mixer = DCNv3Mixer(16, 4, kernel_size=kernel_size).double()
    x = torch.randn(2, 7, 5, 16, dtype=torch.float64)
    torch.testing.assert_close(mixer(x), _avg_pool_mixer(mixer, x), rtol=0, atol=1e-12)


def test_init_weights_restores_the_zero_init_after_a_global_init():
    torch.manual_seed(0)
    mixer = DCNv3Mixer(16, 2).double()
    for m in mixer.modules():  # what a backbone's global init does
        if isinstance(m, nn.Linear):
            nn.init.trunc_normal_(m.weight, std=0.02)
            nn.init.constant_(m.bias, 0.1)
    x = torch.randn(1, 6, 6, 16, dtype=torch.float64)
    assert (mixer(x) - _avg_pool_mixer(mixer, x)).abs().max() > 1e-6
    mixer.init_weights()
    assert all(not p.any() for p in (mixer.offset.weight, mixer.offset.bias, mixer.mask.weight, mixer.mask.bias))
    torch.testing.assert_close(mixer(x), _avg_pool_mixer(mixer, x), rtol=0, atol=1e-12)


def test_mixer_gradients_reach_every_parameter():
    torch.manual_seed(0)
    mixer = DCNv3Mixer(16, 2)
    x = torch.randn(2, 6, 5, 16)
    mixer(x).square().sum().backward()
    # at init the offset/mask layers are zero but must still receive gradient, or they would never move
    for layer in (mixer.offset, mixer.mask):
        assert layer.weight.grad.abs().sum() > 0 and layer.bias.grad.abs().sum() > 0
    with torch.no_grad():  # one perturbation step: afterwards the offset branch is live too
        for p in mixer.parameters():
            p -= 0.1 * p.grad
    mixer.zero_grad()
    mixer(x).square().sum().backward()
    missing = [name for name, p in mixer.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0]
    assert not missing, f'parameters without gradient: {missing}'


@pytest.mark.parametrize('h,w', [(1, 1), (1, 4), (2, 3), (3, 3), (5, 7), (9, 2)])
def test_mixer_any_size(h, w):
    torch.manual_seed(0)
    mixer = DCNv3Mixer(8, 2)
    with torch.no_grad():  # non-zero offsets, so the sampling really moves
        nn.init.normal_(mixer.offset.weight, std=1.0)
        nn.init.normal_(mixer.mask.weight, std=1.0)
    y = mixer(torch.randn(2, h, w, 8))
    assert y.shape == (2, h, w, 8) and torch.isfinite(y).all()


def test_mixer_registry_and_checks():
    assert MIXERS['dcnv3'] is DCNv3Mixer
    mixer = create_mixer('dcnv3', 32, 2, kernel_size=3, block_index=1, stage_index=0, feat_size=(8, 8))
    assert isinstance(mixer, DCNv3Mixer) and mixer.offset.out_features == 2 * 9 * 2
    with pytest.raises(ValueError, match='divisible'):
        DCNv3Mixer(10, 4)
    with pytest.raises(ValueError, match='odd'):
        DCNv3Mixer(8, 2, kernel_size=4)
    with pytest.raises(ValueError, match='odd'):
        DCNv3Mixer(8, 2, dw_kernel_size=2)
