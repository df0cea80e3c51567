"""Training and inference images/s of the five micro models and timm's Swin of the same shape, side by side.

    stm-lab bench train-speed [--threads 2] [--amp bf16 | --bf16] [--no-save]

Training (forward, cross-entropy, backward, fused AdamW step) at 64x64, batch 32, and inference at 64 and 224
(models built for that size), all models interleaved in each setting (:func:`~stm_lab.bench.timing.interleaved`);
every record carries its ratio to ``u_dwconv_micro``. Writes ``results/bench/train_speed.json`` with provenance.

``--bf16``: every model in float32 and under bf16 autocast, the two precisions of all models in the same
interleaved rounds, and per model the ratio bf16 / float32 (``ratio_to_fp32``; the ratios to ``u_dwconv_micro``
are then within one precision). Written to ``results/bench/train_speed_bf16.json``. The title says whether the CPU
has bf16 units (avx512_bf16 / AMX): without them oneDNN emulates bf16 and it is slower than float32.
"""
from __future__ import annotations

from typing import Callable, Dict, List, Optional, Sequence

import torch

from .steps import (BASELINE, MICRO_MODELS, TIMM_SWIN, build_model, compare, device_of,
                    dtype_name, format_table, make_infer_step, make_train_step)

NAME = 'train_speed'
BF16_NAME = 'train_speed_bf16'


def train_speed(models: Sequence[str] = (*MICRO_MODELS, TIMM_SWIN), train_size: int = 64,
                infer_sizes: Sequence[int] = (64, 224), batch_size: int = 32, infer_batch_size: int = 32,
                rounds: int = 7, steps_per_round: int = 2, warmup: int = 2, infer_rounds: int = 5,
                device=None, amp_dtypes: Sequence[Optional[torch.dtype]] = (None,), num_classes: int = 100,
                log: Optional[Callable[[str], None]] = None) -> List[dict]:
    """Training images/s at ``train_size`` and inference images/s at each of ``infer_sizes`` (models built for
    that size), every model in every precision of ``amp_dtypes`` (None: float32, else the autocast dtype) side by
    side in each setting. Every record carries its ratio to ``u_dwconv_micro`` in the same precision when that model
    is measured, and, when float32 is among ``amp_dtypes``, ``ratio_to_fp32``: its images/s over the same model's
    in float32 (None when it is not)."""
    device = device_of(device)
    records = []
    settings = [('train', train_size, batch_size, rounds, steps_per_round, warmup)]
    settings += [('infer', s, infer_batch_size, infer_rounds, 1, 1) for s in infer_sizes]
    label = (lambda n, d: n) if len(amp_dtypes) == 1 else (lambda n, d: f'{n} {dtype_name(d)}')  # noqa: E731
    for mode, size, bs, n_rounds, per_round, n_warmup in settings:
        if log:
            log(f'{mode} at {size}x{size}, batch {bs}:')
        make = make_train_step if mode == 'train' else make_infer_step
        # a model of its own per precision, built from the same seed: the contenders share nothing
        fns: Dict[str, Callable] = {}
        for n in models:
            for d in amp_dtypes:
                torch.manual_seed(0)
                fns[label(n, d)] = make(build_model(n, size, num_classes), size, bs, device, d)
        res = compare(fns, bs, n_rounds, per_round, n_warmup, device, log)
        for d in amp_dtypes:
            base = res.get(label(BASELINE, d), {}).get('images_per_sec')
            for name in models:
                r = res[label(name, d)]
                fp32 = res[label(name, None)]['images_per_sec'] if None in amp_dtypes else None
                records.append(dict(model=name, mode=mode, img_size=size, batch_size=bs,
                                    images_per_sec=round(r['images_per_sec'], 2),
                                    best_images_per_sec=round(r['best_images_per_sec'], 2),
                                    ratio_to_dwconv=round(r['images_per_sec'] / base, 3) if base else None,
                                    ratio_to_fp32=round(r['images_per_sec'] / fp32, 3) if fp32 else None,
                                    per_round=r['per_round'], device=str(device), dtype=dtype_name(d),
                                    threads=torch.get_num_threads()))
        del fns
    return records


