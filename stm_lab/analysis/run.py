"""Run the Sec. 6 analyses on a profile's models and save their results (``stm-lab analyze``).

    stm-lab analyze erf|invariance|fgsm|demo|erf_photos|all --profile smoke|cpu [--models ...] [--limit N] [--threads 1]

Profiles:

- ``cpu``: the five ``u_*_micro`` models trained by ``stm-lab train --profile cpu``, rebuilt from
  ``results/cpu/<model>.safetensors`` (:func:`stm_lab.training.checkpoint.load_model`) with the input pipeline each checkpoint
  records (64x64, crop 0.875, ImageNet normalization), on a fixed, seeded subset of Imagenette val (the same
  subset for every model). A model without a checkpoint is skipped with a note.
- ``smoke``: the ``u_*_test`` models, *untrained* (seeded initialization), on the committed fixture
  (``data/fixture``, val split) at the smoke profile's 32x32, with a handful of images: checks the pipeline
  end to end in seconds; the numbers mean nothing. Records say ``trained: False``.

Outputs (``results/<profile>/``), one record schema for both profiles:

- ``erf.json``: one record per (model, stage): the post-processed score map (``erf_score``, S x S, 3 decimals),
  ERF@t for t in (0.2, 0.3, 0.5, 0.99) (side and area ratios, squares centred on the stage's centre unit), the
  shape statistics, the theoretical receptive field (None for DCNv3). :func:`stm_lab.pages.erf.erf_table` flattens it.
- ``invariance.json``: one record per (model, transform, magnitude): translation, rotation and scale sweeps
  (``stm_lab.analysis.invariance``): consistency with the reference view and top-1.
- ``fgsm.json``: one record per (model, epsilon): FGSM top-1 and loss (``stm_lab.analysis.adversarial``).
- ``demo_rotation.json``: one record per (model, photo, angle): the model's top-1 on a demo photo
  (``data/demo``) rotated by 0..45 degrees then centre-cropped (the rotation sweep's views), for the book's
  "rotate a photo" figure; :func:`demo_views` rebuilds the views the models saw.
- ``erf_photos.json``: one record per (model, demo photo, stage 3 or 4): the ERF score map of that one photo
  (the procedure of ``erf.json`` with a single image), stored as 8-bit (``score_u8``: base64 of S x S bytes,
  score x 255 rounded; :func:`erf_photo_score` decodes it), for the ERF page's per-photo maps beside the average.

The qualitative claims of Sec. 6.2-6.3 are decided over the 12-epoch seed set's per-image outcomes
(:mod:`stm_lab.analysis.outcomes`, :mod:`stm_lab.claims`, :func:`stm_lab.pages.robustness.robustness_results`).
"""
from __future__ import annotations

import argparse
import base64
import io
import os
import sys
import time
from dataclasses import dataclass
from typing import Dict, Iterator, List, Optional, Sequence, Tuple

import numpy as np
import torch
import torch.nn.functional as F

from .. import assets, layout, profiles, results
from ..data import ANALYSIS_SEED as SEED  # one seed for every analysis and the training tracker
from ..models import family_of as family
from .invariance import ANGLES, CROP_PCTS, crop, resize_short

ANALYSES = ('erf', 'invariance', 'fgsm', 'demo', 'erf_photos')
ERF_PHOTO_STAGES = (3, 4)  # the last two stages, as in the paper's Fig. 6
FGSM_EPSILONS_255 = (0, 0.5, 1, 2, 4, 8)
DEMO_ANGLES = tuple(range(0, 50, 5))


@dataclass
class Loaded:
    """A model ready for the analyses, with the input pipeline it expects."""
    name: str  # the model name used in records (the micro name at cpu, the test name at smoke)
    model: torch.nn.Module
    img_size: int
    crop_pct: float
    mean: Tuple[float, ...]
    std: Tuple[float, ...]
    classes: List[str]
    trained: bool
    source: str  # checkpoint path (relative to the project where possible) or 'untrained, seed 0'



_rel = results.project_path  # paths as results record them


def checkpoint_path(profile: str, model: str):
    return assets.trained_checkpoint(model, profile)


def _print(msg: str) -> None:
    print(msg, flush=True)


