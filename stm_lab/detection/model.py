"""Mask R-CNN with an FPN on any registered unified backbone (Sec. 4.3.3), from torchvision's detection parts.

    detector = build_detector('u_halonet_micro', DetectorConfig(img_size=160, num_classes=7, fpn_channels=64))
    report = load_backbone(detector, 'results/cpu/u_halonet_micro.safetensors')   # a classification checkpoint

The backbone is the classification model without its head, as in the paper's detection code: stem and four stages,
the classification stage norms neither applied nor loaded, and a new LayerNorm on each stage's output (strides
4, 8, 16, 32). Window sizes, halo blocks and reduction ratios are those the classification rule gives at the
detection input size (``stm_lab.models.model_config`` at ``img_size``; each mixer's ``size_options``). Everything
after the four maps is torchvision's: ``FeaturePyramidNetwork`` with a max-pooled fifth level, ``AnchorGenerator``
and ``RPNHead``, ``MultiScaleRoIAlign``, ``TwoMLPHead`` / ``FastRCNNPredictor`` and ``MaskRCNNHeads`` /
``MaskRCNNPredictor`` inside ``MaskRCNN``.
"""
from __future__ import annotations

import re
from collections import OrderedDict
from dataclasses import asdict, dataclass, field
from typing import Dict, List, Optional, Tuple

import torch
import torch.nn as nn
from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
from torchvision.models.detection import MaskRCNN
from torchvision.models.detection.anchor_utils import AnchorGenerator
from torchvision.models.detection.faster_rcnn import FastRCNNPredictor, TwoMLPHead
from torchvision.models.detection.mask_rcnn import MaskRCNNHeads, MaskRCNNPredictor
from torchvision.models.detection.rpn import RPNHead
from torchvision.models.detection.transform import GeneralizedRCNNTransform
from torchvision.ops.feature_pyramid_network import FeaturePyramidNetwork, LastLevelMaxPool

from ..backbone import UnifiedNet
from ..models import FAMILIES, model_config, parse_name

# the paper's detection drop-path rates per scale (Sec. 4.3.3); the test layout trains for seconds: none
DROP_PATH = {'micro': 0.1, 'tiny': 0.2, 'small': 0.2, 'base': 0.3, 'test': 0.0}
# classification-only tensors, not loaded (stage norms are not applied in detection, as in the paper's code)
CLASSIFICATION_ONLY = ('conv_head.', 'head.', 'pool_norm.', 'end_norm.')


def family_and_scale(model: str) -> Tuple[str, str]:
    """(family, scale) of a registered unified model, with the list of valid names when it is not one."""
    name = parse_name(model)
    if not model.startswith('u_'):
        raise KeyError(f'{model!r} is not a unified model; families: {", ".join(sorted(FAMILIES))}')
    return name.family, name.scale


@dataclass
class DetectorConfig:
    """The detector around the backbone. The defaults are torchvision's Mask R-CNN, which has the sizes of the
    paper's mmdetection ``mask_rcnn_r50_fpn`` (FPN 256, anchors 32-512 at three ratios, RoIAlign 7 / 14, 512 and 256
    sampled RoIs / anchors, a 1024-wide box head, four 256-channel mask convolutions). ``img_size``: the input size the backbone's windows and reduction ratios are built for
    (the generated set's side; COCO's shorter side, 800). ``resize``: let torchvision resize every image to
    ``min_size``/``max_size`` (COCO); False: images arrive at the size the model should see (the generated set,
    and the scale sweep, which resizes them itself)."""
    img_size: int = 800
    num_classes: int = 91  # with the background; COCO's category ids run to 90
    min_size: int = 800
    max_size: int = 1333
    resize: bool = True
    fpn_channels: int = 256
    anchor_sizes: Tuple[int, ...] = (32, 64, 128, 256, 512)  # one per FPN level (strides 4-64): 8 x the stride
    box_head_dim: int = 1024
    mask_head_layers: Tuple[int, ...] = (256, 256, 256, 256)
    rpn_batch_size_per_image: int = 256
    box_batch_size_per_image: int = 512
    rpn_pre_nms_top_n_train: int = 2000
    rpn_post_nms_top_n_train: int = 2000
    rpn_pre_nms_top_n_test: int = 1000
    rpn_post_nms_top_n_test: int = 1000
    box_detections_per_img: int = 100
    drop_path_rate: Optional[float] = None  # None: the paper's detection rate for the model's scale

    def __post_init__(self):
        self.anchor_sizes, self.mask_head_layers = tuple(self.anchor_sizes), tuple(self.mask_head_layers)
        for name in ('img_size', 'num_classes', 'min_size', 'max_size', 'fpn_channels', 'box_head_dim',
                     'rpn_batch_size_per_image', 'box_batch_size_per_image', 'box_detections_per_img'):
            v = getattr(self, name)
            if not (isinstance(v, int) and v >= 1):
                raise ValueError(f'detector {name} must be an integer of at least 1, got {v!r}')
        if self.num_classes < 2:
            raise ValueError(f'detector num_classes counts the background and must be at least 2, '
                             f'got {self.num_classes}')
        if len(self.anchor_sizes) != 5:
            raise ValueError(f'detector anchor_sizes needs one size per FPN level (5), got {self.anchor_sizes}')
        if not self.mask_head_layers:
            raise ValueError('detector mask_head_layers needs at least one layer')

    def to_dict(self) -> dict:
        return asdict(self)


