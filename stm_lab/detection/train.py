"""Train and evaluate Mask R-CNN on the unified backbones (``stm-lab detect``), with the paper's 1x schedule.

    stm-lab detect data --profile cpu                                   # generate the shapes set (once, cached)
    stm-lab detect bench --profile cpu                                  # training / inference images/s per model
    stm-lab detect train --model u_halonet_micro --profile cpu --threads 1
    stm-lab detect evaluate --profile cpu --threads 1                   # AP, its noise, scale sweep -> detection.json
    stm-lab detect run --profile smoke                                  # all of it, end to end, tiny (CI)
    stm-lab detect train --model u_swin_tiny --profile paper --dry-run  # resolved config + torchrun command

Profiles:

- ``paper``: COCO train2017 / val2017 (``--data-dir`` holding ``train2017/``, ``val2017/`` and ``annotations/``),
  shorter side 800 (longer at most 1333), single scale, flip 0.5; AdamW lr 1e-4, betas 0.9/0.999, weight decay 0.05
  (none on norms, biases and position tables); 1000 linear warm-up iterations from 0.001 x lr; 12 epochs with the
  lr divided by 10 after epochs 8 and 11 (mmdetection's ``schedule_1x``, which the paper's code uses; its text says
  "at the eighth and tenth epochs"); batch 16 = 2 images x 8 GPUs; the detection drop-path rates; torchvision's
  Mask R-CNN with mmdetection's ``mask_rcnn_r50_fpn`` sizes. The backbone starts from
  ``results/paper/<model>.safetensors`` (a classification run of the paper profile). Not run here.
- ``cpu``: the generated shapes set (:mod:`.shapes`) at 160 px, the five micro backbones from their ``cpu``
  classification checkpoints, slim heads and a schedule sized by measured images/s (``stm_lab.profiles``).
- ``smoke``: the ``*_test`` backbones on a handful of 64 px images drawn on the committed fixture photos; seconds.

A run lives in ``runs/<profile>/detection/<model>/`` (``last.safetensors`` each epoch, safetensors with the state in
its metadata, locked while training, resumable); the finished model goes to
``results/<profile>/detection/<model>.safetensors`` (half precision) and ``det_train_<model>.json`` (history, AP,
the backbone load report, provenance). ``evaluate`` writes ``results/<profile>/detection.json``.
"""
from __future__ import annotations

import math
import os
import sys
import time
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import List, Optional, Tuple

import numpy as np
import torch
import torch.distributed as dist
import torch.nn as nn
from timm.optim import param_groups_weight_decay

from .. import assets, layout, profiles, results
from ..training.checkpoint import (RunLock, _load_optimizer, _optimizer_tensors, _prefixed, _tensor_digest,
                                   read_checkpoint, write_checkpoint)
from ..training.config import AMP_MODES, autocast
from ..training.distributed import init_distributed, seed_everything
from ..training.engine import RUNS_DIR, resume_source
from . import coco_eval, shapes
from .data import DetectionSet, collate
from .model import DetectorConfig, LoadReport, build_detector, family_and_scale, load_backbone

COCO_NUM_CLASSES = 91  # torchvision's convention: COCO's category ids (1-90) as labels, 0 the background


