"""DCNv3 core and U-InternImage training speed, compiled CPU kernel vs pure PyTorch.

    stm-lab bench dcnv3 [--threads 2] [--rounds 5] [--no-train] [--save]

The DCNv3 core, forward and forward+backward, at the shapes of U-InternImage-micro's stages 1 and 3 for 64x64 and
224x224 inputs (batch 32), pure PyTorch and compiled (float32), and compiled with bfloat16 storage (what CPU autocast
hands the kernel) beside its float32 time: the kernel computes in float32 either way, so bf16 can only save memory
traffic and costs the widening of what it reads (cheap, but not free); then training images/s (forward, backward,
AdamW step; batch 32, 64x64, float32) of ``u_internimage_micro`` on each backend and of ``u_dwconv_micro``.
Everything compared is timed side by side (:func:`~stm_lab.bench.timing.interleaved`): the median over rounds is
reported, the fastest round beside it.
``--save`` also writes ``results/bench/dcnv3.json`` (figures with provenance).
"""
from __future__ import annotations

import math
import os
import sys
import time

import torch

from .timing import interleaved

NAME = 'dcnv3'
IMG_SIZES = (64, 224)
STAGES = (0, 2)  # stages 1 and 3 (0-based)
BATCH = 32


def micro_stage_shapes():
    """(img_size, stage, H, W, C, G) of U-InternImage-micro's DCNv3 layers that the benchmark times."""
    from ..models import FAMILIES
    layout = FAMILIES['internimage'].layouts['micro']
    shapes = []
    for img in IMG_SIZES:
        for s in STAGES:
            side = math.ceil(img / 4) // 2 ** s  # stem /4, then /2 per stage (64 -> 16, 8, 4, 2)
            shapes.append((img, s + 1, side, side, layout.dims[s], layout.heads[s]))
    return shapes


def core_inputs(h, w, c, g, seed=0):
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(BATCH, h, w, c, generator=gen)
    offset = 2 * torch.randn(BATCH, h, w, g * 9 * 2, generator=gen)  # a few pixels, as a trained layer predicts
    mask = torch.randn(BATCH, h, w, g, 9, generator=gen).softmax(-1).reshape(BATCH, h, w, g * 9)
    return x, offset, mask


def bench_core(rounds: int) -> list:
    from ..ops import dcnv3_core
    records = []
    for img, stage, h, w, c, g in micro_stage_shapes():
        x, offset, mask = core_inputs(h, w, c, g)
        grad_out = torch.randn(BATCH, h, w, c)

        def forward(backend, dtype):
            ins = [t.to(dtype) for t in (x, offset, mask)]

            def run():
                with torch.no_grad():
                    dcnv3_core(*ins, 3, 1, 1, 1, g, 1.0, backend=backend)
            return run

        def forward_backward(backend, dtype):
            leaves, g_out = [t.to(dtype).requires_grad_() for t in (x, offset, mask)], grad_out.to(dtype)

            def run():
                out = dcnv3_core(*leaves, 3, 1, 1, 1, g, 1.0, backend=backend)
                torch.autograd.grad(out, leaves, g_out)
            return run

        contenders = {'torch': ('torch', torch.float32), 'cpp': ('cpp', torch.float32),
                      'cpp_bf16': ('cpp', torch.bfloat16)}
        kinds = (('fwd', forward), ('fwd+bwd', forward_backward))
        t = interleaved({f'{kind} {name}': make(*how) for kind, make in kinds for name, how in contenders.items()},
                        rounds, target_s=0.25)
        rec = dict(kind='core', img_size=img, stage=stage, shape=[BATCH, h, w, c], groups=g)
        for key, timing in t.items():
            rec[key.replace(' ', '_') + '_ms'] = 1e3 * timing.median
            rec[key.replace(' ', '_') + '_best_ms'] = 1e3 * timing.best
        for kind in ('fwd', 'fwd+bwd'):
            rec[f'{kind}_speedup'] = rec[f'{kind}_torch_ms'] / rec[f'{kind}_cpp_ms']
            rec[f'{kind}_bf16_ratio'] = rec[f'{kind}_cpp_ms'] / rec[f'{kind}_cpp_bf16_ms']  # > 1: bf16 faster
        records.append(rec)
        print(f'  {img:3d}px stage {stage}  ({BATCH}, {h:2d}, {w:2d}, {c:3d}) G={g:<2d} | '
              f'fwd {rec["fwd_torch_ms"]:8.2f} {rec["fwd_cpp_ms"]:7.2f} ms  x{rec["fwd_speedup"]:5.1f} | '
              f'fwd+bwd {rec["fwd+bwd_torch_ms"]:8.2f} {rec["fwd+bwd_cpp_ms"]:7.2f} ms  '
              f'x{rec["fwd+bwd_speedup"]:5.1f} | '
              f'bf16 fwd {rec["fwd_cpp_bf16_ms"]:7.2f} ms x{rec["fwd_bf16_ratio"]:4.2f}, '
              f'fwd+bwd {rec["fwd+bwd_cpp_bf16_ms"]:7.2f} ms x{rec["fwd+bwd_bf16_ratio"]:4.2f}', flush=True)
    return records


