"""stm-lab as an installed wheel, outside the checkout.

The wheel is built from a copy of the sources (nothing is written into the checkout) and must carry the five cpu
weights and the demo photos and nothing else of ``results/`` and ``data/``. It is installed into a fresh virtual
environment under tmp_path; the dependencies come from this environment through a ``.pth`` file (no download),
which does not run this environment's own ``.pth`` files, so the checkout's editable stm_lab stays invisible. There,
with the working folder in tmp_path, the package must find its packaged assets, reproduce the committed demo
predictions with the core dependencies alone (the extras' packages are made unimportable), and write results and
runs under the working folder or ``$STM_LAB_RESULTS`` / ``$STM_LAB_RUNS``, never into site-packages.
"""
import hashlib
import json
import os
import shutil
import subprocess
import sys
import sysconfig
import tomllib
import zipfile
from pathlib import Path

import pytest

from stm_lab import assets, results
from stm_lab.profiles import PROFILES
from stm_lab.results import IN_CHECKOUT, ROOT

MICRO = PROFILES['cpu'].models

pytestmark = pytest.mark.skipif(not IN_CHECKOUT, reason='builds a wheel from the checkout\'s sources')

# the packages of the extras (pyproject.toml); the core must work without any of them
EXTRA_MODULES = ('matplotlib', 'plotly', 'captum', 'papermill', 'nbclient', 'jupyter_book', 'ipykernel', 'pycocotools',
                 'onnx', 'onnxscript', 'onnxruntime', 'ipywidgets', 'jupyterlab', 'voila', 'playwright')
MODEL = 'u_swin_micro'

CORE_SCRIPT = r'''
import json, os, sys
import timm, torch
import stm_lab
from stm_lab import assets, data, results
from stm_lab.analysis.run import checkpoint_path, iter_models, run_demo
from stm_lab.profiles import PROFILES
from stm_lab.ops import _build
from stm_lab.training import engine
from stm_lab.training.checkpoint import load_model

model = sys.argv[1]
net = timm.create_model(model, num_classes=10, img_size=64)
trained, state = load_model(assets.weights_path(model))
net.load_state_dict(trained.state_dict())  # strict: the packaged weights fit the registered model
pre = timm.create_model(model, pretrained=True)  # timm's own way to the same packaged file
same = pre.state_dict().keys() == trained.state_dict().keys() and all(
    torch.equal(v, trained.state_dict()[k]) for k, v in pre.state_dict().items())
errors = {}
for name, profile in (('u_nonesuch_micro', 'cpu'), (model, 'smoke')):
    try:
        assets.weights_path(name, profile)
    except FileNotFoundError as e:
        errors[f'{name}@{profile}'] = str(e)
loaded = next(iter_models(PROFILES['cpu'], [model]))  # the analyses' loader: results/ lacks it, so the packaged copy
saved = results.save_result('cpu', 'install_check', [dict(model=model)])
print(json.dumps(dict(
    stm_lab=stm_lab.__file__, weights=str(assets.weights_path(model)), available=assets.available(),
    pretrained_file=pre.pretrained_cfg.get('file'), pretrained_same=same,
    checkpoint=str(checkpoint_path('cpu', model)), errors=errors, classes=state['classes'],
    demo=[p['path'] for p in data.demo_photos()],
    demo_rows=[(r['pred'], r['prob']) for r in run_demo(loaded, angles=[0])],
    saved=str(saved), git_sha=json.loads(open(saved).read())['provenance']['git_sha'],
    results_dir=str(results.RESULTS_DIR), runs_dir=str(engine.RUNS_DIR), cache_dir=str(data.CACHE_DIR),
    exported=os.environ.get('STM_LAB_RESULTS'), kernel_sources=str(_build.SOURCE_DIR),
    extras_loaded=sorted(m for m in sys.modules if m.split('.')[0] in sys.argv[2].split(',')))))
'''

LAB_SCRIPT = r'''
import json, sys
from stm_lab import results
from stm_lab.training import engine
from stm_lab.widgets import Lab

top5 = Lab([sys.argv[1]]).state()['top5'][sys.argv[1]]  # the widgets app on the first demo photo, packaged weights
saved = results.save_result('cpu', 'install_check', [])
print(json.dumps(dict(top1=top5[0], saved=str(saved), runs_dir=str(engine.RUNS_DIR))))
'''


