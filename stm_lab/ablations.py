"""The paper's architecture ablations at CPU scale (Tables II, VI, VII) and the runs of the 12-epoch seed set (seeds 1-4
of the five A models: the seed spread of every model comparison, and Fig. 7c).

Every run is the ``cpu`` profile's light recipe at 12 epochs on Imagenette 64x64, micro scale, one thread, seed 0; the A
column is the mean of the A model's seeds in the 12-epoch seed set (seed 0 in ``results/cpu/epochs12/``). Each run
exports its result JSON to ``results/cpu/<subdir>/train_<model>.json`` (weights there too, not committed: the command
re-creates them).

    stm-lab ablations list               the runs, their commands and which are done
    stm-lab ablations run --jobs 2       run what is missing, two one-thread runs side by side; resumable:
                                         a killed run continues from its last epoch, finished runs are skipped;
                                         a seed-set run is followed by its per-image outcomes (--which seeds: only
                                         those)
    stm-lab ablations complexity         parameters and MACs at 224 of every variant -> results/paper/

The ``smoke`` profile plans the same runs on the ``*_test`` layouts (seconds each: ``stm-lab ablations run --profile
smoke`` trains them one after another in its own process, :func:`_train_here`), so the book's ablation page is built in
CI from the same code.

Noise. Two sources separate an ablation's top-1 from its A model's: which validation images were drawn (binomial
standard error, ``sqrt(p (1 - p) / n)`` per model, so ``sqrt(2)`` times that for a difference of two models, counted
as if independent, which overstates it for models that err on the same images: the variants' weights are not kept, so
there are no per-image outcomes to pair) and which seed trained it (:func:`seed_sd`: the pooled variance of the A
models over the seed set, ``sd_seed^2 (1 + 1/k)`` for one run minus a mean of k seeds: :func:`diff_noise`). The
verdicts are
:mod:`stm_lab.claims`'s, by its one rule.

A run folder is locked (``flock``) while a process trains it, so two runners never take the same run; the kernel
drops the lock when the process dies, so a killed runner leaves no stale lock.
"""
from __future__ import annotations

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

from . import layout, profiles
from .results import ROOT
from .claims import SEEDS
from .models import MAIN_FAMILIES  # the roster
from .training.engine import RUNS_DIR

PROFILE = profiles.DEFAULT
EPOCHS = profiles.PROFILES[PROFILE].seed_epochs  # the seed set's and the ablation runs' length at cpu


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
        return layout.train(layout.folder(self.profile, self.subdir), self.model).path

    def analysis_command(self, python: str = 'python') -> Optional[List[str]]:
        """A seed-set run's per-image outcomes (:mod:`stm_lab.analysis.outcomes`), made right after its training:
        its weights are not committed."""
        if self.table != 'seed':
            return None
        return [python, '-m', 'stm_lab.analysis.run', 'outcomes', '--profile', self.profile, '--seed',
                str(self.seed), '--models', self.model, '--threads', '1']

    @property
    def outcomes(self) -> Path:
        from .analysis.outcomes import paths
        return paths(self.profile, self.seed, self.model)[1]

    def command(self, python: str = 'python') -> List[str]:
        cmd = [python, '-m', 'stm_lab.training', 'train', '--model', self.model, '--profile', self.profile]
        prof = profiles.get(self.profile)
        if prof.seed_epochs != prof.epochs:
            cmd += ['--epochs', str(prof.seed_epochs)]
        if prof.threads:
            cmd += ['--threads', str(prof.threads)]
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
SEED_SET = tuple(s for s in SEEDS if s)  # the seeds trained here beside seed 0 (the 12-epoch main set)
RESULT_FOLDERS = ('ablations', *(f'seed{s}' for s in SEED_SET))  # results/<profile>/<folder>/ written here


def planned_runs(profile: str = PROFILE) -> List[AblationRun]:
    """All 46 runs of a profile (Tables II, VI, VII and seeds 1-4 of the five A models), in the order they are
    started."""
    scale = profiles.get(profile).scale
    first = {('pvt', 'D'): 0, ('halonet', 'shift'): 0, ('halonet', 'resblock'): 1, ('swin', 'patchds'): 1,
             ('dwconv', 'D'): 3, ('dwconv', 'patchds'): 3}

    def run(family, variant, table, **kw):
        suffix = variant.lower()
        return AblationRun(f'u_{family}_{scale}_{suffix}', 'ablations', table, family, variant,
                           priority=first.get((family, variant), kw.pop('priority', 5)), profile=profile, **kw)
    runs = [run(f, x, 'VI') for x in 'BCDE' for f in MAIN_FAMILIES]
    runs += [run('halonet', v, 'VII', priority=4) for v in TABLE7_VARIANTS]
    runs += [run(f, v, 'II') for f, v in TABLE2_RUNS]
    runs += [AblationRun(f'u_{f}_{scale}', f'seed{s}', 'seed', f, 'A', seed=s,
                         track_consistency=CONSISTENCY_IMAGES[profile], priority=2, profile=profile)
             for s in SEED_SET for f in MAIN_FAMILIES]
    return sorted(runs, key=lambda r: r.priority)


