"""Evaluate the trained detectors of a profile into ``results/<profile>/detection.json``, check the paper's claims,
measure speed, and the ``stm-lab detect`` command (usage in :mod:`stm_lab.detection.train`).

``detection.json`` records, by ``kind``:

- ``ap``: per model, box and mask AP, AP50, AP75, AP_S/M/L on the whole validation split, their bootstrap spread
  over images (``se_<metric>``, the same draws for every model, ``boot_<metric>`` the draws themselves, so that
  differences are paired), the training cost and the paper's Table V micro row (COCO, 800 px: another task scale);
- ``scale``: per model and input scale (0.25-3.0), box consistency mAP against the unscaled predictions and box AP
  against the ground truth, on ``sweep_images`` validation images;
- ``demo``: per model, demo image and scale, the boxes (mapped back to the image) with a score of at least 0.5;
  ``demo_image``: the demo images themselves (JPEG data URIs), for the book's figure.
"""
from __future__ import annotations

import argparse
import itertools
import json
import os
import shlex
import sys
import time
from dataclasses import replace
from pathlib import Path
from typing import Dict, List, Optional, Sequence

import numpy as np
import torch

from .. import results
from ..models import display_name
from ..paper import TABLE5_COLUMNS, TABLE5_MICRO
from ..training.cli import guarded, launch_command
from . import coco_eval, scale, shapes
from .data import collate
from .model import family_and_scale
from .train import (DetTrainConfig, _log, dataset, evaluate_detector, load_detector, profile_config,
                    profile_models, result_dir, train)

EVAL = {'smoke': dict(bootstrap=3, sweep_images=4, demo_images=2, sweep_bootstrap=2),
        'cpu': dict(bootstrap=20, sweep_images=50, demo_images=4, sweep_bootstrap=10),
        'paper': dict(bootstrap=20, sweep_images=500, demo_images=4, sweep_bootstrap=10)}
BOOT_METRICS = ('AP', 'AP50', 'APs', 'APm', 'APl')
DEMO_MIN_SCORE = 0.5
UPSCALES = tuple(s for s in scale.SCALES if s > 1)  # the paper's claim is about upscaling


def family(model: str) -> str:
    return family_and_scale(model)[0]


def _spread(n: int, k: int) -> List[int]:
    return sorted(np.random.default_rng(0).permutation(n)[:min(k, n)].tolist())


def evaluate_model(path: Path, profile: str, log=_log) -> List[dict]:
    det, cfg, state = load_detector(path)
    model = cfg.model
    plan = EVAL[profile]
    val = dataset(cfg, 'val', train=False)
    t0 = time.perf_counter()
    metrics, dets = evaluate_detector(det, val)
    doc = val.coco.dataset
    draws = coco_eval.bootstrap_draws(len(doc['images']), plan['bootstrap'])
    boot = coco_eval.bootstrap(doc, dets, draws, 'bbox', BOOT_METRICS)
    rec = dict(kind='ap', model=model, family=family(model), checkpoint=_rel(path), **metrics,
               **{f'se_box_{m}': _sd(v) for m, v in boot.items()}, **{f'boot_box_{m}': v for m, v in boot.items()},
               epochs=cfg.epochs, train_images=cfg.shapes.train_images if cfg.shapes else None,
               params=sum(p.numel() for p in det.parameters()),
               backbone_init=_backbone_init(profile, model), img_size=cfg.detector.img_size)
    paper = TABLE5_MICRO.get(model.replace('_test', '_micro'))
    if paper:
        rec.update({f'paper_{c}': v for c, v in zip(TABLE5_COLUMNS, paper)})
    out = [rec]
    # scale sweep and demo on fixed subsets of the validation images
    idx = _spread(len(val), plan['sweep_images'])
    items = [val[i] for i in idx]
    images, ids = [im for im, _ in items], [t['image_id'] for _, t in items]
    gt = dict(doc, images=[i for i in doc['images'] if i['id'] in set(ids)],
              annotations=[a for a in doc['annotations'] if a['image_id'] in set(ids)])
    rows, per_scale = scale.scale_sweep(det, images, ids, gt, scale.SCALES)
    boot_up = _sweep_bootstrap(det, images, ids, gt, per_scale, plan['sweep_bootstrap'])
    for r in rows:
        out.append(dict(kind='scale', model=model, family=family(model), **r))
    summary = dict(kind='scale_summary', model=model, family=family(model), n=len(ids), scales=list(UPSCALES),
                   consistency_up=_mean([r['consistency_AP'] for r in rows if r['scale'] in UPSCALES]),
                   se_consistency_up=_sd(boot_up), boot_consistency_up=boot_up)
    out.append(summary)
    demo = list(range(min(plan['demo_images'], len(ids))))
    for j in demo:
        for s in scale.SCALES:
            o = per_scale[s][j]
            keep = o['scores'] >= DEMO_MIN_SCORE
            out.append(dict(kind='demo', model=model, family=family(model), image_id=ids[j], scale=s,
                            boxes=[[round(v, 1) for v in b] for b in o['boxes'][keep].tolist()],
                            labels=o['labels'][keep].tolist(),
                            scores=[round(v, 3) for v in o['scores'][keep].tolist()]))
    log(f'[detect] {model}: box AP {metrics["box_AP"]} (+-{rec["se_box_AP"]}), AP50 {metrics["box_AP50"]}, mask AP '
        f'{metrics["mask_AP"]}; box consistency when upscaling {summary["consistency_up"]} '
        f'({time.perf_counter() - t0:.0f} s)')
    return out


