"""Detection (stm_lab.detection): known answers for the generated set, the evaluation, the scale sweep, the backbone
loading and the paper profile; clear errors for bad input; the smoke profile end to end."""
from dataclasses import replace
import json
import math
import os
import re
import subprocess
import sys

import numpy as np
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

import stm_lab  # noqa: F401  (registers the models)
from stm_lab import layout, results
from stm_lab.detection import coco_eval, run, scale, shapes
from stm_lab.detection.data import DetectionSet, check_target
from stm_lab.detection.model import (DetectorConfig, build_detector, family_and_scale, load_backbone,
                                     load_backbone_tensors)
from stm_lab.detection.train import lr_at, profile_config, scaled_steps, train
from stm_lab.models import create_model, main_models
from stm_lab.pages import detection as page, findings
from stm_lab.results import ROOT

TINY = shapes.ShapesConfig(img_size=48, train_images=3, val_images=2, photos='fixture', max_instances=3,
                           min_side=6.0, max_side=40.0, seed=3)


pytestmark = pytest.mark.usefixtures('one_thread')  # tests/conftest.py


def _tiny_detector(model='u_dwconv_test', img_size=64, **kw):
    cfg = DetectorConfig(img_size=img_size, num_classes=7, min_size=img_size, max_size=img_size, resize=False,
                         fpn_channels=16, anchor_sizes=(8, 16, 32, 64, 128), box_head_dim=32, mask_head_layers=(16,),
                         **kw)
    torch.manual_seed(0)
    return build_detector(model, cfg)


# ------------------------------------------------------------------------------------------ generated set

def test_generated_set_is_byte_identical_for_the_same_seed(tmp_path):
    a = shapes.ensure(TINY, cache_dir=tmp_path / 'a', log=lambda m: None)
    b = shapes.ensure(TINY, cache_dir=tmp_path / 'b', log=lambda m: None)
    files = sorted(p.relative_to(a) for p in a.rglob('*') if p.is_file())
    assert len(files) == 3 + 2 + 3  # images, two annotation files, config
    for f in files:
        assert (a / f).read_bytes() == (b / f).read_bytes(), f
    other = shapes.ensure(shapes.ShapesConfig(**{**TINY.to_dict(), 'seed': 4}), cache_dir=tmp_path / 'c',
                          log=lambda m: None)
    assert (other / 'train' / '000000.png').read_bytes() != (a / 'train' / '000000.png').read_bytes()


def test_generated_masks_and_boxes_are_exact(tmp_path):
    """The visible masks are disjoint, the painted pixels of each instance are its texture (the photo shows nowhere
    inside a mask), boxes are the masks' tight bounds, areas their pixel counts."""
    from pycocotools import mask as mask_utils
    photos = shapes.Photos('fixture', 'train', TINY.img_size)
    for i in range(3):
        img, instances = shapes.draw_image(TINY, photos, 'train', i)
        assert instances and img.shape == (48, 48, 3)
        union = np.zeros((48, 48), int)
        for k, ann in enumerate(shapes.annotations(instances, 1, 1)):
            m = mask_utils.decode(ann['segmentation']).astype(bool)
            assert (m == instances[k]['mask']).all()
            union += m
            ys, xs = np.nonzero(m)
            assert ann['bbox'] == [xs.min(), ys.min(), xs.max() + 1 - xs.min(), ys.max() + 1 - ys.min()]
            assert ann['area'] == m.sum() > 0
        assert union.max() == 1  # no pixel belongs to two instances
    # the same image drawn again is the same image (a function of config, split and index alone)
    again, _ = shapes.draw_image(TINY, photos, 'train', 2)
    assert (again == img).all()


def test_shape_masks_follow_their_geometry():
    # a 20x20 square centred at (24, 24), unrotated: exactly the pixels 14..33 on both axes
    m = shapes.shape_mask('square', 48, 24, 24, 20, 20, 0.0)
    assert m.sum() == 400 and m[14:34, 14:34].all()
    # a disc of diameter 40: area close to pi r^2; a ring has a hole at its centre
    assert shapes.shape_mask('disc', 64, 32, 32, 40, 40, 0.3).sum() == pytest.approx(math.pi * 400, rel=0.02)
    assert not shapes.shape_mask('ring', 64, 32, 32, 40, 40, 0.0)[32, 32]
    assert shapes.FILL['square'] == 1.0 and shapes.FILL['disc'] == pytest.approx(math.pi / 4, abs=1e-3)


def test_the_cpu_set_populates_every_coco_size_bucket():
    cfg = profile_config('u_dwconv_micro', 'cpu').shapes
    photos = shapes.Photos('fixture', 'val', cfg.img_size)  # the geometry does not depend on the photos
    areas = [int(inst['mask'].sum()) for i in range(40) for inst in shapes.draw_image(cfg, photos, 'val', i)[1]]
    doc = dict(annotations=[dict(area=a) for a in areas])
    counts = shapes.bucket_counts(doc)
    assert all(counts[k] > 0 for k in ('small', 'medium', 'large')), counts


def test_a_missing_cache_says_how_to_make_it(tmp_path):
    with pytest.raises(FileNotFoundError, match='stm-lab detect data'):
        shapes.ensure(TINY, generate=False, cache_dir=tmp_path)


def test_bad_shapes_config_is_refused_in_one_line():
    with pytest.raises(ValueError, match='photos must be one of'):
        shapes.ShapesConfig(photos='coco')
    with pytest.raises(ValueError, match='min_side <= max_side'):
        shapes.ShapesConfig(min_side=50.0, max_side=20.0)


# ------------------------------------------------------------------------------------------ bad input

def _coco_doc(tmp_path, anns, n_images=2):
    from PIL import Image
    (tmp_path / 'img').mkdir()
    images = []
    for i in range(1, n_images + 1):
        Image.new('RGB', (32, 32)).save(tmp_path / 'img' / f'{i}.png')
        images.append(dict(id=i, file_name=f'{i}.png', width=32, height=32))
    doc = dict(images=images, annotations=anns, categories=shapes.categories())
    path = tmp_path / 'ann.json'
    path.write_text(json.dumps(doc))
    return tmp_path / 'img', path


def _ann(id, image_id, bbox):
    x, y, w, h = bbox
    return dict(id=id, image_id=image_id, category_id=1, bbox=bbox, area=w * h, iscrowd=0,
                segmentation=[[x, y, x + w, y, x + w, y + h, x, y + h]])


