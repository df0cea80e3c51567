"""The ``stm-lab`` command: one tree of subcommands (stm_lab/parsers.py), each run by the module that does the work.

    stm-lab --help                       the commands; stm-lab <command> --help: one command's options
    stm-lab --version
    stm-lab --import my_mixers <command> ...   first import a module that registers your own mixers and model
                                         families (also for the notebook kernels and training runs the command starts)

Building the parsers imports neither torch nor timm, so help and usage errors come at once; a command imports what
it needs when it runs (``handler`` in stm_lab.parsers).
"""
from __future__ import annotations

import importlib
import sys
import time
from pathlib import Path
from typing import Optional

from .parsers import GENERATED_DIR, NOTEBOOKS_DIR, ROOT, TRAINING_COMMANDS, build_parser  # noqa: F401


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
    from . import layout
    from .results import provenance
    t0 = time.time()
    records = table3(args.models or None, img_size=args.img_size)
    print(format_table3(records))
    if args.save and not args.models:  # a partial table never replaces the committed one
        path = layout.analysis('paper', 'table3_complexity').save(records, config=dict(img_size=args.img_size, num_classes=1000),
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
    from .pages.common import install_book_assets
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


def extra_for(module: str, preferred: Optional[str] = None) -> Optional[str]:
    """The optional extra of stm-lab's metadata that installs the (top-level) ``module``: ``preferred`` (the
    command's own extra) if it has it, else the smallest that has it; None if none does. A distribution's import name
    is its normalized name (jupyter-book -> jupyter_book), which holds for every extra but the tests' pyyaml."""
    import importlib.metadata as md
    import re
    try:
        requires = md.requires('stm-lab') or []
    except md.PackageNotFoundError:
        return None
    extras: dict = {}
    for req in requires:
        name = re.split(r'[<>=!~;\[ ]', req, maxsplit=1)[0].strip().lower().replace('-', '_')
        extra = re.search(r'extra\s*==\s*["\']([^"\']+)', req)
        if extra and extra.group(1) != 'dev':
            extras.setdefault(extra.group(1), set()).add(name)
    having = [e for e, names in extras.items() if module in names]
    if preferred in having:
        return preferred
    return min(having, key=lambda e: len(extras[e]), default=None)


# the extra each command needs beyond the core
COMMAND_EXTRAS = {'notebooks': 'book', 'reproduce': 'book', 'detect': 'detect', 'lab': 'lab'}


# commands that read or write the checkout's notebooks/ and book/ (not shipped in a wheel)
CHECKOUT_COMMANDS = {('notebooks',), ('reproduce',), ('lab', 'build'), ('lab', 'measure')}


def _needs_checkout(args) -> bool:
    return ((args.command,) in CHECKOUT_COMMANDS or (args.command, getattr(args, 'what', None)) in CHECKOUT_COMMANDS
            ) and not (ROOT / 'notebooks').is_dir()


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
    args = build_parser().parse_args(argv)  # --help, --version and usage errors end here, before torch is imported
    if getattr(args, 'benchmark', '') is None:  # `stm-lab bench` alone: the list of benchmarks is its help
        return importlib.import_module('stm_lab.bench.cli').run_parsed(args)
    if _needs_checkout(args):
        print(f'stm-lab: error: `stm-lab {" ".join(argv[:2])}` works in the project\'s checkout (it reads notebooks/ '
              f'and writes book/), which this installed copy ({ROOT}) is not: clone the repository and run it there',
              file=sys.stderr)
        return 2
    try:
        return _run(args, argv, modules)
    except ModuleNotFoundError as e:  # an optional dependency: name the extra that installs it
        extra = extra_for((e.name or '').split('.')[0], COMMAND_EXTRAS.get(args.command))
        if extra is None:
            raise
        print(f"stm-lab: error: `stm-lab {args.command}` needs {e.name}, an optional dependency: "
              f"pip install 'stm-lab[{extra}]'", file=sys.stderr)
        return 2


def _run(args, argv: list, modules: list) -> int:
    import stm_lab
    stm_lab._load()  # the stm-lab program imports the package without registering the models: now it runs one
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
    # argv as the module's own main would get it (the dry runs print the command back): train/eval/summary keep
    # their name, the others start after theirs
    args.argv = argv if argv[0] in TRAINING_COMMANDS else argv[1:]
    module, function = args.handler.split(':')
    if module != 'stm_lab.cli':  # the other modules report their errors themselves
        return getattr(importlib.import_module(module), function)(args)
    try:  # this module's own commands (looked up here: this file may run as __main__)
        return globals()[function](args)
    except (KeyError, ValueError, FileNotFoundError) as e:
        print(f'stm-lab: error: {e.args[0] if e.args else e}', file=sys.stderr)
        return 2


if __name__ == '__main__':
    sys.exit(main())
