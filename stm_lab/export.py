"""The trained models as ONNX files, for the book's in-browser lab (ONNX Runtime Web) and any other runtime.

::

    stm-lab lab build --profile cpu           -> book/_static/lab/models/<model>.onnx
    stm-lab lab check --profile cpu           -> results/cpu/lab_export.json (exported vs PyTorch)

What a file holds: the model *with its input normalization* (:class:`~stm_lab.analysis.common.PixelSpace`), so it
takes ``image``, float32 ``(1, 3, S, S)`` RGB in [0, 1] at the checkpoint's fixed size S, and returns ``logits``
``(1, classes)``. Exported with torch's dynamo exporter (``torch.onnx.export(..., dynamo=True)``) at that fixed
size: window masks and index buffers are baked for it. The legacy TorchScript exporter cannot be used (it fails on
two ``Tensor.unfold`` calls in a row). U-InternImage is traced on the pure-PyTorch DCNv3 path (``grid_sample``,
ONNX ``GridSample``): the compiled CPU kernel is a custom autograd Function that export cannot see into.

Weights (``weights=``):

- ``'fp32'``: as trained; ONNX Runtime's logits equal PyTorch's within float rounding (about 1e-5).
- ``'int8'`` (what the lab ships): weight-only int8, computed in float32. Every weight of a ``MatMul``, ``Conv``
  or ``Gemm`` is stored as int8 with one scale per output channel (symmetric, max ``|w|`` -> 127) and turned back into
  float32 by an ONNX ``DequantizeLinear`` in front of its operator, which ONNX Runtime folds into a constant when
  the session starts (:data:`SESSION_CONFIG`); activations are never quantized. About a
  quarter of the float32 size (the five micro models: 22 MB instead of 79 MB), logits within about 0.1 of
  PyTorch's and the same top-1 on 99-100% of validation images (``results/cpu/lab_export.json``).
  ONNX Runtime's own ``quantize_dynamic`` was tried first and dropped: it also quantizes activations
  (``DynamicQuantizeLinear``), which moved U-DWConv's top-1 on 1.4% of 500 validation images; its weight-only
  quantizer (``MatMulNBits``) covers ``MatMul`` but not ``Conv``, whose float32 weights alone would break the
  lab's 25 MB budget. The rewrite here is a few lines of standard ONNX (``DequantizeLinear`` with ``axis``,
  opset >= 13), which every runtime runs.

The exporter's per-node metadata (source locations, about 1 MB per model) is dropped, and int64 ``Gather``
index tables (U-HaloNet's windows) are stored as int32.
"""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Dict, Optional, Tuple

import numpy as np
import torch
import torch.nn as nn

WEIGHT_FORMATS = ('fp32', 'int8')
EXPORT_VERSION = 1  # raise when a change here changes the files (the lab rebuilds its models)
INPUT_NAME, OUTPUT_NAME = 'image', 'logits'
# weights smaller than this stay float32 (norms, biases, layer scales: a few kB in all)
MIN_QUANTIZED_SIZE = 1024


def _require_onnx():
    try:
        import onnx  # noqa: F401
        import onnxscript  # noqa: F401  (the dynamo exporter needs it)
    except ImportError as e:
        raise ImportError(f'exporting to ONNX needs the packages onnx and onnxscript ({e}); '
                          f'pip install -e . installs them') from None


def export_onnx(model: nn.Module, img_size: int, mean=None, std=None, weights: str = 'int8'):
    """``model`` (any classifier taking normalized ``(B, 3, S, S)`` images) -> an ``onnx.ModelProto`` taking
    [0, 1] images of ``(1, 3, img_size, img_size)`` (normalization inside, ``mean``/``std`` as
    :class:`~stm_lab.analysis.common.PixelSpace`). ``weights``: ``'fp32'`` or ``'int8'`` (module docstring)."""
    _require_onnx()
    if weights not in WEIGHT_FORMATS:
        raise ValueError(f'weights must be one of {WEIGHT_FORMATS}, got {weights!r}')
    from .analysis.common import PixelSpace
    from .ops.dcnv3 import dcnv3_backend
    net = PixelSpace(model, mean, std).eval()
    x = torch.zeros(1, 3, img_size, img_size)
    quiet = logging.getLogger('onnx_ir')  # warns about every empty attribute list the exporter writes
    level = quiet.level
    quiet.setLevel(logging.ERROR)
    try:
        with dcnv3_backend('torch'), torch.no_grad():
            program = torch.onnx.export(net, (x,), dynamo=True, input_names=[INPUT_NAME],
                                        output_names=[OUTPUT_NAME], verbose=False, report=False)
    finally:
        quiet.setLevel(level)
    proto = program.model_proto
    strip_metadata(proto)
    return int8_weights(proto) if weights == 'int8' else proto


def strip_metadata(proto) -> None:
    """Drop what a runtime does not read: per-node metadata (the exporter's source locations), doc strings and
    intermediate value_info."""
    for node in proto.graph.node:
        del node.metadata_props[:]
        node.doc_string = ''
    del proto.graph.value_info[:]


def _weight_axis(uses) -> Optional[int]:
    """The output-channel axis of an initializer if every use is as the weight of a MatMul, Conv or Gemm (and they
    agree), else None."""
    axes = set()
    for node, k in uses:
        if k != 1:
            return None
        if node.op_type == 'MatMul':  # (in, out)
            axes.add(-1)
        elif node.op_type == 'Conv':  # (out, in / groups, kh, kw)
            axes.add(0)
        elif node.op_type == 'Gemm':
            trans_b = next((a.i for a in node.attribute if a.name == 'transB'), 0)
            axes.add(0 if trans_b else 1)
        else:
            return None
    return axes.pop() if len(axes) == 1 else None