def test_an_image_without_instances_is_refused_by_name(tmp_path):
    images, ann = _coco_doc(tmp_path, [_ann(1, 1, [2, 2, 10, 10])])
    with pytest.raises(ValueError, match=r'image 2 has no instances'):
        DetectionSet(images, ann, train=True, strict=True)
    # COCO itself (not strict): such images are left out of training, as mmdetection does
    ds = DetectionSet(images, ann, train=True, strict=False)
    assert ds.ids == [1] and ds.dropped == 1


def test_a_degenerate_box_is_refused_by_name(tmp_path):
    images, ann = _coco_doc(tmp_path, [_ann(1, 1, [2, 2, 10, 10]), _ann(7, 2, [5, 5, 0, 4])])
    with pytest.raises(ValueError, match=r'image 2: annotation 7 has a degenerate box'):
        DetectionSet(images, ann, train=True, strict=True)
    with pytest.raises(ValueError, match='degenerate box'):
        check_target(dict(image_id=3, boxes=torch.tensor([[1., 1., 1., 5.]])))
    with pytest.raises(ValueError, match='image 3 has no instances'):
        check_target(dict(image_id=3, boxes=torch.zeros(0, 4)))


def test_unknown_model_and_bad_detector_config_are_clear():
    with pytest.raises(KeyError, match="unknown model 'resnet50'.*Valid models: .*u_swin_micro"):
        family_and_scale('resnet50')
    with pytest.raises(KeyError, match='not a unified model'):  # the speed page's reference model has no detector
        family_and_scale('timm_swin_micro')
    with pytest.raises(ValueError, match='num_classes counts the background'):
        DetectorConfig(num_classes=1)
    with pytest.raises(ValueError, match='one size per FPN level'):
        DetectorConfig(anchor_sizes=(32, 64))


# ------------------------------------------------------------------------------------------ evaluation

def _gt_doc():
    photos = shapes.Photos('fixture', 'val', TINY.img_size)
    images, anns = [], []
    for i in range(2):
        _, instances = shapes.draw_image(TINY, photos, 'val', i)
        images.append(dict(id=i + 1, width=48, height=48, file_name=f'{i}.png'))
        anns += shapes.annotations(instances, i + 1, len(anns) + 1)
    return dict(images=images, annotations=anns, categories=shapes.categories())


def test_predictions_scored_against_themselves_give_ap_1():
    doc = _gt_doc()
    dets = coco_eval.ground_truth_as_detections(doc)
    for iou in ('bbox', 'segm'):
        r = coco_eval.evaluate(doc, dets, iou)
        assert r['AP'] == r['AP50'] == r['AP75'] == 1.0, (iou, r)
    # the right boxes with the wrong class: nothing is detected
    wrong = [dict(d, category_id=d['category_id'] % 6 + 1) for d in dets]
    assert coco_eval.evaluate(doc, wrong, 'bbox')['AP'] == 0.0
    assert coco_eval.evaluate(doc, [], 'bbox')['AP'] == 0.0


def test_bootstrap_resamples_images_with_their_instances():
    doc = _gt_doc()
    dets = coco_eval.ground_truth_as_detections(doc, with_masks=False)
    picks = [1, 1]  # the second image twice
    gt, d = coco_eval.resample(doc, dets, picks)
    n2 = sum(a['image_id'] == doc['images'][1]['id'] for a in doc['annotations'])
    assert len(gt['images']) == 2 and len(gt['annotations']) == len(d) == 2 * n2
    assert coco_eval.bootstrap(doc, dets, coco_eval.bootstrap_draws(2, 3))['AP'] == [1.0] * 3


# ------------------------------------------------------------------------------------------ scale sweep

def test_scale_back_mapping_is_exact_at_scale_1_and_inverts():
    boxes = torch.tensor([[1.5, 2.0, 30.0, 41.0], [0.0, 0.0, 64.0, 48.0]])
    assert torch.equal(scale.map_boxes(boxes, (48, 64), (48, 64)), boxes)
    up = scale.map_boxes(boxes, (48, 64), scale.scaled_size((48, 64), 2.0))
    assert torch.allclose(up, boxes * 2)
    odd = scale.scaled_size((48, 64), 0.75)
    assert torch.allclose(scale.map_boxes(scale.map_boxes(boxes, (48, 64), odd), odd, (48, 64)), boxes)
    im = torch.rand(3, 48, 64)
    assert scale.rescale(im, 1.0) is im and scale.rescale(im, 0.25).shape == (3, 12, 16)
    assert scale.SCALES[0] == 0.25 and scale.SCALES[-1] == 3.0 and len(scale.SCALES) == 12


class _Oracle(nn.Module):
    """A detector whose boxes are a fixed fraction of the image it is given (scale-equivariant), or fixed pixels."""

    def __init__(self, equivariant: bool):
        super().__init__()
        self.w = nn.Parameter(torch.zeros(1))
        self.equivariant = equivariant
        self.transform = type('T', (), {'do_resize': True})()

    def forward(self, images):
        out = []
        for im in images:
            h, w = im.shape[-2:]
            frac = torch.tensor([[0.25, 0.25, 0.75, 0.75]])
            boxes = frac * torch.tensor([w, h, w, h]) if self.equivariant else frac * 48
            out.append(dict(boxes=boxes.float(), labels=torch.tensor([2]), scores=torch.tensor([0.9])))
        return out


def test_box_consistency_is_1_for_a_scale_equivariant_detector_and_drops_otherwise():
    doc = _gt_doc()
    images = [torch.rand(3, 48, 48) for _ in doc['images']]
    ids = [i['id'] for i in doc['images']]
    rows, _ = scale.scale_sweep(_Oracle(True), images, ids, doc, (0.5, 1.0, 2.0))
    assert [r['consistency_AP'] for r in rows] == [1.0, 1.0, 1.0]
    rows, _ = scale.scale_sweep(_Oracle(False), images, ids, doc, (0.5, 1.0, 2.0))
    assert rows[1]['consistency_AP'] == 1.0 and rows[0]['consistency_AP'] < 0.5 and rows[2]['consistency_AP'] < 0.5


# ------------------------------------------------------------------------------------------ the model

