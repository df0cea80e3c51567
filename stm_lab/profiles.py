"""The profiles, defined once: what ``smoke``, ``cpu`` and ``paper`` mean for every part of the project.

A profile scales the paper's study to a machine: which models (the scale of the roster), which data at which size,
how long each training runs, how many images each analysis reads, and what the detectors are. Training
(:func:`stm_lab.training.config.profile_config`), detection (:func:`stm_lab.detection.train.profile_config`), the
analyses, the ablations, ``reproduce``, the notebooks and the command line all read the :class:`Profile` here; adding
a profile is adding one entry to :data:`PROFILES`.

This module imports nothing heavy (the command line's parsers read it to list the choices).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Dict, Mapping, Optional, Tuple


@dataclass(frozen=True)
class Analyses:
    """How many validation images each analysis reads (upper bounds: a split may hold fewer)."""
    erf_images: int
    invariance_images: int
    fgsm_images: int
    batch_size: int
    # the seed set's per-image outcomes (stm_lab.analysis.outcomes): translation/rotation/scale views on this many
    # images (None: the whole split; the views cost 40 forward passes per image)
    outcome_views_images: Optional[int] = None
    split: str = 'val'


@dataclass(frozen=True)
class Profile:
    """One profile. ``train`` holds :class:`~stm_lab.training.config.TrainConfig` values and ``data`` its
    :class:`~stm_lab.data.DataConfig` values (before the recipe's per-family values); ``detection`` the detection
    runs' settings (read by :func:`stm_lab.detection.train.profile_config`)."""
    name: str
    dataset: str  # the classification data: 'fixture' (committed photos), 'imagenette', 'imagenet'
    img_size: int  # its input side
    scales: Tuple[str, ...]  # the roster's scales trained at this profile ('test': the smoke layouts)
    data_text: str  # its data as the pages name it: 'Imagenette at 64x64' (short form: data_short)
    data_short: str
    help: str  # one line in every --profile's help
    train: Mapping = field(default_factory=dict)
    data: Mapping = field(default_factory=dict)
    train_images: int = 0  # the training split's size (warm-up and EMA follow the run's length in steps)
    scale_schedule: bool = True  # warm-up and EMA scaled to the run's length (False: Table IV exactly)
    trained: bool = False  # whether its trained checkpoints are committed (analyses load them; smoke's are untrained)
    quick: bool = False  # a CI profile: untrained models stand in where a trained checkpoint is missing
    threads: Optional[int] = None  # torch threads per run that `reproduce` and `ablations run` start (None: torch's)
    notebook: bool = False  # whether the book's notebooks run at it (paper's models are not trained here)
    seed_epochs: Optional[int] = None  # epochs of the seed set and the ablation runs
    seed0_dir: str = ''  # results/<profile>/<seed0_dir>/: seed 0 of the seed set
    analyses: Optional[Analyses] = None
    detection: Optional[Mapping] = None

    @property
    def epochs(self) -> int:
        return self.train['epochs']

    @property
    def scale(self) -> str:
        """The one scale of a single-scale profile (smoke: 'test', cpu: 'micro')."""
        if len(self.scales) != 1:
            raise ValueError(f'profile {self.name} trains {len(self.scales)} scales: {", ".join(self.scales)}')
        return self.scales[0]

    @property
    def setting(self) -> str:
        """'micro models on Imagenette at 64x64': what the pages say the results are of."""
        return f'{"/".join(self.scales)} models on {self.data_text}'

    @property
    def caption(self) -> str:
        """'micro models, Imagenette 64 px': the short form the figure and table captions use."""
        return f'{"/".join(self.scales)} models, {self.data_short}'

    @property
    def models(self) -> Tuple[str, ...]:
        """The roster at this profile's scales, scale-major (at paper: Table III's twenty)."""
        from .models import main_models
        return tuple(m for s in self.scales for m in main_models(s))

    def seed_dir(self, seed: int) -> str:
        """The folder (under ``results/<profile>/``) of the seed set's runs of a seed."""
        return self.seed0_dir if seed == 0 else f'seed{seed}'


# the cpu profile's choices are explained and measured in data/README.md
PROFILES: Dict[str, Profile] = {p.name: p for p in (
    Profile('smoke', dataset='fixture', img_size=32, scales=('test',),
            data_text='the committed fixture photos', data_short='fixture',
            help='the tiny *_test models on the committed fixture, seconds',
            train=dict(epochs=2, batch_size=32, lr_per_1024=3.2e-2, ema_decay=0.9),  # 18 steps: EMA only wired
            data=dict(dataset='fixture', img_size=32, download=False), train_images=300,
            notebook=True, quick=True, seed_epochs=2,
            analyses=Analyses(erf_images=4, invariance_images=8, fgsm_images=8, batch_size=8, outcome_views_images=8),
            detection=dict(
                epochs=2, batch_size=4, lr=2e-4, warmup_iters=2, eval_images=4,
                shapes=dict(img_size=64, train_images=8, val_images=4, photos='fixture', max_instances=3,
                            min_side=8.0, max_side=64.0),
                detector=dict(img_size=64, min_size=64, max_size=64, resize=False, fpn_channels=16,
                              anchor_sizes=(8, 16, 32, 64, 128), box_head_dim=32, mask_head_layers=(16,),
                              rpn_batch_size_per_image=32, box_batch_size_per_image=32, rpn_pre_nms_top_n_train=100,
                              rpn_post_nms_top_n_train=50, rpn_pre_nms_top_n_test=50, rpn_post_nms_top_n_test=50,
                              box_detections_per_img=20))),
    Profile('cpu', dataset='imagenette', img_size=64, scales=('micro',),
            data_text='Imagenette at 64x64', data_short='Imagenette 64 px', help='the micro models, hours on two cores',
            # one batch for both families: with ~150 steps per epoch instead of the paper's 313-1252, the CNNs' 4x
            # larger batch cost accuracy here; peak lr 1e-3
            train=dict(epochs=22, batch_size=64, lr_per_1024=1.6e-2, eval_every=5),
            # Table IV's heavy regularization (RandAugment, mixup, cutmix, random erasing) is made for 300 epochs of
            # 1.28M images; at 12 epochs of 9,469 it cost 13-17 points
            data=dict(dataset='imagenette', img_size=64, scale=(0.35, 1.0), auto_augment=None, color_jitter=0.0,
                      re_prob=0.0, mixup=0.0, cutmix=0.0),
            train_images=9469, trained=True, notebook=True, seed_epochs=12, seed0_dir='epochs12',
            threads=1,  # two one-thread runs side by side on a shared 2-core machine
            # the outcomes' views on the whole split: about 8 core-minutes per model (1,000 images in 176 s)
            analyses=Analyses(erf_images=100, invariance_images=500, fgsm_images=1000, batch_size=50),
            # sized in data/README.md from `stm-lab detect bench --profile cpu`: 160 px images, heads a quarter of
            # the paper's widths, 2000 training images; objects of 10-200 px: anchors 4x the stride (the paper's 8x
            # suits COCO at 800 px)
            detection=dict(
                # the 1x schedule's shape (12 epochs, lr / 10 after 8 and 11); lr 1e-3, not the paper's 1e-4 at batch 16:
                # new heads on 2,000 images (explored on U-DWConv: 2e-4 reached box AP50 0.20 in 6 epochs, 1e-3 0.60
                # after 8 epochs on all 500 validation images)
                epochs=12, batch_size=8, lr=1e-3, warmup_iters=250, eval_every=4, eval_images=100,
                shapes=dict(img_size=160, train_images=2000, val_images=500, photos='imagenette', max_side=200.0),
                detector=dict(img_size=160, min_size=160, max_size=160, resize=False, fpn_channels=64,
                              anchor_sizes=(16, 32, 64, 128, 256), box_head_dim=256, mask_head_layers=(64, 64),
                              rpn_batch_size_per_image=128, box_batch_size_per_image=64,
                              rpn_pre_nms_top_n_train=600, rpn_post_nms_top_n_train=300, rpn_pre_nms_top_n_test=300,
                              rpn_post_nms_top_n_test=300))),
    # exactly Table IV: ImageNet-1k at 224, 300 epochs, 8 GPUs; Table V's 1x schedule on COCO at 800 px
    Profile('paper', dataset='imagenet', img_size=224, scales=('micro', 'tiny', 'small', 'base'),
            data_text='ImageNet-1k at 224x224', data_short='ImageNet 224 px',
            help="the paper's data and scale, on GPUs",
            train=dict(epochs=300, warmup_epochs=20, amp='fp16', nproc=8),
            data=dict(dataset='imagenet', img_size=224, num_workers=8, download=False),
            train_images=1281167, scale_schedule=False,
            detection=dict(epochs=12, batch_size=16, lr=1e-4, warmup_iters=1000, lr_steps=(8, 11), nproc=8,
                           num_workers=4, eval_images=5000, detector=dict(img_size=800))),
)}
NAMES: Tuple[str, ...] = tuple(PROFILES)
NOTEBOOK_PROFILES: Tuple[str, ...] = tuple(n for n, p in PROFILES.items() if p.notebook)
ANALYSIS_PROFILES: Tuple[str, ...] = tuple(n for n, p in PROFILES.items() if p.analyses)
DETECTION_PROFILES: Tuple[str, ...] = tuple(n for n, p in PROFILES.items() if p.detection)
DEFAULT = 'cpu'  # every command's default: the committed results
# autocast modes of a run (classification and detection): none (float32), bf16 (CPU or GPU), fp16 (GPU, scaled)
AMP_MODES: Tuple[str, ...] = ('none', 'bf16', 'fp16')


def get(name: str, *, among: Optional[Tuple[str, ...]] = None) -> Profile:
    """The profile called ``name`` (a results sub-folder such as 'cpu/epochs24' names its profile); ``among``
    restricts the valid ones (e.g. :data:`ANALYSIS_PROFILES`). Unknown names raise ValueError listing the valid."""
    valid = among or NAMES
    base = str(name).split('/')[0]
    if base not in valid:
        raise ValueError(f'unknown profile {name!r}; valid: {", ".join(valid)}')
    return PROFILES[base]
