"""Datasets and the paper's augmentation (Table IV), built from timm's parts.

Datasets (``DataConfig.dataset``):

- ``imagenette`` (train / val, 10 ImageNet classes, 128x128) and ``cifar10`` (train / test, 32x32): JPEG shards
  (format in ``data/README.md``) read from ``$STM_LAB_DATA`` or ``../shared/data``; where neither has them they
  are fetched from the original sources (fast.ai's Imagenette archive, torchvision's CIFAR-10 download) and
  packed into the same shard format under the cache folder. Each shard is decoded once into a ``uint8
  (N, H, W, 3)`` array cached as ``.npy`` (``$STM_LAB_CACHE``, else ``.cache/`` in a checkout and
  ``~/.cache/stm_lab`` for an installed package) and then memory-mapped.
- ``fixture``: the tiny committed shards in ``data/fixture/`` (tests and the ``smoke`` profile).
- ``imagenet``: an ImageNet-1k folder in the standard layout (``<data_dir>/{train,val}/<wnid>/*.JPEG``), read
  with torchvision's ``ImageFolder`` (``paper`` profile).

Augmentation: timm's ``create_transform`` with ``use_prefetcher=True`` gives a per-image ``uint8`` tensor
(RandomResizedCrop, flip, RandAugment, or eval resize + center crop at ``crop_pct``); :class:`BatchFinish` then
normalizes the whole batch and applies timm's ``RandomErasing`` to it, as timm's prefetcher does; mixup/cutmix
with label smoothing is timm's ``Mixup`` (:func:`build_mixup`).
"""
from __future__ import annotations

import io
import json
import os
import sys
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Dict, List, Optional, Tuple

import numpy as np
import torch
from PIL import Image, ImageOps
from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD, Mixup, create_transform
from timm.data.auto_augment import RandAugment
from timm.data.random_erasing import RandomErasing

from .assets import demo_dir
from .results import ROOT, atomic_write_bytes, cache_dir

DATA_DIR = Path(os.environ.get('STM_LAB_DATA', ROOT.parent / 'shared' / 'data'))
CACHE_DIR = cache_dir()  # never inside an installed package (results.cache_dir)
FIXTURE_DIR = ROOT / 'data' / 'fixture'
DEMO_DIR = demo_dir()  # data/demo of the checkout, or the copy a wheel carries (stm_lab.assets)

# dataset -> (folder, {split: shard file}, native image side)
SHARDS: Dict[str, Tuple[str, Dict[str, str], int]] = {
    'imagenette': ('imagenette', {'train': 'imagenette128_train.npz', 'val': 'imagenette128_val.npz'}, 128),
    'cifar10': ('cifar10', {'train': 'cifar10_train.npz', 'test': 'cifar10_test.npz'}, 32),
    'fixture': ('fixture', {'train': 'fixture_train.npz', 'val': 'fixture_val.npz'}, 64),
}
SPLIT_ALIASES = {('cifar10', 'val'): 'test'}
IMAGENETTE_URL = 'https://s3.amazonaws.com/fast-ai-imageclas/imagenette2-320.tgz'
IMAGENETTE_WNIDS = ('n01440764', 'n02102040', 'n02979186', 'n03000684', 'n03028079', 'n03394916', 'n03417042',
                    'n03425413', 'n03445777', 'n03888605')
IMAGENETTE_CLASSES = ('tench', 'English springer', 'cassette player', 'chain saw', 'church', 'French horn',
                      'garbage truck', 'gas pump', 'golf ball', 'parachute')


def value_checker(prefix: str) -> Callable:
    """``check(name, value, what, ok)``: raise ``ValueError('<prefix><name> must be <what>, got <value>')`` unless
    ``ok(value)`` (a value of the wrong type fails too)."""
    def check(name, value, what, ok):
        try:
            good = ok(value)
        except (TypeError, ValueError):
            good = False
        if not good:
            raise ValueError(f'{prefix}{name} must be {what}, got {value!r}')
    return check


