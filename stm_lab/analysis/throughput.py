"""Training and inference throughput (images/s), measured side by side.

Timings on a shared machine drift by tens of percent from one minute to the next, so models are never timed
one after the other: every model gets its warm-up first, then the benchmark runs several *rounds*, and in
each round every model runs a few steps (in a rotated order). A model's figure is the median over rounds of
its images/s (the best round is kept beside it), so all models see the same slow and fast moments.

- :func:`train_images_per_sec` / :func:`infer_images_per_sec`: one model, one figure;
- :func:`compare`: several step functions timed in interleaved rounds;
- :func:`train_speed`: the five ``u_*_micro`` models and timm's Swin of the same shape, training at 64x64 and
  inference at 64 and 224, with ratios to ``u_dwconv_micro``;
- :func:`train_profile`: where a training step goes: milliseconds per top-level part (stem, stages, head),
  forward and backward, and the operators with the most self time (``torch.profiler``);
- :func:`table8_throughput`: the protocol of the paper's Table VIII (inference at 256/512/1024 with batch
  128/32/12 on a GPU; smaller batches on the CPU, stated in every record).

Command line (``stm-lab bench train-speed`` / ``stm-lab bench table8`` run the same)::

    python -m stm_lab.analysis.throughput train-speed [--threads 2] [--amp bf16] [--no-save]
    python -m stm_lab.analysis.throughput table8 [--device cuda]
    python -m stm_lab.analysis.throughput train-profile [--models u_swin_micro timm_swin_micro]

Results go to ``results/bench/{train_speed,table8_throughput,train_profile}.json`` with provenance.

OpenMP: threads that *spin* while they wait (libgomp's default) turn every other process on a shared machine
into stalls at each parallel region: measured here under load, ``u_dwconv_micro`` trained at 10 images/s with 2
spinning threads and at 108 with passive waiting. The policy is read once, when torch loads OpenMP, so the
command re-runs itself in a child process with ``OMP_WAIT_POLICY=PASSIVE`` unless the variable is already set
(the policy used is recorded in the provenance).
"""
from __future__ import annotations

import argparse
import contextlib
import os
import statistics
import subprocess
import sys
import time
from typing import Callable, Dict, Iterable, List, Optional, Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..models import main_models

MICRO_MODELS = tuple(main_models('micro'))
TIMM_SWIN = 'timm_swin_micro'  # timm's Swin with U-Swin micro's widths, depths, heads and window
BASELINE = 'u_dwconv_micro'
AMP_DTYPES = {'fp32': None, 'bf16': torch.bfloat16, 'fp16': torch.float16}

Step = Callable[[], None]


# ---------------------------------------------------------------------------------------------- models
def build_model(name: str, img_size: int, num_classes: int = 100) -> nn.Module:
    """A registered ``u_*`` model, or ``timm_swin_micro``: ``swin_tiny_patch4_window7_224`` with embed_dim 32,
    depths 2-2-9-2, heads 1-2-4-8, the window U-Swin uses at this size (4 at 64, 7 at 224) and drop path 0 (as
    U-Swin micro; timm's default 0.1 would add random masks to every block)."""
    import timm
    import stm_lab  # noqa: F401  (registers the u_* models)
    from stm_lab.models import window_for

    if name == TIMM_SWIN:
        return timm.create_model('swin_tiny_patch4_window7_224', embed_dim=32, depths=(2, 2, 9, 2),
                                 num_heads=(1, 2, 4, 8), window_size=window_for(img_size), img_size=img_size,
                                 drop_path_rate=0.0, num_classes=num_classes)
    return timm.create_model(name, img_size=img_size, num_classes=num_classes)


# ---------------------------------------------------------------------------------------------- timing
def _device(device) -> torch.device:
    if device is None:
        device = 'cuda' if torch.cuda.is_available() else 'cpu'
    return torch.device(device)


def _sync(device: torch.device) -> None:
    if device.type == 'cuda':  # kernels are asynchronous: wait before reading the clock
        torch.cuda.synchronize(device)


