"""A generated instance-segmentation set that a CPU can train on, in COCO format (the ``cpu`` and ``smoke`` profiles).

Each image is a photo (the background) with 1-6 instances of six shape classes (disc, ring, triangle, square, star,
cross), each filled with a texture cut from another photo (zoomed, colour-scaled), of random size, aspect and
rotation, partly out of frame or occluded by later instances. Masks are exact: they are the very pixels that were
painted, and boxes are their tight bounds (``pycocotools.mask.toBbox``); an instance keeps at least ``min_visible``
of its area, and placing a new one never hides more than that of an earlier one. Sizes run from ``min_side`` to
``max_side`` pixels (log-uniform), so COCO's small (< 32^2 px), medium and large (> 96^2 px) buckets are all
populated at 160 px.

Photos: Imagenette (``cpu``; train photos for the train split, val photos for the fixed validation split) or the
committed fixture (``smoke``). Everything is a function of the config (seed included): image ``i`` of a split draws
from ``SeedSequence([seed, split, i])``, so the set is byte-identical on every run. It is generated on first use into
``<cache>/detection/shapes-<digest>/`` (``$STM_LAB_CACHE`` or ``.cache/``; never committed): ``<split>/<id>.png``
and ``instances_<split>.json``; the digest covers the config and the generator's version.
"""
from __future__ import annotations

import fcntl
import hashlib
import io
import json
import math
import os
import shutil
import sys
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Dict, List, Optional, Tuple

import numpy as np
from PIL import Image

from ..data import CACHE_DIR, find_shard, read_shard

GENERATOR_VERSION = 1  # bump when the drawing changes: the cache digest follows it
SHAPES = ('disc', 'ring', 'triangle', 'square', 'star', 'cross')
SPLITS = ('train', 'val')
PHOTO_SOURCES = ('imagenette', 'fixture')


@dataclass(frozen=True)
class ShapesConfig:
    img_size: int = 160
    train_images: int = 2000
    val_images: int = 500
    photos: str = 'imagenette'  # imagenette | fixture
    min_instances: int = 1
    max_instances: int = 6
    min_side: float = 10.0  # side of an instance's (unrotated) box, pixels, log-uniform
    max_side: float = 150.0
    max_aspect: float = 1.6  # width / height within [1 / max_aspect, max_aspect], log-uniform
    min_visible: float = 0.5  # of an instance's area: in frame and not occluded
    seed: int = 0

    def __post_init__(self):
        def need(ok, what):
            if not ok:
                raise ValueError(f'shapes config: {what}')
        need(self.photos in PHOTO_SOURCES, f'photos must be one of {", ".join(PHOTO_SOURCES)}, got {self.photos!r}')
        for name in ('img_size', 'train_images', 'val_images', 'min_instances'):
            v = getattr(self, name)
            need(isinstance(v, int) and v >= 1, f'{name} must be an integer of at least 1, got {v!r}')
        need(isinstance(self.max_instances, int) and self.max_instances >= self.min_instances,
             f'max_instances must be an integer of at least min_instances ({self.min_instances}), '
             f'got {self.max_instances!r}')
        need(2 <= self.min_side <= self.max_side,
             f'need 2 <= min_side <= max_side, got {self.min_side}, {self.max_side}')
        need(self.max_aspect >= 1, f'max_aspect must be at least 1, got {self.max_aspect}')
        need(0 < self.min_visible <= 1, f'min_visible must be in (0, 1], got {self.min_visible}')
        need(isinstance(self.seed, int) and self.seed >= 0, f'seed must be an integer of at least 0, got {self.seed!r}')

    def to_dict(self) -> dict:
        return asdict(self)

    def digest(self) -> str:
        text = json.dumps(dict(self.to_dict(), generator=GENERATOR_VERSION), sort_keys=True)
        return hashlib.sha256(text.encode()).hexdigest()[:12]

    def images(self, split: str) -> int:
        return self.train_images if split == 'train' else self.val_images


# ------------------------------------------------------------------------------------------------ shapes

def _star(points: int = 5, inner: float = 0.45) -> np.ndarray:
    a = -math.pi / 2 + np.arange(2 * points) * math.pi / points
    r = np.where(np.arange(2 * points) % 2 == 0, 1.0, inner)
    return np.stack([r * np.cos(a), r * np.sin(a)], 1)


_STAR = _star()


def _in_polygon(u: np.ndarray, v: np.ndarray, poly: np.ndarray) -> np.ndarray:
    """Even-odd rule: is each point (u, v) inside the closed polygon ``poly`` (K, 2)?"""
    inside = np.zeros(u.shape, bool)
    for (x0, y0), (x1, y1) in zip(poly, np.roll(poly, -1, 0)):
        crosses = (y0 > v) != (y1 > v)
        with np.errstate(divide='ignore', invalid='ignore'):
            x_at = x0 + (v - y0) * (x1 - x0) / (y1 - y0)
        inside ^= crosses & (u < x_at)
    return inside