@dataclass
class DataConfig:
    """Which images, and how they become batches (the paper's Table IV augmentation by default)."""
    dataset: str = 'imagenette'  # imagenette | cifar10 | fixture | imagenet
    data_dir: Optional[str] = None  # imagenet: the folder holding train/ and val/; else overrides the shard folder
    img_size: int = 64
    train_split: str = 'train'
    val_split: str = 'val'
    # train-time augmentation (timm create_transform)
    scale: Tuple[float, float] = (0.08, 1.0)  # RandomResizedCrop area range
    ratio: Tuple[float, float] = (3 / 4, 4 / 3)
    hflip: float = 0.5
    auto_augment: Optional[str] = 'rand-m9-mstd0.5-inc1'  # RandAugment m9
    color_jitter: float = 0.4  # as in Table IV; timm ignores it when RandAugment is on (as the paper's code did)
    interpolation: str = 'bicubic'
    re_prob: float = 0.25  # random erasing, per image, applied to the normalized batch
    re_mode: str = 'pixel'
    re_count: int = 1
    # mixup / cutmix with label smoothing (timm Mixup, targets for SoftTargetCrossEntropy)
    mixup: float = 0.8
    cutmix: float = 1.0
    mixup_prob: float = 1.0
    mixup_switch_prob: float = 0.5
    label_smoothing: float = 0.1
    # evaluation: resize to img_size / crop_pct, center crop img_size
    crop_pct: float = 0.875
    mean: Tuple[float, float, float] = IMAGENET_DEFAULT_MEAN
    std: Tuple[float, float, float] = IMAGENET_DEFAULT_STD
    num_workers: int = 0  # 0: augment in the main process (measured fastest on 2 cores, see data/README.md)
    download: bool = True  # fetch from the original source when no local copy is found

    def __post_init__(self):
        self.scale, self.ratio = tuple(self.scale), tuple(self.ratio)
        self.mean, self.std = tuple(self.mean), tuple(self.std)
        self.check()

    def check(self) -> None:
        """A bad value raises one clear ValueError here, not a traceback from inside timm later."""
        checker = value_checker('data.')

        def check(name, ok, what):
            checker(name, getattr(self, name), what, ok)

        def probability(v):
            return 0 <= v <= 1
        check('img_size', lambda v: isinstance(v, int) and v >= 1, 'an integer of at least 1')
        check('scale', lambda v: len(v) == 2 and 0 < v[0] <= v[1] <= 1, 'two numbers lo,hi with 0 < lo <= hi <= 1')
        check('ratio', lambda v: len(v) == 2 and 0 < v[0] <= v[1] < float('inf'), 'two numbers lo,hi with 0 < lo <= hi')
        for name in ('hflip', 're_prob', 'mixup_prob', 'mixup_switch_prob'):
            check(name, probability, 'a probability in [0, 1]')
        for name in ('mixup', 'cutmix', 'color_jitter'):
            check(name, lambda v: 0 <= v < float('inf'), 'a number of at least 0')
        check('label_smoothing', lambda v: 0 <= v < 1, 'a number in [0, 1)')
        check('crop_pct', lambda v: 0 < v <= 1, 'a number in (0, 1]')
        check('mean', lambda v: len(v) == 3, 'three numbers (one per channel)')
        check('std', lambda v: len(v) == 3 and all(x > 0 for x in v), 'three numbers above 0 (one per channel)')
        for name in ('num_workers', 're_count'):
            check(name, lambda v: isinstance(v, int) and v >= 0, 'an integer of at least 0')

    def to_dict(self) -> dict:
        return asdict(self)


# ----------------------------------------------------------------------------------------------- shards

@dataclass
class Shard:
    """One split as stored: all JPEG files concatenated, with offsets, labels and class names."""
    path: Path
    jpeg: np.ndarray
    offsets: np.ndarray
    labels: np.ndarray
    classes: List[str]
    names: List[str] = field(repr=False, default_factory=list)

    def __len__(self) -> int:
        return len(self.labels)

    def jpeg_bytes(self, i: int) -> bytes:
        return self.jpeg[self.offsets[i]:self.offsets[i + 1]].tobytes()

    def decode(self, i: int) -> np.ndarray:
        """Image ``i`` as ``uint8 (H, W, 3)`` RGB."""
        with Image.open(io.BytesIO(self.jpeg_bytes(i))) as im:
            return np.asarray(im.convert('RGB'))


def read_shard(path) -> Shard:
    path = Path(path)
    try:
        with np.load(path, allow_pickle=False) as d:
            shard = Shard(path, d['jpeg'], d['offsets'].astype(np.int64), d['labels'].astype(np.int64),
                          [str(c) for c in d['classes']], [str(n) for n in d['names']])
    except (OSError, ValueError, KeyError) as e:
        raise ValueError(f'{path} is not a readable image shard ({e}); see data/README.md for the format') from None
    if len(shard.offsets) != len(shard.labels) + 1 or shard.offsets[-1] != len(shard.jpeg):
        raise ValueError(f'{path}: offsets do not match the JPEG data ({len(shard.offsets)} offsets, '
                         f'{len(shard.labels)} labels, {len(shard.jpeg)} bytes)')
    return shard


