"""Training and evaluation with the paper's recipe (Table IV), assembled from timm's parts.

    python -m stm_lab.train --model u_dwconv_micro --profile cpu                # 'train' is the default subcommand
    python -m stm_lab.train train --model u_dwconv_micro --profile cpu          # resumes by default (--resume auto)
    python -m stm_lab.train eval --checkpoint results/cpu/u_dwconv_micro.safetensors --data imagenette --split val
    python -m stm_lab.train bench --profile cpu                                  # training images/s per model
    python -m stm_lab.train summary --profile cpu                                # top-1 beside the paper's Table III
    python -m stm_lab.train train --model u_swin_tiny --profile paper --dry-run  # resolved config + torchrun command
    torchrun --nproc_per_node 8 -m stm_lab.train train --model u_swin_tiny --profile paper --data-dir /imagenet

Recipe pieces (timm): ``create_transform`` (RandomResizedCrop, flip, RandAugment m9, eval resize + center crop
0.875), ``RandomErasing`` 0.25, ``Mixup`` (0.8 / 1.0, label smoothing 0.1) + ``SoftTargetCrossEntropy``,
``param_groups_weight_decay`` (AdamW, wd 0.05; no decay for norms, biases and position tables),
``CosineLRScheduler`` (linear warm-up, cosine, per step), ``ModelEmaV3``; gradient clipping 5.0.

A run lives in ``runs/<profile>/<model>/``: ``last.safetensors`` (weights, EMA, optimizer state; the JSON state is
embedded in its metadata, so one atomic rename updates everything), ``last.json`` (the same state, readable) and
``metrics.jsonl``; ``.train.lock`` while a process trains it (a second one is refused). At the end, the weights
(EMA or not, whichever scores higher) go to
``results/<profile>/<model>.safetensors`` in half precision, with ``results/<profile>/train_<model>.json``.
"""
from __future__ import annotations

import argparse
import fcntl
import hashlib
import json
import math
import os
import random
import shlex
import socket
import sys
import time
import typing
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Callable, Dict, List, Optional, Tuple

import numpy as np
import torch
import torch.distributed as dist
import torch.nn as nn
from safetensors import safe_open
from safetensors.torch import save as st_save
from timm.loss import LabelSmoothingCrossEntropy, SoftTargetCrossEntropy
from timm.optim import param_groups_weight_decay
from timm.scheduler import CosineLRScheduler
from timm.utils import ModelEmaV3

from . import results
from .backbone import UnifiedNet
from .data import BatchFinish, DataConfig, build_mixup, image_transform, load_dataset
from .mixers import ensure_mixer, mixer_module, mixer_trait
from .models import FAMILIES, create_model, main_models
from .results import ROOT, atomic_write_bytes, remove_stale_temporaries

FORMAT = 'stm-lab-checkpoint/1'
RUNS_DIR = Path(os.environ.get('STM_LAB_RUNS', ROOT / 'runs'))
MICRO_MODELS = tuple(main_models('micro'))  # the roster at the cpu profile's scale
SMOKE_MODELS = tuple(main_models('test'))  # what the smoke profile trains
IMAGENET_TRAIN_IMAGES = 1281167

# ------------------------------------------------------------------------------------------------ configs

# Table IV, per mixer family; warm-up start and final learning rates from the authors' launch scripts
PAPER_RECIPES = {
    'transformer': dict(batch_size=1024, warmup_lr=1e-6, min_lr=1e-5),  # Halo, PVT, Swin
    'cnn': dict(batch_size=4096, warmup_lr=0.0, min_lr=1e-6),  # DWConv (ConvNeXt), DCNv3 (InternImage)
}
# cpu profile: epochs for every model (same for all five, so they are compared on one recipe); see data/README.md
CPU_EPOCHS = 22


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
    # on this many fixed validation images (stm_lab.analysis.run.consistency_tracker)
    track_consistency: int = 0

    def __post_init__(self):
        if isinstance(self.data, dict):
            self.data = DataConfig(**self.data)
        self.betas = tuple(self.betas)
        if self.recipe not in PAPER_RECIPES:
            raise ValueError(f'unknown recipe {self.recipe!r}; valid: {", ".join(PAPER_RECIPES)}')
        if self.amp not in ('none', 'bf16', 'fp16'):
            raise ValueError(f"amp must be 'none', 'bf16' or 'fp16', got {self.amp!r}")
        # bad values fail here, in one line, before anything is written (not as a traceback epochs later)
        check = _checker('')
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

    @property
    def lr(self) -> float:
        return self.lr_per_1024 * self.batch_size / 1024

    def to_dict(self) -> dict:
        return dict(asdict(self), lr=self.lr)

    @classmethod
    def from_dict(cls, d: dict) -> 'TrainConfig':
        names = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in names})


def _is_int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _checker(prefix: str) -> Callable:
    """``check(name, value, what, ok)``: raise ``ValueError('<prefix><name> must be <what>, got <value>')`` unless
    ``ok(value)`` (a value of the wrong type fails too)."""
    def check(name, value, what, ok):
        try:
            good = ok(value)
        except (TypeError, ValueError):
            good = False
        if not good:
            raise ValueError(f'{prefix}{name} must be {what}, got {value!r}')
    return check


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
    """The resolved configuration of ``model`` at a profile (``smoke``, ``cpu``, ``paper``); overrides win
    (``data`` overrides may be a dict of DataConfig fields)."""
    recipe = overrides.pop('recipe', None) or model_recipe(model)
    r = PAPER_RECIPES[recipe]
    paper_steps = 300 * math.ceil(IMAGENET_TRAIN_IMAGES / r['batch_size'])
    data = overrides.pop('data', None) or {}
    if profile == 'paper':  # exactly Table IV: ImageNet-1k at 224, 300 epochs, 8 GPUs
        cfg = TrainConfig(model=model, profile=profile, recipe=recipe, epochs=300, warmup_epochs=20,
                          data=DataConfig(dataset='imagenet', img_size=224, num_workers=8, download=False),
                          amp='fp16', nproc=8, **r)
        return replace(cfg, data=replace(cfg.data, **data), **overrides)
    if profile == 'cpu':  # micro models on Imagenette at 64x64 (the choices are explained in data/README.md)
        base = TrainConfig(model=model, profile=profile, recipe=recipe, epochs=CPU_EPOCHS,
                           # one batch for both families: with ~150 steps per epoch instead of the paper's 313-1252,
                           # the CNNs' 4x larger batch cost accuracy here (data/README.md); peak lr 1e-3
                           batch_size=64, lr_per_1024=1.6e-2,
                           warmup_lr=r['warmup_lr'], min_lr=r['min_lr'], eval_every=5,
                           # Table IV's heavy regularization (RandAugment, mixup, cutmix, random erasing) is made for
                           # 300 epochs of 1.28M images; at 12 epochs of 9,469 it cost 13-17 points (data/README.md)
                           data=DataConfig(dataset='imagenette', img_size=64, scale=(0.35, 1.0), auto_augment=None,
                                           color_jitter=0.0, re_prob=0.0, mixup=0.0, cutmix=0.0))
        n_train = 9469
    elif profile == 'smoke':  # *_test models on the committed fixture, seconds
        base = TrainConfig(model=model, profile=profile, recipe=recipe, epochs=2, batch_size=32, lr_per_1024=3.2e-2,
                           warmup_lr=r['warmup_lr'], min_lr=r['min_lr'],
                           data=DataConfig(dataset='fixture', img_size=32, download=False))
        n_train = 300
    else:
        raise ValueError(f"unknown profile {profile!r}; valid: smoke, cpu, paper")
    cfg = replace(base, data=replace(base.data, **data), **overrides)
    # warm-up and EMA follow the run's length: the paper's 20 of 300 epochs, and an EMA time constant that is the
    # same fraction of the run as 0.9999's is of the paper's (unless given explicitly)
    steps = cfg.epochs * (n_train // cfg.batch_size)
    derived = dict(warmup_epochs=round(cfg.epochs * 20 / 300, 2),
                   ema_decay=round(scaled_ema_decay(0.9999, paper_steps, steps), 5))
    if profile == 'smoke':
        derived['ema_decay'] = 0.9  # 18 steps: only checks that the EMA is wired
    return replace(cfg, **{k: v for k, v in derived.items() if k not in overrides})


# ------------------------------------------------------------------------------------------ distributed

@dataclass
class Dist:
    rank: int = 0
    world: int = 1
    local_rank: int = 0
    device: torch.device = torch.device('cpu')

    @property
    def main(self) -> bool:
        return self.rank == 0


def init_distributed(device: str = 'auto') -> Dist:
    """One process, or the process group that torchrun describes (env RANK/WORLD_SIZE/LOCAL_RANK):
    NCCL on GPUs, gloo on CPUs."""
    cuda = torch.cuda.is_available() and device != 'cpu'
    world = int(os.environ.get('WORLD_SIZE', '1'))
    if world == 1:
        return Dist(device=torch.device('cuda') if cuda else torch.device('cpu'))
    local = int(os.environ.get('LOCAL_RANK', '0'))
    if cuda:
        torch.cuda.set_device(local)
    if not dist.is_initialized():
        dist.init_process_group('nccl' if cuda else 'gloo')
    return Dist(dist.get_rank(), dist.get_world_size(), local, torch.device('cuda', local) if cuda else torch.device('cpu'))


def prepare_model(model: nn.Module, d: Dist) -> nn.Module:
    """DistributedDataParallel with several processes; the head's BatchNorm becomes SyncBatchNorm on GPUs
    (PyTorch's SyncBatchNorm has no CPU kernel: on gloo each process normalizes with its own batch statistics,
    and DDP broadcasts rank 0's running statistics)."""
    if d.world == 1:
        return model
    if d.device.type == 'cuda':
        model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
    return nn.parallel.DistributedDataParallel(model, device_ids=[d.local_rank] if d.device.type == 'cuda' else None)


def unwrap(model: nn.Module) -> nn.Module:
    return model.module if isinstance(model, nn.parallel.DistributedDataParallel) else model


def seed_everything(seed: int, epoch: int, rank: int) -> None:
    """Every epoch starts from RNG states that are a function of (seed, epoch, rank): python, numpy and torch
    (augmentation, mixup, drop path, loader workers), so a resumed run draws the same numbers."""
    s = int(np.random.SeedSequence([seed, epoch, rank]).generate_state(1)[0])
    random.seed(s)
    np.random.seed(s)
    torch.manual_seed(s)


# ------------------------------------------------------------------------------------------ checkpoints

def _tensor_digest(tensors: Dict[str, torch.Tensor]) -> str:
    h = hashlib.sha256()
    for k in sorted(tensors):
        t = tensors[k].detach().contiguous().reshape(-1)
        h.update(f'{k}|{t.dtype}|{tuple(tensors[k].shape)}|'.encode())
        h.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b'')
    return h.hexdigest()