class UnifiedFeatures(nn.Module):
    """Stem and stages of a unified model, with a new LayerNorm on each stage output: ``{'0': C1 at stride 4, ...,
    '3': C4 at stride 32}``, NCHW. ``config``: the keyword arguments of :class:`UnifiedNet`."""

    def __init__(self, **config):
        super().__init__()
        # stage_norm=False: the classification model's stage norms are not part of the detection backbone
        net = UnifiedNet(**{**config, 'stage_norm': False, 'num_classes': 0})
        self.config = net.config
        self.stem, self.stages = net.stem, net.stages
        self.out_norms = nn.ModuleList(nn.LayerNorm(d, eps=1e-6) for d in net.config.dims)
        self.out_channels = list(net.config.dims)

    def no_weight_decay(self) -> set:
        keys = {k for m in self.modules() for k in getattr(m, 'no_weight_decay_keys', ())}
        return {n for n, _ in self.named_parameters() if n.rsplit('.', 1)[-1] in keys}

    def forward(self, x: torch.Tensor) -> Dict[str, torch.Tensor]:
        x = self.stem(x)
        out = OrderedDict()
        for i, (stage, norm) in enumerate(zip(self.stages, self.out_norms)):
            y = stage(x)  # (B, H, W, C)
            out[str(i)] = norm(y).permute(0, 3, 1, 2).contiguous()
            x = y.permute(0, 3, 1, 2)
        return out


class FPNBackbone(nn.Module):
    """The four stage maps through torchvision's FPN with a fifth, max-pooled level (what ``MaskRCNN`` expects of a
    backbone: a dict of maps and ``out_channels``)."""

    def __init__(self, body: UnifiedFeatures, out_channels: int):
        super().__init__()
        self.body = body
        self.fpn = FeaturePyramidNetwork(body.out_channels, out_channels, extra_blocks=LastLevelMaxPool())
        self.out_channels = out_channels

    def forward(self, x):
        return self.fpn(self.body(x))


class DetectionTransform(GeneralizedRCNNTransform):
    """torchvision's normalization, resizing and batching; with ``resize=False`` images are taken at their size."""

    def __init__(self, *args, resize: bool = True, **kwargs):
        super().__init__(*args, **kwargs)
        self.do_resize = resize

    def resize(self, image, target=None):
        return super().resize(image, target) if self.do_resize else (image, target)


def build_detector(model: str, cfg: DetectorConfig) -> MaskRCNN:
    """Mask R-CNN on ``model``'s unified backbone, built for ``cfg.img_size`` (seeded by the caller)."""
    family, scale = family_and_scale(model)
    dpr = DROP_PATH[scale] if cfg.drop_path_rate is None else cfg.drop_path_rate
    body = UnifiedFeatures(**model_config(family, scale, img_size=cfg.img_size, drop_path_rate=dpr))
    backbone = FPNBackbone(body, cfg.fpn_channels)
    c = cfg.fpn_channels
    anchors = AnchorGenerator(sizes=tuple((s,) for s in cfg.anchor_sizes), aspect_ratios=((0.5, 1.0, 2.0),) * 5)
    detector = MaskRCNN(
        backbone, num_classes=None, min_size=cfg.min_size, max_size=cfg.max_size,
        image_mean=list(IMAGENET_DEFAULT_MEAN), image_std=list(IMAGENET_DEFAULT_STD),
        rpn_anchor_generator=anchors, rpn_head=RPNHead(c, anchors.num_anchors_per_location()[0]),
        rpn_pre_nms_top_n_train=cfg.rpn_pre_nms_top_n_train, rpn_post_nms_top_n_train=cfg.rpn_post_nms_top_n_train,
        rpn_pre_nms_top_n_test=cfg.rpn_pre_nms_top_n_test, rpn_post_nms_top_n_test=cfg.rpn_post_nms_top_n_test,
        rpn_batch_size_per_image=cfg.rpn_batch_size_per_image,
        box_head=TwoMLPHead(c * 7 * 7, cfg.box_head_dim),
        box_predictor=FastRCNNPredictor(cfg.box_head_dim, cfg.num_classes),
        box_batch_size_per_image=cfg.box_batch_size_per_image, box_detections_per_img=cfg.box_detections_per_img,
        mask_head=MaskRCNNHeads(c, list(cfg.mask_head_layers), 1),
        mask_predictor=MaskRCNNPredictor(cfg.mask_head_layers[-1], cfg.mask_head_layers[-1], cfg.num_classes))
    detector.transform = DetectionTransform(cfg.min_size, cfg.max_size, list(IMAGENET_DEFAULT_MEAN),
                                            list(IMAGENET_DEFAULT_STD), resize=cfg.resize)
    detector.model_name, detector.detector_config = model, cfg
    return detector


