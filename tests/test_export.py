"""ONNX export of the trained models (the book's lab): ONNX Runtime's logits against PyTorch's, the int8 weight
rewrite, the size budget."""
import copy

import numpy as np
import pytest
import torch
import torch.nn as nn

import stm_lab  # noqa: F401  (registers the models)
from stm_lab.analysis.run import checkpoint_path, eval_view, load_images
from stm_lab.profiles import PROFILES

MICRO = PROFILES['cpu'].models

onnx = pytest.importorskip('onnx')
pytest.importorskip('onnxruntime')
pytest.importorskip('onnxscript')

from stm_lab import export  # noqa: E402
from stm_lab.training.checkpoint import load_model  # noqa: E402

# PyTorch vs ONNX Runtime (Python), same float32 weights: float rounding only (measured <= 3e-6)
FP32_TOL = 1e-4
# the lab's int8 weights: measured <= 0.1 on the demo photos and 500 validation images
INT8_TOL = 0.25
MODELS_MB_BUDGET = 25


def _val_images(n=500):
    try:
        return load_images(PROFILES['cpu'], n)[0]
    except FileNotFoundError as e:
        pytest.skip(f'Imagenette val not available: {str(e).splitlines()[0]}')


@pytest.fixture(scope='module')
def exported():
    """name -> (model, state, fp32 proto, int8 proto) for the committed cpu checkpoints."""
    out = {}
    for name in MICRO:
        path = checkpoint_path('cpu', name)
        if not path.exists():
            pytest.skip(f'{path} not present')
        model, state = load_model(path)
        d = state['data']
        fp32 = export.export_onnx(model, d['img_size'], d['mean'], d['std'], weights='fp32')
        out[name] = (model, state, fp32, export.int8_weights(copy.deepcopy(fp32)))
    return out


@pytest.fixture(scope='module')
def demo_views():
    """The demo photos' evaluation views (the fixture photos of this test)."""
    from stm_lab.analysis.invariance import view
    from stm_lab.analysis.run import demo_images
    return view(demo_images()[0], 64, crop_pct=0.875)


@pytest.mark.e2e
@pytest.mark.parametrize('name', MICRO)
def test_onnx_logits_match_pytorch(exported, demo_views, name):
    model, state, fp32, int8 = exported[name]
    d = state['data']
    ref = export.torch_logits(model, demo_views, d['mean'], d['std'])
    got32 = export.OnnxClassifier(fp32.SerializeToString())(demo_views)
    got8 = export.OnnxClassifier(int8.SerializeToString())(demo_views)
    assert np.abs(got32 - ref).max() <= FP32_TOL
    assert np.abs(got8 - ref).max() <= INT8_TOL
    # the int8 file is a different file: it must not be the float one
    assert np.abs(got8 - ref).max() > np.abs(got32 - ref).max()


@pytest.mark.e2e
@pytest.mark.parametrize('name', MICRO)
def test_int8_top1_agrees_on_500_val_images(exported, name):
    model, state, _, int8 = exported[name]
    d = state['data']
    x = eval_view(_val_images(), d['img_size'], d['crop_pct'])
    r = export.parity(model, export.OnnxClassifier(int8.SerializeToString()), x, d['mean'], d['std'])
    assert r['n'] == 500
    assert r['top1_agreement'] >= 0.99, r
    assert r['max_abs_diff'] <= INT8_TOL, r


@pytest.mark.e2e
def test_five_int8_models_fit_the_budget(exported):
    sizes = {n: len(v[3].SerializeToString()) for n, v in exported.items()}
    fp32 = sum(len(v[2].SerializeToString()) for v in exported.values())
    assert sum(sizes.values()) <= MODELS_MB_BUDGET * 1e6, sizes
    assert sum(sizes.values()) < 0.35 * fp32  # int8 weights: about a quarter of float32


