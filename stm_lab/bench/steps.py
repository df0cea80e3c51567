"""What the throughput protocols time: the models (the ``u_*`` models and timm's Swin of U-Swin micro's shape) and
one training or inference step of a model on a fixed random batch.

- :func:`build_model`: a registered ``u_*`` model, or ``timm_swin_micro``;
- :func:`make_train_step` / :func:`make_infer_step`: a step function for :func:`~stm_lab.bench.timing.interleaved`;
- :func:`compare`: images/s of several step functions timed side by side; :func:`format_table` prints them;
- :func:`train_images_per_sec` / :func:`infer_images_per_sec`: one model, one figure;
- :func:`report`: the output shared by the throughput commands (their options: :mod:`stm_lab.parsers`).
"""
from __future__ import annotations

import contextlib
import os
import statistics
import sys
from typing import Callable, Dict, Iterable, Optional

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..models import main_models
from .timing import cuda_sync, interleaved

MICRO_MODELS = tuple(main_models('micro'))
TIMM_SWIN = 'timm_swin_micro'  # timm's Swin with U-Swin micro's widths, depths, heads and window
BASELINE = 'u_dwconv_micro'
AMP_DTYPES = {'fp32': None, 'bf16': torch.bfloat16, 'fp16': torch.float16}

Step = Callable[[], None]


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


def device_of(device) -> torch.device:
    """``device``, or CUDA when available and ``device`` is None."""
    if device is None:
        device = 'cuda' if torch.cuda.is_available() else 'cpu'
    return torch.device(device)


def dtype_name(amp_dtype: Optional[torch.dtype]) -> str:
    return {v: k for k, v in AMP_DTYPES.items()}.get(amp_dtype, str(amp_dtype))


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
    device = device_of(device)
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
    device = device_of(device)
    model.to(device).eval()
    x = torch.randn(batch_size, 3, img_size, img_size, device=device)

    def step():
        with torch.no_grad(), _autocast(device, amp_dtype):
            model(x)

    return step


def _images_per_sec(step: Step, batch_size: int, steps: int, warmup: int, device) -> float:
    t = interleaved({'model': step}, rounds=1, calls=steps, warmup=warmup, sync=cuda_sync(device_of(device)))
    return batch_size / t['model'].median


def train_images_per_sec(model: nn.Module, img_size: int = 64, batch_size: int = 32, steps: int = 10,
                         warmup: int = 3, device=None, amp_dtype: Optional[torch.dtype] = None) -> float:
    """Training images/s (forward + backward + AdamW step) of ``model`` on random data."""
    step = make_train_step(model, img_size, batch_size, device, amp_dtype)
    return _images_per_sec(step, batch_size, steps, warmup, device)


def infer_images_per_sec(model: nn.Module, img_size: int = 224, batch_size: int = 32, steps: int = 10,
                         warmup: int = 3, device=None, amp_dtype: Optional[torch.dtype] = None) -> float:
    """Inference images/s (eval mode, ``torch.no_grad``) of ``model`` on random data."""
    step = make_infer_step(model, img_size, batch_size, device, amp_dtype)
    return _images_per_sec(step, batch_size, steps, warmup, device)


def compare(steps: Dict[str, Step], batch_size: int, rounds: int = 5, steps_per_round: int = 2,
            warmup: int = 2, device=None, log: Optional[Callable[[str], None]] = None) -> Dict[str, dict]:
    """Images/s of several step functions timed side by side (:func:`~stm_lab.bench.timing.interleaved`):
    ``warmup`` steps each, then ``rounds`` rounds of ``steps_per_round`` steps per model. Returns, per name, the
    median images/s over rounds, the best round and the per-round figures."""
    t = interleaved(steps, rounds, steps_per_round, warmup, sync=cuda_sync(device_of(device)), log=log,
                    fmt=lambda s: f'{batch_size / s:.0f}')
    out = {}
    for name, timing in t.items():
        rates = timing.rates(batch_size)
        out[name] = dict(images_per_sec=statistics.median(rates), best_images_per_sec=max(rates),
                         per_round=[round(x, 2) for x in rates])
    return out


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
def setting(args, device: torch.device) -> str:
    """How the figures were taken, for the title line."""
    return (f'{args.amp}, {device}, {args.threads} threads, OMP_WAIT_POLICY={os.environ.get("OMP_WAIT_POLICY")}; '
            f'median of interleaved rounds')


def progress(msg: str) -> None:
    """Progress lines go to stderr; tables go to stdout."""
    print(msg, file=sys.stderr, flush=True)


def report(args, watch, device: torch.device, name: str, title: str, table: str, records: list, config: dict) -> int:
    """Print ``title`` and ``table``; unless ``--no-save``, write ``results/bench/<--name or name>.json`` with
    the benchmark provenance."""
    from ..results import save_result
    from .timing import provenance
    print(title)
    print(table)
    if not args.no_save:
        prov = provenance(watch, device=str(device), threads=args.threads, dtype=args.amp)
        print(f'saved {save_result("bench", args.name or name, records, config=config, prov=prov)}')
    return 0
