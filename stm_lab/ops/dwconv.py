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


class _DepthwiseConv(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, weight, bias, pad):
        ctx.pad = pad
        ctx.has_bias = bias is not None
        ctx.save_for_backward(x, weight)
        return F.conv2d(x, weight, bias, padding=pad, groups=x.shape[1])

    @staticmethod
    @once_differentiable
    def backward(ctx, grad):
        x, weight = ctx.saved_tensors
        C, (kh, kw), (ph, pw) = x.shape[1], weight.shape[-2:], ctx.pad
        gx = gw = gb = None
        if ctx.needs_input_grad[0]:  # "same" stride-1 convolution: its transpose is the flipped-kernel convolution
            gx = F.conv2d(grad, weight.flip(-2, -1), padding=(kh - 1 - ph, kw - 1 - pw), groups=C)
        if ctx.needs_input_grad[1]:
            g_cl = grad.permute(0, 2, 3, 1).contiguous()  # (N, H, W, C): free when grad is channels-last already
            x_cl = x.permute(0, 2, 3, 1).contiguous()
            gw = torch.ops.stm_lab.dwconv_weight_grad(g_cl, x_cl, kh, kw, ph, pw)
        if ctx.has_bias and ctx.needs_input_grad[2]:
            gb = grad.sum((0, 2, 3))
        return gx, gw, gb, None


def _compiled_ok(x: torch.Tensor, weight: torch.Tensor, required: bool) -> bool:
    if x.device.type != 'cpu' or x.dtype not in (torch.float32, torch.float64) or weight.dtype != x.dtype:
        if required:
            raise RuntimeError(f'depthwise_conv2d(backend="cpp"): the compiled weight gradient takes float32/float64 '
                               f'CPU tensors, got {x.dtype} on {x.device}')
        return False
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
    # under autocast the convolution runs in bf16/fp16, which the compiled weight gradient does not take
    plain = backend == 'torch' or not grads or (torch.is_autocast_enabled(x.device.type) and backend == 'auto')
    if plain or not _compiled_ok(x, weight, required=backend == 'cpp'):
        return F.conv2d(x, weight, bias, padding=pad, groups=x.shape[1])
    return _DepthwiseConv.apply(x, weight, bias, pad)