def _backbone_init(profile: str, model: str) -> Optional[str]:
    try:
        doc = results.load_result(f'{profile}/detection', f'det_train_{model}')
    except FileNotFoundError:
        return None
    return doc['config'].get('backbone_init')


def _sweep_bootstrap(det, images, ids, gt, per_scale, draws: int) -> List[Optional[float]]:
    """Mean consistency mAP over the upscales, per bootstrap draw of the sweep's images."""
    sizes = {int(i): tuple(im.shape[-2:]) for i, im in zip(ids, images)}
    ref = coco_eval.to_coco_results(per_scale[1.0], ids, masks=False)
    ref_doc = coco_eval.as_ground_truth(sizes, ref, scale.REFERENCE_MIN_SCORE, gt['categories'])
    if not ref_doc['annotations']:
        return []
    dets = {s: coco_eval.to_coco_results(per_scale[s], ids, masks=False) for s in UPSCALES}
    out = []
    for picks in coco_eval.bootstrap_draws(len(ids), draws, seed=1):
        vals = []
        for s in UPSCALES:
            g, d = coco_eval.resample(ref_doc, dets[s], picks)
            vals.append(coco_eval.evaluate(g, d, 'bbox')['AP'])
        out.append(_mean(vals))
    return out


def _mean(v) -> Optional[float]:
    v = [x for x in v if x is not None]
    return round(float(np.mean(v)), 5) if v else None


def _sd(v) -> Optional[float]:
    v = [x for x in v if x is not None]
    return round(float(np.std(v, ddof=1)), 5) if len(v) > 1 else None


def _rel(path: Path) -> str:
    try:
        return str(Path(path).resolve().relative_to(results.ROOT))
    except ValueError:
        return str(path)


def demo_images(profile: str, ids: Sequence[int]) -> List[dict]:
    """The demo images as JPEG data URIs (from the generated validation split)."""
    from PIL import Image
    from ..analysis.run import image_data_uri
    cfg = profile_config(profile_models(profile)[0], profile)
    folder, ann = shapes.split_paths(shapes.ensure(cfg.shapes), 'val')
    out = []
    for i in ids:
        with Image.open(folder / f'{i - 1:06d}.png') as im:
            out.append(dict(kind='demo_image', image_id=int(i), uri=image_data_uri(np.asarray(im.convert('RGB')))))
    return out


# settings that make two models' detection records incomparable
MERGE_SAME = ('scales', 'reference_min_score', 'demo_min_score', 'upscales', 'sweep_images', 'bootstrap',
              'sweep_bootstrap', 'demo_images')