@dataclass
class DetTrainConfig:
    """Everything that decides a detection run's numbers; saved in every checkpoint and result."""
    model: str = 'u_dwconv_test'
    profile: str = 'smoke'
    dataset: str = 'shapes'  # shapes | coco
    data_dir: Optional[str] = None  # coco: the folder holding train2017/, val2017/, annotations/
    shapes: Optional[shapes.ShapesConfig] = None
    detector: DetectorConfig = field(default_factory=DetectorConfig)
    epochs: int = 12
    batch_size: int = 16  # global, over all processes
    lr: float = 1e-4
    weight_decay: float = 0.05
    betas: Tuple[float, float] = (0.9, 0.999)
    warmup_iters: int = 1000
    warmup_ratio: float = 0.001
    lr_steps: Tuple[int, ...] = (8, 11)  # the learning rate is divided by 10 after each of these epochs
    hflip: float = 0.5
    pretrained: str = 'auto'  # 'auto': results/<profile>/<model>.safetensors; 'none'; or a checkpoint path
    seed: int = 0
    nproc: int = 1  # processes the dry run's torchrun command starts
    num_workers: int = 0
    eval_every: int = 0  # epochs between quick evaluations on eval_images (0: only the final one)
    eval_images: int = 100
    amp: str = 'none'  # autocast of the training steps: none (float32), bf16, fp16 (GPU); evaluation is float32

    def __post_init__(self):
        if isinstance(self.shapes, dict):
            self.shapes = shapes.ShapesConfig(**self.shapes)
        if isinstance(self.detector, dict):
            self.detector = DetectorConfig(**self.detector)
        self.betas, self.lr_steps = tuple(self.betas), tuple(self.lr_steps)
        family_and_scale(self.model)  # a bad name fails here, with the valid ones

        def need(ok, what):
            if not ok:
                raise ValueError(f'detection config: {what}')
        need(self.dataset in ('shapes', 'coco'), f"dataset must be 'shapes' or 'coco', got {self.dataset!r}")
        need(self.dataset != 'shapes' or self.shapes is not None, 'the shapes dataset needs a shapes config')
        for name in ('epochs', 'batch_size', 'nproc', 'eval_images'):
            v = getattr(self, name)
            need(isinstance(v, int) and v >= 1, f'{name} must be an integer of at least 1, got {v!r}')
        for name in ('warmup_iters', 'seed', 'num_workers', 'eval_every'):
            v = getattr(self, name)
            need(isinstance(v, int) and v >= 0, f'{name} must be an integer of at least 0, got {v!r}')
        need(self.lr > 0 and math.isfinite(self.lr), f'lr must be a positive number, got {self.lr!r}')
        need(self.weight_decay >= 0, f'weight_decay must be at least 0, got {self.weight_decay!r}')
        need(0 < self.warmup_ratio <= 1, f'warmup_ratio must be in (0, 1], got {self.warmup_ratio!r}')
        need(all(0 <= b < 1 for b in self.betas) and len(self.betas) == 2,
             f'betas must be two numbers in [0, 1), got {self.betas!r}')
        need(all(1 <= s <= self.epochs for s in self.lr_steps), f'lr_steps must be epochs in 1..{self.epochs}, '
                                                                   f'got {self.lr_steps}')
        need(0 <= self.hflip <= 1, f'hflip must be a probability, got {self.hflip!r}')
        need(self.amp in AMP_MODES, f"amp must be one of {', '.join(AMP_MODES)}, got {self.amp!r}")
        need(self.batch_size % self.nproc == 0, f'batch_size {self.batch_size} must split over {self.nproc} processes')

    def to_dict(self) -> dict:
        d = asdict(self)
        d['shapes'] = self.shapes.to_dict() if self.shapes else None
        return d

    @classmethod
    def from_dict(cls, d: dict) -> 'DetTrainConfig':
        names = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in names})


def profile_config(model: str, profile: str, **overrides) -> DetTrainConfig:
    """The resolved configuration of a detection run at a profile (its ``detection`` settings in
    :mod:`stm_lab.profiles`); ``overrides`` (DetTrainConfig fields) win."""
    family_and_scale(model)  # a clear error for a name that is not a unified model
    prof = profiles.get(profile, among=profiles.DETECTION_PROFILES)
    d = dict(prof.detection)
    detector, shape = dict(d.pop('detector')), d.pop('shapes', None)
    if shape is None:  # COCO, from --data-dir
        cfg = DetTrainConfig(model=model, profile=prof.name, dataset='coco',
                             detector=DetectorConfig(**detector, num_classes=COCO_NUM_CLASSES), **d)
    else:  # the generated shapes set
        epochs = overrides.get('epochs', d.pop('epochs'))
        cfg = DetTrainConfig(model=model, profile=prof.name, dataset='shapes', shapes=shapes.ShapesConfig(**shape),
                             detector=DetectorConfig(**detector, num_classes=len(shapes.SHAPES) + 1),
                             epochs=epochs, lr_steps=scaled_steps(epochs), **d)
    return replace(cfg, **overrides)


def scaled_steps(epochs: int) -> Tuple[int, ...]:
    """The 1x schedule's lr steps (after epochs 8 and 11 of 12) at another length."""
    return tuple(sorted({max(1, min(epochs, round(epochs * e / 12))) for e in (8, 11)}))


def profile_models(profile: str) -> Tuple[str, ...]:
    """The backbones a profile's detectors are trained on (the roster at its scale; micro at paper, Table V)."""
    prof = profiles.get(profile)
    return prof.models if len(prof.scales) == 1 else profiles.PROFILES['cpu'].models