def _pyproject() -> dict:
    return tomllib.loads((ROOT / 'pyproject.toml').read_text())


@pytest.fixture(scope='module')
def wheel(tmp_path_factory) -> Path:
    """The wheel, built (no build isolation, no index) from a copy of what pyproject.toml packages."""
    base = tmp_path_factory.mktemp('wheel')
    src, out = base / 'src', base / 'out'
    src.mkdir()
    for name in ('pyproject.toml', 'README.md', 'LICENSE'):
        shutil.copy2(ROOT / name, src / name)
    shutil.copytree(ROOT / 'stm_lab', src / 'stm_lab', ignore=shutil.ignore_patterns('__pycache__'))
    for folder in _pyproject()['tool']['setuptools']['package-dir'].values():
        # the whole top level of each mapped folder (results/cpu holds other results): package-data picks from it
        (src / folder).mkdir(parents=True)
        for f in (ROOT / folder).iterdir():
            if f.is_file():
                shutil.copy2(f, src / folder / f.name)
    subprocess.run([sys.executable, '-m', 'pip', 'wheel', '--no-deps', '--no-build-isolation', '--no-index', '-q',
                    '-w', str(out), str(src)], check=True, capture_output=True, text=True)
    (path,) = out.glob('stm_lab-*.whl')
    return path


@pytest.fixture(scope='module')
def venv(wheel, tmp_path_factory) -> Path:
    """A fresh virtual environment with the wheel installed and this environment's packages borrowed by a .pth."""
    env = tmp_path_factory.mktemp('venv') / 'env'
    subprocess.run([sys.executable, '-m', 'venv', '--without-pip', str(env)], check=True)
    python = env / 'bin' / 'python'
    subprocess.run([sys.executable, '-m', 'pip', '--python', str(python), 'install', '--no-deps', '--no-index', '-q',
                    str(wheel)], check=True, capture_output=True, text=True)
    site = Path(subprocess.run([str(python), '-c', 'import sysconfig; print(sysconfig.get_paths()["purelib"])'],
                               check=True, capture_output=True, text=True).stdout.strip())
    ours = {sysconfig.get_paths()[k] for k in ('purelib', 'platlib')}
    (site / '_stm_lab_test_deps.pth').write_text(''.join(f'{p}\n' for p in sorted(ours)))
    return env


def _site(env: Path) -> Path:
    (site,) = env.glob('lib/python*/site-packages')
    return site


def _listing(folder: Path) -> dict:
    return {str(p.relative_to(folder)): (p.stat().st_size, p.stat().st_mtime_ns) for p in folder.rglob('*')}