def _train_here(run: AblationRun) -> bool:
    """Train one run in this process, then (a seed-set run) its per-image outcomes; whether both were made. For a
    quick profile's runs (seconds each: starting a process per run would cost more). The result records the
    ``stm-lab train`` command that makes the same run."""
    from .analysis import outcomes
    from .training.config import profile_config
    from .training.engine import train
    prof = profiles.get(run.profile)
    epochs = {'epochs': prof.seed_epochs} if prof.seed_epochs != prof.epochs else {}  # as run.command() says
    cfg = profile_config(run.model, run.profile, seed=run.seed, track_consistency=run.track_consistency, **epochs)
    hook = None
    if run.track_consistency:
        from .training.tracking import consistency_tracker
        hook = consistency_tracker(run.profile, run.track_consistency, cfg.data)
    train(cfg, run.out, progress=False, results_subdir=run.subdir, epoch_hook=hook,
          command=shlex.join(['stm-lab', *run.command()[3:]]))  # [python, -m, stm_lab.training]: stm-lab
    if run.analysis_command():  # outcomes right after the training, as the queue does
        outcomes.run(run.profile, run.seed, [run.model], log=lambda msg: None)
    return run.result.exists() and (not run.analysis_command() or run.outcomes.exists())


# ------------------------------------------------------------------------------------------ tables, verdicts

def _final(path: Path) -> Optional[dict]:
    if not path.exists():
        return None
    doc = json.loads(path.read_text())
    return dict(doc['records'][-1], params=doc['config'].get('params'), doc=doc)


def baseline(profile: str, family: str, seed: int = 0) -> Optional[dict]:
    """The final record of an A model of the 12-epoch seed set (seed 0: the 12-epoch main set)."""
    name = f'u_{family}_{profiles.get(profile).scale}'
    return _final(layout.train(layout.seed_folder(profile, seed), name).path)


def image_se(top1: float, n: int) -> float:
    """Binomial standard error of one model's top-1 (points) on ``n`` images."""
    p = top1 / 100
    return 100 * math.sqrt(max(p * (1 - p), 1e-12) / n)


def seed_sd(profile: str = PROFILE) -> Tuple[Optional[float], int]:
    """(standard deviation of one run's top-1 from the seed alone, number of A models it is estimated from): the
    pooled variance over the 12-epoch seed set (:data:`stm_lab.claims.SEEDS`) of every A model with two seeds or
    more."""
    from .claims import Runs, pooled_seed_variance
    runs = []
    for f in MAIN_FAMILIES:
        scores = {s: r['top1_fp16'] for s in SEEDS if (r := baseline(profile, f, s))}
        if len(scores) > 1:
            runs.append(Runs(f, scores))
    var = pooled_seed_variance(runs)
    return (None, 0) if var is None else (math.sqrt(var), len(runs))


def diff_noise(top1: float, n: int, sd_seed: Optional[float], seeds_a: int = 1) -> float:
    """Standard deviation of a variant's top-1 (one run) minus the mean of its A model over ``seeds_a`` seeds: the
    image sampling of each, the seed spread of the variant's run and of A's mean (s^2 + s^2 / seeds_a, as
    :func:`stm_lab.claims.difference` has it), where the seed spread is known."""
    return math.sqrt(2 * image_se(top1, n) ** 2 + (sd_seed or 0.0) ** 2 * (1 + 1 / seeds_a))