# ---------------------------------------------------------------------------------------------- data

def split_files(cfg: DetTrainConfig, split: str, generate: bool = True) -> Tuple[Path, Path]:
    """(image folder, COCO annotation file) of a split: the generated set (made on first use) or COCO 2017."""
    if cfg.dataset == 'shapes':
        return shapes.split_paths(shapes.ensure(cfg.shapes, generate=generate), split)
    base = cfg.data_dir or os.environ.get('STM_LAB_COCO')
    how = ('pass --data-dir (or set $STM_LAB_COCO) to the folder holding train2017/, val2017/ and '
           'annotations/instances_{train,val}2017.json (https://cocodataset.org)')
    if not base:
        raise FileNotFoundError(f'COCO: no folder given; {how}')
    name = {'train': 'train2017', 'val': 'val2017'}[split]
    images, ann = Path(base) / name, Path(base) / 'annotations' / f'instances_{name}.json'
    for p in (images, ann):
        if not p.exists():
            raise FileNotFoundError(f'COCO {split}: {p} not found; {how}')
    return images, ann


def dataset(cfg: DetTrainConfig, split: str, train: bool, limit: Optional[int] = None) -> DetectionSet:
    images, ann = split_files(cfg, split)
    return DetectionSet(images, ann, train=train, hflip=cfg.hflip, strict=cfg.dataset == 'shapes', limit=limit)


# ---------------------------------------------------------------------------------------------- model

def pretrained_path(cfg: DetTrainConfig) -> Optional[Path]:
    if cfg.pretrained == 'none':
        return None
    if cfg.pretrained != 'auto':
        return Path(cfg.pretrained)
    return assets.trained_checkpoint(cfg.model, cfg.profile)


def build(cfg: DetTrainConfig, log=None) -> Tuple[nn.Module, Optional[LoadReport]]:
    """The detector, seeded, with its backbone from the classification checkpoint the config names. At the smoke
    profile a missing automatic checkpoint leaves the backbone at its seeded initialization (reported)."""
    torch.manual_seed(cfg.seed)
    det = build_detector(cfg.model, cfg.detector)
    path = pretrained_path(cfg)
    if path is None:
        return det, None
    if not path.exists():
        if cfg.pretrained == 'auto' and profiles.get(cfg.profile).quick:
            if log:
                log(f'[detect] {cfg.model}: no classification checkpoint at {path}; the backbone starts untrained')
            return det, None
        train_cmd = f'stm-lab train --model {cfg.model} --profile {cfg.profile}'
        raise FileNotFoundError(f'classification checkpoint of {cfg.model} not found at {path}; train it first '
                                f'(`{train_cmd}`), or pass --pretrained none to start from scratch')
    report = load_backbone(det, path)
    if log:
        log(f'[detect] {report.summary()}')
    return det, report


def optimizer(det: nn.Module, cfg: DetTrainConfig) -> torch.optim.Optimizer:
    """AdamW; no weight decay on norms, biases and position tables (the paper's decay_mult 0)."""
    skip = {f'backbone.body.{n}' for n in det.backbone.body.no_weight_decay()}
    groups = param_groups_weight_decay(det, cfg.weight_decay, no_weight_decay_list=skip)
    return torch.optim.AdamW(groups, lr=cfg.lr, betas=cfg.betas)


def lr_at(cfg: DetTrainConfig, step: int, steps_per_epoch: int) -> float:
    """mmdetection's 1x schedule at a global step (0-based): linear warm-up from ``warmup_ratio * lr`` over
    ``warmup_iters`` steps, times 0.1 for every ``lr_steps`` epoch already completed."""
    epoch_done = step // steps_per_epoch
    lr = cfg.lr * 0.1 ** sum(epoch_done >= s for s in cfg.lr_steps)
    if step < cfg.warmup_iters:
        lr *= 1 - (1 - cfg.warmup_ratio) * (1 - step / cfg.warmup_iters)
    return lr


# a run may continue under another length of schedule when the learning rates of its finished steps were the same
SCHEDULE_FIELDS = ('epochs', 'lr_steps')