def _autocast(device: torch.device, amp_dtype: Optional[torch.dtype]):
    if amp_dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=amp_dtype)


def make_train_step(model: nn.Module, img_size: int, batch_size: int, device=None,
                    amp_dtype: Optional[torch.dtype] = None, lr: float = 1e-4, fused: bool = True) -> Step:
    """One training step on a fixed random batch: forward, cross-entropy, backward, AdamW step.

    ``fused``: PyTorch's fused AdamW, one kernel per parameter. On the CPU the default for-loop AdamW costs a
    micro model about 20 ms a step (the fused one about 6) and charges per parameter tensor, not per number,
    which would penalize models with many small tensors (layer scales, norms) for their bookkeeping."""
    device = _device(device)
    model.to(device).train()
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.05, fused=fused)
    x = torch.randn(batch_size, 3, img_size, img_size, device=device)
    labels = {}

    def step():
        with _autocast(device, amp_dtype):
            logits = model(x)
        if 'y' not in labels:  # random labels in the model's own output range
            labels['y'] = torch.randint(0, logits.shape[-1], (batch_size,), device=device)
        loss = F.cross_entropy(logits.float(), labels['y'])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    return step


def make_infer_step(model: nn.Module, img_size: int, batch_size: int, device=None,
                    amp_dtype: Optional[torch.dtype] = None) -> Step:
    """One inference pass (eval mode, no autograd) on a fixed random batch."""
    device = _device(device)
    model.to(device).eval()
    x = torch.randn(batch_size, 3, img_size, img_size, device=device)

    def step():
        with torch.no_grad(), _autocast(device, amp_dtype):
            model(x)

    return step


def seconds_per_step(step: Step, steps: int, device=None) -> float:
    device = _device(device)
    _sync(device)
    t0 = time.perf_counter()
    for _ in range(steps):
        step()
    _sync(device)
    return (time.perf_counter() - t0) / steps


def train_images_per_sec(model: nn.Module, img_size: int = 64, batch_size: int = 32, steps: int = 10,
                         warmup: int = 3, device=None, amp_dtype: Optional[torch.dtype] = None) -> float:
    """Training images/s (forward + backward + AdamW step) of ``model`` on random data."""
    step = make_train_step(model, img_size, batch_size, device, amp_dtype)
    for _ in range(warmup):
        step()
    return batch_size / seconds_per_step(step, steps, device)


def infer_images_per_sec(model: nn.Module, img_size: int = 224, batch_size: int = 32, steps: int = 10,
                         warmup: int = 3, device=None, amp_dtype: Optional[torch.dtype] = None) -> float:
    """Inference images/s (eval mode, ``torch.no_grad``) of ``model`` on random data."""
    step = make_infer_step(model, img_size, batch_size, device, amp_dtype)
    for _ in range(warmup):
        step()
    return batch_size / seconds_per_step(step, steps, device)


def compare(steps: Dict[str, Step], batch_size: int, rounds: int = 5, steps_per_round: int = 2,
            warmup: int = 2, device=None, log: Optional[Callable[[str], None]] = None) -> Dict[str, dict]:
    """Time several step functions side by side: warm-up for each, then ``rounds`` rounds in which every one
    runs ``steps_per_round`` steps, in an order rotated every round. Returns, per name, the median images/s
    over rounds, the best round and the per-round figures."""
    names = list(steps)
    for name in names:
        for _ in range(warmup):
            steps[name]()
    rates: Dict[str, List[float]] = {n: [] for n in names}
    for r in range(rounds):
        order = names[r % len(names):] + names[:r % len(names)]
        for name in order:
            rates[name].append(batch_size / seconds_per_step(steps[name], steps_per_round, device))
        if log:
            log(f'  round {r + 1}/{rounds}: ' + ', '.join(f'{n} {rates[n][-1]:.0f}' for n in names))
    return {n: dict(images_per_sec=statistics.median(v), best_images_per_sec=max(v),
                    per_round=[round(x, 2) for x in v]) for n, v in rates.items()}


def _dtype_name(amp_dtype: Optional[torch.dtype]) -> str:
    return {v: k for k, v in AMP_DTYPES.items()}.get(amp_dtype, str(amp_dtype))


