"""Build and load the compiled DCNv3 kernels in ``ops/`` (``torch.utils.cpp_extension``, on first use, cached).

The build goes to ``$STM_LAB_CACHE/torch_extensions/<name>-<key>`` (default cache ``~/.cache/stm_lab``, or
``$XDG_CACHE_HOME/stm_lab``), never into the repository. The key hashes everything the binary depends on: the
sources, the compiler flags, torch's version and ABI, Python's version, and the CPU capability the flags were
chosen for -- so an edit, an upgrade or another machine sharing the home folder gets its own build.

Flags: ``-O3 -fopenmp`` plus ``-mavx2 -mfma`` when torch reports AVX2 or better (``torch.backends.cpu``), nothing
CPU-specific otherwise. That is a portable superset of what the kernels need (the inner loops are short FMA loops
over 8-32 channels; AVX-512 gave no measurable gain on them), unlike ``-march=native``, which would tie the cache to
one CPU model. ``-fopenmp`` is required: ``at::parallel_for`` is an inline OpenMP loop, serial without it; the
extension then links ``libgomp.so.1``, which resolves to the copy torch has already loaded (one thread pool).

A missing compiler, missing ninja or a failed build never raises from ``load()``: it returns ``None`` and warns once;
callers fall back to the pure-PyTorch path. ``STM_LAB_NO_EXT=1`` skips the build altogether (no warning).
"""
from __future__ import annotations

import hashlib
import logging
import os
import platform
import shutil
import sys
import threading
import warnings
from pathlib import Path
from typing import Optional

import torch

SOURCE_DIR = Path(__file__).resolve().parents[2] / 'ops'
CPU_SOURCES = ('dcnv3_cpu.cpp',)
HEADERS = ('dcnv3_common.h',)
NAME = 'stm_lab_dcnv3'


def cache_root() -> Path:
    if os.environ.get('STM_LAB_CACHE'):
        return Path(os.environ['STM_LAB_CACHE'])
    base = os.environ.get('XDG_CACHE_HOME') or Path.home() / '.cache'
    return Path(base) / 'stm_lab'


def cpu_flags() -> list:
    flags = ['-O3', '-fopenmp']
    if platform.machine() in ('x86_64', 'AMD64') and torch.backends.cpu.get_cpu_capability() in ('AVX2', 'AVX512'):
        flags += ['-mavx2', '-mfma']
    return flags


def build_key(sources, flags) -> str:
    h = hashlib.sha256()
    for path in sources:
        h.update(path.name.encode() + b'\0' + path.read_bytes() + b'\0')
    parts = [*flags, torch.__version__, str(torch._C._GLIBCXX_USE_CXX11_ABI), sys.version, platform.machine(),
             torch.backends.cpu.get_cpu_capability()]
    h.update('\0'.join(parts).encode())
    return h.hexdigest()[:16]


def compiler() -> Optional[str]:
    """The C++ compiler torch would use (``$CXX`` or ``c++``), or None when it cannot be found."""
    return shutil.which(os.environ.get('CXX', 'c++'))


def _import_cpp_extension():
    # its import logs "No CUDA runtime is found": expected on a CPU-only machine, so keep it quiet
    log = logging.getLogger('torch.utils.cpp_extension')
    level = log.level
    log.setLevel(logging.ERROR)
    try:
        from torch.utils import cpp_extension
    finally:
        log.setLevel(level)
    return cpp_extension


class ExtensionLoader:
    """Loads the extension once per process; ``load()`` returns the op namespace or None (with ``error`` set)."""

    def __init__(self):
        self._lock = threading.Lock()
        self._done = False
        self.ops = None
        self.error: Optional[str] = None
        self.build_dir: Optional[Path] = None

    def load(self, verbose: bool = False):
        with self._lock:
            if not self._done:
                self._done = True
                try:
                    self.ops = self._build(verbose)
                except Exception as e:  # any build/load failure means "use the PyTorch path"
                    self.error = f'{type(e).__name__}: {e}'.strip()
                if self.ops is None and self.error:
                    warnings.warn(f'stm_lab: the compiled DCNv3 kernel is unavailable ({self.error.splitlines()[0]}); '
                                  f'using the slower pure-PyTorch path', RuntimeWarning, stacklevel=3)
        return self.ops

    def _build(self, verbose):
        if os.environ.get('STM_LAB_NO_EXT', '') not in ('', '0'):
            self.error = None
            return None
        sources = [SOURCE_DIR / s for s in CPU_SOURCES]
        missing = [str(p) for p in sources + [SOURCE_DIR / h for h in HEADERS] if not p.exists()]
        if missing:
            raise FileNotFoundError(f'kernel sources not found: {", ".join(missing)}')
        if compiler() is None:
            raise RuntimeError(f'no C++ compiler found ({os.environ.get("CXX", "c++")!r}; set $CXX)')
        cpp_extension = _import_cpp_extension()
        if not cpp_extension.is_ninja_available():
            raise RuntimeError('ninja is not installed (pip install ninja)')
        flags = cpu_flags()
        key = build_key(sources + [SOURCE_DIR / h for h in HEADERS], flags)
        self.build_dir = cache_root() / 'torch_extensions' / f'{NAME}-{key}'
        self.build_dir.mkdir(parents=True, exist_ok=True)
        if not any(self.build_dir.glob(f'{NAME}*.so')):  # one line, so a first-use pause is not a mystery
            print(f'stm_lab: compiling the DCNv3 CPU kernel once (15-60 s), cache: {self.build_dir}',
                  file=sys.stderr, flush=True)
        cpp_extension.load(name=NAME, sources=[str(p) for p in sources], extra_cflags=flags,
                           extra_ldflags=['-fopenmp'], extra_include_paths=[str(SOURCE_DIR)],
                           build_directory=str(self.build_dir), is_python_module=False, verbose=verbose)
        return torch.ops.stm_lab


LOADER = ExtensionLoader()


def load(verbose: bool = False):
    """The compiled op namespace (``torch.ops.stm_lab``) or None when it cannot be built here."""
    return LOADER.load(verbose)


if __name__ == '__main__':  # python -m stm_lab.ops._build: build ahead of time (e.g. in a setup script)
    ops = load(verbose='-v' in sys.argv)
    print(f'built: {LOADER.build_dir}' if ops is not None else f'not built: {LOADER.error}')
    sys.exit(0 if ops is not None else 1)
