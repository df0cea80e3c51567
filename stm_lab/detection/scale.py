"""Scale invariance of detection (Sec. 6.2.3, Fig. 7 third row): rescale each input by 0.25-3.0 in steps of 0.25,
map the predicted boxes back to the original resolution, and score them against the predictions at the original
size taken as ground truth (box consistency mAP), and against the real ground truth (box AP under scaling)."""
from __future__ import annotations

import contextlib
from typing import Dict, Iterator, List, Sequence, Tuple

import torch
import torch.nn.functional as F

from . import coco_eval

SCALES = tuple(0.25 * k for k in range(1, 13))  # 0.25, 0.5, ..., 3.0
REFERENCE_MIN_SCORE = 0.5  # the unscaled predictions kept as ground truth: those a user would keep


def scaled_size(size: Tuple[int, int], s: float) -> Tuple[int, int]:
    """(height, width) of an image of ``size`` rescaled by ``s`` (rounded, at least one pixel)."""
    if not s > 0:
        raise ValueError(f'scale must be positive, got {s}')
    return max(1, round(size[0] * s)), max(1, round(size[1] * s))


def rescale(image: torch.Tensor, s: float) -> torch.Tensor:
    """A (3, H, W) image rescaled by ``s`` (bilinear, antialiased when shrinking); scale 1 returns it unchanged."""
    size = scaled_size(tuple(image.shape[-2:]), s)
    if size == tuple(image.shape[-2:]):
        return image
    return F.interpolate(image[None], size=size, mode='bilinear', align_corners=False, antialias=s < 1)[0]


def map_boxes(boxes: torch.Tensor, from_size: Tuple[int, int], to_size: Tuple[int, int]) -> torch.Tensor:
    """xyxy boxes on an image of ``from_size`` (height, width) -> the same boxes on an image of ``to_size``: x scales
    by the ratio of the widths, y by the ratio of the heights (the actual, rounded sizes, not the nominal scale)."""
    fy, fx = to_size[0] / from_size[0], to_size[1] / from_size[1]
    return boxes * boxes.new_tensor([fx, fy, fx, fy])


@contextlib.contextmanager
def images_as_given(detector) -> Iterator[None]:
    """Within the block the detector's transform does not resize: it sees the rescaled images themselves."""
    old = detector.transform.do_resize
    detector.transform.do_resize = False
    try:
        yield
    finally:
        detector.transform.do_resize = old


@torch.no_grad()
def predict(detector, images: Sequence[torch.Tensor], batch_size: int = 8) -> List[dict]:
    """Detector outputs for a list of (3, H, W) images in [0, 1], on the CPU."""
    detector.eval()
    device = next(detector.parameters()).device
    out = []
    for i in range(0, len(images), batch_size):
        for o in detector([im.to(device) for im in images[i:i + batch_size]]):
            out.append({k: v.cpu() for k, v in o.items()})
    return out


def predict_scaled(detector, images: Sequence[torch.Tensor], s: float, batch_size: int = 8) -> List[dict]:
    """Predictions on the images rescaled by ``s``, boxes mapped back to the original sizes (masks dropped)."""
    with images_as_given(detector):
        scaled = [rescale(im, s) for im in images]
        outs = predict(detector, scaled, batch_size)
    return [dict(boxes=map_boxes(o['boxes'], tuple(sc.shape[-2:]), tuple(im.shape[-2:])), labels=o['labels'],
                 scores=o['scores']) for o, sc, im in zip(outs, scaled, images)]


def scale_sweep(detector, images: Sequence[torch.Tensor], image_ids: Sequence[int], gt_doc: dict,
                scales: Sequence[float] = SCALES, batch_size: int = 8) -> Tuple[List[dict], Dict[float, list]]:
    """Per scale: box consistency mAP (and AP50) against the scale-1 predictions with a score of at least
    :data:`REFERENCE_MIN_SCORE`, and box AP against the ground truth ``gt_doc`` (restricted to ``image_ids``).
    Returns the rows and the mapped-back predictions per scale (for the book's figure)."""
    sizes = {int(i): tuple(im.shape[-2:]) for i, im in zip(image_ids, images)}
    reference = coco_eval.to_coco_results(predict_scaled(detector, images, 1.0, batch_size), image_ids, masks=False)
    ref_doc = coco_eval.as_ground_truth(sizes, reference, REFERENCE_MIN_SCORE, gt_doc['categories'])
    gt = coco_eval.coco_from_dict(gt_doc)
    rows, per_scale = [], {}
    for s in scales:
        outs = predict_scaled(detector, images, s, batch_size)
        dets = coco_eval.to_coco_results(outs, image_ids, masks=False)
        cons = coco_eval.evaluate(ref_doc, dets, 'bbox') if ref_doc['annotations'] else None
        acc = coco_eval.evaluate(gt, dets, 'bbox', image_ids=list(image_ids))
        rows.append(dict(scale=s, consistency_AP=None if cons is None else cons['AP'],
                         consistency_AP50=None if cons is None else cons['AP50'], box_AP=acc['AP'],
                         box_AP50=acc['AP50'], reference_instances=len(ref_doc['annotations']), n=len(images)))
        per_scale[s] = outs
    return rows, per_scale
