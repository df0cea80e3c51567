"""Where a training step's time goes: milliseconds per top-level part (stem, stages, head), forward and backward,
and the operators with the most self time (``torch.profiler``).

    stm-lab bench train-profile [--models u_swin_micro timm_swin_micro]

CPU only (wall-clock marks taken by module hooks; the parts run one after the other). Writes
``results/bench/train_profile.json`` with provenance.
"""
from __future__ import annotations

import time
from typing import Callable, Dict, Iterable, List, Optional, Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

from .steps import TIMM_SWIN, build_model, device_of, make_train_step

NAME = 'train_profile'


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


# ---------------------------------------------------------------------------------------------- command line
def run(args) -> int:
    from .steps import progress, report, setting
    from .timing import Watch
    if args.models is None:
        args.models = ['u_swin_micro', TIMM_SWIN]
    torch.set_num_threads(args.threads)
    device, watch = device_of(args.device), Watch()
    if device.type != 'cpu':
        raise SystemExit('train-profile times parts with wall-clock hooks and profiles CPU operators: '
                         'use --device cpu')
    config = dict(models=args.models, img_size=args.img_size, batch_size=args.batch_size, steps=args.steps,
                  top=args.top, threads=args.threads, device='cpu', dtype='fp32')
    records = train_profile(args.models, args.img_size, args.batch_size, args.steps, args.top, log=progress)
    title = f'Where a training step goes (forward, backward, fused AdamW), {setting(args, device)}'
    return report(args, watch, device, NAME, title, format_profile(records), records, config)
