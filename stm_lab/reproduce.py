"""Reproduce everything at a profile, running only what is missing (``stm-lab reproduce``).

    stm-lab reproduce --profile smoke|cpu|paper [--only STEP ...] [--skip STEP ...] [--models M ...] [--dry-run]

The plan is an ordered list of steps, each an ``stm-lab`` command (the book build: ``jupyter-book``) with the
result it makes:

- ``complexity:table3``, ``complexity:ablations``: parameters and MACs at 224 (``results/paper/``, every profile);
- ``train:<model>``: one training per model (``results/<profile>/train_<model>.json``); the trainer resumes an
  interrupted run from its run folder;
- ``summary``: trained top-1 beside Table III (``table3_accuracy.json``);
- ``analyze:<what>``: ERF, invariance, FGSM, the rotation demo, per-photo ERFs (smoke, cpu); at smoke, whose main
  runs are the seed set's seed 0, also ``analyze:outcomes`` (their per-image outcomes);
- ``ablations``: the runs of Tables II, VI, VII (smoke, cpu; ``results/<profile>/ablations/``);
- ``seeds``: seeds 1-4 of the five models at 12 epochs, each with its per-image outcomes made right after its
  training (``results/<profile>/seed<k>/``; seed 0 is ``epochs12/``): the basis of the model-vs-model claims;
- ``detect:data``, ``detect:train:<model>``, ``detect:evaluate``: Mask R-CNN (``results/<profile>/detection*``);
- ``notebooks``: the executed notebooks (``book/generated/``; rerun when missing, executed at another profile,
  failed, or older than their source or than a result), then ``book``: ``jupyter-book build`` into ``_build/html``.

A step runs when its result is missing or a step it depends on runs. A failed step is reported and the others go on;
a step that needs a failed (or skipped) one is skipped. The end is a table of every step with its status (done
already, ran, failed, skipped) and time; the exit status is 1 if a step failed, 130 when interrupted (run the same
command again to continue). ``--profile paper`` runs nothing: it prints the plan with the commands (``torchrun`` for
the trainings, as ``stm-lab train ... --dry-run`` prints them); ``--dry-run`` does the same at any profile.
"""
from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import shlex
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence, Tuple

from . import layout, profiles, results
from .cli import GENERATED_DIR, NOTEBOOKS_DIR
from .models import family_of
from .results import ROOT

ANALYSES = layout.ANALYSIS_RESULTS  # analysis -> its result name
BOOK_SOURCES = (ROOT / 'book', ROOT / '_toc.yml', ROOT / '_config.yml')
BUILD_DIR = ROOT / '_build'

DONE, RAN, FAILED, SKIPPED, TODO, INTERRUPTED, NOT_RUN = (
    'done already', 'ran', 'failed', 'skipped', 'to run', 'interrupted', 'not run')


@dataclass
class Step:
    """One step of the plan: an ``stm-lab`` command (``argv`` after ``stm-lab``; ``program`` for another program)
    and how to tell that its result is there (``check``: None when it is, else what is missing)."""
    name: str
    argv: Tuple[str, ...]
    check: Callable[[], Optional[str]] = field(repr=False)
    needs: Tuple[str, ...] = ()  # steps whose results it reads: it is skipped when one of them fails
    after: Tuple[str, ...] = ()  # steps it shows: it reruns when they run, and runs even when they fail
    model: Optional[str] = None
    program: Optional[str] = None  # None: stm-lab
    torchrun: bool = False  # paper trainings: shown as the torchrun command of their --dry-run
    if_needed: bool = False  # makes what later steps need and nothing else (the detection set): runs only for them
    missing: Optional[str] = None  # what check() said when the plan was made
    status: str = TODO

    @property
    def group(self) -> str:
        return self.name.split(':')[0]

    def command(self) -> List[str]:
        if self.program:
            return [self.program, *self.argv]
        return [sys.executable, '-m', 'stm_lab.cli', *self.argv]

    def display(self) -> str:
        if self.program:
            return shlex.join([Path(self.program).name, *self.argv])
        imports = [m for m in os.environ.get(_import_env(), '').split(',') if m]
        return shlex.join(['stm-lab', *[a for m in imports for a in ('--import', m)], *self.argv])