def test_int8_weights_known_answer():
    w = np.array([[1.0, -0.5, 0.25], [0.0, 0.0, 0.0], [-2.54, 1.27, 0.01]], np.float32)
    q, scale = export.quantize_per_channel(w, 0)
    assert q.dtype == np.int8 and scale.dtype == np.float32
    np.testing.assert_allclose(scale, [1 / 127, 1, 2.54 / 127], rtol=1e-6)  # an all-zero row gets scale 1
    assert q[0].tolist() == [127, -64, 32] and q[1].tolist() == [0, 0, 0] and q[2].tolist() == [-127, 64, 0]
    assert np.abs(q * scale[:, None] - w).max() <= scale.max() / 2 + 1e-7


class Tiny(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, padding=1)
        self.fc = nn.Linear(8, 4)

    def forward(self, x):
        return self.fc(self.conv(x).mean((2, 3)))


def test_int8_rewrite_of_a_small_model():
    torch.manual_seed(0)
    model = Tiny().eval()
    x = torch.rand(5, 3, 16, 16)
    fp32 = export.export_onnx(model, 16, (0.5,) * 3, (0.25,) * 3, weights='fp32')
    int8 = export.int8_weights(copy.deepcopy(fp32), min_size=16)
    ops = [n.op_type for n in int8.graph.node]
    assert ops.count('DequantizeLinear') == 2  # the conv's and the linear's weights; biases stay float
    dtypes = {i.name: i.data_type for i in int8.graph.initializer}
    assert sum(t == onnx.TensorProto.INT8 for t in dtypes.values()) == 2
    ref = export.torch_logits(model, x, (0.5,) * 3, (0.25,) * 3)
    np.testing.assert_allclose(export.OnnxClassifier(fp32.SerializeToString())(x), ref, atol=1e-5)
    got = export.OnnxClassifier(int8.SerializeToString())(x)
    assert 0 < np.abs(got - ref).max() < 0.05
    with pytest.raises(ValueError, match='expected images'):
        export.OnnxClassifier(int8.SerializeToString())(x[:, :, :8])
    with pytest.raises(ValueError, match='weights must be'):
        export.export_onnx(model, 16, weights='fp16')


@pytest.mark.e2e
def test_the_input_gradient_does_not_export_so_the_page_says_so(tmp_path, monkeypatch):
    """The lab page says FGSM on a reader's own photo needs the kernel widget, because torch's exporter cannot
    produce the input gradient: autograd inside ``forward`` fails in torch.export, and the traced forward+backward
    graph (``make_fx`` of ``torch.func.grad``, equal to eager) holds ``aten.convolution_backward``, which has no
    ONNX translation. When a torch release exports it, this fails: then the page can offer FGSM on any photo."""
    import warnings
    import timm
    from torch.func import functional_call, grad
    from torch.fx.experimental.proxy_tensor import make_fx
    from stm_lab.ops import dwconv
    monkeypatch.setattr(dwconv, '_compiled_ok', lambda *a, **k: False)  # autograd.Function has no functorch rule
    torch.manual_seed(0)
    model = timm.create_model('u_dwconv_test', num_classes=10, img_size=32).eval()
    params = {k: v.detach() for k, v in model.named_parameters()}
    buffers = dict(model.named_buffers())
    x, y = torch.rand(1, 3, 32, 32), torch.tensor([3])

    def direction(x, y):
        loss = lambda xx: nn.functional.cross_entropy(functional_call(model, (params, buffers), (xx,)), y)  # noqa
        return grad(loss)(x).sign()

    traced = make_fx(direction, decomposition_table=torch._decomp.core_aten_decompositions())(x, y)
    assert torch.equal(traced(x, y), direction(x, y))
    assert 'aten.convolution_backward.default' in {str(n.target) for n in traced.graph.nodes}
    with warnings.catch_warnings(), pytest.raises(Exception, match='(?i)convert|export'):
        warnings.simplefilter('ignore')
        torch.onnx.export(traced, (x, y), str(tmp_path / 'grad.onnx'), dynamo=True, verbose=False)