def evaluate_profile(profile: str, models: Optional[Sequence[str]] = None, save: bool = True, log=_log,
                     command: Optional[str] = None) -> List[dict]:
    """Evaluate every trained detector of the profile; write ``results/<profile>/detection.json``."""
    if profile not in EVAL:
        raise ValueError(f'unknown profile {profile!r}; valid: {", ".join(EVAL)}')
    t0 = time.time()
    records, done = [], []
    for m in models or profile_models(profile):
        path = result_dir(profile) / f'{m}.safetensors'
        if not path.exists():
            log(f'[detect] {m}: skipped, no trained detector at {_rel(path)} '
                f'(`stm-lab detect train --model {m} --profile {profile}`)')
            continue
        records += evaluate_model(path, profile, log)
        done.append(m)
    if not records:
        log(f'[detect] no trained detector at profile {profile}; nothing saved')
        return records
    ids = sorted({r['image_id'] for r in records if r['kind'] == 'demo'})
    records += demo_images(profile, ids)
    if save:
        plan = EVAL[profile]
        config = dict(models=done, scales=list(scale.SCALES), reference_min_score=scale.REFERENCE_MIN_SCORE,
                      demo_min_score=DEMO_MIN_SCORE, upscales=list(UPSCALES), **plan)
        prov = results.provenance(profile, 0, wall_time_s=round(time.time() - t0, 1),
                                  loadavg=[round(v, 2) for v in os.getloadavg()])
        prov['command'] = command or _command()
        if models:  # some models: add to the saved result (two evaluations may run at once)
            path, saved, config = results.save_merged(profile, 'detection', records, config, prov, done,
                                                      same=MERGE_SAME)
        else:
            path, saved = results.save_result(profile, 'detection', records, config=config, prov=prov), records
        log(f'[detect] saved {_rel(path)} ({len(saved)} records of {len(config["models"])} models, '
            f'{time.time() - t0:.0f} s)')
    return records


# ------------------------------------------------------------------------------------------- claims

def load(profile: str) -> Optional[dict]:
    try:
        return results.load_result(profile, 'detection')
    except FileNotFoundError:
        return None


def ap_records(doc: Optional[dict]) -> Dict[str, dict]:
    return {r['model']: r for r in (doc or {}).get('records', []) if r['kind'] == 'ap'}


def erf50(profile: str, stage: int = 4) -> Dict[str, float]:
    """ERF@50 (side ratio) of each model's last stage, from ``results/<profile>/erf.json`` (the Fig. 5 x-axis)."""
    try:
        doc = results.load_result(profile, 'erf')
    except FileNotFoundError:
        return {}
    return {r['model']: next(a['side_ratio'] for a in r['erf_at'] if a['t'] == 0.5)
            for r in doc['records'] if r['stage'] == stage}


def fig5_rows(profile: str) -> List[dict]:
    """Fig. 5: per model, ERF@50 of the last stage against box AP_S, AP_M, AP_L (models with both)."""
    erf, aps = erf50(profile), ap_records(load(profile))
    return [dict(model=m, family=family(m), erf50=erf[m], **{k: aps[m][f'box_{k}'] for k in ('APs', 'APm', 'APl')},
                 **{f'se_{k}': aps[m].get(f'se_box_{k}') for k in ('APs', 'APm', 'APl')})
            for m in aps if m in erf]


def _ranks(v: Sequence[float]) -> np.ndarray:
    """Ranks with ties sharing their mean rank (so that equal values carry no order)."""
    v = np.asarray(v, float)
    return np.array([np.mean(np.nonzero(np.sort(v) == x)[0]) for x in v])


def _spearman(x: Sequence[float], y: Sequence[float]) -> Optional[float]:
    """Spearman's rank correlation; None for fewer than 3 points or a constant variable."""
    if len(x) < 3 or len(x) != len(y):
        return None
    rx, ry = _ranks(x), _ranks(y)
    if np.std(rx) == 0 or np.std(ry) == 0:
        return None
    return round(float(np.corrcoef(rx, ry)[0, 1]), 3)


