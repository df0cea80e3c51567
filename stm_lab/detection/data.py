"""COCO-format detection data through torchvision's ``CocoDetection`` and its transforms-v2 wrapper (boxes, masks
and labels as ``tv_tensors``), for COCO itself (``paper`` profile) and the generated set (``cpu``, ``smoke``).

Training drops what mmdetection's COCO pipeline drops: crowd regions and boxes under one pixel wide or high, and the
images left without an instance (COCO train2017 has about a thousand). In the generated set none may exist
(``strict``): one is an error that names the image.
"""
from __future__ import annotations

import contextlib
import io
from pathlib import Path
from typing import List, Optional, Tuple

import torch
from torchvision.datasets import CocoDetection
from torchvision.transforms import v2
from torchvision.datasets import wrap_dataset_for_transforms_v2


def usable(ann: dict) -> bool:
    """An annotation training can use: not a crowd region, a box at least one pixel wide and high."""
    return not ann.get('iscrowd', 0) and ann['bbox'][2] >= 1 and ann['bbox'][3] >= 1


def describe(ann: dict) -> str:
    x, y, w, h = ann['bbox']
    what = 'a crowd region' if ann.get('iscrowd', 0) else f'a degenerate box [x {x}, y {y}, w {w}, h {h}]'
    return f'annotation {ann.get("id")} has {what}'


class _Coco(CocoDetection):
    def __init__(self, root, ann_file, transforms=None, keep=None):
        with contextlib.redirect_stdout(io.StringIO()):
            super().__init__(str(root), str(ann_file), transforms=transforms)
        self.keep = keep

    def _load_target(self, id: int) -> List[dict]:
        anns = super()._load_target(id)
        return [a for a in anns if self.keep(a)] if self.keep else anns


def train_transform(hflip: float):
    """What the paper's 1x recipe does besides resizing (which the detector's transform does): a random
    horizontal flip (boxes and masks follow), then float images in [0, 1]."""
    return v2.Compose([v2.ToImage(), v2.RandomHorizontalFlip(hflip), v2.ToDtype(torch.float32, scale=True)])


def eval_transform():
    return v2.Compose([v2.ToImage(), v2.ToDtype(torch.float32, scale=True)])


class DetectionSet(torch.utils.data.Dataset):
    """``(image (3, H, W) float in [0, 1], target)``; target: ``boxes`` (N, 4) xyxy, ``labels`` (N,) category ids,
    ``masks`` (N, H, W) uint8, ``image_id``. ``train``: flips, and images without a usable instance are left out
    (``strict``: refused, naming the image)."""

    def __init__(self, image_dir, ann_file, train: bool, hflip: float = 0.5, strict: bool = False,
                 limit: Optional[int] = None):
        image_dir, ann_file = Path(image_dir), Path(ann_file)
        for p in (image_dir, ann_file):
            if not p.exists():
                raise FileNotFoundError(f'detection data not found: {p}')
        self.train = train
        keep = usable if train else None
        base = _Coco(image_dir, ann_file, train_transform(hflip) if train else eval_transform(), keep)
        self.coco = base.coco
        if strict:
            for ann in self.coco.dataset['annotations']:
                if not usable(ann):
                    raise ValueError(f'{ann_file}: image {ann["image_id"]}: {describe(ann)}')
            empty = sorted(set(self.coco.imgs) - {a['image_id'] for a in self.coco.dataset['annotations']})
            if empty:
                raise ValueError(f'{ann_file}: image {empty[0]} has no instances ({len(empty)} such images); '
                                 f'every generated image must hold at least one')
        if train:
            have = {a['image_id'] for a in self.coco.dataset['annotations'] if usable(a)}
            base.ids = [i for i in base.ids if i in have]
            self.dropped = len(self.coco.imgs) - len(base.ids)
        if limit is not None:
            base.ids = base.ids[:limit]
        self.ids = list(base.ids)
        self.base = wrap_dataset_for_transforms_v2(base, target_keys={'boxes', 'labels', 'masks', 'image_id'})

    def __len__(self) -> int:
        return len(self.ids)

    def __getitem__(self, i: int):
        image, target = self.base[i]
        if self.train:
            check_target(target)
        return image, target


def check_target(target: dict) -> None:
    """One clear error for a training target torchvision would refuse deep inside the model."""
    if 'boxes' not in target or len(target['boxes']) == 0:
        raise ValueError(f'image {target.get("image_id")} has no instances; a training image needs at least one')
    b = target['boxes']
    bad = (b[:, 2] <= b[:, 0]) | (b[:, 3] <= b[:, 1])
    if bool(bad.any()):
        k = int(bad.nonzero()[0, 0])
        raise ValueError(f'image {target["image_id"]}: instance {k} has a degenerate box {b[k].tolist()} '
                         f'(zero width or height)')


def collate(batch) -> Tuple[list, list]:
    return [b[0] for b in batch], [b[1] for b in batch]
