"""Box and mask AP with pycocotools' ``COCOeval`` (the paper's metric: AP at IoU 0.50:0.95, AP50, AP75 and AP for
small, medium and large objects), its noise by resampling images, and box consistency (Sec. 6.2.3: one set of
predictions scored against another taken as ground truth).

Detections are COCO result dicts: ``{'image_id', 'category_id', 'bbox': [x, y, w, h], 'score'[, 'segmentation']}``.
"""
from __future__ import annotations

import contextlib
import copy
import io
from typing import Dict, List, Optional, Sequence

import numpy as np
import torch

METRICS = ('AP', 'AP50', 'AP75', 'APs', 'APm', 'APl')  # COCOeval.stats[0:6]


def coco_from_dict(doc: dict):
    """A pycocotools ``COCO`` ground truth from a dataset dict (quietly)."""
    from pycocotools.coco import COCO
    gt = COCO()
    gt.dataset = copy.deepcopy(doc)
    with contextlib.redirect_stdout(io.StringIO()):
        gt.createIndex()
    return gt


def to_coco_results(outputs: Sequence[dict], image_ids: Sequence[int], masks: bool = True) -> List[dict]:
    """torchvision detector outputs (``boxes`` xyxy, ``labels``, ``scores``, ``masks`` (N, 1, H, W) probabilities)
    -> COCO result dicts; masks thresholded at 0.5 as torchvision's and mmdetection's evaluations do."""
    from pycocotools import mask as mask_utils
    out = []
    for o, image_id in zip(outputs, image_ids):
        boxes = o['boxes'].detach().cpu().float()
        xywh = torch.cat([boxes[:, :2], boxes[:, 2:] - boxes[:, :2]], 1).tolist()
        labels, scores = o['labels'].tolist(), o['scores'].detach().cpu().float().tolist()
        rles = []
        if masks and 'masks' in o and len(boxes):
            binary = (o['masks'][:, 0] > 0.5).cpu().numpy().astype(np.uint8)
            rles = mask_utils.encode(np.asfortranarray(binary.transpose(1, 2, 0)))
        for k in range(len(boxes)):
            r = dict(image_id=int(image_id), category_id=int(labels[k]), bbox=[round(v, 2) for v in xywh[k]],
                     score=round(scores[k], 5))
            if rles:
                r['segmentation'] = dict(size=[int(s) for s in rles[k]['size']],
                                         counts=rles[k]['counts'].decode('ascii'))
            out.append(r)
    return out


def evaluate(gt, detections: List[dict], iou_type: str = 'bbox', image_ids: Optional[Sequence[int]] = None
             ) -> Dict[str, Optional[float]]:
    """``{'AP', 'AP50', 'AP75', 'APs', 'APm', 'APl'}`` of ``detections`` against the ground truth ``gt`` (a COCO
    object or dataset dict) over ``image_ids`` (default: all of gt's images). A metric with no ground truth (e.g. no
    large objects) is None, as COCOeval's -1; no detections at all score 0."""
    from pycocotools.cocoeval import COCOeval
    if isinstance(gt, dict):
        gt = coco_from_dict(gt)
    if iou_type not in ('bbox', 'segm'):
        raise ValueError(f"iou_type must be 'bbox' or 'segm', got {iou_type!r}")
    ids = sorted(gt.getImgIds()) if image_ids is None else list(image_ids)
    if iou_type == 'segm' and detections and 'segmentation' not in detections[0]:
        raise ValueError('segm evaluation needs detections with masks (segmentation)')
    if not detections:  # COCO.loadRes refuses an empty list
        has = _has_gt(gt, ids)
        return {m: (0.0 if has[m] else None) for m in METRICS}
    # each IoU type sees only its own geometry (for masks, pycocotools then takes areas and boxes from the masks)
    drop = 'segmentation' if iou_type == 'bbox' else 'bbox'
    detections = [{k: v for k, v in d.items() if k != drop} for d in detections]
    with contextlib.redirect_stdout(io.StringIO()):
        dt = gt.loadRes(detections)
        ev = COCOeval(gt, dt, iou_type)
        ev.params.imgIds = ids
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    stats = ev.stats
    return {m: (None if stats[i] < 0 else round(float(stats[i]), 5)) for i, m in enumerate(METRICS)}