def inside(shape: str, u: np.ndarray, v: np.ndarray) -> np.ndarray:
    """Whether the points (u, v) in the shape's own frame ([-1, 1]^2 is its box) belong to it."""
    r2 = u * u + v * v
    if shape == 'disc':
        return r2 <= 1
    if shape == 'ring':
        return (r2 <= 1) & (r2 >= 0.55 ** 2)
    if shape == 'square':
        return (np.abs(u) <= 1) & (np.abs(v) <= 1)
    if shape == 'triangle':  # apex up
        return (v <= 1) & (np.abs(u) <= (v + 1) / 2)
    if shape == 'star':
        return _in_polygon(u, v, _STAR)
    if shape == 'cross':
        a, b = np.abs(u), np.abs(v)
        return ((a <= 1) & (b <= 0.33)) | ((a <= 0.33) & (b <= 1))
    raise KeyError(f'unknown shape {shape!r}; valid: {", ".join(SHAPES)}')


def _fill_fraction(shape: str, n: int = 400) -> float:
    g = (np.arange(n) + 0.5) / n * 2 - 1
    u, v = np.meshgrid(g, g)
    return float(inside(shape, u, v).mean())


FILL = {s: _fill_fraction(s) for s in SHAPES}  # area of each shape / area of its box


def shape_mask(shape: str, size: int, cx: float, cy: float, w: float, h: float, angle: float) -> np.ndarray:
    """The pixels (centres at +0.5) of a ``size`` x ``size`` image covered by the shape with box ``w`` x ``h``
    centred at (cx, cy), rotated by ``angle`` radians."""
    ys, xs = np.mgrid[0:size, 0:size] + 0.5
    dx, dy = xs - cx, ys - cy
    c, s = math.cos(angle), math.sin(angle)
    return inside(shape, (c * dx + s * dy) / (w / 2), (-s * dx + c * dy) / (h / 2))


# ------------------------------------------------------------------------------------------------ photos

class Photos:
    """The photos of one split, decoded on demand and resized to the set's image size."""

    def __init__(self, source: str, split: str, size: int):
        self.shard = read_shard(find_shard(source, split, download=source != 'fixture'))
        self.size = size

    def __len__(self) -> int:
        return len(self.shard)

    def get(self, i: int, size: Optional[int] = None) -> np.ndarray:
        img = Image.fromarray(self.shard.decode(i))
        n = size or self.size
        if img.size != (n, n):
            img = img.resize((n, n), Image.BILINEAR)
        return np.asarray(img)


def _texture(rng: np.random.Generator, photos: Photos, size: int) -> np.ndarray:
    """A ``size`` x ``size`` texture: a photo zoomed 1.5-3x around a random point, channels scaled 0.6-1.4."""
    zoom = rng.uniform(1.5, 3.0)
    big = photos.get(int(rng.integers(len(photos))), size=int(round(size * zoom)))
    x0, y0 = (int(rng.integers(big.shape[0] - size + 1)) for _ in range(2))
    tex = big[y0:y0 + size, x0:x0 + size].astype(np.float32) * rng.uniform(0.6, 1.4, 3)
    return np.clip(tex, 0, 255).astype(np.uint8)


def draw_image(cfg: ShapesConfig, photos: Photos, split: str, index: int) -> Tuple[np.ndarray, List[dict]]:
    """Image ``index`` of ``split``: ``uint8 (S, S, 3)`` and its instances ``[{'shape', 'mask'}]`` (visible masks,
    bottom to top). A function of (config, split, index) alone."""
    rng = np.random.default_rng(np.random.SeedSequence([cfg.seed, SPLITS.index(split), index]))
    S = cfg.img_size
    img = photos.get(int(rng.integers(len(photos)))).copy()
    wanted = int(rng.integers(cfg.min_instances, cfg.max_instances + 1))
    # largest first: smaller instances then occlude parts of larger ones, rarely the reverse
    sides = sorted(np.exp(rng.uniform(math.log(cfg.min_side), math.log(cfg.max_side), wanted)), reverse=True)
    placed: List[dict] = []  # {'shape', 'full': area if unclipped, 'mask': visible pixels}
    for side in sides:
        for _attempt in range(30):
            shape = SHAPES[int(rng.integers(len(SHAPES)))]
            aspect = math.exp(rng.uniform(-math.log(cfg.max_aspect), math.log(cfg.max_aspect)))
            w, h = side * math.sqrt(aspect), side / math.sqrt(aspect)
            margin = min(S / 2, side / 4)  # large instances stay mostly in frame
            cx, cy = rng.uniform(margin, S - margin, 2)
            angle = rng.uniform(0, 2 * math.pi)
            mask = shape_mask(shape, S, cx, cy, w, h, angle)
            full = FILL[shape] * w * h
            if mask.sum() < max(cfg.min_visible * full, 4):
                continue  # mostly out of frame
            if any((p['mask'] & ~mask).sum() < cfg.min_visible * p['full'] for p in placed):
                continue  # would hide too much of an earlier instance
            for p in placed:
                p['mask'] = p['mask'] & ~mask
            placed.append(dict(shape=shape, full=full, mask=mask, texture=_texture(rng, photos, S)))
            break
    if not placed:  # cannot happen with min_side below the image size, but an empty image is never written
        raise RuntimeError(f'{split} image {index}: no instance could be placed; check the shapes config {cfg}')
    for p in placed:  # bottom to top: the visible masks are exactly what stays painted
        img[p['mask']] = p.pop('texture')[p['mask']]
    return img, [dict(shape=p['shape'], mask=p['mask']) for p in placed]


