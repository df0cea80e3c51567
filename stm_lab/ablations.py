"""The paper's architecture ablations at CPU scale (Tables II, VI, VII) and the second seed of the main set (Fig. 7c).

Every run is the ``cpu`` profile's light recipe at 12 epochs on Imagenette 64x64, micro scale, one thread; the A
column is the committed 12-epoch main set (``results/cpu/epochs12/``). Each run exports its result JSON to
``results/cpu/<subdir>/train_<model>.json`` (weights there too, not committed: the command re-creates them).

    stm-lab ablations list               the runs, their commands and which are done
    stm-lab ablations run --jobs 2       run what is missing, two one-thread runs side by side; resumable:
                                         a killed run continues from its last epoch, finished runs are skipped
    stm-lab ablations complexity         parameters and MACs at 224 of every variant -> results/paper/

The ``smoke`` profile plans the same runs on the ``*_test`` layouts (seconds each, trained in-process by
:func:`ensure_smoke_runs`,
or as subprocesses by ``stm-lab ablations run --profile smoke``), so the book's ablation page is built in CI from the
same code.

Noise. Two sources separate an ablation's top-1 from its A model's: which validation images were drawn (binomial
standard error, ``sqrt(p (1 - p) / n)`` per model, so ``sqrt(2)`` times that for a difference of two models, counted
as if independent, which overstates it for models that err on the same images) and which seed trained it (the
second seed of the five A models: ``sd_seed = sqrt(mean(d^2) / 2)`` over their seed-to-seed differences ``d``, and
``sqrt(2) sd_seed`` for a difference of two runs). A difference is *beyond the noise* when it exceeds twice their
combined standard deviation; a claim's verdict is decided only then.

A run folder is locked (``flock``) while a process trains it, so two runners never take the same run; the kernel
drops the lock when the process dies, so a killed runner leaves no stale lock.
"""
from __future__ import annotations

import argparse
import fcntl
import os
import shlex
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import List, Optional, Tuple

import json
import math

from . import results
from .results import ROOT
from .models import MAIN_FAMILIES  # the roster
from .training.engine import RUNS_DIR

PROFILE, EPOCHS = 'cpu', 12
SCALE = {'cpu': 'micro', 'smoke': 'test'}
BASELINE_DIR = {'cpu': 'epochs12', 'smoke': ''}  # where the A models (seed 0) are: the same budget as the ablations


@dataclass(frozen=True)
class AblationRun:
    model: str
    subdir: str  # results/<profile>/<subdir>/
    table: str  # 'II', 'VI', 'VII' or 'seed'
    family: str
    variant: str  # 'B'..'E', 'switch', '1px', 'shift', 'patchds', 'resblock', or 'A' (second seed)
    seed: int = 0
    track_consistency: int = 0  # Fig. 7(c): consistency on this many val images after every epoch
    priority: int = 9  # lower runs first: the paper's largest effects first, so early sessions decide the most
    profile: str = PROFILE

    @property
    def out(self) -> Path:
        return RUNS_DIR / self.profile / self.subdir / self.model

    @property
    def result(self) -> Path:
        return results.RESULTS_DIR / self.profile / self.subdir / f'train_{self.model}.json'

    def command(self, python: str = 'python') -> List[str]:
        cmd = [python, '-m', 'stm_lab.training', 'train', '--model', self.model, '--profile', self.profile]
        if self.profile == PROFILE:
            cmd += ['--epochs', str(EPOCHS), '--threads', '1']
        out = self.out.relative_to(ROOT) if self.out.is_relative_to(ROOT) else self.out
        cmd += ['--no-progress', '--out', str(out), '--results-subdir', self.subdir]
        if self.seed:
            cmd += ['--seed', str(self.seed)]
        if self.track_consistency:
            cmd += ['--set', f'track_consistency={self.track_consistency}']
        return cmd


TABLE2_RUNS = (('halonet', 'resblock'), ('swin', 'patchds'), ('dwconv', 'patchds'))
TABLE7_VARIANTS = ('switch', '1px', 'shift')
CONSISTENCY_IMAGES = {'cpu': 200, 'smoke': 8}
RESULT_FOLDERS = ('ablations', 'seed1')  # results/<profile>/<folder>/ written here (the ablations page shows them)