def schedule_prefix_equal(was: DetTrainConfig, now: DetTrainConfig, epochs_done: int, steps_per_epoch: int) -> bool:
    """Whether ``now`` gives every step of the first ``epochs_done`` epochs the learning rate ``was`` gave it (the
    data order and augmentation are seeded per epoch, so the continued run equals a fresh run of ``now``)."""
    if epochs_done > now.epochs:
        return False
    return all(lr_at(was, s, steps_per_epoch) == lr_at(now, s, steps_per_epoch)
               for s in range(epochs_done * steps_per_epoch))


# ---------------------------------------------------------------------------------------------- training

def run_dir(cfg: DetTrainConfig) -> Path:
    return RUNS_DIR / cfg.profile / 'detection' / cfg.model


def _log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


@torch.no_grad()
def evaluate_detector(det: nn.Module, ds: DetectionSet, batch_size: int = 8, masks: bool = True
                      ) -> Tuple[dict, List[dict]]:
    """Box (and mask) AP of the detector on a dataset's images against its COCO annotations, and the detections."""
    det.eval()
    device = next(det.parameters()).device
    dets, t0 = [], time.perf_counter()
    loader = torch.utils.data.DataLoader(ds, batch_size, collate_fn=collate)
    for images, targets in loader:
        outs = det([im.to(device) for im in images])
        dets += coco_eval.to_coco_results(outs, [t['image_id'] for t in targets], masks=masks)
    seconds = time.perf_counter() - t0
    gt = coco_eval.coco_from_dict(ds.coco.dataset)
    out = {f'box_{k}': v for k, v in coco_eval.evaluate(gt, dets, 'bbox', ds.ids).items()}
    if masks:
        out.update({f'mask_{k}': v for k, v in coco_eval.evaluate(gt, dets, 'segm', ds.ids).items()})
    out.update(val_images=len(ds), eval_img_per_s=round(len(ds) / seconds, 2))
    return out, dets


def train_step(model: nn.Module, opt: torch.optim.Optimizer, cfg: DetTrainConfig, imgs, targets, step: int,
               steps_per_epoch: int, device, scaler=None) -> dict:
    """One optimizer step on a batch at global step ``step`` (its learning rate from the schedule); returns the
    loss parts. The training loop and the speed bench (:func:`stm_lab.detection.run.bench`) both run this."""
    for g in opt.param_groups:
        g['lr'] = lr_at(cfg, step, steps_per_epoch)
    imgs = [im.to(device) for im in imgs]
    targets = [{k: (v.to(device) if torch.is_tensor(v) else v) for k, v in t.items()} for t in targets]
    with autocast(cfg.amp, torch.device(device).type):
        parts = model(imgs, targets)
    parts = {k: v.float() for k, v in parts.items()}  # no-ops in float32
    loss = sum(parts.values())
    if not torch.isfinite(loss):
        raise FloatingPointError(f'loss is {loss.item()} at step {step}; the last checkpoint is kept')
    opt.zero_grad(set_to_none=True)
    if scaler is None:
        loss.backward()
        opt.step()
    else:  # fp16 on a GPU
        scaler.scale(loss).backward()
        scaler.step(opt)
        scaler.update()
    return {k: v.item() for k, v in parts.items()}