# ------------------------------------------------------------------------------------- backbone weights

@dataclass
class LoadReport:
    """What :func:`load_backbone_tensors` did, tensor by tensor (names relative to the backbone body)."""
    source: str
    loaded: List[str] = field(default_factory=list)  # copied as saved
    resized: List[str] = field(default_factory=list)  # refitted to the detection input size by their module
    skipped: List[str] = field(default_factory=list)  # in the checkpoint, not used by the detector
    new: List[str] = field(default_factory=list)  # in the detector's backbone, not in the checkpoint
    head_tensors: int = 0  # tensors of the FPN, RPN and RoI heads (all new)

    def summary(self) -> str:
        return (f'{self.source}: loaded {len(self.loaded) + len(self.resized)} backbone tensors, '
                f'{len(self.resized)} of them resized to the detection input size ({_patterns(self.resized)}); '
                f'new: {len(self.new)} backbone tensors ({_patterns(self.new)}) and {self.head_tensors} '
                f'FPN/RPN/RoI-head tensors; not used: {len(self.skipped)} ({_patterns(self.skipped)})')

    def to_dict(self) -> dict:
        return asdict(self)


def _patterns(names: List[str]) -> str:
    """Tensor names with their indices as '*', each pattern once: a short account of many tensors."""
    pats = sorted({re.sub(r'\.\d+(?=\.)', '.*', n) for n in names})
    return ', '.join(pats) if pats else 'none'


def _owner(root: nn.Module, name: str) -> Tuple[nn.Module, str]:
    """The nearest module above tensor ``name`` that can refit it (``resize_loaded``), else the nearest existing one,
    and the tensor's name relative to it (``sr.weight`` of a mixer)."""
    module_name, leaf, module = name, '', None
    while module_name:
        module_name, _, part = module_name.rpartition('.')
        leaf = f'{part}.{leaf}' if leaf else part
        try:
            candidate = root.get_submodule(module_name) if module_name else root
        except AttributeError:
            continue
        if module is None:
            module, found = candidate, leaf
        if hasattr(candidate, 'resize_loaded'):
            return candidate, leaf
    return module, found


def load_backbone_tensors(detector: MaskRCNN, tensors: Dict[str, torch.Tensor], source: str = 'checkpoint'
                          ) -> LoadReport:
    """Copy a classification model's tensors into the detector's backbone. Tensors saved at another input size are
    refitted by the module that owns them (``resize_loaded``, see ``stm_lab.mixers.base``); the classification
    head and the stage norms are not used. Raises ValueError for a tensor that fits nowhere (another model)."""
    body: UnifiedFeatures = detector.backbone.body
    own = body.state_dict()
    report = LoadReport(source)
    report.head_tensors = len(detector.state_dict()) - len(own)
    new_state = {}
    for name, t in tensors.items():
        if name.startswith(CLASSIFICATION_ONLY) or (name.startswith('stages.') and name.split('.')[2] == 'norm'):
            report.skipped.append(name)
            continue
        if name not in own:
            # e.g. a reduction conv that the detection input size does without: its mixer says so (None)
            module, leaf = _owner(body, name)
            if hasattr(module, 'resize_loaded') and module.resize_loaded(leaf, t) is None:
                report.skipped.append(name)
                continue
            raise ValueError(f'{source}: tensor {name!r} has no place in the detector backbone of '
                             f'{detector.model_name} (a checkpoint of another model?)')
        t = t.float() if t.is_floating_point() else t
        if t.shape != own[name].shape:
            module, leaf = _owner(body, name)
            if not hasattr(module, 'resize_loaded'):
                raise ValueError(f'{source}: tensor {name!r} has shape {tuple(t.shape)}, the detector\'s has '
                                 f'{tuple(own[name].shape)}, and no module refits it (another model?)')
            t = module.resize_loaded(leaf, t)
            if t.shape != own[name].shape:
                raise ValueError(f'{source}: {name!r} refitted to {tuple(t.shape)}, expected {tuple(own[name].shape)}')
            report.resized.append(name)
        else:
            report.loaded.append(name)
        new_state[name] = t
    report.new = [n for n in own if n not in new_state]
    body.load_state_dict(new_state, strict=False)
    return report


def load_backbone(detector: MaskRCNN, path) -> LoadReport:
    """Load a classification checkpoint (``results/<profile>/<model>.safetensors``, read safely by
    ``stm_lab.training.checkpoint.load_model``, which refuses damaged or mismatched files) into the detector's backbone."""
    from ..results import project_path
    from ..training.checkpoint import load_model
    model, state = load_model(path)
    if state['model'] != detector.model_name:
        raise ValueError(f'{path} holds {state["model"]}, the detector is built on {detector.model_name}')
    return load_backbone_tensors(detector, model.state_dict(), project_path(path))  # as results record it
