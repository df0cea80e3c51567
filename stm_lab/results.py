"""Read and write results under ``results/<profile>/`` with provenance; every write is atomic.

A result file is JSON: ``{"provenance": {...}, "config": {...}, "records": [...]}``. Provenance records what
produced the numbers (git commit and, where the tree differed from it, which files and a digest of the difference;
profile, seed, hardware, library versions, the ``stm-lab`` command that makes it again, wall time), so a number in
the book can always be traced back and replayed (results/README.md). Paths in results are relative to the project.
"""
from __future__ import annotations

import hashlib
import json
import os
import platform
import secrets
import shlex
import stat
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, List, Optional, Sequence

import torch

# The folder holding the package: the checkout in a clone or an editable install; in an installed wheel,
# site-packages, where nothing may be written (read-only assets are found by stm_lab.assets instead).
ROOT = Path(__file__).resolve().parent.parent


def is_checkout(root: Path) -> bool:
    return (root / 'pyproject.toml').is_file() or (root / '.git').exists()


IN_CHECKOUT = is_checkout(ROOT)


def writable_dir(env: str, name: str) -> Path:
    """The one rule for where stm-lab writes: ``$<env>`` when set; else ``<checkout>/<name>`` in a checkout, and
    ``./<name>`` of the working folder for an installed package (never into site-packages)."""
    if os.environ.get(env):
        return Path(os.environ[env])
    return (ROOT if IN_CHECKOUT else Path.cwd()) / name


def cache_dir() -> Path:
    """Downloads and decoded datasets: ``$STM_LAB_CACHE``; else ``<checkout>/.cache`` in a checkout, and the user's
    cache folder (``$XDG_CACHE_HOME/stm_lab`` or ``~/.cache/stm_lab``, where the compiled kernels go too) for an
    installed package: a cache is shared across working folders."""
    if os.environ.get('STM_LAB_CACHE'):
        return Path(os.environ['STM_LAB_CACHE'])
    if IN_CHECKOUT:
        return ROOT / '.cache'
    return Path(os.environ.get('XDG_CACHE_HOME') or Path.home() / '.cache') / 'stm_lab'


RESULTS_DIR = writable_dir('STM_LAB_RESULTS', 'results')
RUNS_DIR = writable_dir('STM_LAB_RUNS', 'runs')
if not IN_CHECKOUT:
    # the processes a command starts (trainings, notebooks) may run in another folder: they write where it does
    os.environ.setdefault('STM_LAB_RESULTS', str(RESULTS_DIR.resolve()))
    os.environ.setdefault('STM_LAB_RUNS', str(RUNS_DIR.resolve()))


def _git(*args: str, timeout: float = 10) -> Optional[bytes]:
    if not IN_CHECKOUT:  # an installed package has no commit of its own (ROOT may even lie in another repository)
        return None
    try:
        out = subprocess.run(['git', *args], cwd=ROOT, capture_output=True, timeout=timeout)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout if out.returncode == 0 else None


def git_state() -> dict:
    """The commit, and whether the tracked files differ from it; where they do, which (``git status --porcelain``
    lines) and a digest of ``git diff HEAD`` (binary changes included), so that two dirty states can be told apart.
    Untracked files are left out: results being written are untracked."""
    sha, status = _git('rev-parse', 'HEAD'), _git('status', '--porcelain', '--untracked-files=no')
    state = dict(git_sha=sha.decode().strip() if sha else None,
                 git_dirty=bool(status.strip()) if status is not None else None)
    if state['git_dirty']:
        diff = _git('diff', 'HEAD', '--binary', timeout=60)
        state.update(git_status=status.decode(errors='replace').rstrip('\n').splitlines(),
                     git_diff_sha256=hashlib.sha256(diff).hexdigest()[:16] if diff is not None else None)
    return state


def project_path(path) -> str:
    """``path`` as a result records it: relative to the project (the checkout; for an installed package, the
    working folder) where it lies inside it, else absolute. A relative ``path`` is taken from the working folder."""
    base = ROOT if IN_CHECKOUT else Path.cwd()
    p = Path(os.path.abspath(path))
    for q in (p, p.resolve()):  # as given first: a symlinked runs/ stays under the project
        if q.is_relative_to(base):
            return str(q.relative_to(base))
    return str(p)


PACKAGE_DIR = Path(__file__).resolve().parent
# `python -m <module>` runs of the modules that are also stm-lab commands -> the stm-lab words they stand for
# (stm_lab.training: train, eval or summary as given, train without one); tests/test_provenance.py checks each
ENTRY_MODULES = {'stm_lab.cli': (), 'stm_lab.training': (), 'stm_lab.analysis.run': ('analyze',),
                 'stm_lab.ablations': ('ablations',), 'stm_lab.detection.run': ('detect',), 'stm_lab.lab': ('lab',),
                 'stm_lab.reproduce': ('reproduce',), 'stm_lab.bench': ('bench',)}
