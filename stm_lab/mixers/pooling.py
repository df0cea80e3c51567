"""PoolFormer's pooling mixer (Yu et al., "MetaFormer Is Actually What You Need for Vision", CVPR 2022).

``avg_pool(x) - x`` over a ``pool_size`` window with stride 1; padded positions are not counted in the
average. The subtraction is there because the block adds the input back through its residual. A parameter-free
lower bound for the dynamic mixers."""
import torch.nn.functional as F

from .base import TokenMixer
from . import register_mixer


@register_mixer('pooling')
class PoolingMixer(TokenMixer):
    """``avg_pool(x) - x`` over a ``pool_size`` window (odd), stride 1 (module docstring)."""
    uses_heads = False
    recipe, display_name, color = 'cnn', 'Pooling', '#8c564b'  # PoolFormer's mixer, trained like U-DWConv

    def __init__(self, dim, num_heads=1, *, pool_size: int = 3, **context):
        super().__init__(dim, num_heads, **context)
        if pool_size < 1 or pool_size % 2 == 0:
            raise ValueError(f'pool_size must be a positive odd number, got {pool_size}')
        self.pool_size = pool_size

    def forward(self, x):  # (B, H, W, C)
        y = x.permute(0, 3, 1, 2)
        y = F.avg_pool2d(y, self.pool_size, stride=1, padding=self.pool_size // 2, count_include_pad=False)
        return y.permute(0, 2, 3, 1) - x