def planned_runs(profile: str = PROFILE) -> List[AblationRun]:
    """All 31 runs of a profile, in the order they are started."""
    scale = SCALE[profile]
    first = {('pvt', 'D'): 0, ('halonet', 'shift'): 0, ('halonet', 'resblock'): 1, ('swin', 'patchds'): 1,
             ('dwconv', 'D'): 3, ('dwconv', 'patchds'): 3}

    def run(family, variant, table, **kw):
        suffix = variant.lower()
        return AblationRun(f'u_{family}_{scale}_{suffix}', 'ablations', table, family, variant,
                           priority=first.get((family, variant), kw.pop('priority', 5)), profile=profile, **kw)
    runs = [run(f, x, 'VI') for x in 'BCDE' for f in MAIN_FAMILIES]
    runs += [run('halonet', v, 'VII', priority=4) for v in TABLE7_VARIANTS]
    runs += [run(f, v, 'II') for f, v in TABLE2_RUNS]
    runs += [AblationRun(f'u_{f}_{scale}', 'seed1', 'seed', f, 'A', seed=1, track_consistency=CONSISTENCY_IMAGES[profile],
                         priority=2, profile=profile) for f in MAIN_FAMILIES]
    return sorted(runs, key=lambda r: r.priority)


def ensure_smoke_runs() -> None:
    """Train the smoke profile's missing runs in this process (tiny models, seconds each). Each result records
    the stm-lab command that makes the same run (not the program that called this, e.g. a notebook kernel)."""
    from .training.config import profile_config
    from .training.engine import ensure_smoke_results, train
    ensure_smoke_results()  # the A models
    for r in planned_runs('smoke'):
        if r.result.exists():
            continue
        cfg = profile_config(r.model, 'smoke', seed=r.seed, track_consistency=r.track_consistency)
        hook = None
        if r.track_consistency:
            from .analysis.run import consistency_tracker
            hook = consistency_tracker('smoke', r.track_consistency, cfg.data)
        command = shlex.join(['stm-lab', *r.command()[3:], '--resume', 'none'])  # [python, -m, module]: stm-lab
        train(cfg, r.out, resume='none', progress=False, results_subdir=r.subdir, epoch_hook=hook, command=command)


# ------------------------------------------------------------------------------------------ tables, verdicts

def _final(path: Path) -> Optional[dict]:
    if not path.exists():
        return None
    doc = json.loads(path.read_text())
    return dict(doc['records'][-1], params=doc['config'].get('params'), doc=doc)


def baseline(profile: str, family: str, seed: int = 0) -> Optional[dict]:
    """The final record of an A model (seed 0: the 12-epoch main set; seed 1: this module's second seed)."""
    name = f'u_{family}_{SCALE[profile]}'
    folder = BASELINE_DIR[profile] if seed == 0 else 'seed1'
    return _final(results.RESULTS_DIR / profile / folder / f'train_{name}.json')


def image_se(top1: float, n: int) -> float:
    """Binomial standard error of one model's top-1 (points) on ``n`` images."""
    p = top1 / 100
    return 100 * math.sqrt(max(p * (1 - p), 1e-12) / n)


def seed_sd(profile: str = PROFILE) -> Tuple[Optional[float], int]:
    """(standard deviation of one run's top-1 from the seed alone, number of models it is estimated from)."""
    diffs = []
    for f in MAIN_FAMILIES:
        a, b = baseline(profile, f, 0), baseline(profile, f, 1)
        if a and b:
            diffs.append(b['top1_fp16'] - a['top1_fp16'])
    if not diffs:
        return None, 0
    return math.sqrt(sum(d * d for d in diffs) / len(diffs) / 2), len(diffs)


def diff_noise(top1: float, n: int, sd_seed: Optional[float]) -> float:
    """Standard deviation of the difference of two runs' top-1 (image sampling and, when known, the seed)."""
    return math.sqrt(2 * image_se(top1, n) ** 2 + 2 * (sd_seed or 0.0) ** 2)


