"""Invariance sweeps: known answers (identity transforms, input-blind and exactly shift-invariant models)."""
import pytest
import timm
import torch
import torch.nn as nn

import stm_lab  # noqa: F401  (registers the models)
from stm_lab.analysis.common import PixelSpace
from stm_lab.analysis.invariance import (crop, default_shifts, resize_short, rotation_sweep, scale_sweep,
                                         translation_sweep, zhang_consistency)
from stm_lab.mixers import create_mixer

S = 32  # crop size used in these tests (views come from 36x36 resized images)


def data(n=12, side=48, classes=10, seed=0):
    """Noise images with a random colour cast each, so that even untrained models tell them apart."""
    g = torch.Generator().manual_seed(seed)
    images = torch.rand(n, 3, 1, 1, generator=g) * torch.rand(n, 3, side, side, generator=g)
    return images, torch.randint(classes, (n,), generator=g)


class Blind(nn.Module):
    """Ignores its input: always the same (untied) logits."""

    def __init__(self):
        super().__init__()
        self.logits = nn.Parameter(torch.arange(10.0))

    def forward(self, x):
        return self.logits.expand(len(x), -1)


class CircularDWNet(nn.Module):
    """1x1 embedding -> blocks of the U-DWConv mixer with circular padding -> global mean -> linear: every
    operation commutes with a circular shift, so the logits are exactly shift-invariant."""

    def __init__(self, dim=16):
        super().__init__()
        self.embed = nn.Conv2d(3, dim, 1)
        self.mixers = nn.ModuleList(create_mixer('dw_conv', dim, 1, kernel_size=5, padding_mode='circular')
                                    for _ in range(2))
        self.head = nn.Linear(dim, 10)

    def forward(self, x):
        x = self.embed(x).permute(0, 2, 3, 1)
        for m in self.mixers:
            x = x + torch.relu(m(x))
        return self.head(x.mean(dim=(1, 2)))


def test_zero_shift_and_zero_rotation_are_fully_consistent():
    torch.manual_seed(0)
    model = timm.create_model('u_dwconv_test', num_classes=10, img_size=S)
    images, labels = data()
    shift = translation_sweep(model, (images, labels), shifts=(0, 3), img_size=S, batch_size=5, progress=False)
    rot = rotation_sweep(model, (images, labels), angles=(0, 20), img_size=S, batch_size=5, progress=False)
    scale = scale_sweep(model, (images, labels), crop_pcts=(0.5, 0.875), img_size=S, progress=False)
    # the reference accuracy, computed here by hand: resize the short side to int(32 / 0.875) = 36, centre crop 32
    ref = torch.nn.functional.interpolate(images, size=(36, 36), mode='bicubic', antialias=True).clamp(0, 1)
    with torch.no_grad():
        acc = (PixelSpace(model.eval())(ref[:, :, 2:34, 2:34]).argmax(-1) == labels).sum().item() / 12
    for r in (shift[0], rot[0], scale[1]):
        assert r['consistency'] == 1.0 and r['top1'] == acc and r['n'] == 12
    assert [r['magnitude'] for r in shift] == [0, 3] and shift[0]['transform'] == 'shift'


def test_input_blind_model_is_consistent_under_every_transform():
    images, labels = data(n=8)
    kw = dict(img_size=S, progress=False)
    records = (translation_sweep(Blind(), (images, labels), shifts=(0, 2, 9), directions='all', **kw)
               + rotation_sweep(Blind(), images, angles=(0, 15, 45), **kw)
               + scale_sweep(Blind(), images, crop_pcts=(0.2, 1.95), **kw))
    assert all(r['consistency'] == 1.0 for r in records)
    assert records[1]['n'] == 8 * 8  # all 8 directions per image
    assert records[0]['top1'] == (labels == 9).sum().item() / 8  # Blind always says class 9
    assert records[3]['top1'] is None  # no labels given
    assert zhang_consistency(Blind(), images, img_size=S, repeats=2, progress=False)['consistency'] == 1.0