def erf_claim(profile: str) -> Optional[dict]:
    """Fig. 5's claim that ERF@50 does not predict detection accuracy. Disagreement: a strong rank correlation
    (|Spearman| >= 0.9) in all three size buckets. Agreement: a pair of models whose larger-ERF member has the lower
    box AP in some bucket by more than twice the paired bootstrap noise (the paper's U-HaloNet against
    U-InternImage). Otherwise the numbers cannot tell."""
    rows = fig5_rows(profile)
    if len(rows) < 3:
        return None
    aps = ap_records(load(profile))
    rho = {k: _spearman([r['erf50'] for r in rows], [r[k] for r in rows if r[k] is not None])
           if all(r[k] is not None for r in rows) else None for k in ('APs', 'APm', 'APl')}
    counter = None
    for a, b in itertools.permutations(rows, 2):
        if a['erf50'] <= b['erf50']:
            continue
        for k in ('APs', 'APm', 'APl'):
            if a[k] is None or b[k] is None or a[k] >= b[k]:
                continue
            draws = zip(aps[a['model']].get(f'boot_box_{k}') or [], aps[b['model']].get(f'boot_box_{k}') or [])
            pairs = [(x, y) for x, y in draws if x is not None and y is not None]
            se = float(np.std([y - x for x, y in pairs], ddof=1)) if len(pairs) > 1 else None
            gap = b[k] - a[k]
            if se is not None and gap > 2 * se and (counter is None or gap / se > counter['z']):
                counter = dict(larger=a['model'], smaller=b['model'], bucket=k, gap=gap, se=se, z=gap / se)
    strong = all(r is not None and abs(r) >= 0.9 for r in rho.values())
    from ..claims import Verdict
    verdict = Verdict.DISAGREES if strong else (Verdict.AGREES if counter else Verdict.CANNOT_TELL)
    ours = ', '.join(f'{k} {v:+.2f}' if v is not None else f'{k} n/a' for k, v in rho.items())
    noise = (f'{display_name(counter["larger"])} has the larger ERF@50 but {counter["bucket"]} lower than '
             f'{display_name(counter["smaller"])} by {counter["gap"]:.3f} (bootstrap standard error {counter["se"]:.3f})'
             if counter else 'no pair of models contradicts the ERF order beyond twice the bootstrap noise')
    return dict(verdict=verdict, rho=rho, counterexample=counter, ranking=f'Spearman rank correlation of ERF@50 '
                f'(last stage) with box AP: {ours}', noise=noise)


def claims(profile: str) -> Dict[str, object]:
    """The evidence for the paper's detection claims (decided by :mod:`stm_lab.claims`): ``box`` and ``consistency``
    are (model -> score, model -> paired bootstrap draws), box AP and the mean box consistency over the upscales
    1.25-3; ``erf`` is :func:`erf_claim` (None: not measured)."""
    doc = load(profile)
    aps = ap_records(doc)
    summary = {r['model']: r for r in (doc or {}).get('records', []) if r['kind'] == 'scale_summary'}
    return dict(box=({m: r.get('box_AP') for m, r in aps.items()}, {m: r.get('boot_box_AP') for m, r in aps.items()}),
                consistency=({m: r['consistency_up'] for m, r in summary.items()},
                             {m: r['boot_consistency_up'] for m, r in summary.items()}),
                erf=erf_claim(profile) if doc else None)


# ------------------------------------------------------------------------------------------- speed

def bench(profile: str, models: Optional[Sequence[str]] = None, steps: int = 4, warmup: int = 1,
          log=_log) -> List[dict]:
    """Training and inference images per CPU second (of this process, so per core with one thread) for each model at
    the profile's settings: a few steps on the generated set, the backbone untrained (the speed is the same)."""
    from .train import build, optimizer, lr_at
    out = []
    for m in models or profile_models(profile):
        cfg = profile_config(m, profile)
        ds = dataset(cfg, 'train', train=True, limit=(steps + warmup) * cfg.batch_size)
        loader = torch.utils.data.DataLoader(ds, cfg.batch_size, collate_fn=collate, shuffle=False)
        det, _ = build(replace(cfg, pretrained='none'))
        opt = optimizer(det, cfg)
        det.train()
        times = []
        for i, (imgs, targets) in enumerate(loader):
            t0 = time.process_time()  # CPU time of this process: the cost in core time, however busy the machine
            for g in opt.param_groups:
                g['lr'] = lr_at(cfg, cfg.warmup_iters, 1)
            loss = sum(det(imgs, targets).values())
            opt.zero_grad()
            loss.backward()
            opt.step()
            if i >= warmup:
                times.append(time.process_time() - t0)
        val = dataset(cfg, 'val', train=False, limit=2 * cfg.batch_size)
        det.eval()
        t0 = time.process_time()
        with torch.no_grad():
            for imgs, _ in torch.utils.data.DataLoader(val, cfg.batch_size, collate_fn=collate):
                det(imgs)
        eval_speed = len(val) / (time.process_time() - t0)
        train_speed = cfg.batch_size * len(times) / sum(times)
        n_train = cfg.shapes.train_images if cfg.shapes else None
        rec = dict(model=m, img_size=cfg.detector.img_size, batch_size=cfg.batch_size, steps=len(times),
                   train_img_per_s=round(train_speed, 2), eval_img_per_s=round(eval_speed, 2),
                   threads=torch.get_num_threads(),
                   epoch_core_min=round(n_train / train_speed / 60, 2) if n_train else None,
                   params_m=round(sum(p.numel() for p in det.parameters()) / 1e6, 3))
        log(f'[detect] bench {m}: {rec}')
        out.append(rec)
    return out


