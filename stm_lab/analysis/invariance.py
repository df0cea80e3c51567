"""Translation, rotation and scale invariance of a classifier (paper Sec. 6.2, Fig. 7).

Every sweep takes the *un-cropped* images (float, [0, 1], ``(B, 3, H, W)``, any size) and builds the views
itself, as the paper's evaluation does at 224::

    paper (224)                                  here (img_size S, default 64)
    resize short side to int(224 / 0.875) = 256  resize short side to R = int(S / crop_pct) = 73 (bicubic)
    centre crop 224 = reference view             centre crop S = reference view
    shift 0..64 px in steps of 4 (17 values)     the same 17 steps scaled by S / 224: 0, 1, 2, 3, 5, ... 18
    rotate 0..45 deg by 5, then centre crop      same angles (bilinear: torchvision has no bicubic for tensors)
    crop_pct 0.200 ... 1.950 (15 values)         same crop_pct values, short side int(S / r), pad with zeros

Metrics per setting: ``consistency`` = fraction of views whose top-1 class equals the top-1 on the reference
view; ``top1`` = accuracy of the transformed views against the labels (None without labels).

Translation differs from the paper's code on purpose: the shift direction is drawn from all 8 directions
(the paper's code draws ``randint(7)`` and never shifts down-left), a diagonal shift moves s pixels along both
axes, and the content stays where the shift puts it (pixels outside the resized image are zero, i.e. black
before normalization); the paper's code instead pads the clipped crop symmetrically, which re-centres part
of the content. ``directions='all'`` evaluates all 8 directions per image (8x the cost) instead of one random
direction. ``fill='circular'`` rolls the reference view instead (wrap-around), the shift under which a
circular-padded convolution is exactly invariant.

Also :func:`zhang_consistency`: the shift consistency of Zhang (2019, "Making convolutional networks
shift-invariant again"): two random crops of a resized image, share of equal top-1.

Input handling shared by all analyses (pixel-space wrapper, batch iteration, eval mode) is in ``common.py``.
"""
from __future__ import annotations

from typing import List, Optional, Sequence, Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F
import torchvision.transforms.v2.functional as TF

from .common import Data, PixelSpace, eval_frozen, iter_batches, model_device

# the 8 unit directions (dy, dx), clockwise from up
DIRECTIONS = ((-1, 0), (-1, 1), (0, 1), (1, 1), (1, 0), (1, -1), (0, -1), (-1, -1))
ANGLES = tuple(range(0, 50, 5))  # paper: 0..45 degrees in steps of 5
CROP_PCTS = tuple(round(0.2 + 0.125 * i, 3) for i in range(15))  # paper: 0.200, 0.325, ..., 1.950


def resize_short(x: torch.Tensor, size: int) -> torch.Tensor:
    """Resize so that the short side is ``size`` (bicubic with antialiasing, as timm's eval transform),
    clamped back to [0, 1] (bicubic overshoots)."""
    h, w = x.shape[-2:]
    if min(h, w) == size:
        return x
    out = (size, round(w * size / h)) if h <= w else (round(h * size / w), size)
    return F.interpolate(x, size=out, mode='bicubic', antialias=True, align_corners=False).clamp_(0, 1)


def crop(x: torch.Tensor, size: int, dy: int = 0, dx: int = 0) -> torch.Tensor:
    """The ``size`` x ``size`` window whose centre is the image centre moved by (dy, dx) pixels; parts of the
    window outside the image are zeros (black)."""
    h, w = x.shape[-2:]
    top, left = (h - size) // 2 + dy, (w - size) // 2 + dx
    pad = [max(0, -left), max(0, left + size - w), max(0, -top), max(0, top + size - h)]
    if any(pad):
        x = F.pad(x, pad)
        top, left = top + pad[2], left + pad[0]
    return x[..., top:top + size, left:left + size]


