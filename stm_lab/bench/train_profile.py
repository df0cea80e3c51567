"""Where a training step's time goes: milliseconds per top-level part (stem, stages, head), forward and backward,
and the operators with the most self time (``torch.profiler``); under ``--amp bf16`` also the step's dtype
conversions (:func:`dtype_conversions`: how many, the bytes they move, their causes) and the operators that still
run in float32.

    stm-lab bench train-profile [--models u_swin_micro timm_swin_micro] [--amp bf16]

CPU only (wall-clock marks taken by module hooks; the parts run one after the other). Writes
``results/bench/train_profile.json`` with provenance.
"""
from __future__ import annotations

import collections
import contextlib
import math
import time
from typing import Callable, Dict, Iterable, List, Optional, Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

from .steps import TIMM_SWIN, build_model, device_of, dtype_name, make_train_step

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


def part_times(model: nn.Module, img_size: int, batch_size: int, steps: int = 3, warmup: int = 1,
               amp_dtype: Optional[torch.dtype] = None) -> List[dict]:
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
            with torch.autocast('cpu', dtype=amp_dtype) if amp_dtype else contextlib.nullcontext():
                logits = model(x)
            t_fwd = clock()
            loss = F.cross_entropy(logits.float(), y)
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
                  top: int = 12, amp_dtype: Optional[torch.dtype] = None) -> List[dict]:
    """The operators with the most self CPU time in a training step (``torch.profiler``): ms per step, share of
    the profiled total and calls per step."""
    from torch.profiler import ProfilerActivity, profile

    step = make_train_step(model, img_size, batch_size, 'cpu', amp_dtype)
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


ELEMENT_BYTES = {'double': 8, 'float': 4, 'c10::BFloat16': 2, 'c10::Half': 2, 'long int': 8, 'int': 4,
                 'bool': 1, 'unsigned char': 1, 'signed char': 1, 'short': 2}


NOT_COMPUTE = {'aten::copy_', 'aten::_to_copy', 'aten::to', 'aten::view', 'aten::detach', 'detach',
               'torch::autograd::AccumulateGrad'}


def _is_conversion(e) -> bool:
    """An ``aten::copy_(dst, src)`` between two dtypes: what ``.to()``, autocast's casts and type promotion run."""
    return e.name == 'aten::copy_' and len(e.input_dtypes) >= 2 and e.input_dtypes[0] != e.input_dtypes[1]


def _ancestors(e):
    while e is not None:
        yield e
        e = e.cpu_parent


def _cause(e) -> str:
    """Where a conversion comes from: the autograd node that ran it (backward) and the innermost Python frame of the
    model's code (stm_lab, timm, torch.nn; the profiler records frames as events with ``with_stack``)."""
    chain = list(_ancestors(e))
    node = next((a.name.split(': ', 1)[1] for a in chain
                 if a.name.startswith('autograd::engine::evaluate_function: ')), None)
    frame = next((a.name.split('site-packages/')[-1] for a in chain if '.py(' in a.name
                  and 'stm_lab/bench/' not in a.name and any(k in a.name for k in ('stm_lab/', 'timm/', 'torch/nn/'))),
                 None)
    if frame and '/stm_lab/' in frame:
        frame = 'stm_lab/' + frame.split('/stm_lab/', 1)[1]
    where = frame or ' < '.join(a.name for a in chain[1:4])
    return f'backward {node}' + (f' ({frame})' if frame else '') if node else f'forward {where}'


