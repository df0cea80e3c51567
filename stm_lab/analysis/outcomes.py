"""Per-image outcomes of one trained run, the basis of every model-vs-model claim (``stm-lab analyze outcomes``).

::

    stm-lab analyze outcomes --profile cpu --seed 2 [--models u_swin_micro ...] [--threads 1]

For each model of the profile's roster trained with that seed (the weights a ``--results-subdir`` run exports,
``results/<profile>/<seed folder>/<model>.safetensors``; they are not committed, so this runs right after the
training), the predicted class of every image under every view the paper's robustness analyses use:

- ``clean`` and ``fgsm``: the whole validation split (3,925 Imagenette images): the evaluation view, and FGSM at
  each non-zero epsilon of ``stm_lab.analysis.run.FGSM_EPSILONS_255``;
- ``shift``, ``rotation``, ``scale``: the reference view and the sweeps of :mod:`stm_lab.analysis.invariance`
  (16 shifts, 9 angles, 15 crop ratios) on the whole split at the cpu profile (``stm_lab.profiles``: ``outcome_views_images``; a fixed
  seeded subset where one is set), the same images in the same batches for every model and seed (the shift
  directions are drawn per batch);
- ERF@t of each stage (100 images), as ``erf.json`` has them for the pages' models.

Written as two files per (seed, model) (:func:`paths`): ``outcomes_<model>.npz`` (uint8 class indices, compressed;
anyone can recompute a statistic from them) and ``outcomes_<model>.json`` (provenance, the settings, the summary
numbers). Seed 0 lives with the 12-epoch main set (``epochs12/`` at the cpu profile), seed k in ``seed<k>/``
(``stm_lab.layout.seed_folder``).
"""
from __future__ import annotations

import io
import os
import shlex
import time
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch

from .. import layout, profiles, results
from ..data import subset_indices
from .invariance import ANGLES, CROP_PCTS, default_shifts

VIEW_KINDS = ('shift', 'rotation', 'scale')  # per-image arrays of the invariance subset, (views, images)
ERF_THRESHOLDS = (0.2, 0.3, 0.5, 0.99)


def paths(profile: str, seed: int, model: str) -> Tuple[Path, Path]:
    """(summary JSON, per-image npz) of one run's outcomes."""
    return layout.outcomes(profile, seed, model)


def weights_path(profile: str, seed: int, model: str) -> Path:
    """Where the weights of one run of the seed set are (exported by its training; not committed)."""
    return layout.weights(layout.seed_folder(profile, seed), model)


def compute(m, images: torch.Tensor, labels: torch.Tensor, inv_index: Sequence[int], batch_size: int
            ) -> Tuple[Dict[str, np.ndarray], dict]:
    """Per-image predictions of one loaded model (``stm_lab.analysis.run.Loaded``) on ``images`` (the whole
    split, un-cropped, [0, 1]) and the summary numbers. ``inv_index``: the images (indices into ``images``) the
    invariance sweeps use."""
    from .adversarial import fgsm_sweep
    from .invariance import rotation_sweep, scale_sweep, translation_sweep
    from .run import FGSM_EPSILONS_255, SEED, eval_view, run_erf
    kw = dict(img_size=m.img_size, crop_pct=m.crop_pct, batch_size=batch_size, mean=m.mean, std=m.std,
              progress=False)
    out: Dict[str, np.ndarray] = dict(labels=labels.numpy().astype(np.uint8))
    timings = {}
    t0 = time.perf_counter()
    eps = [e / 255 for e in FGSM_EPSILONS_255]
    keep: dict = {}
    fgsm_rows = fgsm_sweep(m.model, (eval_view(images, m.img_size, m.crop_pct), labels), eps, keep=keep, **kw)
    out['clean'] = keep[0.0].numpy().astype(np.uint8)
    out['fgsm'] = np.stack([keep[e].numpy() for e in eps if e > 0]).astype(np.uint8)
    out['fgsm_eps_255'] = np.array([e for e in FGSM_EPSILONS_255 if e > 0], np.float32)
    timings['fgsm_s'] = round(time.perf_counter() - t0, 1)

    idx = torch.as_tensor(list(inv_index))
    data = (images[idx], labels[idx])
    out['invariance_index'] = idx.numpy().astype(np.uint16)
    sweeps = (('shift', lambda k: translation_sweep(m.model, data, seed=SEED, keep=k, **kw),
               [s for s in default_shifts(m.img_size) if s]),
              ('rotation', lambda k: rotation_sweep(m.model, data, ANGLES, keep=k, **kw), [a for a in ANGLES if a]),
              ('scale', lambda k: scale_sweep(m.model, data, CROP_PCTS, keep=k, **kw), list(CROP_PCTS)))
    inv_rows = []
    for kind, sweep, magnitudes in sweeps:
        t0 = time.perf_counter()
        keep = {}
        inv_rows += sweep(keep)
        out['reference'] = keep['reference'].numpy().astype(np.uint8)  # the same view for the three sweeps
        out[kind] = np.stack([keep[v].reshape(-1).numpy() for v in magnitudes]).astype(np.uint8)
        out[f'{kind}_magnitudes'] = np.array(magnitudes, np.float32)
        timings[f'{kind}_s'] = round(time.perf_counter() - t0, 1)

    t0 = time.perf_counter()
    erf_images = images[subset_indices(len(images), 100)]
    erf = [dict(stage=r['stage'], erf_at=r['erf_at']) for r in run_erf(m, erf_images, batch_size)]
    timings['erf_s'] = round(time.perf_counter() - t0, 1)
    summary = dict(top1=round(float((out['clean'] == out['labels']).mean()), 5),
                   fgsm=[dict(epsilon_255=r['epsilon_255'], top1=round(r['top1'], 5)) for r in fgsm_rows],
                   invariance=[{k: r[k] for k in ('transform', 'magnitude', 'consistency', 'top1', 'n')}
                               for r in inv_rows],
                   erf=erf, timings=timings)
    return out, summary