# ---------------------------------------------------------------------------------------------- protocols
def train_speed(models: Sequence[str] = (*MICRO_MODELS, TIMM_SWIN), train_size: int = 64,
                infer_sizes: Sequence[int] = (64, 224), batch_size: int = 32, infer_batch_size: int = 32,
                rounds: int = 7, steps_per_round: int = 2, warmup: int = 2, infer_rounds: int = 5,
                device=None, amp_dtype: Optional[torch.dtype] = None, num_classes: int = 100,
                log: Optional[Callable[[str], None]] = None) -> List[dict]:
    """Training images/s at ``train_size`` and inference images/s at each of ``infer_sizes`` (models built for
    that size), all models side by side in each setting; every record carries its ratio to ``u_dwconv_micro``
    when that model is measured."""
    device = _device(device)
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
                                per_round=r['per_round'], device=str(device), dtype=_dtype_name(amp_dtype),
                                threads=torch.get_num_threads()))
        del fns
    return records


def table8_throughput(models: Sequence[str] = MICRO_MODELS, sizes: Sequence[int] = (256, 512, 1024),
                      batch_sizes: Optional[Sequence[int]] = (128, 32, 12), device=None, warmup: int = 10,
                      steps: int = 100, rounds: int = 1, built_for: int = 224,
                      amp_dtype: Optional[torch.dtype] = None, log: Optional[Callable[[str], None]] = None
                      ) -> List[dict]:
    """Table VIII protocol: inference images/s at each size, random input, fp32, models built for
    ``built_for`` (the paper's 224 configuration) and run at the larger sizes. The paper used batch 128/32/12 on
    an RTX 3090 with 10 warm-up and 100 timed iterations; on a CPU pass smaller batches and fewer steps
    (``batch_sizes=None`` picks 128/32/12 on a GPU and 8/2/1 on the CPU); the batch used is in every record.
    Models are compared side by side at each size (see :func:`compare`)."""
    device = _device(device)
    if batch_sizes is None:
        batch_sizes = (128, 32, 12) if device.type == 'cuda' else (8, 2, 1)
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
                                per_round=r['per_round'], device=str(device), dtype=_dtype_name(amp_dtype),
                                steps=per_round * rounds, warmup=warmup, threads=torch.get_num_threads()))
    return records


def model_parts(model: nn.Module) -> List[tuple]:
    """The model's top-level parts in forward order: its direct children, with containers of repeated parts
    (``stages``, ``layers``) split one level (``stages.0`` ...). Identities are left out."""
    parts = []
    for name, child in model.named_children():
        if isinstance(child, nn.Identity):
            continue
        if isinstance(child, nn.ModuleList) or (isinstance(child, nn.Sequential) and name in ('stages', 'layers')):
            parts += [(f'{name}.{i}', c) for i, c in enumerate(child)]
        else:
            parts.append((name, child))
    return parts