def _import_env() -> str:
    from .mixers import IMPORT_ENV
    return IMPORT_ENV


# ------------------------------------------------------------------------------------------------ result checks

def _rel(path: Path) -> str:
    try:
        return str(Path(path).relative_to(ROOT))
    except ValueError:
        return str(path)


def files_check(*paths: Callable[[], Path]) -> Callable[[], Optional[str]]:
    """Done when every file exists (paths are functions, so that results.RESULTS_DIR is read when checking)."""
    def check():
        for p in paths:
            if not p().exists():
                return f'no {_rel(p())}'
        return None
    return check


def models_check(profile: str, name: str, models: Sequence[str]) -> Callable[[], Optional[str]]:
    """Done when ``results/<profile>/<name>.json`` exists and was computed for every model of ``models``."""
    def check():
        result = layout.analysis(profile, name)
        path = result.path
        if not path.exists():
            return f'no {_rel(path)}'
        try:
            have = set(result.load()['config'].get('models') or [])
        except ValueError as e:
            return str(e)
        lack = [m for m in models if m not in have]
        return f'{_rel(path)} lacks {", ".join(lack)}' if lack else None
    return check


def _mtime(path: Path) -> float:
    try:
        return path.stat().st_mtime
    except OSError:
        return 0.0


def _newest(root: Path, patterns: Sequence[str]) -> Tuple[float, Optional[Path]]:
    best, where = 0.0, None
    if root.is_file():
        return _mtime(root), root
    for pat in patterns:
        for p in root.rglob(pat):
            if 'node_modules' in p.parts:  # the lab's npm runtime (book/lab/)
                continue
            t = _mtime(p)
            if t > best:
                best, where = t, p
    return best, where


def _executed_profile(path: Path) -> Tuple[Optional[str], bool]:
    """(the profile a notebook was executed at, whether papermill recorded an error) from its metadata."""
    try:
        meta = json.loads(path.read_text()).get('metadata', {}).get('papermill', {})
    except (OSError, ValueError):
        return None, True
    return (meta.get('parameters') or {}).get('profile'), bool(meta.get('exception'))


def stale_notebooks(profile: str) -> Dict[str, str]:
    """notebook name -> why its executed copy in ``book/generated/`` must be made again (missing, executed at another
    profile, failed, older than its source, or older than a result file newer than every executed notebook)."""
    out = {}
    sources = sorted(NOTEBOOKS_DIR.glob('*.ipynb'))
    executed = [GENERATED_DIR / s.name for s in sources if (GENERATED_DIR / s.name).exists()]
    newest_nb = max((_mtime(p) for p in executed), default=0.0)
    # the results the pages read: the profile's, and the profile-free ones (paper-scale complexity, benchmarks)
    newest_result, which = max((_newest(results.RESULTS_DIR / d, ('*.json', '*.safetensors'))
                                for d in dict.fromkeys((profile, 'paper', 'bench'))), key=lambda tw: tw[0])
    for src in sources:
        out_nb = GENERATED_DIR / src.name
        if not out_nb.exists():
            out[src.stem] = 'not executed'
            continue
        prof, failed = _executed_profile(out_nb)
        if prof != profile:
            out[src.stem] = f'executed at profile {prof}'
        elif failed:
            out[src.stem] = 'failed when last executed'
        elif _mtime(src) > _mtime(out_nb):
            out[src.stem] = 'its source changed since'
        elif newest_result > newest_nb:
            out[src.stem] = f'{_rel(which)} changed since'
    return out


def notebooks_check(profile: str) -> Callable[[], Optional[str]]:
    def check():
        stale = stale_notebooks(profile)
        if not stale:
            return None
        reasons = sorted(set(stale.values()))
        return f'{len(stale)} to execute ({"; ".join(reasons)})'
    return check


def book_check() -> Optional[str]:
    index = BUILD_DIR / 'html' / 'index.html'
    if not index.exists():
        return f'no {_rel(index)}'
    built = _mtime(index)
    for root in (GENERATED_DIR, *BOOK_SOURCES):
        t, where = _newest(root, ('*.ipynb', '*.md', '*.bib'))
        if t > built:
            return f'{_rel(where)} changed since the last build'
    return None