@pytest.mark.parametrize('model', main_models('test'))
def test_detector_trains_and_predicts_on_every_backbone(model):
    det = _tiny_detector(model)
    body = det.backbone.body
    feats = body(torch.rand(1, 3, 64, 64))
    assert [tuple(f.shape[-2:]) for f in feats.values()] == [(16, 16), (8, 8), (4, 4), (2, 2)]
    assert all(isinstance(s.norm, nn.Identity) for s in body.stages)  # no stage norms in detection
    target = dict(boxes=torch.tensor([[4., 4., 30., 40.]]), labels=torch.tensor([3]),
                  masks=torch.zeros(1, 64, 64, dtype=torch.uint8))
    target['masks'][0, 4:40, 4:30] = 1
    det.train()
    losses = det([torch.rand(3, 64, 64)], [target])
    assert {'loss_classifier', 'loss_box_reg', 'loss_mask', 'loss_objectness', 'loss_rpn_box_reg'} <= set(losses)
    sum(losses.values()).backward()
    det.eval()
    with torch.no_grad():
        out = det([torch.rand(3, 40, 56)])[0]  # any size: the mixers pad inside
    assert set(out) >= {'boxes', 'labels', 'scores', 'masks'}


def test_window_and_reduction_follow_the_detection_input_size():
    """The detector's backbone gets the options the classification rule gives at the detection size."""
    from stm_lab.models import model_config
    for model, img in (('u_swin_micro', 160), ('u_halonet_micro', 192), ('u_pvt_micro', 160)):
        det = build_detector(model, DetectorConfig(img_size=img, num_classes=7, fpn_channels=16, box_head_dim=16,
                                                   mask_head_layers=(8,)))
        fam, scale_ = family_and_scale(model)
        cfg = model_config(fam, scale_, img_size=img)
        got = det.backbone.body.config
        assert got.mixer_options == cfg['mixer_options'] and got.stage_mixer_options == cfg['stage_mixer_options']
    # 160 px: the first stage is 40 wide, so Swin's window is 5 (classification at 64 px: 4)
    swin = build_detector('u_swin_micro', DetectorConfig(img_size=160, num_classes=7, fpn_channels=16,
                                                         box_head_dim=16, mask_head_layers=(8,)))
    assert swin.backbone.body.stages[0].blocks[0].mixer.window == 5


def _export(tmp_path, model, img_size, seed=1):
    """A classification weights file as `stm-lab train` exports it."""
    from stm_lab.training.checkpoint import write_checkpoint
    torch.manual_seed(seed)
    net = create_model(model, num_classes=10, img_size=img_size)
    path = tmp_path / f'{model}.safetensors'
    state = dict(kind='weights', model=model, model_config=net.config.to_dict(), classes=list('abcdefghij'),
                 weights='model', data={}, train_config={}, metrics={})
    write_checkpoint(path, net.state_dict(), state)
    return net, path


def test_backbone_checkpoint_round_trips_into_the_detector(tmp_path):
    net, path = _export(tmp_path, 'u_dwconv_test', 64)
    det = _tiny_detector('u_dwconv_test', 64)
    report = load_backbone(det, path)
    body = det.backbone.body.state_dict()
    for name in report.loaded:
        assert torch.equal(body[name], net.state_dict()[name]), name
    assert not report.resized
    assert sorted(report.new) == sorted(f'out_norms.{i}.{p}' for i in range(4) for p in ('weight', 'bias'))
    assert all(n.startswith(('conv_head.', 'head.')) or re.match(r'stages\.\d\.norm\.', n) for n in report.skipped)
    assert len(report.loaded) + len(report.skipped) == len(net.state_dict())
    assert 'loaded' in report.summary() and 'new: 8 backbone tensors' in report.summary()
    # the detector's stage maps are the classification model's stages without their norms, then the new norms
    x = torch.rand(1, 3, 64, 64)
    for s in net.stages:
        s.norm = nn.Identity()
    with torch.no_grad():
        _, ref = net.forward_intermediates(x)
        got = det.backbone.body.eval()(x)
    for i, r in enumerate(ref):
        assert torch.allclose(got[str(i)], det.backbone.body.out_norms[i](r.permute(0, 2, 3, 1)).permute(0, 3, 1, 2),
                              atol=1e-5)


def test_a_checkpoint_of_another_model_is_refused(tmp_path):
    _, path = _export(tmp_path, 'u_swin_test', 64)
    with pytest.raises(ValueError, match='holds u_swin_test'):
        load_backbone(_tiny_detector('u_dwconv_test', 64), path)
    net = create_model('u_swin_test', num_classes=10, img_size=64)
    with pytest.raises(ValueError, match='no place in the detector backbone|another model'):
        load_backbone_tensors(_tiny_detector('u_dwconv_test', 64), net.state_dict())


def test_position_tables_and_reduction_kernels_are_refitted_by_their_mixers():
    """A classification model at 64 px loaded into detectors built for larger inputs: the tables and kernels whose
    shapes follow the input size are refitted (and said so); the rest is copied."""
    small = create_model('u_swin_micro', num_classes=10, img_size=64)
    det = build_detector('u_swin_micro', DetectorConfig(img_size=160, num_classes=7, fpn_channels=16,
                                                        box_head_dim=16, mask_head_layers=(8,)))
    report = load_backbone_tensors(det, small.state_dict())
    assert report.resized and all(n.endswith('relative_position_bias_table') for n in report.resized)
    # a window of 4 refitted to 4 changes nothing; to 5 it keeps the centre (offset 0) and the corners
    mixer = det.backbone.body.stages[0].blocks[0].mixer
    table = small.stages[0].blocks[0].mixer.relative_position_bias_table.detach()
    new = mixer.resize_loaded('relative_position_bias_table', table)
    assert new.shape == ((2 * 5 - 1) ** 2, table.shape[1])
    assert torch.allclose(new.view(9, 9, -1)[4, 4], table.view(7, 7, -1)[3, 3], atol=1e-6)
    assert torch.allclose(new.view(9, 9, -1)[0, 0], table.view(7, 7, -1)[0, 0], atol=1e-6)


def test_reduction_kernel_refit_is_exact_on_a_map_upsampled_by_repetition():
    """SR-Attn's r x r reduction refitted to 2r: on the map upsampled 2x by repetition it gives exactly the old
    reduction of the old map; refitted back, exactly the old kernel."""
    from stm_lab.mixers.sr_attn import SpatialReductionAttention
    old = SpatialReductionAttention(16, 2, sr_ratio=2)
    new = SpatialReductionAttention(16, 2, sr_ratio=4)
    w = new.resize_loaded('sr.weight', old.sr.weight.detach())
    x = torch.randn(1, 16, 8, 8)
    big = x.repeat_interleave(2, -1).repeat_interleave(2, -2)
    assert torch.allclose(F.conv2d(big, w, old.sr.bias, stride=4), F.conv2d(x, old.sr.weight, old.sr.bias, stride=2),
                          atol=1e-5)
    assert torch.allclose(old.resize_loaded('sr.weight', w), old.sr.weight, atol=1e-6)


