"""Effective receptive field: known answers on hand-built models and on the unified models' geometry."""
import numpy as np
import pytest
import timm
import torch
import torch.nn as nn

import stm_lab  # noqa: F401  (registers the models)
from stm_lab.analysis.erf import (erf_at, erf_maps, erf_score, erf_shape, stage_record, support_extent,
                                  theoretical_rf)

NO_NORM = dict(mean=(0.0, 0.0, 0.0), std=(1.0, 1.0, 1.0))


class ConvStack(nn.Module):
    """k stride-1 3x3 convolutions; 'stage' i is the output of conv i (timm's forward_intermediates API)."""

    def __init__(self, k, symmetric=False, positive=False, act=True):
        super().__init__()
        self.convs = nn.ModuleList(nn.Conv2d(3, 3, 3, padding=1) for _ in range(k))
        self.act = act
        with torch.no_grad():
            for c in self.convs:
                w = c.weight.uniform_(0.1, 1.0) if positive else c.weight
                if symmetric:  # mirror-symmetric kernels in both axes
                    w.copy_((w + w.flip(-1) + w.flip(-2) + w.flip(-1, -2)) / 4)

    def forward_intermediates(self, x, indices=None, intermediates_only=True, stop_early=False):
        out = []
        for c in self.convs:
            x = c(x)
            x = torch.tanh(x) if self.act else x
            out.append(x)
        return out if indices is None else [out[i] for i in indices]


@pytest.mark.parametrize('k', [1, 2, 3])
def test_conv_stack_erf_is_exactly_the_centre_square(k):
    torch.manual_seed(0)
    model = ConvStack(k, positive=True, act=False)
    size, c = 15, 7
    maps = erf_maps(model, torch.rand(4, 3, size, size), stages=range(k), progress=False, **NO_NORM)
    theo = theoretical_rf(model, size, stages=range(k))
    for i in range(k):
        r = i + 1  # i + 1 convolutions reach r pixels
        m = maps[i].map
        inside = torch.zeros(size, size, dtype=torch.bool)
        inside[c - r:c + r + 1, c - r:c + r + 1] = True
        assert (m[inside] > 0).all() and (m[~inside] == 0).all()
        assert maps[i].centre == (c, c) and maps[i].n_images == 4
        assert theo[i]['side_px'] == 2 * r + 1
        assert theo[i]['extent'] == dict(up=r, down=r, left=r, right=r)
        assert erf_at(m, 0.999)['side_px'] == 2 * r + 1  # all the mass is in that square


def test_mirror_symmetric_model_has_symmetric_erf():
    torch.manual_seed(0)
    model = ConvStack(3, symmetric=True)  # nonlinear: symmetry needs a flip-closed image set
    x = torch.rand(3, 3, 17, 17)
    x = torch.cat([x, x.flip(-1), x.flip(-2), x.flip(-1, -2)])
    for e in erf_maps(model, x, stages=range(3), batch_size=5, progress=False, **NO_NORM).values():
        m = e.map
        assert m.sum() > 0
        torch.testing.assert_close(m, m.flip(-1), rtol=1e-5, atol=1e-7 * m.max().item())
        torch.testing.assert_close(m, m.flip(-2), rtol=1e-5, atol=1e-7 * m.max().item())
        assert erf_shape(m)['asymmetry'] < 1e-5


def test_batched_erf_equals_per_image_erf():
    """One backward pass per batch: each image's gradient lands in its own slot (eval mode)."""
    torch.manual_seed(0)
    model = timm.create_model('u_swin_test', num_classes=10, img_size=32)
    x = torch.rand(3, 3, 32, 32)
    batched = erf_maps(model, x, batch_size=3, progress=False)
    single = erf_maps(model, x, batch_size=1, progress=False)
    for s in range(4):
        torch.testing.assert_close(batched[s].map, single[s].map, rtol=1e-4, atol=1e-6 * single[s].map.max())
    assert model.training  # the training state is restored afterwards
    assert all(p.requires_grad for p in model.parameters())


