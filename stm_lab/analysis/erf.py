"""Effective receptive field (ERF) of each stage's centre unit (paper Sec. 6.1, Figs. 5-6).

The procedure the paper takes from RepLKNet, written here from its description:

1. images (float, [0, 1]) are resized whole (no crop) to S x S and normalized; the model is in eval mode;
2. for each stage output (after the stage norm, ``forward_intermediates``), the target is the sum over
   channels of ReLU(feature at the centre position (h // 2, w // 2));
3. its gradient with respect to the (normalized) input image is rectified (ReLU) and summed over RGB;
4. the maps are averaged over images (:func:`erf_maps`); images whose gradient is not finite are skipped;
5. for display and for the area metric, score = log10(mean map + 1) / max (:func:`erf_score`);
6. ERF@t (:func:`erf_at`): the smallest centred square of side 2i + 1 holding more than a fraction t of the
   score's mass; side ratio (2i + 1) / S (the paper's ERF@50 with t = 0.5) and area ratio (side ratio)^2.

Differences from RepLKNet's square search, on purpose: it starts at side 1 (RepLKNet starts at 3), so a
1 x 1 ERF is reported as such; the reported side is capped at S; squares are centred on the input pixel of the
centre unit (:func:`stage_centre`), which is RepLKNet's image centre S // 2 except where S / stride is odd
(e.g. stage 4 at 224: unit 3 of 7 sits at pixel 96, not 112).

:func:`theoretical_rf` gives the theoretical receptive field of the same centre units (the input pixels they
depend on at all), and :func:`erf_shape` measures how lopsided an ERF is (the Swin-vs-Halo point of Fig. 6).
"""
from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from ..mixers import mixer_trait
from .common import Data, PixelSpace, eval_frozen, iter_batches, model_device

# mixers whose sampling locations depend on the input: no fixed theoretical receptive field
THRESHOLDS = (0.2, 0.3, 0.5, 0.99)  # printed by the paper's analysis script; ERF@50 is t = 0.5


def _stage_features(model: nn.Module, x: torch.Tensor, stages: Sequence[int]) -> List[torch.Tensor]:
    if not hasattr(model, 'forward_intermediates'):
        raise TypeError(f'{type(model).__name__} has no forward_intermediates(x, indices, ...) (timm API), '
                        f'which the ERF needs to read stage outputs')
    return model.forward_intermediates(x, indices=list(stages), intermediates_only=True, stop_early=True)


@dataclass
class ERFMap:
    """Mean rectified input-gradient map of one stage's centre unit (before post-processing)."""
    map: torch.Tensor  # (S, S)
    centre: Tuple[int, int]  # input pixel at the centre unit (stage_centre), where ERF squares are centred
    feat_size: Tuple[int, int]  # the stage's map size
    n_images: int

    def score(self) -> torch.Tensor:
        return erf_score(self.map)


