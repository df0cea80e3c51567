"""Training configurations: :class:`TrainConfig`, the paper's recipe (Table IV) and the profiles that scale it
(``smoke``, ``cpu``, ``paper``), ``--set KEY=VALUE`` settings, and the comparisons of configurations that decide
whether a checkpoint may be resumed."""
from __future__ import annotations

import math
import typing
from dataclasses import asdict, dataclass, field, fields, replace
from typing import Dict, List, Optional, Tuple

from ..data import DataConfig, value_checker
from ..mixers import mixer_trait
from .. import profiles
from ..models import FAMILIES, create_model

MICRO_MODELS = profiles.PROFILES['cpu'].models  # the roster at the cpu profile's scale
SMOKE_MODELS = profiles.PROFILES['smoke'].models  # what the smoke profile trains
IMAGENET_TRAIN_IMAGES = 1281167
EXPORT_WEIGHTS = ('ema', 'model')  # the values of TrainConfig.export_weights
AMP_MODES = profiles.AMP_MODES

# Table IV, per mixer family; warm-up start and final learning rates from the authors' launch scripts
PAPER_RECIPES = {
    'transformer': dict(batch_size=1024, warmup_lr=1e-6, min_lr=1e-5),  # Halo, PVT, Swin
    'cnn': dict(batch_size=4096, warmup_lr=0.0, min_lr=1e-6),  # DWConv (ConvNeXt), DCNv3 (InternImage)
}

@dataclass
class TrainConfig:
    """Everything that decides a run's numbers; saved in every checkpoint and result."""
    model: str = 'u_dwconv_test'
    profile: str = 'smoke'
    recipe: str = 'cnn'  # 'transformer' or 'cnn' (Table IV columns)
    data: DataConfig = field(default_factory=DataConfig)
    epochs: int = 300
    warmup_epochs: float = 20.0
    batch_size: int = 4096  # global batch, over all processes
    lr_per_1024: float = 1e-3  # linear scaling rule: peak lr = lr_per_1024 * batch_size / 1024
    warmup_lr: float = 0.0
    min_lr: float = 1e-6
    weight_decay: float = 0.05
    betas: Tuple[float, float] = (0.9, 0.999)
    opt_eps: float = 1e-8
    clip_grad: float = 5.0
    ema_decay: float = 0.9999  # 0 disables the EMA
    drop_path_rate: Optional[float] = None  # None: the model's own (the paper's per-model rates)
    layer_scale_init: float = 1e-6
    amp: str = 'none'  # none | bf16 (autocast, CPU or GPU) | fp16 (GPU autocast + GradScaler)
    seed: int = 0
    eval_every: int = 1  # epochs between evaluations (the last epoch is always evaluated)
    nproc: int = 1  # processes the dry-run's torchrun command starts (the real count comes from torchrun)
    # Fig. 7(c): >0 records, after every epoch, the translation and rotation consistency of the (non-EMA) weights
    # on this many fixed validation images (stm_lab.training.tracking)
    track_consistency: int = 0
    # the weights exported to results/ at the end, fixed before training (never chosen by their validation score):
    # 'ema' (the moving average) or 'model' (the trained weights); None: 'ema' where the EMA is on, else 'model'.
    # The recorded configuration holds the resolved value (to_dict); configs written before the field read as None.
    export_weights: Optional[str] = None

    def __post_init__(self):
        if isinstance(self.data, dict):
            self.data = DataConfig(**self.data)
        self.betas = tuple(self.betas)
        if self.recipe not in PAPER_RECIPES:
            raise ValueError(f'unknown recipe {self.recipe!r}; valid: {", ".join(PAPER_RECIPES)}')
        if self.amp not in AMP_MODES:
            raise ValueError(f"amp must be one of {', '.join(AMP_MODES)}, got {self.amp!r}")
        # bad values fail here, in one line, before anything is written (not as a traceback epochs later)
        check = value_checker('')
        for name in ('epochs', 'batch_size', 'eval_every', 'nproc'):
            check(name, getattr(self, name), 'an integer of at least 1', lambda v: _is_int(v) and v >= 1)
        check('seed', self.seed, 'an integer of at least 0', lambda v: _is_int(v) and v >= 0)
        check('track_consistency', self.track_consistency, 'an integer of at least 0', lambda v: _is_int(v) and v >= 0)
        for name in ('warmup_epochs', 'lr_per_1024', 'warmup_lr', 'min_lr', 'weight_decay', 'clip_grad'):
            check(name, getattr(self, name), 'a number of at least 0', lambda v: v >= 0 and math.isfinite(v))
        check('opt_eps', self.opt_eps, 'a number above 0', lambda v: 0 < v < math.inf)
        check('betas', self.betas, 'two numbers in [0, 1), e.g. 0.9,0.999',
              lambda v: len(v) == 2 and all(0 <= b < 1 for b in v))
        check('ema_decay', self.ema_decay, 'a number in [0, 1) (0 turns the EMA off)', lambda v: 0 <= v < 1)
        check('drop_path_rate', self.drop_path_rate, "a number in [0, 1), or none for the model's own",
              lambda v: v is None or 0 <= v < 1)
        check('layer_scale_init', self.layer_scale_init, 'a finite number', math.isfinite)
        check('export_weights', self.export_weights,
              f'one of {", ".join(EXPORT_WEIGHTS)}, or none for the default (ema where the EMA is on, else model)',
              lambda v: v is None or v in EXPORT_WEIGHTS)
        if self.export_weights == 'ema' and not self.ema_decay:
            raise ValueError("export_weights is 'ema' but the EMA is off (ema_decay 0); valid here: model, or none")

    @property
    def lr(self) -> float:
        return self.lr_per_1024 * self.batch_size / 1024

    @property
    def exported(self) -> str:
        """The weights the run exports: ``export_weights``, or by default the EMA where there is one."""
        return self.export_weights or ('ema' if self.ema_decay > 0 else 'model')

    def to_dict(self) -> dict:
        return dict(asdict(self), export_weights=self.exported, lr=self.lr)

    @classmethod
    def from_dict(cls, d: dict) -> 'TrainConfig':
        names = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in names})