# ------------------------------------------------------------------------------------------ profiles

def test_paper_profile_is_the_papers_1x_schedule():
    """Sec. 4.3.3 and the reference's mmdetection config: COCO, shorter side 800 (longer at most 1333), AdamW 1e-4,
    weight decay 0.05, batch 16 on 8 GPUs, 12 epochs, 1000 warm-up iterations, lr /10 after epochs 8 and 11,
    flip 0.5, drop path 0.1 / 0.2 / 0.2 / 0.3 by scale."""
    for scale_, dpr in (('micro', 0.1), ('tiny', 0.2), ('small', 0.2), ('base', 0.3)):
        cfg = profile_config(f'u_internimage_{scale_}', 'paper')
        assert (cfg.dataset, cfg.detector.min_size, cfg.detector.max_size, cfg.detector.resize) == ('coco', 800, 1333,
                                                                                                     True)
        assert (cfg.lr, cfg.weight_decay, cfg.betas, cfg.batch_size, cfg.nproc, cfg.epochs) == (
            1e-4, 0.05, (0.9, 0.999), 16, 8, 12)
        assert (cfg.warmup_iters, cfg.warmup_ratio, cfg.lr_steps, cfg.hflip) == (1000, 0.001, (8, 11), 0.5)
        det = build_detector(cfg.model, replace_small(cfg.detector))
        assert det.backbone.body.stages[-1].blocks[-1].drop_path.drop_prob == pytest.approx(dpr)  # the last block
    d = profile_config('u_swin_tiny', 'paper').detector
    assert (d.fpn_channels, d.anchor_sizes, d.box_head_dim, d.mask_head_layers, d.box_batch_size_per_image) == (
        256, (32, 64, 128, 256, 512), 1024, (256,) * 4, 512)


def replace_small(d):
    from dataclasses import replace
    return replace(d, fpn_channels=16, box_head_dim=16, mask_head_layers=(8,))