def view(x: torch.Tensor, img_size: int = 64, *, crop_pct: float = 0.875, angle: float = 0.0,
         shift: Tuple[int, int] = (0, 0)) -> torch.Tensor:
    """One view with the three sweeps' transforms combined, in this order: the short side resized to
    ``int(img_size / crop_pct)`` (the scale sweep's crop ratio), rotated counter-clockwise by ``angle`` degrees
    about the resized image's centre (bilinear, black corners), then the ``img_size`` window taken with the
    content moved by ``shift = (dy, dx)`` integer pixels (down, right; the window moves the other way, black
    outside). With two of them at their defaults it is the third sweep's view (the scale sweep at ``crop_pct``,
    :func:`rotation_sweep` at ``angle``, :func:`translation_sweep` with fill ``'zeros'`` at a shift); the book's
    in-browser lab computes the same view (``book/_static/lab/geometry.js``)."""
    dy, dx = shift
    if int(dy) != dy or int(dx) != dx:
        raise ValueError(f'shift must be whole pixels, got {shift}')
    x = resize_short(x, int(img_size / crop_pct))
    if angle:
        x = TF.rotate(x, float(angle), interpolation=TF.InterpolationMode.BILINEAR, fill=0.0)
    return crop(x, img_size, -int(dy), -int(dx))


# ----------------------------------------------------------------------------- sweeps

def default_shifts(img_size: int) -> Tuple[int, ...]:
    """The paper's 0, 4, ..., 64 pixels at 224, scaled to ``img_size`` (0 .. ~29% of the side)."""
    return tuple(sorted({round(s * img_size / 224) for s in range(0, 65, 4)}))


@torch.no_grad()
def _predict(net: nn.Module, views: torch.Tensor, batch_size: int) -> torch.Tensor:
    return torch.cat([net(views[i:i + batch_size]).argmax(-1) for i in range(0, len(views), batch_size)])


def _sweep(model, data, transform: str, magnitudes: Sequence, make_views, img_size, crop_pct, batch_size,
           mean, std, progress, fields, keep: Optional[dict] = None) -> List[dict]:
    """Shared loop: per batch, reference predictions, then each magnitude's views (``make_views(resized,
    magnitude, batch_index)`` -> (V * B, 3, S, S) with V views per image). ``keep``: a dict that receives the
    predicted classes of every image, ``keep['reference']`` (N,) and ``keep[magnitude]`` (V, N), for per-image
    outcomes (:mod:`stm_lab.analysis.outcomes`)."""
    net = PixelSpace(model, mean, std).to(model_device(model))
    stats = {m: [0, 0, 0] for m in magnitudes}  # consistent, correct, views
    has_labels = True
    with eval_frozen(model):
        for b, (x, y) in enumerate(iter_batches(data, batch_size, progress, desc=f'{transform} sweep')):
            x = resize_short(x.to(model_device(model)), int(img_size / crop_pct))
            ref = _predict(net, crop(x, img_size), batch_size)
            has_labels = has_labels and y is not None
            if keep is not None:
                keep.setdefault('reference', []).append(ref.cpu())
            for m in magnitudes:
                pred = _predict(net, make_views(x, m, b), batch_size).view(-1, len(ref))  # (V, B)
                if keep is not None:
                    keep.setdefault(m, []).append(pred.cpu())
                stats[m][0] += (pred == ref).sum().item()
                stats[m][1] += (pred == y.to(pred.device)).sum().item() if has_labels else 0
                stats[m][2] += pred.numel()
    if not all(n for _, _, n in stats.values()):
        raise ValueError(f'{transform} sweep got no images')
    if keep is not None:
        for k, parts in keep.items():
            keep[k] = torch.cat(parts, -1)
    return [dict(**fields, transform=transform, magnitude=m, consistency=c / n,
                 top1=(k / n if has_labels else None), n=n) for m, (c, k, n) in stats.items()]


def translation_sweep(model: nn.Module, data: Data, /, shifts: Optional[Sequence[int]] = None, *,
                      img_size: int = 64, crop_pct: float = 0.875, directions: str = 'random',
                      fill: str = 'zeros', seed: int = 0, batch_size: int = 64, mean=None, std=None,
                      progress: bool = True, keep: Optional[dict] = None, **fields) -> List[dict]:
    """Prediction consistency and accuracy under translation by each shift ``s`` (pixels at ``img_size``).

    ``directions='random'``: one of the 8 directions per image (seeded; the same direction for an image at
    every shift); ``'all'``: every direction, each counted as a view. ``fill='zeros'`` moves the crop window
    over the resized image (black outside it); ``'circular'`` rolls the reference view (wrap-around).
    Records: ``{'transform': 'shift', 'magnitude': s, 'consistency', 'top1', 'n'}`` (n = views), plus
    ``fields`` (e.g. ``model='u_swin_micro'``); the other sweeps return the same shape."""
    if directions not in ('random', 'all'):
        raise ValueError(f"directions must be 'random' or 'all', got {directions!r}")
    if fill not in ('zeros', 'circular'):
        raise ValueError(f"fill must be 'zeros' or 'circular', got {fill!r}")
    shifts = default_shifts(img_size) if shifts is None else tuple(shifts)
    gen = torch.Generator().manual_seed(seed)
    drawn = {}  # batch index -> direction index per image, drawn once so every shift uses the same ones

    def views(x, s, b):
        if directions == 'all':
            dirs = [[d] * len(x) for d in range(8)]
        else:
            if b not in drawn:
                drawn[b] = torch.randint(8, (len(x),), generator=gen).tolist()
            dirs = [drawn[b]]
        out = []
        for row in dirs:
            for i, d in enumerate(row):
                dy, dx = DIRECTIONS[d][0] * s, DIRECTIONS[d][1] * s
                if fill == 'zeros':
                    out.append(crop(x[i:i + 1], img_size, dy, dx))
                else:  # content moves by +s where the window moves by -s
                    out.append(torch.roll(crop(x[i:i + 1], img_size), (-dy, -dx), dims=(-2, -1)))
        return torch.cat(out)

    return _sweep(model, data, 'shift', shifts, views, img_size, crop_pct, batch_size, mean, std, progress, fields,
                  keep)


