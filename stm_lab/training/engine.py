"""The training run, assembled from timm's parts, and its evaluation and export.

Recipe pieces (timm): ``create_transform`` (RandomResizedCrop, flip, RandAugment m9, eval resize + center crop
0.875), ``RandomErasing`` 0.25, ``Mixup`` (0.8 / 1.0, label smoothing 0.1) + ``SoftTargetCrossEntropy``,
``param_groups_weight_decay`` (AdamW, wd 0.05; no decay for norms, biases and position tables),
``CosineLRScheduler`` (linear warm-up, cosine, per step), ``ModelEmaV3``; gradient clipping 5.0.

A run lives in ``runs/<profile>/<model>/``: ``last.safetensors`` (weights, EMA, optimizer state; the JSON state is
embedded in its metadata, so one atomic rename updates everything), ``last.json`` (the same state, readable) and
``metrics.jsonl``; ``.train.lock`` while a process trains it (a second one is refused). At the end, the weights
that the configuration's ``export_weights`` names (the EMA where the recipe keeps one, fixed before training) go to
``results/<profile>/<model>.safetensors`` in half precision, with ``results/<profile>/train_<model>.json``.
"""
from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Callable, Dict, List, Optional, Tuple

import numpy as np
import torch
import torch.distributed as dist
import torch.nn as nn
from timm.loss import LabelSmoothingCrossEntropy, SoftTargetCrossEntropy
from timm.optim import param_groups_weight_decay
from timm.scheduler import CosineLRScheduler
from timm.utils import ModelEmaV3

from .. import layout, results
from ..backbone import UnifiedNet
from ..data import BatchFinish, DataConfig, build_mixup, image_transform, load_dataset
from ..mixers import mixer_module
from ..models import create_model
from ..results import atomic_write_bytes, remove_stale_temporaries
from .checkpoint import (RunLock, _load_optimizer, _optimizer_tensors, _prefixed, _tensor_digest, load_model,
                         model_from_tensors, read_checkpoint, weights_state, write_checkpoint)
from .config import TrainConfig, autocast, _positive, config_differences, evaluated_after
from .distributed import Dist, _all_mean, _log, init_distributed, prepare_model, seed_everything


RUNS_DIR = results.RUNS_DIR  # $STM_LAB_RUNS, else runs/ of the checkout or of the working folder (results.writable_dir)
RUN_FILES = ('last.safetensors', 'last.json', 'metrics.jsonl')  # what the trainer writes in a run folder


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
        return autocast(self.cfg.amp, self.d.device.type)

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


def check_resume(state: dict, cfg: TrainConfig, d: Dist, path: Path, threads: Optional[int] = None) -> None:
    """Refuse a checkpoint whose continuation here would not give the numbers of an uninterrupted run: another
    configuration, or other execution settings (processes, loader workers, CPU threads on a CPU run: each changes
    the result; so does another device type). Settings a checkpoint does not record (written before they were) count as this run's. Without
    an explicit ``threads``, a CPU run continues with the checkpoint's thread count."""
    diff = config_differences(TrainConfig.from_dict(state['config']), cfg)
    if diff:
        raise ValueError(f'checkpoint {path} belongs to a different run ({"; ".join(diff)}); it was left in '
                         f'place. Use another --out folder, or --resume none to start over.')
    ex = state.get('execution') or {}
    problems = []
    if ex.get('device', d.device.type) != d.device.type:  # other kernels, other numbers
        problems.append(f'trained on {ex["device"]} there, {d.device.type} here')
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


def _jsonable(d: dict) -> dict:
    return json.loads(json.dumps(d, default=lambda o: o.tolist() if hasattr(o, 'tolist') else str(o)))


def _spread(n: int, limit: int) -> List[int]:
    """A fixed subset of ``limit`` indices out of ``n`` (seeded; the shards are sorted by class)."""
    return sorted(np.random.default_rng(0).permutation(n)[:min(limit, n)].tolist())


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
            note = results.bf16_warning(d.device.type) if cfg.amp == 'bf16' else None
            if note:
                _log(d, f'[train] {note}')
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


def _write_metrics(path: Path, history: List[dict]) -> None:
    atomic_write_bytes(path, ''.join(json.dumps(h) + '\n' for h in history).encode())


def export_result(run: Run, out: Path, command: Optional[str] = None, results_subdir: str = '') -> dict:
    """Half-precision weights + result JSON under results/<profile>[/<results_subdir>]/; the fp16 weights are
    re-evaluated, so the committed file's accuracy is the one reported. Which weights (the EMA or the trained ones)
    is fixed by the configuration (``export_weights``), never by their scores on the split that is then reported;
    the last record keeps both scores, and ``weights_rule`` says how the weights were chosen."""
    cfg, final = run.cfg, dict(run.history[-1])
    use_ema = cfg.exported == 'ema'
    if use_ema and run.ema is None:  # TrainConfig refuses 'ema' without an EMA; kept as a guard
        raise ValueError(f'{cfg.model}: export_weights is ema but the run keeps no EMA')
    model = run.ema.module if use_ema else run.model
    half = {k: (v.half() if v.is_floating_point() else v).detach().cpu().contiguous()
            for k, v in model.state_dict().items()}
    where = layout.folder(cfg.profile, results_subdir or '')
    dest = layout.weights(where, cfg.model)
    state = weights_state(cfg, model.config.to_dict(), run.classes, 'ema' if use_ema else 'model', final)
    check = model_from_tensors(state['model_config'], half, dest).to(run.d.device)  # as load_model rebuilds it
    loader = torch.utils.data.DataLoader(run.val_set, 256, sampler=run.val_indices)  # all of it, on this process
    fp16 = evaluate_models({'': check}, loader, run.finish_val, Dist(device=run.d.device), run.autocast)
    state['weights_rule'] = f'fixed: {cfg.exported}'  # results written before the rule have none (by score)
    final.update(weights=state['weights'], weights_rule=state['weights_rule'], top1_fp16=fp16['top1'],
                 top5_fp16=fp16['top5'],
                 checkpoint=results.project_path(dest),
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
                              loadavg=[round(x, 2) for x in os.getloadavg()],
                              run_folder=results.project_path(out))
    # the command that started the run (provenance of the numbers); resumes and a re-export only beside it
    if run.commands or command:
        prov['command'] = run.commands[0] if run.commands else command
    if len(run.commands) > 1:
        prov['resumed_with'] = run.commands[1:]
    if command and command not in run.commands:
        prov['exported_with'] = command
    layout.train(where, cfg.model).save(records,
                        config=dict(train=cfg.to_dict(), model=model.config.to_dict(),
                                    params=sum(p.numel() for p in model.parameters())), prov=prov)
    _log(run.d, f'[train] {cfg.model}: top-1 {final["top1"]:.2f}% (EMA {final.get("ema_top1", float("nan")):.2f}%), '
                f'fp16 {final["top1_fp16"]:.2f}% -> {dest}')
    return final


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
