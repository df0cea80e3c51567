"""``stm-lab bench``: one subcommand per benchmark; without one, the list of benchmarks.

A benchmark's module is imported only when it runs (or its ``--help`` is asked for), so that the list comes at
once. Each module has ``add_arguments(parser)`` and ``run(args) -> exit status``; its docstring is its help.
"""
from __future__ import annotations

import argparse
import importlib
import sys
from typing import List, Optional

# name: (module under stm_lab.bench, one line)
BENCHMARKS = {
    'dcnv3': ('dcnv3', 'DCNv3 core and U-InternImage training speed, compiled vs pure PyTorch'),
    'train-speed': ('train_speed', "training/inference images/s of the micro models and timm's Swin"),
    'train-profile': ('train_profile', 'where a training step goes: parts (stem, stages, head), top operators'),
    'table8': ('table8', 'inference throughput with the protocol of Table VIII'),
    'analyses': ('analyses', 'time of the ERF and FGSM analyses on the micro models'),
    'cpu-profile': ('cpu_profile', "training images/s per model at a profile's settings"),
}


def listing(prog: str) -> str:
    w = max(map(len, BENCHMARKS))
    lines = [f'usage: {prog} {{{",".join(BENCHMARKS)}}} [options]  (--help after a name: its options)', '',
             'benchmarks:']
    lines += [f'  {name:<{w}}  {text}' for name, (_, text) in BENCHMARKS.items()]
    return '\n'.join(lines)


def build_parser(name: str, prog: str = 'stm-lab bench') -> argparse.ArgumentParser:
    """The argument parser of one benchmark (imports its module)."""
    module = importlib.import_module(f'{__package__}.{BENCHMARKS[name][0]}')
    p = argparse.ArgumentParser(prog=f'{prog} {name}', description=module.__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    module.add_arguments(p)
    p.set_defaults(run=module.run)
    return p


def main(argv: Optional[List[str]] = None, prog: str = 'stm-lab bench') -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ('-h', '--help'):
        print(listing(prog))
        return 0
    name, rest = argv[0], argv[1:]
    if name not in BENCHMARKS:
        print(f'{prog}: error: unknown benchmark {name!r}; valid: {", ".join(BENCHMARKS)}', file=sys.stderr)
        return 2
    args = build_parser(name, prog).parse_args(rest)
    try:
        return args.run(args)
    except (KeyError, ValueError, FileNotFoundError) as e:  # bad input: one line, no traceback
        print(f'{prog} {name}: error: {e.args[0] if e.args else e}', file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f'{prog} {name}: interrupted', file=sys.stderr)
        return 130