def part_times(model: nn.Module, img_size: int, batch_size: int, steps: int = 3, warmup: int = 1) -> List[dict]:
    """Milliseconds per training step spent in each top-level part (:func:`model_parts`), forward and backward,
    plus the loss and the optimizer step: wall-clock marks taken by module hooks on the CPU (the parts run one
    after the other). A part's backward runs from the moment the gradient reaches its output (backward pre-hook)
    until the gradient reaches the part before it; the first part's until ``backward()`` returns."""
    parts = model_parts(model)
    marks: Dict[tuple, float] = {}
    clock = time.perf_counter

    def mark(kind, name):
        def hook(*_):
            marks[(kind, name)] = clock()
        return hook

    handles = []
    for name, m in parts:
        handles += [m.register_forward_pre_hook(mark('f0', name)), m.register_forward_hook(mark('f1', name)),
                    m.register_full_backward_pre_hook(mark('b0', name))]
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, weight_decay=0.05, fused=True)
    model.train()
    x = torch.randn(batch_size, 3, img_size, img_size)
    y = torch.zeros(batch_size, dtype=torch.long)
    sums: Dict[str, float] = {}
    try:
        for i in range(warmup + steps):
            marks.clear()
            t0 = clock()
            logits = model(x)
            t_fwd = clock()
            loss = F.cross_entropy(logits, y)
            t_loss = clock()
            opt.zero_grad(set_to_none=True)
            loss.backward()
            t_bwd = clock()
            opt.step()
            t_opt = clock()
            if i < warmup:
                continue
            row = {f'{n} forward': marks[('f1', n)] - marks[('f0', n)] for n, _ in parts if ('f0', n) in marks}
            row['between parts (forward)'] = (t_fwd - t0) - sum(row.values())
            row['loss'] = t_loss - t_fwd
            # backward visits the parts in reverse order; parts the gradient never reaches are left out
            reached = sorted((t, n) for (k, n), t in marks.items() if k == 'b0')
            row['loss backward'] = (reached[0][0] if reached else t_bwd) - t_loss
            for j, (t, n) in enumerate(reached):
                row[f'{n} backward'] = (reached[j + 1][0] if j + 1 < len(reached) else t_bwd) - t
            row['optimizer step'] = t_opt - t_bwd
            row['total'] = t_opt - t0
            for k, v in row.items():
                sums[k] = sums.get(k, 0.0) + v
    finally:
        for h in handles:
            h.remove()
    return [dict(part=k, ms=round(1000 * v / steps, 2)) for k, v in sums.items()]