def _is_int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _positive(name: str, value: int) -> int:
    if value < 1:
        raise ValueError(f'{name} must be at least 1, got {value}')
    return value


def model_recipe(model: str) -> str:
    """'transformer' or 'cnn': the Table IV column of a model, from its mixer."""
    rest = model[2:] if model.startswith('u_') else model
    family = max((f for f in FAMILIES if rest == f or rest.startswith(f + '_')), key=len, default=None)
    if family is None:
        create_model(model)  # raises with the list of valid names
    return mixer_trait(FAMILIES[family].mixer, 'recipe')


def scaled_ema_decay(paper_decay: float, paper_steps: int, steps: int) -> float:
    """EMA decay whose time constant is the same fraction of a run of ``steps`` as ``paper_decay`` is of the
    paper's run (0.9999 averages over ~10k of its 94k-375k steps; a 2k-step run needs ~0.994)."""
    return max(0.0, 1 - (1 - paper_decay) * paper_steps / max(steps, 1))


def profile_config(model: str, profile: str, **overrides) -> TrainConfig:
    """The resolved configuration of ``model`` at a profile (:mod:`stm_lab.profiles`); overrides win (``data``
    overrides may be a dict of DataConfig fields)."""
    prof = profiles.get(profile)
    recipe = overrides.pop('recipe', None) or model_recipe(model)
    r = PAPER_RECIPES[recipe]
    data = overrides.pop('data', None) or {}
    # the recipe's per-family values, then the profile's (the cpu profile's one batch size for both families)
    cfg = TrainConfig(model=model, profile=prof.name, recipe=recipe, data=DataConfig(**prof.data), **{**r, **prof.train})
    cfg = replace(cfg, data=replace(cfg.data, **data), **overrides)
    if not prof.scale_schedule:  # exactly Table IV
        return cfg
    # warm-up and EMA follow the run's length: the paper's 20 of 300 epochs, and an EMA time constant that is the
    # same fraction of the run as 0.9999's is of the paper's (unless the profile or the caller sets them)
    paper_steps = 300 * math.ceil(IMAGENET_TRAIN_IMAGES / r['batch_size'])
    steps = cfg.epochs * (prof.train_images // cfg.batch_size)
    derived = dict(warmup_epochs=round(cfg.epochs * 20 / 300, 2),
                   ema_decay=round(scaled_ema_decay(0.9999, paper_steps, steps), 5))
    return replace(cfg, **{k: v for k, v in derived.items() if k not in overrides and k not in prof.train})


def profile_models(profile: str) -> Tuple[str, ...]:
    """The models a profile trains for Table III (``profile`` may name a sub-folder, 'cpu/epochs24'): the
    ``*_test`` models at smoke, the micro models at cpu, Table III's twenty at paper."""
    return profiles.get(profile).models


def evaluated_after(epoch: int, epochs: int, eval_every: int) -> bool:
    """Whether a run of ``epochs`` evaluates after ``epoch`` (1-based): every ``eval_every`` epochs and the last."""
    return epoch == epochs or epoch % max(eval_every, 1) == 0


RESUME_FREE = {'eval_every', 'nproc', 'data.num_workers', 'data.download', 'data.data_dir'}  # workers: engine.check_resume


def config_differences(a: TrainConfig, b: TrainConfig) -> List[str]:
    """Fields that differ between two configs, ignoring those that cannot change the numbers."""
    fa, fb = _flat(a.to_dict()), _flat(b.to_dict())
    return [f'{k}: {fa.get(k)!r} there, {fb.get(k)!r} here' for k in sorted(set(fa) | set(fb))
            if k not in RESUME_FREE and fa.get(k) != fb.get(k)]


def _flat(d: dict, prefix: str = '') -> dict:
    out = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(_flat(v, f'{prefix}{k}.'))
        else:
            out[f'{prefix}{k}'] = list(v) if isinstance(v, tuple) else v
    return out


def _coerce(text: str, hint, key: str):
    """``text`` as a value of a config field's declared type ``hint``: 'none' (or nothing) for an Optional field is
    None, a tuple is comma-separated with as many values as the type has."""
    if typing.get_origin(hint) is typing.Union:  # Optional[X]
        if text.strip().lower() in ('none', ''):
            return None
        hint = next(a for a in typing.get_args(hint) if a is not type(None))
    if typing.get_origin(hint) is tuple:
        args, parts = typing.get_args(hint), text.split(',')
        if len(parts) != len(args):
            raise ValueError(f'--set {key}: expected {len(args)} comma-separated values, got {text!r}')
        return tuple(_coerce(part.strip(), a, key) for part, a in zip(parts, args))
    if hint is bool:
        if text.lower() not in ('true', 'false', '1', '0'):
            raise ValueError(f'--set {key}: expected true or false, got {text!r}')
        return text.lower() in ('true', '1')
    try:
        return hint(text)
    except ValueError:
        raise ValueError(f'--set {key}: {text!r} is not of type {hint.__name__}') from None


def apply_settings(cfg: TrainConfig, settings: List[str]) -> TrainConfig:
    """``KEY=VALUE`` overrides of any TrainConfig field (``data.<field>`` for the data pipeline), e.g.
    ``data.mixup=0``; values take the field's type. Applied after the profile, so derived values (warm-up, EMA)
    stay those of the profile unless set here too."""
    top, data = {}, {}
    for item in settings:
        key, sep, value = item.partition('=')
        if not sep:
            raise ValueError(f'--set expects KEY=VALUE, got {item!r}')
        target, obj, name = (data, cfg.data, key[5:]) if key.startswith('data.') else (top, cfg, key)
        valid = [f.name for f in fields(obj)]
        if name not in valid or name in ('data', 'model', 'profile'):
            raise ValueError(f'--set: unknown key {key!r}; valid: {", ".join(v for v in valid if v != "data")}'
                             + ('' if obj is cfg.data else ', data.<field>'))
        target[name] = _coerce(value, typing.get_type_hints(type(obj))[name], key)
    return replace(cfg, data=replace(cfg.data, **data), **top)


# (label, how to read it from a TrainConfig); every value comes from the resolved configuration
RECIPE_ROWS = (
    ('data', lambda c: f'{c.data.dataset} at {c.data.img_size} px'),
    ('epochs (warm-up)', lambda c: f'{c.epochs} ({c.warmup_epochs:g})'),
    ('batch size', lambda c: c.batch_size),
    ('optimizer', lambda c: f'AdamW, betas {c.betas[0]:g}/{c.betas[1]:g}, weight decay {c.weight_decay:g}'),
    ('peak learning rate', lambda c: f'{c.lr:.2g} ({c.lr_per_1024:g} per 1024 images)'),
    ('warm-up start / final lr', lambda c: f'{c.warmup_lr:g} / {c.min_lr:g}'),
    ('schedule', lambda c: 'linear warm-up, cosine decay (per step)'),
    ('gradient clipping', lambda c: f'{c.clip_grad:g}'),
    ('EMA decay', lambda c: f'{c.ema_decay:g}' if c.ema_decay else 'off'),
    ('layer scale init', lambda c: f'{c.layer_scale_init:g}'),
    ('stochastic depth', lambda c: 'the model\'s own rate' if c.drop_path_rate is None else f'{c.drop_path_rate:g}'),
    ('random-resized crop scale', lambda c: f'{c.data.scale[0]:g}-{c.data.scale[1]:g}'),
    ('RandAugment', lambda c: c.data.auto_augment or 'off'),
    ('mixup / cutmix', lambda c: f'{c.data.mixup:g} / {c.data.cutmix:g}' if c.data.mixup or c.data.cutmix else 'off'),
    ('random erasing', lambda c: f'{c.data.re_prob:g}' if c.data.re_prob else 'off'),
    ('colour jitter', lambda c: ('ignored (RandAugment on)' if c.data.auto_augment else f'{c.data.color_jitter:g}')
     if c.data.color_jitter else 'off'),
    ('label smoothing', lambda c: f'{c.data.label_smoothing:g}'),
    ('mixed precision', lambda c: c.amp),
)


def recipe_table(columns: Dict[str, TrainConfig]) -> List[dict]:
    """Table IV as rows ``{'setting': label, <column>: value, ...}`` from resolved configurations, e.g.
    ``{'paper, transformer': profile_config('u_swin_tiny', 'paper'), 'cpu': profile_config('u_swin_micro', 'cpu')}``."""
    return [dict(setting=label, **{name: read(cfg) for name, cfg in columns.items()}) for label, read in RECIPE_ROWS]


def autocast(amp: str, device_type: str):
    """The autocast context of a run's forward passes: off for ``none``, else bf16 or fp16 on the device."""
    import torch
    dtype = {'bf16': torch.bfloat16, 'fp16': torch.float16}.get(amp)
    return torch.autocast(device_type, dtype=dtype, enabled=dtype is not None)