def rotation_sweep(model: nn.Module, data: Data, /, angles: Sequence[float] = ANGLES, *, img_size: int = 64,
                   crop_pct: float = 0.875, batch_size: int = 64, mean=None, std=None,
                   progress: bool = True, keep: Optional[dict] = None, **fields) -> List[dict]:
    """Consistency and accuracy when the resized image is rotated (counter-clockwise, black corners) before
    the centre crop (the paper's ``pre_rotation``). Angle 0 is the reference view itself (no resampling)."""
    def views(x, a, b):
        if a == 0:
            return crop(x, img_size)
        rotated = TF.rotate(x, float(a), interpolation=TF.InterpolationMode.BILINEAR, fill=0.0)
        return crop(rotated, img_size)

    return _sweep(model, data, 'rotation', tuple(angles), views, img_size, crop_pct, batch_size, mean, std,
                  progress, fields, keep)


def scale_sweep(model: nn.Module, data: Data, /, crop_pcts: Sequence[float] = CROP_PCTS, *, img_size: int = 64,
                crop_pct: float = 0.875, batch_size: int = 64, mean=None, std=None,
                progress: bool = True, keep: Optional[dict] = None, **fields) -> List[dict]:
    """Classification form of the scale test: the short side is resized to ``int(img_size / r)`` and the centre
    ``img_size`` crop taken (zero-padded when the image is smaller), for each crop ratio r (r < ``crop_pct``
    zooms in, r > 1 zooms out); consistency is against the reference view at ``crop_pct``."""
    def views(x, r, b):
        return crop(resize_short(x, int(img_size / r)), img_size)

    return _sweep(model, data, 'scale', tuple(crop_pcts), views, img_size, crop_pct, batch_size, mean, std,
                  progress, fields, keep)


def zhang_consistency(model: nn.Module, data: Data, /, *, img_size: int = 64, max_offset: Optional[int] = None,
                      repeats: int = 1, seed: int = 0, batch_size: int = 64, mean=None, std=None,
                      progress: bool = True, **fields) -> dict:
    """Zhang (2019): resize the short side to ``img_size + max_offset`` and take its centre square; two crops of
    ``img_size`` at independent random offsets in ``[0, max_offset)^2`` per image; consistency = share of pairs
    with the same top-1. ``max_offset`` defaults to 32 / 224 of ``img_size`` (the paper's 256 -> 224)."""
    max_offset = max_offset if max_offset is not None else round(32 * img_size / 224)
    side = img_size + max_offset
    net = PixelSpace(model, mean, std).to(model_device(model))
    gen = torch.Generator().manual_seed(seed)
    same = total = 0
    with eval_frozen(model):
        for x, _ in iter_batches(data, batch_size, progress, desc='zhang consistency'):
            x = crop(resize_short(x.to(model_device(model)), side), side)
            for _ in range(repeats):
                offs = torch.randint(max_offset, (2, len(x), 2), generator=gen).tolist()
                a, b = (torch.cat([x[i:i + 1, :, t:t + img_size, l:l + img_size] for i, (t, l) in enumerate(o)])
                        for o in offs)
                same += (_predict(net, a, batch_size) == _predict(net, b, batch_size)).sum().item()
                total += len(x)
    return dict(**fields, transform='zhang_shift', magnitude=max_offset, consistency=same / total, top1=None, n=total)