def write_shard(path, jpegs: List[bytes], labels, classes, names) -> Path:
    """Pack JPEG files into the shard format (uncompressed npz), atomically."""
    offsets = np.zeros(len(jpegs) + 1, np.int64)
    offsets[1:] = np.cumsum([len(j) for j in jpegs])
    buf = io.BytesIO()
    np.savez(buf, jpeg=np.frombuffer(b''.join(jpegs), np.uint8), offsets=offsets,
             labels=np.asarray(labels, np.uint8), classes=np.asarray(classes), names=np.asarray(names))
    atomic_write_bytes(Path(path), buf.getvalue())
    return Path(path)


def _split(dataset: str, split: str) -> str:
    return SPLIT_ALIASES.get((dataset, split), split)


def shard_candidates(dataset: str, split: str, data_dir: Optional[str] = None) -> List[Path]:
    """Where a shard is looked for, in order."""
    folder, files, _ = SHARDS[dataset]
    name = files[_split(dataset, split)]
    if dataset == 'fixture':
        return [Path(data_dir) / name] if data_dir else [FIXTURE_DIR / name]
    roots = [Path(data_dir)] if data_dir else [DATA_DIR]
    return [r / folder / name for r in roots] + [CACHE_DIR / 'shards' / folder / name]


def find_shard(dataset: str, split: str, data_dir: Optional[str] = None, download: bool = True) -> Path:
    if dataset not in SHARDS:
        raise KeyError(f'unknown dataset {dataset!r}; valid: {", ".join([*SHARDS, "imagenet"])}')
    files = SHARDS[dataset][1]
    if _split(dataset, split) not in files:
        raise KeyError(f'dataset {dataset!r} has no split {split!r}; valid: {", ".join(files)}')
    places = shard_candidates(dataset, split, data_dir)
    for p in places:
        if p.exists():
            return p
    if download and dataset in DOWNLOADERS:
        try:
            DOWNLOADERS[dataset](CACHE_DIR / 'shards' / SHARDS[dataset][0])
        except Exception as e:  # no network, disk full, moved archive: say what to do instead
            raise FileNotFoundError(missing_message(dataset, split, places, f'the download failed: {e}')) from None
        if places[-1].exists():
            return places[-1]
    raise FileNotFoundError(missing_message(dataset, split, places))


def missing_message(dataset: str, split: str, places: List[Path], why: str = '') -> str:
    looked = '\n'.join(f'  - {p}' for p in places)
    how = {
        'imagenette': f'fetch it with `download=True` (the fast.ai archive {IMAGENETTE_URL}, packed into shards '
                      f'under {CACHE_DIR / "shards"}), or point $STM_LAB_DATA at a folder holding '
                      f'imagenette/imagenette128_{{train,val}}.npz',
        'cifar10': f'fetch it with `download=True` (torchvision\'s CIFAR-10 download, packed into shards under '
                   f'{CACHE_DIR / "shards"}), or point $STM_LAB_DATA at a folder holding cifar10/cifar10_*.npz',
        'fixture': 'regenerate it with `python data/prepare_fixture.py` (needs the Imagenette val shard)',
    }[dataset]
    return (f'{dataset} {split} shard not found{"; " + why if why else ""}. Looked in:\n{looked}\n'
            f'To get it: {how}.')


# ------------------------------------------------------------------------------------------- downloads

def _download_cifar10(out_dir: Path) -> None:
    """torchvision's CIFAR-10 download (official pickles) -> shards (JPEG q95 4:4:4, close to lossless)."""
    from torchvision.datasets import CIFAR10
    raw = CACHE_DIR / 'downloads'
    for split, train in (('train', True), ('test', False)):
        ds = CIFAR10(str(raw), train=train, download=True)
        jpegs = [_encode_jpeg(img, quality=95, subsampling=0) for img in ds.data]
        write_shard(out_dir / f'cifar10_{split}.npz', jpegs, ds.targets, ds.classes,
                    [f'{split}_{i:05d}.png' for i in range(len(ds.targets))])


