"""``stm-lab bench``: one subcommand per benchmark; without one, the list of benchmarks.

The options of every benchmark are defined in :mod:`stm_lab.parsers` (so that the list and every ``--help`` come
without importing torch); each benchmark's module has ``run(args) -> exit status``, and its docstring is its help.
"""
from __future__ import annotations

import argparse
import importlib
import sys
from typing import List, Optional

from ..parsers import BENCHMARKS, benchmark_parser, command_parser  # noqa: F401  (BENCHMARKS: name -> Benchmark)


def build_parser(name: str, prog: str = 'stm-lab bench') -> argparse.ArgumentParser:
    """The argument parser of one benchmark (imports nothing heavy)."""
    return benchmark_parser(name, prog)


def main(argv: Optional[List[str]] = None, prog: str = 'stm-lab bench') -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ('-h', '--help'):
        command_parser('bench', prog).print_help()
        return 0
    name, rest = argv[0], argv[1:]
    if name not in BENCHMARKS:
        print(f'{prog}: error: unknown benchmark {name!r}; valid: {", ".join(BENCHMARKS)}', file=sys.stderr)
        return 2
    args = build_parser(name, prog).parse_args(rest)
    args.prog = f'{prog} {name}'
    return run_parsed(args)


def run_parsed(args) -> int:
    """Run a benchmark's parsed arguments (``args.benchmark``; none: print the list)."""
    if args.benchmark is None:
        command_parser('bench').print_help()
        return 0
    prog = getattr(args, 'prog', f'stm-lab bench {args.benchmark}')
    module = importlib.import_module(args.bench_module)
    try:
        return module.run(args)
    except (KeyError, ValueError, FileNotFoundError) as e:  # bad input: one line, no traceback
        print(f'{prog}: error: {e.args[0] if e.args else e}', file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f'{prog}: interrupted', file=sys.stderr)
        return 130
