"""Time of the ERF and FGSM analyses on the CPU profile's sizes, against their targets.

    stm-lab bench analyses [--only erf|fgsm] [--models u_swin_micro ...]

Targets on a 2-core machine: ERF maps of the five micro models x 4 stages x 100 images at 64x64 in at most
5 minutes in total; an FGSM sweep (4 epsilons: clean, 0.5/255, 2/255, 8/255) over the Imagenette val split
(3925 images) for the five models in at most 10 minutes. The models are untrained (speed does not depend on
the weights) and the images random (uniform [0, 1], 10 random labels) of the same count and size. Each model's
analysis runs once (minutes; what is compared is the total with its target, not models with each other), and on a
machine shared with other jobs the figures are noisy: the load average is printed beside them. Exits 1 when a
target is missed. Nothing is saved.

``--threads`` defaults to 1: on a 2-core machine shared with other jobs, two intra-op threads ran the
FGSM sweep 7-9x *slower* than one (70 vs 8-10 images/s for u_swin_micro at load ~4.5), because a busy core
stalls the other thread at every parallel region. Pass ``--threads 2`` on an otherwise idle machine.
"""
from __future__ import annotations

import os

import torch

from ..models import main_models
from .timing import interleaved, load_average

FIVE = tuple(main_models('micro'))
ERF_TARGET_S, FGSM_TARGET_S = 300, 600
KINDS = ('erf', 'fgsm')


def _load() -> str:
    load = load_average()
    return ' '.join(f'{x:.1f}' for x in load) if load else '?'


def time_analysis(kind: str, models, n_images: int, img_size: int, batch_size: int) -> float:
    """Seconds the ``erf`` or ``fgsm`` analysis takes for ``models`` in total (one line printed per model)."""
    import timm
    import stm_lab  # noqa: F401  (registers the models)
    from ..analysis.adversarial import PAPER_EPSILONS, fgsm_sweep
    from ..analysis.erf import erf_maps
    gen = torch.Generator().manual_seed(0)
    images = torch.rand(n_images, 3, img_size, img_size, generator=gen)
    labels = torch.randint(10, (n_images,), generator=gen)
    total = 0.0
    for name in models:
        torch.manual_seed(0)
        model = timm.create_model(name, num_classes=10, img_size=img_size)
        if kind == 'erf':
            def analysis():
                erf_maps(model, images, stages=(0, 1, 2, 3), batch_size=batch_size, progress=False)
        else:
            def analysis():
                fgsm_sweep(model, (images, labels), PAPER_EPSILONS, batch_size=batch_size, progress=False)
        dt = interleaved({name: analysis}, rounds=1, warmup=0)[name].median
        total += dt
        print(f'  {name:22s} {dt:7.1f} s  ({n_images / dt:6.1f} images/s)   load avg {_load()}', flush=True)
    return total


# ---------------------------------------------------------------------------------------------- command line
def run(args) -> int:
    if args.models is None:
        args.models = list(FIVE)
    torch.set_num_threads(args.threads)
    print(f'torch {torch.__version__}, {torch.get_num_threads()} threads, {os.cpu_count()} CPUs, '
          f'load avg {_load()} (shared machine: figures are noisy)')
    ok = True
    # analysis -> (what one pass holds, images, batch size, target seconds)
    plan = dict(erf=('4 stages', args.erf_images, 50, ERF_TARGET_S), fgsm=('4 epsilons', args.fgsm_images, 128,
                                                                        FGSM_TARGET_S))
    for kind, (per, n, batch, target) in plan.items():
        if args.only not in (None, kind):
            continue
        print(f'{kind.upper()}: {len(args.models)} models x {per} x {n} random images at '
              f'{args.img_size}x{args.img_size}, untrained')
        t = time_analysis(kind, args.models, n, args.img_size, batch_size=batch)
        ok &= t <= target
        print(f'{kind.upper()} total {t:.1f} s (target <= {target} s: {"met" if t <= target else "MISSED"})')
    return 0 if ok else 1
