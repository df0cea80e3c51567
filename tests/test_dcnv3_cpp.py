"""The compiled DCNv3 CPU kernel (ops/dcnv3_cpu.cpp) against the pure-PyTorch reference: forward on random shapes,
gradients, bfloat16 storage (against float64, a known box sum, under autocast), a whole U-InternImage model, bad
arguments, and the fallback when no kernel can be built.

Tests that need the kernel skip (with the reason) where there is no C++ compiler or no ninja; the first run compiles
it once (about 15-60 s) into the build cache, later runs reuse it.
"""
import warnings

import pytest
import timm
import torch
from hypothesis import example, given, settings, strategies as st

import stm_lab  # noqa: F401  (registers the models)
from stm_lab.ops import _build, dcnv3_backend, dcnv3_core, dcnv3_cpp


@pytest.fixture(scope='module')
def kernel():
    with warnings.catch_warnings():
        warnings.simplefilter('ignore')  # the fallback warning; the reason is reported below
        ops = _build.load()
    if ops is None:
        if _build.compiler() is None:
            pytest.skip('no C++ compiler ($CXX or c++): the compiled DCNv3 kernel cannot be built here')
        if not _build._import_cpp_extension().is_ninja_available():
            pytest.skip('ninja is not installed (pip install ninja): the compiled DCNv3 kernel cannot be built here')
        pytest.fail(f'a compiler and ninja are there, yet the DCNv3 kernel failed to build: {_build.LOADER.error}')
    return ops


def _out_size(size, k, s, p, d):
    return (size + 2 * p - (d * (k - 1) + 1)) // s + 1


def _inputs(n, h, w, c, group, k, stride, pad, dil, offset_range, seed=0, dtype=torch.float64):
    kh, kw = (k, k) if isinstance(k, int) else k
    sh, sw = (stride, stride) if isinstance(stride, int) else stride
    ph, pw = (pad, pad) if isinstance(pad, int) else pad
    dh, dw = (dil, dil) if isinstance(dil, int) else dil
    ho, wo = _out_size(h, kh, sh, ph, dh), _out_size(w, kw, sw, pw, dw)
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(n, h, w, c, generator=gen, dtype=dtype)
    offset = (2 * torch.rand(n, ho, wo, group * kh * kw * 2, generator=gen, dtype=dtype) - 1) * offset_range
    mask = torch.rand(n, ho, wo, group * kh * kw, generator=gen, dtype=dtype)
    return x, offset, mask


# ---- forward -----------------------------------------------------------------------------------------------------

@st.composite
def shapes(draw):
    stride, dil = draw(st.sampled_from([1, 2])), draw(st.sampled_from([1, 2]))
    pad = draw(st.integers(0, 2))
    low = max(1, 2 * dil + 1 - 2 * pad)  # the padded map must hold the dilated 3x3 kernel
    h, w = draw(st.integers(low, 40)), draw(st.integers(low, 40))
    return dict(n=draw(st.integers(1, 4)), h=h, w=w, group=draw(st.integers(1, 8)), cg=draw(st.integers(8, 32)),
                stride=stride, pad=pad, dil=dil, offset_range=draw(st.sampled_from([0.0, 1.5, 6.0, 45.0])),
                scale=draw(st.sampled_from([1.0, 1.0, 0.5, 2.0])), seed=draw(st.integers(0, 2 ** 16)))


@settings(max_examples=30, deadline=None, derandomize=True)
@given(shapes())
@example(dict(n=1, h=1, w=1, group=1, cg=8, stride=1, pad=1, dil=1, offset_range=1.5, scale=1.0, seed=0))
@example(dict(n=2, h=40, w=39, group=8, cg=32, stride=2, pad=2, dil=2, offset_range=45.0, scale=1.0, seed=1))
@example(dict(n=4, h=40, w=40, group=2, cg=16, stride=1, pad=1, dil=1, offset_range=6.0, scale=1.0, seed=2))
def test_forward_float32_matches_reference(kernel, s):
    """float32 kernel vs the reference: within 1e-5 of the reference's exact (float64) numbers; and within 1e-5 of
    its float32 numbers plus their own rounding error, which reaches ~3e-5 on 40-pixel maps (the reference rounds
    positions in normalised [-1, 1] coordinates, so its error grows with the map size; the kernel's stays ~3e-6)."""
    args = (3, s['stride'], s['pad'], s['dil'], s['group'], s['scale'])
    x, offset, mask = _inputs(s['n'], s['h'], s['w'], s['group'] * s['cg'], s['group'], 3, s['stride'], s['pad'],
                              s['dil'], s['offset_range'], s['seed'])
    exact = dcnv3_core(x, offset, mask, *args, backend='torch')
    x, offset, mask = x.float(), offset.float(), mask.float()
    got = dcnv3_core(x, offset, mask, *args, backend='cpp')
    assert got.dtype == torch.float32 and got.shape == exact.shape
    torch.testing.assert_close(got.double(), exact, rtol=0, atol=1e-5)
    ref32 = dcnv3_core(x, offset, mask, *args, backend='torch')
    ref32_error = (ref32.double() - exact).abs().max().item() if exact.numel() else 0.0
    torch.testing.assert_close(got, ref32, rtol=0, atol=1e-5 + ref32_error)