# ------------------------------------------------------------------------------------------------ the plan

def registered_models(profile: str) -> List[str]:
    """Models ``--models`` accepts at a profile: ``u_<family>_<scale>`` of every registered family (a user's too) at
    the profile's scales."""
    import timm
    import stm_lab  # noqa: F401  (registers the models, and a user's through $STM_LAB_IMPORT)
    from .models import FAMILIES
    names = set(timm.list_models('u_*'))
    return [f'u_{f}_{s}' for s in profiles.get(profile).scales for f in FAMILIES if f'u_{f}_{s}' in names]


def default_models(profile: str) -> List[str]:
    return list(profiles.get(profile).models)


def _train_steps(profile: str, models: Sequence[str]) -> List[Step]:
    out = []
    for m in models:
        argv = ['train', '--model', m, '--profile', profile, '--no-progress']
        out.append(Step(f'train:{m}', tuple(argv if profile != 'paper' else argv[:5]), model=m,
                        torchrun=profile == 'paper',
                        check=files_check(lambda m=m: layout.train(profile, m).path,
                                          lambda m=m: layout.weights(profile, m))))
    return out


def _ablation_steps(profile: str, models: Sequence[str], restricted: bool) -> List[Step]:
    from .ablations import planned_runs
    families = {family_of(m) for m in models}
    steps = []
    for which in ('ablations', 'seeds'):
        runs = [r for r in planned_runs(profile) if r.family in families and (r.table == 'seed') == (which == 'seeds')]
        if not runs:
            continue
        argv = ['ablations', 'run', '--profile', profile, '--which', which]
        if restricted:
            argv += ['--only', *sorted({r.model for r in runs})]

        def check(runs=runs):
            lack = [f'{r.subdir}/{r.model}' for r in runs if not r.result.exists()]
            return None if not lack else (f'{len(lack)} of {len(runs)} runs to train'
                                          + (f' ({", ".join(lack)})' if len(lack) <= 3 else ''))
        steps.append(Step(which, tuple(argv), check))
    return steps


def _detector_check(profile: str, model: str) -> Callable[[], Optional[str]]:
    """A trained detector: its ``det_train_<model>.json``, and its weights while ``detection.json`` still lacks the model
    (the weights of subfolders are not committed: once evaluated, the JSON results are what the book reads)."""
    def check():
        record, weights = layout.det_train(profile, model).path, layout.det_weights(profile, model)
        if not record.exists():
            return f'no {_rel(record)}'
        if not weights.exists() and models_check(profile, 'detection', [model])():
            return f'no {_rel(weights)} to evaluate'
        return None
    return check


def _detection_steps(profile: str, models: Sequence[str], restricted: bool) -> List[Step]:
    prof = profiles.get(profile)
    trains = []
    for m in models:
        argv = ['detect', 'train', '--model', m, '--profile', profile]
        if prof.threads:
            argv += ['--threads', str(prof.threads)]
        trains.append(Step(f'detect:train:{m}', tuple(argv), model=m, torchrun=profile == 'paper',
                           needs=(f'train:{m}',) if not prof.quick else (), after=(f'train:{m}',),
                           check=_detector_check(profile, m)))
    if profile == 'paper':  # COCO from --data-dir; no evaluate command at this profile
        return trains
    argv = ['detect', 'evaluate', '--profile', profile] + (['--threads', str(prof.threads)] if prof.threads else [])
    if restricted:
        argv += ['--models', *models]
    evaluate = Step('detect:evaluate', tuple(argv), models_check(profile, 'detection', models),
                    needs=tuple(s.name for s in trains))
    # the generated set (cached under .cache/, not a result) is made when a detection step is to run
    data = Step('detect:data', ('detect', 'data', '--profile', profile), lambda: None, if_needed=True)
    for s in trains:
        s.needs = (*s.needs, data.name)
    evaluate.needs = (*evaluate.needs, data.name)
    return [data, *trains, evaluate]