def bench_training(rounds: int, steps: int = 2, img_size: int = 64) -> list:
    import timm
    import stm_lab  # noqa: F401  (registers the models)
    from ..ops import dcnv3_backend
    x = torch.randn(BATCH, 3, img_size, img_size)
    y = torch.randint(0, 10, (BATCH,))
    contenders = {}
    for label, name, backend in (('u_dwconv_micro', 'u_dwconv_micro', None),
                                 ('u_internimage_micro torch', 'u_internimage_micro', 'torch'),
                                 ('u_internimage_micro cpp', 'u_internimage_micro', 'cpp')):
        torch.manual_seed(0)
        model = timm.create_model(name, num_classes=10, img_size=img_size)
        opt = torch.optim.AdamW(model.parameters(), lr=1e-3)

        def step(model=model, opt=opt, backend=backend):
            with dcnv3_backend(backend or 'auto'):
                for _ in range(steps):
                    loss = torch.nn.functional.cross_entropy(model(x), y)
                    opt.zero_grad(set_to_none=True)
                    loss.backward()
                    opt.step()
        contenders[label] = step
    t = interleaved(contenders, rounds)  # one call (= `steps` steps) per round
    records = []
    for label, timing in t.items():
        med, best = timing.median, timing.best
        records.append(dict(kind='train', model=label, img_size=img_size, batch=BATCH,
                            step_ms=1e3 * med / steps, images_per_s=BATCH * steps / med,
                            best_images_per_s=BATCH * steps / best))
        print(f'  {label:28s} {1e3 * med / steps:8.1f} ms/step  {BATCH * steps / med:7.1f} img/s  '
              f'(best round {BATCH * steps / best:7.1f} img/s)', flush=True)
    return records


# ---------------------------------------------------------------------------------------------- command line
def run(args) -> int:
    from ..ops import _build
    from ..results import cpu_bf16_units, cpu_name
    from .timing import Watch, busy_note, provenance
    torch.set_num_threads(args.threads)
    print(f'DCNv3 benchmark: {cpu_name()}, torch {torch.__version__}, {torch.get_num_threads()} threads, '
          f'{args.rounds} interleaved rounds (median; "best" = fastest round)')
    if _build.load() is None:
        print(f'the compiled kernel is unavailable here: {_build.LOADER.error}', file=sys.stderr)
        return 1
    print(f'compiled kernel: {_build.LOADER.build_dir} (flags {" ".join(_build.cpu_flags())})\n')
    watch = Watch()
    print(f'DCNv3 core, batch {BATCH} (times: pure PyTorch, compiled; speedup | compiled with bf16 storage; '
          f'compiled float32 time / bf16 time)')
    records = bench_core(args.rounds)
    if args.train:
        print(f'\nTraining step (forward + backward + AdamW), batch {BATCH}, 64x64, float32')
        train = bench_training(args.rounds)
        records += train
        ips = {r['model']: r['images_per_s'] for r in train}
        dw = ips['u_dwconv_micro']
        print(f'\n  u_internimage_micro / u_dwconv_micro images/s: compiled {ips["u_internimage_micro cpp"] / dw:.2f}, '
              f'pure PyTorch {ips["u_internimage_micro torch"] / dw:.2f} (target >= 0.6)')
        print(f'  compiled / pure PyTorch (u_internimage_micro): '
              f'{ips["u_internimage_micro cpp"] / ips["u_internimage_micro torch"]:.2f}x')
    core = [r for r in records if r['kind'] == 'core']
    print(f'  core fwd+bwd speedup: {min(r["fwd+bwd_speedup"] for r in core):.1f}x to '
          f'{max(r["fwd+bwd_speedup"] for r in core):.1f}x (target >= 4x); forward: '
          f'{min(r["fwd_speedup"] for r in core):.1f}x to {max(r["fwd_speedup"] for r in core):.1f}x')
    units = 'with bf16 units' if cpu_bf16_units() else 'no bf16 units (avx512_bf16 / amx_bf16): bf16 is emulated'
    print(f'  core bf16 vs float32 (float32 time / bf16 time), {cpu_name()}, {units}: fwd+bwd '
          f'{min(r["fwd+bwd_bf16_ratio"] for r in core):.2f}x to {max(r["fwd+bwd_bf16_ratio"] for r in core):.2f}x; '
          f'forward {min(r["fwd_bf16_ratio"] for r in core):.2f}x to {max(r["fwd_bf16_ratio"] for r in core):.2f}x')
    print(f'\n({time.time() - watch.t0:.0f} s; load average {watch.load_now():.1f} on {os.cpu_count()} CPUs)')
    note = busy_note(watch, torch.get_num_threads())
    if note:
        print(note)
    if args.save:
        from ..results import save_result
        path = save_result('bench', NAME, records, config=dict(
            threads=args.threads, rounds=args.rounds, batch=BATCH, flags=_build.cpu_flags()),
            prov=provenance(watch, threads=args.threads))
        print(f'saved {path}')
    return 0
