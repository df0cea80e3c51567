"""What every test shares: a temporary results and runs folder, the smoke results (built once), the check that a test
run leaves nothing new in the checkout, and small fixtures.

Hermetic by construction: before any test module imports stm_lab (``stm_lab.results`` reads ``$STM_LAB_RESULTS`` and
``$STM_LAB_RUNS`` at import), the session gets its own folders under a temporary directory, and every process a test
starts inherits them; the book lab's build output (``$STM_LAB_LAB_DIR``) goes there too. The results folder starts as
a link farm of the committed results: real folders, each committed file a symbolic link to the checkout's. Readers see
the committed cpu, paper and bench results as they are; stm-lab writes every result by renaming a temporary file over
its name, which replaces a link in the temporary folder and never writes through it into the checkout. The smoke
profile's folder is not committed and starts empty: :func:`smoke_results` fills it.
"""
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parent.parent
SESSION_DIR = Path(tempfile.mkdtemp(prefix='stm_lab_tests_'))
RESULTS = SESSION_DIR / 'results'
RUNS = SESSION_DIR / 'runs'
os.environ['STM_LAB_RESULTS'] = str(RESULTS)
os.environ['STM_LAB_RUNS'] = str(RUNS)
os.environ['STM_LAB_LAB_DIR'] = str(SESSION_DIR / 'lab')

# The command that makes every result the smoke pages read (no notebooks, no book): `make book PROFILE=smoke` runs it
# first (tests/test_makefile.py holds the two together).
SMOKE_BUILD = ('reproduce', '--profile', 'smoke', '--skip', 'notebooks', 'book')

# What a test run may add to the checkout: caches (the venv, bytecode, pytest's and hypothesis' caches, the dataset
# cache, the lab's npm packages) and plotly.js, which `stm-lab notebooks` copies from the installed plotly into
# book/_static for any book it executes. Paths relative to the checkout; __pycache__ anywhere.
ALLOWED_NEW = ('.git', '.venv', '.pytest_cache', '.hypothesis', '.cache', 'book/lab/node_modules',
               'book/_static/plotly.min.js')


def committed_results() -> list:
    """The files under results/ that a clone has (tracked, or new and not ignored); every file but results/smoke where
    git cannot tell."""
    out = subprocess.run(['git', 'ls-files', '-z', '--cached', '--others', '--exclude-standard', 'results'], cwd=ROOT,
                         capture_output=True)
    if out.returncode == 0:
        return [Path(p) for p in out.stdout.decode().split('\0') if p and (ROOT / p).is_file()]
    return [p.relative_to(ROOT) for p in (ROOT / 'results').rglob('*')
            if p.is_file() and p.relative_to(ROOT).parts[1] != 'smoke']


def link_farm(files, dest: Path) -> None:
    for rel in files:
        target = dest / Path(*rel.parts[1:])  # results/cpu/x.json -> <dest>/cpu/x.json
        target.parent.mkdir(parents=True, exist_ok=True)
        target.symlink_to(ROOT / rel)


def checkout_files() -> set:
    """Every file of the checkout outside ALLOWED_NEW and __pycache__ folders, relative to it."""
    found = set()
    for folder, dirs, files in os.walk(ROOT):
        rel = Path(folder).relative_to(ROOT)
        dirs[:] = [d for d in dirs if d != '__pycache__' and str(rel / d) not in ALLOWED_NEW]
        found.update(str(rel / f) for f in files if str(rel / f) not in ALLOWED_NEW)
    return found


link_farm(committed_results(), RESULTS)
RESULTS.mkdir(exist_ok=True)
RUNS.mkdir()


def pytest_unconfigure(config):
    shutil.rmtree(SESSION_DIR, ignore_errors=True)


@pytest.fixture(scope='session', autouse=True)
def nothing_new_in_the_checkout():
    """Fails the run (an error at the last test's teardown) if the tests left a new file in the checkout."""
    before = checkout_files()
    yield
    new = sorted(checkout_files() - before)
    assert not new, (f'the tests left {len(new)} new file(s) in the checkout (a test must write under tmp_path or '
                     f'the session folders): {", ".join(new[:20])}')


@pytest.fixture(scope='session')
def smoke_results() -> Path:
    """The smoke profile's results (five trained test models, the analyses, the 46 ablation and seed runs, five tiny
    detectors), made once per session by ``stm-lab reproduce --profile smoke --skip notebooks book`` into the
    session's results folder; what the smoke pages read. Returns ``<results>/smoke``."""
    smoke = RESULTS / 'smoke'
    stray = sorted(str(p.relative_to(smoke)) for p in smoke.rglob('*') if p.is_file()) if smoke.exists() else []
    assert not stray, f'a test wrote smoke results into the shared results folder (use tmp_path): {stray[:10]}'
    log = SESSION_DIR / 'smoke_build.log'
    with open(log, 'w') as f:
        proc = subprocess.run([sys.executable, '-m', 'stm_lab.cli', *SMOKE_BUILD], cwd=ROOT, stdout=f,
                              stderr=subprocess.STDOUT, env=dict(os.environ, OMP_NUM_THREADS='1'))
    assert proc.returncode == 0, f'stm-lab {" ".join(SMOKE_BUILD)} failed:\n{log.read_text()[-4000:]}'
    return smoke


@pytest.fixture
def own_smoke_results(tmp_path, smoke_results) -> Path:
    """A results folder of the test's own, ``tmp_path/results``, that starts as links to the session's (the committed
    results and the smoke results): what the test adds or rewrites there stays there."""
    own = tmp_path / 'results'
    for p in RESULTS.rglob('*'):
        if p.is_file():
            (own / p.relative_to(RESULTS)).parent.mkdir(parents=True, exist_ok=True)
            (own / p.relative_to(RESULTS)).symlink_to(p)
    return own


@pytest.fixture
def crash_in_second_epoch(monkeypatch):
    """Training runs raise KeyboardInterrupt at the fourth step of their second epoch (an interruption mid-epoch);
    returns a function that lifts it."""
    from stm_lab.training import engine
    step = engine.Run.step

    def crash(self, x, y, global_step):
        if global_step == self.steps_per_epoch + 3:
            raise KeyboardInterrupt
        return step(self, x, y, global_step)
    monkeypatch.setattr(engine.Run, 'step', crash)
    return lambda: monkeypatch.setattr(engine.Run, 'step', step)


@pytest.fixture(scope='module')
def one_thread():
    """torch on one thread for the rest of the module that asks for it, restored after: tiny models and kernels run
    fastest on one thread, and two OpenMP threads crawl when another job holds a core. Module-scoped, so that a
    module's fixtures (a training run shared by its tests) can use it too."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