def all_steps(profile: str, models: Optional[Sequence[str]] = None) -> List[Step]:
    """Every step of a profile, in order, with their dependencies (before any ``--only`` selection)."""
    prof = profiles.get(profile)  # an unknown name fails here, with the valid ones
    restricted = bool(models)
    models = list(models or default_models(profile))
    paper = lambda name: (lambda: layout.analysis('paper', name).path)  # noqa: E731
    steps = [Step('complexity:table3', ('complexity',), files_check(paper('table3_complexity'))),
             Step('complexity:ablations', ('ablations', 'complexity'), files_check(paper('ablation_complexity')))]
    trains = _train_steps(profile, models)
    steps += trains
    roster = [m for m in default_models(profile) if m in models]  # `summary` covers the profile's roster
    steps.append(Step('summary', ('summary', '--profile', profile, '--save'),
                      models_check(profile, 'table3_accuracy', roster), needs=tuple(s.name for s in trains)))
    if profile == 'paper':
        det_models = [m for m in models if m.endswith('_micro')] if not restricted else models
        return steps + _detection_steps(profile, det_models, restricted)
    for what, name in ANALYSES.items():
        argv = ['analyze', what, '--profile', profile] + (['--models', *models] if restricted else [])
        by_model = tuple(s.name for s in trains)
        # cpu analyses load the trained checkpoints; smoke ones use untrained models
        steps.append(Step(f'analyze:{what}', tuple(argv), models_check(profile, name, models),
                          needs=by_model if prof.trained else ()))
    if not prof.seed0_dir:  # the main runs are the seed set's seed 0 (smoke): their per-image outcomes, as seeds 1-4's
        argv = ('analyze', 'outcomes', '--profile', profile, '--seed', '0', *(('--models', *models) if restricted else ()))
        steps.append(Step('analyze:outcomes', argv, files_check(*(lambda m=m: layout.outcomes(profile, 0, m)[1]
                                                                  for m in models)),
                          needs=tuple(s.name for s in trains)))
    steps += _ablation_steps(profile, models, restricted)
    steps += _detection_steps(profile, models, restricted)
    earlier = tuple(s.name for s in steps)
    steps.append(Step('notebooks', ('notebooks', '--profile', profile), notebooks_check(profile), after=earlier))
    jb = Path(sys.executable).parent / 'jupyter-book'
    steps.append(Step('book', ('build', '.', '--all', '--keep-going', '-W'), book_check, after=('notebooks',),
                      program=str(jb) if jb.exists() else 'jupyter-book'))
    return steps


def selectors(steps: Sequence[Step]) -> List[str]:
    """Names ``--only`` accepts: each step's name and each group a name starts with (``train``, ``detect:train``)."""
    out = []
    for s in steps:
        parts = s.name.split(':')
        for i in range(1, len(parts) + 1):
            name = ':'.join(parts[:i])
            if name not in out:
                out.append(name)
    return out


def select(steps: Sequence[Step], only: Optional[Sequence[str]], skip: Optional[Sequence[str]] = None) -> List[Step]:
    """The steps named by ``only`` (all when None), less those named by ``skip`` (names or groups, as selectors)."""
    valid = selectors(steps)
    unknown = [o for o in (*(only or ()), *(skip or ())) if o not in valid]
    if unknown:
        raise ValueError(f'unknown step {", ".join(map(repr, unknown))}; valid: {", ".join(valid)}')
    named = lambda s, names: any(s.name == o or s.name.startswith(o + ':') for o in names)  # noqa: E731
    return [s for s in steps if (not only or named(s, only)) and not named(s, skip or ())]


def check_models(profile: str, models: Optional[Sequence[str]]) -> None:
    if not models:
        return
    valid = registered_models(profile)
    unknown = [m for m in models if m not in valid]
    if unknown:
        raise ValueError(f'unknown model {", ".join(map(repr, unknown))} at profile {profile}; valid: '
                         f'{", ".join(valid)} (a model of your own mixer: stm-lab --import MODULE reproduce ...)')