def _download_imagenette(out_dir: Path) -> None:
    """fast.ai's imagenette2 archive -> 128x128 shards (whole image resized, aspect not kept, JPEG q90),
    like the shared copy (which was resized from 224x224: the pixels are close, not identical)."""
    from torchvision.datasets.utils import download_and_extract_archive
    raw = CACHE_DIR / 'downloads'
    root = raw / 'imagenette2-320'
    if not root.exists():
        download_and_extract_archive(IMAGENETTE_URL, str(raw))
    for split in ('train', 'val'):
        jpegs, labels, names = [], [], []
        for label, wnid in enumerate(IMAGENETTE_WNIDS):
            for f in sorted((root / split / wnid).glob('*.JPEG')):
                with Image.open(f) as im:
                    img = np.asarray(im.convert('RGB').resize((128, 128), Image.BICUBIC))
                jpegs.append(_encode_jpeg(img, quality=90))
                labels.append(label)
                names.append(f.name)
        write_shard(out_dir / f'imagenette128_{split}.npz', jpegs, labels, IMAGENETTE_CLASSES, names)


DOWNLOADERS = {'cifar10': _download_cifar10, 'imagenette': _download_imagenette}


def _encode_jpeg(img: np.ndarray, quality: int = 90, subsampling: int = 2) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(img).save(buf, format='JPEG', quality=quality, subsampling=subsampling)
    return buf.getvalue()


# ------------------------------------------------------------------------------------ decoded array cache

def decode_shard(shard: Shard) -> np.ndarray:
    return np.stack([shard.decode(i) for i in range(len(shard))]) if len(shard) else np.zeros((0, 1, 1, 3), np.uint8)


def decoded_images(path: Path, verbose: bool = True) -> np.ndarray:
    """The shard's images as ``uint8 (N, H, W, 3)``, decoded once and cached (memory-mapped afterwards).
    The cache file is keyed by the shard's name, size and modification time, so a changed shard is re-decoded."""
    path = Path(path)
    st = path.stat()
    cache = CACHE_DIR / 'decoded' / f'{path.stem}-{st.st_size}-{st.st_mtime_ns}.npy'
    if cache.exists():
        try:
            return np.load(cache, mmap_mode='r')
        except (OSError, ValueError):
            pass  # damaged cache file: decode again and replace it
    if verbose:
        print(f'[data] decoding {path.name} once into {cache}', file=sys.stderr, flush=True)
    images = decode_shard(read_shard(path))
    buf = io.BytesIO()
    np.save(buf, images)
    atomic_write_bytes(cache, buf.getvalue())
    return np.load(cache, mmap_mode='r')


class ArrayDataset(torch.utils.data.Dataset):
    """Images held as one ``uint8 (N, H, W, 3)`` array; items go through a PIL transform."""

    def __init__(self, images: np.ndarray, labels, classes, transform=None):
        self.images, self.labels, self.classes = images, np.asarray(labels, np.int64), list(classes)
        self.transform = transform

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i):
        img = Image.fromarray(np.asarray(self.images[i]))
        return (self.transform(img) if self.transform else img), int(self.labels[i])



ANALYSIS_SEED = 0  # the analyses' fixed image subsets and shift directions (and the training tracker's)


def subset_indices(n: int, limit: int, seed: int = 0) -> List[int]:
    """The fixed seeded subset of ``limit`` of ``n`` images (sorted), the same for every model and analysis."""
    return sorted(np.random.default_rng(seed).permutation(n)[:min(limit, n)].tolist())


def split_images(dataset: str, split: str, limit: int, seed: int = 0) -> Tuple[torch.Tensor, torch.Tensor, List[str]]:
    """A fixed, seeded subset of ``limit`` images of a split (the same for every model and analysis of that size):
    un-cropped float images in [0, 1], ``(N, 3, H, W)``, their labels and the class names."""
    path = find_shard(dataset, split, download=dataset != 'fixture')
    with np.load(path, allow_pickle=False) as d:
        labels, classes = d['labels'].astype(np.int64), [str(c) for c in d['classes']]
    idx = subset_indices(len(labels), limit, seed)
    x = torch.from_numpy(np.ascontiguousarray(decoded_images(path)[idx])).permute(0, 3, 1, 2).float().div_(255)
    return x, torch.from_numpy(labels[idx]), classes

def load_dataset(cfg: DataConfig, split: str, transform=None) -> torch.utils.data.Dataset:
    """One split of ``cfg.dataset`` as a map-style dataset of ``(transform(PIL image), label)``."""
    if cfg.dataset == 'imagenet':
        return _imagenet_folder(cfg, split, transform)
    path = find_shard(cfg.dataset, split, cfg.data_dir, cfg.download)
    with np.load(path, allow_pickle=False) as d:
        labels, classes = d['labels'].astype(np.int64), [str(c) for c in d['classes']]
    return ArrayDataset(decoded_images(path), labels, classes, transform)