def write_checkpoint(path: Path, tensors: Dict[str, torch.Tensor], state: dict) -> Path:
    """Tensors plus a JSON state in one safetensors file, written atomically: a crash leaves the previous file
    intact. The state (in the metadata) records a digest of the tensors, and a second metadata entry the digest
    of the state's text, so a change anywhere in the file is caught on reading."""
    tensors = {k: v.detach().cpu().contiguous() for k, v in tensors.items()}
    text = json.dumps(dict(state, format=FORMAT, tensors_sha256=_tensor_digest(tensors)))
    atomic_write_bytes(path, st_save(tensors, metadata={'stm_lab': text, STATE_DIGEST: _sha256(text)}))
    return path


STATE_DIGEST = 'stm_lab_sha256'  # metadata key of the state's digest (absent in checkpoints written before it)


def _sha256(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def read_checkpoint(path, tensors: bool = True) -> Tuple[Optional[Dict[str, torch.Tensor]], dict]:
    """Tensors and state of a checkpoint; a damaged or foreign file raises ValueError (and is left untouched).
    Checkpoints written before the state digest existed are accepted with their tensors checked.
    ``tensors=False``: the state alone (None for the tensors, which are then neither read nor checked)."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f'checkpoint not found: {path}')
    try:
        with safe_open(str(path), framework='pt') as f:
            meta = f.metadata() or {}
            data = {k: f.get_tensor(k) for k in f.keys()} if tensors else None
        text = meta['stm_lab']
        state = json.loads(text)
        if not isinstance(state, dict):
            raise TypeError(f'state is a {type(state).__name__}')
    except Exception as e:  # safetensors raises its own error types for truncated or garbled files
        raise ValueError(f'checkpoint {path} is damaged or is not a stm-lab checkpoint ({type(e).__name__}: {e}); '
                         f'it was left in place') from None
    # an unknown key is a damaged digest key: without this, flipping its name would pass as an older checkpoint
    unknown = sorted(set(meta) - {'stm_lab', STATE_DIGEST})
    if unknown:
        raise ValueError(f'checkpoint {path} is damaged (unexpected metadata {unknown}); it was left in place')
    if STATE_DIGEST in meta and meta[STATE_DIGEST] != _sha256(text):
        raise ValueError(f'checkpoint {path} is corrupted (its state does not match the recorded sha256); '
                         f'it was left in place')
    if state.get('format') != FORMAT:
        raise ValueError(f'checkpoint {path} has format {state.get("format")!r}, expected {FORMAT!r}; it was left in place')
    if data is not None and _tensor_digest(data) != state.get('tensors_sha256'):
        raise ValueError(f'checkpoint {path} is corrupted (its tensors do not match the recorded sha256); '
                         f'it was left in place')
    return data, state


def _prefixed(prefix: str, tensors: Dict[str, torch.Tensor]) -> Dict[str, torch.Tensor]:
    return {k[len(prefix):]: v for k, v in tensors.items() if k.startswith(prefix)}


def _optimizer_tensors(opt: torch.optim.Optimizer) -> Tuple[Dict[str, torch.Tensor], list]:
    sd = opt.state_dict()
    tensors = {f'optim/{i}/{k}': v for i, s in sd['state'].items() for k, v in s.items()}
    return tensors, sd['param_groups']


def _load_optimizer(opt: torch.optim.Optimizer, tensors: Dict[str, torch.Tensor], groups: list) -> None:
    state: Dict[int, dict] = {}
    for k, v in _prefixed('optim/', tensors).items():
        i, name = k.split('/', 1)
        state.setdefault(int(i), {})[name] = v
    opt.load_state_dict(dict(state=state, param_groups=groups))


# ------------------------------------------------------------------------------------------ the run

def build_model(cfg: TrainConfig, num_classes: int) -> UnifiedNet:
    kw = dict(num_classes=num_classes, img_size=cfg.data.img_size, layer_scale_init=cfg.layer_scale_init)
    if cfg.drop_path_rate is not None:
        kw['drop_path_rate'] = cfg.drop_path_rate
    return create_model(cfg.model, **kw)


def check_setup(cfg: TrainConfig, d: Dist) -> None:
    """Settings that cannot work on this machine or process group, refused before anything is written."""
    if cfg.batch_size % (2 * d.world):
        raise ValueError(f'batch size {cfg.batch_size} must split into even per-process batches over {d.world} '
                         f'process(es) (mixup pairs images within a batch)')
    if cfg.amp == 'fp16' and d.device.type != 'cuda':
        raise ValueError("--amp fp16 needs a GPU (it uses a gradient scaler); on the CPU use --amp bf16")


def _positive(name: str, value: int) -> int:
    if value < 1:
        raise ValueError(f'{name} must be at least 1, got {value}')
    return value


class Run:
    """Model, EMA, optimizer, schedule, loss and loaders of one training run, on this process's share."""

    def __init__(self, cfg: TrainConfig, d: Dist, limit_train: Optional[int] = None, limit_val: Optional[int] = None):
        self.cfg, self.d = cfg, d
        check_setup(cfg, d)
        self.batch = cfg.batch_size // d.world
        # what else decides the numbers besides the config: a resume must match it (check_resume)
        self.execution = dict(world_size=d.world, threads=torch.get_num_threads(), workers=cfg.data.num_workers,
                              device=d.device.type)
        self.train_set = load_dataset(cfg.data, cfg.data.train_split, image_transform(cfg.data, True))
        self.val_set = load_dataset(cfg.data, cfg.data.val_split, image_transform(cfg.data, False))
        self.classes = list(self.val_set.classes)
        if limit_train:
            self.train_set = torch.utils.data.Subset(self.train_set, _spread(len(self.train_set), limit_train))
        self.val_indices = _spread(len(self.val_set), limit_val) if limit_val else list(range(len(self.val_set)))
        self.sampler = torch.utils.data.DistributedSampler(self.train_set, num_replicas=d.world, rank=d.rank,
                                                           shuffle=True, seed=cfg.seed, drop_last=True)
        workers = cfg.data.num_workers
        self.train_loader = torch.utils.data.DataLoader(
            self.train_set, self.batch, sampler=self.sampler, num_workers=workers, drop_last=True,
            pin_memory=d.device.type == 'cuda')  # fresh workers each epoch: seeded
        self.val_loader = torch.utils.data.DataLoader(
            self.val_set, max(self.batch, 64), sampler=self.val_indices[d.rank::d.world], num_workers=workers,
            pin_memory=d.device.type == 'cuda')
        self.steps_per_epoch = len(self.train_loader)
        if self.steps_per_epoch == 0:
            raise ValueError(f'{len(self.train_set)} training images make no batch of {self.batch}')
        self.total_steps = cfg.epochs * self.steps_per_epoch

        torch.manual_seed(cfg.seed)  # the same initial weights on every process
        self.model = build_model(cfg, len(self.classes)).to(d.device)
        self.ema = ModelEmaV3(self.model, decay=cfg.ema_decay) if cfg.ema_decay > 0 else None
        groups = param_groups_weight_decay(self.model, cfg.weight_decay, no_weight_decay_list=self.model.no_weight_decay())
        # fused: one kernel for the whole update instead of a dozen elementwise passes (same update rule)
        self.opt = torch.optim.AdamW(groups, lr=cfg.lr, betas=cfg.betas, eps=cfg.opt_eps, fused=True)
        warmup = round(cfg.warmup_epochs * self.steps_per_epoch)
        self.sched = CosineLRScheduler(self.opt, t_initial=max(self.total_steps - warmup, 1), lr_min=cfg.min_lr,
                                       warmup_t=warmup, warmup_lr_init=cfg.warmup_lr, warmup_prefix=True,
                                       t_in_epochs=False)
        self.train_model = prepare_model(self.model, d)
        self.mixup = build_mixup(cfg.data, len(self.classes))
        if self.mixup is not None:
            self.loss_fn = SoftTargetCrossEntropy()
        elif cfg.data.label_smoothing > 0:
            self.loss_fn = LabelSmoothingCrossEntropy(cfg.data.label_smoothing)
        else:
            self.loss_fn = nn.CrossEntropyLoss()
        self.finish_train = BatchFinish(cfg.data, True, d.device)
        self.finish_val = BatchFinish(cfg.data, False, d.device)
        self.scaler = torch.amp.GradScaler('cuda') if cfg.amp == 'fp16' and d.device.type == 'cuda' else None
        self.epoch = 0  # epochs completed
        self.history: List[dict] = []
        self.wall_time = 0.0
        self.commands: List[str] = []  # the command lines that trained this run (the first started it)

    # -- numerics
    def autocast(self):
        dtype = {'bf16': torch.bfloat16, 'fp16': torch.float16}.get(self.cfg.amp)
        return torch.autocast(self.d.device.type, dtype=dtype, enabled=dtype is not None)

    def loss(self, x: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        with self.autocast():
            return self.loss_fn(self.train_model(x), target)

    def step(self, x_uint8: torch.Tensor, y: torch.Tensor, global_step: int) -> float:
        """One optimizer step on this process's batch (DDP averages the gradients over processes)."""
        self.sched.step_update(global_step)
        x = self.finish_train(x_uint8)
        y = y.to(self.d.device, non_blocking=True)
        if self.mixup is not None:
            x, y = self.mixup(x, y)
        loss = self.loss(x, y)
        if not torch.isfinite(loss):
            raise FloatingPointError(f'loss is {loss.item()} at step {global_step}; the last checkpoint is kept')
        self.opt.zero_grad(set_to_none=True)
        if self.scaler is not None:
            self.scaler.scale(loss).backward()
            self.scaler.unscale_(self.opt)
        else:
            loss.backward()
        if self.cfg.clip_grad:
            nn.utils.clip_grad_norm_(self.model.parameters(), self.cfg.clip_grad)
        if self.scaler is not None:
            self.scaler.step(self.opt)
            self.scaler.update()
        else:
            self.opt.step()
        if self.ema is not None:
            self.ema.update(self.model, step=global_step)
        return loss.item()

    def train_epoch(self, progress: bool = True, max_steps: Optional[int] = None) -> dict:
        from tqdm import tqdm
        epoch = self.epoch
        seed_everything(self.cfg.seed, epoch, self.d.rank)
        self.sampler.set_epoch(epoch)
        self.train_model.train()
        n_steps = min(self.steps_per_epoch, max_steps or self.steps_per_epoch)
        bar = tqdm(total=n_steps * self.cfg.batch_size, unit='img', desc=f'epoch {epoch + 1}/{self.cfg.epochs}',
                   disable=not (progress and self.d.main), mininterval=2, leave=False, dynamic_ncols=True)
        losses, t0 = [], time.perf_counter()
        for i, (x, y) in enumerate(self.train_loader):
            if i >= n_steps:
                break
            losses.append(self.step(x, y, epoch * self.steps_per_epoch + i))
            bar.update(self.cfg.batch_size)
            if i % 10 == 0:
                bar.set_postfix(loss=f'{np.mean(losses[-10:]):.3f}', lr=f'{self.opt.param_groups[0]["lr"]:.2e}')
        bar.close()
        dt = time.perf_counter() - t0
        loss = _all_mean(float(np.mean(losses)), self.d)
        return dict(train_loss=round(loss, 6), lr=self.opt.param_groups[0]['lr'], train_time_s=round(dt, 2),
                    train_img_per_s=round(n_steps * self.cfg.batch_size / dt, 1))

    @torch.no_grad()
    def evaluate(self) -> dict:
        """Top-1/top-5 of the weights and of the EMA, in one pass over the validation split."""
        models = {'': self.model, 'ema_': self.ema.module if self.ema is not None else None}
        models = {k: m for k, m in models.items() if m is not None}
        self.sync_from_main()
        t0 = time.perf_counter()
        out = evaluate_models(models, self.val_loader, self.finish_val, self.d, self.autocast)
        out['eval_time_s'] = round(time.perf_counter() - t0, 2)
        return out

    def sync_from_main(self) -> None:
        """Give every process rank 0's BatchNorm statistics and EMA, so that the sharded evaluation scores the one
        model that is checkpointed and exported. DDP keeps only the parameters equal: each process's last step
        updates the running statistics with its own batch (no SyncBatchNorm on CPUs), and the EMA averages them.
        Rank 0's training is untouched (DDP broadcasts its buffers before every step anyway)."""
        if self.d.world == 1:
            return
        tensors = list(self.model.buffers())
        if self.ema is not None:
            tensors += list(self.ema.module.state_dict().values())
        for t in tensors:
            dist.broadcast(t, 0)

    # -- checkpoints
    def state(self) -> Tuple[Dict[str, torch.Tensor], dict]:
        tensors = {f'model/{k}': v for k, v in self.model.state_dict().items()}
        if self.ema is not None:
            tensors.update({f'ema/{k}': v for k, v in self.ema.module.state_dict().items()})
        opt_tensors, groups = _optimizer_tensors(self.opt)
        tensors.update(opt_tensors)
        state = dict(kind='train_state', config=self.cfg.to_dict(), model_config=self.model.config.to_dict(),
                     mixer_module=mixer_module(self.model.config.mixer),
                     classes=self.classes, epoch=self.epoch, steps_per_epoch=self.steps_per_epoch,
                     global_step=self.epoch * self.steps_per_epoch, optimizer_param_groups=groups,
                     scheduler=_jsonable(self.sched.state_dict()),
                     scaler=self.scaler.state_dict() if self.scaler is not None else None,
                     rng=dict(seed=self.cfg.seed, scheme='python/numpy/torch reseeded at each epoch start from '
                                                         '(seed, epoch, rank)', next_epoch=self.epoch),
                     history=self.history, wall_time_s=round(self.wall_time, 2), commands=self.commands,
                     execution=self.execution)
        return tensors, state

    def load_state(self, tensors: Dict[str, torch.Tensor], state: dict, path: Path) -> None:
        """Continue from a checkpoint that :func:`check_resume` accepted."""
        try:
            self.model.load_state_dict(_prefixed('model/', tensors))
            if self.ema is not None:
                self.ema.module.load_state_dict(_prefixed('ema/', tensors))
            _load_optimizer(self.opt, tensors, state['optimizer_param_groups'])
        except (RuntimeError, KeyError, ValueError) as e:
            raise ValueError(f'checkpoint {path} does not fit this model ({e}); it was left in place') from None
        self.sched.load_state_dict(state['scheduler'])
        if self.scaler is not None and state.get('scaler'):
            self.scaler.load_state_dict(state['scaler'])
        self.epoch, self.history, self.wall_time = state['epoch'], state['history'], state['wall_time_s']
        self.commands = list(state.get('commands', []))  # absent in checkpoints older than the field


RESUME_FREE = {'eval_every', 'nproc', 'data.num_workers', 'data.download', 'data.data_dir'}  # workers: check_resume


def check_resume(state: dict, cfg: TrainConfig, d: Dist, path: Path, threads: Optional[int] = None) -> None:
    """Refuse a checkpoint whose continuation here would not give the numbers of an uninterrupted run: another
    configuration, or other execution settings (processes, loader workers, CPU threads on a CPU run: each changes
    the result). Settings a checkpoint does not record (written before they were) count as this run's. Without
    an explicit ``threads``, a CPU run continues with the checkpoint's thread count."""
    diff = config_differences(TrainConfig.from_dict(state['config']), cfg)
    if diff:
        raise ValueError(f'checkpoint {path} belongs to a different run ({"; ".join(diff)}); it was left in '
                         f'place. Use another --out folder, or --resume none to start over.')
    ex = state.get('execution') or {}
    problems = []
    if ex.get('world_size', d.world) != d.world:
        problems.append(f'{ex["world_size"]} process(es) there, {d.world} here')
    workers = state['config'].get('data', {}).get('num_workers', cfg.data.num_workers)
    if workers != cfg.data.num_workers:
        problems.append(f'--workers {workers} there, {cfg.data.num_workers} here')
    recorded = ex.get('threads')
    if recorded and ex.get('device') == 'cpu' == d.device.type:
        if threads is None and recorded != torch.get_num_threads():
            torch.set_num_threads(recorded)
            _log(d, f'[train] {recorded} CPU thread(s), as the checkpoint was trained with')
        elif threads is not None and threads != recorded:
            problems.append(f'--threads {recorded} there, {threads} here')
    if problems:
        raise ValueError(f'checkpoint {path} was trained with other settings, and continuing with these would '
                         f'change the result ({"; ".join(problems)}); resume with its settings, or start over with '
                         f'--resume none or another --out. It was left in place.')


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


def _jsonable(d: dict) -> dict:
    return json.loads(json.dumps(d, default=lambda o: o.tolist() if hasattr(o, 'tolist') else str(o)))


def _spread(n: int, limit: int) -> List[int]:
    """A fixed subset of ``limit`` indices out of ``n`` (seeded; the shards are sorted by class)."""
    return sorted(np.random.default_rng(0).permutation(n)[:min(limit, n)].tolist())


def _all_mean(value: float, d: Dist) -> float:
    if d.world == 1:
        return value
    t = torch.tensor([value], dtype=torch.float64, device=d.device)
    dist.all_reduce(t)
    return t.item() / d.world


@torch.no_grad()
def evaluate_models(models: Dict[str, nn.Module], loader, finish, d: Dist, autocast) -> dict:
    """``{prefix}top1``/``top5`` (percent) for each model over the loader (summed over processes)."""
    counts = torch.zeros(len(models), 3, dtype=torch.float64, device=d.device)  # top1, top5, n
    for m in models.values():
        m.eval()
    for x, y in loader:
        x, y = finish(x), y.to(d.device)
        for j, m in enumerate(models.values()):
            with autocast():
                logits = m(x).float()
            k = min(5, logits.shape[1])
            hit = logits.topk(k, dim=1).indices == y[:, None]
            counts[j] += torch.tensor([hit[:, 0].sum().item(), hit.any(1).sum().item(), len(y)], device=d.device)
    if d.world > 1:
        dist.all_reduce(counts)
    out = {}
    for j, prefix in enumerate(models):
        top1, top5, n = counts[j].tolist()
        out.update({f'{prefix}top1': round(100 * top1 / max(n, 1), 3), f'{prefix}top5': round(100 * top5 / max(n, 1), 3)})
    out['val_images'] = int(counts[0, 2].item())
    return out


def resume_source(ckpt: Path, resume: str) -> Optional[Path]:
    """The checkpoint a run continues from: None for 'none', the run folder's ``ckpt`` for 'auto' (used only if it
    exists), else the given path, which must exist."""
    if resume == 'none':
        return None
    source = ckpt if resume == 'auto' else Path(resume)
    if resume != 'auto' and not source.exists():
        raise FileNotFoundError(f'--resume {source}: no such checkpoint')
    return source


def run_dir(cfg: TrainConfig) -> Path:
    return RUNS_DIR / cfg.profile / cfg.model


def evaluated_after(epoch: int, epochs: int, eval_every: int) -> bool:
    """Whether a run of ``epochs`` evaluates after ``epoch`` (1-based): every ``eval_every`` epochs and the last."""
    return epoch == epochs or epoch % max(eval_every, 1) == 0


def train(cfg: TrainConfig, out_dir: Optional[Path] = None, resume: str = 'auto', progress: bool = True,
          stop_after: Optional[int] = None, export: bool = True, limit_train: Optional[int] = None,
          limit_val: Optional[int] = None, command: Optional[str] = None, results_subdir: str = '',
          epoch_hook: Optional[Callable[[nn.Module], dict]] = None, threads: Optional[int] = None) -> dict:
    """Train (or continue) a run; returns the last epoch's metrics. ``resume``: 'auto' (the run folder's
    last checkpoint if there is one), 'none' (start over), or a checkpoint path. ``results_subdir``: export the
    final weights and result to ``results/<profile>/<results_subdir>/`` (runs kept apart from the profile's main
    set, e.g. a longer budget); resuming a finished run exports it again. ``stop_after``: stop after
    that many epochs in this call (for tests and for splitting a long run). ``epoch_hook(model)``: extra metrics
    of the trained weights after every epoch (rank 0 computes them; the CLI passes the consistency tracker when
    ``cfg.track_consistency`` is set). ``threads``: torch CPU threads; None keeps the current number, or on a
    resume adopts the checkpoint's (:func:`check_resume`).

    The run folder is locked while this runs (:class:`RunLock`); a refused start changes nothing. Ctrl-C raises
    :class:`RunInterrupted`, which says what the folder holds."""
    if cfg.track_consistency and epoch_hook is None:
        raise ValueError('track_consistency is set but no epoch_hook measures it (the stm-lab command passes one)')
    if stop_after is not None and stop_after < 1:
        raise ValueError(f'--stop-after must be at least 1, got {stop_after}')
    if threads is not None:
        _positive('--threads', threads)
    d = init_distributed()
    check_setup(cfg, d)
    out = Path(out_dir) if out_dir else run_dir(cfg)
    ckpt = out / 'last.safetensors'
    source = resume_source(ckpt, resume)
    with RunLock(out, d, command):
        if d.main:  # under the lock no other writer is active here: every temporary is a leftover
            freed = sum(remove_stale_temporaries(out / name, every=True) for name in RUN_FILES)
            if freed:
                _log(d, f'[train] removed {freed / 1e6:.1f} MB of temporaries left by an interrupted write in {out}')
        try:
            loaded = read_checkpoint(source) if source is not None and source.exists() else None
        except ValueError as e:  # the message names the file; say how to go on
            raise ValueError(f'{e}. Delete it (or pass --resume none) to start over.') from None
        if loaded is not None:
            check_resume(loaded[1], cfg, d, source, threads)
        if threads is not None:
            torch.set_num_threads(threads)
        run = Run(cfg, d, limit_train, limit_val)
        if loaded is not None:
            run.load_state(*loaded, source)
            _log(d, f'[train] resumed {cfg.model} from {source} after epoch {run.epoch}/{cfg.epochs}')
        if d.main:
            if loaded is not None:  # agrees with the checkpoint, even after a crash; a fresh start keeps the
                _write_metrics(out / 'metrics.jsonl', run.history)  # old file until its first checkpoint replaces it
            n_params = sum(p.numel() for p in run.model.parameters())
            _log(d, f'[train] {cfg.model} ({n_params / 1e6:.2f}M params) profile {cfg.profile}: {cfg.epochs} epochs x '
                    f'{run.steps_per_epoch} steps, batch {cfg.batch_size} over {d.world} process(es), peak lr '
                    f'{cfg.lr:.2e}, EMA {cfg.ema_decay}, device {d.device}, {torch.get_num_threads()} thread(s); '
                    f'run folder {out}')
        saved = run.epoch if loaded is not None and source == ckpt else None  # the epoch the folder's checkpoint holds
        epoch_now = run.epoch + 1
        try:
            done_here = 0
            if command and run.epoch < cfg.epochs:
                run.commands.append(command)
            while run.epoch < cfg.epochs and (stop_after is None or done_here < stop_after):
                epoch_now = run.epoch + 1
                _train_one_epoch(run, epoch_hook, progress)
                done_here += 1
                if d.main:
                    tensors, state = run.state()
                    write_checkpoint(ckpt, tensors, state)
                    saved = run.epoch
                    atomic_write_bytes(out / 'last.json', (json.dumps(state, indent=1) + '\n').encode())
                    _write_metrics(out / 'metrics.jsonl', run.history)
                    metrics = run.history[-1]
                    eta = run.wall_time / run.epoch * (cfg.epochs - run.epoch)
                    _log(d, f'[train] {cfg.model} epoch {run.epoch}/{cfg.epochs}: ' + ', '.join(
                        f'{k} {v}' for k, v in metrics.items() if k != 'epoch') + f'; ETA {eta / 60:.1f} min')
                if d.world > 1:
                    dist.barrier()
            final = run.history[-1] if run.history else {}
            if run.epoch == cfg.epochs and export and d.main:
                epoch_now = None
                final = export_result(run, out, command, results_subdir)
            if d.world > 1:
                dist.barrier()  # the others wait for rank 0's export
        except KeyboardInterrupt:
            raise RunInterrupted(epoch_now, cfg.epochs, saved, ckpt, d.main) from None
    return final


RUN_FILES = ('last.safetensors', 'last.json', 'metrics.jsonl')  # what the trainer writes in a run folder


def _train_one_epoch(run: 'Run', epoch_hook, progress: bool) -> None:
    """Train, evaluate when scheduled, and append the epoch's metrics to the run's history."""
    cfg, d = run.cfg, run.d
    t0, c0 = time.perf_counter(), time.process_time()
    metrics = dict(epoch=run.epoch + 1, **run.train_epoch(progress))
    if evaluated_after(run.epoch + 1, cfg.epochs, cfg.eval_every):
        metrics.update(run.evaluate())
    if epoch_hook is not None and d.main:
        metrics.update(epoch_hook(run.model))
    run.epoch += 1
    run.wall_time += time.perf_counter() - t0
    metrics['wall_time_s'] = round(run.wall_time, 1)
    # CPU seconds of this process (all its threads): the cost in core time, whatever else shared the machine
    metrics['cpu_time_s'] = round(time.process_time() - c0, 1)
    run.history.append(metrics)


class RunInterrupted(KeyboardInterrupt):
    """Ctrl-C during :func:`train`, saying where the run stopped; still a KeyboardInterrupt, so it ends a program."""

    def __init__(self, epoch: Optional[int], epochs: int, saved: Optional[int], checkpoint: Path, main: bool = True):
        self.epoch, self.saved, self.checkpoint, self.main = epoch, saved, checkpoint, main
        where = f'during epoch {epoch} of {epochs}' if epoch else 'while exporting the finished run'
        kept = (f'{checkpoint} holds the run after epoch {saved}' if saved else
                'no epoch of this run had finished, so nothing was saved')
        super().__init__(f'interrupted {where}; {kept}')


LOCK_NAME = '.train.lock'  # not '.lock': stm-lab ablations holds that one around the trainer it starts


class RunLock:
    """An exclusive ``flock`` on ``<run folder>/.train.lock`` while a run trains there: a second run on the folder
    is refused. Rank 0 takes it and every rank learns the outcome. The kernel drops the lock when its process dies,
    so a killed run never blocks the next one; the file says who holds it, and goes when the run ends."""

    def __init__(self, folder: Path, d: Dist, command: Optional[str] = None):
        self.folder, self.d, self.command = Path(folder), d, command
        self.path = self.folder / LOCK_NAME
        self.fd: Optional[int] = None
        self.created = False

    def __enter__(self) -> 'RunLock':
        holder = None
        if self.d.main:
            self.created = not self.folder.exists()
            self.folder.mkdir(parents=True, exist_ok=True)
            who = f'pid {os.getpid()} on {socket.gethostname()} since {time.strftime("%Y-%m-%d %H:%M:%S")}'
            self.fd, holder = take_lock(self.path, who + (f': {self.command}' if self.command else ''))
        ok = self.fd is not None or not self.d.main
        if self.d.world > 1:
            flag = torch.tensor([int(ok)], device=self.d.device)
            dist.broadcast(flag, 0)
            ok = bool(flag.item())
        if not ok:
            self._drop_folder()
            raise ValueError(f'run folder {self.folder} is in use by another training run'
                             + (f' ({holder})' if holder else '') + '; wait for it to end or use another --out. '
                             'Nothing was changed.')
        return self

    def __exit__(self, *exc) -> None:
        if self.fd is not None:
            self.path.unlink(missing_ok=True)  # before unlocking: whoever opened this file meanwhile will retry
            os.close(self.fd)
            self.fd = None
        self._drop_folder()

    def _drop_folder(self) -> None:
        if self.created:  # a folder made for a start that wrote nothing (refused early) goes again
            try:
                self.folder.rmdir()
            except OSError:
                pass


def take_lock(path: Path, who: str) -> Tuple[Optional[int], Optional[str]]:
    """``(fd, None)``: an exclusive flock on ``path``, with ``who`` written in the file; ``(None, holder)`` if
    another open file holds it (``holder``: what its owner wrote)."""
    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.read(fd, 4096).decode(errors='replace').strip()
            os.close(fd)
            return None, holder
        try:
            current = os.stat(path).st_ino == os.fstat(fd).st_ino
        except FileNotFoundError:
            current = False
        if current:
            os.ftruncate(fd, 0)
            os.write(fd, (who + '\n').encode())
            return fd, None
        os.close(fd)  # the previous holder removed the file after we opened it: lock the new one


def _log(d: Dist, msg: str) -> None:
    if d.main:
        print(msg, file=sys.stderr, flush=True)


def _write_metrics(path: Path, history: List[dict]) -> None:
    atomic_write_bytes(path, ''.join(json.dumps(h) + '\n' for h in history).encode())


# --------------------------------------------------------------------------------------- final export

def export_result(run: Run, out: Path, command: Optional[str] = None, results_subdir: str = '') -> dict:
    """Half-precision weights (EMA if it scores higher) + result JSON under results/<profile>[/<results_subdir>]/;
    the fp16 weights are re-evaluated, so the committed file's accuracy is the one reported."""
    cfg, final = run.cfg, dict(run.history[-1])
    use_ema = run.ema is not None and final.get('ema_top1', -1) > final.get('top1', -1)
    model = run.ema.module if use_ema else run.model
    half = {k: (v.half() if v.is_floating_point() else v).detach().cpu().contiguous()
            for k, v in model.state_dict().items()}
    where = f'{cfg.profile}/{results_subdir}' if results_subdir else cfg.profile
    dest = results.RESULTS_DIR / where / f'{cfg.model}.safetensors'
    state = weights_state(cfg, model.config.to_dict(), run.classes, 'ema' if use_ema else 'model', final)
    check = model_from_tensors(state['model_config'], half, dest).to(run.d.device)  # as load_model rebuilds it
    loader = torch.utils.data.DataLoader(run.val_set, 256, sampler=run.val_indices)  # all of it, on this process
    fp16 = evaluate_models({'': check}, loader, run.finish_val, Dist(device=run.d.device), run.autocast)
    final.update(weights=state['weights'], top1_fp16=fp16['top1'], top5_fp16=fp16['top5'],
                 checkpoint=str(dest.relative_to(ROOT) if dest.is_relative_to(ROOT) else dest),
                 weights_sha256=_tensor_digest(half))
    # two files, two renames: the result JSON's last record repeats the weights' metrics (and digest), so a kill
    # between the writes leaves a pair that check_export refuses; exporting the finished run again repairs it
    write_checkpoint(dest, half, dict(state, metrics=final))
    records = run.history[:-1] + [final]
    train_speed = [h['train_img_per_s'] for h in run.history]
    prov = results.provenance(cfg.profile, cfg.seed, wall_time_s=round(run.wall_time, 1),
                              train_img_per_s_median=float(np.median(train_speed)), processes=run.d.world,
                              cpu_time_s=(round(sum(h['cpu_time_s'] for h in run.history), 1)  # of rank 0
                                          if all('cpu_time_s' in h for h in run.history) else None),
                              loadavg=[round(x, 2) for x in os.getloadavg()], run_folder=str(out))
    # the command that started the run (provenance of the numbers); resumes and a re-export only beside it
    if run.commands or command:
        prov['command'] = run.commands[0] if run.commands else command
    if len(run.commands) > 1:
        prov['resumed_with'] = run.commands[1:]
    if command and command not in run.commands:
        prov['exported_with'] = command
    results.save_result(where, f'train_{cfg.model}', records,
                        config=dict(train=cfg.to_dict(), model=model.config.to_dict(),
                                    params=sum(p.numel() for p in model.parameters())), prov=prov)
    _log(run.d, f'[train] {cfg.model}: top-1 {final["top1"]:.2f}% (EMA {final.get("ema_top1", float("nan")):.2f}%), '
                f'fp16 {final["top1_fp16"]:.2f}% -> {dest}')
    return final


def weights_state(cfg: TrainConfig, model_config: dict, classes: List[str], weights: str, metrics: dict) -> dict:
    """What a weights file records so that evaluation can rebuild everything (model, input, normalization)."""
    return dict(kind='weights', model=cfg.model, model_config=model_config, classes=classes, weights=weights,
                mixer_module=mixer_module(model_config['mixer']),
                data=dict(dataset=cfg.data.dataset, img_size=cfg.data.img_size, crop_pct=cfg.data.crop_pct,
                          interpolation=cfg.data.interpolation, mean=list(cfg.data.mean), std=list(cfg.data.std)),
                train_config=cfg.to_dict(), metrics=metrics)


def load_model(path, weights: str = 'auto') -> Tuple[UnifiedNet, dict]:
    """Rebuild a model from a checkpoint (exported weights or a run's ``last.safetensors``), in float32 eval mode.
    ``weights``: for run checkpoints, 'model', 'ema', or 'auto' (the one with the higher last top-1). Exported
    weights that do not pair with the result JSON beside them are refused (:func:`check_export`)."""
    tensors, state = read_checkpoint(path)
    ensure_mixer(state['model_config']['mixer'], state.get('mixer_module'))  # a user's mixer: import its module
    if state['kind'] == 'train_state':
        cfg = TrainConfig.from_dict(state['config'])
        last = state['history'][-1] if state['history'] else {}
        if weights == 'auto':
            weights = 'ema' if last.get('ema_top1', -1) > last.get('top1', -1) else 'model'
        tensors = _prefixed(f'{weights}/', tensors)
        if not tensors:
            raise ValueError(f'checkpoint {path} holds no {weights!r} weights')
        state = weights_state(cfg, state['model_config'], state['classes'], weights, last)
    else:
        check_export(path, state)
    return model_from_tensors(state['model_config'], tensors, path), state


def model_from_tensors(model_config: dict, tensors: Dict[str, torch.Tensor], path) -> UnifiedNet:
    """The model a checkpoint records, with these (possibly half-precision) weights, in float32 eval mode."""
    model = UnifiedNet(**model_config)
    try:
        model.load_state_dict({k: v.float() if v.is_floating_point() else v for k, v in tensors.items()})
    except RuntimeError as e:
        raise ValueError(f'checkpoint {path}: weights do not fit the recorded model config ({e})') from None
    return model.eval()


def check_export(weights, state: Optional[dict] = None) -> None:
    """Refuse exported weights whose ``train_<model>.json`` beside them comes from another export (a kill between
    the export's two writes): the JSON's last record must be the metrics the weights file records, and name its
    digest where it has one (exports before the digest are paired by their metrics alone). No JSON: nothing to
    pair."""
    weights = Path(weights)
    if state is None:
        state = read_checkpoint(weights, tensors=False)[1]
    doc_path = weights.parent / f'train_{state.get("model")}.json'
    if not doc_path.exists():
        return
    try:
        last = json.loads(doc_path.read_text())['records'][-1]
    except (ValueError, KeyError, IndexError, TypeError) as e:
        raise ValueError(f'result {doc_path} is damaged ({type(e).__name__}: {e}); export the run again') from None
    if last != state.get('metrics') or last.get('weights_sha256', state['tensors_sha256']) != state['tensors_sha256']:
        raise ValueError(f'{weights} and {doc_path.name} beside it come from different exports (one was interrupted '
                         f'between its two writes); run the training command of {state.get("model")} again: its '
                         f'finished run exports again')


def evaluate_checkpoint(path, dataset: Optional[str] = None, split: str = 'val', limit: Optional[int] = None,
                        batch_size: int = 256, weights: str = 'auto', data_dir: Optional[str] = None) -> dict:
    """Top-1/top-5 of a checkpoint on a split, with the input pipeline it records (size, crop, normalization).
    ``limit``: a fixed seeded subset of that many images (None: all of them)."""
    if limit is not None:
        _positive('--limit', limit)
    _positive('--batch-size', batch_size)
    model, state = load_model(path, weights)
    rec = state['data']
    dcfg = DataConfig(dataset=dataset or rec['dataset'], img_size=rec['img_size'], crop_pct=rec['crop_pct'],
                      interpolation=rec['interpolation'], mean=tuple(rec['mean']), std=tuple(rec['std']),
                      data_dir=data_dir)
    ds = load_dataset(dcfg, split, image_transform(dcfg, False))
    if list(ds.classes) != list(state['classes']):
        raise ValueError(f'{dcfg.dataset} {split} has classes {list(ds.classes)[:4]}..., the checkpoint was trained on '
                         f'{state["classes"][:4]}...: not the same label set')
    idx = _spread(len(ds), limit) if limit else list(range(len(ds)))
    loader = torch.utils.data.DataLoader(ds, batch_size, sampler=idx)
    t0 = time.perf_counter()
    out = evaluate_models({'': model}, loader, BatchFinish(dcfg, False), Dist(), lambda: torch.autocast('cpu', enabled=False))
    dt = time.perf_counter() - t0
    return dict(model=state['model'], checkpoint=str(path), weights=state['weights'], dataset=dcfg.dataset,
                split=split, images=out['val_images'], top1=out['top1'], top5=out['top5'],
                eval_img_per_s=round(out['val_images'] / dt, 1))


# ----------------------------------------------------------------------------------------- throughput

def bench(models, profile: str = 'cpu', steps: int = 12, warmup: int = 3, workers: Optional[int] = None) -> List[dict]:
    """Training images/s of the whole pipeline (augmentation, mixup, forward, backward, AdamW, EMA) per model,
    and eval images/s, at a profile's settings."""
    out = []
    for name in models:
        cfg = profile_config(name, profile)
        if workers is not None:
            cfg.data = replace(cfg.data, num_workers=workers)
        run = Run(cfg, Dist(), limit_train=(steps + warmup) * cfg.batch_size, limit_val=512)
        run.train_epoch(progress=False, max_steps=warmup)
        run.epoch = 1  # a different shuffle for the timed steps
        m = run.train_epoch(progress=False, max_steps=steps)
        t0 = time.perf_counter()
        ev = evaluate_models({'': run.model}, run.val_loader, run.finish_val, run.d, run.autocast)
        eval_speed = ev['val_images'] / (time.perf_counter() - t0)
        epoch_s = 9469 / m['train_img_per_s'] if profile == 'cpu' else None
        rec = dict(model=name, batch_size=cfg.batch_size, num_workers=cfg.data.num_workers, amp=cfg.amp,
                   train_img_per_s=m['train_img_per_s'], eval_img_per_s=round(eval_speed, 1),
                   params_m=round(sum(p.numel() for p in run.model.parameters()) / 1e6, 3),
                   train_epoch_s=round(epoch_s, 1) if epoch_s else None)
        print(json.dumps(rec), flush=True)
        out.append(rec)
    return out


# ------------------------------------------------------------------------------------------ Table IV

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


# -------------------------------------------------------------------------------------------- summary

def profile_models(profile: str) -> Tuple[str, ...]:
    """The models a profile trains for Table III (``profile`` may name a sub-folder, 'cpu/epochs24'): the
    ``*_test`` models at smoke, the micro models at cpu, Table III's twenty at paper."""
    from .paper import TABLE3
    return {'smoke': SMOKE_MODELS, 'paper': tuple(TABLE3)}.get(profile.split('/')[0], MICRO_MODELS)


def summary(profile: str = 'cpu', models=None) -> List[dict]:
    """Top-1 of the trained models (default: :func:`profile_models`) beside the paper's Table III (ImageNet-1k at
    224). An exported weights file that does not pair with its result JSON is refused (:func:`check_export`)."""
    from .paper import TABLE3
    rows = []
    for name in models or profile_models(profile):
        try:
            doc = results.load_result(profile, f'train_{name}')
        except FileNotFoundError:
            continue
        weights = results.RESULTS_DIR / profile / f'{name}.safetensors'
        if weights.exists():
            check_export(weights)
        f = doc['records'][-1]
        rows.append(dict(model=name, top1=f['top1_fp16'], top5=f['top5_fp16'], weights=f['weights'],
                         top1_last=f['top1'], ema_top1_last=f.get('ema_top1'), epochs=f['epoch'],
                         train_img_per_s=round(doc['provenance'].get('train_img_per_s_median') or 0, 1) or None,
                         wall_time_min=round(doc['provenance']['wall_time_s'] / 60, 1),
                         params_m=round(doc['config']['params'] / 1e6, 2),
                         paper_top1=TABLE3.get(name, (None, None, None))[2]))
    return rows


def core_time_estimate(docs: Dict[str, dict], speeds: List[dict]) -> Dict[str, float]:
    """model -> core-seconds its run takes at the one-thread speeds ``speeds`` (the records of
    ``train_throughput.json``): every epoch's training, and each evaluation the configuration schedules (every
    ``eval_every`` epochs and the last; the trained weights and, where there is one, the EMA). Models without a
    speed record are left out. The sum over the five, halved, is the wall time on two cores shared perfectly."""
    speed = {r['model']: r for r in speeds}
    out = {}
    for m, doc in docs.items():
        if m not in speed or not speed[m].get('train_epoch_s'):
            continue
        cfg, last = doc['config']['train'], doc['records'][-1]
        epochs = cfg['epochs']
        evals = sum(evaluated_after(e, epochs, cfg.get('eval_every') or 1) for e in range(1, epochs + 1))
        per_eval = last['val_images'] / speed[m]['eval_img_per_s'] * (2 if cfg.get('ema_decay', 0) > 0 else 1)
        out[m] = epochs * speed[m]['train_epoch_s'] + evals * per_eval
    return out


def training_results(profile: str, folder: str = '') -> Dict[str, dict]:
    """model -> its ``train_<model>.json`` document under ``results/<profile>[/<folder>]``, in the paper's order
    (the five micro models; their ``*_test`` versions at the smoke profile). Models without one are left out, except
    at the smoke profile, where they are trained first (seconds each, on the committed fixture)."""
    where = f'{profile}/{folder}' if folder else profile
    docs = {}
    for m in SMOKE_MODELS if profile == 'smoke' else MICRO_MODELS:
        try:
            docs[m] = results.load_result(where, f'train_{m}')
        except FileNotFoundError:
            if profile != 'smoke' or folder:
                continue
            train(profile_config(m, 'smoke'), resume='none', progress=False)
            docs[m] = results.load_result(profile, f'train_{m}')
    return docs


def result_folders(profile: str) -> List[str]:
    """Sub-folders of ``results/<profile>/`` that hold training results (runs kept apart with ``--results-subdir``)."""
    root = results.RESULTS_DIR / profile
    return sorted(p.name for p in root.iterdir() if p.is_dir() and any(p.glob('train_*.json'))) if root.is_dir() else []


def config_changes(base: dict, other: dict) -> Dict[str, tuple]:
    """``{key: (base value, other value)}`` for the training-config fields (``data.<field>`` for the data
    pipeline) that differ between two ``train_<model>.json`` documents."""
    def flat(doc):
        cfg = dict(doc['config']['train'])
        return {**{k: v for k, v in cfg.items() if k != 'data'}, **{f'data.{k}': v for k, v in cfg['data'].items()}}
    a, b = flat(base), flat(other)
    return {k: (a.get(k), b.get(k)) for k in sorted(a.keys() | b.keys()) if a.get(k) != b.get(k)}


def format_summary(rows: List[dict], profile: str) -> str:
    lines = [f'| model | params | top-1 ({profile}) | top-5 | weights | epochs | train img/s | minutes | paper top-1 (ImageNet, 224) |',
             '|---|---|---|---|---|---|---|---|---|']
    for r in rows:
        lines.append(f'| {r["model"]} | {r["params_m"]}M | {r["top1"]:.2f}% | {r["top5"]:.2f}% | {r["weights"]} | '
                     f'{r["epochs"]} | {r["train_img_per_s"]} | {r["wall_time_min"]} | '
                     f'{str(r["paper_top1"]) + "%" if r["paper_top1"] else "-"} |')
    return '\n'.join(lines)


# ------------------------------------------------------------------------------------------------ CLI

def torchrun_command(cfg: TrainConfig, data_dir: Optional[str]) -> str:
    launcher = ['torchrun', f'--nproc_per_node={cfg.nproc}', '-m'] if cfg.nproc > 1 else ['python', '-m']
    args = launcher + ['stm_lab.train', 'train', '--model', cfg.model, '--profile', cfg.profile]
    if cfg.data.dataset == 'imagenet':
        args += ['--data-dir', data_dir or '$IMAGENET']
    return ' '.join(a if a == '$IMAGENET' else shlex.quote(a) for a in args)


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


def cmd_train(args) -> int:
    overrides = {k: v for k, v in dict(epochs=args.epochs, batch_size=args.batch_size, seed=args.seed, amp=args.amp,
                                       eval_every=args.eval_every).items() if v is not None}
    data = {k: v for k, v in dict(data_dir=args.data_dir, num_workers=args.workers).items() if v is not None}
    if args.no_download:
        data['download'] = False
    cfg = apply_settings(profile_config(args.model, args.profile, data=data, **overrides), args.set or [])
    if args.dry_run:
        print(json.dumps(cfg.to_dict(), indent=1))
        print(f'per process: batch {cfg.batch_size // cfg.nproc} on each of {cfg.nproc} processes')
        print(torchrun_command(cfg, args.data_dir))
        return 0
    command = _command()
    hook = None
    if cfg.track_consistency:  # the analyses sit downstream of training: imported only when asked for
        from .analysis.run import consistency_tracker
        hook = consistency_tracker(cfg.profile, cfg.track_consistency, cfg.data)
    try:
        final = train(cfg, Path(args.out) if args.out else None, resume=args.resume, progress=not args.no_progress,
                      stop_after=args.stop_after, command=command, results_subdir=args.results_subdir,
                      epoch_hook=hook, threads=args.threads)
    except RunInterrupted as e:  # where the run stopped, in one line instead of a traceback
        if e.main:
            again = ' without --resume ' + shlex.quote(args.resume) if args.resume != 'auto' else ''
            print(f'stm-lab train: {e}' + (f'; run the same command again{again} to continue' if e.saved or not
                                            e.epoch else ''), file=sys.stderr)
        return 130
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()
    if final and args.json:
        print(json.dumps(final))
    return 0


def _command() -> str:
    """The command line as typed (``python -m stm_lab.train ...`` rather than the module's file name)."""
    head = 'python -m stm_lab.train' if Path(sys.argv[0]).name == 'train.py' else Path(sys.argv[0]).name
    return ' '.join([head, *map(shlex.quote, sys.argv[1:])])


def _prov(profile: str, **extra) -> dict:
    return dict(results.provenance(profile, 0, loadavg=[round(x, 2) for x in os.getloadavg()], **extra),
                command=_command())


def cmd_eval(args) -> int:
    r = evaluate_checkpoint(args.checkpoint, args.data, args.split, args.limit, args.batch_size, args.weights,
                            args.data_dir)
    if args.json:
        print(json.dumps(r))
    else:
        print(f'{r["model"]} ({r["weights"]} weights) on {r["dataset"]} {r["split"]}: top-1 {r["top1"]:.2f}%  '
              f'top-5 {r["top5"]:.2f}%  ({r["images"]} images, {r["eval_img_per_s"]} img/s)')
    return 0


def cmd_bench(args) -> int:
    recs = bench(args.models or MICRO_MODELS, args.profile, args.steps, workers=args.workers)
    if args.save:
        results.save_result(args.profile, 'train_throughput', recs,
                            config=dict(steps=args.steps, models=list(args.models or MICRO_MODELS)),
                            prov=_prov(args.profile))
    return 0


def cmd_summary(args) -> int:
    rows = summary(args.profile)
    if not rows:
        example = next(m for m in profile_models(args.profile) if 'dwconv' in m)
        raise FileNotFoundError(f'no trained models under {results.RESULTS_DIR / args.profile}; train them first '
                                f'(python -m stm_lab.train train --model {example} --profile {args.profile})')
    table = format_summary(rows, args.profile)
    print(table)
    if args.save:
        results.save_result(args.profile, 'table3_accuracy', rows, config=dict(models=[r['model'] for r in rows]),
                            prov=_prov(args.profile))
        path = results.RESULTS_DIR / args.profile / 'README.md'
        atomic_write_bytes(path, summary_readme(rows, table, args.profile).encode())
        print(f'wrote {path}')
    return 0


def summary_readme(rows: List[dict], table: str, profile: str) -> str:
    """Markdown beside the committed checkpoints: the table, the input-size adaptations, the commands."""
    lines = [f'# Trained models, `{profile}` profile', '', 'Written by `python -m stm_lab.train summary --profile '
             f'{profile} --save` from the `train_<model>.json` files here. Top-1 is that of the committed half-precision '
             'weights (`<model>.safetensors`, EMA or not, whichever scored higher at the last epoch), on the '
             'full validation split; the paper\'s column is ImageNet-1k at 224x224 after 300 epochs (Table III), '
             'so only the ranking can be compared.', '', table, '', '## Input-size adaptations', '',
             'Windows and reduction ratios follow the feature maps at this input size (`stm_lab.models.adapt_to_img_size`):', '']
    for r in rows:
        doc = results.load_result(profile, f'train_{r["model"]}')
        mc, tc = doc['config']['model'], doc['config']['train']
        stage = [o for o in mc['stage_mixer_options'] if o]
        opts = ', '.join(f'{k}={v}' for k, v in mc['mixer_options'].items()) or 'none'
        lines.append(f'- `{r["model"]}` at {mc["img_size"]}x{mc["img_size"]}: mixer options {opts}'
                     + (f'; per stage {stage}' if stage else '') + f'; batch {tc["batch_size"]}, peak lr {tc["lr"]:g}, '
                     f'EMA {tc["ema_decay"]}, {tc["epochs"]} epochs. {_command_at(doc)}')
    folders = result_folders(profile)
    if folders:
        lines += ['', '## Runs kept apart', '', 'Written with `--results-subdir <folder>`; each differs from the run above '
                  'of the same model in the configuration fields listed. Only their results are committed, not their '
                  'weights (`.gitignore`); the command re-creates them.']
    for folder in folders:
        docs = training_results(profile, folder)
        lines += ['', f'### `{folder}/`', '']
        if not docs:  # other models than the main set: the ablation variants, tabulated by `stm-lab ablations`
            names = sorted(p.stem[len('train_'):] for p in (results.RESULTS_DIR / profile / folder).glob('train_*.json'))
            lines.append(f'{len(names)} runs of other models ({", ".join(f"`{n}`" for n in names)}); their tables '
                         'are on the book\'s Ablations page (`stm-lab ablations list` prints each command).')
            continue
        for m, doc in docs.items():
            try:
                changes = config_changes(results.load_result(profile, f'train_{m}'), doc)
            except FileNotFoundError:
                changes = {}
            lines.append(f'- `{m}`: ' + ('; '.join(f'{k} {a} -> {b}' for k, (a, b) in changes.items()) or 'no change')
                         + f'. {_command_at(doc)}')
        lines += ['', format_summary(summary(f'{profile}/{folder}', models=list(docs)), profile)]
    return '\n'.join(lines) + '\n'


def _command_at(doc: dict) -> str:
    """The command of a result and the commit it ran at: profile defaults change, so the command alone can mislead."""
    prov = doc['provenance']
    dirty = ' with uncommitted changes' if prov.get('git_dirty') else ''
    return f'Command: `{prov["command"]}` (at commit {str(prov.get("git_sha"))[:7]}{dirty})'


class OneLineParser(argparse.ArgumentParser):
    """Usage errors in one line (the usage of ``train`` alone is a dozen lines); ``--help`` shows the rest."""

    def error(self, message):
        self.exit(2, f'{self.prog}: error: {message} (see --help)\n')


def build_parser() -> argparse.ArgumentParser:
    p = OneLineParser(prog='python -m stm_lab.train', description=__doc__,
                      formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest='command', required=True)
    s = sub.add_parser('train', help='train a model at a profile (resumes from the run folder by default)')
    s.add_argument('--model', required=True)
    s.add_argument('--profile', default='cpu', choices=('smoke', 'cpu', 'paper'))
    s.add_argument('--resume', default='auto', help="'auto' (default: the run folder's last checkpoint, if any), "
                                                     "'none' (start over), or a checkpoint path")
    s.add_argument('--out', help='run folder (default runs/<profile>/<model>)')
    s.add_argument('--epochs', type=int)
    s.add_argument('--batch-size', type=int, help='global batch size (the learning rate follows, linear rule)')
    s.add_argument('--seed', type=int)
    s.add_argument('--amp', choices=('none', 'bf16', 'fp16'))
    s.add_argument('--eval-every', type=int)
    s.add_argument('--workers', type=int, help='DataLoader workers (default: the profile\'s)')
    s.add_argument('--data-dir', help='ImageNet folder (paper profile), or a folder of shards')
    s.add_argument('--no-download', action='store_true', help='never fetch data from the internet')
    s.add_argument('--stop-after', type=int, help='stop after this many epochs in this call (resume later)')
    s.add_argument('--set', action='append', metavar='KEY=VALUE',
                   help='override a config field, e.g. --set data.mixup=0 --set data.auto_augment=none (repeatable)')
    s.add_argument('--results-subdir', default='', help='export to results/<profile>/<dir>/ instead (e.g. epochs40 '
                                                         'for a longer budget); on a finished run: export it again')
    s.add_argument('--dry-run', action='store_true', help='print the resolved configuration and torchrun command')
    s.add_argument('--no-progress', action='store_true')
    s.add_argument('--json', action='store_true', help='print the final metrics as one JSON line')
    s.add_argument('--threads', type=int, help='torch CPU threads (default: all cores; 1 is faster on a busy machine)')
    s.set_defaults(func=cmd_train)
    s = sub.add_parser('eval', help='top-1/top-5 of a checkpoint')
    s.add_argument('--checkpoint', required=True)
    s.add_argument('--data', help='dataset (default: the one the checkpoint was trained on)')
    s.add_argument('--split', default='val')
    s.add_argument('--limit', type=int, help='evaluate a fixed seeded subset of this many images')
    s.add_argument('--weights', default='auto', choices=('auto', 'model', 'ema'), help='for run checkpoints')
    s.add_argument('--batch-size', type=int, default=256)
    s.add_argument('--data-dir')
    s.add_argument('--json', action='store_true', help='print one JSON line')
    s.add_argument('--threads', type=int, help='torch CPU threads (default: all cores; 1 is faster on a busy machine)')
    s.set_defaults(func=cmd_eval)
    s = sub.add_parser('bench', help='training images/s per model at a profile')
    s.add_argument('--profile', default='cpu', choices=('smoke', 'cpu', 'paper'))
    s.add_argument('--models', nargs='*')
    s.add_argument('--steps', type=int, default=12)
    s.add_argument('--workers', type=int)
    s.add_argument('--save', action='store_true', help='write results/<profile>/train_throughput.json')
    s.add_argument('--threads', type=int, help='torch CPU threads (default: all cores; 1 is faster on a busy machine)')
    s.set_defaults(func=cmd_bench)
    s = sub.add_parser('summary', help="top-1 of the trained models beside the paper's Table III")
    s.add_argument('--profile', default='cpu', choices=('smoke', 'cpu', 'paper'))
    s.add_argument('--save', action='store_true', help='write results/<profile>/table3_accuracy.json')
    s.set_defaults(func=cmd_summary)
    return p


SUBCOMMANDS = ('train', 'eval', 'bench', 'summary')


def main(argv=None) -> int:
    """``python -m stm_lab.train [train|eval|bench|summary] ...``; without a subcommand, ``train``."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] not in SUBCOMMANDS and argv[0] not in ('-h', '--help'):
        argv = ['train', *argv]
    args = build_parser().parse_args(argv)
    def run():
        if getattr(args, 'threads', None) is not None:
            torch.set_num_threads(_positive('--threads', args.threads))
        return args.func(args)
    return guarded(f'stm-lab {args.command}', run)


def guarded(prog: str, fn: Callable[[], int], interrupted: str = 'interrupted') -> int:
    """Run a command: bad input is one line on stderr and exit 2, Ctrl-C one line and exit 130 (no traceback)."""
    try:
        return fn()
    except (KeyError, ValueError, FileNotFoundError, FloatingPointError) as e:
        print(f'{prog}: error: {e.args[0] if e.args else e}', file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f'{prog}: {interrupted}', file=sys.stderr)
        return 130


def train_main(argv=None) -> int:
    return main(['train', *(argv or [])])


def eval_main(argv=None) -> int:
    return main(['eval', *(argv or [])])


if __name__ == '__main__':
    sys.exit(main())