def build_plan(profile: str, only: Optional[Sequence[str]] = None,
               models: Optional[Sequence[str]] = None, skip: Optional[Sequence[str]] = None) -> List[Step]:
    """The selected steps in order, each with ``status`` 'done already' or 'to run' (and ``missing``, what its check
    found missing). A step runs when its result is missing or when a step it needs or shows runs."""
    check_models(profile, models)
    models = list(dict.fromkeys(models)) if models else None
    plan = select(all_steps(profile, models), only, skip)
    planned = set()
    for s in plan:
        s.missing = s.check()
        upstream = [d for d in dict.fromkeys((*s.needs, *s.after)) if d in planned]
        if s.missing is None and upstream:
            s.missing = f'{upstream[0]} runs first' + (f' (and {len(upstream) - 1} more)' if len(upstream) > 1 else '')
        s.status = DONE if s.missing is None else TODO
        if s.status == TODO:
            planned.add(s.name)
    for s in plan:
        if s.if_needed and s.status == DONE:  # needed by a step to run: runs too (its dependents need not rerun)
            users = [t.name for t in plan if s.name in t.needs and t.status == TODO]
            if users:
                s.status, s.missing = TODO, f'needed by {users[0]}' + (f' and {len(users) - 1} more'
                                                                      if len(users) > 1 else '')
    for s in plan:  # notebooks: all of them again when anything before them runs, else only the stale ones
        if s.name == 'notebooks' and s.status == TODO and not any(d in planned for d in s.after):
            stale = stale_notebooks(profile)
            if stale and len(stale) < len(list(NOTEBOOKS_DIR.glob('*.ipynb'))):
                s.argv = (*s.argv, '--only', *sorted(stale))
    return plan


# ------------------------------------------------------------------------------------------------ running

def run_subprocess(step: Step) -> int:
    """Run a step's command in the project folder, its output going to this terminal. On Ctrl-C (which the child
    receives too) the child is given time to stop cleanly (a training saves where it was)."""
    env = dict(os.environ, PYTHONUNBUFFERED='1')
    proc = subprocess.Popen(step.command(), cwd=ROOT, env=env)
    try:
        return proc.wait()
    except KeyboardInterrupt:
        try:
            proc.wait(timeout=120)
        except subprocess.TimeoutExpired:
            proc.terminate()
            proc.wait()
        raise


@dataclass
class Row:
    step: str
    status: str
    seconds: Optional[float] = None
    note: str = ''


def execute(plan: Sequence[Step], runner: Callable[[Step], int] = run_subprocess, log=print) -> Tuple[List[Row], int]:
    """Run the plan's steps that are to run, in order. Returns the summary rows and the exit status (0, 1 if a step
    failed, 130 if interrupted)."""
    rows: List[Row] = []
    state: Dict[str, str] = {}
    code = 0
    for i, s in enumerate(plan):
        if s.status == DONE:
            rows.append(Row(s.name, DONE))
            state[s.name] = DONE
            continue
        bad = [d for d in s.needs if state.get(d) in (FAILED, SKIPPED)]
        if bad:
            rows.append(Row(s.name, SKIPPED, note=f'needs {bad[0]} ({state[bad[0]]})'))
            state[s.name] = SKIPPED
            continue
        log(f'[reproduce] {s.name}: {s.display()}', flush=True)
        t0 = time.time()
        try:
            rc = runner(s)
        except KeyboardInterrupt:
            rows.append(Row(s.name, INTERRUPTED, time.time() - t0))
            rows += [Row(r.name, DONE if r.status == DONE else NOT_RUN) for r in plan[i + 1:]]
            log('[reproduce] interrupted; run the same command again to continue (trainings resume where they '
                'stopped)', file=sys.stderr, flush=True)
            return rows, 130
        except OSError as e:  # the program is missing
            rc, note = 127, str(e)
        else:
            note = ''
        dt = time.time() - t0
        missing = s.check() if rc == 0 else None
        if rc != 0 or missing is not None:
            note = note or (f'exit status {rc}' if rc != 0 else f'ran, but {missing}')
            rows.append(Row(s.name, FAILED, dt, note))
            state[s.name] = FAILED
            code = 1
            log(f'[reproduce] {s.name} FAILED: {note}', file=sys.stderr, flush=True)
        else:
            rows.append(Row(s.name, RAN, dt))
            state[s.name] = RAN
    return rows, code


