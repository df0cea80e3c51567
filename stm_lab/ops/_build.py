"""Build and load the compiled CPU kernels in ``ops/`` (the DCNv3 core, the weight gradient of depth-wise
convolutions) with ``torch.utils.cpp_extension``, on first use, cached.

The build goes to ``$STM_LAB_CACHE/torch_extensions/<name>-<key>`` (default cache ``~/.cache/stm_lab``, or
``$XDG_CACHE_HOME/stm_lab``), never into the repository. The key hashes everything the binary depends on: the
sources, the compiler flags, torch's version and ABI, Python's version, and the CPU capability the flags were
chosen for -- so an edit, an upgrade or another machine sharing the home folder gets its own build.

Flags: ``-O3 -fopenmp -fno-trapping-math``, plus ``-mavx2 -mfma`` where torch reports AVX2 or AVX512
(``torch.backends.cpu.get_cpu_capability()``), plus ``-mavx512{f,vl,bw,dq}`` where it reports AVX512 (measured here:
forward 5-25% faster than the AVX2 build, backward unchanged), nothing CPU-specific otherwise. Those are named
instruction sets that the capability check guarantees, and the capability is part of the cache key; ``-march=native``
would instead tie a build to one CPU model (and its cache to one machine). ``-fopenmp`` is required:
``at::parallel_for`` is an inline OpenMP loop, serial without it; the extension then links ``libgomp.so.1``, which
resolves to the copy torch has already loaded (one thread pool, checked in /proc/self/maps).

A missing compiler, missing ninja or a failed build never raises from ``load()``: it returns ``None`` and warns once;
callers fall back to the pure-PyTorch path. (``STM_LAB_DCNV3_BACKEND=torch`` keeps a process off the compiled path
altogether, see :func:`stm_lab.ops.dcnv3.dcnv3_core`.)
"""
from __future__ import annotations

import hashlib
import logging
import os
import platform
import shutil
import sys
import threading
import time
import warnings
from pathlib import Path
from typing import Optional

import torch


def _source_dir() -> Path:
    """The repository's ops/ (a checkout or an editable install), else the copy a wheel ships as stm_lab/_csrc."""
    repo = Path(__file__).resolve().parents[2] / 'ops'
    return repo if (repo / 'dcnv3_cpu.cpp').exists() else Path(__file__).resolve().parents[1] / '_csrc'


SOURCE_DIR = _source_dir()
CPU_SOURCES = ('dcnv3_cpu.cpp', 'dwconv_cpu.cpp')  # one library, one build
HEADERS = ('dcnv3_common.h',)
NAME = 'stm_lab_dcnv3'
STALE_LOCK_S = 600  # no build takes this long; an older lock file was left by a killed build


def cache_root() -> Path:
    if os.environ.get('STM_LAB_CACHE'):
        return Path(os.environ['STM_LAB_CACHE'])
    base = os.environ.get('XDG_CACHE_HOME') or Path.home() / '.cache'
    return Path(base) / 'stm_lab'


def cpu_flags() -> list:
    # -fno-trapping-math: lets GCC if-convert the float compares of the setup loop, so that it vectorizes (we never
    # unmask floating-point exceptions, so nothing observable changes)
    flags = ['-O3', '-fopenmp', '-fno-trapping-math']
    capability = torch.backends.cpu.get_cpu_capability() if platform.machine() in ('x86_64', 'AMD64') else ''
    if capability in ('AVX2', 'AVX512'):
        flags += ['-mavx2', '-mfma']
    if capability == 'AVX512':  # the extensions torch's own AVX512 check requires
        flags += ['-mavx512f', '-mavx512vl', '-mavx512bw', '-mavx512dq']
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
                    warnings.warn(f'stm_lab: the compiled CPU kernels (DCNv3, depth-wise conv) are unavailable '
                                  f'({self.error.splitlines()[0]}); using the slower PyTorch paths',
                                  RuntimeWarning, stacklevel=3)
        return self.ops

    def _build(self, verbose):
        sources = [SOURCE_DIR / s for s in CPU_SOURCES]
        missing = [str(p) for p in sources + [SOURCE_DIR / h for h in HEADERS] if not p.exists()]
        if missing:
            raise FileNotFoundError(f'kernel sources not found: {", ".join(missing)}')
        flags = cpu_flags()
        key = build_key(sources + [SOURCE_DIR / h for h in HEADERS], flags)
        self.build_dir = cache_root() / 'torch_extensions' / f'{NAME}-{key}'
        library, complete = self.build_dir / f'{NAME}.so', self.build_dir / 'complete'
        if complete.exists() and library.exists():
            # built before under this key: load it directly (no ninja run, no cpp_extension import: ~1 s saved)
            torch.ops.load_library(str(library))
            return torch.ops.stm_lab
        if compiler() is None:
            raise RuntimeError(f'no C++ compiler found ({os.environ.get("CXX", "c++")!r}; set $CXX)')
        cpp_extension = _import_cpp_extension()
        if not cpp_extension.is_ninja_available():
            raise RuntimeError('ninja is not installed (pip install ninja)')
        self.build_dir.mkdir(parents=True, exist_ok=True)
        # torch's build lock: a build killed midway leaves it behind, and later builds would wait for it forever
        lock = self.build_dir / 'lock'
        if lock.exists() and time.time() - lock.stat().st_mtime > STALE_LOCK_S:
            lock.unlink(missing_ok=True)
        print(f'stm_lab: compiling the CPU kernels (DCNv3, depth-wise conv) once (15-90 s), cache: {self.build_dir}',
              file=sys.stderr, flush=True)  # one line, so a first-use pause is not a mystery
        cpp_extension.load(name=NAME, sources=[str(p) for p in sources], extra_cflags=flags,
                           extra_ldflags=['-fopenmp'], extra_include_paths=[str(SOURCE_DIR)],
                           build_directory=str(self.build_dir), is_python_module=False, verbose=verbose)
        complete.write_text(f'{torch.__version__} {" ".join(flags)}\n')  # after the build: a reader never sees half
        return torch.ops.stm_lab


LOADER = ExtensionLoader()


def load(verbose: bool = False):
    """The compiled op namespace (``torch.ops.stm_lab``) or None when it cannot be built here."""
    return LOADER.load(verbose)


if __name__ == '__main__':  # python -m stm_lab.ops._build: build ahead of time (e.g. in a setup script)
    ops = load(verbose='-v' in sys.argv)
    print(f'built: {LOADER.build_dir}' if ops is not None else f'not built: {LOADER.error}')
    sys.exit(0 if ops is not None else 1)
