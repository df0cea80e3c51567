"""Evaluate the trained detectors of a profile into ``results/<profile>/detection.json``, measure speed, and the
``stm-lab detect`` command (usage in :mod:`stm_lab.detection.train`); the Detection page and its claims read the
results (:mod:`stm_lab.pages.detection`).

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
import json
import os
import sys
import time
from dataclasses import replace
from pathlib import Path
from typing import Dict, List, Optional, Sequence

import numpy as np
import torch

from .. import layout, results
from ..paper import TABLE5_COLUMNS, TABLE5_MICRO
from ..training.cli import guarded, launch_command
from . import coco_eval, scale, shapes
from .data import collate
from .model import family_and_scale
from .train import (_log, dataset, evaluate_detector, load_detector, profile_config,
                    profile_models, train)

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
        doc = layout.det_train(profile, model).load()
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


_rel = results.project_path  # paths as results record them


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
        path = layout.det_weights(profile, m)
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
        prov['command'] = command or results.command_line()
        if models:  # some models: add to the saved result (two evaluations may run at once)
            path, saved, config = results.save_merged(profile, 'detection', records, config, prov, done,
                                                      same=MERGE_SAME)
        else:
            path, saved = layout.analysis(profile, 'detection').save(records, config=config, prov=prov), records
        log(f'[detect] saved {_rel(path)} ({len(saved)} records of {len(config["models"])} models, '
            f'{time.time() - t0:.0f} s)')
    return records


# ------------------------------------------------------------------------------------------- speed

def _bench_setup(model: str, profile: str, amp: Optional[str] = None):
    """A detector of the profile's run of ``model`` with its optimizer and an endless stream of its training
    batches, and a function doing the run's next training step (:func:`~.train.train_step`). The backbone starts
    from the classification checkpoint the run would load (a trained backbone proposes fewer, better boxes than an
    untrained one, which changes the heads' work); at a quick profile without one, from its seeded initialization."""
    from .train import build, optimizer, pretrained_path, train_step
    cfg = profile_config(model, profile, **({'amp': amp} if amp else {}))
    path = pretrained_path(cfg)
    if path is None or not path.exists():
        cfg = replace(cfg, pretrained='none')
    ds = dataset(cfg, 'train', train=True)
    loader = torch.utils.data.DataLoader(ds, cfg.batch_size, shuffle=True, collate_fn=collate, drop_last=True,
                                         generator=torch.Generator().manual_seed(cfg.seed))
    det, _ = build(cfg)
    opt = optimizer(det, cfg)
    det.train()
    steps_per_epoch = len(loader)
    state = dict(it=iter(loader), step=min(cfg.warmup_iters, steps_per_epoch))

    def step():
        try:
            imgs, targets = next(state['it'])
        except StopIteration:
            state['it'] = iter(loader)
            imgs, targets = next(state['it'])
        train_step(det, opt, cfg, imgs, targets, state['step'], steps_per_epoch, 'cpu')
        state['step'] += 1

    return cfg, det, step


def _companion(model: str, profile: str, threads: int) -> None:
    """The second run of the plan (two trainings side by side): train steps until killed. Runs in its own process,
    started by :func:`bench`, and prints a line once its first step is done."""
    torch.set_num_threads(threads)
    _, _, step = _bench_setup(model, profile)
    step()
    print('ready', flush=True)
    while True:
        step()


def bench(profile: str, models: Optional[Sequence[str]] = None, steps: int = 4, warmup: int = 1, rounds: int = 3,
          companion: bool = True, amp: Optional[str] = None, log=_log) -> List[dict]:
    """Seconds per training step and inference images/s of each model's detector at the profile's settings, timed
    as the runs will go: the run's own step (:func:`~.train.train_step`: its data loading, backbone and learning
    rate schedule included) with the shared timer (:func:`stm_lab.bench.timing.interleaved`: the models side by
    side, ``rounds`` rounds of ``steps`` steps each, the median; wall-clock time) and, with ``companion``, a second
    training of the same kind running in another process throughout, as the plan runs two one-thread trainings
    side by side on two cores (which share caches and memory bandwidth, and may be hyper-threads of one core)."""
    import subprocess
    from ..bench.timing import interleaved
    models = list(models or profile_models(profile))
    threads = torch.get_num_threads()
    partner = None
    if companion:
        code = (f'from stm_lab.detection.run import _companion; '
                f'_companion({models[0]!r}, {profile!r}, {threads})')
        partner = subprocess.Popen([sys.executable, '-c', code], stdout=subprocess.PIPE, text=True)
        if partner.stdout.readline().strip() != 'ready':
            raise RuntimeError(f'the companion training of the bench failed to start (exit code {partner.wait()})')
    try:
        setups = {m: _bench_setup(m, profile, amp) for m in models}
        t = interleaved({m: s[2] for m, s in setups.items()}, rounds=rounds, calls=steps, warmup=warmup,
                        log=lambda line: log(f'[detect] bench{line}'), fmt=lambda sec: f'{sec:.2f} s/step')
        out = []
        for m, (cfg, det, _) in setups.items():
            val = dataset(cfg, 'val', train=False, limit=2 * cfg.batch_size)
            batches = list(torch.utils.data.DataLoader(val, cfg.batch_size, collate_fn=collate))
            det.eval()

            def infer():
                with torch.no_grad():
                    for imgs, _ in batches:
                        det(imgs)
            e = interleaved({m: infer}, rounds=1, warmup=0)[m]
            sec = t[m].median
            rec = dict(model=m, img_size=cfg.detector.img_size, batch_size=cfg.batch_size, amp=cfg.amp,
                       steps=steps, rounds=rounds, train_s_per_step=round(sec, 4),
                       train_s_per_step_rounds=[round(x, 4) for x in t[m].seconds],
                       train_img_per_s=round(cfg.batch_size / sec, 2), eval_img_per_s=round(len(val) / e.median, 2),
                       threads=threads, companion=models[0] if partner else None,
                       backbone_init='none' if cfg.pretrained == 'none' else 'classification checkpoint',
                       params_m=round(sum(p.numel() for p in det.parameters()) / 1e6, 3))
            log(f'[detect] bench {m}: {rec}')
            out.append(rec)
    finally:
        if partner is not None:
            partner.kill()
            partner.wait()
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
        train_s = cfg.epochs * (cfg.shapes.train_images // cfg.batch_size) * r['train_s_per_step']
        quick = (cfg.epochs - 1) // cfg.eval_every if cfg.eval_every else 0
        train_s += (quick * cfg.eval_images + n_val) / r['eval_img_per_s'] + (quick + 1) * COCOEVAL_S  # + the final
        sweep = plan['sweep_images'] * (1 + sum(s * s for s in scale.SCALES))  # the reference pass at 1, then all
        eval_s = (n_val + sweep) / r['eval_img_per_s'] + COCOEVAL_S * (
            2 + plan['bootstrap'] + 2 * len(scale.SCALES) + plan['sweep_bootstrap'] * len(UPSCALES))
        out[r['model']] = dict(train=round(train_s / 3600, 3), evaluate=round(eval_s / 3600, 3))
    return out


def commands(profile: str = 'cpu') -> List[str]:
    """The exact commands that make ``results/<profile>/detection.json``, in order (two trainings can share two
    cores side by side, one thread each)."""
    lines = [f'stm-lab detect data --profile {profile}']
    lines += [f'stm-lab detect train --model {m} --profile {profile} --threads 1' for m in profile_models(profile)]
    lines += [f'stm-lab detect evaluate --profile {profile} --threads 1']
    return lines


SMOKE_COMMAND = 'stm-lab detect run --profile smoke'


def smoke_run(log=_log) -> List[dict]:
    """The smoke profile end to end: generate the tiny set, train the five test detectors, evaluate them."""
    for m in profile_models('smoke'):
        train(profile_config(m, 'smoke'), resume='none', log=log, command=SMOKE_COMMAND)
    return evaluate_profile('smoke', log=log, command=SMOKE_COMMAND)


# ------------------------------------------------------------------------------------------- CLI

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
        over = {k: v for k, v in dict(epochs=args.epochs, pretrained=args.pretrained, data_dir=args.data_dir,
                                      amp=args.amp).items() if v is not None}
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
        train(cfg, resume=args.resume, stop_after=args.stop_after, command=results.command_line(),
              out_dir=Path(args.out) if args.out else None)
    elif args.command == 'evaluate':
        evaluate_profile(args.profile, args.models)
    elif args.command == 'bench':
        from ..bench.timing import Watch, provenance
        watch = Watch()
        recs = bench(args.profile, args.models, args.steps, rounds=args.rounds, companion=args.companion,
                     amp=args.amp)
        hours = core_hours(args.profile, recs)
        for m, h in hours.items():
            print(f'{m}: training about {60 * h["train"]:.0f} min, evaluation about {60 * h["evaluate"]:.0f} min '
                  f'(one thread{", beside another training" if args.companion else ""})')
        if args.save:
            layout.analysis(args.profile, 'detection_throughput').save(
                recs, config=dict(steps=args.steps, rounds=args.rounds, companion=args.companion, core_hours=hours),
                prov=provenance(watch, args.profile))
    elif args.command == 'run':
        smoke_run()
    elif args.command == 'commands':
        print('\n'.join(commands(args.profile)))
    return 0


if __name__ == '__main__':
    sys.exit(main())
