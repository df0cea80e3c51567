"""The Makefile's choice of Python (the first of python3.11, python3.12, python3.13, python3 that is >= 3.11, or
PYTHON=...) and its rebuild of the venv when the chosen X.Y changes, with fake interpreters on a PATH of their own
(they print what the Makefile asks of a real one); nothing is installed (`make -n` and `make which-python`)."""
import os
import shutil
import subprocess
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
MAKE = shutil.which('make')
pytestmark = pytest.mark.skipif(MAKE is None, reason='no make on the PATH')


def fake_python(path: Path, version: str) -> Path:
    """A script answering `python -c 'import sys; print(*sys.version_info[:3])'` with ``version`` ("3 12 1")."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(f'#!/bin/sh\necho "{version}"\n')
    path.chmod(0o755)
    return path


def make(tmp_path, *args, pythons=None, check=True):
    """make in the checkout with PATH = tmp_path/bin only, holding ``pythons`` {name: "X Y Z"}; the venv in
    tmp_path/venv. Returns (exit status, stdout + stderr)."""
    bin_dir = tmp_path / 'bin'
    bin_dir.mkdir(exist_ok=True)
    for name, version in (pythons or {}).items():
        fake_python(bin_dir / name, version)
    env = {k: v for k, v in os.environ.items()
           if k not in ('MAKEFLAGS', 'MFLAGS', 'MAKELEVEL', 'PYTHON', 'VENV', 'PYTHON_CANDIDATES')}
    env['PATH'] = str(bin_dir)
    out = subprocess.run([MAKE, '--no-print-directory', *args, f'VENV={tmp_path / "venv"}'], cwd=ROOT, env=env,
                         capture_output=True, text=True, timeout=60)
    if check:
        assert out.returncode == 0, out.stdout + out.stderr
    return out.returncode, out.stdout + out.stderr


def chosen(tmp_path, pythons, *args):
    return make(tmp_path, '-s', 'which-python', *args, pythons=pythons)[1].splitlines()[0]


@pytest.mark.parametrize('pythons,want', [
    ({'python3.11': '3 11 4', 'python3.12': '3 12 1', 'python3': '3 13 0'}, 'python3.11 3.11.4'),  # the order
    ({'python3.13': '3 13 2', 'python3': '3 12 0'}, 'python3.13 3.13.2'),
    ({'python3': '3 12 7'}, 'python3 3.12.7'),
    # the version is checked, not the name: an old interpreter called python3.12, python3 too old, a future 4.x
    ({'python3.12': '3 10 14', 'python3': '3 11 9'}, 'python3 3.11.9'),
    ({'python3.11': '3 9 2', 'python3': '4 0 0'}, 'python3 4.0.0'),
    ({'python3.11': '', 'python3.12': 'garbage', 'python3.13': '3 13 0'}, 'python3.13 3.13.0'),  # broken ones skipped
])
def test_finds_the_first_python_of_at_least_3_11(tmp_path, pythons, want):
    assert chosen(tmp_path, pythons) == want


def test_python_given_wins_and_is_checked(tmp_path):
    mine = fake_python(tmp_path / 'elsewhere' / 'mypython', '3 14 0')
    pythons = {'python3.11': '3 11 4'}
    assert chosen(tmp_path, pythons, f'PYTHON={mine}') == f'{mine} 3.14.0'
    old = fake_python(tmp_path / 'elsewhere' / 'oldpython', '3 10 1')
    status, out = make(tmp_path, 'setup', f'PYTHON={old}', pythons=pythons, check=False)
    assert status != 0 and f'PYTHON={old} does not run or is older than 3.11' in out
    assert not (tmp_path / 'venv').exists()


def test_no_python_found_says_what_was_tried(tmp_path):
    status, out = make(tmp_path, 'setup', pythons={'python3': '3 10 12'}, check=False)
    assert status != 0
    assert 'no Python >= 3.11 found (tried python3.11 python3.12 python3.13 python3)' in out
    assert 'PYTHON=/path/to/python' in out and not (tmp_path / 'venv').exists()


def _installed_venv(tmp_path, recorded=None, venv_python=None):
    """A venv that looks set up (its stamp newer than pyproject.toml), made with ``recorded`` X.Y, or, with no
    record (a venv made before .python existed), whose bin/python answers ``venv_python``."""
    venv = tmp_path / 'venv'
    venv.mkdir()
    if recorded:
        (venv / '.python').write_text(f'{recorded}\n')
    if venv_python:
        fake_python(venv / 'bin' / 'python', venv_python)
    stamp = venv / '.installed'
    stamp.touch()
    future = time.time() + 3600  # pyproject.toml may be edited meanwhile: the stamp stays newer
    os.utime(stamp, (future, future))
    return venv


@pytest.mark.parametrize('recorded,venv_python', [('3.11', None), (None, '3.11')])
def test_venv_is_made_anew_when_the_python_changes(tmp_path, recorded, venv_python):
    venv = _installed_venv(tmp_path, recorded, venv_python)
    _, out = make(tmp_path, '-n', 'setup', pythons={'python3.12': '3 12 1'})
    assert 'Python: python3.12 (3.12.1); ' in out and f'{venv} has Python 3.11: made anew' in out
    assert f'python3.12 -m venv --clear {venv}' in out
    assert f"{venv}/bin/python -m pip install --quiet -e '.[dev]'" in out
    assert f'echo 3.12 > {venv}/.python' in out


@pytest.mark.parametrize('recorded,venv_python', [('3.12', None), (None, '3.12')])
def test_venv_of_the_same_python_is_kept(tmp_path, recorded, venv_python):
    _installed_venv(tmp_path, recorded, venv_python)
    _, out = make(tmp_path, '-n', 'setup', pythons={'python3.12': '3 12 1'})
    assert '-m venv' not in out and 'pip install' not in out, out
    # a patch release of the same X.Y keeps it too
    _, out = make(tmp_path, '-n', 'setup', pythons={'python3.12': '3 12 9'})
    assert '-m venv' not in out, out


def test_new_venv_when_there_is_none(tmp_path):
    _, out = make(tmp_path, '-n', 'setup', pythons={'python3.11': '3 11 4'})
    venv = tmp_path / 'venv'
    assert 'Python: python3.11 (3.11.4)' in out and 'made anew' not in out
    assert f'python3.11 -m venv --clear {venv}' in out and f'echo 3.11 > {venv}/.python' in out


def test_lab_and_app_targets(tmp_path):
    _installed_venv(tmp_path, '3.11')
    venv = tmp_path / 'venv'
    _, out = make(tmp_path, '-n', 'app', 'APP_PORT=9911', pythons={'python3.11': '3 11 4'})
    assert 'http://127.0.0.1:9911/' in out
    assert f'{venv}/bin/voila notebooks/app/lab_app.ipynb --no-browser --Voila.ip=127.0.0.1 --port=9911' in out
    assert (ROOT / 'notebooks' / 'app' / 'lab_app.ipynb').is_file()
    _, out = make(tmp_path, '-n', 'lab', pythons={'python3.11': '3 11 4'})
    assert f'{venv}/bin/jupyter-lab --no-browser --ip=127.0.0.1 --port=8888 --ServerApp.root_dir=notebooks' in out


def test_test_runs_the_fast_tier_and_test_all_every_test(tmp_path):
    """`make test` leaves out the e2e tier (pyproject.toml's marker) and needs no npm; `make test-all` runs every
    test, with the lab's runtime, and is what CI runs."""
    _installed_venv(tmp_path, '3.11')
    venv = tmp_path / 'venv'
    _, out = make(tmp_path, '-n', 'test', pythons={'python3.11': '3 11 4'})
    assert f"{venv}/bin/python -m pytest -q -m 'not e2e'" in out and 'npm' not in out
    # -W: as if the lock file had changed, so that the runtime's recipe shows whether node_modules exists or not
    _, out = make(tmp_path, '-n', '-W', 'book/lab/package-lock.json', 'test-all', pythons={'python3.11': '3 11 4'})
    assert f'{venv}/bin/python -m pytest -q\n' in out and 'npm ci --prefix book/lab' in out
    assert 'e2e: ' in (ROOT / 'pyproject.toml').read_text()
    assert (ROOT / '.ci' / 'run').read_text().rstrip().endswith('\nmake test-all')


def test_book_at_the_smoke_profile_makes_its_results_first(tmp_path):
    """The notebooks only read: `make book PROFILE=smoke` (and `make notebooks`) first runs the command that makes
    every result the smoke pages read, the one the tests' smoke_results fixture runs; at cpu (committed) it does not."""
    from conftest import SMOKE_BUILD
    _installed_venv(tmp_path, '3.11')
    py = f'{tmp_path / "venv"}/bin/python'
    build = f'{py} -m stm_lab.cli {" ".join(SMOKE_BUILD)}\n'
    for target in ('book', 'notebooks'):
        _, out = make(tmp_path, '-n', target, 'PROFILE=smoke', pythons={'python3.11': '3 11 4'})
        assert build in out and out.index(build) < out.index(f'{py} -m stm_lab.cli notebooks --profile smoke'), target
        _, out = make(tmp_path, '-n', target, pythons={'python3.11': '3 11 4'})
        assert 'reproduce' not in out and f'{py} -m stm_lab.cli notebooks --profile cpu' in out, target
