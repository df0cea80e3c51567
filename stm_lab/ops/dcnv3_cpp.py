"""The compiled DCNv3 core (``ops/dcnv3_cpu.cpp``) as an autograd function.

Use it through ``stm_lab.ops.dcnv3_core(..., backend="cpp" | "auto")``, which validates the arguments first. The
kernel stores float64, float32 or bfloat16 and computes in float64 (float64 inputs) or float32 (all others). Which
storage a call gets (:func:`dcnv3_core_cpp`):

- a bfloat16 input is read as bfloat16, never copied to float32 (the case of CPU autocast, where the input, offset
  and mask all arrive as bfloat16). Offset and mask are taken as bfloat16 when both are, else as float32: a
  float32 or float16 one is not rounded to bfloat16 (a bf16 offset of 5.3 pixels is off by up to 1/64 pixel;
  measured on random inputs with offsets of 2-6 pixels, rounding float32 offsets and mask to bf16 made the output's
  mean error 5-12x that of rounding the output itself to bf16), and float16/bfloat16 -> float32 is exact. The
  output has the offset's storage dtype, which is then the promoted dtype of the three.
- everything else as before: all three in the promoted dtype, at least float32 (float16 computes in float32), and
  the result cast back to the promoted dtype, as the pure-PyTorch path does.

The result's dtype is always the promoted dtype of the three inputs, the gradients' their inputs' dtypes. Its
backward is hand-written and not itself differentiable (``once_differentiable``): double backward needs
``backend="torch"``.
"""
from __future__ import annotations

import torch
from torch.autograd.function import once_differentiable

from . import _build


def available() -> bool:
    """True when the compiled kernel is built (building it now if needed) and loaded."""
    return _build.load() is not None


def usable(input, offset, mask, required: bool = False) -> bool:
    """Whether the compiled kernel can run on these tensors; with ``required``, raise instead of returning False."""
    tensors = (input, offset, mask)
    if any(t.device.type != 'cpu' for t in tensors):
        if required:
            raise RuntimeError(f'dcnv3_core(backend="cpp"): the compiled kernel runs on the CPU, got tensors on '
                               f'{sorted({str(t.device) for t in tensors})}; use backend="torch" or "auto"')
        return False
    n, h, w, c = input.shape
    if (h + 3) * (w + 3) * c >= 2 ** 31:  # the kernel addresses one image with int32 offsets
        if required:
            raise RuntimeError(f'dcnv3_core(backend="cpp"): one {h}x{w}x{c} image is too large for the compiled '
                               f'kernel (limit about 2^31 elements); use backend="torch"')
        return False
    if _build.load() is None:
        if required:
            raise RuntimeError(f'dcnv3_core(backend="cpp"): the compiled kernel is unavailable ({_build.LOADER.error})')
        return False
    return True


class _DCNv3Function(torch.autograd.Function):
    @staticmethod
    def forward(ctx, input, offset, mask, geometry):
        ctx.geometry = geometry
        ctx.save_for_backward(input, offset, mask)
        return torch.ops.stm_lab.dcnv3_forward(input, offset, mask, *geometry)

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_out):
        input, offset, mask = ctx.saved_tensors
        grads = torch.ops.stm_lab.dcnv3_backward(grad_out.contiguous(), input, offset, mask, *ctx.geometry)
        return (*grads, None)


def dcnv3_core_cpp(input, offset, mask, kernel, stride, pad, dilation, group, offset_scale):
    """Compiled DCNv3 core; the arguments are assumed checked (pairs for kernel, stride, pad, dilation). Storage
    dtypes: see the module docstring."""
    out_dtype = torch.promote_types(torch.promote_types(input.dtype, offset.dtype), mask.dtype)
    if input.dtype == torch.bfloat16 and out_dtype in (torch.bfloat16, torch.float32):
        dtype, param_dtype = torch.bfloat16, out_dtype  # offset, mask and output: bf16 if all are, else float32
    else:
        dtype = param_dtype = torch.promote_types(out_dtype, torch.float32)
    # the kernel indexes raw memory: it needs contiguous tensors (copies only where needed)
    input = input.to(dtype).contiguous()
    offset, mask = (t.to(param_dtype).contiguous() for t in (offset, mask))
    geometry = (list(kernel), list(stride), list(pad), list(dilation), int(group), float(offset_scale))
    return _DCNv3Function.apply(input, offset, mask, geometry).to(out_dtype)