def train(cfg: DetTrainConfig, resume: str = 'auto', stop_after: Optional[int] = None, command: Optional[str] = None,
          out_dir: Optional[Path] = None, log=_log, export: bool = True) -> dict:
    """Train (or continue) a detection run; returns the last epoch's record (with the final AP when done)."""
    d = init_distributed()
    if cfg.amp == 'fp16' and d.device.type != 'cuda':
        raise ValueError("--amp fp16 needs a GPU (it uses a gradient scaler); on the CPU use --amp bf16")
    out = Path(out_dir) if out_dir else run_dir(cfg)
    ckpt = out / 'last.safetensors'
    source = resume_source(ckpt, resume)
    with RunLock(out, d, command):
        loaded = read_checkpoint(source) if source is not None and source.exists() else None
        was = None
        if loaded is not None:
            was = DetTrainConfig.from_dict(loaded[1]['config'])
            diff = [k for k in cfg.to_dict() if cfg.to_dict()[k] != was.to_dict()[k]]
            if set(diff) - set(SCHEDULE_FIELDS):
                raise ValueError(f'checkpoint {source} was trained with another configuration ({", ".join(diff)} '
                                 f'differ); resume with it, or start over with --resume none. It was left in place.')
        train_set = dataset(cfg, 'train', train=True)
        det, report = build(cfg, log if d.main else None)
        det.to(d.device)
        opt = optimizer(det, cfg)
        # find_unused_parameters: a batch without a positive RoI leaves the mask head out of the graph
        model = det if d.world == 1 else nn.parallel.DistributedDataParallel(
            det, device_ids=[d.local_rank] if d.device.type == 'cuda' else None, find_unused_parameters=True)
        per_process = cfg.batch_size // d.world
        sampler = torch.utils.data.DistributedSampler(train_set, d.world, d.rank, shuffle=True, seed=cfg.seed,
                                                      drop_last=True)
        loader = torch.utils.data.DataLoader(train_set, per_process, sampler=sampler, collate_fn=collate,
                                             num_workers=cfg.num_workers, drop_last=True)
        steps_per_epoch = len(loader)
        if steps_per_epoch == 0:
            raise ValueError(f'{len(train_set)} training images make no batch of {per_process}')
        epoch, history, wall, commands, changes = 0, [], 0.0, [], []
        if loaded is not None:
            tensors, state = loaded
            changes = list(state.get('schedule_changes', []))
            if was.to_dict() != cfg.to_dict():
                same_past = schedule_prefix_equal(was, cfg, state['epoch'], steps_per_epoch)
                if not same_past:
                    raise ValueError(
                        f'checkpoint {source} was trained for {was.epochs} epochs with lr steps {list(was.lr_steps)}; '
                        f'{cfg.epochs} epochs with steps {list(cfg.lr_steps)} would have used other learning rates '
                        f'in its {state["epoch"]} epochs. Resume with its schedule, or start over with --resume none. '
                        f'It was left in place.')
                changes.append(dict(after_epoch=state['epoch'], epochs=was.epochs, lr_steps=list(was.lr_steps)))
                log(f'[detect] {cfg.model}: schedule now {cfg.epochs} epochs, lr steps {list(cfg.lr_steps)} (was '
                    f'{was.epochs}, {list(was.lr_steps)}); its {state["epoch"]} epochs used the same learning rates, '
                    f'so the run is the one a fresh start with this schedule makes')
            det.load_state_dict(_prefixed('model/', tensors))
            _load_optimizer(opt, tensors, state['optimizer_param_groups'])
            epoch, history, wall = state['epoch'], state['history'], state['wall_time_s']
            commands = list(state.get('commands', []))
            report = LoadReport(**state['load_report']) if state.get('load_report') else None
            log(f'[detect] resumed {cfg.model} from {source} after epoch {epoch}/{cfg.epochs}')
        if command and epoch < cfg.epochs:
            commands.append(command)
        n_params = sum(p.numel() for p in det.parameters())
        log(f'[detect] {cfg.model} ({n_params / 1e6:.2f}M params) profile {cfg.profile}: {cfg.epochs} epochs x '
            f'{steps_per_epoch} steps of {cfg.batch_size} images, lr {cfg.lr:g}, {torch.get_num_threads()} thread(s); '
            f'run folder {out}' + (f', autocast {cfg.amp}' if cfg.amp != 'none' else ''))
        note = results.bf16_warning(d.device.type) if cfg.amp == 'bf16' else None
        if note:
            log(f'[detect] {note}')
        scaler = torch.amp.GradScaler('cuda') if cfg.amp == 'fp16' else None
        done_here = 0
        while epoch < cfg.epochs and (stop_after is None or done_here < stop_after):
            seed_everything(cfg.seed, epoch, d.rank)
            sampler.set_epoch(epoch)
            model.train()
            t0, c0, losses, images = time.perf_counter(), time.process_time(), [], 0
            for i, (imgs, targets) in enumerate(loader):
                losses.append(train_step(model, opt, cfg, imgs, targets, epoch * steps_per_epoch + i,
                                         steps_per_epoch, d.device, scaler))
                images += len(imgs)
            epoch += 1
            seconds = time.perf_counter() - t0
            wall += seconds
            rec = dict(epoch=epoch, lr=lr_at(cfg, epoch * steps_per_epoch - 1, steps_per_epoch),
                       **{k: round(float(np.mean([x[k] for x in losses])), 5) for k in losses[0]},
                       loss=round(float(np.mean([sum(x.values()) for x in losses])), 5),
                       train_img_per_s=round(images * d.world / seconds, 2), wall_time_s=round(seconds, 1),
                       cpu_time_s=round(time.process_time() - c0, 1))
            if d.main and cfg.eval_every and epoch % cfg.eval_every == 0 and epoch < cfg.epochs:
                quick, _ = evaluate_detector(det, dataset(cfg, 'val', train=False, limit=cfg.eval_images),
                                             masks=False)
                rec.update(quick_box_AP=quick['box_AP'], quick_box_AP50=quick['box_AP50'],
                           quick_images=quick['val_images'])
            history.append(rec)
            done_here += 1
            if d.main:
                state = dict(kind='det_train_state', config=cfg.to_dict(), epoch=epoch, history=history,
                             steps_per_epoch=steps_per_epoch, wall_time_s=round(wall, 1), commands=commands,
                             schedule_changes=changes,
                             optimizer_param_groups=_optimizer_tensors(opt)[1],
                             load_report=report.to_dict() if report else None)
                tensors = {f'model/{k}': v for k, v in det.state_dict().items()}
                tensors.update(_optimizer_tensors(opt)[0])
                write_checkpoint(ckpt, tensors, state)
                eta = wall / epoch * (cfg.epochs - epoch)
                log(f'[detect] {cfg.model} epoch {epoch}/{cfg.epochs}: loss {rec["loss"]}, '
                    f'{rec["train_img_per_s"]} img/s' + (f', box AP50 {rec["quick_box_AP50"]}' if 'quick_box_AP50'
                                                         in rec else '') + f'; ETA {eta / 60:.1f} min')
            if d.world > 1:
                dist.barrier()
        final = history[-1] if history else {}
        if epoch == cfg.epochs and export and d.main:
            final = export_run(cfg, det, history, wall, report, commands, command, out, changes)
        if d.world > 1:
            dist.barrier()
    return final


