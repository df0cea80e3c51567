"""Input handling shared by the analyses (ERF, invariance, FGSM): the pixel-space wrapper, batch iteration and
eval mode with frozen parameters."""
from __future__ import annotations

import contextlib
import math
from typing import Iterable, Iterator, Optional, Tuple, Union

import torch
import torch.nn as nn
from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
from tqdm.auto import tqdm

Data = Union[torch.Tensor, Tuple[torch.Tensor, torch.Tensor], Iterable]


def mean_std(model: nn.Module, mean=None, std=None) -> Tuple[Tuple[float, ...], Tuple[float, ...]]:
    """Normalization constants: explicit ones, else the model's timm ``pretrained_cfg``, else ImageNet's."""
    cfg = getattr(model, 'pretrained_cfg', None) or {}
    return (tuple(mean if mean is not None else cfg.get('mean', IMAGENET_DEFAULT_MEAN)),
            tuple(std if std is not None else cfg.get('std', IMAGENET_DEFAULT_STD)))


class PixelSpace(nn.Module):
    """``model`` taking [0, 1] pixel-space images: normalizes inside, so that gradients and perturbations
    (FGSM) live in pixel space, where clamping to the valid range is meaningful."""

    def __init__(self, model: nn.Module, mean=None, std=None):
        super().__init__()
        self.model = model
        m, s = mean_std(model, mean, std)
        self.register_buffer('mean', torch.tensor(m).view(1, -1, 1, 1), persistent=False)
        self.register_buffer('std', torch.tensor(s).view(1, -1, 1, 1), persistent=False)

    def normalize(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.mean.to(x)) / self.std.to(x)

    def forward(self, x):
        return self.model(self.normalize(x))


def model_device(model: nn.Module) -> torch.device:
    p = next(model.parameters(), None)
    return p.device if p is not None else torch.device('cpu')


@contextlib.contextmanager
def eval_frozen(model: nn.Module, freeze: bool = True):
    """Eval mode (BatchNorm uses running stats, so images in a batch stay independent) and, with ``freeze``,
    parameters without gradients (input gradients only: the forward saves less); both restored on exit."""
    was_training = model.training
    frozen = [p for p in model.parameters() if p.requires_grad] if freeze else []
    model.eval()
    for p in frozen:
        p.requires_grad_(False)
    try:
        yield model
    finally:
        for p in frozen:
            p.requires_grad_(True)
        model.train(was_training)


def iter_batches(data: Data, batch_size: int = 64, progress: bool = True, desc: str = ''
                 ) -> Iterator[Tuple[torch.Tensor, Optional[torch.Tensor]]]:
    """Yield ``(images, labels or None)`` from an image tensor, an ``(images, labels)`` pair of tensors
    (split into ``batch_size`` chunks), or an iterable of batches (tensors or ``(images, labels, ...)``,
    e.g. a DataLoader, passed through unchanged)."""
    if isinstance(data, torch.Tensor):
        data = (data, None)
    if isinstance(data, (tuple, list)) and len(data) == 2 and isinstance(data[0], torch.Tensor) \
            and data[0].dim() == 4:
        images, labels = data
        n = images.shape[0]
        chunks = ((images[i:i + batch_size], None if labels is None else labels[i:i + batch_size])
                  for i in range(0, n, batch_size))
        total = math.ceil(n / batch_size)
    else:
        chunks = ((b, None) if isinstance(b, torch.Tensor) else (b[0], b[1]) for b in data)
        total = len(data) if hasattr(data, '__len__') else None
    yield from tqdm(chunks, total=total, desc=desc, disable=not progress, leave=False)
