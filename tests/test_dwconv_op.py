"""The depth-wise convolution with the compiled CPU weight gradient gives PyTorch's numbers (values and gradients)."""
import pytest
import torch
import torch.nn.functional as F

from stm_lab.mixers import create_mixer
from stm_lab.ops import _build
from stm_lab.ops.dwconv import depthwise_conv2d

needs_kernel = pytest.mark.skipif(_build.load() is None, reason='compiled CPU kernels unavailable here')


def _case(n, c, h, w, kh, kw, channels_last=True, dtype=torch.float64, seed=0):
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(n, h, w, c, generator=gen, dtype=dtype).permute(0, 3, 1, 2) if channels_last else \
        torch.randn(n, c, h, w, generator=gen, dtype=dtype)
    weight = torch.randn(c, 1, kh, kw, generator=gen, dtype=dtype)
    bias = torch.randn(c, generator=gen, dtype=dtype)
    grad = torch.randn(n, c, h, w, generator=gen, dtype=dtype)
    return [t.requires_grad_() for t in (x, weight, bias)], grad


@needs_kernel
@pytest.mark.parametrize('n,c,h,w,kh,kw,channels_last', [
    (1, 1, 1, 1, 7, 7, True),  # a 1x1 map under a 7x7 kernel: only the centre tap sees data
    (3, 5, 2, 2, 7, 7, True),
    (2, 6, 4, 3, 7, 7, False),
    (2, 4, 5, 9, 3, 5, True),  # non-square kernel and map
    (4, 8, 16, 16, 7, 7, True),
    (2, 3, 9, 7, 3, 3, False),
])
def test_values_and_gradients_match_conv2d(n, c, h, w, kh, kw, channels_last):
    (x, weight, bias), grad = _case(n, c, h, w, kh, kw, channels_last)
    out = depthwise_conv2d(x, weight, bias, backend='cpp')
    ref = F.conv2d(x, weight, bias, padding=(kh // 2, kw // 2), groups=c)
    torch.testing.assert_close(out, ref, rtol=0, atol=0)  # the forward is the same call
    got = torch.autograd.grad(out, (x, weight, bias), grad)
    want = torch.autograd.grad(ref, (x, weight, bias), grad)
    for g, r in zip(got, want):
        torch.testing.assert_close(g, r, rtol=1e-12, atol=1e-12)


@needs_kernel
def test_gradcheck_float64():
    (x, weight, bias), _ = _case(2, 3, 3, 4, 5, 3)
    assert torch.autograd.gradcheck(lambda *t: depthwise_conv2d(*t, backend='cpp'), (x, weight, bias))


@needs_kernel
def test_float32_weight_gradient_close_and_without_bias():
    (x, weight, _), grad = _case(8, 32, 4, 4, 7, 7, dtype=torch.float32)
    got = torch.autograd.grad(depthwise_conv2d(x, weight, None, backend='cpp'), weight, grad)[0]
    want = torch.autograd.grad(F.conv2d(x, weight, None, padding=3, groups=32), weight, grad)[0]
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)


@needs_kernel
def test_dwconv_mixer_gradients_equal_the_plain_module():
    torch.manual_seed(0)
    mixer = create_mixer('dw_conv', 16, 1).double()
    x = torch.randn(2, 5, 6, 16, dtype=torch.float64, requires_grad=True)
    out = mixer(x)
    plain = mixer.proj_out(mixer.dwconv(mixer.proj_in(x).permute(0, 3, 1, 2)).permute(0, 2, 3, 1))
    torch.testing.assert_close(out, plain, rtol=0, atol=0)
    params = [x, *mixer.parameters()]
    for g, r in zip(torch.autograd.grad(out.square().sum(), params), torch.autograd.grad(plain.square().sum(), params)):
        torch.testing.assert_close(g, r, rtol=1e-12, atol=1e-12)


def test_torch_backend_and_no_grad_are_plain_conv2d():
    (x, weight, bias), _ = _case(2, 3, 5, 5, 3, 3)
    ref = F.conv2d(x, weight, bias, padding=1, groups=3)
    torch.testing.assert_close(depthwise_conv2d(x, weight, bias, backend='torch'), ref, rtol=0, atol=0)
    with torch.no_grad():
        torch.testing.assert_close(depthwise_conv2d(x, weight, bias), ref, rtol=0, atol=0)


@pytest.mark.parametrize('args,match', [
    (dict(x=(2, 3, 5, 5), w=(3, 1, 4, 4)), 'odd sides'),
    (dict(x=(2, 3, 5, 5), w=(4, 1, 3, 3)), r'expected x \(N, C, H, W\) and weight \(C, 1, kh, kw\)'),
    (dict(x=(3, 5, 5), w=(3, 1, 3, 3)), r'expected x \(N, C, H, W\)'),
])
def test_bad_shapes_are_refused(args, match):
    with pytest.raises(ValueError, match=match):
        depthwise_conv2d(torch.zeros(args['x']), torch.zeros(args['w']))


def test_unknown_backend_lists_the_valid_ones():
    with pytest.raises(ValueError, match='auto, torch, cpp'):
        depthwise_conv2d(torch.zeros(1, 1, 3, 3), torch.zeros(1, 1, 3, 3), backend='cuda')


@needs_kernel
def test_compiled_backend_refuses_half_tensors_clearly():
    x, w = torch.zeros(1, 2, 3, 3, dtype=torch.float16, requires_grad=True), torch.zeros(2, 1, 3, 3, dtype=torch.float16)
    with pytest.raises(RuntimeError, match='float32/float64 CPU tensors'):
        depthwise_conv2d(x, w, backend='cpp')


@needs_kernel
def test_kernel_checks_its_shapes():
    g, x = torch.zeros(2, 4, 4, 3), torch.zeros(2, 4, 4, 3)
    with pytest.raises(RuntimeError, match='does not match input'):
        torch.ops.stm_lab.dwconv_weight_grad(g, torch.zeros(2, 5, 4, 3), 7, 7, 3, 3)
    with pytest.raises(RuntimeError, match=r'expected \(N, H, W, C\)'):
        torch.ops.stm_lab.dwconv_weight_grad(g[0], x[0], 7, 7, 3, 3)
    with pytest.raises(RuntimeError, match='contiguous'):
        torch.ops.stm_lab.dwconv_weight_grad(g.transpose(1, 2), x, 7, 7, 3, 3)


def test_autocast_takes_the_plain_path_with_the_same_gradients():
    (x, weight, bias), _ = _case(2, 8, 5, 5, 7, 7, dtype=torch.float32)
    grads = []
    for fn in (lambda: depthwise_conv2d(x, weight, bias), lambda: F.conv2d(x, weight, bias, padding=3, groups=8)):
        with torch.autocast('cpu', dtype=torch.bfloat16):
            y = fn()
        assert y.dtype == torch.bfloat16
        grads.append(torch.autograd.grad(y.float().square().sum(), (x, weight, bias)))
    for a, b in zip(*grads):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