def export_run(cfg, det, history, wall, report, commands, command, out, schedule_changes=()) -> dict:
    """Final evaluation on the whole validation split; half-precision weights and ``det_train_<model>.json``."""
    val = dataset(cfg, 'val', train=False)
    metrics, _ = evaluate_detector(det, val)
    final = dict(history[-1], **metrics)
    half = {k: (v.half() if v.is_floating_point() else v).detach().cpu().contiguous()
            for k, v in det.state_dict().items()}
    dest = layout.det_weights(cfg.profile, cfg.model)
    final['weights_sha256'] = _tensor_digest(half)
    write_checkpoint(dest, half, dict(kind='det_weights', model=cfg.model, config=cfg.to_dict(), metrics=final))
    prov = results.provenance(cfg.profile, cfg.seed, wall_time_s=round(wall, 1),
                              cpu_time_s=round(sum(h['cpu_time_s'] for h in history), 1),
                              train_img_per_s_median=float(np.median([h['train_img_per_s'] for h in history])),
                              loadavg=[round(x, 2) for x in os.getloadavg()], run_folder=results.project_path(out))
    if commands or command:
        prov['command'] = commands[0] if commands else command
    if schedule_changes:  # shortened or lengthened on resume, where the learning rates so far were the same
        prov['schedule_changes'] = list(schedule_changes)
    layout.det_train(cfg.profile, cfg.model).save(history[:-1] + [final],
                        config=dict(train=cfg.to_dict(), params=sum(p.numel() for p in det.parameters()),
                                    backbone_params=sum(p.numel() for p in det.backbone.body.parameters()),
                                    load_report=report.to_dict() if report else None,
                                    backbone_init=report.source if report else 'seeded initialization'),
                        prov=prov)
    _log(f'[detect] {cfg.model}: box AP {final["box_AP"]}, AP50 {final["box_AP50"]}, mask AP {final["mask_AP"]} '
         f'on {final["val_images"]} val images -> {dest}')
    return final


def load_detector(path) -> Tuple[nn.Module, DetTrainConfig, dict]:
    """A trained detector from its exported weights (safetensors, checked), in float32 eval mode."""
    tensors, state = read_checkpoint(path)
    if state.get('kind') != 'det_weights':
        raise ValueError(f'{path} is not an exported detector (kind {state.get("kind")!r})')
    cfg = DetTrainConfig.from_dict(state['config'])
    det = build_detector(cfg.model, cfg.detector)
    try:
        det.load_state_dict({k: v.float() if v.is_floating_point() else v for k, v in tensors.items()})
    except RuntimeError as e:
        raise ValueError(f'{path}: weights do not fit the recorded detector config ({e})') from None
    return det.eval(), cfg, state
