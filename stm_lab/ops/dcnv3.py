"""DCNv3 core operator in pure PyTorch (InternImage, Wang et al., "InternImage: Exploring Large-Scale Vision
Foundation Models with Deformable Convolutions", CVPR 2023).

For every output pixel and every group ``g`` of ``C / G`` channels, DCNv3 samples the (zero-padded) input at
``K = kh * kw`` points -- the regular (dilated) kernel grid moved by learned per-point offsets -- and returns the sum
of the bilinearly interpolated values weighted by a per-point modulation mask (softmax-normalised by the caller)::

    out[n, i, j, g] = sum_k mask[n, i, j, g, k] * bilinear(x_pad[n, :, :, g], y_k, x_k)

with, in pixel coordinates of the padded map (pixel centres at integers, zeros outside it), ``c = dil * (k - 1) // 2``::

    x_k = c_w + j * stride_w + (a * dil_w - c_w) * offset_scale + dx * offset_scale
    y_k = c_h + i * stride_h + (b * dil_h - c_h) * offset_scale + dy * offset_scale

for point ``k = a * kh + b`` (x-major: ``a`` indexes the kernel column, ``b`` the row). Note that
``offset_scale`` scales the base kernel grid as well as the learned offsets.

Layout and numbers follow InternImage's operator: channels-last ``(N, H, W, C)`` input, offsets ``(N, H_out, W_out,
G * K * 2)`` as (x, y) pixel pairs, mask ``(N, H_out, W_out, G * K)``. Sampling is done with ``F.grid_sample``
(bilinear, zero padding, ``align_corners=False``) on normalised locations computed in the same order as
InternImage's pure-PyTorch reference, so float32 results are identical to it. Two conscious differences from that
reference, both following InternImage's CUDA kernel instead: H is padded by ``pad_h`` and W by ``pad_w`` (the reference
swaps them, which only matters when they differ), and the base locations are computed in the working dtype (the
reference builds them in float32, so its float64 results carry float32 rounding).

This is the slow, portable path: it materialises the ``(N * G, C / G, H_out * W_out, K)`` tensor of samples. The fused
compiled CPU kernel (``ops/dcnv3_cpu.cpp``, wrapped by :mod:`stm_lab.ops.dcnv3_cpp`) computes the same function
without it; ``dcnv3_core(..., backend=)`` picks the path.
"""
from __future__ import annotations

import contextlib
import os
from typing import Optional, Tuple, Union

import torch
import torch.nn.functional as F

IntPair = Union[int, Tuple[int, int]]
BACKENDS = ('auto', 'torch', 'cpp')


def _check_backend(name):
    if name not in BACKENDS:
        from_env = name == os.environ.get('STM_LAB_DCNV3_BACKEND')
        raise ValueError(f'dcnv3_core: backend must be one of {BACKENDS}, got {name!r}'
                         + (' (from $STM_LAB_DCNV3_BACKEND)' if from_env else ''))
    return name


_default_backend = os.environ.get('STM_LAB_DCNV3_BACKEND', 'auto')


@contextlib.contextmanager
def dcnv3_backend(name: str):
    """Within the block, :func:`dcnv3_core` calls that name no backend (the mixers' calls) use ``name``::

        with dcnv3_backend('torch'):  # run a model on the reference path
            loss = model(x).sum()
    """
    global _default_backend
    previous, _default_backend = _default_backend, _check_backend(name)
    try:
        yield
    finally:
        _default_backend = previous


def _pair(value: IntPair, name: str, minimum: int) -> Tuple[int, int]:
    pair = (value, value) if isinstance(value, int) else tuple(value)
    if len(pair) != 2 or not all(isinstance(v, int) and not isinstance(v, bool) for v in pair):
        raise ValueError(f'dcnv3_core: {name} must be an int or a pair of ints, got {value!r}')
    if min(pair) < minimum:
        raise ValueError(f'dcnv3_core: {name} must be >= {minimum}, got {value!r}')
    return pair