COCOEVAL_S = 1.5  # core seconds of one COCOeval over the 500 validation images (measured; generous)


def core_hours(profile: str, speeds: List[dict], epochs: Optional[int] = None) -> Dict[str, Dict[str, float]]:
    """model -> estimated core-hours of its training run (the epochs at the measured training speed, the quick and
    final evaluations at the measured inference speed) and of its ``evaluate`` pass (the validation split, the scale
    sweep, whose images cost the square of their scale, and the bootstrap evaluations). The inference speed was
    measured on an untrained detector, whose many low-score boxes make it slower: an upper bound."""
    out = {}
    plan = EVAL[profile]
    for r in speeds:
        cfg = profile_config(r['model'], profile, **({'epochs': epochs} if epochs else {}))
        n_val = cfg.shapes.val_images
        train_s = cfg.epochs * cfg.shapes.train_images / r['train_img_per_s']
        quick = (cfg.epochs - 1) // cfg.eval_every if cfg.eval_every else 0
        train_s += (quick * cfg.eval_images + n_val) / r['eval_img_per_s'] + 2 * COCOEVAL_S
        sweep = plan['sweep_images'] * (1 + sum(s * s for s in scale.SCALES))  # the reference pass at 1, then all
        eval_s = (n_val + sweep) / r['eval_img_per_s'] + COCOEVAL_S * (
            2 + plan['bootstrap'] + 2 * len(scale.SCALES) + plan['sweep_bootstrap'] * len(UPSCALES))
        out[r['model']] = dict(train=round(train_s / 3600, 2), evaluate=round(eval_s / 3600, 2))
    return out


def speed_markdown(profile: str) -> str:
    """The measured speeds (``detection_throughput.json``) and the core time they give each run."""
    try:
        doc = results.load_result(profile, 'detection_throughput')
    except FileNotFoundError:
        return f'*No speed measured yet (`stm-lab detect bench --profile {profile} --threads 1 --save`).*'
    hours = core_hours(profile, doc['records'])
    out = ['| model | train img/s (one core) | inference img/s | training, core-h | evaluate, core-h |',
           '|---|---:|---:|---:|---:|']
    for r in doc['records']:
        h = hours[r['model']]
        out.append(f'| {display_name(r["model"])} | {r["train_img_per_s"]:.1f} | {r["eval_img_per_s"]:.1f} | '
                   f'{h["train"]:.2f} | {h["evaluate"]:.2f} |')
    total = sum(h['train'] + h['evaluate'] for h in hours.values())
    load = doc['provenance'].get('loadavg')
    out += ['', f'Total: about {total:.1f} core-hours ({total / 2:.1f} hours on two cores). Measured over '
                f'{doc["config"]["steps"]} training steps per model with `{doc["provenance"].get("command")}`, as CPU '
                f'time of the process (one thread; CPU: {doc["provenance"].get("cpu")}), while both cores were busy '
                f'with other training runs (load average {load[0] if load else "?"}): on an idle machine it may be '
                f'faster.']
    return '\n'.join(out)


AP50_TARGET = 0.5  # box AP50 on the validation split at which the best detector has clearly learned the task


