"""DCNv3 mixer of U-InternImage (InternImage, Wang et al., "InternImage: Exploring Large-Scale Vision Foundation
Models with Deformable Convolutions", CVPR 2023).

A dynamic, sparse 3x3 convolution: every pixel predicts, per group of channels, where its 9 taps look (offsets in
pixels) and how much each tap counts (softmax over the taps), from a depth-wise-conv summary of its neighbourhood::

    value  = input_proj(x)
    x1     = GELU(LayerNorm(dwconv_k(x)))
    offset = Linear(x1)            # (B, H, W, G * K * 2)
    mask   = softmax_K(Linear(x1))  # (B, H, W, G * K)
    out    = output_proj(dcnv3_core(value, offset, mask, k, stride 1, pad (k - 1) // 2, dilation 1, G))

With zero offsets and a uniform mask this is a k x k average pooling (zero padding counted) between the two
projections -- which is exactly the state :meth:`DCNv3Mixer.init_weights` starts from. The offset-branch LayerNorm
uses eps 1e-5 as in the paper's code (InternImage itself uses 1e-6). The sampling runs in
(``stm_lab.ops.dcnv3_core``): a compiled CPU kernel (``ops/``) when it builds, else ``F.grid_sample``. Under CPU
autocast the offset branch's depth-wise convolution goes through ``stm_lab.ops.dwconv.depthwise_conv2d`` (its bf16
path; aten's is the slow one), in float32 / float64 through ``nn.Conv2d`` as always.
"""
import torch
import torch.nn as nn

from ..ops import dcnv3_core
from ..ops.dwconv import depthwise_conv2d
from .base import TokenMixer
from . import register_mixer


@register_mixer('dcnv3')
class DCNv3Mixer(TokenMixer):
    """DCNv3 token mixer; ``num_heads`` is the number of groups ``G`` (each with its own offsets and mask).

    Args:
        dim: channels ``C``.
        num_heads: groups ``G``; ``dim`` must be divisible by it.
        kernel_size: sampling kernel (odd), ``K = kernel_size ** 2`` points per group.
        offset_scale: multiplies the kernel grid and the predicted offsets.
        dw_kernel_size: kernel (odd) of the depth-wise conv that feeds the offset and mask branches.
    """
    recipe, dynamic_sampling, display_name, color = 'cnn', True, 'DCNv3', '#9467bd'

    def __init__(self, dim, num_heads, *, kernel_size: int = 3, offset_scale: float = 1.0,
                 dw_kernel_size: int = 3, **context):
        super().__init__(dim, num_heads, **context)
        for name, k in (('kernel_size', kernel_size), ('dw_kernel_size', dw_kernel_size)):
            if k < 1 or k % 2 == 0:  # odd, so that stride 1 and pad (k - 1) // 2 keep H x W
                raise ValueError(f'{name} must be a positive odd number, got {k}')
        self.kernel_size = kernel_size
        self.offset_scale = offset_scale
        points = num_heads * kernel_size ** 2
        self.input_proj = nn.Linear(dim, dim)
        self.dw_conv = nn.Conv2d(dim, dim, dw_kernel_size, padding=dw_kernel_size // 2, groups=dim)
        self.dw_norm = nn.LayerNorm(dim, eps=1e-5)
        self.dw_act = nn.GELU()
        self.offset = nn.Linear(dim, points * 2)
        self.mask = nn.Linear(dim, points)
        self.output_proj = nn.Linear(dim, dim)
        self.init_weights()

    def init_weights(self):
        """Zero offsets and uniform mask (start as an average pooling), xavier-uniform projections, zero biases.

        The backbone calls ``init_weights()`` on every submodule that has it *after* its global trunc_normal
        initialisation. That is a conscious fix of a quirk of the paper's code, where the global init ran last and
        overwrote this DCN-specific init (reference facts §9.1); InternImage itself re-applies it, as done here.
        """
        for layer in (self.offset, self.mask):
            nn.init.zeros_(layer.weight)
            nn.init.zeros_(layer.bias)
        for layer in (self.input_proj, self.output_proj):
            nn.init.xavier_uniform_(layer.weight)
            nn.init.zeros_(layer.bias)

    def forward(self, x):  # (B, H, W, C)
        b, h, w, _ = x.shape
        k = self.kernel_size
        value = self.input_proj(x)
        x1 = x.permute(0, 3, 1, 2)
        if torch.is_autocast_enabled(x.device.type):  # aten's bf16 depth-wise conv: see stm_lab.ops.dwconv
            x1 = depthwise_conv2d(x1, self.dw_conv.weight, self.dw_conv.bias)
        else:  # float32 / float64 keep nn.Conv2d's gradients, bit for bit those the committed runs trained with
            x1 = self.dw_conv(x1)
        x1 = x1.permute(0, 2, 3, 1)  # (B, H, W, C)
        x1 = self.dw_act(self.dw_norm(x1))
        offset = self.offset(x1)  # (B, H, W, G*K*2)
        mask = self.mask(x1).reshape(b, h, w, self.num_heads, k * k).softmax(-1)  # (B, H, W, G, K)
        mask = mask.reshape(b, h, w, -1)  # (B, H, W, G*K)
        out = dcnv3_core(value, offset, mask, k, 1, (k - 1) // 2, 1, self.num_heads, self.offset_scale)
        return self.output_proj(out)

    def extra_repr(self):
        return (f'dim={self.dim}, groups={self.num_heads}, kernel_size={self.kernel_size}, '
                f'offset_scale={self.offset_scale}')