def test_swin_window_is_one_sided_and_halo_window_two_sided_in_the_first_stage():
    """Structure behind the paper's Fig. 6, exact on a fixed random init (u_*_test at 64x64; the first stage,
    index 0, has one block, so Swin has no shifted block there). The centre unit (8, 8) of the 16x16 map starts
    a 4x4 window/block: Swin's window covers tokens 8..11, so beyond the stem's +-3 px the ERF grows only
    down/right (to +15 px); Halo's key window (block 4, halo 2) covers tokens 6..13: it also reaches 11 px
    up/left.

    Note (measured, not asserted): the paper's claim that Halo's ERF is *more symmetric* than Swin's does not hold
    at random init. With the paper's init the mixers carry ~1e-10 of the ERF mass; with layer scale 1 and
    default Linear init (micro models at 64, 3 seeds) Halo's first-stage centroid is further down-right (~+1.5 px)
    than Swin's (~+0.3 px): for a unit at a block's top-left corner Halo's window is one-sided in every block,
    while Swin's alternating shifted windows partly cancel. The claim is about trained models."""
    x = torch.rand(6, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    ext = {}
    for fam in ('swin', 'halonet'):
        torch.manual_seed(0)
        model = timm.create_model(f'u_{fam}_test', num_classes=10, img_size=64)
        e = erf_maps(model, x, stages=(0,), progress=False)[0]
        ext[fam] = support_extent(e.map, e.centre)
        assert theoretical_rf(model, 64, stages=(0,))[0]['extent'] == ext[fam]
    assert ext['swin'] == dict(up=3, down=15, left=3, right=15)
    assert ext['halonet'] == dict(up=11, down=23, left=11, right=23)


def test_global_attention_sees_everything_and_dcnv3_has_no_fixed_rf():
    torch.manual_seed(0)
    pvt = timm.create_model('u_pvt_test', num_classes=10, img_size=64)
    assert all(r['side_ratio'] == 1.0 for r in theoretical_rf(pvt, 64).values())
    dcn = timm.create_model('u_internimage_test', num_classes=10, img_size=64)
    assert all(r is None for r in theoretical_rf(dcn, 64).values())


def test_erf_at_and_shape_on_known_maps():
    delta = torch.zeros(9, 9)
    delta[4, 4] = 1
    assert erf_at(delta, 0.5) == dict(t=0.5, side_px=1, side_ratio=1 / 9, area_ratio=1 / 81)
    uniform = torch.ones(9, 9)  # side 5 holds 25/81 < 0.5, side 7 holds 49/81 > 0.5
    assert erf_at(uniform, 0.5)['side_px'] == 7
    assert erf_at(uniform, 0.3)['side_px'] == 5
    assert erf_at(uniform, 0.99)['side_px'] == 9
    assert erf_shape(uniform)['asymmetry'] == 0 and erf_shape(uniform)['centroid_dx'] == 0
    one_sided = torch.zeros(9, 9)
    one_sided[4, 4:] = 1  # the centre and 4 pixels to its right
    s = erf_shape(one_sided)
    assert s['centroid_dx'] == 2 and s['centroid_dy'] == 0 and s['asymmetry'] == pytest.approx(0.8)
    score = erf_score(torch.tensor([[0.0, 9.0], [99.0, 0.0]]))
    torch.testing.assert_close(score, torch.tensor([[0.0, 0.5], [1.0, 0.0]], dtype=torch.float64))


def test_a_stage_record_holds_the_known_receptive_fields():
    """Two 3x3 positive convolutions: ERF@0.99 spans 3 then 5 pixels, as the theoretical field does."""
    torch.manual_seed(0)
    model = ConvStack(2, positive=True, act=False)
    maps = erf_maps(model, torch.rand(2, 3, 15, 15), stages=(0, 1), progress=False, **NO_NORM)
    theo = theoretical_rf(model, 15, (0, 1))
    rows = [stage_record(maps[s], theo[s], thresholds=(0.5, 0.99)) for s in (0, 1)]
    assert [[a['t'] for a in r['erf_at']] for r in rows] == [[0.5, 0.99], [0.5, 0.99]]
    assert all(r['n_images'] == 2 and r['centre'] == [7, 7] for r in rows)
    assert rows[0]['erf_at'][1]['side_px'] == 3 and rows[1]['erf_at'][1]['side_px'] == 5
    assert rows[0]['theoretical_side_ratio'] == round(3 / 15, 5) and rows[1]['theoretical_side_ratio'] == round(5 / 15, 5)
    assert len(rows[1]['score_map']) == 15 and max(map(max, rows[1]['score_map'])) == 1.0


def test_erf_photo_records_hold_one_photo_each():
    """erf_photos: one map per (model, photo, stage), each the ERF of that photo alone, stored as 8-bit scores."""
    import timm
    import stm_lab  # noqa: F401
    from stm_lab.analysis.erf import erf_maps
    from stm_lab.analysis.run import Loaded, demo_images, erf_photo_score, run_erf_photos
    torch.manual_seed(0)
    model = timm.create_model('u_dwconv_test', num_classes=10, img_size=32).eval()
    m = Loaded('u_dwconv_test', model, 32, 0.875, (0.5,) * 3, (0.25,) * 3, [str(i) for i in range(10)], False, 'test')
    rows = run_erf_photos(m, stages=(3, 4))
    x, photos = demo_images()
    assert len(rows) == 2 * len(photos)
    r = next(r for r in rows if r['photo'] == photos[2]['file'] and r['stage'] == 3)
    alone = erf_maps(model, x[2:3], [2], img_size=32, mean=(0.5,) * 3, std=(0.25,) * 3, progress=False)[2]
    want = alone.score().float().numpy()
    got = erf_photo_score(r)
    assert got.shape == (32, 32) and np.abs(got - want).max() <= 0.5 / 255 + 1e-6
    # a different photo has a different map
    other = next(r for r in rows if r['photo'] == photos[5]['file'] and r['stage'] == 3)
    assert not np.array_equal(erf_photo_score(other), got)
