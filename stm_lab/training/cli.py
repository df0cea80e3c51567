"""The trainer's command line (``stm-lab train``, ``stm-lab eval``, ``stm-lab summary``).

    stm-lab train --model u_dwconv_micro --profile cpu                # resumes by default (--resume auto)
    stm-lab eval --checkpoint results/cpu/u_dwconv_micro.safetensors --data imagenette --split val
    stm-lab summary --profile cpu                                     # top-1 beside the paper's Table III
    stm-lab train --model u_swin_tiny --profile paper --dry-run       # resolved config + torchrun command
    torchrun --nproc_per_node 8 -m stm_lab.training train --model u_swin_tiny --profile paper --data-dir /imagenet

``python -m stm_lab.training [train|eval|summary] ...`` is the same command ('train' is the default subcommand).
"""
from __future__ import annotations

import argparse
import json
import os
import shlex
import sys
from pathlib import Path
from typing import Callable, List, Optional

import torch
import torch.distributed as dist

from .. import layout, results
from ..results import atomic_write_bytes
from .config import _positive, apply_settings, profile_config, profile_models
from .engine import RunInterrupted, evaluate_checkpoint, train
from .reports import format_summary, summary, summary_readme


def launch_command(module: str, argv: List[str], nproc: int, data_dir: Optional[str] = None) -> str:
    """The command that runs ``python -m <module> <argv>`` for real: ``argv`` as given (every override included),
    less ``--dry-run``, under torchrun when the configuration takes several processes; ``data_dir`` (a placeholder
    such as ``$IMAGENET``) is added as ``--data-dir`` unless ``argv`` names one."""
    launcher = ['torchrun', f'--nproc_per_node={nproc}', '-m'] if nproc > 1 else ['python', '-m']
    args = launcher + [module] + [a for a in argv if a != '--dry-run']
    if data_dir and not any(a == '--data-dir' or a.startswith('--data-dir=') for a in args):
        args += ['--data-dir', data_dir]
    return ' '.join(a if a == data_dir else shlex.quote(a) for a in args)


def train_config(args):
    """The configuration parsed ``stm-lab train`` arguments resolve to: the profile's, the options, then --set
    (also what stm_lab.replay compares a result's recorded configuration with)."""
    overrides = {k: v for k, v in dict(epochs=args.epochs, batch_size=args.batch_size, seed=args.seed, amp=args.amp,
                                       eval_every=args.eval_every).items() if v is not None}
    data = {k: v for k, v in dict(data_dir=args.data_dir, num_workers=args.workers).items() if v is not None}
    if args.no_download:
        data['download'] = False
    return apply_settings(profile_config(args.model, args.profile, data=data, **overrides), args.set or [])


def cmd_train(args) -> int:
    cfg = train_config(args)
    if args.dry_run:
        print(json.dumps(cfg.to_dict(), indent=1))
        print(f'per process: batch {cfg.batch_size // cfg.nproc} on each of {cfg.nproc} processes')
        print(launch_command('stm_lab.training', args.argv, cfg.nproc,
                             '$IMAGENET' if cfg.data.dataset == 'imagenet' else None))
        return 0
    command = results.command_line()
    hook = None
    if cfg.track_consistency:
        from .tracking import consistency_tracker
        hook = consistency_tracker(cfg.profile, cfg.track_consistency, cfg.data)
    try:
        final = train(cfg, Path(args.out) if args.out else None, resume=args.resume, progress=not args.no_progress,
                      stop_after=args.stop_after, command=command, results_subdir=args.results_subdir,
                      epoch_hook=hook, threads=args.threads)
    except RunInterrupted as e:  # where the run stopped, in one line instead of a traceback
        if e.main:
            again = ' without --resume ' + shlex.quote(args.resume) if args.resume != 'auto' else ''
            print(f'stm-lab train: {e}' + (f'; run the same command again{again} to continue' if e.saved or not
                                            e.epoch else ''), file=sys.stderr)
        return 130
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()
    if final and args.json:
        print(json.dumps(final))
    return 0


def _prov(profile: str, **extra) -> dict:
    return results.provenance(profile, 0, loadavg=[round(x, 2) for x in os.getloadavg()], **extra)


def cmd_eval(args) -> int:
    r = evaluate_checkpoint(args.checkpoint, args.data, args.split, args.limit, args.batch_size, args.weights,
                            args.data_dir)
    if args.json:
        print(json.dumps(r))
    else:
        print(f'{r["model"]} ({r["weights"]} weights) on {r["dataset"]} {r["split"]}: top-1 {r["top1"]:.2f}%  '
              f'top-5 {r["top5"]:.2f}%  ({r["images"]} images, {r["eval_img_per_s"]} img/s)')
    return 0


def cmd_summary(args) -> int:
    rows = summary(args.profile)
    if not rows:
        example = next(m for m in profile_models(args.profile) if 'dwconv' in m)
        raise FileNotFoundError(f'no trained models under {results.RESULTS_DIR / args.profile}; train them first '
                                f'(stm-lab train --model {example} --profile {args.profile})')
    table = format_summary(rows, args.profile)
    print(table)
    if args.save:
        layout.analysis(args.profile, 'table3_accuracy').save(rows, config=dict(models=[r['model'] for r in rows]),
                            prov=_prov(args.profile))
        path = results.RESULTS_DIR / args.profile / 'README.md'
        atomic_write_bytes(path, summary_readme(rows, table, args.profile).encode())
        print(f'wrote {path}')
    return 0


def build_parser(prog: str = 'python -m stm_lab.training') -> argparse.ArgumentParser:
    """train, eval and summary under one parser (defined in stm_lab.parsers, with ``stm-lab``'s tree)."""
    from ..parsers import training_parser
    return training_parser(prog)


SUBCOMMANDS = ('train', 'eval', 'summary')
COMMANDS = dict(train=cmd_train, eval=cmd_eval, summary=cmd_summary)


def main(argv=None, prog: str = 'python -m stm_lab.training') -> int:
    """``python -m stm_lab.training [train|eval|summary] ...`` (``stm-lab train ...``); without a subcommand,
    ``train``."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] not in SUBCOMMANDS and argv[0] not in ('-h', '--help'):
        argv = ['train', *argv]
    args = build_parser(prog).parse_args(argv)
    args.argv = argv  # as given (the dry run prints the command back)
    return run_parsed(args)


def run_parsed(args) -> int:
    """Run parsed arguments (``args.command``: train, eval or summary)."""
    def run():
        if getattr(args, 'threads', None) is not None:
            torch.set_num_threads(_positive('--threads', args.threads))
        return COMMANDS[args.command](args)
    return guarded(f'stm-lab {args.command}', run)


def guarded(prog: str, fn: Callable[[], int], interrupted: str = 'interrupted') -> int:
    """Run a command: bad input is one line on stderr and exit 2, Ctrl-C one line and exit 130 (no traceback)."""
    try:
        return fn()
    except (KeyError, ValueError, FileNotFoundError, FloatingPointError) as e:
        print(f'{prog}: error: {e.args[0] if e.args else e}', file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f'{prog}: {interrupted}', file=sys.stderr)
        return 130
