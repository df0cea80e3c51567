"""Depth-wise convolution with a fast CPU backward: ``depthwise_conv2d(x, weight, bias)``.

The same numbers as ``F.conv2d(x, weight, bias, padding=k // 2, groups=C)`` (odd square-or-not kernels, stride 1,
dilation 1, zero padding), value and gradients. Only the backward differs: PyTorch's CPU weight gradient for
depth-wise convolutions is 10-100x slower than the forward on small maps (measured at U-DWConv-micro's shapes,
batch 64: 20 ms for a 7x7 kernel over 4x4 maps with 128 channels, against 0.5 ms for the forward), and it made up
about a third of a U-DWConv-micro training step. Here:

- the forward is ``F.conv2d`` (oneDNN, fast);
- the input gradient is another ``F.conv2d`` of the output gradient with the flipped kernel (the transposed
  convolution of a stride-1 "same" convolution);
- the weight gradient comes from the compiled kernel ``ops/dwconv_cpu.cpp`` (each kernel tap visits only the
  positions where it overlaps the map), or from ``torch.ops.aten.convolution_backward`` where it is not built;
- the bias gradient is a sum.

Reduced precision (CPU autocast to bf16 / fp16, or bf16 / fp16 tensors) keeps the compiled weight gradient: the
kernel reads bf16 / fp16 and sums in float32. Under autocast the op returns what autocast's ``conv2d`` returns (the
output in the low dtype; x's gradient in x's dtype), and the float32 weight and bias get float32 gradients, summed in
float32 and never rounded to bf16. The two convolutions run in the low dtype where oneDNN takes it
(``torch.ops.mkldnn._is_mkldnn_bf16_supported()``: AVX512 or bf16 units; weight and bias cast to it), else in float32
on the stored values (x and the output gradient are exact in float32), the results cast back: PyTorch's own bf16
depth-wise convolution, the fallback without oneDNN, is 100-200x slower than float32's (measured on an AMD EPYC with
AVX2 at U-DWConv-micro's shapes, batch 32: 135 ms against 0.6 ms for the forward over 16x16 maps, 32 channels).
Under autocast aten's path would also take oneDNN's slow depth-wise weight gradient (above). float32 and float64
calls outside autocast are unchanged.

``backend``: "auto" (compiled weight gradient on CPU tensors when built, else PyTorch's autograd), "torch"
(plain ``F.conv2d`` autograd, the reference), "cpp" (require the compiled kernel). Double backward needs "torch".
"""
from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F
from torch.autograd.function import once_differentiable

from . import _build

BACKENDS = ('auto', 'torch', 'cpp')


def conv_dtype(dtype: torch.dtype) -> torch.dtype:
    """The dtype the convolutions of a call stored in ``dtype`` run in: ``dtype`` itself where oneDNN takes it
    (float32, float64; bf16 / fp16 on CPUs with the instructions for them), else float32 (module docstring)."""
    if dtype == torch.bfloat16 and not torch.ops.mkldnn._is_mkldnn_bf16_supported():
        return torch.float32
    if dtype == torch.float16 and not torch.ops.mkldnn._is_mkldnn_fp16_supported():
        return torch.float32
    return dtype


def _conv(x, weight, bias, pad, dtype):
    """The convolution computed in :func:`conv_dtype` of ``dtype`` (x, weight and bias cast to it), outside autocast,
    the result in ``dtype``. For float32 / float64 tensors in their own dtype: exactly ``F.conv2d``."""
    work = conv_dtype(dtype)
    with torch.autocast(x.device.type, enabled=False):
        return F.conv2d(x.to(work), weight.to(work), None if bias is None else bias.to(work), padding=pad,
                        groups=x.shape[1]).to(dtype)