TRAINING_COMMANDS = ('train', 'eval', 'summary')  # stm_lab.parsers.TRAINING_COMMANDS (parsers imports no torch)
IMPORT_ENV = 'STM_LAB_IMPORT'  # stm_lab.mixers.IMPORT_ENV: set by `stm-lab --import` for the processes it starts


def stm_lab_words(module: str, args: Sequence[str]) -> Optional[List[str]]:
    """``python -m <module> <args>`` as the words after ``stm-lab``; None for a module that is no stm-lab command."""
    if module == 'stm_lab.training':
        return list(args) if args[:1] and args[0] in TRAINING_COMMANDS else ['train', *args]
    return [*ENTRY_MODULES[module], *args] if module in ENTRY_MODULES else None


def command_line(argv: Optional[Sequence[str]] = None) -> str:
    """This process's command line (``argv``, default ``sys.argv``) as the ``stm-lab`` command that replays it,
    however it was started: the ``stm-lab`` program, ``python -m stm_lab.<module>`` or torchrun. Modules in
    ``$STM_LAB_IMPORT`` (a user's mixers) become ``--import`` options. Another program (a notebook kernel, pytest):
    its name and arguments as given."""
    argv = list(sys.argv if argv is None else argv)
    prog, args = Path(argv[0]), argv[1:]
    words = None
    if prog.name.removesuffix('.exe') == 'stm-lab':
        words = args
    elif prog.suffix == '.py' and prog.resolve().is_relative_to(PACKAGE_DIR):
        parts = prog.resolve().relative_to(PACKAGE_DIR).with_suffix('').parts
        words = stm_lab_words('.'.join(('stm_lab', *parts)).removesuffix('.__main__'), args)
    if words is None:
        return shlex.join([prog.name, *args])
    imports = [m for m in os.environ.get(IMPORT_ENV, '').split(',') if m.strip() and m.strip() not in words]
    return shlex.join(['stm-lab', *[w for m in imports for w in ('--import', m.strip())], *words])


def cpu_name() -> str:
    try:
        for line in Path('/proc/cpuinfo').read_text().splitlines():
            if line.startswith('model name'):
                return line.split(':', 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def cpu_bf16_units() -> bool:
    """Whether this CPU computes bf16 in hardware (``avx512_bf16`` or AMX tiles, as ``lscpu`` lists them): only there
    do oneDNN's bf16 matmuls and convolutions run faster than float32; elsewhere bf16 is emulated."""
    import torch
    return bool(torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported())


def bf16_warning(device_type: str) -> Optional[str]:
    """The one-line warning a bf16 run prints where it will be slower than float32 (a CPU without bf16 units)."""
    if device_type != 'cpu' or cpu_bf16_units():
        return None
    return (f'warning: bf16 requested but this CPU ({cpu_name()}) has no bf16 units (avx512_bf16 / amx_bf16): '
            f'bf16 is emulated here and will be slower than fp32; the numbers are those of a bf16 run all the same')


def provenance(profile: str, seed: Optional[int] = None, **extra: Any) -> dict:
    import timm
    return dict(
        **git_state(),
        profile=profile,
        seed=seed,
        command=command_line(),
        created=time.strftime('%Y-%m-%dT%H:%M:%SZ', time.gmtime()),
        python=platform.python_version(),
        torch=torch.__version__,
        timm=timm.__version__,
        cpu=cpu_name(),
        cpu_bf16_units=cpu_bf16_units(),
        # the vector ISA ATen's kernels dispatch to (DEFAULT / AVX2 / AVX512): runs re-make bit for bit only on the same
        cpu_capability=torch.backends.cpu.get_cpu_capability(),
        cpu_threads=torch.get_num_threads(),
        gpu=torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        **extra,
    )


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write to a temporary file in the same folder, fsync, then rename: a reader never sees half a file.
    A rewrite keeps the file's permissions (a new file, or one left at 0600 by earlier versions, gets the
    umask's, as ``open`` would give it), and
    temporaries of this file left by killed writers are removed first."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_temporaries(path)
    # the writer's pid in the name tells a killed writer's leftover from a write in progress
    tmp = path.parent / f'.{path.name}.{os.getpid()}.{secrets.token_hex(4)}{TMP_SUFFIX}'
    try:
        with open(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666), 'wb') as f:
            mode = stat.S_IMODE(path.stat().st_mode) if path.exists() else MKSTEMP_MODE
            if mode != MKSTEMP_MODE:  # 0600 is what every file got from the earlier mkstemp writes: widen it
                os.fchmod(f.fileno(), mode)
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if tmp.exists():
            tmp.unlink()
        raise
    _fsync_dir(path.parent)  # the rename itself survives a power cut