def ablation_rows(profile: str = PROFILE) -> List[dict]:
    """One row per planned ablation run (not the seed set): the paper's value and its difference to the
    paper's A, ours and our difference to our A (the mean over A's seeds, ``seeds_a`` of them), the noise of that
    difference, and whether it is beyond the noise (twice the noise). Runs without results have ``ours=None``."""
    from .paper import TABLE2_BLOCK, TABLE2_STAGE, TABLE6, TABLE7
    sd, _ = seed_sd(profile)
    # A is the mean of every seed of its A model (the 12-epoch seed set), each variant one run (seed 0)
    a_seeds = {f: [x for s in SEEDS if (x := baseline(profile, f, s))] for f in MAIN_FAMILIES}
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
        ours, a_runs = _final(r.result), a_seeds[r.family]
        a = a_runs[0] if a_runs else None
        mean_a = sum(x['top1_fp16'] for x in a_runs) / len(a_runs) if a_runs else None
        row = dict(table=r.table, family=r.family, variant=r.variant, model=r.model, paper=paper, paper_a=paper_a,
                   paper_diff=round(paper - paper_a, 2), ours=None, ours_a=None if a is None else round(mean_a, 2),
                   seeds_a=len(a_runs), diff=None, noise=None, beyond_noise=None, params=None,
                   params_a=a['params'] if a else None)
        if ours and a:
            noise = diff_noise(mean_a, a['val_images'], sd, len(a_runs))
            d = ours['top1_fp16'] - mean_a
            row.update(ours=ours['top1_fp16'], diff=round(d, 2), noise=round(noise, 2),
                       beyond_noise=abs(d) > 2 * noise, params=ours['params'],
                       cpu=ours['doc']['provenance'].get('cpu'), command=ours['doc']['provenance'].get('command'))
        rows.append(row)
    order = ['VI', 'VII', 'II'], ['B', 'C', 'D', 'E', 'switch', '1px', 'shift', 'patchds', 'resblock'], list(MAIN_FAMILIES)
    return sorted(rows, key=lambda r: (order[0].index(r['table']), order[1].index(r['variant']),
                                       order[2].index(r['family'])))


def claims(profile: str = PROFILE) -> dict:
    """The evidence for the paper's ablation claims (Secs. 4.1, 4.2, 5.3; registered with their statements in
    :data:`stm_lab.claims.REGISTRY`): claim id -> ``{'ours', 'noise', 'paper', 'seed_sd'}``, differences in top-1
    points (None where a run is missing); a mean over k models has its noise / sqrt(k)."""
    rows = ablation_rows(profile)
    by = {(r['family'], r['variant']): r for r in rows}
    sd, _ = seed_sd(profile)
    out = {}

    def mean_of(keys, field):
        vals = [by[k][field] for k in keys if by.get(k) and by[k][field] is not None]
        return (sum(vals) / len(vals), len(vals)) if len(vals) == len(keys) else (None, len(vals))

    def add(cid, paper, ours_fn):
        est, noise = ours_fn()
        out[cid] = dict(ours=None if est is None else round(est, 2), noise=None if noise is None else round(noise, 2),
                        paper=None if paper is None else round(paper, 2), seed_sd=sd or 0.0)

    def mean_diff(keys):
        def fn():
            est, k = mean_of(keys, 'diff')
            if est is None:
                return None, None
            return est, max(by[key]['noise'] for key in keys) / math.sqrt(k)
        return fn

    def contrast(a_keys, b_keys, sign=1):  # sign * (mean diff over a_keys minus mean diff over b_keys)
        def fn():
            ea, ka = mean_of(a_keys, 'diff')
            eb, kb = mean_of(b_keys, 'diff')
            if ea is None or eb is None:
                return None, None
            n = max(by[k]['noise'] for k in a_keys + b_keys)
            return sign * (ea - eb), n * math.sqrt(1 / ka + 1 / kb)
        return fn

    fams = list(MAIN_FAMILIES)
    others = [f for f in fams if f != 'dwconv']
    b_keys, c_keys, d_keys = ([(f, v) for f in fams] for v in 'BCD')
    d_keys = [(f, 'D') for f in others]
    paper = {k: by[k]['paper_diff'] for k in by}
    add('ln_after_pool', mean_of(b_keys, 'paper_diff')[0], mean_diff(b_keys))

    def c_minus_b():
        est_c, k = mean_of(c_keys, 'diff')
        est_b, _ = mean_of(b_keys, 'diff')
        if est_c is None or est_b is None:
            return None, None
        return est_c - est_b, max(by[(f, v)]['noise'] for f in fams for v in 'BC') * math.sqrt(2 / k)
    add('no_stage_norm', sum(paper[(f, 'C')] - paper[(f, 'B')] for f in fams) / len(fams), c_minus_b)
    add('convnext_block_hurts', mean_of(d_keys, 'paper_diff')[0], mean_diff(d_keys))
    add('convnext_block_dwconv', paper[('dwconv', 'D')] - mean_of(d_keys, 'paper_diff')[0],
        contrast([('dwconv', 'D')], d_keys))
    add('sr_attn_block', paper[('pvt', 'D')], mean_diff([('pvt', 'D')]))
    for v in ('shift', 'switch', '1px'):
        add(f'halo_{v}', paper[('halonet', v)], mean_diff([('halonet', v)]))
    add('overlap_swin_vs_dwconv', -(paper[('swin', 'patchds')] - paper[('dwconv', 'patchds')]),
        contrast([('swin', 'patchds')], [('dwconv', 'patchds')], -1))
    add('transformer_block_halo', -paper[('halonet', 'resblock')], lambda: _neg(mean_diff([('halonet', 'resblock')])()))
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
    """An exclusive lock on the run folder; None (said) if another process holds it or the run is done."""
    run.out.mkdir(parents=True, exist_ok=True)
    f = open(run.out / '.lock', 'w')
    try:
        fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        f.close()
        f = None
    if f is None or run.result.exists():
        print(f'[ablations] {run.subdir}/{run.model}: taken by another process or done; skipped', flush=True)
        if f:
            f.close()
        return None
    return f