def training_course(profile: str) -> dict:
    """How the committed training runs went, from their ``det_train_<model>.json``: per model the epochs run, any
    change of schedule on resume, the loss of each epoch, its fall over the last epoch before the first lr drop
    (a run still learning falls by several percent), and the training speed actually achieved (images per second of
    CPU time, quick evaluations included) beside the bench's estimate; and the best final box AP50 against
    ``AP50_TARGET``. ``{}`` when nothing was trained."""
    try:
        bench_speed = {r['model']: r['train_img_per_s']
                       for r in results.load_result(profile, 'detection_throughput')['records']}
    except FileNotFoundError:
        bench_speed = {}
    rows = []
    for m in profile_models(profile):
        try:
            doc = results.load_result(f'{profile}/detection', f'det_train_{m}')
        except FileNotFoundError:
            continue
        cfg = profile_config(m, profile, **{k: doc['config'][k] for k in ('epochs', 'lr_steps') if k in doc['config']})
        epochs = [r for r in doc['records'] if 'loss' in r]
        loss = [r['loss'] for r in epochs]
        drop = cfg.lr_steps[0] if cfg.lr_steps else len(loss)  # last epoch at the full learning rate
        fall = (loss[drop - 2] - loss[drop - 1]) / loss[drop - 2] if 2 <= drop <= len(loss) else None
        cpu_s = sum(r.get('cpu_time_s', 0) for r in epochs)
        speed = len(epochs) * cfg.shapes.train_images / cpu_s if cpu_s else None
        rows.append(dict(model=m, epochs=len(epochs), lr_steps=list(cfg.lr_steps), loss=loss,
                         loss_fall_before_drop=fall, schedule_changes=doc['provenance'].get('schedule_changes', []),
                         img_per_core_s=speed, bench_img_per_s=bench_speed.get(m),
                         speed_ratio=(bench_speed[m] / speed if speed and m in bench_speed else None),
                         box_AP50=doc['records'][-1].get('box_AP50')))
    if not rows:
        return {}
    best = max((r for r in rows if r['box_AP50'] is not None), key=lambda r: r['box_AP50'], default=None)
    return dict(rows=rows, best=best and best['model'], best_AP50=best and best['box_AP50'], target=AP50_TARGET,
                reached=bool(best and best['box_AP50'] >= AP50_TARGET))


def _span(values: Sequence[float], fmt: str) -> str:
    lo, hi = format(min(values), fmt), format(max(values), fmt)
    return lo if lo == hi else f'{lo}-{hi}'


def course_markdown(profile: str) -> str:
    """The page's account of the training runs: their schedule, and why the best model falls short of the target
    when it does, in the measured numbers of :func:`training_course`."""
    c = training_course(profile)
    if not c:
        return '*No detector trained yet.*'
    rows = c['rows']
    lines = []
    for r in rows:
        for ch in r['schedule_changes']:
            lines.append(f"{display_name(r['model'])} ran its first {ch['after_epoch']} epochs under a "
                         f"{ch['epochs']}-epoch schedule (lr drops after epochs {' and '.join(map(str, ch['lr_steps']))}) "
                         f"and was then continued as a {r['epochs']}-epoch run: the learning rate of every finished "
                         f"epoch is the same in both schedules, so it is the run a fresh {r['epochs']}-epoch run "
                         f"would have made (`tests/test_detection.py` checks this equality).")
    ratios = [r['speed_ratio'] for r in rows if r['speed_ratio']]
    speeds = [r['img_per_core_s'] for r in rows if r['img_per_core_s']]
    falls = [r['loss_fall_before_drop'] for r in rows if r['loss_fall_before_drop'] is not None]
    best = next(r for r in rows if r['model'] == c['best'])
    paper_epochs = profile_config(best['model'], 'paper').epochs
    verdict = (f"The best detector, {display_name(c['best'])}, reaches a box AP50 of {c['best_AP50']:.3f} "
               f"({'at least' if c['reached'] else 'below'} the {c['target']:g} taken as the sign of a model that "
               f"has clearly learned the task).")
    if not c['reached'] and falls and speeds:
        verdict += (f" The runs stopped well before convergence: in the last epoch at the full learning rate (epoch "
                    f"{best['lr_steps'][0] if best['lr_steps'] else best['epochs']}) the training loss still fell by "
                    f"{_span(falls, '.0%')}. They have {best['epochs']} epochs of the 1x schedule's "
                    f"{paper_epochs}: training ran at {min(speeds):.1f}-{max(speeds):.1f} images per core-second")
        if ratios:
            verdict += (f", {_span(ratios, '.1f')} times slower than the short benchmark that sized the "
                        f"profile (`stm-lab detect bench`: a few steps of an untrained detector)")
        verdict += f'. More epochs (`--epochs {paper_epochs}`) are the first thing to try with more compute.'
    return '\n\n'.join([verdict] + lines)


