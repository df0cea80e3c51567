"""The one contract every spatial token mixer (STM) follows.

A mixer is built as ``Mixer(dim, num_heads, **options)`` and maps ``(B, H, W, C)`` to ``(B, H, W, C)``
(channels-last) for any ``H, W >= 1``; padding needed by windows or strides is added and cropped inside.

Besides its own options, the backbone passes every mixer a few *context* keywords, so that mixers that
depend on their position in the network (Swin's shift on every other block, PVT's position embedding at the
first block of a stage) need no special case in the backbone:

- ``block_index``: index of the block within its stage (0-based);
- ``stage_index``: index of the stage (0-based);
- ``feat_size``: ``(H, W)`` of the stage's feature map at the image size the model was built for.

:class:`TokenMixer` accepts and stores them; a user's mixer may instead take only ``(dim, num_heads)`` and
:func:`stm_lab.mixers.create_mixer` passes only the keywords its signature accepts.

A mixer class may also define ``stage_input(dim, feat_size, **options) -> nn.Module`` (a classmethod): the
backbone applies the returned module to the stage's input, before its first block (PVT's absolute position
embedding). Default: none.
"""
from __future__ import annotations

from typing import Optional, Tuple

import torch.nn as nn


class TokenMixer(nn.Module):
    """Base class: validates ``dim``/``num_heads`` and keeps the context keywords."""

    #: whether ``dim`` must be divisible by ``num_heads`` (False for mixers that ignore heads)
    uses_heads: bool = True

    def __init__(
            self,
            dim: int,
            num_heads: int = 1,
            *,
            block_index: int = 0,
            stage_index: int = 0,
            feat_size: Optional[Tuple[int, int]] = None,
    ):
        super().__init__()
        if dim < 1:
            raise ValueError(f'{type(self).__name__}: dim must be positive, got {dim}')
        if self.uses_heads and (num_heads < 1 or dim % num_heads != 0):
            raise ValueError(
                f'{type(self).__name__}: dim ({dim}) must be divisible by num_heads ({num_heads})')
        self.dim = dim
        self.num_heads = num_heads
        self.block_index = block_index
        self.stage_index = stage_index
        self.feat_size = tuple(feat_size) if feat_size is not None else None

    @classmethod
    def stage_input(cls, dim: int, feat_size: Optional[Tuple[int, int]], **options) -> Optional[nn.Module]:
        return None

    def extra_repr(self) -> str:
        return f'dim={self.dim}, num_heads={self.num_heads}'
