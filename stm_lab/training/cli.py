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

from .. import results
from ..results import atomic_write_bytes
from .config import PROFILES, _positive, apply_settings, profile_config, profile_models
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


def cmd_train(args) -> int:
    overrides = {k: v for k, v in dict(epochs=args.epochs, batch_size=args.batch_size, seed=args.seed, amp=args.amp,
                                       eval_every=args.eval_every).items() if v is not None}
    data = {k: v for k, v in dict(data_dir=args.data_dir, num_workers=args.workers).items() if v is not None}
    if args.no_download:
        data['download'] = False
    cfg = apply_settings(profile_config(args.model, args.profile, data=data, **overrides), args.set or [])
    if args.dry_run:
        print(json.dumps(cfg.to_dict(), indent=1))
        print(f'per process: batch {cfg.batch_size // cfg.nproc} on each of {cfg.nproc} processes')
        print(launch_command('stm_lab.training', args.argv, cfg.nproc,
                             '$IMAGENET' if cfg.data.dataset == 'imagenet' else None))
        return 0
    command = _command()
    hook = None
    if cfg.track_consistency:  # the analyses sit downstream of training: imported only when asked for
        from ..analysis.run import consistency_tracker
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


def _command() -> str:
    """The command line as typed (``python -m stm_lab.training ...`` rather than the module's file name)."""
    argv0 = Path(sys.argv[0])
    if argv0.name in ('__main__.py', 'cli.py') and argv0.parent.name == 'training':
        head = 'python -m stm_lab.training' + ('.cli' if argv0.name == 'cli.py' else '')
    else:
        head = argv0.name
    return ' '.join([head, *map(shlex.quote, sys.argv[1:])])


def _prov(profile: str, **extra) -> dict:
    return dict(results.provenance(profile, 0, loadavg=[round(x, 2) for x in os.getloadavg()], **extra),
                command=_command())


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
        results.save_result(args.profile, 'table3_accuracy', rows, config=dict(models=[r['model'] for r in rows]),
                            prov=_prov(args.profile))
        path = results.RESULTS_DIR / args.profile / 'README.md'
        atomic_write_bytes(path, summary_readme(rows, table, args.profile).encode())
        print(f'wrote {path}')
    return 0


class OneLineParser(argparse.ArgumentParser):
    """Usage errors in one line (the usage of ``train`` alone is a dozen lines); ``--help`` shows the rest."""

    def error(self, message):
        self.exit(2, f'{self.prog}: error: {message} (see --help)\n')


def build_parser() -> argparse.ArgumentParser:
    p = OneLineParser(prog='python -m stm_lab.training', description=__doc__,
                      formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest='command', required=True)
    s = sub.add_parser('train', help='train a model at a profile (resumes from the run folder by default)')
    s.add_argument('--model', required=True)
    s.add_argument('--profile', default='cpu', choices=PROFILES)
    s.add_argument('--resume', default='auto', help="'auto' (default: the run folder's last checkpoint, if any), "
                                                     "'none' (start over), or a checkpoint path")
    s.add_argument('--out', help='run folder (default runs/<profile>/<model>)')
    s.add_argument('--epochs', type=int)
    s.add_argument('--batch-size', type=int, help='global batch size (the learning rate follows, linear rule)')
    s.add_argument('--seed', type=int)
    s.add_argument('--amp', choices=('none', 'bf16', 'fp16'))
    s.add_argument('--eval-every', type=int)
    s.add_argument('--workers', type=int, help='DataLoader workers (default: the profile\'s)')
    s.add_argument('--data-dir', help='ImageNet folder (paper profile), or a folder of shards')
    s.add_argument('--no-download', action='store_true', help='never fetch data from the internet')
    s.add_argument('--stop-after', type=int, help='stop after this many epochs in this call (resume later)')
    s.add_argument('--set', action='append', metavar='KEY=VALUE',
                   help='override a config field, e.g. --set data.mixup=0 --set data.auto_augment=none (repeatable)')
    s.add_argument('--results-subdir', default='', help='export to results/<profile>/<dir>/ instead (e.g. epochs40 '
                                                         'for a longer budget); on a finished run: export it again')
    s.add_argument('--dry-run', action='store_true', help='print the resolved configuration and torchrun command')
    s.add_argument('--no-progress', action='store_true')
    s.add_argument('--json', action='store_true', help='print the final metrics as one JSON line')
    s.add_argument('--threads', type=int, help='torch CPU threads (default: all cores; 1 is faster on a busy machine)')
    s.set_defaults(func=cmd_train)
    s = sub.add_parser('eval', help='top-1/top-5 of a checkpoint')
    s.add_argument('--checkpoint', required=True)
    s.add_argument('--data', help='dataset (default: the one the checkpoint was trained on)')
    s.add_argument('--split', default='val')
    s.add_argument('--limit', type=int, help='evaluate a fixed seeded subset of this many images')
    s.add_argument('--weights', default='auto', choices=('auto', 'model', 'ema'),
                   help="for run checkpoints ('auto': those the run exports, its config's export_weights)")
    s.add_argument('--batch-size', type=int, default=256)
    s.add_argument('--data-dir')
    s.add_argument('--json', action='store_true', help='print one JSON line')
    s.add_argument('--threads', type=int, help='torch CPU threads (default: all cores; 1 is faster on a busy machine)')
    s.set_defaults(func=cmd_eval)
    s = sub.add_parser('summary', help="top-1 of the trained models beside the paper's Table III")
    s.add_argument('--profile', default='cpu', choices=PROFILES)
    s.add_argument('--save', action='store_true', help='write results/<profile>/table3_accuracy.json')
    s.set_defaults(func=cmd_summary)
    return p


SUBCOMMANDS = ('train', 'eval', 'summary')


def main(argv=None) -> int:
    """``stm-lab [train|eval|summary] ...`` (``python -m stm_lab.training ...``); without a subcommand, ``train``."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] not in SUBCOMMANDS and argv[0] not in ('-h', '--help'):
        argv = ['train', *argv]
    args = build_parser().parse_args(argv)
    args.argv = argv  # as given (the dry run prints the command back)

    def run():
        if getattr(args, 'threads', None) is not None:
            torch.set_num_threads(_positive('--threads', args.threads))
        return args.func(args)
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