def iter_models(profile: profiles.Profile, models: Optional[Sequence[str]] = None, log=_print) -> Iterator[Loaded]:
    """Each model of the profile that can be had: cpu loads checkpoints (a missing one is skipped with a note),
    smoke builds the untrained test models (seeded)."""
    import stm_lab  # noqa: F401  (registers the models)
    from ..data import class_names, DataConfig
    from ..training.checkpoint import load_model
    from ..training.config import profile_config
    for name in models or profile.models:
        if profile.trained:
            path = checkpoint_path(profile.name, name)
            if not path.exists():
                log(f'[analyze] {name}: skipped, no checkpoint at {_rel(path)} '
                    f'(train it with `stm-lab train --model {name} --profile {profile.name}`)')
                continue
            model, state = load_model(path)
            d = state['data']
            yield Loaded(name, model, d['img_size'], d['crop_pct'], tuple(d['mean']), tuple(d['std']),
                         list(state['classes']), True, _rel(path))
        else:
            from ..models import create_model
            cfg = profile_config(name, profile.name)
            classes = class_names(DataConfig(dataset=profile.dataset, download=False))
            torch.manual_seed(SEED)
            model = create_model(name, num_classes=len(classes), img_size=cfg.data.img_size).eval()
            yield Loaded(name, model, cfg.data.img_size, cfg.data.crop_pct, tuple(cfg.data.mean), tuple(cfg.data.std),
                         classes, False, f'untrained, seed {SEED}')


def load_images(profile: profiles.Profile, limit: int) -> Tuple[torch.Tensor, torch.Tensor, List[str]]:
    """A fixed, seeded subset of ``limit`` images of the profile's split (same for every model and analysis of
    that size): un-cropped float images in [0, 1], ``(N, 3, H, W)``, their labels and the class names."""
    from ..data import split_images
    return split_images(profile.dataset, profile.analyses.split, limit, SEED)


def _check_classes(m: Loaded, classes: List[str]) -> None:
    if list(classes) != list(m.classes):
        raise ValueError(f'{m.name} was trained on classes {m.classes[:3]}..., the data has {classes[:3]}...')


def eval_view(x: torch.Tensor, img_size: int, crop_pct: float) -> torch.Tensor:
    """The evaluation view: short side resized to int(S / crop_pct), centre crop S (as in training's eval)."""
    return crop(resize_short(x, int(img_size / crop_pct)), img_size).contiguous()


# ------------------------------------------------------------------------------------------------ analyses

def run_erf(m: Loaded, images: torch.Tensor, batch_size: int) -> List[dict]:
    """One record per stage: the score map, ERF@t for each threshold, shape statistics, theoretical RF."""
    from .erf import erf_maps, stage_record, theoretical_rf
    maps = erf_maps(m.model, images, img_size=m.img_size, batch_size=batch_size, mean=m.mean, std=m.std,
                    progress=False)
    theo = theoretical_rf(m.model, m.img_size)
    return [dict(model=m.name, family=family(m.name), trained=m.trained, stage=s + 1, img_size=m.img_size,
                 **stage_record(e, theo[s])) for s, e in sorted(maps.items())]


def run_invariance(m: Loaded, images: torch.Tensor, labels: torch.Tensor, batch_size: int) -> List[dict]:
    from .invariance import rotation_sweep, scale_sweep, translation_sweep
    kw = dict(img_size=m.img_size, crop_pct=m.crop_pct, batch_size=batch_size, mean=m.mean, std=m.std,
              progress=False, model=m.name, family=family(m.name), trained=m.trained)
    data = (images, labels)
    rows = translation_sweep(m.model, data, seed=SEED, **kw)
    rows += rotation_sweep(m.model, data, ANGLES, **kw)
    rows += scale_sweep(m.model, data, CROP_PCTS, **kw)
    return rows


def run_fgsm(m: Loaded, images: torch.Tensor, labels: torch.Tensor, batch_size: int) -> List[dict]:
    from .adversarial import fgsm_sweep
    x = eval_view(images, m.img_size, m.crop_pct)
    return fgsm_sweep(m.model, (x, labels), [e / 255 for e in FGSM_EPSILONS_255], batch_size=batch_size,
                      mean=m.mean, std=m.std, progress=False, model=m.name, family=family(m.name),
                      trained=m.trained)


def demo_images() -> Tuple[torch.Tensor, List[dict]]:
    """The demo photos (``data/demo``) as float ``(N, 3, H, W)`` in [0, 1], and their metadata."""
    from PIL import Image
    from ..data import demo_photos
    photos = demo_photos()
    arrs = []
    for p in photos:
        with Image.open(p['path']) as im:
            arrs.append(np.asarray(im.convert('RGB')))
    return torch.from_numpy(np.stack(arrs)).permute(0, 3, 1, 2).float().div_(255), photos


def rotated_view(x: torch.Tensor, angle: float, img_size: int, crop_pct: float = 0.875) -> torch.Tensor:
    """The rotation sweep's view: resize the short side to int(S / crop_pct), rotate counter-clockwise (black
    corners), centre crop S."""
    import torchvision.transforms.v2.functional as TF
    x = resize_short(x, int(img_size / crop_pct))
    if angle:
        x = TF.rotate(x, float(angle), interpolation=TF.InterpolationMode.BILINEAR, fill=0.0)
    return crop(x, img_size).contiguous()