def _run(command: list, cwd: Path, blocked: Path = None, **extra_env) -> subprocess.CompletedProcess:
    """``command`` in the installed environment, none of this process's stm-lab settings or Python paths inherited;
    no bytecode written (site-packages is compared before and after), the DCNv3 core in PyTorch (no kernel build)."""
    clean = {k: v for k, v in os.environ.items()
             if not k.startswith('STM_LAB_') and k not in ('PYTHONPATH', 'PYTHONHOME', 'VIRTUAL_ENV')}
    env = dict(clean, OMP_NUM_THREADS='1', PYTHONDONTWRITEBYTECODE='1', PYTHONNOUSERSITE='1',
               STM_LAB_DCNV3_BACKEND='torch', **extra_env)
    if blocked is not None:
        env['PYTHONPATH'] = str(blocked)
    proc = subprocess.run([str(c) for c in command], cwd=cwd, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc


def _script(venv: Path, script: str, *args: str, **kw) -> dict:
    return json.loads(_run([venv / 'bin' / 'python', '-c', script, *args], **kw).stdout.strip().splitlines()[-1])


def _blocker(folder: Path) -> Path:
    """Packages named like the extras' that fail to import, first on the path: the extras are as good as absent."""
    for name in EXTRA_MODULES:
        (folder / name).mkdir(parents=True)
        (folder / name / '__init__.py').write_text(
            f'raise ModuleNotFoundError("{name} is made unimportable (an extra of stm-lab)", name="{name}")\n')
    return folder


def test_where_an_installed_package_writes(monkeypatch, tmp_path):
    """The one rule (results.writable_dir, results.cache_dir): the variable; else the checkout; else the working
    folder (the cache: the user's cache folder)."""
    for name in ('STM_LAB_RESULTS', 'STM_LAB_RUNS', 'STM_LAB_CACHE'):  # the tests' session sets the first two
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv('XDG_CACHE_HOME', str(tmp_path / 'xdg'))
    monkeypatch.chdir(tmp_path)
    assert results.is_checkout(ROOT) and not results.is_checkout(tmp_path)
    assert results.writable_dir('STM_LAB_RESULTS', 'results') == ROOT / 'results'
    assert results.cache_dir() == ROOT / '.cache'
    monkeypatch.setattr(results, 'IN_CHECKOUT', False)
    assert results.writable_dir('STM_LAB_RESULTS', 'results') == tmp_path / 'results'
    assert results.writable_dir('STM_LAB_RUNS', 'runs') == tmp_path / 'runs'
    assert results.cache_dir() == tmp_path / 'xdg' / 'stm_lab'
    monkeypatch.setenv('STM_LAB_RESULTS', str(tmp_path / 'mine'))
    monkeypatch.setenv('STM_LAB_CACHE', str(tmp_path / 'cache'))
    assert results.writable_dir('STM_LAB_RESULTS', 'results') == tmp_path / 'mine'
    assert results.cache_dir() == tmp_path / 'cache'


def test_assets_in_the_checkout_and_as_package_data(monkeypatch, tmp_path):
    for m in MICRO:
        assert assets.weights_path(m) == ROOT / 'results' / 'cpu' / f'{m}.safetensors'
    assert assets.demo_dir() == ROOT / 'data' / 'demo'
    with pytest.raises(FileNotFoundError, match='valid: ' + ', '.join(sorted(MICRO))):
        assets.weights_path('u_nonesuch_micro')
    monkeypatch.setattr(results, 'RESULTS_DIR', tmp_path / 'results')
    # in a checkout the results folder is the only place trained classifiers are read from (tests rely on it)
    assert assets.trained_checkpoint(MODEL, 'cpu') == tmp_path / 'results' / 'cpu' / f'{MODEL}.safetensors'
    # an installed package: the packaged copy where its results lack one, the results' own first
    packaged = tmp_path / '_weights'
    packaged.mkdir()
    (packaged / f'{MODEL}.safetensors').write_bytes(b'x')
    monkeypatch.setattr(results, 'IN_CHECKOUT', False)
    monkeypatch.setattr(assets, 'PACKAGED_WEIGHTS', packaged)
    assert assets.trained_checkpoint(MODEL, 'cpu') == packaged / f'{MODEL}.safetensors'
    assert assets.trained_checkpoint(MODEL, 'smoke') == tmp_path / 'results' / 'smoke' / f'{MODEL}.safetensors'
    own = tmp_path / 'results' / 'cpu' / f'{MODEL}.safetensors'
    own.parent.mkdir(parents=True)
    own.write_bytes(b'y')
    assert assets.trained_checkpoint(MODEL, 'cpu') == own
    assert assets.available() == [MODEL] and assets.available('smoke') == []
    assert assets.demo_dir() == assets.PACKAGED_DEMO


@pytest.mark.e2e
def test_the_wheel_carries_the_five_weights_and_the_demo_photos_only(wheel):
    setuptools = _pyproject()['tool']['setuptools']
    assert setuptools['package-dir']['stm_lab._weights'] == 'results/cpu'
    assert setuptools['package-dir']['stm_lab._demo'] == 'data/demo'
    with zipfile.ZipFile(wheel) as z:
        names = set(z.namelist())
        data = {n for n in names if not n.endswith('.py') and '.dist-info/' not in n}
        demo = {p.name for p in (ROOT / 'data' / 'demo').iterdir()}
        assert data == ({f'stm_lab/_weights/{m}.safetensors' for m in MICRO}
                        | {f'stm_lab/_demo/{n}' for n in demo}
                        | {f'stm_lab/_csrc/{p.name}' for p in (ROOT / 'ops').iterdir() if p.suffix in ('.cpp', '.h')})
        for m in MICRO:  # byte for byte the committed weights
            packed = hashlib.sha256(z.read(f'stm_lab/_weights/{m}.safetensors')).hexdigest()
            assert packed == hashlib.sha256((ROOT / 'results' / 'cpu' / f'{m}.safetensors').read_bytes()).hexdigest()
        code = {str(p.relative_to(ROOT)) for p in (ROOT / 'stm_lab').rglob('*.py') if '__pycache__' not in p.parts}
        assert code <= names, sorted(code - names)
        meta = z.read(next(n for n in names if n.endswith('.dist-info/METADATA'))).decode()
        assert any(n.endswith('.dist-info/licenses/LICENSE') for n in names)
    assert 'License-Expression: Apache-2.0' in meta
    assert {line.split(': ')[1] for line in meta.splitlines() if line.startswith('Provides-Extra: ')} == \
        {'book', 'detect', 'lab', 'test', 'dev'}
    weights = sum((ROOT / 'results' / 'cpu' / f'{m}.safetensors').stat().st_size for m in MICRO)
    assert wheel.stat().st_size < weights + 2_000_000  # the weights and the code, nothing else of size


@pytest.mark.e2e
def test_installed_wheel_works_outside_the_checkout_with_the_core_alone(venv, tmp_path):
    site = _site(venv)
    work, elsewhere, xdg = tmp_path / 'work', tmp_path / 'elsewhere', tmp_path / 'xdg'
    work.mkdir()
    before = _listing(site)

    got = _script(venv, CORE_SCRIPT, MODEL, ','.join(EXTRA_MODULES), cwd=work, blocked=_blocker(tmp_path / 'blocked'),
               XDG_CACHE_HOME=str(xdg))
    package = site / 'stm_lab'
    assert Path(got['stm_lab']) == package / '__init__.py'  # not the checkout's editable copy
    assert got['extras_loaded'] == []
    assert got['available'] == sorted(MICRO)
    assert Path(got['weights']) == Path(got['checkpoint']) == package / '_weights' / f'{MODEL}.safetensors'
    assert Path(got['pretrained_file']) == Path(got['weights']) and got['pretrained_same']  # pretrained=True
    assert got['errors']['u_nonesuch_micro@cpu'].endswith('valid: ' + ', '.join(sorted(MICRO)))
    assert "carries the 'cpu' profile's only" in got['errors'][f'{MODEL}@smoke']
    assert Path(got['kernel_sources']) == package / '_csrc'
    assert [Path(p).parent for p in got['demo']] == [package / '_demo'] * 10
    # the committed demo predictions (results/cpu/demo_rotation.json, unrotated) from the packaged weights and photos
    committed = json.loads((ROOT / 'results' / 'cpu' / 'demo_rotation.json').read_text())['records']
    want = [(r['pred'], r['prob']) for r in committed if r['model'] == MODEL and r['angle'] == 0]
    assert len(want) == 10
    assert [p for p, _ in got['demo_rows']] == [p for p, _ in want]
    assert [q for _, q in got['demo_rows']] == pytest.approx([q for _, q in want], abs=2e-4)
    assert got['classes'][0] == 'tench'
    # writes: the working folder's results/ and runs/ (exported to child processes), the user's cache folder
    assert Path(got['saved']) == work / 'results' / 'cpu' / 'install_check.json' and Path(got['saved']).is_file()
    assert Path(got['results_dir']) == Path(got['exported']) == work / 'results'
    assert Path(got['runs_dir']) == work / 'runs'
    assert Path(got['cache_dir']) == xdg / 'stm_lab'
    assert got['git_sha'] is None  # an installed package has no commit

    lab = _script(venv, LAB_SCRIPT, MODEL, cwd=work, STM_LAB_RESULTS=str(elsewhere / 'results'),
               STM_LAB_RUNS=str(elsewhere / 'runs'))
    assert lab['top1'][0] == 'tench' and lab['top1'][1] == pytest.approx(want[0][1], abs=2e-4)
    assert Path(lab['saved']) == elsewhere / 'results' / 'cpu' / 'install_check.json'
    assert Path(lab['runs_dir']) == elsewhere / 'runs'

    assert _run([venv / 'bin' / 'stm-lab', 'models', MODEL], cwd=work).stdout.split() == [MODEL]  # the command

    assert _listing(site) == before  # nothing written into site-packages
    written = sorted(str(p.relative_to(work)) for p in work.rglob('*') if p.is_file())
    assert written == ['results/cpu/install_check.json']