def consistency(arrays: Dict[str, np.ndarray], kind: str, nonzero: bool = True) -> np.ndarray:
    """Per image of the invariance subset: the share of the ``kind`` views ('shift', 'rotation', 'scale') whose
    prediction equals the reference view's; shifts and angles 0 are not among the stored views, so the mean is
    over the non-zero ones, as the claims use it."""
    return (arrays[kind] == arrays['reference'][None]).mean(0)


def correct(arrays: Dict[str, np.ndarray], kind: str = 'clean') -> np.ndarray:
    """Per image of the whole split: 1 if right ('clean'), or the share of FGSM epsilons still right ('fgsm')."""
    if kind == 'clean':
        return (arrays['clean'] == arrays['labels']).astype(np.float64)
    return (arrays['fgsm'] == arrays['labels'][None]).mean(0)


def save(profile: str, seed: int, model: str, arrays: Dict[str, np.ndarray], doc: dict) -> Tuple[Path, Path]:
    """Write both files atomically (the npz first: a summary never names arrays that are not there)."""
    import json
    jpath, npath = paths(profile, seed, model)
    buf = io.BytesIO()
    np.savez_compressed(buf, **arrays)
    results.atomic_write_bytes(npath, buf.getvalue())
    results.atomic_write_bytes(jpath, (json.dumps(doc, indent=1) + '\n').encode())
    return jpath, npath


def load(profile: str, seed: int, model: str) -> Optional[Dict[str, np.ndarray]]:
    """The per-image arrays of one run, or None when they were not made."""
    _, npath = paths(profile, seed, model)
    if not npath.exists():
        return None
    with np.load(npath, allow_pickle=False) as d:
        return {k: d[k] for k in d.files}


def seeds_with_outcomes(profile: str, model: str, seeds: Sequence[int] = range(10)) -> List[int]:
    """The seeds among ``seeds`` whose outcomes of ``model`` exist."""
    return [s for s in seeds if paths(profile, s, model)[1].exists()]


def run(profile: str, seed: int, models: Optional[Sequence[str]] = None, log=print) -> List[str]:
    """Analyse each model of ``models`` (default: the roster) whose weights for ``seed`` exist; returns the models
    done. A model without weights is skipped with a note (its training has not finished)."""
    from ..training.checkpoint import load_model
    from .run import Loaded, _check_classes, _rel, load_images
    prof = profiles.get(profile, among=profiles.ANALYSIS_PROFILES)
    models = list(models or prof.models)
    data = None
    done = []
    for name in models:
        w = weights_path(profile, seed, name)
        if not w.exists():
            log(f'[outcomes] {name} seed {seed}: skipped, no weights at {_rel(w)} (train it first: stm-lab train '
                f'--model {name} --profile {profile} --seed {seed} --results-subdir {prof.seed_dir(seed)} ...)')
            continue
        t0 = time.time()
        model, state = load_model(w)
        d = state['data']
        m = Loaded(name, model, d['img_size'], d['crop_pct'], tuple(d['mean']), tuple(d['std']),
                   list(state['classes']), True, _rel(w))
        if data is None:
            data = load_images(prof, 10 ** 9)  # the whole split, in its order
        images, labels, classes = data
        _check_classes(m, classes)
        inv_index = subset_indices(len(labels), prof.analyses.outcome_views_images or len(labels))
        arrays, summary = compute(m, images, labels, inv_index, prof.analyses.batch_size)
        command = shlex.join(['stm-lab', 'analyze', 'outcomes', '--profile', profile, '--seed', str(seed),
                              '--models', name, '--threads', str(torch.get_num_threads())])
        prov = dict(results.provenance(profile, seed, wall_time_s=round(time.time() - t0, 1),
                                       loadavg=[round(v, 2) for v in os.getloadavg()]), command=command)
        config = dict(model=name, seed=seed, weights=_rel(w), dataset=prof.dataset, split=prof.analyses.split,
                      images=len(labels), invariance_images=len(inv_index), batch_size=prof.analyses.batch_size,
                      subset_seed=0, arrays=sorted(arrays))
        save(profile, seed, name, arrays, dict(provenance=prov, config=config, summary=summary))
        done.append(name)
        log(f'[outcomes] {name} seed {seed}: top-1 {100 * summary["top1"]:.2f}% on {len(labels)} images, '
            f'{time.time() - t0:.0f} s ({summary["timings"]})')
    return done