def commands(profile: str = 'cpu') -> List[str]:
    """The exact commands that make ``results/<profile>/detection.json``, in order (two trainings can share two
    cores side by side, one thread each)."""
    lines = [f'stm-lab detect data --profile {profile}']
    lines += [f'stm-lab detect train --model {m} --profile {profile} --threads 1' for m in profile_models(profile)]
    lines += [f'stm-lab detect evaluate --profile {profile} --threads 1']
    return lines


SMOKE_COMMAND = 'stm-lab detect run --profile smoke'


def train_docs(profile: str, models: Sequence[str]) -> Dict[str, dict]:
    """model -> its ``det_train_<model>.json`` document under ``results/<profile>/detection`` (models without one are
    left out)."""
    out = {}
    for m in models:
        try:
            out[m] = results.load_result(f'{profile}/detection', f'det_train_{m}')
        except FileNotFoundError:
            continue
    return out


def training_note(model: str, doc: dict) -> str:
    """One line on how a detector was trained (its ``det_train_<model>.json``): where its backbone came from, its
    epochs, core time and command."""
    rep = doc['config'].get('load_report')
    init = (f"{len(rep['loaded']) + len(rep['resized'])} backbone tensors from `{_rel(Path(doc['config']['backbone_init']))}` "
            f"({len(rep['resized'])} refitted), {len(rep['new'])} new" if rep else 'backbone from its seeded '
            'initialization (no classification checkpoint)')
    return (f"- {display_name(model)}: {init}; {doc['records'][-1]['epoch']} epochs, "
            f"{doc['provenance'].get('cpu_time_s', 0) / 60:.0f} core-minutes. Command: "
            f"`{doc['provenance'].get('command')}`")


def setting_text(cfg: DetTrainConfig) -> str:
    """The generated shapes set of a profile's configuration, in words."""
    s = cfg.shapes
    return (f'{s.train_images:,} training and {s.val_images} validation images of {s.img_size}x{s.img_size} px, '
            f'{len(shapes.SHAPES)} shape classes ({", ".join(shapes.SHAPES)}), 1-{s.max_instances} instances per '
            f'image, {s.min_side:g}-{s.max_side:g} px, drawn on '
            + ('Imagenette photos' if s.photos == 'imagenette' else 'the committed fixture photos'))


def heads_text(cfg: DetTrainConfig) -> str:
    """The detector's heads (FPN, box and mask heads, RoI sampling, anchors), in words."""
    d = cfg.detector
    return (f'FPN width {d.fpn_channels}, box head {d.box_head_dim}, mask head {len(d.mask_head_layers)} x '
            f'{d.mask_head_layers[0]} channels, {d.box_batch_size_per_image} sampled RoIs per image, anchors '
            f'{"/".join(map(str, d.anchor_sizes))} px')


def schedule_text(cfg: DetTrainConfig) -> str:
    """The training schedule (epochs, batch, optimizer, warm-up, learning-rate drops, flips), in words."""
    return (f'{cfg.epochs} epochs of batch {cfg.batch_size}, AdamW lr {cfg.lr:g} (weight decay {cfg.weight_decay:g}), '
            f'{cfg.warmup_iters} warm-up steps, lr divided by 10 after epochs {" and ".join(map(str, cfg.lr_steps))}, '
            f'flip {cfg.hflip:g}')


def paper_setting_text(cfg: DetTrainConfig) -> str:
    """The paper's detection setting (its profile's configuration), in words."""
    return (f'COCO train2017 at a shorter side of {cfg.detector.min_size} px (longer at most {cfg.detector.max_size}), '
            f'{cfg.epochs} epochs of batch {cfg.batch_size}, AdamW lr {cfg.lr:g}')


def not_yet_markdown(profile: str) -> str:
    """What the detection page says before a profile's runs exist: the commands that make them, in order, and the
    measured speed at the profile's settings (:func:`speed_markdown`)."""
    cmds = '\n'.join(commands(profile))
    return f"""**The {profile}-profile detection runs have not been made yet**, so the tables and figures
below are empty. They are made, in this order, by

```
{cmds}
```

(the training commands can run two at a time on two cores; each resumes where it stopped). Measured speed at this
profile's settings and the core time it gives:

{speed_markdown(profile)}"""


