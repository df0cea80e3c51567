"""The paper's architecture ablations at CPU scale (Tables II, VI, VII) and the second seed of the main set (Fig. 7c).

Every run is the ``cpu`` profile's light recipe at 12 epochs on Imagenette 64x64, micro scale, one thread; the A
column is the committed 12-epoch main set (``results/cpu/epochs12/``). Each run exports its result JSON to
``results/cpu/<subdir>/train_<model>.json`` (weights there too, not committed: the command re-creates them).

    stm-lab ablations list               the runs, their commands and which are done
    stm-lab ablations run --jobs 2       run what is missing, two one-thread runs side by side; resumable:
                                         a killed run continues from its last epoch, finished runs are skipped

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
from typing import List, Optional

from .results import RESULTS_DIR, ROOT

PROFILE, EPOCHS = 'cpu', 12
MAIN_FAMILIES = ('halonet', 'pvt', 'swin', 'dwconv', 'internimage')
BASELINE_DIR = 'epochs12'  # the A column / seed 0


@dataclass(frozen=True)
class AblationRun:
    model: str
    subdir: str  # results/cpu/<subdir>/
    table: str  # 'II', 'VI', 'VII' or 'seed'
    seed: int = 0
    track_consistency: int = 0  # Fig. 7(c): consistency on this many val images after every epoch
    priority: int = 9  # lower runs first: the paper's largest effects first, so early sessions decide the most

    @property
    def out(self) -> Path:
        return ROOT / 'runs' / PROFILE / self.subdir / self.model

    @property
    def result(self) -> Path:
        return RESULTS_DIR / PROFILE / self.subdir / f'train_{self.model}.json'

    def command(self, python: str = 'python') -> List[str]:
        cmd = [python, '-m', 'stm_lab.train', 'train', '--model', self.model, '--profile', PROFILE,
               '--epochs', str(EPOCHS), '--threads', '1', '--no-progress',
               '--out', str(self.out.relative_to(ROOT)), '--results-subdir', self.subdir]
        if self.seed:
            cmd += ['--seed', str(self.seed)]
        if self.track_consistency:
            cmd += ['--set', f'track_consistency={self.track_consistency}']
        return cmd


def planned_runs() -> List[AblationRun]:
    """All 31 runs, in the order they are started."""
    first = {'u_pvt_micro_d': 0, 'u_halonet_micro_shift': 0, 'u_halonet_micro_resblock': 1, 'u_swin_micro_patchds': 1,
             'u_dwconv_micro_d': 3, 'u_dwconv_micro_patchds': 3}
    runs = [AblationRun(f'u_{f}_micro_{x}', 'ablations', 'VI', priority=first.get(f'u_{f}_micro_{x}', 5))
            for x in 'bcde' for f in MAIN_FAMILIES]
    runs += [AblationRun(f'u_halonet_micro_{v}', 'ablations', 'VII', priority=first.get(f'u_halonet_micro_{v}', 4))
             for v in ('shift', 'switch', '1px')]
    runs += [AblationRun(m, 'ablations', 'II', priority=first[m])
             for m in ('u_halonet_micro_resblock', 'u_swin_micro_patchds', 'u_dwconv_micro_patchds')]
    runs += [AblationRun(f'u_{f}_micro', 'seed1', 'seed', seed=1, track_consistency=200, priority=2)
             for f in MAIN_FAMILIES]
    return sorted(runs, key=lambda r: r.priority)


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


def run_queue(jobs: int = 2, only: Optional[List[str]] = None, python: str = sys.executable) -> int:
    """Train every missing run, ``jobs`` at a time; returns the number of failed runs."""
    todo = [r for r in planned_runs() if not r.result.exists() and (not only or r.model in only)]
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
    sub.add_parser('list', help='the planned runs and which are done')
    s = sub.add_parser('run', help='train the missing runs (resumable)')
    s.add_argument('--jobs', type=int, default=2, help='runs side by side, one thread each (default 2)')
    s.add_argument('--only', nargs='*', help='model names')
    args = p.parse_args(argv)
    if args.what == 'list':
        for r in planned_runs():
            state = 'done' if r.result.exists() else ('started' if (r.out / 'last.json').exists() else 'todo')
            print(f'{state:8s} Table {r.table:4s} {shlex.join(r.command())}')
        return 0
    if args.jobs < 1:
        p.error('--jobs must be at least 1')
    return 1 if run_queue(args.jobs, args.only) else 0


if __name__ == '__main__':
    sys.exit(main())
