"""FGSM: known answers (epsilon 0, loss increase, max-norm of the perturbation, pixel-space bounds)."""
import timm
import torch
import torch.nn as nn
import torch.nn.functional as F

import stm_lab  # noqa: F401  (registers the models)
from stm_lab.analysis.adversarial import PAPER_EPSILONS, fgsm_perturb, fgsm_sweep
from stm_lab.analysis.common import PixelSpace


def batch(n=16, side=32, seed=0, lo=0.1, hi=0.9):
    g = torch.Generator().manual_seed(seed)
    return lo + (hi - lo) * torch.rand(n, 3, side, side, generator=g), torch.randint(10, (n,), generator=g)


class Linear(nn.Module):
    """Logits linear in the pixels: cross-entropy is convex in the input, so an FGSM step (a move along the
    gradient's sign, partly clamped) can never lower the loss."""

    def __init__(self, side=32, scale=1.0):
        super().__init__()
        self.fc = nn.Linear(3 * side * side, 10)
        with torch.no_grad():
            self.fc.weight.mul_(scale)

    def forward(self, x):
        return self.fc(x.flatten(1))


def swin():
    torch.manual_seed(0)
    return timm.create_model('u_swin_test', num_classes=10, img_size=32)


def test_epsilon_zero_is_the_clean_accuracy():
    model = swin()
    x, y = batch()
    with torch.no_grad():
        acc = (PixelSpace(model.eval())(x).argmax(-1) == y).sum().item() / 16
    for reuse in (True, False):
        rows = fgsm_sweep(model, (x, y), (0.0, 2 / 255), batch_size=6, reuse_gradient=reuse, progress=False)
        assert rows[0]['epsilon'] == 0 and rows[0]['top1'] == rows[0]['clean_top1'] == acc and rows[0]['n'] == 16
    assert torch.equal(fgsm_perturb(model, x, y, 0.0), x)


def test_fgsm_does_not_lower_the_loss():
    x, y = batch()
    torch.manual_seed(0)
    for model, epsilons in ((Linear(), (0.0, 0.5 / 255, 2 / 255, 8 / 255, 0.5)), (swin(), (0.0, 0.5 / 255))):
        rows = fgsm_sweep(model, (x, y), epsilons, progress=False)
        losses = [r['loss'] for r in rows]
        assert all(b > a for a, b in zip(losses, losses[1:])), losses
    # per image, for the convex model
    model = Linear()
    adv = fgsm_perturb(model, x, y, 8 / 255)
    with torch.no_grad():
        net = PixelSpace(model)
        assert (F.cross_entropy(net(adv), y, reduction='none') >= F.cross_entropy(net(x), y, reduction='none')).all()


def test_perturbation_max_norm_is_epsilon_and_images_stay_valid():
    model = swin()
    x, y = batch()
    for eps in PAPER_EPSILONS[1:]:
        adv = fgsm_perturb(model, x, y, eps)
        delta = (adv - x).abs()
        assert abs(delta.max().item() - eps) < 1e-6  # interior pixels: exactly epsilon
        assert ((delta - eps).abs() < 1e-6).float().mean() > 0.99  # every pixel with a gradient moves
    # at the border of [0, 1] the clamp keeps images valid
    black, white = torch.zeros(4, 3, 32, 32), torch.ones(4, 3, 32, 32)
    for img in (black, white):
        adv = fgsm_perturb(model, img, y[:4], 8 / 255)
        assert adv.min() >= 0 and adv.max() <= 1 and (adv - img).abs().max() <= 8 / 255 + 1e-7


def test_tiny_gradients_still_move_every_pixel():
    """captum skips pixels with |grad| <= 1e-6 by default; a confident model has gradients far below that."""
    model = Linear(scale=200.0)
    x, _ = batch(n=4)
    with torch.no_grad():
        y = PixelSpace(model)(x).argmax(-1)  # labels = predictions: saturated softmax, vanishing gradients
    adv = fgsm_perturb(model, x, y, 2 / 255)
    assert ((adv - x).abs() - 2 / 255).abs().max() < 1e-6


def test_reusing_the_gradient_gives_the_same_records_as_one_attack_per_epsilon():
    model = swin()
    x, y = batch(n=10)
    eps = (0.0, 0.5 / 255, 2 / 255, 8 / 255)
    a = fgsm_sweep(model, (x, y), eps, batch_size=4, progress=False, model_name='swin')
    b = fgsm_sweep(model, (x, y), eps, batch_size=4, progress=False, reuse_gradient=False, model_name='swin')
    assert [r['top1'] for r in a] == [r['top1'] for r in b]
    for ra, rb in zip(a, b):
        assert abs(ra['loss'] - rb['loss']) < 1e-5
    assert set(a[0]) == {'model_name', 'attack', 'epsilon', 'epsilon_255', 'top1', 'clean_top1', 'loss', 'n'}
    assert [r['epsilon_255'] for r in a] == [0, 0.5, 2, 8]


def test_fgsm_direction_of_a_linear_model():
    """Known answer: for logits W x' + b with x' = (x - mean) / std, the input gradient of the cross-entropy is
    W^T (softmax - onehot) / std, so the direction is the sign of that."""
    from stm_lab.analysis.adversarial import fgsm_direction
    torch.manual_seed(0)
    model = Linear(side=8)
    x, y = batch(n=4, side=8)
    mean, std = (0.4, 0.5, 0.6), (0.2, 0.25, 0.3)
    d = fgsm_direction(model, x, y, mean=mean, std=std)
    m, s = torch.tensor(mean).view(1, 3, 1, 1), torch.tensor(std).view(1, 3, 1, 1)
    with torch.no_grad():
        p = torch.softmax(model((x - m) / s), -1)
        g = ((p - F.one_hot(y, 10).float()) @ model.fc.weight).view_as(x) / s
    assert torch.equal(d, torch.sign(g))
    # and FGSM at any epsilon is x + epsilon * direction, clamped
    assert torch.allclose(fgsm_perturb(model, x, y, 3 / 255, mean=mean, std=std), (x + 3 / 255 * d).clamp(0, 1))