def ablation_rows(profile: str = PROFILE) -> List[dict]:
    """One row per planned ablation run (not the second seed): the paper's value and its difference to the
    paper's A, ours and our difference to our A, the noise of that difference, and whether it is beyond the noise
    (twice the noise). Runs without results have ``ours=None``."""
    from .paper import TABLE2_BLOCK, TABLE2_STAGE, TABLE6, TABLE7
    sd, _ = seed_sd(profile)
    rows = []
    for r in planned_runs(profile):
        if r.table == 'seed':
            continue
        if r.table == 'VI':
            vals = TABLE6[r.family]
            paper, paper_a = vals['ABCDE'.index(r.variant)], vals[0]
        elif r.table == 'VII':
            paper, paper_a = TABLE7[f'u_halonet_small_{r.variant}'][1], TABLE7['u_halonet_small'][1]
        else:
            paper_a, paper = (TABLE2_BLOCK if r.variant == 'resblock' else TABLE2_STAGE)[r.family][::-1]
        ours, a = _final(r.result), baseline(profile, r.family)
        row = dict(table=r.table, family=r.family, variant=r.variant, model=r.model, paper=paper, paper_a=paper_a,
                   paper_diff=round(paper - paper_a, 2), ours=None, ours_a=a['top1_fp16'] if a else None,
                   diff=None, noise=None, beyond_noise=None, params=None, params_a=a['params'] if a else None)
        if ours and a:
            noise = diff_noise(a['top1_fp16'], a['val_images'], sd)
            d = ours['top1_fp16'] - a['top1_fp16']
            row.update(ours=ours['top1_fp16'], diff=round(d, 2), noise=round(noise, 2),
                       beyond_noise=abs(d) > 2 * noise, params=ours['params'],
                       cpu=ours['doc']['provenance'].get('cpu'), command=ours['doc']['provenance'].get('command'))
        rows.append(row)
    order = ['VI', 'VII', 'II'], ['B', 'C', 'D', 'E', 'switch', '1px', 'shift', 'patchds', 'resblock'], list(MAIN_FAMILIES)
    return sorted(rows, key=lambda r: (order[0].index(r['table']), order[1].index(r['variant']),
                                       order[2].index(r['family'])))


# a "loses little or nothing" claim is supported only when the measurement rules out a loss of this many points (the
# size of the effect the paper does report in Table VII: Shift -1.3)
NULL_RESOLUTION = 1.0
NO_LOSS = 'agrees (no loss beyond the noise)'


def verdict(estimate: Optional[float], noise: Optional[float], claim: str) -> str:
    """``claim``: '>0', '<0' or 'no loss'. Decided only beyond twice the noise (see the module docstring). 'no loss'
    does not agree when the estimate is a loss beyond twice the noise, and agrees when even its low end (estimate minus
    twice the noise) is a loss smaller than ``NULL_RESOLUTION`` points; a gain counts for the claim."""
    if estimate is None:
        return 'not yet measured'
    beyond = abs(estimate) > 2 * noise
    if claim == 'no loss':
        if estimate < -2 * noise:
            return 'does not agree'
        return NO_LOSS if estimate - 2 * noise > -NULL_RESOLUTION else 'cannot tell at this scale'
    if not beyond:
        return 'cannot tell at this scale'
    return 'agrees' if (estimate > 0) == (claim == '>0') else 'does not agree'