def top_operators(model: nn.Module, img_size: int, batch_size: int, steps: int = 3, warmup: int = 1,
                  top: int = 12) -> List[dict]:
    """The operators with the most self CPU time in a training step (``torch.profiler``): ms per step, share of
    the profiled total and calls per step."""
    from torch.profiler import ProfilerActivity, profile

    step = make_train_step(model, img_size, batch_size, 'cpu')
    for _ in range(warmup):
        step()
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        for _ in range(steps):
            step()
    events = [e for e in prof.key_averages() if e.self_cpu_time_total > 0]
    total = sum(e.self_cpu_time_total for e in events)
    events.sort(key=lambda e: e.self_cpu_time_total, reverse=True)
    return [dict(op=e.key, ms=round(e.self_cpu_time_total / 1000 / steps, 2),
                 share=round(e.self_cpu_time_total / total, 4), calls=e.count // steps) for e in events[:top]]


def train_profile(models: Sequence[str] = ('u_swin_micro', TIMM_SWIN), img_size: int = 64, batch_size: int = 32,
                  steps: int = 3, top: int = 12, num_classes: int = 100,
                  log: Optional[Callable[[str], None]] = None) -> List[dict]:
    """Where a training step's time goes, per model: :func:`part_times` and :func:`top_operators` (CPU)."""
    records = []
    for name in models:
        if log:
            log(f'profiling {name} ...')
        model = build_model(name, img_size, num_classes)
        records.append(dict(model=name, img_size=img_size, batch_size=batch_size, threads=torch.get_num_threads(),
                            parts=part_times(model, img_size, batch_size, steps),
                            top_operators=top_operators(model, img_size, batch_size, steps, top=top)))
    return records


def format_profile(records: Iterable[dict]) -> str:
    lines = []
    for r in records:
        lines.append(f'{r["model"]} (training step, {r["img_size"]}x{r["img_size"]}, batch {r["batch_size"]}, '
                     f'{r["threads"]} threads)')
        lines += [f'  {p["part"]:<40} {p["ms"]:>9.1f} ms' for p in r['parts']]
        lines.append('  top operators (self CPU time):')
        lines += [f'  {o["op"]:<40} {o["ms"]:>9.1f} ms {100 * o["share"]:>6.1f}%  x{o["calls"]}'
                  for o in r['top_operators']]
    return '\n'.join(lines)


def format_table(records: Iterable[dict]) -> str:
    """Models as rows; per (mode, size) column the median images/s and, when known, the ratio to
    ``u_dwconv_micro``."""
    records = list(records)
    cols = list(dict.fromkeys((r['mode'], r['img_size'], r['batch_size']) for r in records))
    models = list(dict.fromkeys(r['model'] for r in records))
    by = {(r['model'], r['mode'], r['img_size'], r['batch_size']): r for r in records}
    w = max(len(m) for m in models + ['model'])
    lines = [f'{"model":<{w}}' + ''.join(f' | {f"{m} {s} (bs {b})":>20}' for m, s, b in cols)]
    lines.append('-' * len(lines[0]))
    for m in models:
        cells = []
        for c in cols:
            r = by.get((m, *c))
            ratio = r.get('ratio_to_dwconv') if r else None
            cells.append(f'{"-":>20}' if r is None else
                         f'{r["images_per_sec"]:>11.1f} {f"{ratio:.2f}x" if ratio is not None else "":>8}')
        lines.append(f'{m:<{w}}' + ''.join(f' | {c}' for c in cells))
    return '\n'.join(lines)


# ---------------------------------------------------------------------------------------------- command line
def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog='python -m stm_lab.analysis.throughput', description=__doc__.split('\n')[0])
    sub = p.add_subparsers(dest='cmd', required=True)

    s = sub.add_parser('train-speed', help='training and inference images/s of the micro models and timm Swin')
    s.add_argument('--models', nargs='+', default=[*MICRO_MODELS, TIMM_SWIN])
    s.add_argument('--img-size', type=int, default=64, help='training image size')
    s.add_argument('--infer-sizes', type=int, nargs='*', default=[64, 224])
    s.add_argument('--batch-size', type=int, default=32)
    s.add_argument('--infer-batch-size', type=int, default=32)
    s.add_argument('--rounds', type=int, default=7, help='interleaved training rounds (the median is reported)')
    s.add_argument('--steps', type=int, default=2, help='training steps per model per round')
    s.add_argument('--warmup', type=int, default=2)
    s.add_argument('--infer-rounds', type=int, default=5)

    s = sub.add_parser('table8', help="inference images/s with the protocol of the paper's Table VIII")
    s.add_argument('--models', nargs='+', default=list(MICRO_MODELS))
    s.add_argument('--sizes', type=int, nargs='+', default=[256, 512, 1024])
    s.add_argument('--batch-sizes', type=int, nargs='+', default=None,
                   help='default 128 32 12 on a GPU (as the paper), 8 2 1 on the CPU')
    s.add_argument('--steps', type=int, default=None, help='timed iterations (default 100 GPU, 3 CPU)')
    s.add_argument('--warmup', type=int, default=None, help='warm-up iterations (default 10 GPU, 1 CPU)')
    s.add_argument('--rounds', type=int, default=None,
                   help='interleaved rounds the timed steps are split into (default 1 GPU, one per step on the CPU)')

    s = sub.add_parser('train-profile', help='where a training step spends its time (parts and top operators)')
    s.add_argument('--models', nargs='+', default=['u_swin_micro', TIMM_SWIN])
    s.add_argument('--img-size', type=int, default=64)
    s.add_argument('--batch-size', type=int, default=32)
    s.add_argument('--steps', type=int, default=3, help='profiled steps per model (after one warm-up step)')
    s.add_argument('--top', type=int, default=12, help='operators listed per model')

    for s in sub.choices.values():
        s.add_argument('--threads', type=int, default=2, help='torch CPU threads')
        s.add_argument('--device', default=None, help='cpu or cuda (default: cuda when available)')
        s.add_argument('--amp', choices=list(AMP_DTYPES), default='fp32', help='autocast dtype (fp32: none)')
        s.add_argument('--no-save', action='store_true', help='print only, write no result file')
        s.add_argument('--name', default=None, help='result name under results/bench/')
    return p


def _relaunch_with_passive_openmp(argv: List[str]) -> Optional[int]:
    """Run this command again in a child process with ``OMP_WAIT_POLICY=PASSIVE`` (see the module docstring);
    None when the variable is already set (also in that child)."""
    if os.environ.get('OMP_WAIT_POLICY'):
        return None
    env = dict(os.environ, OMP_WAIT_POLICY='PASSIVE')
    return subprocess.call([sys.executable, '-m', 'stm_lab.analysis.throughput', *argv], env=env)


def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = build_parser().parse_args(argv)  # errors before any relaunch
    code = _relaunch_with_passive_openmp(argv)
    if code is not None:
        return code

    from stm_lab.results import provenance, save_result

    torch.set_num_threads(args.threads)
    device = _device(args.device)
    amp = AMP_DTYPES[args.amp]
    log = lambda msg: print(msg, file=sys.stderr, flush=True)  # noqa: E731  (progress; the table goes to stdout)
    t0, load_start = time.time(), os.getloadavg()
    setting = (f'{args.amp}, {device}, {args.threads} threads, OMP_WAIT_POLICY={os.environ["OMP_WAIT_POLICY"]}; '
               f'median of interleaved rounds')
    if args.cmd == 'train-speed':
        config = dict(models=args.models, train_size=args.img_size, infer_sizes=args.infer_sizes,
                      batch_size=args.batch_size, infer_batch_size=args.infer_batch_size, rounds=args.rounds,
                      steps_per_round=args.steps, warmup=args.warmup, infer_rounds=args.infer_rounds,
                      threads=args.threads, device=str(device), dtype=args.amp, optimizer='AdamW(fused=True)',
                      loss='cross-entropy, 100 classes, random data', baseline=BASELINE)
        records = train_speed(args.models, args.img_size, args.infer_sizes, args.batch_size,
                              args.infer_batch_size, args.rounds, args.steps, args.warmup, args.infer_rounds,
                              device, amp, log=log)
        name = args.name or 'train_speed'
        title = (f'Training (forward + backward + AdamW step) and inference images/s, {setting}; '
                 f'ratios to {BASELINE}')
    elif args.cmd == 'train-profile':
        if device.type != 'cpu':
            raise SystemExit('train-profile times parts with wall-clock hooks and profiles CPU operators: '
                             'use --device cpu')
        config = dict(models=args.models, img_size=args.img_size, batch_size=args.batch_size, steps=args.steps,
                      top=args.top, threads=args.threads, device='cpu', dtype='fp32')
        records = train_profile(args.models, args.img_size, args.batch_size, args.steps, args.top, log=log)
        name = args.name or 'train_profile'
        title = f'Where a training step goes (forward, backward, fused AdamW), {setting}'
    else:
        cpu = device.type != 'cuda'
        batch_sizes = args.batch_sizes or ((8, 2, 1) if cpu else (128, 32, 12))
        steps = args.steps or (3 if cpu else 100)
        warmup = args.warmup if args.warmup is not None else (1 if cpu else 10)
        rounds = args.rounds or (steps if cpu else 1)
        config = dict(models=args.models, sizes=args.sizes, batch_sizes=list(batch_sizes), steps=steps,
                      warmup=warmup, rounds=rounds, threads=args.threads, device=str(device), dtype=args.amp,
                      built_for=224, paper_batch_sizes=[128, 32, 12], paper_device='NVIDIA GeForce RTX 3090')
        records = table8_throughput(args.models, args.sizes, batch_sizes, device, warmup, steps, rounds,
                                    amp_dtype=amp, log=log)
        name = args.name or 'table8_throughput'
        title = (f"Inference images/s, Table VIII protocol (the paper: batch 128/32/12 on an RTX 3090); here "
                 f"batch {'/'.join(map(str, batch_sizes))}, {steps} timed steps, {setting}")
    print(title)
    print(format_profile(records) if args.cmd == 'train-profile' else format_table(records))
    if not args.no_save:
        prov = provenance('bench', wall_s=round(time.time() - t0, 1), device=str(device), threads=args.threads,
                          dtype=args.amp, omp_wait_policy=os.environ.get('OMP_WAIT_POLICY'),
                          load_avg_start=[round(x, 2) for x in load_start],
                          load_avg_end=[round(x, 2) for x in os.getloadavg()])
        print(f'saved {save_result("bench", name, records, config=config, prov=prov)}')
    return 0


if __name__ == '__main__':
    sys.exit(main())