def run_queue(jobs: int = 2, only: Optional[List[str]] = None, python: str = sys.executable,
              profile: str = PROFILE, which: str = 'all') -> int:
    """Train every missing run of a profile, ``jobs`` at a time; returns the number of failed runs. ``which``:
    'ablations' (Tables II, VI, VII), 'seeds' (the seed set) or 'all'."""
    todo = [r for r in planned_runs(profile) if not r.result.exists() and (not only or r.model in only)
            and which in ('all', 'seeds' if r.table == 'seed' else 'ablations')]
    active, failed = {}, 0
    if profiles.get(profile).quick:  # runs of seconds: here, one after another (a process each would cost more)
        for run in todo:
            lock = _take(run)
            if lock is None:
                continue
            try:
                ok, why = _train_here(run), ''
            except Exception as e:  # reported like a failed process: the other runs go on
                ok, why = False, f' ({type(e).__name__}: {e})'
            finally:
                lock.close()
            failed += not ok
            print(f'[ablations] {"done" if ok else "FAILED"} {run.subdir}/{run.model}{why}', flush=True)
        return failed
    env = dict(os.environ, OMP_WAIT_POLICY='PASSIVE', PYTHONUNBUFFERED='1')
    while todo or active:
        while todo and len(active) < jobs:
            run = todo.pop(0)
            lock = _take(run)
            if lock is None:
                continue
            log = open(run.out / 'log.txt', 'a')
            print(f'[ablations] start {shlex.join(run.command())}', flush=True)
            cmd = shlex.join(run.command(python))
            if run.analysis_command():  # outcomes right after the training, while its weights exist
                cmd += ' && ' + shlex.join(run.analysis_command(python))
            proc = subprocess.Popen(cmd, shell=True, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
            active[proc] = (run, lock, log)
        time.sleep(5)
        for proc in [p for p in active if p.poll() is not None]:
            run, lock, log = active.pop(proc)
            log.close()
            lock.close()
            ok = proc.returncode == 0 and run.result.exists() and (not run.analysis_command() or run.outcomes.exists())
            failed += not ok
            print(f'[ablations] {"done" if ok else f"FAILED (exit {proc.returncode})"} {run.subdir}/{run.model}; '
                  f'log {run.out / "log.txt"}', flush=True)
    return failed


def main(argv=None, prog: str = 'stm-lab ablations') -> int:
    from .parsers import command_parser  # the options, with the rest of the stm-lab command tree
    return run_parsed(command_parser('ablations', prog).parse_args(argv))


def run_parsed(args) -> int:
    """Run parsed arguments (``args.what``: list, run or complexity)."""
    if args.what == 'complexity':
        from .results import provenance
        t0 = time.time()
        records = complexity()
        for r in records:
            paper = f'  paper {r["paper_gmacs"]:.2f} G' if r['paper_gmacs'] else ''
            print(f'{r["model"]:28s} {r["params_m"]:7.2f}M {r["gmacs"]:7.2f} GMACs{paper}')
        layout.analysis('paper', 'ablation_complexity').save(records, config=dict(img_size=224, num_classes=1000),
                    prov=provenance('paper', wall_time_s=round(time.time() - t0, 1)))
        return 0
    if args.what == 'list':
        for r in planned_runs(args.profile):
            state = 'done' if r.result.exists() else ('started' if (r.out / 'last.json').exists() else 'todo')
            print(f'{state:8s} Table {r.table:4s} {shlex.join(r.command())}')
        return 0
    if args.jobs < 1:
        print('stm-lab ablations run: error: --jobs must be at least 1', file=sys.stderr)
        return 2
    return 1 if run_queue(args.jobs, args.only, profile=args.profile, which=args.which) else 0


if __name__ == '__main__':
    sys.exit(main())