def claims(profile: str = PROFILE) -> List[dict]:
    """The paper's ablation claims (Secs. 4.1, 4.2, 5.3), each with the paper's evidence, ours, the noise of ours
    and the verdict. Estimates are differences in top-1 points; a mean over k models has its noise / sqrt(k)."""
    rows = ablation_rows(profile)
    by = {(r['family'], r['variant']): r for r in rows}
    out = []

    def mean_of(keys, field):
        vals = [by[k][field] for k in keys if by.get(k) and by[k][field] is not None]
        return (sum(vals) / len(vals), len(vals)) if len(vals) == len(keys) else (None, len(vals))

    def add(cid, text, paper_keys, ours_fn, claim, paper_text=None):
        est, noise = ours_fn()
        paper_est = paper_text if paper_text is not None else mean_of(paper_keys, 'paper_diff')[0]
        out.append(dict(id=cid, claim=text, paper=None if paper_est is None else round(paper_est, 2), ours=None if est is None else round(est, 2),
                        noise=None if noise is None else round(noise, 2), expects=claim,
                        verdict=verdict(est, noise, claim)))

    def mean_diff(keys):
        def fn():
            est, k = mean_of(keys, 'diff')
            if est is None:
                return None, None
            return est, max(by[key]['noise'] for key in keys) / math.sqrt(k)
        return fn

    def contrast(a_keys, b_keys):  # mean diff over a_keys minus mean diff over b_keys
        def fn():
            ea, ka = mean_of(a_keys, 'diff')
            eb, kb = mean_of(b_keys, 'diff')
            if ea is None or eb is None:
                return None, None
            n = max(by[k]['noise'] for k in a_keys + b_keys)
            return ea - eb, n * math.sqrt(1 / ka + 1 / kb)
        return fn

    fams = list(MAIN_FAMILIES)
    others = [f for f in fams if f != 'dwconv']
    b_keys = [(f, 'B') for f in fams]
    add('ln_after_pool', 'LN after global pooling (B) helps (mean of B - A over the five STMs)', b_keys,
        mean_diff(b_keys), '>0')

    def c_minus_b():
        est_c, k = mean_of([(f, 'C') for f in fams], 'diff')
        est_b, _ = mean_of(b_keys, 'diff')
        if est_c is None or est_b is None:
            return None, None
        return est_c - est_b, max(by[(f, v)]['noise'] for f in fams for v in 'BC') * math.sqrt(2 / k)
    paper_cb = sum(by[(f, 'C')]['paper_diff'] - by[(f, 'B')]['paper_diff'] for f in fams) / len(fams)
    add('no_stage_norm', 'Removing the stage norms as well (C) helps further (mean of C - B)', None, c_minus_b, '>0',
        round(paper_cb, 2))
    d_keys = [(f, 'D') for f in others]
    add('convnext_block_hurts', "ConvNeXt's block (D) hurts the STMs other than DW-Conv (mean of D - A over four)",
        d_keys, mean_diff(d_keys), '<0')
    add('convnext_block_dwconv', "DW-Conv fares better with ConvNeXt's block than the others do "
        '(D - A of DW-Conv minus the mean D - A of the four others)', None, contrast([('dwconv', 'D')], d_keys), '>0',
        round(by[('dwconv', 'D')]['paper_diff'] - mean_of(d_keys, 'paper_diff')[0], 2))
    add('sr_attn_block', "SR-Attn loses most with ConvNeXt's block (D - A)", [('pvt', 'D')],
        mean_diff([('pvt', 'D')]), '<0')
    add('halo_shift', 'Halo-Shift (query block at the corner of its window) loses accuracy (Shift - A)',
        [('halonet', 'shift')], mean_diff([('halonet', 'shift')]), '<0')
    for v in ('switch', '1px'):
        add(f'halo_{v}', f'Halo-{v.capitalize() if v == "switch" else v} loses little or nothing ({v} - A)',
            [('halonet', v)], mean_diff([('halonet', v)]), 'no loss')
    paper_ds = -(by[('swin', 'patchds')]['paper_diff'] - by[('dwconv', 'patchds')]['paper_diff'])
    add('overlap_swin_vs_dwconv', 'Overlapped downsampling helps SW-Attn more than DW-Conv '
        '((A - non-overlapped) of Swin minus that of DW-Conv)', None,
        lambda: _neg(contrast([('swin', 'patchds')], [('dwconv', 'patchds')])()), '>0', round(paper_ds, 2))
    add('transformer_block_halo', "The unified (transformer) block helps HaloNet over its own bottleneck block "
        '(A - bottleneck)', None, lambda: _neg(mean_diff([('halonet', 'resblock')])()), '>0',
        -by[('halonet', 'resblock')]['paper_diff'])
    return out


def complexity_models() -> List[str]:
    """Every micro variant and its A model, and the paper-scale models of Table VII (whose MACs the paper gives)."""
    micro = [r.model for r in planned_runs(PROFILE) if r.table != 'seed']
    micro += [f'u_{f}_micro' for f in MAIN_FAMILIES]
    paper = ['u_swin_small', 'u_halonet_small'] + [f'u_halonet_small_{v}' for v in TABLE7_VARIANTS]
    return micro + paper