def erf_maps(model: nn.Module, images: Data, stages: Sequence[int] = (0, 1, 2, 3), *,
             img_size: Optional[int] = None, batch_size: int = 32, mean=None, std=None,
             progress: bool = True) -> Dict[int, ERFMap]:
    """ERF map of each stage's centre unit, averaged over the images.

    ``images``: a (N, 3, H, W) tensor in [0, 1], an (images, labels) pair or an iterable of batches; with
    ``img_size`` they are resized whole to that square first. Normalization (``mean``/``std``, default the
    model's ``pretrained_cfg``) is applied before the gradient is taken, as in the paper.

    Batched: in eval mode the images of a batch do not interact, so the gradient of the *sum* of the
    per-image targets puts each image's own gradient in its slot; one forward pass per batch serves all
    stages (the graph is kept for the next stage's backward pass). Plain autograd rather than captum's
    ``NeuronGradient``: captum would run one forward per stage and needs a module handle per stage, while
    ``forward_intermediates`` gives all stages of any timm-style model from one forward.
    """
    stages = sorted({int(s) for s in stages})
    norm = PixelSpace(model, mean, std).to(model_device(model))
    sums: Dict[int, torch.Tensor] = {}
    counts = dict.fromkeys(stages, 0)
    sizes: Dict[int, Tuple[int, int]] = {}
    with eval_frozen(model):
        for x, _ in iter_batches(images, batch_size, progress, desc='ERF'):
            x = x.to(model_device(model), torch.float32)
            if img_size is not None and x.shape[-2:] != (img_size, img_size):
                x = F.interpolate(x, size=(img_size, img_size), mode='bicubic', antialias=True,
                                  align_corners=False).clamp(0, 1)
            xn = norm.normalize(x).requires_grad_(True)
            feats = _stage_features(model, xn, stages)
            for k, (s, f) in enumerate(zip(stages, feats)):
                h, w = sizes[s] = tuple(f.shape[-2:])
                target = F.relu(f[:, :, h // 2, w // 2]).sum()
                g, = torch.autograd.grad(target, xn, retain_graph=k < len(stages) - 1)
                ok = torch.isfinite(g).flatten(1).all(1)  # the paper skips NaN maps
                m = F.relu(g[ok]).sum(dim=(0, 1))
                sums[s] = sums[s] + m if s in sums else m
                counts[s] += int(ok.sum())
            size = x.shape[-2:]
    if not sums:
        raise ValueError('erf_maps got no images')
    return {s: ERFMap((sums[s] / max(counts[s], 1)).detach(),
                      (stage_centre(size[0], sizes[s][0]), stage_centre(size[1], sizes[s][1])), sizes[s], counts[s])
            for s in stages}


def erf_score(m: torch.Tensor) -> torch.Tensor:
    """RepLKNet's post-processing: log10(map + 1) (the values span orders of magnitude), scaled to max 1."""
    s = torch.log10(m.double() + 1)
    return s / s.max() if s.max() > 0 else s


def _chebyshev(shape: Tuple[int, int], centre: Tuple[int, int], device=None) -> torch.Tensor:
    ys = torch.arange(shape[0], device=device).view(-1, 1) - centre[0]
    xs = torch.arange(shape[1], device=device).view(1, -1) - centre[1]
    return torch.maximum(ys.abs(), xs.abs())


def erf_at(m: torch.Tensor, t: float = 0.5, centre: Optional[Tuple[int, int]] = None) -> dict:
    """Smallest centred square (side 2i + 1, centred at ``centre``, default (S // 2, S // 2)) holding more than
    a fraction ``t`` of the mass of map ``m`` (pass the :func:`erf_score` map to follow the paper).
    Returns ``{'t', 'side_px', 'side_ratio', 'area_ratio'}``; ``side_ratio`` is the paper's ERF@(100 t)."""
    if m.dim() != 2 or m.shape[0] != m.shape[1]:
        raise ValueError(f'erf_at expects a square 2-D map, got shape {tuple(m.shape)}')
    if not 0 < t < 1:
        raise ValueError(f't must be in (0, 1), got {t}')
    size = m.shape[0]
    centre = centre or (size // 2, size // 2)
    total = m.double().sum()
    if not total > 0:
        raise ValueError('the ERF map has no positive mass')
    ring = _chebyshev(m.shape, centre, m.device).flatten()
    inside = torch.bincount(ring, weights=m.double().flatten()).cumsum(0) / total  # mass within radius i
    i = int(torch.nonzero(inside > t)[0]) if (inside > t).any() else len(inside) - 1
    side = min(2 * i + 1, size)
    return dict(t=t, side_px=side, side_ratio=side / size, area_ratio=(side / size) ** 2)


def erf_shape(m: torch.Tensor, centre: Optional[Tuple[int, int]] = None) -> dict:
    """How lopsided an ERF is around its centre unit.

    ``asymmetry``: on the largest square centred at ``centre`` that fits the map, the mass that differs from
    the map turned by 180 degrees about the centre, ``|m - rot180(m)| / (2 sum m)``, in [0, 1] (0: point-symmetric).
    ``centroid_dy``/``centroid_dx``: mass-weighted mean offset from the centre in pixels (positive: down/right).
    """
    size_y, size_x = m.shape
    cy, cx = centre or (size_y // 2, size_x // 2)
    r = min(cy, cx, size_y - 1 - cy, size_x - 1 - cx)
    sub = m.double()[cy - r:cy + r + 1, cx - r:cx + r + 1]
    total = m.double().sum()
    ys = torch.arange(size_y, dtype=torch.float64, device=m.device) - cy
    xs = torch.arange(size_x, dtype=torch.float64, device=m.device) - cx
    return dict(asymmetry=float((sub - sub.flip(0, 1)).abs().sum() / (2 * sub.sum())),
                centroid_dy=float((m.double().sum(1) * ys).sum() / total),
                centroid_dx=float((m.double().sum(0) * xs).sum() / total))


def stage_centre(img_size: int, feat_size: int) -> int:
    """Input pixel at the centre of stage unit feat_size // 2: stride-s maps put unit u at pixel s * u (3x3
    stride-2 convolutions with padding 1 centre output o on input 2 o)."""
    return img_size // feat_size * (feat_size // 2)


def support_extent(m: torch.Tensor, centre: Tuple[int, int]) -> dict:
    """How far the non-zero pixels of ``m`` reach from ``centre``: ``{'up', 'down', 'left', 'right'}`` in pixels
    (negative when the support does not reach the centre row/column on that side)."""
    rows = torch.nonzero(m.sum(1) != 0).flatten()
    cols = torch.nonzero(m.sum(0) != 0).flatten()
    if len(rows) == 0:
        raise ValueError('the map has no non-zero pixel')
    return dict(up=centre[0] - int(rows.min()), down=int(rows.max()) - centre[0],
                left=centre[1] - int(cols.min()), right=int(cols.max()) - centre[1])


def theoretical_rf(model: nn.Module, img_size: int, stages: Sequence[int] = (0, 1, 2, 3),
                   seed: int = 0) -> Dict[int, Optional[dict]]:
    """Theoretical receptive field of each stage's centre unit: the input pixels it depends on at all, found
    as the support of the input gradient of a random mix of its channels (float64, random input). Returns per stage
    ``{'side_px', 'side_ratio', 'area_ratio'}`` of the smallest square centred on the unit that holds the
    support (side capped at ``img_size``; 1.0: the unit sees the whole image, as with global attention), and
    its ``extent`` (:func:`support_extent`). ``None`` for every stage of a model whose mixer samples
    input-dependent locations (its ``dynamic_sampling`` trait: DCNv3 here): no fixed receptive field exists. (For a user's mixer of that kind the
    result is only the support at the random probe input.)"""
    mixer = getattr(getattr(model, 'config', None), 'mixer', None)
    stages = sorted({int(s) for s in stages})
    if mixer is not None and mixer_trait(mixer, 'dynamic_sampling'):
        return dict.fromkeys(stages)
    probe = copy.deepcopy(model).double()  # float64: tiny dependencies (layer scale 1e-6) stay non-zero
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(1, 3, img_size, img_size, generator=gen, dtype=torch.float64).to(model_device(probe))
    x.requires_grad_(True)
    out = {}
    with eval_frozen(probe):
        feats = _stage_features(probe, x, stages)
        for k, (s, f) in enumerate(zip(stages, feats)):
            h, w = f.shape[-2:]
            # a random mix of channels: their plain sum is constant after a LayerNorm (zero gradient)
            mix = torch.randn(f.shape[1], generator=gen, dtype=torch.float64).to(f.device)
            g, = torch.autograd.grad(f[0, :, h // 2, w // 2] @ mix, x, retain_graph=k < len(stages) - 1)
            support = (g[0].abs().sum(0) > 0).double()
            centre = (stage_centre(img_size, h), stage_centre(img_size, w))
            ext = support_extent(support, centre)
            side = min(2 * max(ext.values()) + 1, img_size)
            out[s] = dict(side_px=side, side_ratio=side / img_size, area_ratio=(side / img_size) ** 2, extent=ext)
    return out


def stage_record(e: ERFMap, theoretical: Optional[dict] = None, thresholds: Sequence[float] = THRESHOLDS) -> dict:
    """One stage's stored ERF: ERF@t of the score map for each threshold (squares centred on the centre unit),
    the raw map's shape statistics, the theoretical receptive field's side ratio (None when unbounded) and the
    score map itself (3 decimals)."""
    score = e.score()
    ats = [erf_at(score, t, e.centre) for t in thresholds]
    return dict(n_images=e.n_images, feat_size=list(e.feat_size), centre=list(e.centre),
                erf_at=[dict(t=a['t'], side_px=a['side_px'], side_ratio=round(a['side_ratio'], 5),
                             area_ratio=round(a['area_ratio'], 5)) for a in ats],
                theoretical_side_ratio=None if theoretical is None else round(theoretical['side_ratio'], 5),
                **{k: round(v, 5) for k, v in erf_shape(e.map, e.centre).items()},
                score_map=np.round(score.float().cpu().numpy(), 3).tolist())