def _fsync_dir(folder: Path) -> None:
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:  # some file systems do not sync folders
        pass
    finally:
        os.close(fd)


TMP_SUFFIX = '.tmp'
MKSTEMP_MODE = 0o600
LEGACY_TMP_AGE_S = 3600  # a temporary without a pid (older writers) is abandoned once this old: writes take seconds


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process
        return True
    return True


def remove_stale_temporaries(path: Path, every: bool = False) -> int:
    """Remove the temporaries of ``path`` (``.<name>.*.tmp``) that no live writer owns: those whose writer pid is
    gone, and pid-less ones (written before pids were recorded) older than an hour; ``every``: all of them (for a
    folder this process holds locked). Returns the bytes freed."""
    path = Path(path)
    prefix, freed = f'.{path.name}.', 0
    try:
        names = [n for n in os.listdir(path.parent) if n.startswith(prefix) and n.endswith(TMP_SUFFIX)]
    except OSError:
        return 0
    now = time.time()
    for name in names:
        tmp = path.parent / name
        middle = name[len(prefix):-len(TMP_SUFFIX)].split('.')
        try:
            if not every:
                if len(middle) == 2 and middle[0].isdigit():
                    if _pid_alive(int(middle[0])):
                        continue
                elif now - tmp.stat().st_mtime < LEGACY_TMP_AGE_S:
                    continue
            size = tmp.stat().st_size
            tmp.unlink()
            freed += size
        except FileNotFoundError:  # its writer renamed or removed it meanwhile
            continue
    return freed


def result_path(profile: str, name: str) -> Path:
    return RESULTS_DIR / profile / f'{name}.json'


def save_result(profile: str, name: str, records: list, config: Optional[dict] = None,
                prov: Optional[dict] = None) -> Path:
    path = result_path(profile, name)
    doc = dict(provenance=prov or provenance(profile), config=config or {}, records=records)
    atomic_write_bytes(path, (json.dumps(doc, indent=1, sort_keys=False) + '\n').encode())
    return path


def load_result(profile: str, name: str) -> dict:
    path = result_path(profile, name)
    if not path.exists():  # readers never compute: say which command does
        base = str(profile).split('/')[0]
        how = ('a benchmark: `stm-lab bench` lists them' if base == 'bench' else
               f'make it with `stm-lab reproduce --profile {base}` (it runs what is missing; --dry-run shows the steps)')
        raise FileNotFoundError(f'no result {name!r} for profile {profile!r} at {path}; {how}')
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise ValueError(f'result file {path} is not valid JSON ({e}); delete it and regenerate it') from None


def save_merged(profile: str, name: str, records: list, config: dict, prov: dict, done: list,
                same: tuple = ()) -> tuple:
    """Save a result computed for the models ``done`` so that it adds to the saved one instead of replacing it:
    the other models' records stay, with the provenance they were computed under (``prov['earlier']``). Settings
    named in ``same`` make records incomparable and must match, or the merge is refused. An exclusive lock on
    ``<name>.json.lock`` makes concurrent merges (two evaluations at once) read-modify-write one after the other.
    Returns ``(path, records, config)`` as saved."""
    import fcntl
    path = result_path(profile, name)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path.parent / f'.{path.name}.lock', 'w') as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if path.exists():
            old = load_result(profile, name)
            differ = [k for k in same if old['config'].get(k) != config.get(k)]
            if differ:
                raise ValueError(f'the saved {name} result at {path} was computed with other settings '
                                 f'({", ".join(differ)}); run it for every model (without --models) to replace it')
            done_set = set(done)
            # records of no model (shared, e.g. the demo photos) are kept once
            new = {json.dumps(r, sort_keys=True) for r in records if 'model' not in r}
            records = [r for r in old['records'] if r.get('model') not in done_set
                       and ('model' in r or json.dumps(r, sort_keys=True) not in new)] + list(records)
            config = dict(config, models=[m for m in old['config'].get('models', []) if m not in done_set]
                          + list(done))
            earlier = [old['provenance'], *old['provenance'].get('earlier', [])]
            prov = dict(prov, earlier=[{k: v for k, v in p.items() if k != 'earlier'} for p in earlier])
        save_result(profile, name, records, config=config, prov=prov)
    return path, records, config