def test_circular_dwconv_model_is_exactly_invariant_to_circular_shifts():
    torch.manual_seed(0)
    model = CircularDWNet()
    images, labels = data(n=16)
    with torch.no_grad():  # the test means something only if predictions depend on the image
        assert len(set(model(images[:, :, :S, :S]).argmax(-1).tolist())) >= 2
    records = translation_sweep(model, (images, labels), shifts=(0, 1, 5, 9), img_size=S, directions='all',
                                fill='circular', progress=False)
    assert all(r['consistency'] == 1.0 and r['top1'] == records[0]['top1'] for r in records)
    # the logits themselves, not only the top-1: equal up to float rounding
    x = images[:, :, :S, :S]
    with torch.no_grad():
        torch.testing.assert_close(model(torch.roll(x, (5, -7), (-2, -1))), model(x), rtol=1e-5, atol=1e-5)
    # with zero fill the shifted content changes, and so do some predictions
    zeros = translation_sweep(model, (images, labels), shifts=(9,), img_size=S, directions='all', progress=False)
    assert zeros[0]['consistency'] < 1.0


def test_crop_moves_the_window_and_fills_outside_with_zeros():
    x = torch.zeros(1, 1, 10, 10)
    x[..., 5, 5] = 1.0
    v = crop(x, 4)  # window rows/cols 3..6
    assert v[0, 0, 2, 2] == 1
    v = crop(x, 4, dy=1, dx=-1)  # window moves down 1, left 1: the dot moves up 1, right 1
    assert torch.nonzero(v[0, 0]).tolist() == [[1, 3]] and v.sum() == 1
    far = crop(torch.ones(1, 1, 10, 10), 4, dy=6, dx=0)  # rows 9..12: one image row, three zero rows
    assert far[0, 0, :, 0].tolist() == [1, 0, 0, 0]
    assert resize_short(torch.rand(2, 3, 40, 80), 20).shape == (2, 3, 20, 40)


def test_default_shifts_follow_the_paper_scaled_to_the_input():
    assert default_shifts(224) == tuple(range(0, 65, 4))
    s = default_shifts(64)
    assert s[0] == 0 and s[-1] == 18 and len(s) == 17  # 64/224 of the paper's 0..64 px, ~29% of the side


def test_zhang_consistency_with_a_single_offset_is_one():
    torch.manual_seed(0)
    model = timm.create_model('u_swin_test', num_classes=10, img_size=S)
    r = zhang_consistency(model, data(n=6)[0], img_size=S, max_offset=1, progress=False)
    assert r == dict(transform='zhang_shift', magnitude=1, consistency=1.0, top1=None, n=6)


def test_view_combines_the_sweeps_views():
    """invariance.view (the in-browser lab's geometry) gives each sweep's own view when the other two transforms
    are at their defaults, and moves content the way it says."""
    import torchvision.transforms.v2.functional as TF
    from stm_lab.analysis.invariance import view
    x, _ = data(n=2, side=48)
    x = x[:, :, :, :40]  # not square: the long side is rounded as in resize_short
    R = int(S / 0.875)
    ref = resize_short(x, R)
    assert torch.equal(view(x, S), crop(ref, S))
    assert torch.equal(view(x, S, crop_pct=0.45), crop(resize_short(x, int(S / 0.45)), S))
    rotated = TF.rotate(ref, 25.0, interpolation=TF.InterpolationMode.BILINEAR, fill=0.0)
    assert torch.equal(view(x, S, angle=25), crop(rotated, S))
    assert torch.equal(view(x, S, shift=(3, -2)), crop(ref, S, -3, 2))
    # content moves by (dy, dx): one bright pixel of a black image lands 3 rows lower and 2 columns to the left
    img = torch.zeros(1, 3, R, R)
    img[..., 20, 20] = 1
    before, after = view(img, S), view(img, S, shift=(3, -2))
    (y0, x0), (y1, x1) = (torch.nonzero(v[0, 0] == v[0, 0].max())[0].tolist() for v in (before, after))
    assert (y1 - y0, x1 - x0) == (3, -2)
    # rotation is counter-clockwise: in the 36x36 resized image (centre 17.5), the pixel at row 18, column 28
    # (10.5 right of the centre, 0.5 below) turns to row 7, column 18; the centre 32x32 crop starts at (2, 2)
    assert R == 36
    img = torch.zeros(1, 3, R, R)
    img[..., 18, 28] = 1
    rot = view(img, S, angle=90)[0, 0]
    assert torch.nonzero(rot).tolist() == [[5, 16]]
    with pytest.raises(ValueError, match='whole pixels'):
        view(x, S, shift=(0.5, 0))
