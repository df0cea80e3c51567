"""Depth-wise convolution mixer of U-DWConv (the U-ConvNeXt block of the paper).

1x1 projection -> k x k depth-wise convolution (k = 7, zero padding k // 2) -> 1x1 projection, all with bias:
ConvNeXt's depth-wise convolution wrapped with input/output projections so that it sits in the same
transformer-style block as the attention mixers (paper Sec. 3 and Fig. 2).

With zero padding the depth-wise convolution goes through ``stm_lab.ops.dwconv.depthwise_conv2d``: the same
numbers as ``nn.Conv2d``, with a backward that is several times faster on the CPU, in float32 and under bf16
autocast (see there)."""
import torch.nn as nn

from ..ops.dwconv import depthwise_conv2d
from .base import TokenMixer
from . import register_mixer


@register_mixer('dw_conv')
class DWConvMixer(TokenMixer):
    """1x1 projection, ``kernel_size`` depth-wise convolution, 1x1 projection (module docstring); ``num_heads`` is
    unused. ``padding_mode='circular'`` makes the mixer exactly shift-equivariant."""
    uses_heads = False
    recipe, display_name, color = 'cnn', 'DW-Conv', '#d62728'

    def __init__(self, dim, num_heads=1, *, kernel_size: int = 7, padding_mode: str = 'zeros', **context):
        super().__init__(dim, num_heads, **context)
        if kernel_size < 1 or kernel_size % 2 == 0:
            raise ValueError(f'kernel_size must be a positive odd number, got {kernel_size}')
        self.kernel_size = kernel_size
        self.proj_in = nn.Linear(dim, dim)  # a 1x1 conv on channels-last input
        # padding_mode='circular' gives an exactly shift-equivariant mixer (used by the invariance tests)
        self.dwconv = nn.Conv2d(dim, dim, kernel_size, padding=kernel_size // 2, groups=dim,
                                padding_mode=padding_mode)
        self.proj_out = nn.Linear(dim, dim)

    def forward(self, x):  # (B, H, W, C)
        x = self.proj_in(x).permute(0, 3, 1, 2)
        if self.dwconv.padding_mode == 'zeros':
            x = depthwise_conv2d(x, self.dwconv.weight, self.dwconv.bias)
        else:
            x = self.dwconv(x)
        x = x.permute(0, 2, 3, 1)
        return self.proj_out(x)

    def extra_repr(self):
        return f'dim={self.dim}, kernel_size={self.kernel_size}'
