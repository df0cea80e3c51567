"""The bf16 autocast step of the unified models does what timm's Swin does: no fp32 detours, no slow fallbacks.
Counted with torch.profiler (stm_lab.bench.train_profile.dtype_conversions). float32 and float64 numbers are left
alone (tests/test_dwconv_op.py, tests/test_speed_equivalence.py check them against their references)."""
import pytest
import torch
from torch.profiler import ProfilerActivity, profile

import stm_lab  # noqa: F401  (registers the models)
from stm_lab.bench import steps as T
from stm_lab.bench.train_profile import _is_conversion, dtype_conversions
from stm_lab.mixers import create_mixer
from stm_lab.mixers.swin import window_attention
from stm_lab.ops import _build

pytestmark = pytest.mark.usefixtures('one_thread')  # tests/conftest.py
needs_kernel = pytest.mark.skipif(_build.load() is None, reason='compiled CPU kernels unavailable here')
BF16 = dict(device_type='cpu', dtype=torch.bfloat16)


def _ops(fn):
    """The profiler's events of fn()."""
    with profile(activities=[ProfilerActivity.CPU], record_shapes=True) as prof:
        fn()
    return prof.events()


def test_window_attention_casts_a_float32_bias_once():
    """bf16 q, k, v with Swin's float32 bias: forward casts the bias, the logits to float32 for the softmax and the
    probabilities back (3), backward two casts around the float32 softmax gradient (2); the bias gradient comes back
    in float32 without a round trip through bf16. (Before: the bias cast outside, its gradient cast to bf16 and back,
    and the probabilities cast again in backward: 8.)"""
    gen = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(6, 9, 8, generator=gen).to(torch.bfloat16).requires_grad_() for _ in range(3))
    bias = torch.randn(3, 9, 9, generator=gen).requires_grad_()  # (heads, N, N), float32 like the table

    def step():
        with torch.autocast(**BF16):
            out = window_attention(q, k, v, bias, scale=0.3, view=(2, 3, 9, 9))
        out.backward(torch.ones_like(out))
    assert sum(map(_is_conversion, _ops(step))) <= 5
    assert bias.grad.dtype == torch.float32 and q.grad.dtype == torch.bfloat16


def test_swin_test_step_conversions():
    """A whole bf16 training step of u_swin_test (32 px, batch 2) makes at most 191 conversions outside the optimizer
    (206 before the attention's bias and probabilities were cast once)."""
    torch.manual_seed(0)
    n = dtype_conversions(T.build_model('u_swin_test', 32, 10), 32, 2, torch.bfloat16)['count']
    assert 0 < n <= 191


@needs_kernel
def test_dwconv_model_takes_the_compiled_weight_gradient_in_every_block():
    torch.manual_seed(0)
    model = T.build_model('u_dwconv_test', 32, 10)
    step = T.make_train_step(model, 32, 2, 'cpu', torch.bfloat16)
    step()
    events = _ops(step)
    calls = sum(e.name == 'stm_lab::dwconv_weight_grad' for e in events)
    assert calls == sum(model.config.depths)  # one depth-wise convolution per block
    depthwise_aten = [e for e in events if e.name == 'aten::convolution_backward' and e.input_shapes[2][1] == 1]
    assert not depthwise_aten  # weight (C, 1, k, k): aten's depth-wise backward, the slow path, never runs


@needs_kernel
def test_dcnv3_mixer_offset_branch_takes_the_depthwise_op_under_autocast():
    """The offset branch's 3x3 depth-wise convolution: aten's convolution backward in float32 (the committed runs'
    numbers), the compiled bf16 path under autocast."""
    torch.manual_seed(0)
    mixer = create_mixer('dcnv3', 16, 2)
    x = torch.randn(2, 5, 6, 16)
    for amp, aten, ours in ((False, 1, 0), (True, 0, 1)):
        def step():
            with torch.autocast(**BF16, enabled=amp):
                out = mixer(x.requires_grad_())
            out.float().square().sum().backward()
        names = [e.name for e in _ops(step)]
        assert (names.count('aten::convolution_backward'), names.count('stm_lab::dwconv_weight_grad')) == (aten, ours)


@needs_kernel
@pytest.mark.parametrize('name', ['u_dwconv_test', 'u_internimage_test'])
def test_bf16_gradients_stay_close_to_float32(name):
    """The bf16 step's gradients (every parameter) are float32's within bf16 rounding."""
    torch.manual_seed(0)
    model = T.build_model(name, 32, 10).eval()  # batch norm on 2 images of 1x1 maps would be ill-conditioned
    x = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    grads = []
    for amp in (False, True):
        model.zero_grad(set_to_none=True)
        with torch.autocast(**BF16, enabled=amp):
            out = model(x)
        out.float().square().mean().backward()
        grads.append(torch.cat([p.grad.flatten() for p in model.parameters() if p.grad is not None]))
        assert all(p.grad.dtype == torch.float32 for p in model.parameters() if p.grad is not None)
    assert ((grads[1] - grads[0]).norm() / grads[0].norm()).item() < 0.05


def test_halo_window_gradients_are_summed_in_float32_and_rounded_once():
    """Known answer: the gradient of a key/value map position is the sum of its windows' gradients (up to 16 here:
    windows of 8 every 2 positions per axis). In bf16 it is that exact sum (float64 of the same bf16 values) rounded
    once to bf16, as a matmul's float32 accumulation gives; summing in bf16 rounded after every add and missed it on
    36% of the positions."""
    from stm_lab.mixers.halo import _HaloWindows
    gen = torch.Generator().manual_seed(0)
    rows = cols = (2, 8)  # (step, window)
    kv = torch.zeros(2, 16, 16, 2, 2, 8, dtype=torch.bfloat16, requires_grad=True)
    k, v = _HaloWindows.apply(kv, rows, cols)
    gk, gv = (torch.randn(t.shape, generator=gen).bfloat16() for t in (k, v))
    (got,) = torch.autograd.grad((k, v), kv, (gk, gv))
    kv64 = kv.detach().double().requires_grad_()
    (want,) = torch.autograd.grad(_HaloWindows.apply(kv64, rows, cols), kv64, (gk.double(), gv.double()))
    assert got.dtype == torch.bfloat16 and got.shape == kv.shape
    assert (got == want.bfloat16()).double().mean() >= 0.999
    assert torch.allclose(got.double(), want, rtol=2 ** -8, atol=1e-6)