def demo_views(img_size: int, crop_pct: float = 0.875, angles: Sequence[float] = DEMO_ANGLES) -> Dict[float, np.ndarray]:
    """angle -> ``uint8 (N, S, S, 3)`` views of the demo photos, exactly what the models are shown."""
    x, _ = demo_images()
    return {a: (rotated_view(x, a, img_size, crop_pct) * 255).round().byte().permute(0, 2, 3, 1).numpy()
            for a in angles}


def run_erf_photos(m: Loaded, stages: Sequence[int] = ERF_PHOTO_STAGES) -> List[dict]:
    """ERF score maps of each demo photo alone (``erf_maps`` with one image), for the given stages (1-based)."""
    from .erf import erf_maps
    x, photos = demo_images()
    rows = []
    for i, ph in enumerate(photos):
        maps = erf_maps(m.model, x[i:i + 1], [s - 1 for s in stages], img_size=m.img_size, batch_size=1,
                        mean=m.mean, std=m.std, progress=False)
        for s, e in sorted(maps.items()):
            u8 = (e.score().float().clamp(0, 1) * 255).round().to(torch.uint8).cpu().numpy()
            rows.append(dict(model=m.name, family=family(m.name), trained=m.trained, photo=ph['file'],
                             label=ph['label'], label_class=ph['class'], stage=s + 1, img_size=m.img_size,
                             feat_size=list(e.feat_size), centre=list(e.centre), n_images=e.n_images,
                             score_u8=base64.b64encode(u8.tobytes()).decode()))
    return rows


def erf_photo_score(record: dict) -> np.ndarray:
    """The score map of an ``erf_photos.json`` record, float in [0, 1], (S, S)."""
    s = record['img_size']
    return np.frombuffer(base64.b64decode(record['score_u8']), np.uint8).reshape(s, s) / 255.0


@torch.no_grad()
def run_demo(m: Loaded, angles: Sequence[float] = DEMO_ANGLES) -> List[dict]:
    from .common import PixelSpace
    x, photos = demo_images()
    net = PixelSpace(m.model, m.mean, m.std)
    rows = []
    for a in angles:
        p = F.softmax(net(rotated_view(x, a, m.img_size, m.crop_pct)).float(), -1)
        conf, pred = p.max(-1)
        for i, ph in enumerate(photos):
            rows.append(dict(model=m.name, family=family(m.name), trained=m.trained, photo=ph['file'],
                             label=ph['label'], label_class=ph['class'], img_size=m.img_size, crop_pct=m.crop_pct,
                             angle=a, pred=int(pred[i]),
                             pred_class=m.classes[int(pred[i])], prob=round(float(conf[i]), 4),
                             true_prob=round(float(p[i, ph['label']]), 4), correct=bool(pred[i] == ph['label'])))
    return rows


# ------------------------------------------------------------------------------------------------ driver