def format_precision_table(records: Sequence[dict], dtype: str = 'bf16') -> str:
    """Models as rows; per (mode, size) setting the float32 and ``dtype`` images/s and their ratio."""
    cols = list(dict.fromkeys((r['mode'], r['img_size'], r['batch_size']) for r in records))
    models = list(dict.fromkeys(r['model'] for r in records))
    by = {(r['model'], r['dtype'], r['mode'], r['img_size'], r['batch_size']): r for r in records}
    w = max(len(m) for m in models + ['model'])
    head = f'{"":<{w}}' + ''.join(f' | {f"{m} {s} (bs {b}), images/s":^28}' for m, s, b in cols)
    sub = f'{"model":<{w}}' + f' | {"fp32":>8} {dtype:>8} {f"{dtype}/fp32":>10}' * len(cols)
    lines = [head, sub, '-' * len(sub)]
    for m in models:
        cells = []
        for c in cols:
            f, h = by.get((m, 'fp32', *c)), by.get((m, dtype, *c))
            ratio = h.get('ratio_to_fp32') if h else None
            cells.append(f'{f["images_per_sec"] if f else float("nan"):>8.1f} '
                         f'{h["images_per_sec"] if h else float("nan"):>8.1f} '
                         f'{f"{ratio:.2f}x" if ratio is not None else "-":>10}')
        lines.append(f'{m:<{w}}' + ''.join(f' | {c}' for c in cells))
    return '\n'.join(lines)


def bf16_units_line() -> str:
    """Whether this CPU has bf16 units, for the title of a bf16 comparison."""
    from ..results import cpu_bf16_units, cpu_name
    if cpu_bf16_units():
        return f'CPU: {cpu_name()}, with bf16 units (avx512_bf16 / AMX): oneDNN runs bf16 in hardware'
    return (f'CPU: {cpu_name()}, WITHOUT bf16 units (no avx512_bf16 / amx_bf16): bf16 is emulated here and slower '
            f'than fp32, so these ratios say nothing about a CPU with bf16 units')


# ---------------------------------------------------------------------------------------------- command line
def run(args) -> int:
    from .steps import AMP_DTYPES, progress, report, setting
    from .timing import Watch
    if args.models is None:
        args.models = [*MICRO_MODELS, TIMM_SWIN]
    if args.bf16 and args.amp != 'fp32':
        raise ValueError(f'--bf16 times fp32 and bf16 autocast side by side; it cannot be combined with '
                         f'--amp {args.amp} (valid with --bf16: --amp fp32, the default)')
    torch.set_num_threads(args.threads)
    device, watch = device_of(args.device), Watch()
    dtypes = (None, torch.bfloat16) if args.bf16 else (AMP_DTYPES[args.amp],)
    precision = 'fp32 and bf16 (autocast)' if args.bf16 else args.amp
    config = dict(models=args.models, train_size=args.img_size, infer_sizes=args.infer_sizes,
                  batch_size=args.batch_size, infer_batch_size=args.infer_batch_size, rounds=args.rounds,
                  steps_per_round=args.steps, warmup=args.warmup, infer_rounds=args.infer_rounds,
                  threads=args.threads, device=str(device), dtype=precision, optimizer='AdamW(fused=True)',
                  loss='cross-entropy, 100 classes, random data', baseline=BASELINE)
    records = train_speed(args.models, args.img_size, args.infer_sizes, args.batch_size, args.infer_batch_size,
                          args.rounds, args.steps, args.warmup, args.infer_rounds, device, dtypes, log=progress)
    if args.bf16:
        args.amp = precision  # for the setting line and the provenance
        args.name = args.name or BF16_NAME
        title = (f'Training (forward + backward + AdamW step) and inference images/s, {setting(args, device)}; '
                 f'bf16/fp32: bf16 images/s over fp32 images/s, both timed in the same rounds')
        if device.type == 'cpu':
            title += f'. {bf16_units_line()}'
        table = format_precision_table(records)
    else:
        title = (f'Training (forward + backward + AdamW step) and inference images/s, {setting(args, device)}; '
                 f'ratios to {BASELINE}')
        table = format_table(records)
    return report(args, watch, device, NAME, title, table, records, config)
