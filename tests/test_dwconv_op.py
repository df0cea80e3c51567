"""The depth-wise convolution with the compiled CPU weight gradient gives PyTorch's numbers (values and gradients)."""
import pytest
import torch
import torch.nn.functional as F

from stm_lab.mixers import create_mixer
from stm_lab.ops import _build
from stm_lab.ops import dwconv as dw
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
def test_compiled_backend_refuses_mixed_dtypes_clearly():
    x, w = torch.zeros(1, 2, 3, 3, dtype=torch.bfloat16, requires_grad=True), torch.zeros(2, 1, 3, 3)
    with pytest.raises(RuntimeError, match='CPU tensors of one dtype'):
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


# ---------------------------------------------------------------------------------------------- bf16 / autocast
def _bf16_reference(x, weight, bias, grad):
    """float64 convolution and gradients of the values a bf16 autocast convolution sees: x and grad rounded to bf16
    (they are stored so), weight and bias as given."""
    ref = [t.detach().to(torch.bfloat16).double().requires_grad_() if t is x else t.detach().double().requires_grad_()
           for t in (x, weight, bias)]
    out = F.conv2d(*ref, padding=(weight.shape[-2] // 2, weight.shape[-1] // 2), groups=x.shape[1])
    return out, torch.autograd.grad(out, ref, grad.to(torch.bfloat16).double())


@needs_kernel
@pytest.mark.parametrize('conv_in', ['float32', 'bf16'])  # the convolutions' dtype: CPUs without / with bf16 oneDNN
def test_bf16_autocast_known_answers(conv_in, monkeypatch):
    """Under CPU bf16 autocast the op stores x and the output in bf16, as autocast's conv2d does, and returns the
    float32 weight and bias gradients in float32, summed in float32: the weight gradient equals the float64 one of
    the same bf16 values to float32 rounding (aten's path rounds it to bf16: ~1e-2 off), the rest to bf16 rounding."""
    if conv_in == 'bf16':  # what a CPU with bf16 units runs (aten's bf16 convolution: slow here, but the same numbers)
        monkeypatch.setattr(dw, 'conv_dtype', lambda dtype: dtype)
    (x, weight, bias), grad = _case(4, 24, 6, 5, 7, 7, dtype=torch.float32, seed=3)
    x_in = x.detach().to(torch.bfloat16).requires_grad_()  # as the projection before it delivers it
    with torch.autocast('cpu', dtype=torch.bfloat16):
        out = depthwise_conv2d(x_in, weight, bias)
    gx, gw, gb = torch.autograd.grad(out, (x_in, weight, bias), grad.to(torch.bfloat16))
    assert out.dtype == gx.dtype == torch.bfloat16 and gw.dtype == gb.dtype == torch.float32
    want, (rx, rw, rb) = _bf16_reference(x, weight, bias, grad)
    torch.testing.assert_close(gw.double(), rw, rtol=1e-5, atol=1e-4)
    torch.testing.assert_close(gb.double(), rb, rtol=1e-5, atol=1e-4)
    torch.testing.assert_close(out.double(), want, rtol=2e-2, atol=5e-2)  # weight rounded to bf16 where it runs so
    torch.testing.assert_close(gx.double(), rx, rtol=2e-2, atol=5e-2)
    with torch.no_grad(), torch.autocast('cpu', dtype=torch.bfloat16):  # inference: the same numbers
        assert torch.equal(depthwise_conv2d(x_in, weight, bias), out)


@needs_kernel
def test_bf16_tensors_outside_autocast_stay_bf16():
    (x, weight, bias), grad = _case(2, 8, 5, 4, 3, 5, dtype=torch.float32, seed=4)
    ts = [t.detach().to(torch.bfloat16).requires_grad_() for t in (x, weight, bias)]
    out = depthwise_conv2d(*ts)
    grads = torch.autograd.grad(out, ts, grad.to(torch.bfloat16))
    assert out.dtype == torch.bfloat16 and all(g.dtype == torch.bfloat16 for g in grads)
    ref = [t.detach().double().requires_grad_() for t in ts]
    want = F.conv2d(*ref, padding=(1, 2), groups=8)
    for g, r in zip(grads, torch.autograd.grad(want, ref, grad.to(torch.bfloat16).double())):
        torch.testing.assert_close(g.double(), r, rtol=1e-2, atol=2e-2)  # one bf16 rounding of each result


@needs_kernel
def test_kernel_accumulates_bf16_in_float32():
    """bf16 in, float32 out, and the float32 kernel's numbers on the same (exactly widened) values."""
    gen = torch.Generator().manual_seed(5)
    g, x = (torch.randn(3, 4, 4, 16, generator=gen).to(torch.bfloat16) for _ in range(2))
    got = torch.ops.stm_lab.dwconv_weight_grad(g, x, 7, 7, 3, 3)
    assert got.dtype == torch.float32
    torch.testing.assert_close(got, torch.ops.stm_lab.dwconv_weight_grad(g.float(), x.float(), 7, 7, 3, 3),
                               rtol=1e-6, atol=1e-6)


@needs_kernel
def test_bf16_autocast_takes_the_compiled_weight_gradient_not_atens():
    """aten's depth-wise weight gradient is the slow path (module docstring); under autocast it used to run."""
    from torch.profiler import ProfilerActivity, profile
    (x, weight, bias), grad = _case(2, 8, 4, 4, 7, 7, dtype=torch.float32)
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        with torch.autocast('cpu', dtype=torch.bfloat16):
            out = depthwise_conv2d(x, weight, bias)
        out.backward(grad.to(out.dtype))
    names = {e.key for e in prof.key_averages()}
    assert 'stm_lab::dwconv_weight_grad' in names and 'aten::convolution_backward' not in names


def test_conv_dtype_follows_onednn():
    assert dw.conv_dtype(torch.float32) == torch.float32 and dw.conv_dtype(torch.float64) == torch.float64
    bf16_native = torch.ops.mkldnn._is_mkldnn_bf16_supported()
    assert dw.conv_dtype(torch.bfloat16) == (torch.bfloat16 if bf16_native else torch.float32)