# ------------------------------------------------------------------------------------------ COCO format

def categories() -> List[dict]:
    return [dict(id=i + 1, name=s, supercategory='shape') for i, s in enumerate(SHAPES)]


def annotations(instances: List[dict], image_id: int, first_id: int) -> List[dict]:
    """COCO annotations of one image's instances: RLE masks, tight boxes and pixel areas from pycocotools."""
    from pycocotools import mask as mask_utils
    out = []
    for k, inst in enumerate(instances):
        rle = mask_utils.encode(np.asfortranarray(inst['mask'].astype(np.uint8)))
        out.append(dict(id=first_id + k, image_id=image_id, category_id=SHAPES.index(inst['shape']) + 1,
                        segmentation=dict(size=[int(x) for x in rle['size']], counts=rle['counts'].decode('ascii')),
                        area=float(mask_utils.area(rle)), bbox=[float(x) for x in mask_utils.toBbox(rle)],
                        iscrowd=0))
    return out


def _png(img: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(img).save(buf, format='PNG', compress_level=6)
    return buf.getvalue()


def generate_split(cfg: ShapesConfig, split: str, folder: Path, log=None) -> dict:
    """Draw one split into ``folder/<split>/`` and return its COCO dataset dict."""
    photos = Photos(cfg.photos, split, cfg.img_size)
    (folder / split).mkdir(parents=True, exist_ok=True)
    images, anns = [], []
    n = cfg.images(split)
    for i in range(n):
        img, instances = draw_image(cfg, photos, split, i)
        name = f'{i:06d}.png'
        (folder / split / name).write_bytes(_png(img))
        images.append(dict(id=i + 1, file_name=name, width=cfg.img_size, height=cfg.img_size))
        anns += annotations(instances, i + 1, len(anns) + 1)
        if log and (i + 1) % 500 == 0:
            log(f'[shapes] {split}: {i + 1}/{n} images')
    return dict(info=dict(description='stm-lab generated shapes', config=cfg.to_dict(), generator=GENERATOR_VERSION),
                images=images, annotations=anns, categories=categories())


def set_folder(cfg: ShapesConfig, cache_dir: Optional[Path] = None) -> Path:
    return Path(cache_dir or CACHE_DIR) / 'detection' / f'shapes-{cfg.digest()}'


def _log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def ensure(cfg: ShapesConfig, generate: bool = True, cache_dir: Optional[Path] = None, log=_log) -> Path:
    """The set's folder, generated first if it is not in the cache (one process generates, others wait for it).
    ``generate=False``: a missing set is an error saying how to make it."""
    folder = set_folder(cfg, cache_dir)
    if (folder / 'config.json').exists():
        return folder
    if not generate:
        raise FileNotFoundError(f'detection set not found in the cache: {folder} (config {cfg.to_dict()}); '
                                f'generate it with `stm-lab detect data --profile <profile>` (or generate=True)')
    folder.parent.mkdir(parents=True, exist_ok=True)
    with open(folder.parent / f'.{folder.name}.lock', 'w') as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # held until the with-block ends, or the process dies
        if (folder / 'config.json').exists():  # another process made it meanwhile
            return folder
        tmp = folder.parent / f'.{folder.name}.{os.getpid()}.tmp'
        shutil.rmtree(tmp, ignore_errors=True)
        log(f'[shapes] generating {cfg.train_images} train and {cfg.val_images} val images of {cfg.img_size} px '
            f'into {folder} (once)')
        for split in SPLITS:
            doc = generate_split(cfg, split, tmp, log)
            (tmp / f'instances_{split}.json').write_text(json.dumps(doc, sort_keys=True))
        (tmp / 'config.json').write_text(json.dumps(dict(cfg.to_dict(), generator=GENERATOR_VERSION), sort_keys=True))
        os.replace(tmp, folder)  # the folder appears whole, or not at all
    return folder


def split_paths(folder: Path, split: str) -> Tuple[Path, Path]:
    """(image folder, COCO annotation file) of a split of a generated set."""
    if split not in SPLITS:
        raise KeyError(f'the shapes set has no split {split!r}; valid: {", ".join(SPLITS)}')
    return folder / split, folder / f'instances_{split}.json'


def bucket_counts(doc: dict) -> Dict[str, int]:
    """Instances per COCO area bucket (small < 32^2 <= medium < 96^2 <= large), as pycocotools buckets them."""
    areas = np.array([a['area'] for a in doc['annotations']])
    return dict(small=int((areas < 32 ** 2).sum()), medium=int(((areas >= 32 ** 2) & (areas < 96 ** 2)).sum()),
                large=int((areas >= 96 ** 2).sum()))
