"""The unified architecture of the paper (Sec. 4, Figs. 2-4): one backbone, any spatial token mixer.

::

    stem        3x3/2 conv -> LN -> GELU -> 3x3/2 conv -> LN                      (stride 4)
    stage i     [transition: 3x3/2 conv -> LN, for i > 0] -> [stage input hook] -> depth_i blocks -> [stage LN]
    block       x = x + drop_path(gamma1 * mixer(norm1(x)));  x = x + drop_path(gamma2 * mlp(norm2(x)))
    head        1x1 conv to 1.5 * C4 -> BN -> GELU -> global average pool -> [LN] -> linear

Everything inside runs channels-last, ``(B, H, W, C)``, which is what mixers take; ``forward_intermediates``
returns NCHW maps as timm does. The backbone never asks which mixer it holds: per-mixer needs go through the
mixer contract (``stm_lab/mixers/base.py``).

Ablation switches. Table VI / Fig. 4: ``norm_after_pool`` (B: LN after pooling), ``stage_norm=False``
(C: no stage norms), ``block='single'`` (D/E: ConvNeXt-style block with one residual,
``x + drop_path(gamma * mlp(norm(mixer(x))))``). Table II: ``downsample='patch'`` (the original stage design of
Swin and ConvNeXt: a non-overlapping 4x4/4 patch stem and 2x2/2 patch merging in the transitions, each followed
by the same LN as the unified 3x3 convolutions, so that only the overlap changes) and ``block='bottleneck'`` (the
original HaloNet block: ResNet's bottleneck with one residual, ``relu(x + drop_path(bn(W2 act(bn(mixer(act(bn(W1
x))))))))``, the mixer working at ``bottleneck_ratio * C`` channels; 1.5 gives the unified block's parameter count
for a 4C^2 mixer). The HaloNet variants of Table VII are mixer options.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import List, Optional, Sequence, Tuple, Union

import torch
import torch.nn as nn
import torch.nn.functional as F
from timm.layers import DropPath, LayerScale, Mlp, trunc_normal_
from timm.models import checkpoint_seq
from timm.models._features import feature_take_indices

from .mixers import create_mixer, get_mixer_class, stage_input, stage_sides

BLOCK_TYPES = ('double', 'single', 'bottleneck')
DOWNSAMPLE_TYPES = ('overlap', 'patch')


@dataclass
class UnifiedConfig:
    """Everything that defines a unified model; saved with every checkpoint and result."""
    mixer: str = 'dw_conv'
    depths: Tuple[int, ...] = (2, 2, 9, 2)
    dims: Tuple[int, ...] = (32, 64, 128, 256)
    heads: Tuple[int, ...] = (1, 2, 4, 8)  # heads per stage (DCNv3: groups)
    mlp_ratios: Tuple[float, ...] = (4, 4, 4, 4)
    mixer_options: dict = field(default_factory=dict)  # passed to every mixer
    stage_mixer_options: Tuple[dict, ...] = ({}, {}, {}, {})  # per stage, on top of mixer_options
    drop_path_rate: float = 0.0
    layer_scale_init: float = 1e-6
    norm_eps: float = 1e-5  # block norms (the paper's code uses 1e-5 or 1e-6 depending on the mixer)
    stage_norm: bool = True
    norm_after_pool: bool = False
    block: str = 'double'
    single_res_pre_norm: bool = False  # single-residual block: LN before the mixer (the paper's DW-Conv D/E)
    bottleneck_ratio: float = 1.5  # block='bottleneck': mixer width / C
    downsample: str = 'overlap'  # 'overlap' (3x3/2 convs, Fig. 3) or 'patch' (4x4/4 stem, 2x2/2 merging)
    head_ratio: float = 1.5
    num_classes: int = 1000
    in_chans: int = 3
    img_size: int = 224

    def __post_init__(self):
        get_mixer_class(self.mixer)  # fails early with the list of valid names
        n = len(self.depths)
        for name in ('dims', 'heads', 'mlp_ratios', 'stage_mixer_options'):
            if len(getattr(self, name)) != n:
                raise ValueError(f'{name} has {len(getattr(self, name))} entries, depths has {n}')
        if self.block not in BLOCK_TYPES:
            raise ValueError(f'unknown block type {self.block!r}; valid: {", ".join(BLOCK_TYPES)}')
        if self.downsample not in DOWNSAMPLE_TYPES:
            raise ValueError(f'unknown downsample {self.downsample!r}; valid: {", ".join(DOWNSAMPLE_TYPES)}')
        self.depths, self.dims, self.heads, self.mlp_ratios = (
            tuple(self.depths), tuple(self.dims), tuple(self.heads), tuple(self.mlp_ratios))
        self.stage_mixer_options = tuple(dict(o) for o in self.stage_mixer_options)

    def to_dict(self) -> dict:
        return asdict(self)


class ChannelsLastLN(nn.LayerNorm):
    """LayerNorm over channels of an NCHW map (the paper's LayerNorm2d), eps 1e-6."""

    def __init__(self, dim, eps=1e-6):
        super().__init__(dim, eps=eps)

    def forward(self, x):  # (B, C, H, W)
        return super().forward(x.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)


class Stem(nn.Sequential):
    def __init__(self, in_chans, dim):
        super().__init__(
            nn.Conv2d(in_chans, dim // 2, 3, stride=2, padding=1), ChannelsLastLN(dim // 2), nn.GELU(),
            nn.Conv2d(dim // 2, dim, 3, stride=2, padding=1), ChannelsLastLN(dim))


class Transition(nn.Sequential):
    """Overlapping 3x3 stride-2 downsampling between stages (Sec. 4.1)."""

    def __init__(self, dim_in, dim_out):
        super().__init__(nn.Conv2d(dim_in, dim_out, 3, stride=2, padding=1, bias=False), ChannelsLastLN(dim_out))


class PatchConv(nn.Conv2d):
    """Non-overlapping ``k x k`` stride-``k`` convolution (patch embedding / merging). The map is zero-padded on
    the right and bottom to a multiple of ``k``, so output sizes are ``ceil(H / k)`` as with the overlapped design."""

    def __init__(self, dim_in, dim_out, k, bias=True):
        super().__init__(dim_in, dim_out, k, stride=k, bias=bias)

    def forward(self, x):
        k = self.stride[0]
        return super().forward(F.pad(x, (0, -x.shape[-1] % k, 0, -x.shape[-2] % k)))


def patch_stem(in_chans, dim):
    """Swin's and ConvNeXt's stem: 4x4 stride-4 patch embedding -> LN."""
    return nn.Sequential(PatchConv(in_chans, dim, 4), ChannelsLastLN(dim))


def patch_transition(dim_in, dim_out):
    """Non-overlapping 2x2 stride-2 patch merging -> LN (Table II's original stage design)."""
    return nn.Sequential(PatchConv(dim_in, dim_out, 2, bias=False), ChannelsLastLN(dim_out))


class ChannelsLastBN(nn.BatchNorm2d):
    """BatchNorm over the channels of a ``(B, H, W, C)`` map."""

    def forward(self, x):
        return super().forward(x.permute(0, 3, 1, 2)).permute(0, 2, 3, 1)


class BottleneckBlock(nn.Module):
    """HaloNet's original block (ResNet bottleneck, one residual), channels-last:
    ``relu(x + drop_path(BN(Linear(relu(BN(mixer(relu(BN(Linear(x))))))))))``; the last BN starts at zero scale
    (ResNet's zero-init residual), which, like layer scale in the unified block, makes each block start as identity."""

    def __init__(self, dim, mixer: nn.Module, hidden: int, drop_path=0.0):
        super().__init__()
        self.reduce = nn.Sequential(nn.Linear(dim, hidden, bias=False), ChannelsLastBN(hidden), nn.ReLU())
        self.mixer = mixer
        self.expand = nn.Sequential(ChannelsLastBN(hidden), nn.ReLU(), nn.Linear(hidden, dim, bias=False),
                                    ChannelsLastBN(dim))
        self.drop_path = DropPath(drop_path) if drop_path > 0 else nn.Identity()

    def init_weights(self):
        nn.init.zeros_(self.expand[-1].weight)

    def forward(self, x):  # (B, H, W, C)
        return F.relu(x + self.drop_path(self.expand(self.mixer(self.reduce(x)))))


class Block(nn.Module):
    """Transformer-style block (double residual) or ConvNeXt-style block (single residual), channels-last."""

    def __init__(self, dim, mixer: nn.Module, mlp_ratio=4.0, drop_path=0.0, layer_scale_init=1e-6,
                 norm_eps=1e-5, block='double', single_res_pre_norm=False):
        super().__init__()
        self.single = block == 'single'
        ls = (lambda: LayerScale(dim, layer_scale_init)) if layer_scale_init else nn.Identity
        self.mixer = mixer
        if self.single:
            self.norm1 = nn.LayerNorm(dim, eps=norm_eps) if single_res_pre_norm else nn.Identity()
        else:
            self.norm1 = nn.LayerNorm(dim, eps=norm_eps)
            self.ls1 = ls()
        self.norm2 = nn.LayerNorm(dim, eps=norm_eps)
        self.mlp = Mlp(dim, int(dim * mlp_ratio), act_layer=nn.GELU)
        self.ls2 = ls()
        self.drop_path = DropPath(drop_path) if drop_path > 0 else nn.Identity()

    def forward(self, x):  # (B, H, W, C)
        if self.single:
            return x + self.drop_path(self.ls2(self.mlp(self.norm2(self.mixer(self.norm1(x))))))
        x = x + self.drop_path(self.ls1(self.mixer(self.norm1(x))))
        return x + self.drop_path(self.ls2(self.mlp(self.norm2(x))))


class Stage(nn.Module):
    def __init__(self, downsample: Optional[nn.Module], entry: Optional[nn.Module], blocks: List[nn.Module],
                 norm: Optional[nn.Module]):
        super().__init__()
        self.downsample = downsample or nn.Identity()  # NCHW -> NCHW
        self.entry = entry or nn.Identity()  # mixer's stage input hook, channels-last
        self.blocks = nn.Sequential(*blocks)
        self.norm = norm or nn.Identity()  # channels-last
        self.grad_checkpointing = False

    def forward(self, x):  # (B, C, H, W) -> (B, H, W, C)
        x = self.entry(self.downsample(x).permute(0, 2, 3, 1))
        if self.grad_checkpointing and torch.is_grad_enabled():
            x = checkpoint_seq(self.blocks, x)  # recompute block activations in backward: less memory
        else:
            x = self.blocks(x)
        return self.norm(x)


class UnifiedNet(nn.Module):
    """The unified backbone. Keyword arguments are the fields of :class:`UnifiedConfig`."""

    def __init__(self, **kwargs):
        super().__init__()
        kwargs.pop('pretrained_cfg', None)  # timm passes these; they carry no architecture
        kwargs.pop('pretrained_cfg_overlay', None)
        self.config = cfg = UnifiedConfig(**kwargs)
        self.num_classes = cfg.num_classes
        dims, n = cfg.dims, len(cfg.depths)
        total = sum(cfg.depths)  # drop-path rate grows linearly with the global block index
        dpr = [cfg.drop_path_rate * k / max(total - 1, 1) for k in range(total)]
        patch = cfg.downsample == 'patch'
        self.stem = patch_stem(cfg.in_chans, dims[0]) if patch else Stem(cfg.in_chans, dims[0])
        transition = patch_transition if patch else Transition
        stages, k = [], 0
        sides = stage_sides(cfg.img_size, n)
        for i in range(n):
            feat_size = (sides[i],) * 2
            options = {**cfg.mixer_options, **cfg.stage_mixer_options[i]}
            blocks = []
            width = int(dims[i] * cfg.bottleneck_ratio) if cfg.block == 'bottleneck' else dims[i]
            for j in range(cfg.depths[i]):
                mixer = create_mixer(cfg.mixer, width, cfg.heads[i], block_index=j, stage_index=i,
                                     feat_size=feat_size, **options)
                if cfg.block == 'bottleneck':
                    blocks.append(BottleneckBlock(dims[i], mixer, width, dpr[k]))
                else:
                    blocks.append(Block(dims[i], mixer, cfg.mlp_ratios[i], dpr[k], cfg.layer_scale_init,
                                        cfg.norm_eps, cfg.block, cfg.single_res_pre_norm))
                k += 1
            stages.append(Stage(
                transition(dims[i - 1], dims[i]) if i > 0 else None,
                stage_input(cfg.mixer, dims[i], feat_size, **options),
                blocks,
                nn.LayerNorm(dims[i], eps=1e-6) if cfg.stage_norm else None))
        self.stages = nn.ModuleList(stages)
        # without stage norms and without LN after pooling, the last stage gets one norm (as in the paper's code)
        self.end_norm = (nn.LayerNorm(dims[-1], eps=1e-6) if not cfg.stage_norm and not cfg.norm_after_pool
                         else nn.Identity())
        # timm's meaning: num_features is what forward_features returns (the last stage's channels),
        # head_hidden_size what forward_head(pre_logits=True) returns (the 1x1 conv head's width, 1.5 x C4)
        self.num_features = dims[-1]
        self.head_hidden_size = int(dims[-1] * cfg.head_ratio)
        self.conv_head = nn.Sequential(
            nn.Conv2d(dims[-1], self.head_hidden_size, 1, bias=False), nn.BatchNorm2d(self.head_hidden_size),
            nn.GELU())
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.pool_norm = nn.LayerNorm(self.head_hidden_size, eps=1e-6) if cfg.norm_after_pool else nn.Identity()
        self.head = nn.Linear(self.head_hidden_size, cfg.num_classes) if cfg.num_classes > 0 else nn.Identity()
        self.feature_info = [dict(num_chs=d, reduction=2 ** (i + 2), module=f'stages.{i}') for i, d in enumerate(dims)]
        self.init_weights()

    def init_weights(self):
        """trunc_normal(0.02) for every conv/linear weight, zero biases (the paper's global init); then every
        submodule that defines ``init_weights`` re-applies its own (so DCNv3's zero-init offsets survive)."""
        for m in self.modules():
            if isinstance(m, (nn.Conv2d, nn.Linear)):
                trunc_normal_(m.weight, std=0.02)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
        for m in self.modules():
            if m is not self and hasattr(m, 'init_weights'):
                m.init_weights()

    @torch.jit.ignore
    def no_weight_decay(self):
        """Names of position tables (per the mixers' ``no_weight_decay_keys``), excluded from weight decay."""
        keys = {k for m in self.modules() for k in getattr(m, 'no_weight_decay_keys', ())}
        return {n for n, _ in self.named_parameters() if n.rsplit('.', 1)[-1] in keys}

    @torch.jit.ignore
    def set_grad_checkpointing(self, enable: bool = True):
        for stage in self.stages:
            stage.grad_checkpointing = enable

    def get_classifier(self):
        return self.head

    def reset_classifier(self, num_classes: int):
        self.num_classes = self.config.num_classes = num_classes
        self.head = nn.Linear(self.head_hidden_size, num_classes) if num_classes > 0 else nn.Identity()

    def _check_input(self, x):
        if x.ndim != 4:  # else an internal error from deep inside a mixer
            raise ValueError(f'expected a batch of images (N, {self.config.in_chans}, H, W), got shape {tuple(x.shape)}'
                             + ('; add the batch dimension with x[None]' if x.ndim == 3 else ''))

    def forward_features(self, x):  # (B, 3, H, W) -> (B, C4, H/32, W/32)
        self._check_input(x)
        x = self.stem(x)
        for stage in self.stages:
            x = stage(x).permute(0, 3, 1, 2)
        return self.end_norm(x.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)

    def forward_head(self, x, pre_logits: bool = False):
        x = self.pool_norm(self.pool(self.conv_head(x)).flatten(1))
        return x if pre_logits else self.head(x)

    def forward(self, x):
        return self.forward_head(self.forward_features(x))

    def forward_intermediates(
            self,
            x: torch.Tensor,
            indices: Optional[Union[int, Sequence[int]]] = None,
            norm: bool = False,
            stop_early: bool = False,
            output_fmt: str = 'NCHW',
            intermediates_only: bool = False,
    ):
        """Stage outputs (after each stage's norm, as the paper's ERF analysis takes them), NCHW.

        Args:
            indices: stages to return; an int n means the last n stages; None means all; negative indices count
                from the end (timm's ``feature_take_indices``: an index out of range is refused).
            norm: unused (stage outputs are already normalized when stage norms are on); kept for timm's API.
            stop_early: stop after the last requested stage (only with ``intermediates_only``).
            intermediates_only: return only the list of maps.
        """
        if output_fmt != 'NCHW':
            raise ValueError(f"output_fmt {output_fmt!r} not supported; use 'NCHW'")
        take, last = feature_take_indices(len(self.stages), indices)
        feats = []
        self._check_input(x)
        x = self.stem(x)
        for i, stage in enumerate(self.stages):
            x = stage(x).permute(0, 3, 1, 2)
            if i in take:
                feats.append(x)
            if intermediates_only and stop_early and i == last:
                return feats
        if intermediates_only:
            return feats
        x = self.end_norm(x.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)
        return x, feats

    def prune_intermediate_layers(self, indices: Union[int, Sequence[int]] = 1, prune_norm: bool = False,
                                  prune_head: bool = True) -> List[int]:
        """Drop what the stage outputs ``indices`` do not need (timm's API; ``features_only`` calls it): the stages
        after the last one taken, the end norm, the head. Returns the absolute indices kept."""
        take, last = feature_take_indices(len(self.stages), indices)
        cut = last < len(self.stages) - 1
        self.stages = self.stages[:last + 1]
        if prune_norm or cut:  # the end norm is sized for (and only applied after) the last stage
            self.end_norm = nn.Identity()
        if prune_head or cut:  # the conv head is sized for the last stage too; features end at the last kept one
            self.conv_head, self.pool_norm = nn.Identity(), nn.Identity()
            self.num_features = self.head_hidden_size = self.feature_info[last]['num_chs']
            self.reset_classifier(0)
        return take