def quantize_per_channel(w: np.ndarray, axis: int) -> Tuple[np.ndarray, np.ndarray]:
    """Symmetric int8: ``w ~ q * scale`` with one scale per index of ``axis`` (max ``|w|`` maps to 127).
    Returns (q int8, scale float32); an all-zero channel gets scale 1."""
    axis = axis % w.ndim
    reduce = tuple(i for i in range(w.ndim) if i != axis)
    scale = (np.abs(w).max(axis=reduce) / 127).astype(np.float32)
    scale[scale == 0] = 1
    shape = [1] * w.ndim
    shape[axis] = -1
    q = np.clip(np.rint(w / scale.reshape(shape)), -127, 127).astype(np.int8)
    return q, scale


def int8_weights(proto, min_size: int = MIN_QUANTIZED_SIZE):
    """Weight-only int8 (module docstring), in place; returns ``proto``. Also stores int64 Gather indices as
    int32 when they fit."""
    from onnx import helper, numpy_helper
    g = proto.graph
    uses: Dict[str, list] = {}
    for node in g.node:
        for k, name in enumerate(node.input):
            uses.setdefault(name, []).append((node, k))
    inits, dequant = [], []
    for init in g.initializer:
        a = numpy_helper.to_array(init)
        u = uses.get(init.name, [])
        if (a.dtype == np.int64 and u and all(n.op_type == 'Gather' and k == 1 for n, k in u)
                and a.size and np.abs(a).max() < 2 ** 31):
            inits.append(numpy_helper.from_array(a.astype(np.int32), init.name))
            continue
        axis = _weight_axis(u) if u else None
        if a.dtype != np.float32 or a.size < min_size or axis is None:
            inits.append(init)
            continue
        axis = axis % a.ndim
        q, scale = quantize_per_channel(a, axis)
        inits += [numpy_helper.from_array(q, init.name + '_int8'), numpy_helper.from_array(scale, init.name + '_scale')]
        dequant.append(helper.make_node('DequantizeLinear', [init.name + '_int8', init.name + '_scale'], [init.name],
                                        axis=axis, name=init.name + '_dequantize'))
    del g.initializer[:]
    g.initializer.extend(inits)
    nodes = dequant + list(g.node)
    del g.node[:]
    g.node.extend(nodes)
    return proto


def save(proto, path) -> Path:
    """One self-contained file (no external data), written atomically."""
    import onnx
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + '.tmp')
    onnx.save_model(proto, str(tmp), save_as_external_data=False)
    tmp.replace(path)
    return path


#: ONNX Runtime's session settings for these files, in Python and in the browser (book/_static/lab/lab.js); they
#: fold each DequantizeLinear of an int8 weight into a float32 constant when the session is created. Without it, ONNX
#: Runtime's QDQ optimizer treats the weights as quantized operators and runs those products in int8 (measured:
#: logits up to 0.02 further from PyTorch, and a different answer in every runtime).
SESSION_CONFIG = {'session.disable_quant_qdq': '1'}


class OnnxClassifier:
    """An exported model in ONNX Runtime (CPU, one thread by default, :data:`SESSION_CONFIG`): ``clf(x)`` with
    ``x`` float32 ``(N, 3, S, S)`` in [0, 1] -> logits ``(N, classes)`` (the file takes one image at a time)."""

    def __init__(self, path_or_bytes, threads: int = 1):
        import onnxruntime as ort
        so = ort.SessionOptions()
        so.intra_op_num_threads = threads
        so.inter_op_num_threads = 1
        for key, value in SESSION_CONFIG.items():
            so.add_session_config_entry(key, value)
        so.log_severity_level = 3  # the folded int8 initializers are reported as unused, one warning each
        src = path_or_bytes if isinstance(path_or_bytes, bytes) else str(path_or_bytes)
        self.session = ort.InferenceSession(src, so, providers=['CPUExecutionProvider'])
        shape = self.session.get_inputs()[0].shape
        self.img_size = int(shape[-1])

    def __call__(self, x) -> np.ndarray:
        x = np.asarray(x.detach().cpu() if isinstance(x, torch.Tensor) else x, dtype=np.float32)
        if x.ndim != 4 or x.shape[1:] != (3, self.img_size, self.img_size):
            raise ValueError(f'expected images (N, 3, {self.img_size}, {self.img_size}), got {x.shape}')
        return np.concatenate([self.session.run(None, {INPUT_NAME: x[i:i + 1]})[0] for i in range(len(x))])


@torch.no_grad()
def torch_logits(model: nn.Module, x: torch.Tensor, mean, std, batch_size: int = 50) -> np.ndarray:
    """PyTorch's logits for [0, 1] images (same normalization as the export)."""
    from .analysis.common import PixelSpace
    net = PixelSpace(model, mean, std).eval()
    return torch.cat([net(x[i:i + batch_size]) for i in range(0, len(x), batch_size)]).numpy()


def parity(model: nn.Module, clf: OnnxClassifier, x: torch.Tensor, mean, std) -> dict:
    """How closely an exported model follows PyTorch on images ``x`` ([0, 1], at the model's size):
    ``max_abs_diff`` of the logits, ``top1_agreement`` (share of equal argmax), ``n``."""
    ref = torch_logits(model, x, mean, std)
    out = clf(x)
    return dict(n=len(x), max_abs_diff=float(np.abs(out - ref).max()),
                top1_agreement=float((out.argmax(1) == ref.argmax(1)).mean()))
