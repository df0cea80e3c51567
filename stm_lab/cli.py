"""The ``stm-lab`` command. ``stm-lab --import my_mixers <command> ...`` first imports a module that registers your own
mixers and model families (also for the notebook kernels and training runs the command starts).

    stm-lab models [PATTERN]             list the registered models (timm names) with their parameter counts
    stm-lab mixers                       list the registered spatial token mixers
    stm-lab complexity [--models ...]    parameters and MACs at 224x224 beside the paper's Table III
    stm-lab notebooks [--profile P]      execute notebooks/*.ipynb with papermill into book/generated/
    stm-lab train --model M --profile P  train with the paper's recipe (resumable); also: eval, summary
    stm-lab analyze {erf,invariance,fgsm,demo,all} --profile P   ERF, invariance, FGSM, rotate-a-photo demo
    stm-lab ablations {list,run}         Tables II, VI, VII and the second seed at CPU scale (resumable queue)
    stm-lab detect {data,train,evaluate,bench,run,commands}   Mask R-CNN on the unified backbones (Table V, Fig. 5)
    stm-lab lab {runtime,build,check,measure}   the book's in-browser lab: ONNX models, parity, browser speed
    stm-lab bench                        the list of benchmarks (stm_lab/bench/); NAME --help: one's options
    stm-lab bench dcnv3                  DCNv3 core and U-InternImage training speed, compiled vs pure PyTorch
    stm-lab bench train-speed            training/inference images/s of the micro models and timm's Swin
    stm-lab bench train-profile          where a training step goes: parts (stem, stages, head), top operators
    stm-lab bench table8                 inference throughput with the protocol of Table VIII
    stm-lab bench analyses               time of the ERF and FGSM analyses on the micro models
    stm-lab bench cpu-profile            training images/s per model at a profile's settings
    stm-lab reproduce --profile P        every step of a profile that is missing, then the book (--dry-run: the plan)
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from .notebook_params import NOTEBOOK_PROFILES
from .results import ROOT

NOTEBOOKS_DIR = ROOT / 'notebooks'
GENERATED_DIR = ROOT / 'book' / 'generated'


def cmd_models(args) -> int:
    import timm
    import stm_lab  # noqa: F401  (registers the models)
    from .analysis.complexity import count_params
    for name in timm.list_models(args.pattern):
        line = name
        if args.params:
            line += f'\t{count_params(timm.create_model(name)) / 1e6:.2f}M'
        print(line)
    return 0


def cmd_mixers(args) -> int:
    from .mixers import MIXERS
    for name, cls in sorted(MIXERS.items()):
        doc = (cls.__module__ and sys.modules[cls.__module__].__doc__ or '').strip().splitlines()
        print(f'{name:12s} {doc[0] if doc else ""}')
    return 0


def format_table3(records) -> str:
    head = (f'{"model":22s} {"params":>8s} {"paper":>6s} {"diff":>6s} {"excl.pos":>8s} {"diff":>6s} | '
            f'{"GMACs":>6s} {"paper":>6s} {"diff":>6s} {"excl.att":>8s} {"diff":>6s}')
    lines = [head, '-' * len(head)]
    for r in records:
        pp, pf = r['paper_params_m'], r['paper_gflops']

        def d(ours, paper):
            return f'{100 * (ours / paper - 1):+5.1f}%' if paper else '     -'
        lines.append(
            f'{r["model"]:22s} {r["params_m"]:7.2f}M {pp or 0:5.1f}M {d(r["params_m"], pp)} '
            f'{r["params_no_pos_m"]:7.2f}M {d(r["params_no_pos_m"], pp)} | {r["gmacs"]:6.2f} {pf or 0:6.2f} '
            f'{d(r["gmacs"], pf)} {r["gmacs_no_attention"]:8.2f} {d(r["gmacs_no_attention"], pf)}')
    return '\n'.join(lines)


def cmd_complexity(args) -> int:
    import stm_lab  # noqa: F401
    from .analysis.complexity import table3
    from .results import provenance, save_result
    t0 = time.time()
    records = table3(args.models or None, img_size=args.img_size)
    print(format_table3(records))
    if args.save and not args.models:  # a partial table never replaces the committed one
        path = save_result('paper', 'table3_complexity', records, config=dict(img_size=args.img_size, num_classes=1000),
                           prov=provenance('paper', wall_time_s=round(time.time() - t0, 1)))
        print(f'saved {path.relative_to(ROOT) if path.is_relative_to(ROOT) else path}')
    return 0


def hide_parameter_cells(path: Path) -> None:
    """Readers of the book do not need the papermill parameter cells: tag them for removal."""
    import nbformat
    nb = nbformat.read(path, as_version=4)
    for cell in nb.cells:
        tags = cell.metadata.setdefault('tags', [])
        if ('parameters' in tags or 'injected-parameters' in tags) and 'remove-cell' not in tags:
            tags.append('remove-cell')
    nbformat.write(nb, path)


def cmd_notebooks(args) -> int:
    """Execute every notebook; a failing one is reported and the others still run."""
    import papermill as pm
    from .figures import install_book_assets
    install_book_assets()
    src_dir, out_dir = Path(args.src), Path(args.out)
    out_dir.mkdir(parents=True, exist_ok=True)
    sources = sorted(src_dir.glob('*.ipynb'))
    if args.only:
        sources = [p for p in sources if p.stem in args.only]
    failed = []
    for src in sources:
        out = out_dir / src.name
        t0 = time.time()
        print(f'[notebooks] {src.name} ...', flush=True)
        try:
            pm.execute_notebook(str(src), str(out), parameters=dict(profile=args.profile), cwd=str(ROOT),
                                kernel_name='python3', progress_bar=False)
            hide_parameter_cells(out)
            print(f'[notebooks] {src.name} ok ({time.time() - t0:.0f} s)')
        except Exception as e:  # papermill raises PapermillExecutionError with the cell's traceback
            failed.append(src.name)
            print(f'[notebooks] {src.name} FAILED ({time.time() - t0:.0f} s): {str(e).strip().splitlines()[-1]}'
                  f'\n            executed copy with the error: {out}', file=sys.stderr)
    print(f'[notebooks] {len(sources) - len(failed)} of {len(sources)} ran'
          + (f'; failed: {", ".join(failed)}' if failed else ''))
    return 1 if failed else 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog='stm-lab', description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    sub = p.add_subparsers(dest='command', required=True)
    s = sub.add_parser('models', help='list the registered models')
    s.add_argument('pattern', nargs='?', default='u_*')
    s.add_argument('--params', action='store_true', help='also build each model and print its parameter count')
    s.set_defaults(func=cmd_models)
    s = sub.add_parser('mixers', help='list the registered spatial token mixers')
    s.set_defaults(func=cmd_mixers)
    s = sub.add_parser('complexity', help="parameters and MACs beside the paper's Table III")
    s.add_argument('--models', nargs='*', help='model names (default: the 20 models of Table III)')
    s.add_argument('--img-size', type=int, default=224)
    s.add_argument('--no-save', dest='save', action='store_false',
                   help='print only; by default results/paper/table3_complexity.json is written')
    s.set_defaults(func=cmd_complexity)
    for name, text in (('train', 'train a model (see `stm-lab train --help`)'), ('eval', 'evaluate a checkpoint'),
                       ('summary', 'trained top-1 beside Table III'), ('bench', 'benchmarks (see the list above)'),
                       ('analyze', 'Sec. 6 analyses: erf, invariance, fgsm, demo (see stm-lab analyze --help)'),
                       ('ablations', 'the ablation runs at CPU scale (see stm-lab ablations --help)'),
                       ('detect', 'detection: Mask R-CNN, Table V, Fig. 5 (see stm-lab detect --help)'),
                       ('lab', "the book's in-browser lab: ONNX export, checks, speed (see stm-lab lab --help)"),
                       ('reproduce', 'run what a profile lacks, then the book (see stm-lab reproduce --help)')):
        sub.add_parser(name, help=text)  # listed for --help; handled by _passthrough
    s = sub.add_parser('notebooks', help='execute the notebooks into book/generated/')
    s.add_argument('--profile', default='smoke', choices=NOTEBOOK_PROFILES,
                   help='smoke or cpu (no model is trained at the paper profile here)')
    s.add_argument('--only', nargs='*', help='notebook names (without .ipynb)')
    s.add_argument('--src', default=str(NOTEBOOKS_DIR), help='folder of notebook sources')
    s.add_argument('--out', default=str(GENERATED_DIR), help='folder for the executed copies')
    s.set_defaults(func=cmd_notebooks)
    return p


def _passthrough(argv):
    """Commands whose module owns its arguments: (module, argv for its main), or None."""
    if not argv:
        return None
    if argv[0] in ('train', 'eval', 'summary'):
        return 'stm_lab.training.cli', argv
    if argv[0] == 'analyze':
        return 'stm_lab.analysis.run', argv[1:]
    if argv[0] == 'ablations':
        return 'stm_lab.ablations', argv[1:]
    if argv[0] == 'detect':
        return 'stm_lab.detection.run', argv[1:]
    if argv[0] == 'lab':
        return 'stm_lab.lab', argv[1:]
    if argv[0] == 'reproduce':
        return 'stm_lab.reproduce', argv[1:]
    if argv[0] == 'bench':  # the list of benchmarks, or one of them (stm_lab/bench/)
        return 'stm_lab.bench.cli', argv[1:]
    return None


def _take_imports(argv: list) -> list:
    """Remove leading ``--import MODULE`` / ``--import=MODULE`` options from ``argv``; returns the modules."""
    modules = []
    while argv and argv[0].startswith('--import'):
        opt = argv.pop(0)
        if '=' in opt:
            modules.append(opt.split('=', 1)[1])
        elif argv:
            modules.append(argv.pop(0))
        else:
            raise SystemExit('stm-lab: error: --import needs a module name')
    return modules


def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    modules = _take_imports(argv)
    if modules:
        import os
        from .mixers import IMPORT_ENV, import_user_modules
        try:
            import_user_modules(modules)
        except ImportError as e:
            print(f'stm-lab: error: {e}', file=sys.stderr)
            return 2
        # processes this command starts (notebook kernels, training runs) import them too, from this folder even
        # where they run elsewhere (notebooks run in the project's root)
        os.environ[IMPORT_ENV] = ','.join(dict.fromkeys(filter(None, [*os.environ.get(IMPORT_ENV, '').split(','),
                                                                        *modules])))
        os.environ['PYTHONPATH'] = os.pathsep.join(dict.fromkeys(filter(None, [
            os.getcwd(), *os.environ.get('PYTHONPATH', '').split(os.pathsep)])))
    target = _passthrough(argv)
    if target is not None:
        import importlib
        module, rest = target
        return importlib.import_module(module).main(rest)
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except (KeyError, ValueError, FileNotFoundError) as e:
        print(f'stm-lab: error: {e.args[0] if e.args else e}', file=sys.stderr)
        return 2


if __name__ == '__main__':
    sys.exit(main())
