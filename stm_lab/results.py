"""Read and write results under ``results/<profile>/`` with provenance; every write is atomic.

A result file is JSON: ``{"provenance": {...}, "config": {...}, "records": [...]}``. Provenance records what
produced the numbers (git commit and whether the tree was dirty, profile, seed, hardware, library versions,
the command line, wall time), so a number in the book can always be traced back.
"""
from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Optional

import torch

ROOT = Path(__file__).resolve().parent.parent
RESULTS_DIR = Path(os.environ.get('STM_LAB_RESULTS', ROOT / 'results'))


def _git(*args: str) -> Optional[str]:
    try:
        out = subprocess.run(['git', *args], cwd=ROOT, capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() if out.returncode == 0 else None


def cpu_name() -> str:
    try:
        for line in Path('/proc/cpuinfo').read_text().splitlines():
            if line.startswith('model name'):
                return line.split(':', 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def provenance(profile: str, seed: Optional[int] = None, **extra: Any) -> dict:
    import timm
    status = _git('status', '--porcelain', '--untracked-files=no')
    return dict(
        git_sha=_git('rev-parse', 'HEAD'),
        git_dirty=bool(status) if status is not None else None,
        profile=profile,
        seed=seed,
        command=' '.join([Path(sys.argv[0]).name, *sys.argv[1:]]),
        created=time.strftime('%Y-%m-%dT%H:%M:%SZ', time.gmtime()),
        python=platform.python_version(),
        torch=torch.__version__,
        timm=timm.__version__,
        cpu=cpu_name(),
        cpu_threads=torch.get_num_threads(),
        gpu=torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        **extra,
    )


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write to a temporary file in the same folder, fsync, then rename: a reader never sees half a file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f'.{path.name}.', suffix='.tmp')
    try:
        with os.fdopen(fd, 'wb') as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


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
    if not path.exists():
        raise FileNotFoundError(f'no result {name!r} for profile {profile!r} at {path}; '
                                f'produce it with the stm-lab command (see `stm-lab --help`)')
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise ValueError(f'result file {path} is not valid JSON ({e}); delete it and regenerate it') from None