def _has_gt(gt, ids) -> Dict[str, bool]:
    areas = np.array([a['area'] for a in gt.loadAnns(gt.getAnnIds(imgIds=ids, iscrowd=False))])
    any_gt = len(areas) > 0
    return dict(AP=any_gt, AP50=any_gt, AP75=any_gt, APs=bool((areas < 32 ** 2).any()) if any_gt else False,
                APm=bool(((areas >= 32 ** 2) & (areas < 96 ** 2)).any()) if any_gt else False,
                APl=bool((areas >= 96 ** 2).any()) if any_gt else False)


def resample(doc: dict, detections: List[dict], picks: Sequence[int]):
    """The ground truth and detections of the images ``picks`` (indices into ``doc['images']``, repeats allowed),
    each pick a new image id: one bootstrap draw of the evaluation set."""
    images = doc['images']
    by_image: Dict[int, list] = {}
    for a in doc['annotations']:
        by_image.setdefault(a['image_id'], []).append(a)
    dets_by: Dict[int, list] = {}
    for d in detections:
        dets_by.setdefault(d['image_id'], []).append(d)
    new_images, anns, dets = [], [], []
    for new_id, k in enumerate(picks, 1):
        old = images[k]['id']
        new_images.append(dict(images[k], id=new_id))
        anns += [dict(a, id=len(anns) + j + 1, image_id=new_id) for j, a in enumerate(by_image.get(old, []))]
        dets += [dict(d, image_id=new_id) for d in dets_by.get(old, [])]
    return dict(doc, images=new_images, annotations=anns), dets


def bootstrap_draws(n_images: int, draws: int, seed: int = 0) -> np.ndarray:
    """``(draws, n_images)`` image indices, drawn with replacement: the same draws for every model, so that the
    differences between models are paired."""
    return np.random.default_rng(seed).integers(0, n_images, size=(draws, n_images))


def bootstrap(doc: dict, detections: List[dict], draws: np.ndarray, iou_type: str = 'bbox',
              metrics: Sequence[str] = ('AP', 'AP50', 'APs', 'APm', 'APl')) -> Dict[str, List[Optional[float]]]:
    """Each metric over the bootstrap draws (rows of :func:`bootstrap_draws`): its spread is the metric's noise from
    the choice of validation images."""
    out: Dict[str, list] = {m: [] for m in metrics}
    for picks in draws:
        gt, dets = resample(doc, detections, picks)
        r = evaluate(gt, dets, iou_type)
        for m in metrics:
            out[m].append(r[m])
    return out


def as_ground_truth(image_sizes: Dict[int, tuple], detections: List[dict], min_score: float,
                    categories: List[dict]) -> dict:
    """A COCO dataset dict whose instances are the ``detections`` with a score of at least ``min_score`` (the
    reference predictions of the scale sweep); ``image_sizes``: image id -> (height, width), every image kept."""
    anns = []
    for d in detections:
        if d['score'] >= min_score:
            w, h = d['bbox'][2], d['bbox'][3]
            anns.append(dict(id=len(anns) + 1, image_id=d['image_id'], category_id=d['category_id'],
                             bbox=list(d['bbox']), area=float(w * h), iscrowd=0))
    images = [dict(id=i, height=int(s[0]), width=int(s[1])) for i, s in sorted(image_sizes.items())]
    return dict(images=images, annotations=anns, categories=list(categories))


def ground_truth_as_detections(doc: dict, with_masks: bool = True) -> List[dict]:
    """The ground truth as detections of score 1 (a perfect detector; scored against itself it gets AP 1)."""
    out = []
    for a in doc['annotations']:
        d = dict(image_id=a['image_id'], category_id=a['category_id'], bbox=list(a['bbox']), score=1.0)
        if with_masks and 'segmentation' in a:
            d['segmentation'] = a['segmentation']
        out.append(d)
    return out