def test_paper_dry_run_prints_the_config_and_torchrun_command():
    out = subprocess.run([sys.executable, '-m', 'stm_lab.cli', 'detect', 'train', '--model', 'u_swin_tiny',
                          '--profile', 'paper', '--dry-run', '--data-dir', '/data/coco'],
                         capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert out.returncode == 0, out.stderr
    text = out.stdout
    cfg = json.loads(text[:text.index('\nbackbone built for')])
    assert cfg['lr'] == 1e-4 and cfg['epochs'] == 12 and cfg['detector']['min_size'] == 800
    assert "backbone built for 800 px (the classification rule): mixer options {'window': 5}" in text
    assert 'per process: 2 images on each of 8 processes' in text
    assert text.strip().splitlines()[-1] == ('torchrun --nproc_per_node=8 -m stm_lab.detection.run train --model '
                                            'u_swin_tiny --profile paper --data-dir /data/coco')


def test_the_printed_torchrun_command_keeps_every_override(capsys):
    assert run.main(['train', '--model', 'u_swin_tiny', '--profile', 'paper', '--epochs', '24', '--dry-run']) == 0
    assert capsys.readouterr().out.strip().splitlines()[-1] == (
        'torchrun --nproc_per_node=8 -m stm_lab.detection.run train --model u_swin_tiny --profile paper --epochs 24 '
        '--data-dir $COCO')


def test_schedule_known_values():
    cfg = profile_config('u_swin_micro', 'paper')
    assert lr_at(cfg, 0, 7330) == pytest.approx(1e-4 * 0.001)
    assert lr_at(cfg, 500, 7330) == pytest.approx(1e-4 * (1 - 0.999 * 0.5))
    assert lr_at(cfg, 1000, 7330) == pytest.approx(1e-4)
    assert lr_at(cfg, 8 * 7330 - 1, 7330) == pytest.approx(1e-4)
    assert lr_at(cfg, 8 * 7330, 7330) == pytest.approx(1e-5)
    assert lr_at(cfg, 11 * 7330, 7330) == pytest.approx(1e-6)
    assert scaled_steps(12) == (8, 11) and scaled_steps(6) == (4, 6)


def test_bad_detection_settings_are_refused_in_one_line():
    with pytest.raises(ValueError, match='lr_steps must be epochs'):
        profile_config('u_swin_micro', 'cpu', epochs=4, lr_steps=(8,))
    out = subprocess.run([sys.executable, '-m', 'stm_lab.cli', 'detect', 'train', '--model', 'u_swin_micro',
                          '--profile', 'cpu', '--epochs', '0', '--dry-run'], capture_output=True, text=True, cwd=ROOT,
                         timeout=120)
    assert out.returncode == 2 and len(out.stderr.strip().splitlines()) == 1 and 'epochs must be' in out.stderr


# ------------------------------------------------------------------------------------------ paper and claims

PAPER = ROOT.parent / 'shared' / 'paper' / 'demystify-stm-paper.txt'


@pytest.mark.skipif(not PAPER.exists(), reason='paper text not available')
def test_table5_transcription_matches_the_paper_text():
    from stm_lab.paper import DISPLAY, TABLE5_MICRO
    text = PAPER.read_text()
    start = text.index('TABLE V:')
    block = text[start:text.index('Tiny U-HaloNet', start)]
    for model, row in TABLE5_MICRO.items():
        name = DISPLAY[model.split('_')[1]]
        m = re.search(re.escape(name) + r' ((?:[\d.]+ ){7}[\d.]+)', block)
        assert m and tuple(float(v) for v in m.group(1).split()) == row, model


def _det_doc(tmp_path, box_ap, boot_sd=0.005, erf=None, cons=None):
    """A detection.json (and erf.json) with these numbers; bootstrap draws spread by boot_sd around them."""
    rng = np.random.default_rng(0)
    shared = rng.normal(0, boot_sd, 20)  # shared image noise: paired draws move together
    recs = []
    for fam, ap in box_ap.items():
        m = f'u_{fam}_micro'
        own = rng.normal(0, boot_sd, 20)
        boot = list(ap + shared + own)
        recs.append(dict(kind='ap', model=m, family=fam, box_AP=ap, box_APs=ap, box_APm=ap, box_APl=ap,
                         **{f'boot_box_{k}': boot for k in ('AP', 'APs', 'APm', 'APl')}))
        if cons:
            recs.append(dict(kind='scale_summary', model=m, family=fam, consistency_up=cons[fam],
                             boot_consistency_up=list(cons[fam] + own)))
    (tmp_path / 'cpu').mkdir(parents=True, exist_ok=True)
    (tmp_path / 'cpu' / 'detection.json').write_text(json.dumps(dict(provenance={}, config={}, records=recs)))
    if erf:
        er = [dict(model=f'u_{f}_micro', stage=4, erf_at=[dict(t=0.5, side_ratio=v)]) for f, v in erf.items()]
        (tmp_path / 'cpu' / 'erf.json').write_text(json.dumps(dict(provenance={}, config={}, records=er)))


def test_detection_verdicts_follow_the_numbers(tmp_path, monkeypatch):
    monkeypatch.setattr(results, 'RESULTS_DIR', tmp_path)
    ranks = dict(halonet=0.60, internimage=0.58, dwconv=0.50, swin=0.48, pvt=0.40)
    erf = dict(halonet=0.2, internimage=0.5, dwconv=0.3, swin=0.4, pvt=0.6)  # largest ERF (PVT) detects worst
    _det_doc(tmp_path, ranks, erf=erf, cons=dict(halonet=0.5, internimage=0.7, dwconv=0.5, swin=0.4, pvt=0.3))
    c = page.claims('cpu')
    assert c['erf']['verdict'] == 'agrees' and c['erf']['counterexample']['larger'] == 'u_pvt_micro'
    rows = {r['id']: r for r in page.detection_findings('cpu')}
    assert [r['verdict'] for r in rows.values()] == ['agrees'] * 4
    assert rows['det_best']['effect'] == pytest.approx(100 * (0.58 - 0.50))  # U-InternImage - U-DWConv, in points
    # the order reversed, beyond the noise
    _det_doc(tmp_path, dict(halonet=0.40, internimage=0.42, dwconv=0.50, swin=0.55, pvt=0.60),
             erf=dict(halonet=0.1, internimage=0.2, dwconv=0.3, swin=0.4, pvt=0.5))
    c = page.claims('cpu')
    rows = {r['id']: r for r in page.detection_findings('cpu')}
    assert rows['det_best']['verdict'] == 'does not agree' and rows['det_pvt_worst']['verdict'] == 'does not agree'
    assert c['erf']['verdict'] == 'does not agree'  # ERF order = AP order in every bucket
    assert rows['det_scale_dcn_best']['verdict'] == 'not yet measured'
    # everything within the noise
    _det_doc(tmp_path, dict(halonet=0.501, internimage=0.500, dwconv=0.499, swin=0.5, pvt=0.498), boot_sd=0.02)
    rows = page.detection_findings('cpu')
    assert rows[0]['verdict'] == 'cannot tell at this scale' and 'bootstrap' in rows[0]['noise']


def test_detection_findings_without_results_are_not_yet_measured(tmp_path, monkeypatch):
    monkeypatch.setattr(results, 'RESULTS_DIR', tmp_path)
    rows = page.detection_findings('cpu')
    assert rows and all(r['verdict'] == findings.NOT_YET for r in rows)


def test_training_course_reads_the_runs_it_describes(tmp_path, monkeypatch):
    """Loss 2.0, 1.8, 1.71 then a drop after epoch 2 of 3: the last full-lr epoch fell by 10%; 3 epochs of the cpu
    set's images in 1200 core-seconds against a bench of 20 img/s; AP50 0.3 is below the target."""
    monkeypatch.setattr(results, 'RESULTS_DIR', tmp_path)
    n = run.profile_config('u_halonet_micro', 'cpu').shapes.train_images
    recs = [dict(epoch=e + 1, loss=v, cpu_time_s=400.0) for e, v in enumerate((2.0, 1.8, 1.71))]
    recs[-1]['box_AP50'] = 0.3
    results.save_result('cpu/detection', 'det_train_u_halonet_micro', recs,
                        config=dict(train=dict(epochs=3, lr_steps=[2], shapes=dict(train_images=n))),
                        prov=dict(schedule_changes=[dict(after_epoch=1, epochs=12, lr_steps=[8, 11])]))
    results.save_result('cpu', 'detection_throughput', [dict(model='u_halonet_micro', train_img_per_s=20.0)])
    models = run.profile_models('cpu')
    c = page.training_course('cpu', models)
    (r,) = c['rows']
    assert r['epochs'] == 3 and r['lr_steps'] == [2] and r['loss_fall_before_drop'] == pytest.approx(0.1)
    assert r['img_per_core_s'] == pytest.approx(3 * n / 1200) and r['speed_ratio'] == pytest.approx(20 / (3 * n / 1200))
    assert c['best'] == 'u_halonet_micro' and c['best_AP50'] == 0.3 and not c['reached']
    text = page.course_note('cpu', models)
    assert 'below the 0.5' in text and 'fell by 10%.' in text and 'under a 12-epoch schedule' in text
    assert r['estimate_error'] is None and 'estimated the training time' not in text  # that bench timed no step
    smoke = run.profile_models('smoke')
    assert page.training_course('smoke', smoke) == {} and 'No detector' in page.course_note('smoke', smoke)


def test_training_course_compares_the_bench_estimate_with_the_run(tmp_path, monkeypatch):
    """Known answer: 2 epochs of (train images // batch) steps at a benched 1.5 s a step, against a run whose epochs
    took 400 and 500 s of wall time."""
    monkeypatch.setattr(results, 'RESULTS_DIR', tmp_path)
    cfg = run.profile_config('u_swin_micro', 'cpu')
    recs = [dict(epoch=1, loss=2.0, wall_time_s=400.0, cpu_time_s=390.0),
            dict(epoch=2, loss=1.9, wall_time_s=500.0, cpu_time_s=480.0, box_AP50=0.6)]
    results.save_result('cpu/detection', 'det_train_u_swin_micro', recs,
                        config=dict(train=dict(epochs=2, lr_steps=[2], batch_size=cfg.batch_size,
                                               shapes=dict(train_images=cfg.shapes.train_images))), prov={})
    results.save_result('cpu', 'detection_throughput', [dict(model='u_swin_micro', train_img_per_s=5.0,
                                                             train_s_per_step=1.5)])
    (r,) = page.training_course('cpu', run.profile_models('cpu'))['rows']
    estimated = 2 * (cfg.shapes.train_images // cfg.batch_size) * 1.5
    assert r['train_wall_s'] == 900.0 and r['estimated_train_s'] == estimated
    assert r['estimate_error'] == pytest.approx(estimated / 900 - 1)
    text = page.course_note('cpu', run.profile_models('cpu'))
    assert f'within {abs(estimated / 900 - 1):.0%}' in text and f'{estimated / 60:.0f} min estimated, 15 measured' in text
    assert 'step timed alone' in text  # the bench record names no companion training
    assert '1 of the 1 detectors reach a box AP50 of at least 0.5' in text and 'U-Swin Transformer 0.600); the best is U-Swin Transformer.' in text
    results.save_result('cpu', 'detection_throughput', [dict(model='u_swin_micro', train_img_per_s=5.0,
                                                             train_s_per_step=1.5, companion='u_halonet_micro')])
    assert 'step timed beside a second training' in page.course_note('cpu', run.profile_models('cpu'))


# ------------------------------------------------------------------------------------------ end to end

@pytest.mark.e2e
def test_smoke_profile_end_to_end(tmp_path, monkeypatch):
    """Data, five trainings and the evaluation at the smoke profile, into a temporary results folder."""
    from stm_lab.training import engine as cls_train
    from stm_lab.detection import train as det_train
    monkeypatch.setattr(results, 'RESULTS_DIR', tmp_path / 'results')
    monkeypatch.setattr(det_train, 'RUNS_DIR', tmp_path / 'runs')
    monkeypatch.setattr(cls_train, 'RUNS_DIR', tmp_path / 'runs')
    records = run.smoke_run(log=lambda m: None)
    doc = json.loads((tmp_path / 'results' / 'smoke' / 'detection.json').read_text())
    assert doc['records'] == records and doc['provenance']['profile'] == 'smoke'
    aps = [r for r in records if r['kind'] == 'ap']
    assert [r['model'] for r in aps] == list(det_train.profile_models('smoke'))
    assert all(0 <= r['box_AP'] <= 1 and r['val_images'] == 4 and len(r['boot_box_AP']) == 3 for r in aps)
    assert {r['scale'] for r in records if r['kind'] == 'scale'} == set(scale.SCALES)
    assert any(r['kind'] == 'demo_image' and r['uri'].startswith('data:image/jpeg') for r in records)
    train_doc = results.load_result('smoke/detection', 'det_train_u_dwconv_test')
    assert train_doc['records'][-1]['epoch'] == 2 and 'command' in train_doc['provenance']


def test_rank_correlation_known_answers():
    assert page.spearman([1, 2, 3, 4], [10, 20, 30, 40]) == 1.0
    assert page.spearman([1, 2, 3, 4], [4, 3, 2, 1]) == -1.0
    assert page.spearman([1, 2, 3, 4], [0, 0, 0, 0]) is None  # no order at all: not a perfect correlation
    assert page.spearman([1, 2, 3], [1, 1, 2]) == pytest.approx(0.866, abs=1e-3)  # ties share their rank


# ------------------------------------------------------------------------------------------ the book page

def _outputs(path) -> str:
    """What an executed notebook shows: its outputs' text, markdown and HTML (not its sources)."""
    out = []
    for cell in json.loads(path.read_text())['cells']:
        for o in cell.get('outputs', []):
            out.append(''.join(o.get('text', '')))
            for kind in ('text/markdown', 'text/html', 'text/plain'):
                out.append(''.join(o.get('data', {}).get(kind, '')))
    return '\n'.join(out)


@pytest.mark.e2e
def test_detection_page_builds_at_the_smoke_profile(tmp_path, smoke_results):
    from stm_lab import cli
    assert cli.main(['notebooks', '--profile', 'smoke', '--only', 'detection', '--out', str(tmp_path)]) == 0
    text = _outputs(tmp_path / 'detection.ipynb')
    for needle in ('Table V, micro (COCO box AP)', 'cannot tell at this scale', 'input scale: ', 'box AP (± se)',
                   'AP small / medium / large', '40.3 / 37.3',
                   'detection.json made by:\nstm-lab detect evaluate --profile smoke'):  # made by reproduce's step
        assert needle in text, needle
    assert 'have not been made yet' not in text


@pytest.mark.e2e
def test_detection_page_at_cpu_without_runs_gives_the_commands(tmp_path, monkeypatch):
    import shutil
    from stm_lab import cli
    (tmp_path / 'results' / 'cpu').mkdir(parents=True)
    shutil.copy(ROOT / 'results' / 'cpu' / 'detection_throughput.json', tmp_path / 'results' / 'cpu')
    monkeypatch.setenv('STM_LAB_RESULTS', str(tmp_path / 'results'))  # the notebook's kernel reads it
    assert cli.main(['notebooks', '--profile', 'cpu', '--only', 'detection', '--out', str(tmp_path)]) == 0
    text = _outputs(tmp_path / 'detection.ipynb')
    assert 'The cpu-profile detection runs have not been made yet' in text
    for line in run.commands('cpu'):
        assert line in text, line
    assert 'core-hours' in text and text.count('not yet measured') >= 4


def test_a_stopped_detection_run_resumes_exactly(tmp_path, monkeypatch):
    """Stopped after its first epoch and started again, a run ends with the weights of an uninterrupted one; a
    resume with another configuration is refused and leaves the checkpoint alone."""
    from stm_lab.detection import train as det_train
    from stm_lab.training.checkpoint import read_checkpoint
    monkeypatch.setattr(results, 'RESULTS_DIR', tmp_path / 'results')
    cfg = profile_config('u_swin_test', 'smoke')
    quiet = dict(log=lambda m: None, export=False)
    det_train.train(cfg, out_dir=tmp_path / 'straight', resume='none', **quiet)
    det_train.train(cfg, out_dir=tmp_path / 'split', resume='none', stop_after=1, **quiet)
    assert read_checkpoint(tmp_path / 'split' / 'last.safetensors')[1]['epoch'] == 1
    with pytest.raises(ValueError, match='another configuration'):
        det_train.train(profile_config('u_swin_test', 'smoke', lr=1e-3), out_dir=tmp_path / 'split', **quiet)
    det_train.train(cfg, out_dir=tmp_path / 'split', **quiet)
    a, sa = read_checkpoint(tmp_path / 'straight' / 'last.safetensors')
    b, sb = read_checkpoint(tmp_path / 'split' / 'last.safetensors')
    assert sa['epoch'] == sb['epoch'] == 2
    assert [h['loss'] for h in sa['history']] == [h['loss'] for h in sb['history']]
    for k in a:
        assert torch.equal(a[k], b[k]), k


def test_a_schedule_may_change_on_resume_only_where_the_past_learning_rates_agree():
    from stm_lab.detection.train import schedule_prefix_equal
    long, short = profile_config('u_swin_micro', 'cpu', epochs=12), profile_config('u_swin_micro', 'cpu', epochs=5)
    assert (long.lr_steps, short.lr_steps) == ((8, 11), (3, 5))
    assert schedule_prefix_equal(long, short, 3, 250)  # the first drop comes after epoch 3 in the short one
    assert not schedule_prefix_equal(long, short, 4, 250)  # epoch 4 ran at the full rate in the long one only
    assert not schedule_prefix_equal(short, long, 6, 250)  # more epochs done than the new schedule has


def test_a_run_continued_under_a_shorter_schedule_equals_a_fresh_run_of_it(tmp_path, monkeypatch):
    from stm_lab.detection import train as det_train
    from stm_lab.training.checkpoint import read_checkpoint
    monkeypatch.setattr(results, 'RESULTS_DIR', tmp_path / 'results')
    short = profile_config('u_swin_test', 'smoke', epochs=2, lr_steps=(1,))
    long = profile_config('u_swin_test', 'smoke', epochs=3, lr_steps=(1, 2))
    quiet = dict(log=lambda m: None, export=False)
    det_train.train(short, out_dir=tmp_path / 'fresh', resume='none', **quiet)
    det_train.train(long, out_dir=tmp_path / 'switched', resume='none', stop_after=1, **quiet)
    det_train.train(short, out_dir=tmp_path / 'switched', **quiet)
    a, sa = read_checkpoint(tmp_path / 'fresh' / 'last.safetensors')
    b, sb = read_checkpoint(tmp_path / 'switched' / 'last.safetensors')
    assert sb['schedule_changes'] == [dict(after_epoch=1, epochs=3, lr_steps=[1, 2])]
    assert [h['loss'] for h in sa['history']] == [h['loss'] for h in sb['history']]
    for k in a:
        assert torch.equal(a[k], b[k]), k
    # a schedule whose past learning rates differ is refused, the checkpoint left alone
    det_train.train(long, out_dir=tmp_path / 'late', resume='none', stop_after=2, **quiet)
    before = (tmp_path / 'late' / 'last.safetensors').read_bytes()
    with pytest.raises(ValueError, match='other learning rates'):
        det_train.train(profile_config('u_swin_test', 'smoke', epochs=2, lr_steps=(2,)), out_dir=tmp_path / 'late',
                        **quiet)
    assert (tmp_path / 'late' / 'last.safetensors').read_bytes() == before


def test_detection_setting_texts_from_a_configuration():
    from stm_lab.detection.train import DetTrainConfig
    cfg = DetTrainConfig(shapes=shapes.ShapesConfig(img_size=96, train_images=1500, val_images=50, photos='fixture',
                                                    max_instances=4, min_side=8.0, max_side=60.0),
                         detector=DetectorConfig(img_size=96, resize=False, fpn_channels=64, box_head_dim=128,
                                                 mask_head_layers=(32, 32), box_batch_size_per_image=64,
                                                 anchor_sizes=(8, 16, 32, 64, 128)),
                         epochs=6, batch_size=8, lr=2e-4, weight_decay=0.05, warmup_iters=100, lr_steps=(4,), hflip=0.5)
    assert page.setting_text(cfg) == (
        f'1,500 training and 50 validation images of 96x96 px, {len(shapes.SHAPES)} shape classes '
        f'({", ".join(shapes.SHAPES)}), 1-4 instances per image, 8-60 px, drawn on the committed fixture photos')
    assert page.heads_text(cfg) == ('FPN width 64, box head 128, mask head 2 x 32 channels, 64 sampled RoIs per image, '
                                   'anchors 8/16/32/64/128 px')
    assert page.schedule_text(cfg) == ('6 epochs of batch 8, AdamW lr 0.0002 (weight decay 0.05), 100 warm-up steps, lr '
                                      'divided by 10 after epochs 4, flip 0.5')
    assert page.paper_setting_text(DetTrainConfig(dataset='coco', epochs=12, batch_size=16, lr=1e-4)) == \
        'COCO train2017 at a shorter side of 800 px (longer at most 1333), 12 epochs of batch 16, AdamW lr 0.0001'


def test_page_describes_the_runs_own_setting_not_the_profile():
    """The Detection page's setting is the shown runs' recorded one: a setting the profile has since changed is
    described as the runs were trained, and the reproduce commands say what they now train; a run retrained in another
    setting is named with what differs, the others' shared setting described; no run: None (the notebook then takes
    the profile's)."""
    assert page.shared_setting({}) == (None, '')
    old = profile_config('u_swin_test', 'smoke', epochs=3, lr=5e-4, warmup_iters=7)
    runs = {m: replace(old, model=m) for m in ('u_swin_test', 'u_pvt_test')}
    runs['u_dwconv_test'] = profile_config('u_dwconv_test', 'smoke', epochs=2)
    got, note = page.shared_setting(runs)
    assert got is runs['u_swin_test'] and (got.epochs, got.lr, got.warmup_iters) == (3, 5e-4, 7)
    assert note == ('Trained in another setting than the other detectors, so not comparable with them: U-DWConv '
                    '(epochs, lr, warmup_iters, lr_steps).')
    assert page.shared_setting({'u_swin_test': old}) == (old, '')
    now = profile_config('u_swin_test', 'smoke')
    assert page.profile_change_note(now, profile_config('u_swin_test', 'smoke')) == ''
    change = page.profile_change_note(got, now)
    assert '(epochs, lr, warmup_iters, lr_steps)' in change and change.endswith(page.schedule_text(now) + '.')
    assert 'lr 0.0005' in page.schedule_text(got) and '7 warm-up steps' in page.schedule_text(got)


def test_training_note_with_and_without_a_classification_checkpoint():
    doc = dict(config=dict(backbone_init='results/cpu/u_swin_micro.safetensors',
                           load_report=dict(loaded=['a', 'b', 'c'], resized=['d'], new=['e', 'f'])),
               records=[dict(epoch=1), dict(epoch=6)], provenance=dict(cpu_time_s=1200, command='stm-lab detect train'))
    assert page.training_note('u_swin_micro', doc) == (
        '- U-Swin Transformer: 4 backbone tensors from `results/cpu/u_swin_micro.safetensors` (1 refitted), 2 new; '
        '6 epochs, 20 core-minutes. Command: `stm-lab detect train`')
    doc['config'] = dict(load_report=None)
    assert page.training_note('u_pvt_micro', doc).startswith(
        '- U-PVT: backbone from its seeded initialization (no classification checkpoint); 6 epochs')


def test_not_yet_markdown_lists_the_commands_in_order():
    text = page.not_yet_note('cpu', run.commands('cpu'))
    assert text.startswith('**The cpu-profile detection runs have not been made yet**')
    assert '\n'.join(run.commands('cpu')) in text


# ------------------------------------------------------------------------------------------ precision and speed

def test_detection_precision_is_checked_and_fp16_needs_a_gpu(tmp_path):
    with pytest.raises(ValueError, match='amp must be one of none, bf16, fp16'):
        run.profile_config('u_dwconv_test', 'smoke', amp='fp8')
    cfg = run.profile_config('u_dwconv_test', 'smoke', amp='fp16', pretrained='none')
    with pytest.raises(ValueError, match='needs a GPU.*--amp bf16'):
        train(cfg, resume='none', out_dir=tmp_path / 'run', log=lambda m: None)
    assert not (tmp_path / 'run').exists()  # refused before anything is written


def test_a_bf16_detection_run_records_its_precision_and_warns_without_bf16_units(tmp_path, monkeypatch):
    """bf16 autocast really runs (its losses are not the float32 run's), the result records it, and a CPU without
    bf16 units gets the one-line warning (a CPU with them gets none)."""
    losses = {}
    for amp, units in (('none', False), ('bf16', False), ('bf16', True)):
        monkeypatch.setattr(results, 'cpu_bf16_units', lambda units=units: units)
        lines = []
        cfg = run.profile_config('u_dwconv_test', 'smoke', amp=amp, epochs=1, pretrained='none')
        final = train(cfg, resume='none', out_dir=tmp_path / f'{amp}-{units}', log=lines.append)
        losses[amp, units] = final['loss']
        warned = [m for m in lines if 'no bf16 units' in m]
        assert len(warned) == (amp == 'bf16' and not units), lines
        assert not warned or 'slower than fp32' in warned[0]
        doc = layout.det_train('smoke', 'u_dwconv_test').load()
        assert doc['config']['train']['amp'] == amp
    assert losses['bf16', False] == losses['bf16', True] != losses['none', False]


def test_bf16_warning_only_on_a_cpu_without_bf16_units(monkeypatch):
    monkeypatch.setattr(results, 'cpu_bf16_units', lambda: False)
    assert 'emulated' in results.bf16_warning('cpu') and results.bf16_warning('cuda') is None
    monkeypatch.setattr(results, 'cpu_bf16_units', lambda: True)
    assert results.bf16_warning('cpu') is None


def test_the_bench_estimate_is_steps_times_the_measured_step():
    """Known answer: 2 s a step over the cpu profile's 12 epochs of 2000 // 8 steps, and evaluations at an inference
    speed so high that only the COCOeval passes count: the quick ones after epochs 4 and 8, and the final one."""
    cfg = run.profile_config('u_halonet_micro', 'cpu')
    assert (cfg.epochs, cfg.shapes.train_images, cfg.batch_size, cfg.eval_every) == (12, 2000, 8, 4)
    h = run.core_hours('cpu', [dict(model='u_halonet_micro', train_s_per_step=2.0, eval_img_per_s=1e12)])
    assert h['u_halonet_micro']['train'] == round((12 * 250 * 2.0 + 3 * run.COCOEVAL_S) / 3600, 3)
    h6 = run.core_hours('cpu', [dict(model='u_halonet_micro', train_s_per_step=2.0, eval_img_per_s=1e12)], epochs=6)
    assert h6['u_halonet_micro']['train'] == round((6 * 250 * 2.0 + 2 * run.COCOEVAL_S) / 3600, 3)  # quick after 4


def test_the_bench_times_the_runs_own_step_with_the_shared_timer(monkeypatch):
    """The bench's figures are the shared timer's: per model the median of its rounds, images/s the batch over it;
    and every timed call is a training step of the run (train_step), counted."""
    from stm_lab.detection import train as train_module
    calls = []
    real = train_module.train_step
    monkeypatch.setattr(train_module, 'train_step', lambda *a, **k: calls.append(a[5]) or real(*a, **k))
    (rec,) = run.bench('smoke', ['u_dwconv_test'], steps=2, warmup=1, rounds=3, companion=False, log=lambda m: None)
    assert len(calls) == 1 + 3 * 2 and calls == sorted(calls)  # warm-up then rounds, the schedule's steps in order
    assert rec['train_s_per_step'] == pytest.approx(sorted(rec['train_s_per_step_rounds'])[1], abs=1e-4)
    assert rec['train_img_per_s'] == pytest.approx(rec['batch_size'] / rec['train_s_per_step'], rel=1e-3)
    assert rec['companion'] is None and rec['amp'] == 'none' and rec['eval_img_per_s'] > 0


@pytest.mark.e2e
def test_detect_bench_command_runs_beside_a_companion_and_leaves_none(capsys):
    """`stm-lab detect bench` (it failed on the name of its sub-command once): a second training runs beside it in
    its own process, which is gone when the bench ends."""
    from pathlib import Path
    from stm_lab import cli
    tasks = Path(f'/proc/{os.getpid()}/task')
    if not tasks.exists():
        pytest.skip('needs /proc to list child processes')
    assert cli.main(['detect', 'bench', '--profile', 'smoke', '--models', 'u_dwconv_test', '--steps', '1',
                     '--rounds', '1', '--threads', '1']) == 0
    assert 'u_dwconv_test: training about' in capsys.readouterr().out
    assert not [c for t in tasks.iterdir() for c in (t / 'children').read_text().split()]


def test_made_by_lists_every_merged_evaluation_oldest_first():
    # earlier holds the most recent first: c1 made the file, c2 merged into it, c3 last; a repeated command once
    doc = dict(provenance=dict(command='c3', earlier=[dict(command='c2'), dict(command='c1')]))
    assert page.made_by(doc) == ['c1', 'c2', 'c3']
    assert page.made_by(dict(provenance=dict(command='c1', earlier=[dict(command='c1')]))) == ['c1']
    assert page.made_by(dict(provenance=dict(command='c1'))) == ['c1']


def test_detection_records_in_the_paper_order():
    recs = [dict(kind='ap', model='u_internimage_micro'), dict(kind='demo_image', id=1), dict(kind='ap', model='u_x_micro'),
            dict(kind='ap', model='u_halonet_micro'), dict(kind='scale', model='u_halonet_micro', s=2),
            dict(kind='ap', model='u_pvt_micro')]
    got = [(r['kind'], r.get('model')) for r in page.paper_order(recs)]
    assert got == [('demo_image', None), ('ap', 'u_halonet_micro'), ('scale', 'u_halonet_micro'), ('ap', 'u_pvt_micro'),
                   ('ap', 'u_internimage_micro'), ('ap', 'u_x_micro')]