def analyze(what: str, profile: str, models: Optional[Sequence[str]] = None, limit: Optional[int] = None,
            save: bool = True, log=_print) -> List[dict]:
    """Run one analysis on every available model of the profile; save ``results/<profile>/<name>.json``
    (``demo`` -> ``demo_rotation.json``) unless no model was available. Returns the records."""
    if what not in ANALYSES:
        raise ValueError(f'unknown analysis {what!r}; valid: {", ".join(ANALYSES)}')
    prof = profiles.get(profile, among=profiles.ANALYSIS_PROFILES)
    sizes = prof.analyses
    n = dict(erf=sizes.erf_images, invariance=sizes.invariance_images, fgsm=sizes.fgsm_images, demo=None,
             erf_photos=None)[what]
    if limit is not None and n is not None:
        n = min(n, limit)
    t_all = time.time()
    data = None
    records, done = [], []
    for m in iter_models(prof, models, log):
        t0 = time.time()
        if what not in ('demo', 'erf_photos'):
            if data is None:
                data = load_images(prof, n)
            images, labels, classes = data
            _check_classes(m, classes)
        if what == 'erf':
            rows = run_erf(m, images, sizes.batch_size)
            summary = ', '.join(f's{r["stage"]} {next(a["side_ratio"] for a in r["erf_at"] if a["t"] == 0.5):.2f}'
                                for r in rows)
            summary = f'ERF@50 side ratio {summary}'
        elif what == 'invariance':
            rows = run_invariance(m, images, labels, sizes.batch_size)
            summary = ', '.join(f'{t} consistency {np.mean([r["consistency"] for r in rows if r["transform"] == t]):.3f}'
                                for t in ('shift', 'rotation', 'scale'))
        elif what == 'fgsm':
            rows = run_fgsm(m, images, labels, sizes.batch_size)
            summary = ', '.join(f'{r["epsilon_255"]:g}/255: {r["top1"]:.3f}' for r in rows)
        elif what == 'erf_photos':
            rows = run_erf_photos(m)
            summary = f'{len(rows)} maps'
        else:
            rows = run_demo(m)
            summary = f'{np.mean([r["correct"] for r in rows]):.2f} of photo x angle views correct'
        records += rows
        done.append(m.name)
        log(f'[analyze] {what} {m.name} ({m.source}): {summary} ({time.time() - t0:.1f} s)')
    if not records:
        log(f'[analyze] {what}: no model available at profile {profile}; nothing saved')
        return records
    if save:
        name = result_name(what)
        on_demo = what in ('demo', 'erf_photos')
        config = dict(analysis=what, models=done, dataset='demo photos' if on_demo else prof.dataset,
                      split=None if on_demo else sizes.split, n_images=None if on_demo else len(data[1]),
                      trained=prof.trained, seed=SEED, img_size=sorted({r['img_size'] for r in records})
                      if what in ('erf', 'erf_photos') else None,
                      epsilons_255=list(FGSM_EPSILONS_255) if what == 'fgsm' else None,
                      angles=list(DEMO_ANGLES) if what == 'demo' else None)
        prov = results.provenance(profile, SEED, wall_time_s=round(time.time() - t_all, 1),
                                  loadavg=[round(v, 2) for v in os.getloadavg()])
        if models:
            path, saved, config = results.save_merged(profile, name, records, config, prov, done, SAME_SETTINGS)
        else:
            path, saved = results.save_result(profile, name, records, config=config, prov=prov), records
        log(f'[analyze] saved {_rel(path)} ({len(saved)} records of {len(config["models"])} models, '
            f'{time.time() - t_all:.0f} s)')
    return records


def result_name(what: str) -> str:
    """The result file an analysis writes (``results/<profile>/<name>.json``)."""
    return layout.ANALYSIS_RESULTS[what]


SAME_SETTINGS = ('analysis', 'dataset', 'split', 'n_images', 'trained', 'seed', 'epsilons_255', 'angles')


def load(what: str, profile: str) -> dict:
    """The saved result of an analysis. Reading never computes: a missing one is an error naming the command."""
    try:
        return results.load_result(profile, result_name(what))
    except FileNotFoundError:
        raise FileNotFoundError(f'no {what} result at profile {profile}: make it with `stm-lab analyze {what} '
                                f'--profile {profile}` (or every result: `stm-lab reproduce --profile {profile}`)'
                                ) from None


# ------------------------------------------------------------------------------------------------ records

def image_data_uri(img: np.ndarray, quality: int = 90) -> str:
    """``uint8 (H, W, 3)`` -> a JPEG data URI (for plotly ``go.Image(source=...)``: a few kB per frame, where
    the pixel array itself would cost ~50 kB of page per 64x64 image)."""
    from PIL import Image
    buf = io.BytesIO()
    Image.fromarray(np.asarray(img, np.uint8)).save(buf, format='JPEG', quality=quality)
    return 'data:image/jpeg;base64,' + base64.b64encode(buf.getvalue()).decode()


# ------------------------------------------------------------------------------------------------ CLI

def build_parser(prog: str = 'stm-lab analyze') -> argparse.ArgumentParser:
    """The options of ``stm-lab analyze`` (defined in stm_lab.parsers, with the rest of the command tree)."""
    from ..parsers import command_parser
    return command_parser('analyze', prog)


def main(argv=None, prog: str = 'stm-lab analyze') -> int:
    return run_parsed(build_parser(prog).parse_args(list(sys.argv[1:] if argv is None else argv)))


def run_parsed(args) -> int:
    """Run parsed arguments (``args.what``: an analysis, all, or outcomes)."""
    torch.set_num_threads(args.threads)
    try:
        if args.what == 'outcomes':
            from .outcomes import run as run_outcomes
            if args.seed is None:
                raise ValueError('outcomes needs --seed (the training seed whose runs are analysed)')
            if not run_outcomes(args.profile, args.seed, args.models):
                raise FileNotFoundError(f'no weights of seed {args.seed} to analyse')
            return 0
        for what in (ANALYSES if args.what == 'all' else (args.what,)):
            analyze(what, args.profile, args.models, args.limit, args.save)
    except (KeyError, ValueError, FileNotFoundError) as e:
        print(f'stm-lab analyze: error: {e.args[0] if e.args else e}', file=sys.stderr)
        return 2
    return 0


if __name__ == '__main__':
    sys.exit(main())