# (n, h, w, c, group, kernel, stride, pad, dilation, offset_scale, offset_range)
CASES = [
    (2, 5, 6, 16, 2, 3, 1, 1, 1, 1.0, 3.0),  # groups, odd/even sizes, offsets leaving the image
    (1, 7, 6, 24, 3, 3, 2, 1, 1, 1.0, 2.5),  # stride 2, 8 channels per group
    (2, 6, 7, 64, 2, 3, 1, 2, 2, 1.0, 2.0),  # dilation 2, 32 channels per group
    (2, 5, 5, 20, 4, 3, 2, 2, 2, 0.5, 4.0),  # stride and dilation, offset_scale 0.5, 5 channels per group
    (1, 5, 4, 6, 1, 5, 1, 2, 1, 2.0, 1.5),  # 5x5, offset_scale 2 (scales the grid too)
    (1, 6, 5, 4, 2, (3, 2), (1, 2), (1, 0), (1, 3), 1.0, 1.5),  # rectangular kernel, pairs
    (1, 4, 6, 2, 1, 2, 1, 0, 3, 0.5, 1.0),  # even kernel, dilation 3
    (1, 1, 1, 3, 1, 3, 1, 1, 1, 1.0, 1.0),  # 1x1 map
    (3, 9, 8, 32, 2, 3, 1, 1, 1, 1.0, 30.0),  # most points far outside the map
]


@pytest.mark.parametrize('case', CASES)
def test_forward_float64_matches_reference(kernel, case):
    n, h, w, c, group, k, stride, pad, dil, scale, offset_range = case
    x, offset, mask = _inputs(n, h, w, c, group, k, stride, pad, dil, offset_range, seed=3)
    args = (k, stride, pad, dil, group, scale)
    torch.testing.assert_close(dcnv3_core(x, offset, mask, *args, backend='cpp'),
                               dcnv3_core(x, offset, mask, *args, backend='torch'), rtol=0, atol=1e-12)