def _base_locations(h_in, w_in, h_out, w_out, kernel, stride, dilation, offset_scale, dtype, device):
    """Normalised (x, y) sampling locations with zero offsets, ``(H_out, W_out, K, 2)``, in the padded map."""
    (kh, kw), (sh, sw), (dh, dw) = kernel, stride, dilation
    ch, cw = dh * (kh - 1) // 2, dw * (kw - 1) // 2  # distance from the window's first tap to its "centre"

    def arange(n, start, step):
        return start + step * torch.arange(n, dtype=dtype, device=device)

    # reference points: the window centres, pixel centre = index + 0.5 in normalised units
    ref_x = arange(w_out, cw + 0.5, sw) / w_in  # (W_out,)
    ref_y = arange(h_out, ch + 0.5, sh) / h_in  # (H_out,)
    # kernel taps relative to the centre, x-major point order k = a * kh + b
    tap_x = (arange(kw, -cw, dw) / w_in).repeat_interleave(kh)  # (K,)
    tap_y = (arange(kh, -ch, dh) / h_in).repeat(kw)  # (K,)
    loc_x = ref_x[None, :, None] + tap_x * offset_scale  # (1, W_out, K)
    loc_y = ref_y[:, None, None] + tap_y * offset_scale  # (H_out, 1, K)
    return torch.stack(torch.broadcast_tensors(loc_x, loc_y), dim=-1)  # (H_out, W_out, K, 2)


def dcnv3_core(
        input: torch.Tensor,
        offset: torch.Tensor,
        mask: torch.Tensor,
        kernel_size: IntPair,
        stride: IntPair,
        pad: IntPair,
        dilation: IntPair,
        group: int,
        offset_scale: float,
        *,
        backend: Optional[str] = None,
) -> torch.Tensor:
    """DCNv3 sampling and aggregation (see the module docstring for the exact formula).

    Args:
        input: ``(N, H, W, C)``, not padded; zero-padded here by ``pad``.
        offset: ``(N, H_out, W_out, G * K * 2)``, per group and point an (x, y) offset in pixels.
        mask: ``(N, H_out, W_out, G * K)``, modulation weight of each point (already normalised by the caller).
        kernel_size, stride, pad, dilation: an int or an ``(h, w)`` pair.
        group: number of groups ``G``; ``C`` must be divisible by it.
        offset_scale: multiplies both the kernel grid and the offsets.
        backend: ``"torch"`` -- this module's ``grid_sample`` path (differentiable to any order); ``"cpp"`` -- the
            compiled CPU kernel of ``ops/`` (:mod:`stm_lab.ops.dcnv3_cpp`; first derivatives only, RuntimeError if
            it cannot be built or a tensor is not on the CPU); ``"auto"`` -- ``"cpp"`` when the kernel can be built
            (on first use, then cached; a failed build warns once) and the tensors are on the CPU, else
            ``"torch"``; ``None`` (default) -- the process default: ``"auto"``, or what :func:`dcnv3_backend` /
            ``$STM_LAB_DCNV3_BACKEND`` set (that is how a model's mixers are switched without changing them).
            The backends compute the same function; results differ by float rounding only. A bfloat16 input
            (e.g. under CPU autocast) is sampled in bfloat16 storage with float32 arithmetic on ``"cpp"`` (no
            copy to float32; :mod:`stm_lab.ops.dcnv3_cpp` says which dtypes it keeps), via float32 on
            ``"torch"``: both round their result to bfloat16 once.

    Returns:
        ``(N, H_out, W_out, C)`` in the promoted dtype of the three inputs, with
        ``H_out = (H + 2 * pad_h - (dil_h * (k_h - 1) + 1)) // stride_h + 1`` (same for W).
    """
    kernel = _pair(kernel_size, 'kernel_size', 1)
    stride = _pair(stride, 'stride', 1)
    (ph, pw) = _pair(pad, 'pad', 0)
    dilation = _pair(dilation, 'dilation', 1)
    for name, t in (('input', input), ('offset', offset), ('mask', mask)):
        if t.dim() != 4:
            raise ValueError(f'dcnv3_core: {name} must have rank 4 (N, H, W, *), got shape {tuple(t.shape)}')
        if not t.is_floating_point():
            raise ValueError(f'dcnv3_core: {name} must be a floating point tensor, got {t.dtype}')
    if isinstance(group, bool) or not isinstance(group, int) or group < 1:
        raise ValueError(f'dcnv3_core: group must be a positive int, got {group!r}')
    n, h, w, c = input.shape
    if c % group != 0:
        raise ValueError(f'dcnv3_core: channels ({c}) must be divisible by group ({group})')
    h_in, w_in = h + 2 * ph, w + 2 * pw
    h_out = (h_in - (dilation[0] * (kernel[0] - 1) + 1)) // stride[0] + 1
    w_out = (w_in - (dilation[1] * (kernel[1] - 1) + 1)) // stride[1] + 1
    if h_out < 1 or w_out < 1:
        raise ValueError(f'dcnv3_core: input {h}x{w} padded by {(ph, pw)} is smaller than the dilated kernel')
    k = kernel[0] * kernel[1]
    for name, t, last in (('offset', offset, group * k * 2), ('mask', mask, group * k)):
        if tuple(t.shape) != (n, h_out, w_out, last):
            raise ValueError(f'dcnv3_core: {name} must have shape {(n, h_out, w_out, last)} '
                             f'(N, H_out, W_out, {"G*K*2" if name == "offset" else "G*K"}), got {tuple(t.shape)}')

    backend = _check_backend(_default_backend if backend is None else backend)
    if backend != 'torch':
        from . import dcnv3_cpp  # imported on first use: importing stm_lab never touches the compiled kernel
        if dcnv3_cpp.usable(input, offset, mask, required=backend == 'cpp'):
            return dcnv3_cpp.dcnv3_core_cpp(input, offset, mask, kernel, stride, (ph, pw), dilation, group,
                                            offset_scale)
    return _dcnv3_torch(input, offset, mask, kernel, stride, (ph, pw), dilation, group, offset_scale, h_out, w_out)


