"""Inference images/s with the protocol of the paper's Table VIII.

    stm-lab bench table8 [--device cuda] [--models ...] [--name table8_throughput_micro_cuda]

Inference at 256/512/1024 pixels, random input, fp32, models built for 224 (the paper's configuration) and run at
the larger sizes. The paper used batch 128/32/12 on an RTX 3090 with 10 warm-up and 100 timed iterations, which
are the defaults on a GPU; on the CPU the defaults are batch 8/2/1 and 3 timed steps, one per round. The batch used
is in every record. Models are compared side by side at each size (:func:`~stm_lab.bench.timing.interleaved`).
Writes ``results/bench/table8_throughput.json`` with provenance (``bash .ci/device-check`` writes the ``*_cuda``
results of the Speed page with ``--name``).
"""
from __future__ import annotations

from typing import Callable, List, Optional, Sequence

import torch

from .steps import BASELINE, MICRO_MODELS, build_model, compare, device_of, dtype_name, make_infer_step

NAME = 'table8_throughput'
PAPER_BATCH_SIZES = (128, 32, 12)
CPU_BATCH_SIZES = (8, 2, 1)


def table8_throughput(models: Sequence[str] = MICRO_MODELS, sizes: Sequence[int] = (256, 512, 1024),
                      batch_sizes: Optional[Sequence[int]] = PAPER_BATCH_SIZES, device=None, warmup: int = 10,
                      steps: int = 100, rounds: int = 1, built_for: int = 224,
                      amp_dtype: Optional[torch.dtype] = None, log: Optional[Callable[[str], None]] = None
                      ) -> List[dict]:
    """Table VIII protocol: inference images/s at each size; ``batch_sizes=None`` picks 128/32/12 on a GPU and
    8/2/1 on the CPU. The ``steps`` timed steps are split into ``rounds`` interleaved rounds."""
    device = device_of(device)
    if batch_sizes is None:
        batch_sizes = PAPER_BATCH_SIZES if device.type == 'cuda' else CPU_BATCH_SIZES
    if len(batch_sizes) != len(sizes):
        raise ValueError(f'{len(sizes)} sizes but {len(batch_sizes)} batch sizes')
    built = {name: build_model(name, built_for, num_classes=1000) for name in models}
    records = []
    for size, bs in zip(sizes, batch_sizes):
        if log:
            log(f'inference at {size}x{size}, batch {bs}:')
        fns = {n: make_infer_step(m, size, bs, device, amp_dtype) for n, m in built.items()}
        per_round = max(1, steps // max(rounds, 1))
        res = compare(fns, bs, rounds, per_round, warmup, device, log)
        base = res.get(BASELINE, {}).get('images_per_sec')
        for name, r in res.items():
            records.append(dict(model=name, mode='infer', img_size=size, batch_size=bs, built_for=built_for,
                                images_per_sec=round(r['images_per_sec'], 2),
                                best_images_per_sec=round(r['best_images_per_sec'], 2),
                                ratio_to_dwconv=round(r['images_per_sec'] / base, 3) if base else None,
                                per_round=r['per_round'], device=str(device), dtype=dtype_name(amp_dtype),
                                steps=per_round * rounds, warmup=warmup, threads=torch.get_num_threads()))
    return records


# ---------------------------------------------------------------------------------------------- command line
def run(args) -> int:
    from .steps import AMP_DTYPES, format_table, progress, report, setting
    from .timing import Watch
    if args.models is None:
        args.models = list(MICRO_MODELS)
    torch.set_num_threads(args.threads)
    device, watch = device_of(args.device), Watch()
    cpu = device.type != 'cuda'
    batch_sizes = args.batch_sizes or (CPU_BATCH_SIZES if cpu else PAPER_BATCH_SIZES)
    steps = args.steps or (3 if cpu else 100)
    warmup = args.warmup if args.warmup is not None else (1 if cpu else 10)
    rounds = args.rounds or (steps if cpu else 1)
    config = dict(models=args.models, sizes=args.sizes, batch_sizes=list(batch_sizes), steps=steps,
                  warmup=warmup, rounds=rounds, threads=args.threads, device=str(device), dtype=args.amp,
                  built_for=224, paper_batch_sizes=list(PAPER_BATCH_SIZES), paper_device='NVIDIA GeForce RTX 3090')
    records = table8_throughput(args.models, args.sizes, batch_sizes, device, warmup, steps, rounds,
                                amp_dtype=AMP_DTYPES[args.amp], log=progress)
    title = (f"Inference images/s, Table VIII protocol (the paper: batch 128/32/12 on an RTX 3090); here "
             f"batch {'/'.join(map(str, batch_sizes))}, {steps} timed steps, {setting(args, device)}")
    return report(args, watch, device, NAME, title, format_table(records), records, config)
