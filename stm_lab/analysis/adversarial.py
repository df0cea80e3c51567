"""Adversarial robustness under FGSM (paper Sec. 6.3, Fig. 8).

Fast gradient sign method (Goodfellow et al., "Explaining and harnessing adversarial examples", ICLR 2015),
untargeted: x' = clamp(x + epsilon * sign(grad_x CE(f(x), y)), 0, 1), computed with ``captum.robust.FGSM``.

The attack lives in pixel space: images are floats in [0, 1], the model is wrapped so that it normalizes
inside (:class:`~stm_lab.analysis.common.PixelSpace`), so epsilon is in units of the [0, 1] range
(8/255 = eight grey levels) and the clamp keeps valid images. The paper gives the epsilons (0.5/255, 2/255,
8/255) but no code, so how it handled normalization is unknown.

Two captum settings, and why:

- the loss is per-image cross-entropy (``reduction='none'``), so each image's gradient does not shrink with
  the batch size;
- captum leaves a pixel unperturbed when ``|gradient|`` <= ``zero_thresh`` (1e-6 by default); confidently
  classified images of a trained model have gradients far below that, so the threshold is set to 0 (only
  exactly-zero gradients, whose sign is 0 anyway, leave a pixel unchanged).
"""
from __future__ import annotations

from typing import List, Optional, Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F
from captum.robust import FGSM

from .common import Data, PixelSpace, eval_frozen, iter_batches, model_device

PAPER_EPSILONS = (0.0, 0.5 / 255, 2 / 255, 8 / 255)  # clean + the paper's three strengths


def _per_image_ce(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    return F.cross_entropy(logits, labels, reduction='none')


def _attack(forward, bounded: bool = True) -> FGSM:
    lo, hi = (0.0, 1.0) if bounded else (float('-inf'), float('inf'))
    attack = FGSM(forward, loss_func=_per_image_ce, lower_bound=lo, upper_bound=hi)
    attack.zero_thresh = 0.0  # see the module docstring
    return attack


def _perturb(attack: FGSM, x: torch.Tensor, epsilon: float, labels: torch.Tensor) -> torch.Tensor:
    x = x.detach().requires_grad_(True)  # captum would set it (with a warning) and unset it again
    return attack.perturb(x, epsilon, labels).detach()


def fgsm_perturb(model: nn.Module, images: torch.Tensor, labels: torch.Tensor, epsilon: float, *,
                 mean=None, std=None) -> torch.Tensor:
    """Adversarial images (same shape, in [0, 1]) for a batch of [0, 1] ``images`` with true ``labels``."""
    net = PixelSpace(model, mean, std).to(model_device(model))
    with eval_frozen(model):
        x = images.to(model_device(model), torch.float32)
        return _perturb(_attack(net), x, epsilon, labels.to(x.device))


def _direction(net: nn.Module, x: torch.Tensor, y: torch.Tensor):
    """sign(grad_x CE(net(x), y)) from captum's step at epsilon 1, unbounded, and the clean logits of that forward."""
    seen = {}

    def forward(inp):  # keeps the clean logits of captum's own forward pass
        seen['logits'] = out = net(inp)
        return out

    direction = torch.sign(_perturb(_attack(forward, bounded=False), x, 1.0, y) - x)
    return direction, seen['logits'].detach()


def fgsm_direction(model: nn.Module, images: torch.Tensor, labels: torch.Tensor, *, mean=None,
                   std=None) -> torch.Tensor:
    """The FGSM direction sign(grad) of each image (-1, 0 or 1, same shape as ``images``): it does not depend on
    epsilon, so ``(images + epsilon * direction).clamp(0, 1)`` is the FGSM image at any epsilon (what
    :func:`fgsm_sweep` and the book's in-browser lab do)."""
    net = PixelSpace(model, mean, std).to(model_device(model))
    with eval_frozen(model):
        x = images.to(model_device(model), torch.float32)
        return _direction(net, x, labels.to(x.device))[0]


@torch.no_grad()
def _logits(net: nn.Module, x: torch.Tensor) -> torch.Tensor:
    return net(x)


def fgsm_sweep(model: nn.Module, data: Data, /, epsilons: Sequence[float] = PAPER_EPSILONS, *,
               batch_size: int = 64, mean=None, std=None, reuse_gradient: bool = True,
               progress: bool = True, keep: Optional[dict] = None, **fields) -> List[dict]:
    """Top-1 accuracy and mean loss of the model on FGSM examples at each epsilon ([0, 1] pixel units).

    ``data``: (images, labels) tensors or an iterable of such batches (labels are required).
    ``reuse_gradient``: the FGSM direction sign(grad) does not depend on epsilon, so captum computes the step
    once per batch (at epsilon 1, unbounded) and every epsilon reuses its sign, clamped to [0, 1]: one
    forward+backward per batch instead of one per epsilon. The clean logits come from that same forward.
    With ``reuse_gradient=False`` captum's ``perturb`` runs for each epsilon (identical results, slower).
    ``keep``: a dict that receives each image's predicted class at every epsilon, ``keep[epsilon]`` (N,).
    Records: ``{'attack': 'fgsm', 'epsilon', 'epsilon_255', 'top1', 'clean_top1', 'loss', 'n'}`` plus
    ``fields``; epsilon 0 is the clean accuracy."""
    device = model_device(model)
    net = PixelSpace(model, mean, std).to(device)
    eps_list = [float(e) for e in epsilons]
    correct = dict.fromkeys(eps_list, 0)
    loss_sum = dict.fromkeys(eps_list, 0.0)
    clean_correct = n = 0
    with eval_frozen(model):
        for x, y in iter_batches(data, batch_size, progress, desc='FGSM'):
            if y is None:
                raise ValueError('fgsm_sweep needs labels: pass (images, labels) or batches of them')
            x, y = x.to(device, torch.float32), y.to(device)
            if reuse_gradient:
                direction, clean = _direction(net, x, y)
            else:
                clean = _logits(net, x)
            clean_correct += (clean.argmax(-1) == y).sum().item()
            for eps in eps_list:
                if not reuse_gradient:  # the reference path: captum for every epsilon, 0 included
                    logits = _logits(net, _perturb(_attack(net), x, eps, y))
                elif eps == 0:
                    logits = clean  # x + 0 * direction = x
                else:
                    logits = _logits(net, (x + eps * direction).clamp(0, 1))
                pred = logits.argmax(-1)
                correct[eps] += (pred == y).sum().item()
                if keep is not None:
                    keep.setdefault(eps, []).append(pred.cpu())
                loss_sum[eps] += _per_image_ce(logits.float(), y).sum().item()
            n += len(y)
    if n == 0:
        raise ValueError('fgsm_sweep got no images')
    if keep is not None:
        for k, parts in keep.items():
            keep[k] = torch.cat(parts)
    return [dict(**fields, attack='fgsm', epsilon=eps, epsilon_255=round(eps * 255, 4), top1=correct[eps] / n,
                 clean_top1=clean_correct / n, loss=loss_sum[eps] / n, n=n) for eps in eps_list]