class _DepthwiseConv(torch.autograd.Function):
    """Stored in ``dtype`` (autocast's, or the tensors' own): the casts happen in here, outside autograd, so the
    gradients come back in each input's own dtype (float32 for the float32 weight and bias under autocast) without a
    cast node per input."""

    @staticmethod
    def forward(ctx, x, weight, bias, pad, dtype):
        ctx.pad, ctx.has_bias = pad, bias is not None
        ctx.dtypes = x.dtype, weight.dtype, None if bias is None else bias.dtype
        weight = weight.to(conv_dtype(dtype))  # no copies in float32 / float64
        ctx.save_for_backward(x.to(dtype), weight)  # x as the weight gradient reads it, beside grad (in dtype)
        return _conv(x, weight, bias, pad, dtype)

    @staticmethod
    @once_differentiable
    def backward(ctx, grad):
        x, weight = ctx.saved_tensors  # weight: in the convolutions' dtype
        C, (kh, kw), (ph, pw) = x.shape[1], weight.shape[-2:], ctx.pad
        gx = gw = gb = None
        with torch.autocast(x.device.type, enabled=False):
            grad = grad.to(x.dtype)
            g_conv = grad.to(weight.dtype)  # the convolutions' dtype (float32 for bf16 x on CPUs without bf16)
            if ctx.needs_input_grad[0]:  # "same" stride-1 convolution: its transpose is the flipped-kernel one
                gx = F.conv2d(g_conv, weight.flip(-2, -1), padding=(kh - 1 - ph, kw - 1 - pw), groups=C)
                gx = gx.to(ctx.dtypes[0])
            if ctx.needs_input_grad[1]:  # read in x's dtype, summed in float32 for bf16 / fp16
                g_cl = grad.permute(0, 2, 3, 1).contiguous()  # (N, H, W, C): free when grad is channels-last already
                x_cl = x.permute(0, 2, 3, 1).contiguous()
                gw = torch.ops.stm_lab.dwconv_weight_grad(g_cl, x_cl, kh, kw, ph, pw).to(ctx.dtypes[1])
            if ctx.has_bias and ctx.needs_input_grad[2]:  # bf16 / fp16 summed in float32 (from g_conv if it is)
                wide = torch.promote_types(grad.dtype, torch.float32)
                src = g_conv if g_conv.dtype == wide else grad
                gb = src.sum((0, 2, 3)) if src.dtype == wide else src.sum((0, 2, 3), dtype=wide)
                gb = gb.to(ctx.dtypes[2])
        return gx, gw, gb, None, None


FLOATS = (torch.float64, torch.float32, torch.bfloat16, torch.float16)


def _dtype(x, weight, bias) -> Optional[torch.dtype]:
    """The one dtype the convolution is stored in: autocast's where CPU autocast would cast (it casts float32, bf16
    and fp16 tensors, never float64), else the tensors' own when they agree, else None."""
    tensors = [t for t in (x, weight, bias) if t is not None]
    if x.device.type == 'cpu' and torch.is_autocast_enabled('cpu') and all(t.dtype in FLOATS[1:] for t in tensors):
        return torch.get_autocast_dtype('cpu')
    return x.dtype if x.dtype in FLOATS and all(t.dtype == x.dtype for t in tensors) else None


def _compiled_ok(required: bool) -> bool:
    if _build.load() is None:
        if required:
            raise RuntimeError(f'depthwise_conv2d(backend="cpp"): the compiled kernel is unavailable '
                               f'({_build.LOADER.error})')
        return False
    return True


def depthwise_conv2d(x: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor] = None,
                     backend: str = 'auto') -> torch.Tensor:
    """``F.conv2d(x, weight, bias, padding=k // 2, groups=C)`` for x (N, C, H, W) (any memory format) and weight
    (C, 1, kh, kw) with odd kh, kw; see the module docstring for ``backend``."""
    if backend not in BACKENDS:
        raise ValueError(f'unknown backend {backend!r}; valid: {", ".join(BACKENDS)}')
    if x.dim() != 4 or weight.dim() != 4 or weight.shape[0] != x.shape[1] or weight.shape[1] != 1:
        raise ValueError(f'depthwise_conv2d: expected x (N, C, H, W) and weight (C, 1, kh, kw), got '
                         f'{tuple(x.shape)} and {tuple(weight.shape)}')
    kh, kw = weight.shape[-2:]
    if kh % 2 == 0 or kw % 2 == 0:
        raise ValueError(f'depthwise_conv2d: the kernel must have odd sides, got {kh}x{kw}')
    pad = (kh // 2, kw // 2)
    grads = torch.is_grad_enabled() and (x.requires_grad or weight.requires_grad)
    dtype = _dtype(x, weight, bias)
    if backend == 'cpp' and (x.device.type != 'cpu' or dtype is None):
        raise RuntimeError(f'depthwise_conv2d(backend="cpp"): the compiled weight gradient takes CPU tensors of one '
                           f'dtype (float64, float32, bfloat16, float16; or CPU autocast), got {x.dtype}, '
                           f'{weight.dtype} on {x.device}')
    if backend == 'torch' or x.device.type != 'cpu' or dtype is None:
        return F.conv2d(x, weight, bias, padding=pad, groups=x.shape[1])
    if grads and _compiled_ok(required=backend == 'cpp'):
        return _DepthwiseConv.apply(x, weight, bias, pad, dtype)
    return _conv(x, weight, bias, pad, dtype)  # no backward, or none compiled: PyTorch's autograd