def smoke_run(log=_log) -> List[dict]:
    """The smoke profile end to end: generate the tiny set, train the five test detectors, evaluate them."""
    for m in profile_models('smoke'):
        train(profile_config(m, 'smoke'), resume='none', log=log, command=SMOKE_COMMAND)
    return evaluate_profile('smoke', log=log, command=SMOKE_COMMAND)


# ------------------------------------------------------------------------------------------- CLI

def _command() -> str:
    """The command line as ``stm-lab detect ...``, however it was started (stm-lab, python -m stm_lab.cli, or this
    module)."""
    args = sys.argv[1:]
    if args[:1] == ['detect']:
        args = args[1:]
    return ' '.join(['stm-lab detect', *map(shlex.quote, args)])


def build_parser(prog: str = 'stm-lab detect') -> argparse.ArgumentParser:
    """The options of ``stm-lab detect`` (defined in stm_lab.parsers, with the rest of the command tree)."""
    from ..parsers import command_parser
    return command_parser('detect', prog)


def main(argv=None, prog: str = 'stm-lab detect') -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = build_parser(prog).parse_args(argv)
    args.argv = argv  # as given (the dry run prints the command back)
    return run_parsed(args)


def run_parsed(args) -> int:
    """Run parsed arguments (``args.command``: data, train, evaluate, bench, run or commands; ``args.argv``: the
    arguments as given, for the dry run)."""
    return guarded(f'stm-lab detect {args.command}', lambda: _dispatch(args),
                   interrupted='interrupted; run the same command again to continue')


def _dispatch(args) -> int:
    if args.threads is not None:
        if args.threads < 1:
            raise ValueError(f'--threads must be at least 1, got {args.threads}')
        torch.set_num_threads(args.threads)
    if args.command == 'data':
        cfg = profile_config(profile_models(args.profile)[0], args.profile)
        folder = shapes.ensure(cfg.shapes)
        for split in shapes.SPLITS:
            doc = json.loads(shapes.split_paths(folder, split)[1].read_text())
            print(f'{split}: {len(doc["images"])} images, {len(doc["annotations"])} instances, by COCO size: '
                  f'{shapes.bucket_counts(doc)} ({folder})')
    elif args.command == 'train':
        over = {k: v for k, v in dict(epochs=args.epochs, pretrained=args.pretrained,
                                      data_dir=args.data_dir).items() if v is not None}
        cfg = profile_config(args.model, args.profile, **over)
        if args.dry_run:
            print(json.dumps(cfg.to_dict(), indent=1))
            from ..models import model_config
            fam, sc = family_and_scale(cfg.model)
            mc = model_config(fam, sc, img_size=cfg.detector.img_size)
            print(f'backbone built for {cfg.detector.img_size} px (the classification rule): mixer options '
                  f'{mc["mixer_options"]}, per stage {list(mc["stage_mixer_options"])}')
            print(f'per process: {cfg.batch_size // cfg.nproc} images on each of {cfg.nproc} processes')
            print(launch_command('stm_lab.detection.run', args.argv, cfg.nproc,
                                 '$COCO' if cfg.dataset == 'coco' else None))
            return 0
        if args.stop_after is not None and args.stop_after < 1:
            raise ValueError(f'--stop-after must be at least 1, got {args.stop_after}')
        train(cfg, resume=args.resume, stop_after=args.stop_after, command=_command(),
              out_dir=Path(args.out) if args.out else None)
    elif args.command == 'evaluate':
        evaluate_profile(args.profile, args.models)
    elif args.command == 'bench':
        recs = bench(args.profile, args.models, args.steps)
        if args.save:
            prov = dict(results.provenance(args.profile, 0, loadavg=[round(v, 2) for v in os.getloadavg()]),
                        command=_command())
            results.save_result(args.profile, 'detection_throughput', recs,
                                config=dict(steps=args.steps, core_hours=core_hours(args.profile, recs)), prov=prov)
    elif args.command == 'run':
        smoke_run()
    elif args.command == 'commands':
        print('\n'.join(commands(args.profile)))
    return 0


if __name__ == '__main__':
    sys.exit(main())