def complexity(models: Optional[List[str]] = None) -> List[dict]:
    """Parameters and MACs at 224 (1000 classes), with Table VII's MACs where the paper gives them."""
    from .analysis.complexity import table3
    from .paper import TABLE7
    records = table3(models or complexity_models())
    for r in records:
        r['paper_gmacs'] = TABLE7.get(r['model'], (None, None))[0]
    return records


def _neg(pair):
    est, noise = pair
    return (None if est is None else -est), noise


def _take(run: AblationRun):
    """An exclusive lock on the run folder, or None if another process holds it."""
    run.out.mkdir(parents=True, exist_ok=True)
    f = open(run.out / '.lock', 'w')
    try:
        fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        f.close()
        return None
    return f


def run_queue(jobs: int = 2, only: Optional[List[str]] = None, python: str = sys.executable,
              profile: str = PROFILE) -> int:
    """Train every missing run of a profile, ``jobs`` at a time; returns the number of failed runs."""
    todo = [r for r in planned_runs(profile) if not r.result.exists() and (not only or r.model in only)]
    active, failed = {}, 0
    env = dict(os.environ, OMP_WAIT_POLICY='PASSIVE', PYTHONUNBUFFERED='1')
    while todo or active:
        while todo and len(active) < jobs:
            run = todo.pop(0)
            lock = _take(run)
            if lock is None or run.result.exists():
                print(f'[ablations] {run.subdir}/{run.model}: taken by another process or done; skipped', flush=True)
                if lock:
                    lock.close()
                continue
            log = open(run.out / 'log.txt', 'a')
            print(f'[ablations] start {shlex.join(run.command())}', flush=True)
            proc = subprocess.Popen(run.command(python), cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
            active[proc] = (run, lock, log)
        time.sleep(5)
        for proc in [p for p in active if p.poll() is not None]:
            run, lock, log = active.pop(proc)
            log.close()
            lock.close()
            ok = proc.returncode == 0 and run.result.exists()
            failed += not ok
            print(f'[ablations] {"done" if ok else f"FAILED (exit {proc.returncode})"} {run.subdir}/{run.model}; '
                  f'log {run.out / "log.txt"}', flush=True)
    return failed


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog='stm-lab ablations', description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest='what', required=True)
    s = sub.add_parser('list', help='the planned runs and which are done')
    s.add_argument('--profile', default=PROFILE, choices=tuple(SCALE), help='cpu (default) or smoke (the *_test layouts)')
    s = sub.add_parser('run', help='train the missing runs (resumable)')
    s.add_argument('--profile', default=PROFILE, choices=tuple(SCALE), help='cpu (default) or smoke (the *_test layouts)')
    s.add_argument('--jobs', type=int, default=2, help='runs side by side, one thread each (default 2)')
    s.add_argument('--only', nargs='*', help='model names')
    sub.add_parser('complexity', help='parameters and MACs at 224 -> results/paper/ablation_complexity.json')
    args = p.parse_args(argv)
    if args.what == 'complexity':
        from .results import provenance, save_result
        t0 = time.time()
        records = complexity()
        for r in records:
            paper = f'  paper {r["paper_gmacs"]:.2f} G' if r['paper_gmacs'] else ''
            print(f'{r["model"]:28s} {r["params_m"]:7.2f}M {r["gmacs"]:7.2f} GMACs{paper}')
        save_result('paper', 'ablation_complexity', records, config=dict(img_size=224, num_classes=1000),
                    prov=provenance('paper', wall_time_s=round(time.time() - t0, 1)))
        return 0
    if args.what == 'list':
        for r in planned_runs(args.profile):
            state = 'done' if r.result.exists() else ('started' if (r.out / 'last.json').exists() else 'todo')
            print(f'{state:8s} Table {r.table:4s} {shlex.join(r.command())}')
        return 0
    if args.jobs < 1:
        p.error('--jobs must be at least 1')
    return 1 if run_queue(args.jobs, args.only, profile=args.profile) else 0


if __name__ == '__main__':
    sys.exit(main())