def _duration(seconds: Optional[float]) -> str:
    if seconds is None:
        return ''
    if seconds < 120:
        return f'{seconds:.0f} s'
    if seconds < 7200:
        return f'{seconds / 60:.1f} min'
    return f'{seconds / 3600:.1f} h'


def format_rows(rows: Sequence[Row]) -> str:
    w = max([len('step'), *(len(r.step) for r in rows)])
    lines = [f'{"step":{w}s}  {"status":12s}  {"time":>8s}  note', '-' * (w + 36)]
    lines += [f'{r.step:{w}s}  {r.status:12s}  {_duration(r.seconds):>8s}  {r.note}'.rstrip() for r in rows]
    return '\n'.join(lines)


def torchrun_line(step: Step) -> str:
    """The command a paper training prints with ``--dry-run`` (its last line: the torchrun command)."""
    from . import cli
    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        rc = cli.main([*step.argv, '--dry-run'])
    lines = [line for line in buf.getvalue().splitlines() if line.strip()]
    if rc != 0 or not lines:
        raise ValueError(f'{step.display()} --dry-run printed no command')
    imports = os.environ.get(_import_env())
    return (f'{_import_env()}={shlex.quote(imports)} ' if imports else '') + lines[-1]


def format_plan(plan: Sequence[Step], profile: str, commands: Callable[[Step], str] = None) -> str:
    w = max([4, *(len(s.name) for s in plan)])
    lines = [f'{"step":{w}s}  {"status":12s}  command / what is missing', '-' * (w + 60)]
    for s in plan:
        cmd = commands(s) if commands else s.display()
        lines.append(f'{s.name:{w}s}  {s.status:12s}  {cmd}')
        if s.status == TODO and s.missing:
            lines.append(f'{"":{w}s}  {"":12s}    ({s.missing})')
    todo = sum(s.status == TODO for s in plan)
    lines.append(f'{len(plan)} steps at profile {profile}: {len(plan) - todo} done already, {todo} to run')
    return '\n'.join(lines)


def paper_commands(step: Step) -> str:
    return torchrun_line(step) if step.torchrun else step.display()


def build_parser(prog: str = 'stm-lab reproduce') -> argparse.ArgumentParser:
    """The options of ``stm-lab reproduce`` (defined in stm_lab.parsers, with the rest of the command tree)."""
    from .parsers import command_parser
    return command_parser('reproduce', prog)


def main(argv=None, runner: Callable[[Step], int] = run_subprocess, prog: str = 'stm-lab reproduce') -> int:
    return run_parsed(build_parser(prog).parse_args(list(sys.argv[1:] if argv is None else argv)), runner)


def run_parsed(args, runner: Callable[[Step], int] = run_subprocess) -> int:
    """Run parsed arguments: the plan of ``args.profile`` (printed with --dry-run or at paper), else its steps."""
    try:
        plan = build_plan(args.profile, args.only, args.models, args.skip)
        if args.profile == 'paper' or args.dry_run:
            print(format_plan(plan, args.profile, paper_commands if args.profile == 'paper' else None))
            if args.profile == 'paper':
                print('The paper profile runs on GPUs (ImageNet-1k, COCO): run the commands there, in this order; '
                      'the analyses, notebooks and book read the smoke or cpu results.')
            return 0
    except (KeyError, ValueError, FileNotFoundError) as e:
        print(f'stm-lab reproduce: error: {e.args[0] if e.args else e}', file=sys.stderr)
        return 2
    todo = sum(s.status == TODO for s in plan)
    print(f'[reproduce] profile {args.profile}: {len(plan)} steps, {len(plan) - todo} done already, {todo} to run',
          flush=True)
    rows, code = execute(plan, runner)
    print(format_rows(rows))
    failed = [r.step for r in rows if r.status == FAILED]
    if failed:
        print(f'[reproduce] failed: {", ".join(failed)}', file=sys.stderr)
    return code


if __name__ == '__main__':
    sys.exit(main())