def _imagenet_folder(cfg: DataConfig, split: str, transform):
    from torchvision.datasets import ImageFolder
    base = cfg.data_dir or os.environ.get('STM_LAB_IMAGENET')
    how = ('Pass --data-dir (or set $STM_LAB_IMAGENET) to a folder holding train/<wnid>/*.JPEG and '
           'val/<wnid>/*.JPEG (the standard layout; ImageNet-1k comes from https://image-net.org after accepting '
           'its terms, with the val images sorted into class folders).')
    if not base:
        raise FileNotFoundError(f'ImageNet-1k: no folder given. {how}')
    root = Path(base) / split
    if not root.is_dir():
        raise FileNotFoundError(f'ImageNet-1k {split} folder not found: looked in {root}. {how}')
    ds = ImageFolder(str(root), transform=transform)
    ds.labels = np.asarray(ds.targets, np.int64)
    return ds


def class_names(cfg: DataConfig) -> List[str]:
    if cfg.dataset == 'imagenet':
        return load_dataset(cfg, cfg.val_split).classes
    with np.load(find_shard(cfg.dataset, cfg.val_split, cfg.data_dir, cfg.download), allow_pickle=False) as d:
        return [str(c) for c in d['classes']]


# ------------------------------------------------------------------------------------------ transforms

def _posterize(img, bits_to_keep, **_):
    """timm's posterize op, accepting 0 bits (a black image, what Pillow < 13 returned and TF's RandAugment does).
    Pillow 13 raises for 0 bits, which RandAugment m9 with mstd 0.5 reaches whenever the sampled magnitude is 10."""
    if bits_to_keep >= 8:
        return img
    if bits_to_keep <= 0:
        return Image.new(img.mode, img.size)
    return ImageOps.posterize(img, bits_to_keep)


def _patch_posterize(transform) -> None:
    for t in getattr(transform, 'transforms', ()):
        if isinstance(t, RandAugment):
            for op in t.ops:
                if op.name.startswith('Posterize'):
                    op.aug_fn = _posterize


def image_transform(cfg: DataConfig, train: bool):
    """Per-image PIL -> ``uint8 (3, S, S)`` tensor: timm's training transform (RandomResizedCrop, flip, RandAugment)
    or its eval transform (resize to ``S / crop_pct``, center crop ``S``). Normalization and random erasing
    happen on the batch (:class:`BatchFinish`)."""
    if train:
        tf = create_transform(cfg.img_size, is_training=True, scale=cfg.scale, ratio=cfg.ratio, hflip=cfg.hflip,
                              color_jitter=cfg.color_jitter, auto_augment=cfg.auto_augment,
                              interpolation=cfg.interpolation, mean=cfg.mean, std=cfg.std, use_prefetcher=True)
        _patch_posterize(tf)
        return tf
    return create_transform(cfg.img_size, is_training=False, interpolation=cfg.interpolation,
                            crop_pct=cfg.crop_pct, mean=cfg.mean, std=cfg.std, use_prefetcher=True)


class BatchFinish:
    """``uint8`` batch -> normalized float batch, then timm's RandomErasing per image (training only)."""

    def __init__(self, cfg: DataConfig, train: bool, device='cpu'):
        self.mean = torch.tensor([255 * m for m in cfg.mean], device=device).view(1, 3, 1, 1)
        self.std = torch.tensor([255 * s for s in cfg.std], device=device).view(1, 3, 1, 1)
        self.erase = (RandomErasing(cfg.re_prob, mode=cfg.re_mode, max_count=cfg.re_count, device=device)
                      if train and cfg.re_prob > 0 else None)
        self.device = device

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        x = (x.to(self.device, non_blocking=True).float() - self.mean) / self.std
        return self.erase(x) if self.erase is not None else x


def build_mixup(cfg: DataConfig, num_classes: int) -> Optional[Mixup]:
    """timm's Mixup (batch mode) with label smoothing; None when mixup and cutmix are both off (timm's Mixup
    refuses that; label smoothing alone is then the training loss's job)."""
    if cfg.mixup <= 0 and cfg.cutmix <= 0:
        return None
    return Mixup(mixup_alpha=cfg.mixup, cutmix_alpha=cfg.cutmix, prob=cfg.mixup_prob,
                 switch_prob=cfg.mixup_switch_prob, mode='batch', label_smoothing=cfg.label_smoothing,
                 num_classes=num_classes)


# --------------------------------------------------------------------------------------------- demo photos

def demo_photos() -> List[dict]:
    """The committed demo photos (Imagenette val, 128x128): ``[{file, path, label, class, source}]``."""
    meta = json.loads((DEMO_DIR / 'labels.json').read_text())
    return [dict(m, path=str(DEMO_DIR / m['file'])) for m in meta]
