"""Training images/s of the trainer's whole pipeline per model at a profile's settings, and eval images/s.

    stm-lab bench cpu-profile [--profile cpu] [--models ...] [--steps 12] [--rounds 1] [--save]

Unlike ``train-speed`` (random tensors), this runs the trainer itself: data loading, augmentation, mixup,
forward, backward, AdamW, EMA. After ``--warmup`` steps per model, the models' training runs are interleaved
(:func:`~stm_lab.bench.timing.interleaved`): each round trains every model ``--steps`` steps (a new shuffle each
time), and the median over rounds is reported; evaluation (up to 512 validation images) likewise. ``--save`` writes
``results/<profile>/train_throughput.json`` (the book's training page estimates epoch times from it).
"""
from __future__ import annotations

import json
from dataclasses import replace
from typing import List, Optional

import torch

from ..profiles import PROFILES
from ..training.config import MICRO_MODELS, profile_config  # the trainer: what this benchmark drives
from ..training.distributed import Dist
from ..training.engine import Run, evaluate_models

NAME = 'train_throughput'


def cpu_profile(models, profile: str = 'cpu', steps: int = 12, warmup: int = 3, workers: Optional[int] = None,
                rounds: int = 1) -> List[dict]:
    """Training images/s of the whole pipeline (augmentation, mixup, forward, backward, AdamW, EMA) per model,
    and eval images/s, at a profile's settings; one record per model (also printed as a JSON line)."""
    from .timing import interleaved
    runs = {}
    for name in models:
        cfg = profile_config(name, profile)
        if workers is not None:
            cfg.data = replace(cfg.data, num_workers=workers)
        runs[name] = Run(cfg, Dist(), limit_train=(steps + warmup) * cfg.batch_size, limit_val=512)
    for run in runs.values():
        run.train_epoch(progress=False, max_steps=warmup)

    def train(run):
        def steps_of_training():
            run.epoch += 1  # a different shuffle each time
            run.train_epoch(progress=False, max_steps=steps)
        return steps_of_training

    val_images = {}

    def evaluate(name, run):
        def evaluation():
            ev = evaluate_models({'': run.model}, run.val_loader, run.finish_val, run.d, run.autocast)
            val_images[name] = ev['val_images']
        return evaluation

    t_train = interleaved({n: train(r) for n, r in runs.items()}, rounds, warmup=0)
    t_eval = interleaved({n: evaluate(n, r) for n, r in runs.items()}, rounds, warmup=0)
    out = []
    for name, run in runs.items():
        cfg = run.cfg
        train_speed = cfg.batch_size * steps / t_train[name].median
        epoch_s = PROFILES['cpu'].train_images / round(train_speed, 1) if profile == 'cpu' else None
        rec = dict(model=name, batch_size=cfg.batch_size, num_workers=cfg.data.num_workers, amp=cfg.amp,
                   train_img_per_s=round(train_speed, 1),
                   eval_img_per_s=round(val_images[name] / t_eval[name].median, 1),
                   params_m=round(sum(p.numel() for p in run.model.parameters()) / 1e6, 3),
                   train_epoch_s=round(epoch_s, 1) if epoch_s else None)
        print(json.dumps(rec), flush=True)
        out.append(rec)
    return out


# ---------------------------------------------------------------------------------------------- command line
def run(args) -> int:
    from ..results import save_result
    from .timing import Watch, provenance
    if args.threads is not None:
        if args.threads < 1:
            raise ValueError(f'--threads must be at least 1, not {args.threads}')
        torch.set_num_threads(args.threads)
    watch = Watch()
    models = list(args.models or MICRO_MODELS)
    recs = cpu_profile(models, args.profile, args.steps, args.warmup, args.workers, args.rounds)
    if args.save:
        path = save_result(args.profile, NAME, recs, config=dict(steps=args.steps, models=models),
                           prov=provenance(watch, args.profile, threads=torch.get_num_threads()))
        print(f'saved {path}')
    return 0
