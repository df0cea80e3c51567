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

A mixer carries its traits as class attributes, read generically (``stm_lab.mixers.mixer_trait``) by training,
the analyses and the book, so that nothing outside ``mixers/`` keeps lists of mixer names:

- ``recipe``: the Table IV column its models train with, ``'transformer'`` or ``'cnn'`` (convolution);
- ``dynamic_sampling``: whether it samples input-dependent locations (then no fixed receptive field exists);
- ``display_name`` and ``color``: its name in the paper's tables and its colour in every figure;
- ``size_options(sides)`` (a classmethod): the options that follow the input size (window, halo block, reduction
  ratio), from the side of each stage's feature map (:func:`~stm_lab.mixers.stage_sides`); default none.

A module whose parameter shapes follow those options (a position table, a reduction kernel) may also define
``resize_loaded(name, tensor) -> tensor``: a tensor saved at another input size (parameter ``name`` of this module,
relative to it), refitted to this module's shape. Loaders that move weights between input sizes (a classification
checkpoint into a detector, ``stm_lab.detection.model``) call it for tensors whose shape differs, and report them.
"""
from __future__ import annotations

from typing import Optional, Sequence, Tuple

import torch.nn as nn


def stage_sides(img_size: int, num_stages: int = 4) -> Tuple[int, ...]:
    """Side of each stage's feature map for a square input: stride 4 after the stem, then 2 per transition, each
    rounding up (3x3 stride-2 convolutions with padding 1, and patch layers padded to a multiple of their stride)."""
    return tuple(-(-img_size // 2 ** (i + 2)) for i in range(num_stages))


class TokenMixer(nn.Module):
    """Base class: validates ``dim``/``num_heads``, keeps the context keywords and declares the traits."""

    #: whether ``dim`` must be divisible by ``num_heads`` (False for mixers that ignore heads)
    uses_heads: bool = True
    #: Table IV column the mixer's models are trained with, 'transformer' or 'cnn'
    recipe: str = 'transformer'
    #: whether the mixer samples input-dependent locations (no fixed theoretical receptive field)
    dynamic_sampling: bool = False
    #: name in the paper's tables (None for the registry name)
    display_name: Optional[str] = None
    #: colour in the book's figures (None for a fallback)
    color: Optional[str] = None

    @classmethod
    def size_options(cls, sides: Sequence[int]) -> Tuple[dict, Tuple[dict, ...]]:
        """Options that follow the input size, from each stage's map side: (for every stage, per stage)."""
        return {}, tuple({} for _ in sides)

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
