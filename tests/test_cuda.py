"""The GPU paths: the committed models, the DCNv3 core and a training run on CUDA agree with the CPU.

Skipped where no CUDA device is present (CI has none). Run on a GPU machine with
``python -m pytest tests/test_cuda.py`` (the device check in ``.ci/device-check`` does that and more).
TF32 is switched off so that float32 on the GPU is float32: the tolerances below are rounding-level.
"""
import json

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file

from stm_lab import results, training
from stm_lab.data import BatchFinish, DataConfig, image_transform, load_dataset
from stm_lab.ops import dcnv3_core

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason='needs a CUDA GPU')
CPU_WEIGHTS = results.RESULTS_DIR / 'cpu'


@pytest.fixture(autouse=True)
def exact_float32():
    old = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    yield
    torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = old


def _fixture_batch(record, n=32):
    """The first ``n`` fixture val photos through the eval pipeline the checkpoint records."""
    rec = record['data']
    cfg = DataConfig(dataset='fixture', img_size=rec['img_size'], crop_pct=rec['crop_pct'],
                     interpolation=rec['interpolation'], mean=tuple(rec['mean']), std=tuple(rec['std']))
    ds = load_dataset(cfg, 'val', image_transform(cfg, False))
    x = torch.stack([ds[i][0] for i in range(n)])
    y = torch.tensor([ds[i][1] for i in range(n)])
    return BatchFinish(cfg, False)(x), y


@pytest.mark.parametrize('name', training.MICRO_MODELS)
def test_committed_models_give_the_same_logits_and_gradients_on_cuda(name):
    path = CPU_WEIGHTS / f'{name}.safetensors'
    if not path.exists():
        pytest.skip(f'{path} not present')
    model, record = training.load_model(path)
    x, y = _fixture_batch(record)
    out = {}
    for dev in ('cpu', 'cuda'):
        m = model.to(dev)
        m.zero_grad()
        logits = m(x.to(dev))
        loss = F.cross_entropy(logits, y.to(dev))
        loss.backward()
        out[dev] = (logits.detach().cpu(), loss.item(),
                    {k: p.grad.detach().cpu().clone() for k, p in m.named_parameters() if p.grad is not None})
    (lc, sc, gc), (lg, sg, gg) = out['cpu'], out['cuda']
    assert torch.equal(lc.argmax(1), lg.argmax(1))
    assert (lc - lg).abs().max() <= 1e-3 * lc.abs().max()
    assert sg == pytest.approx(sc, rel=1e-4)
    assert gc.keys() == gg.keys() and len(gc) > 10
    for k in gc:
        assert (gc[k] - gg[k]).abs().max() <= 1e-3 * gc[k].abs().max() + 1e-7, k


@pytest.mark.parametrize('stride,dilation,group', [(1, 1, 4), (2, 2, 2)])
def test_dcnv3_core_on_cuda_matches_the_cpu_and_auto_takes_the_torch_path(stride, dilation, group):
    g = torch.Generator().manual_seed(0)
    n, h, w, c, k = 2, 13, 10, 8 * group, 9
    h_out, w_out = (h + 2 - (2 * dilation + 1)) // stride + 1, (w + 2 - (2 * dilation + 1)) // stride + 1
    inputs = [torch.randn(n, h, w, c, generator=g),
              6 * torch.randn(n, h_out, w_out, group * k * 2, generator=g),  # large: many points leave the image
              torch.rand(n, h_out, w_out, group * k, generator=g)]
    res = {}
    for dev in ('cpu', 'cuda'):
        ts = [t.detach().to(dev).requires_grad_() for t in inputs]
        y = dcnv3_core(*ts, kernel_size=3, stride=stride, pad=1, dilation=dilation, group=group, offset_scale=1.0,
                       backend='auto')
        (y * torch.linspace(-1, 1, y.numel(), device=dev).view_as(y)).sum().backward()
        res[dev] = [y.detach().cpu()] + [t.grad.cpu() for t in ts]
    for a, b in zip(res['cpu'], res['cuda']):
        assert torch.allclose(a, b, atol=1e-4, rtol=1e-4)
    with pytest.raises(RuntimeError, match='runs on the CPU'):
        dcnv3_core(*[t.cuda() for t in inputs], kernel_size=3, stride=stride, pad=1, dilation=dilation,
                   group=group, offset_scale=1.0, backend='cpp')


def test_fp16_amp_training_on_cuda_resumes_where_it_stopped(tmp_path, monkeypatch, crash_in_second_epoch):
    """A smoke run with the GPU's fp16 autocast and gradient scaler, interrupted and resumed, ends where an
    uninterrupted run ends (deterministic kernels), and records the GPU it ran on."""
    monkeypatch.setenv('CUBLAS_WORKSPACE_CONFIG', ':4096:8')
    torch.use_deterministic_algorithms(True, warn_only=True)
    monkeypatch.setattr(results, 'RESULTS_DIR', tmp_path / 'results')
    cfg = training.profile_config('u_swin_test', 'smoke', amp='fp16')
    kw = dict(limit_val=40, progress=False)
    try:
        with pytest.raises(KeyboardInterrupt):
            training.train(cfg, tmp_path / 'b', resume='none', command='b', **kw)
        crash_in_second_epoch()  # lifts the interruption
        resumed = training.train(cfg, tmp_path / 'b', resume='auto', command='b2', **kw)
        ref = training.train(cfg, tmp_path / 'a', resume='none', command='a', **kw)
    finally:
        torch.use_deterministic_algorithms(False)
    state = json.loads((tmp_path / 'b' / 'last.json').read_text())
    assert state['scaler'] and state['scaler']['scale'] > 0  # the gradient scaler's state is checkpointed
    a, b = load_file(tmp_path / 'a' / 'last.safetensors'), load_file(tmp_path / 'b' / 'last.safetensors')
    assert a.keys() == b.keys()
    worst = max((a[k].float() - b[k].float()).abs().max().item() for k in a if a[k].is_floating_point())
    assert worst <= 1e-5, worst
    assert resumed['top1'] == pytest.approx(ref['top1'], abs=2.5)  # at most one of 40 images differs
    prov = results.load_result('smoke', 'train_u_swin_test')['provenance']
    assert prov['gpu'] == torch.cuda.get_device_name(0)
