"""Training and inference images/s of the five micro models and timm's Swin of the same shape, side by side.

    stm-lab bench train-speed [--threads 2] [--amp bf16] [--no-save]

Training (forward, cross-entropy, backward, fused AdamW step) at 64x64, batch 32, and inference at 64 and 224
(models built for that size), all models interleaved in each setting (:func:`~stm_lab.bench.timing.interleaved`);
every record carries its ratio to ``u_dwconv_micro``. Writes ``results/bench/train_speed.json`` with provenance.
"""
from __future__ import annotations

from typing import Callable, List, Optional, Sequence

import torch

from .steps import (BASELINE, MICRO_MODELS, TIMM_SWIN, build_model, compare, device_of,
                    dtype_name, format_table, make_infer_step, make_train_step)

NAME = 'train_speed'


def train_speed(models: Sequence[str] = (*MICRO_MODELS, TIMM_SWIN), train_size: int = 64,
                infer_sizes: Sequence[int] = (64, 224), batch_size: int = 32, infer_batch_size: int = 32,
                rounds: int = 7, steps_per_round: int = 2, warmup: int = 2, infer_rounds: int = 5,
                device=None, amp_dtype: Optional[torch.dtype] = None, num_classes: int = 100,
                log: Optional[Callable[[str], None]] = None) -> List[dict]:
    """Training images/s at ``train_size`` and inference images/s at each of ``infer_sizes`` (models built for
    that size), all models side by side in each setting; every record carries its ratio to ``u_dwconv_micro``
    when that model is measured."""
    device = device_of(device)
    records = []
    settings = [('train', train_size, batch_size, rounds, steps_per_round, warmup)]
    settings += [('infer', s, infer_batch_size, infer_rounds, 1, 1) for s in infer_sizes]
    for mode, size, bs, n_rounds, per_round, n_warmup in settings:
        if log:
            log(f'{mode} at {size}x{size}, batch {bs}:')
        make = make_train_step if mode == 'train' else make_infer_step
        fns = {n: make(build_model(n, size, num_classes), size, bs, device, amp_dtype) for n in models}
        res = compare(fns, bs, n_rounds, per_round, n_warmup, device, log)
        base = res.get(BASELINE, {}).get('images_per_sec')
        for name in models:
            r = res[name]
            records.append(dict(model=name, mode=mode, img_size=size, batch_size=bs,
                                images_per_sec=round(r['images_per_sec'], 2),
                                best_images_per_sec=round(r['best_images_per_sec'], 2),
                                ratio_to_dwconv=round(r['images_per_sec'] / base, 3) if base else None,
                                per_round=r['per_round'], device=str(device), dtype=dtype_name(amp_dtype),
                                threads=torch.get_num_threads()))
        del fns
    return records


# ---------------------------------------------------------------------------------------------- command line
def run(args) -> int:
    from .steps import AMP_DTYPES, progress, report, setting
    from .timing import Watch
    if args.models is None:
        args.models = [*MICRO_MODELS, TIMM_SWIN]
    torch.set_num_threads(args.threads)
    device, watch = device_of(args.device), Watch()
    config = dict(models=args.models, train_size=args.img_size, infer_sizes=args.infer_sizes,
                  batch_size=args.batch_size, infer_batch_size=args.infer_batch_size, rounds=args.rounds,
                  steps_per_round=args.steps, warmup=args.warmup, infer_rounds=args.infer_rounds,
                  threads=args.threads, device=str(device), dtype=args.amp, optimizer='AdamW(fused=True)',
                  loss='cross-entropy, 100 classes, random data', baseline=BASELINE)
    records = train_speed(args.models, args.img_size, args.infer_sizes, args.batch_size, args.infer_batch_size,
                          args.rounds, args.steps, args.warmup, args.infer_rounds, device, AMP_DTYPES[args.amp],
                          log=progress)
    title = (f'Training (forward + backward + AdamW step) and inference images/s, {setting(args, device)}; '
             f'ratios to {BASELINE}')
    return report(args, watch, device, NAME, title, format_table(records), records, config)
