"""The fast attention mixers compute exactly what the straightforward references compute (stm_lab/mixers/reference.py):
outputs and the gradients of the input and of every parameter, in float64, over odd sizes, shifts, halo variants
and reduction ratios. Speed work must never change results."""
import pytest
import torch

from stm_lab.mixers import create_mixer
from stm_lab.mixers import reference as R

TOL = dict(rtol=0, atol=1e-10)
pytestmark = pytest.mark.usefixtures('one_thread')  # tests/conftest.py: tiny tensors, one thread is fastest


def randomize(m):
    """float64, and position tables large enough to matter (they start near zero)."""
    torch.manual_seed(0)
    m = m.double()
    with torch.no_grad():
        for name, p in m.named_parameters():
            if 'rel' in name or 'bias' in name:
                p.normal_(0, 1.0)
    return m


def check(m, ref, x, **kw):
    """Output and all gradients of m(x) against ref(m, x), for the same upstream gradient."""
    m.zero_grad(set_to_none=True)
    x1 = x.clone().requires_grad_(True)
    x2 = x.clone().requires_grad_(True)
    g = torch.randn_like(x)
    out = m(x1, **kw) if kw else m(x1)
    out.backward(g)
    grads = {n: p.grad.clone() for n, p in m.named_parameters()}
    m.zero_grad(set_to_none=True)
    expected = ref(m, x2)
    expected.backward(g)
    torch.testing.assert_close(out, expected, **TOL)
    torch.testing.assert_close(x1.grad, x2.grad, **TOL)
    for n, p in m.named_parameters():
        assert grads[n] is not None and p.grad is not None, n
        torch.testing.assert_close(grads[n], p.grad, **TOL, msg=lambda s: f'{n}: {s}')
    with torch.no_grad():  # inference may take another path
        torch.testing.assert_close(m(x), expected.detach(), **TOL)


SIZES = [(1, 1), (2, 9), (5, 7), (9, 13), (16, 11)]  # odd sizes: padding, partial blocks and windows


@pytest.mark.parametrize('H,W', SIZES)
@pytest.mark.parametrize('block,halo,centric,switch,block_index', [
    (4, 2, True, False, 0),    # the micro model at 64x64
    (3, 1, True, False, 0),    # 1px
    (3, 0, True, False, 0),    # halo 0
    (3, 2, False, False, 0),   # shift (non-centric)
    (3, 2, True, True, 0),     # switch, even block: halo 0
    (3, 2, True, True, 1),     # switch, odd block
    (2, 3, True, False, 0),    # halo wider than the block
    (7, 3, True, False, 0),    # the paper's 224 setting
])
@pytest.mark.parametrize('heads', [1, 2])
def test_halo_matches_reference(H, W, block, halo, centric, switch, block_index, heads):
    m = randomize(create_mixer('halo_attn', 8, heads, block=block, halo=halo, centric=centric, switch=switch,
                               block_index=block_index))
    check(m, R.halo_attention, torch.randn(2, H, W, 8, dtype=torch.float64))


@pytest.mark.parametrize('H,W', [(5, 7), (9, 13)])
def test_halo_attention_probs_match_reference(H, W):
    m = randomize(create_mixer('halo_attn', 8, 2, block=3, halo=2))
    x = torch.randn(2, H, W, 8, dtype=torch.float64)
    with torch.no_grad():
        torch.testing.assert_close(m.attention_probs(x), R.halo_attention_probs(m, x), **TOL)


@pytest.mark.parametrize('H,W', SIZES + [(12, 12), (4, 9), (10, 3)])  # + a side equal to / under window 4
@pytest.mark.parametrize('window,shift,block_index', [
    (4, None, 0), (4, None, 1), (4, 1, 1), (3, None, 1), (7, None, 1), (2, None, 1),
])
@pytest.mark.parametrize('heads', [1, 2])
def test_swin_matches_reference(H, W, window, shift, block_index, heads):
    m = randomize(create_mixer('sw_attn', 8, heads, window=window, shift=shift, block_index=block_index))
    check(m, R.swin_attention, torch.randn(2, H, W, 8, dtype=torch.float64))


@pytest.mark.parametrize('H,W', [(1, 1), (5, 7), (9, 13), (16, 16)])
@pytest.mark.parametrize('sr', [1, 2, 3, 4, 8])
@pytest.mark.parametrize('heads', [1, 2])
def test_sr_attention_matches_reference(H, W, sr, heads):
    m = randomize(create_mixer('sr_attn', 8, heads, sr_ratio=sr))
    check(m, R.sr_attention, torch.randn(2, H, W, 8, dtype=torch.float64))


@pytest.mark.parametrize('mixer,opts,size', [
    ('halo_attn', dict(block=4, halo=2), (8, 12)),
    ('sw_attn', dict(window=4, block_index=1), (8, 12)),
    ('sr_attn', dict(sr_ratio=2), (8, 12)),
])
def test_float32_and_caches_do_not_change_results(mixer, opts, size):
    """float32 stays close to the float64 reference; a second call (cached masks/indices) gives the same."""
    torch.manual_seed(0)
    m = create_mixer(mixer, 16, 2, **opts)
    x = torch.randn(2, *size, 16)
    ref = {'halo_attn': R.halo_attention, 'sw_attn': R.swin_attention, 'sr_attn': R.sr_attention}[mixer]
    with torch.no_grad():
        first, second = m(x), m(x)
        expected = ref(m.double(), x.double()).float()
    assert torch.equal(first, second)
    torch.testing.assert_close(first, expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize('mixer,opts', [
    ('halo_attn', dict(block=4, halo=2)), ('sw_attn', dict(window=4, block_index=1)), ('sr_attn', dict(sr_ratio=2)),
])
def test_bf16_autocast_runs_and_stays_close(mixer, opts):
    """Under CPU bf16 autocast the custom autograd functions keep dtypes consistent (softmax in float32) and the
    result stays within bf16 rounding of float32, gradients included."""
    torch.manual_seed(0)
    m = create_mixer(mixer, 32, 2, **opts)
    x = torch.randn(2, 9, 13, 32)
    g = torch.randn_like(x)
    outs, grads = [], []
    for amp in (False, True):
        xi = x.clone().requires_grad_(True)
        with torch.autocast('cpu', dtype=torch.bfloat16, enabled=amp):
            out = m(xi)
        out.float().backward(g)
        outs.append(out)
        grads.append(xi.grad)
    assert outs[1].dtype == torch.bfloat16 and torch.isfinite(grads[1]).all()
    rel = lambda a, b: ((a.float() - b).norm() / b.norm()).item()  # noqa: E731
    assert rel(outs[1], outs[0]) < 0.05 and rel(grads[1], grads[0]) < 0.05