def dtype_conversions(model: nn.Module, img_size: int = 64, batch_size: int = 32,
                      amp_dtype: Optional[torch.dtype] = torch.bfloat16, steps: int = 1, warmup: int = 1,
                      causes: int = 0, model_ops: int = 8) -> dict:
    """The dtype conversions of a CPU training step (:func:`~stm_lab.bench.steps.make_train_step`, under autocast to
    ``amp_dtype``), counted with ``torch.profiler``: every ``aten::copy_`` between two dtypes -- autocast's casts of
    weights and activations, ``.to()``, type promotion, and their backward -- outside the optimizer step (AdamW's
    integer step counter is no part of the model). Per step: ``count``, ``mb`` (bytes read and written),
    ``ms`` (their CPU time) and ``share`` of the step's CPU time; with ``causes`` > 0, the ``causes`` largest causes
    (``[cause, dtypes, count, ms]``, see :func:`_cause`); ``float32_ops``: the ``model_ops`` operators of the model
    with the most self time that still read float32 (``[op, ms]``)."""
    from torch.profiler import ProfilerActivity, profile

    step = make_train_step(model, img_size, batch_size, 'cpu', amp_dtype)
    for _ in range(warmup):
        step()
    with profile(activities=[ProfilerActivity.CPU], record_shapes=True, with_stack=causes > 0) as prof:
        for _ in range(steps):
            step()
    events = prof.events()
    in_model = [e for e in events if not any(a.name.startswith('Optimizer.') for a in _ancestors(e))]
    conv = [e for e in in_model if _is_conversion(e)]
    total = sum(e.self_cpu_time_total for e in events)
    moved = sum(math.prod(e.input_shapes[0]) * sum(ELEMENT_BYTES.get(d, 4) for d in e.input_dtypes[:2])
                for e in conv)
    out = dict(count=len(conv) // steps, mb=round(moved / steps / 1e6, 2),
               ms=round(sum(e.cpu_time_total for e in conv) / steps / 1e3, 2),
               share=round(sum(e.cpu_time_total for e in conv) / max(total, 1), 4))
    if causes:
        by = collections.defaultdict(lambda: [0, 0.0])
        for e in conv:
            key = (_cause(e), f'{e.input_dtypes[1]} -> {e.input_dtypes[0]}'.replace('c10::', ''))
            by[key][0] += 1
            by[key][1] += e.cpu_time_total
        top = sorted(by.items(), key=lambda kv: (-kv[1][0], -kv[1][1]))[:causes]
        out['causes'] = [[c, d, n // steps, round(t / steps / 1e3, 2)] for (c, d), (n, t) in top]
    fp32 = collections.Counter()
    for e in in_model:  # computing operators only: not the conversions themselves, views or gradient bookkeeping
        if e.input_dtypes and e.input_dtypes[0] == 'float' and e.self_cpu_time_total and e.name not in NOT_COMPUTE:
            fp32[e.name] += e.self_cpu_time_total
    out['float32_ops'] = [[op, round(t / steps / 1e3, 2)] for op, t in fp32.most_common(model_ops)]
    return out


def train_profile(models: Sequence[str] = ('u_swin_micro', TIMM_SWIN), img_size: int = 64, batch_size: int = 32,
                  steps: int = 3, top: int = 12, num_classes: int = 100, amp_dtype: Optional[torch.dtype] = None,
                  log: Optional[Callable[[str], None]] = None) -> List[dict]:
    """Where a training step's time goes, per model: :func:`part_times` and :func:`top_operators` (CPU); under
    autocast (``amp_dtype``) also :func:`dtype_conversions` (the top 12 causes)."""
    records = []
    for name in models:
        if log:
            log(f'profiling {name} ...')
        model = build_model(name, img_size, num_classes)
        record = dict(model=name, img_size=img_size, batch_size=batch_size, threads=torch.get_num_threads(),
                      dtype=dtype_name(amp_dtype),
                      parts=part_times(model, img_size, batch_size, steps, amp_dtype=amp_dtype),
                      top_operators=top_operators(model, img_size, batch_size, steps, top=top, amp_dtype=amp_dtype))
        if amp_dtype is not None:
            record['conversions'] = dtype_conversions(model, img_size, batch_size, amp_dtype, causes=12)
        records.append(record)
    return records


def format_profile(records: Iterable[dict]) -> str:
    lines = []
    for r in records:
        lines.append(f'{r["model"]} (training step, {r["img_size"]}x{r["img_size"]}, batch {r["batch_size"]}, '
                     f'{r["threads"]} threads, {r.get("dtype", "fp32")})')
        lines += [f'  {p["part"]:<40} {p["ms"]:>9.1f} ms' for p in r['parts']]
        lines.append('  top operators (self CPU time):')
        lines += [f'  {o["op"]:<40} {o["ms"]:>9.1f} ms {100 * o["share"]:>6.1f}%  x{o["calls"]}'
                  for o in r['top_operators']]
        c = r.get('conversions')
        if c:
            lines.append(f'  dtype conversions: {c["count"]} a step, {c["mb"]:.1f} MB, {c["ms"]:.1f} ms '
                         f'({100 * c["share"]:.1f}% of CPU time); largest causes:')
            lines += [f'    {n:>4} x {d:<18} {ms:>7.2f} ms  {cause}' for cause, d, n, ms in c.get('causes', [])]
            lines.append('  model operators still reading float32: '
                         + ', '.join(f'{op} {ms:.1f} ms' for op, ms in c['float32_ops']))
    return '\n'.join(lines)


# ---------------------------------------------------------------------------------------------- command line
def run(args) -> int:
    from .steps import AMP_DTYPES, progress, report, setting
    from .timing import Watch
    if args.models is None:
        args.models = ['u_swin_micro', TIMM_SWIN]
    torch.set_num_threads(args.threads)
    device, watch = device_of(args.device), Watch()
    if device.type != 'cpu':
        raise SystemExit('train-profile times parts with wall-clock hooks and profiles CPU operators: '
                         'use --device cpu')
    if args.amp == 'fp16':
        raise ValueError('train-profile runs on the CPU: --amp fp32 or bf16, not fp16')
    config = dict(models=args.models, img_size=args.img_size, batch_size=args.batch_size, steps=args.steps,
                  top=args.top, threads=args.threads, device='cpu', dtype=args.amp)
    records = train_profile(args.models, args.img_size, args.batch_size, args.steps, args.top,
                            amp_dtype=AMP_DTYPES[args.amp], log=progress)
    title = f'Where a training step goes (forward, backward, fused AdamW), {setting(args, device)}'
    return report(args, watch, device, NAME, title, format_profile(records), records, config)