def _dcnv3_torch(input, offset, mask, kernel, stride, pad, dilation, group, offset_scale, h_out, w_out):
    """The pure-PyTorch path of :func:`dcnv3_core` (arguments already checked and normalised to pairs)."""
    n, h, w, c = input.shape
    (ph, pw), k = pad, kernel[0] * kernel[1]
    h_in, w_in = h + 2 * ph, w + 2 * pw
    out_dtype = torch.promote_types(torch.promote_types(input.dtype, offset.dtype), mask.dtype)
    # locations in at least float32: half precision cannot resolve sub-pixel positions on large maps
    dtype = torch.promote_types(out_dtype, torch.float32)
    cg = c // group

    value = F.pad(input.to(dtype), (0, 0, pw, pw, ph, ph))  # (N, H_in, W_in, C)
    value = value.permute(0, 3, 1, 2).reshape(n * group, cg, h_in, w_in)  # (N*G, C/G, H_in, W_in)

    base = _base_locations(h_in, w_in, h_out, w_out, kernel, stride, dilation, offset_scale, dtype, input.device)
    size = torch.tensor([w_in, h_in], dtype=dtype, device=input.device)  # offsets are (x, y) pixel pairs
    off = offset.to(dtype).reshape(n, h_out, w_out, group, k, 2)
    loc = base[:, :, None] + off * offset_scale / size  # (N, H_out, W_out, G, K, 2), in [0, 1] inside the map
    grid = (2 * loc - 1).permute(0, 3, 1, 2, 4, 5).reshape(n * group, h_out * w_out, k, 2)

    sampled = F.grid_sample(value, grid, mode='bilinear', padding_mode='zeros', align_corners=False)
    # sampled: (N*G, C/G, H_out*W_out, K)
    weight = mask.to(dtype).reshape(n, h_out * w_out, group, k).transpose(1, 2)  # (N, G, H_out*W_out, K)
    weight = weight.reshape(n * group, 1, h_out * w_out, k)
    out = (sampled * weight).sum(-1)  # (N*G, C/G, H_out*W_out)
    out = out.view(n, group, cg, h_out, w_out).permute(0, 3, 4, 1, 2).reshape(n, h_out, w_out, c)
    return out.to(out_dtype)