def test_points_at_nan_or_huge_positions_contribute_nothing(kernel):
    x, offset, mask = _inputs(2, 6, 5, 16, 2, 3, 1, 1, 1, 2.0, dtype=torch.float32)
    dropped = mask.clone()
    for value, where in ((float('nan'), (0, 1, 2, 3)), (1e30, (1, 2, 0, 17)), (-float('inf'), (1, 5, 4, 30))):
        offset[where] = value
        dropped[where[:3] + (where[3] // 2,)] = 0  # the point this offset coordinate belongs to
    got = dcnv3_core(x, offset, mask, 3, 1, 1, 1, 2, 1.0, backend='cpp')
    want = dcnv3_core(x, offset.nan_to_num(0, 0, 0), dropped, 3, 1, 1, 1, 2, 1.0, backend='cpp')
    assert torch.isfinite(got).all()
    torch.testing.assert_close(got, want, rtol=0, atol=0)


def test_dtype_promotion_and_half_precision(kernel):
    x, offset, mask = _inputs(1, 6, 6, 16, 2, 3, 1, 1, 1, 2.0)
    args = (3, 1, 1, 1, 2, 1.0)
    for dtypes in ((torch.float16, torch.float32, torch.float32), (torch.bfloat16,) * 3, (torch.float32,) * 3,
                   (torch.float32, torch.float64, torch.float32), (torch.bfloat16, torch.float32, torch.float32),
                   (torch.bfloat16, torch.bfloat16, torch.float16), (torch.float32, torch.bfloat16, torch.bfloat16),
                   (torch.bfloat16, torch.float64, torch.bfloat16)):
        ins = [t.to(d) for t, d in zip((x, offset, mask), dtypes)]
        got, want = (dcnv3_core(*ins, *args, backend=b) for b in ('cpp', 'torch'))
        assert got.dtype == want.dtype == torch.promote_types(torch.promote_types(*dtypes[:2]), dtypes[2])
        torch.testing.assert_close(got, want, rtol=0, atol=1e-2 if got.dtype == torch.bfloat16 else 1e-5)


def test_non_contiguous_inputs_are_copied(kernel):
    x, offset, mask = _inputs(2, 5, 6, 16, 2, 3, 1, 1, 1, 2.0, dtype=torch.float32)
    want = dcnv3_core(x, offset, mask, 3, 1, 1, 1, 2, 1.0, backend='cpp')
    xt = x.transpose(1, 2).contiguous().transpose(1, 2)  # same values, other strides
    ot = torch.stack([offset, offset], -1)[..., 0]
    mt = mask.permute(0, 2, 1, 3).contiguous().permute(0, 2, 1, 3)
    assert not (xt.is_contiguous() or ot.is_contiguous() or mt.is_contiguous())
    torch.testing.assert_close(dcnv3_core(xt, ot, mt, 3, 1, 1, 1, 2, 1.0, backend='cpp'), want, rtol=0, atol=0)


@pytest.mark.parametrize('dtype', [torch.float64, torch.bfloat16])
def test_empty_batch(kernel, dtype):
    x, offset, mask = (t.requires_grad_() for t in _inputs(0, 4, 4, 16, 2, 3, 1, 1, 1, 1.0, dtype=dtype))
    out = dcnv3_core(x, offset, mask, 3, 1, 1, 1, 2, 1.0, backend='cpp')
    assert out.shape == (0, 4, 4, 16) and out.dtype == dtype
    out.sum().backward()
    assert x.grad.shape == x.shape and offset.grad.shape == offset.shape and mask.grad.shape == mask.shape
    assert x.grad.dtype == offset.grad.dtype == mask.grad.dtype == dtype


# ---- backward ----------------------------------------------------------------------------------------------------

GRAD_CASES = [
    (1, 3, 4, 16, 2, 3, 1, 1, 1, 1.0, 1.5),  # 8 channels per group (specialised width)
    (1, 5, 4, 6, 2, 3, 2, 2, 2, 0.5, 2.0),  # stride and dilation, 3 channels per group
    (2, 4, 3, 4, 1, (2, 3), (1, 2), (0, 1), (2, 1), 1.5, 3.0),  # rectangular kernel, pairs, points leaving the map
]


@pytest.mark.parametrize('case', GRAD_CASES)
def test_gradcheck(kernel, case):
    n, h, w, c, group, k, stride, pad, dil, scale, offset_range = case
    inputs = [t.requires_grad_() for t in _inputs(n, h, w, c, group, k, stride, pad, dil, offset_range, seed=5)]
    fn = lambda a, b, m: dcnv3_core(a, b, m, k, stride, pad, dil, group, scale, backend='cpp')  # noqa: E731
    assert torch.autograd.gradcheck(fn, inputs)


@pytest.mark.parametrize('case', CASES)
def test_gradients_match_reference(kernel, case):
    """Same gradients as autograd through the reference, float64 (exact) and float32 (to float32 rounding)."""
    n, h, w, c, group, k, stride, pad, dil, scale, offset_range = case
    args = (k, stride, pad, dil, group, scale)
    x, offset, mask = _inputs(n, h, w, c, group, k, stride, pad, dil, offset_range, seed=7)
    grad_out = torch.randn(dcnv3_core(x, offset, mask, *args, backend='torch').shape, dtype=torch.float64)

    def grads(backend, dtype):
        leaves = [t.to(dtype).requires_grad_() for t in (x, offset, mask)]
        out = dcnv3_core(*leaves, *args, backend=backend)
        return torch.autograd.grad(out, leaves, grad_out.to(dtype))

    want = grads('torch', torch.float64)
    for name, got, ref in zip(('input', 'offset', 'mask'), grads('cpp', torch.float64), want):
        torch.testing.assert_close(got, ref, rtol=0, atol=1e-10, msg=lambda m: f'grad of {name}: {m}')
    for name, got, ref in zip(('input', 'offset', 'mask'), grads('cpp', torch.float32), want):
        torch.testing.assert_close(got.double(), ref, rtol=1e-4, atol=1e-4, msg=lambda m: f'grad of {name}: {m}')


@pytest.mark.parametrize('dtypes', [(torch.float32,) * 2, (torch.bfloat16,) * 2, (torch.bfloat16, torch.float32)],
                         ids=['float32', 'bfloat16', 'bf16-input-float32-offset-mask'])
def test_results_do_not_depend_on_the_thread_count(kernel, dtypes):
    """The backward partitions grad_input by (image, group): no atomics, so results are bit-identical; a bf16
    input's gradient is rounded from its float32 sums by the task that owns them."""
    x, offset, mask = _inputs(3, 12, 11, 32, 2, 3, 1, 1, 1, 3.0, dtype=torch.float32)
    x, offset, mask = x.to(dtypes[0]), offset.to(dtypes[1]), mask.to(dtypes[1])
    grad_out = torch.randn(3, 12, 11, 32).to(dtypes[1])
    threads = torch.get_num_threads()
    results = []
    try:
        for n in (1, 2, 3):
            torch.set_num_threads(n)
            leaves = [t.clone().requires_grad_() for t in (x, offset, mask)]
            out = dcnv3_core(*leaves, 3, 1, 1, 1, 2, 1.0, backend='cpp')
            assert out.dtype == dtypes[1] and out.dtype == grad_out.dtype
            results.append([out, *torch.autograd.grad(out, leaves, grad_out)])
    finally:
        torch.set_num_threads(threads)
    for other in results[1:]:
        for a, b in zip(results[0], other):
            assert torch.equal(a, b)


def test_double_backward_is_refused_clearly(kernel):
    x, offset, mask = (t.requires_grad_() for t in _inputs(1, 4, 4, 8, 1, 3, 1, 1, 1, 1.0))
    out = dcnv3_core(x, offset, mask, 3, 1, 1, 1, 1, 1.0, backend='cpp')
    (g,) = torch.autograd.grad(out.square().sum(), x, create_graph=True)
    with pytest.raises(RuntimeError, match='once_differentiable|differentiate twice'):
        g.sum().backward()


# ---- bfloat16 storage ---------------------------------------------------------------------------------------------

def _kink_free_bf16_offsets(shape, gen):
    """Offsets exact in bf16 whose fractional part is an odd multiple of 1/16: with offset_scale 0.5, 1 or 2 no
    point lands on a pixel, where bilinear sampling has a kink and the kernel's one-sided derivative and grid_sample's
    may legitimately differ. (Random bf16 offsets hit integers often: 1/64 of those in [2, 4) are integers.)"""
    whole = torch.randint(-4, 4, shape, generator=gen)
    sixteenths = 2 * torch.randint(0, 8, shape, generator=gen) + 1
    return (whole + sixteenths / 16).to(torch.bfloat16)


def _assert_one_bf16_rounding(got, exact, name):
    """``got`` (bf16) is ``exact`` (float64) rounded once: within half a bf16 ulp (<= 2^-8 relative) plus float32
    accumulation error (2^-16 of the tensor's largest value), and equal to ``exact`` rounded to nearest for all but a
    few elements (those within float32 error of a rounding boundary). Sums kept in bf16, or a bf16 intermediate
    (weights, products), leave errors of bf16 size relative to the terms, which breaks both."""
    assert got.dtype == torch.bfloat16 and got.shape == exact.shape, name
    err = (got.double() - exact).abs()
    bound = 2.0 ** -8 * exact.abs() + 2.0 ** -16 * exact.abs().max()
    assert (err <= bound).all(), f'{name}: error {(err / bound).max():.2f}x the bound'
    rounded = (got == exact.to(torch.bfloat16)).double().mean().item()
    assert rounded >= 0.99, f'{name}: only {rounded:.4f} of the elements are the exact value rounded to nearest'


# (n, h, w, c, group, kernel, stride, pad, dilation, offset_scale)
BF16_CASES = [
    (2, 9, 8, 64, 4, 3, 1, 1, 1, 1.0),  # 16 channels per group (the micro models' width)
    (2, 7, 7, 64, 2, 3, 2, 2, 2, 0.5),  # 32 channels per group, stride, dilation, offset_scale 0.5
    (2, 6, 5, 32, 4, 3, 1, 1, 1, 2.0),  # 8 channels per group, offset_scale 2
    (2, 6, 5, 20, 4, 3, 1, 1, 1, 1.0),  # 5 channels per group (width read at run time)
    (1, 5, 6, 48, 2, (3, 2), (1, 2), (1, 0), (1, 3), 1.0),  # 24 channels per group, rectangular kernel, pairs
]


@pytest.mark.parametrize('case', BF16_CASES)
def test_bfloat16_matches_float64_reference(kernel, case):
    """bf16 storage, float32 arithmetic: the output and each gradient are the float64 reference on the same
    bf16 values, rounded once to bf16."""
    n, h, w, c, group, k, stride, pad, dil, scale = case
    args = (k, stride, pad, dil, group, scale)
    x, offset, mask = _inputs(n, h, w, c, group, k, stride, pad, dil, 1.0, seed=11)
    gen = torch.Generator().manual_seed(12)
    x, mask, offset = x.bfloat16(), mask.bfloat16(), _kink_free_bf16_offsets(offset.shape, gen)
    grad_out = torch.randn(dcnv3_core(x, offset, mask, *args, backend='cpp').shape, generator=gen).bfloat16()

    def run(backend, dtype):
        leaves = [t.to(dtype).requires_grad_() for t in (x, offset, mask)]
        out = dcnv3_core(*leaves, *args, backend=backend)
        return [out, *torch.autograd.grad(out, leaves, grad_out.to(dtype))]

    for name, got, exact in zip(('output', 'grad_input', 'grad_offset', 'grad_mask'), run('cpp', torch.bfloat16),
                                run('torch', torch.float64)):
        _assert_one_bf16_rounding(got, exact, name)


def test_bfloat16_input_with_float32_offset_and_mask(kernel):
    """A bf16 input with float32 offsets and mask: read as they are (no sub-pixel precision lost), so the output,
    float32, and the offset and mask gradients are as exact as the float32 kernel's; the input's gradient is bf16."""
    args = (3, 1, 1, 1, 4, 1.0)
    x, offset, mask = _inputs(2, 7, 6, 64, 4, 3, 1, 1, 1, 4.0, seed=13)
    x = x.bfloat16()
    grad_out = torch.randn(2, 7, 6, 64, dtype=torch.float64)
    leaves = [x.requires_grad_(), offset.float().requires_grad_(), mask.float().requires_grad_()]
    out = dcnv3_core(*leaves, *args, backend='cpp')
    got = [out, *torch.autograd.grad(out, leaves, grad_out.float())]
    assert [t.dtype for t in got] == [torch.float32, torch.bfloat16, torch.float32, torch.float32]
    exact_leaves = [t.detach().double().requires_grad_() for t in leaves]
    exact_out = dcnv3_core(*exact_leaves, *args, backend='torch')
    exact = [exact_out, *torch.autograd.grad(exact_out, exact_leaves, grad_out)]
    torch.testing.assert_close(got[0].double(), exact[0], rtol=0, atol=1e-5)
    _assert_one_bf16_rounding(got[1], exact[1], 'grad_input')
    for name, g, e in zip(('grad_offset', 'grad_mask'), got[2:], exact[2:]):
        torch.testing.assert_close(g.double(), e, rtol=1e-4, atol=1e-4, msg=lambda m: f'{name}: {m}')


@pytest.mark.parametrize('c,group', [(32, 2), (32, 4), (12, 2)])  # 16, 8 and 6 (run time) channels per group
def test_bfloat16_zero_offsets_unit_mask_is_a_box_sum(kernel, c, group):
    """Zero offsets, mask 1, small integers (exact in bf16, as are all sums here): the output is the 3x3 box sum;
    with grad_output 1, grad_input counts the windows that cover a pixel, grad_mask is the group's channel sum s at
    the tap, and grad_offset is the one-sided difference s(right/below) - s(here) (points sit on pixels)."""
    n, h, w, k = 2, 5, 6, 9
    gen = torch.Generator().manual_seed(17)
    x = torch.randint(-3, 4, (n, h, w, c), generator=gen).double()
    offset, mask = torch.zeros(n, h, w, group * k * 2), torch.ones(n, h, w, group * k)
    leaves = [t.bfloat16().requires_grad_() for t in (x, offset, mask)]
    out = dcnv3_core(*leaves, 3, 1, 1, 1, group, 1.0, backend='cpp')
    grad_input, grad_offset, grad_mask = torch.autograd.grad(out, leaves, torch.ones_like(out))

    planes = x.permute(0, 3, 1, 2)  # (N, C, H, W)
    box = torch.nn.functional.conv2d(planes, torch.ones(c, 1, 3, 3, dtype=torch.float64), padding=1, groups=c)
    assert out.dtype == torch.bfloat16 and torch.equal(out.double(), box.permute(0, 2, 3, 1))
    cover = torch.nn.functional.conv2d(torch.ones(1, 1, h, w, dtype=torch.float64), torch.ones(1, 1, 3, 3,
                                       dtype=torch.float64), padding=1)[0, 0]  # windows covering each pixel
    assert torch.equal(grad_input.double(), cover[None, :, :, None].expand(n, h, w, c))
    # s[n, y, x, g]: channel sum of group g at pixel (y - 1, x - 1) of the input, zero-padded by 2 on each side
    s = torch.nn.functional.pad(x.reshape(n, h, w, group, c // group).sum(-1), (0, 0, 2, 2, 2, 2))
    want_mask, want_dx, want_dy = (torch.zeros(n, h, w, group, 3, 3, dtype=torch.float64) for _ in range(3))
    for a in range(3):  # kernel column: x offset a - 1; point index a * 3 + b
        for b in range(3):  # kernel row: y offset b - 1
            here = s[:, b + 1:b + 1 + h, a + 1:a + 1 + w]
            want_mask[..., a, b] = here
            want_dx[..., a, b] = s[:, b + 1:b + 1 + h, a + 2:a + 2 + w] - here
            want_dy[..., a, b] = s[:, b + 2:b + 2 + h, a + 1:a + 1 + w] - here
    assert torch.equal(grad_mask.double(), want_mask.reshape(n, h, w, group * k))
    assert torch.equal(grad_offset.double(), torch.stack([want_dx, want_dy], -1).reshape(n, h, w, group * k * 2))


def test_autocast_bfloat16_mixer_runs_the_kernel_in_bfloat16(kernel, one_thread, monkeypatch):
    """Under CPU autocast the DCNv3 mixer's value, offset and mask arrive as bf16 and go to the kernel as they are:
    inside dcnv3_core no tensor op runs but the kernel (no copy to float32 and back), both kernel ops see and return
    bf16, and the output's autograd node is the kernel's own (no cast node whose backward would convert the
    gradient)."""
    from torch.utils._python_dispatch import TorchDispatchMode
    from torch.utils._pytree import tree_leaves
    from stm_lab.mixers import create_mixer
    import stm_lab.mixers.dcnv3 as dcnv3_mixer

    calls, inside, outputs = [], [False], []

    def dtypes(tree):
        return [t.dtype for t in tree_leaves(tree) if isinstance(t, torch.Tensor)]

    class Record(TorchDispatchMode):  # every op that reaches the dispatcher: (name, inside dcnv3_core, in, out)
        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            out = func(*args, **(kwargs or {}))
            calls.append((func.name(), inside[0], dtypes((args, kwargs)), dtypes(out)))
            return out

    real = dcnv3_mixer.dcnv3_core

    def spy(*args, **kwargs):
        inside[0] = True
        try:
            outputs.append(real(*args, **kwargs))
        finally:
            inside[0] = False
        return outputs[-1]

    monkeypatch.setattr(dcnv3_mixer, 'dcnv3_core', spy)
    torch.manual_seed(0)
    mixer = create_mixer('dcnv3', 32, 2)
    with torch.no_grad():  # learned offsets and masks: points between pixels
        for layer in (mixer.offset, mixer.mask):
            layer.weight.normal_(0, 0.1)
    x = torch.randn(2, 6, 5, 32, requires_grad=True)
    with dcnv3_backend('cpp'), Record():
        with torch.autocast('cpu', dtype=torch.bfloat16):
            y = mixer(x)
        y.float().square().sum().backward()

    bf16 = torch.bfloat16
    assert y.dtype == bf16 and x.grad.dtype == torch.float32 and torch.isfinite(x.grad).all()
    assert [name for name, within, ins, outs in calls if within and ins + outs] == ['stm_lab::dcnv3_forward']
    kernel_ops = {name: (ins, outs) for name, _, ins, outs in calls if name.startswith('stm_lab::dcnv3')}
    assert kernel_ops == {'stm_lab::dcnv3_forward': ([bf16] * 3, [bf16]),
                          'stm_lab::dcnv3_backward': ([bf16] * 4, [bf16] * 3)}
    assert type(outputs[0].grad_fn).__name__ == '_DCNv3FunctionBackward'


# ---- a whole model -----------------------------------------------------------------------------------------------

def _loss_and_grads(model, x, y, backend):
    model.zero_grad()
    with dcnv3_backend(backend):
        loss = torch.nn.functional.cross_entropy(model(x), y)
    loss.backward()
    return loss.detach(), {n: p.grad.clone() for n, p in model.named_parameters()}


def test_u_internimage_micro_same_loss_and_gradients(kernel, one_thread):
    torch.manual_seed(0)
    model = timm.create_model('u_internimage_micro', num_classes=10, img_size=64)
    with torch.no_grad():  # layer scale starts at 1e-6: give the mixers a real say in the loss
        for name, p in model.named_parameters():
            if 'gamma' in name:
                p.fill_(0.3)
    x, y = torch.randn(2, 3, 64, 64), torch.tensor([3, 7])

    # At init the offsets are zero, so every point sits exactly on a pixel, where bilinear sampling has a kink:
    # the kernel takes the right/lower one-sided derivative, grid_sample whichever side float rounding of its
    # normalised position lands on. Only the offset layers' gradients see that (their zero weights pass nothing on).
    (la, ga), (lb, gb) = (_loss_and_grads(model, x, y, b) for b in ('torch', 'cpp'))
    torch.testing.assert_close(lb, la, rtol=0, atol=1e-4)
    for name in ga:
        if '.mixer.offset.' not in name:
            torch.testing.assert_close(gb[name], ga[name], rtol=1e-4, atol=1e-4, msg=lambda m: f'{name}: {m}')

    with torch.no_grad():  # learned offsets and masks: positions between pixels, every gradient well defined
        for name, p in model.named_parameters():
            if '.mixer.offset.' in name or '.mixer.mask.' in name:
                p.normal_(0, 0.05)
    (la, ga), (lb, gb) = (_loss_and_grads(model, x, y, b) for b in ('torch', 'cpp'))
    torch.testing.assert_close(lb, la, rtol=0, atol=1e-4)
    for name in ga:
        torch.testing.assert_close(gb[name], ga[name], rtol=1e-4, atol=1e-4, msg=lambda m: f'{name}: {m}')


def test_auto_is_the_default_and_dcnv3_backend_switches_it(kernel, monkeypatch):
    calls = []
    real = dcnv3_cpp.dcnv3_core_cpp
    monkeypatch.setattr(dcnv3_cpp, 'dcnv3_core_cpp', lambda *a: calls.append(1) or real(*a))
    x, offset, mask = _inputs(1, 4, 4, 8, 1, 3, 1, 1, 1, 1.0)
    dcnv3_core(x, offset, mask, 3, 1, 1, 1, 1, 1.0)
    assert len(calls) == 1  # "auto" took the kernel
    with dcnv3_backend('torch'):
        dcnv3_core(x, offset, mask, 3, 1, 1, 1, 1, 1.0)
        assert len(calls) == 1
        dcnv3_core(x, offset, mask, 3, 1, 1, 1, 1, 1.0, backend='cpp')  # an explicit backend wins
        assert len(calls) == 2
    dcnv3_core(x, offset, mask, 3, 1, 1, 1, 1, 1.0)
    assert len(calls) == 3
    with pytest.raises(ValueError, match='backend must be one of'):
        with dcnv3_backend('gpu'):
            pass


# ---- bad arguments -----------------------------------------------------------------------------------------------

def _good():
    return torch.zeros(1, 4, 4, 4), torch.zeros(1, 4, 4, 36), torch.zeros(1, 4, 4, 18)


@pytest.mark.parametrize('change,match', [
    (lambda a: dict(a, input=a['input'][0]), 'input must have rank 4'),
    (lambda a: dict(a, offset=a['offset'][..., :-1]), 'offset must have shape'),
    (lambda a: dict(a, mask=a['mask'][:, :3]), 'mask must have shape'),
    (lambda a: dict(a, mask=a['mask'].expand(2, -1, -1, -1)), 'mask must have shape'),
    (lambda a: dict(a, group=3), 'divisible by group'),
    (lambda a: dict(a, input=a['input'].int()), 'input must be a floating point'),
    (lambda a: dict(a, offset=a['offset'].bool()), 'offset must be a floating point'),
    (lambda a: dict(a, backend='cuda'), 'backend must be one of'),
])
def test_bad_arguments_raise_before_the_kernel(change, match):
    x, offset, mask = _good()
    args = dict(input=x, offset=offset, mask=mask, kernel_size=3, stride=1, pad=1, dilation=1, group=2,
                offset_scale=1.0, backend='cpp')
    with pytest.raises(ValueError, match=match):
        dcnv3_core(**change(args))


def test_cpp_backend_refuses_tensors_off_the_cpu():
    x, offset, mask = (t.to('meta') for t in _good())
    with pytest.raises(RuntimeError, match='runs on the CPU'):
        dcnv3_core(x, offset, mask, 3, 1, 1, 1, 2, 1.0, backend='cpp')


def test_cpp_backend_refuses_images_beyond_int32_offsets():
    side = 50_000  # 2.5e9 elements per image; zero-stride views, so nothing is allocated
    x = torch.zeros(1, 1, 1, 1).expand(1, side, side, 1)
    offset, mask = torch.zeros(1, 1, 1, 1).expand(1, side, side, 18), torch.zeros(1, 1, 1, 1).expand(1, side, side, 9)
    with pytest.raises(RuntimeError, match='too large for the compiled kernel'):
        dcnv3_core(x, offset, mask, 3, 1, 1, 1, 1, 1.0, backend='cpp')


def _geometry(**kw):
    g = dict(kernel=[3, 3], stride=[1, 1], pad=[1, 1], dilation=[1, 1], group=2, offset_scale=1.0)
    g.update(kw)
    return list(g.values())


@pytest.mark.parametrize('tensors,geometry,match', [
    (lambda x, o, m: (x[:, :, ::2], o, m), {}, 'must be contiguous|must have shape'),
    (lambda x, o, m: (x.transpose(1, 2), o, m), {}, 'input must be contiguous'),
    (lambda x, o, m: (x, o.transpose(1, 2), m), {}, 'offset must be contiguous'),
    (lambda x, o, m: (x.int(), o, m), {}, 'input must be float32, float64 or bfloat16, got Int'),
    (lambda x, o, m: (x.half(), o.half(), m.half()), {}, 'input must be float32, float64 or bfloat16, got Half'),
    (lambda x, o, m: (x, o.double(), m), {}, 'offset has dtype Double but input has Float'),
    (lambda x, o, m: (x, o.bfloat16(), m.bfloat16()), {}, 'offset has dtype BFloat16 but input has Float'),
    (lambda x, o, m: (x.bfloat16(), o.double(), m.double()), {},
     r'offset has dtype Double but input has BFloat16 \(valid for offset and mask: BFloat16 or Float\)'),
    (lambda x, o, m: (x.bfloat16(), o, m.bfloat16()), {}, 'mask has dtype BFloat16 but offset has Float'),
    (lambda x, o, m: (x, o, m.double()), {}, 'mask has dtype Double but offset has Float'),
    (lambda x, o, m: (x[0], o, m), {}, 'input must have rank 4'),
    (lambda x, o, m: (x, o[..., :-2].contiguous(), m), {}, 'offset must have shape'),
    (lambda x, o, m: (x, o, m[:, 1:].contiguous()), {}, 'mask must have shape'),
    (lambda x, o, m: (x, o, m), dict(group=3), 'divisible by group'),
    (lambda x, o, m: (x, o, m), dict(group=0), 'divisible by group'),
    (lambda x, o, m: (x, o, m), dict(kernel=[3, 3, 3]), 'kernel_size must have 2 entries'),
    (lambda x, o, m: (x, o, m), dict(kernel=[0, 3]), 'kernel_size must be >= 1'),
    (lambda x, o, m: (x, o, m), dict(stride=[1, 0]), 'stride must be >= 1'),
    (lambda x, o, m: (x, o, m), dict(pad=[-1, 1]), 'pad must be >= 0'),
    (lambda x, o, m: (x, o, m), dict(pad=[0, 0], dilation=[3, 3]), 'smaller than the dilated kernel'),
    (lambda x, o, m: (x, o, m), dict(offset_scale=float('nan')), 'offset_scale must be finite'),
])
def test_kernel_checks_its_arguments(kernel, tensors, geometry, match):
    """Direct calls of the registered ops (bypassing the Python checks) raise, never read out of bounds."""
    x, offset, mask = tensors(*_good())
    with pytest.raises(RuntimeError, match=match):
        kernel.dcnv3_forward(x, offset, mask, *_geometry(**geometry))
    with pytest.raises(RuntimeError, match=match):
        kernel.dcnv3_backward(torch.zeros(1, 4, 4, 4), x, offset, mask, *_geometry(**geometry))


def test_kernel_checks_grad_output(kernel):
    x, offset, mask = _good()
    for grad_out, match in ((torch.zeros(1, 4, 4, 3), 'grad_output must have shape'),
                            (torch.zeros(1, 4, 4, 4).double(), 'grad_output has dtype Double but the output'),
                            (torch.zeros(1, 4, 4, 8)[..., ::2], 'grad_output must be contiguous')):
        with pytest.raises(RuntimeError, match=match):
            kernel.dcnv3_backward(grad_out, x, offset, mask, *_geometry())
    # a bf16 input with float32 offset and mask has a float32 output, hence a float32 grad_output
    with pytest.raises(RuntimeError, match='grad_output has dtype BFloat16 but the output .offset.s dtype. has Float'):
        kernel.dcnv3_backward(torch.zeros(1, 4, 4, 4).bfloat16(), x.bfloat16(), offset, mask, *_geometry())


# ---- no kernel: fall back with one warning -----------------------------------------------------------------------

@pytest.mark.parametrize('cxx', ['/nonexistent/c++', 'false'])
def test_failed_build_falls_back_with_one_warning(monkeypatch, tmp_path, cxx):
    """No compiler (or one that fails): "auto" warns once and uses the PyTorch path; "cpp" raises clearly."""
    monkeypatch.setenv('CXX', cxx)
    monkeypatch.setenv('STM_LAB_CACHE', str(tmp_path))  # a fresh, empty build cache
    monkeypatch.setattr(_build, 'LOADER', _build.ExtensionLoader())
    x, offset, mask = _inputs(1, 5, 4, 8, 2, 3, 1, 1, 1, 2.0)
    with pytest.warns(RuntimeWarning, match='CPU kernels .DCNv3, depth-wise conv. are unavailable.*slower PyTorch paths'):
        got = dcnv3_core(x, offset, mask, 3, 1, 1, 1, 2, 1.0, backend='auto')
    torch.testing.assert_close(got, dcnv3_core(x, offset, mask, 3, 1, 1, 1, 2, 1.0, backend='torch'), rtol=0, atol=0)
    with warnings.catch_warnings():
        warnings.simplefilter('error')  # only once
        dcnv3_core(x, offset, mask, 3, 1, 1, 1, 2, 1.0)
        with pytest.raises(RuntimeError, match='compiled kernel is unavailable'):
            dcnv3_core(x, offset, mask, 3, 1, 1, 1, 2, 1.0, backend='cpp')
