"""Replaying a result: its recorded command in today's ``stm-lab`` form, checked; older forms migrated.

A result's ``provenance.command`` is the ``stm-lab`` command that makes it again at ``provenance.git_sha``
(results/README.md says how to replay). Results written by earlier versions recorded other forms
(``python -m stm_lab.train train ...``, ``cli.py ...``, ``throughput.py ...``), commands whose profile defaults have
changed since, and absolute paths of the machine that made them. :func:`migrate` rewrites them in place, numbers
untouched: each command becomes the ``stm-lab`` command that resolves to the configuration the result records
(options added where a default changed; the original is kept beside it as ``<field>_as_run``), and paths become
relative to the project. :func:`problems` is what tests/test_provenance.py asks of every committed result::

    python -m stm_lab.replay check [FILE|FOLDER ...]     # default: every result under results/ but smoke/
    python -m stm_lab.replay migrate [FILE|FOLDER ...]   # in place; running it again changes nothing
"""
from __future__ import annotations

import argparse
import contextlib
import functools
import io
import json
import re
import shlex
import sys
from pathlib import Path, PurePosixPath
from typing import Callable, Dict, Iterable, List, Optional, Tuple

from . import results

COMMAND_FIELDS = ('command', 'resumed_with', 'exported_with')  # provenance fields holding command lines
# how earlier versions were started -> the module whose stm-lab words they stand for (results.ENTRY_MODULES)
LEGACY_PROGRAMS = {'cli.py': 'stm_lab.cli', 'throughput.py': 'stm_lab.bench'}
LEGACY_MODULES = {'stm_lab.train': 'stm_lab.training', 'stm_lab.analysis.throughput': 'stm_lab.bench'}
PROJECT_FOLDERS = ('results', 'runs')  # where stm-lab writes: an absolute path is cut back to the first of them
ABSOLUTE = re.compile(r'(?:^|[\s=\'"(\[])(?:/[\w.~-]|~/|[A-Za-z]:\\)')  # a path's start (not base64's ,/9j/)
DIRTY_SECTION = '## Made from a dirty tree'  # results/README.md lists the results whose difference is unknown


# ------------------------------------------------------------------------------------------------ commands
def stm_lab_words(command: str) -> List[str]:
    """A recorded command line (any form stm-lab has recorded) as the words after ``stm-lab``."""
    tokens = shlex.split(command)
    if tokens[:1] == ['stm-lab']:
        return tokens[1:]
    module, args = None, tokens[1:]
    if tokens and Path(tokens[0]).name.startswith(('python', 'torchrun')) and '-m' in tokens:
        at = tokens.index('-m')
        module, args = tokens[at + 1] if at + 1 < len(tokens) else None, tokens[at + 2:]
    elif tokens:
        module = LEGACY_PROGRAMS.get(tokens[0])
    words = results.stm_lab_words(LEGACY_MODULES.get(module, module), args) if module else None
    if words is None:
        raise ValueError(f'{command!r} is no form of an stm-lab command (known: stm-lab ..., python -m '
                         f'{"|".join(sorted({*results.ENTRY_MODULES, *LEGACY_MODULES}))} ..., '
                         f'{", ".join(LEGACY_PROGRAMS)} ...)')
    return words


def parse(words: List[str]) -> Tuple[argparse.Namespace, Tuple[str, ...]]:
    """``stm-lab <words>`` parsed by today's command tree (stm_lab.parsers), and its command path (e.g.
    ``('detect', 'train')``). Strict: a usage error, a command that only prints (--help, --version) and an option
    not spelled in full (argparse takes prefixes, which a new option can make ambiguous) are ValueErrors."""
    parser, tree = _command_tree()
    err = io.StringIO()
    try:
        with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
            args = parser.parse_args(words)
    except SystemExit:
        lines = err.getvalue().strip().splitlines()
        raise ValueError(lines[-1] if lines else 'it prints help or the version instead of running') from None
    path, known = (), _options(tree[()])
    for w in words:
        if path + (w,) in tree:
            path += (w,)
            known |= _options(tree[path])
        elif w.startswith('--') and w != '--' and w.split('=')[0] not in known:
            raise ValueError(f'{w.split("=")[0]} is not an option of stm-lab {" ".join(path)} as written (in full: '
                             f'{", ".join(sorted(o for o in known if o.startswith(w.split("=")[0])))})')
    return args, path


@functools.lru_cache(maxsize=1)
def _command_tree():
    """stm-lab's parser and its parsers by command path (built once: parsing does not change them)."""
    from .parsers import build_parser, walk
    parser = build_parser()
    return parser, dict(walk(parser))


def _options(parser) -> set:
    return {s for a in parser._actions for s in a.option_strings}


# ------------------------------------------------------------------------------------------------ training results
def is_train_result(doc: dict, path: Tuple[str, ...]) -> bool:
    """A classification training result (``train_<model>.json``), whose configuration a command resolves to."""
    train = (doc.get('config') or {}).get('train')
    return path == ('train',) and isinstance(train, dict) and 'data' in train


def recorded_config(doc: dict):
    """The TrainConfig a training result records. Results written before the exported weights were fixed by the
    configuration chose them by score: the weights they hold (their last record's) are what a replay must export."""
    from .training.config import TrainConfig
    rec = dict(doc['config']['train'])
    if rec.get('export_weights') is None:
        rec['export_weights'] = doc['records'][-1]['weights']
    try:
        return TrainConfig.from_dict(rec)
    except TypeError as e:  # a field today's configuration no longer has
        raise ValueError(f'its recorded configuration does not fit today\'s TrainConfig: {e}') from None


def _flat(d: dict, prefix: str = '') -> dict:
    out = {}
    for k, v in d.items():
        out.update(_flat(v, f'{prefix}{k}.') if isinstance(v, dict) else {f'{prefix}{k}': v})
    return out


def train_differences(words: List[str], doc: dict) -> Dict[str, tuple]:
    """``{field: (recorded, what the command resolves to today)}`` for every field where they differ."""
    from .training.cli import train_config
    args, _ = parse(words)
    have = _flat(json.loads(json.dumps(train_config(args).to_dict())))
    want = _flat(json.loads(json.dumps(recorded_config(doc).to_dict())))
    return {k: (want.get(k), have.get(k)) for k in sorted(want.keys() | have.keys()) if want.get(k) != have.get(k)}


def _setting(value) -> str:
    """A recorded value as ``--set KEY=VALUE`` text (stm_lab.training.config.apply_settings reads it back)."""
    if value is None:
        return 'none'
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, (list, tuple)):
        return ','.join(map(_setting, value))
    return repr(value) if isinstance(value, float) else str(value)


def _add(words: List[str], option: str, value: str) -> List[str]:
    if option in words or any(w.startswith(option + '=') for w in words):
        raise ValueError(f'{shlex.join(words)} gives {option} already, not {value}')
    return [*words, option, value]


def pin_training(words: List[str], doc: dict) -> List[str]:
    """``stm-lab train`` words that resolve to the configuration the result records: ``--epochs`` (warm-up and EMA
    follow it) and ``--set`` where a profile default has changed since the run."""
    diff = train_differences(words, doc)
    for key in ('model', 'profile'):
        if key in diff:
            raise ValueError(f'the command trains {key} {diff[key][1]!r}, the result records {diff[key][0]!r}')
    if 'epochs' in diff:
        words = _add(words, '--epochs', str(diff['epochs'][0]))
        diff = train_differences(words, doc)
    for key, (want, _) in diff.items():
        if key != 'lr':  # derived from batch size and lr_per_1024
            words = [*words, '--set', f'{key}={_setting(want)}']
    left = train_differences(words, doc)
    if left:
        raise ValueError(f'no command found that resolves to the recorded configuration: {left}')
    return words


def result_subdir(file: Path, doc: dict) -> Optional[str]:
    """The ``--results-subdir`` that writes ``file`` (None where it lies in no ``<profile>/`` folder)."""
    profile = doc['config']['train']['profile']
    for folder in file.resolve().parents:
        if folder.name == profile:
            sub = str(file.resolve().parent.relative_to(folder))
            return '' if sub == '.' else sub
    return None


def _writer(prov: dict) -> Tuple[str, Optional[str]]:
    """The field and command that wrote the file: a re-export, else the last resume, else the first command."""
    field = 'exported_with' if prov.get('exported_with') else 'resumed_with' if prov.get('resumed_with') else 'command'
    value = prov.get(field)
    return field, value[-1] if isinstance(value, list) else value


# ------------------------------------------------------------------------------------------------ paths
def relative(path: str) -> str:
    """A recorded absolute path as a path relative to the project: from the first of :data:`PROJECT_FOLDERS`."""
    if Path(path).is_relative_to(results.ROOT):
        return str(Path(path).relative_to(results.ROOT))
    parts = PurePosixPath(path).parts
    for i, part in enumerate(parts):
        if part in PROJECT_FOLDERS:
            return str(PurePosixPath(*parts[i:]))
    raise ValueError(f'{path}: an absolute path in none of the project folders {", ".join(PROJECT_FOLDERS)}')


def _relative_tokens(command: str) -> str:
    """A command line with its absolute paths relative (``--out /x/runs/a`` and ``--out=/x/runs/a``)."""
    tokens, out = shlex.split(command), []
    for t in tokens:
        option, eq, value = t.partition('=') if t.startswith('--') else ('', '', t)
        out.append(option + eq + relative(value) if ABSOLUTE.match(value) and not value.startswith('~') else t)
    return command if out == tokens else shlex.join(out)


def _map_strings(obj, fn: Callable[[str], str]):
    if isinstance(obj, dict):
        return {k: _map_strings(v, fn) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_map_strings(v, fn) for v in obj]
    return fn(obj) if isinstance(obj, str) else obj


def _leaves(obj, at: str = '') -> Iterable[Tuple[str, object]]:
    if isinstance(obj, dict):
        for k, v in obj.items():
            yield from _leaves(v, f'{at}.{k}')
    elif isinstance(obj, list):
        for i, v in enumerate(obj):
            yield from _leaves(v, f'{at}[{i}]')
    else:
        yield at, obj


# ------------------------------------------------------------------------------------------------ a result file
def _provenances(prov: dict) -> List[dict]:
    return [prov, *prov.get('earlier', [])]  # a merged result keeps the other models' provenance


def _commands(prov: dict) -> Iterable[Tuple[str, str]]:
    for field in COMMAND_FIELDS:
        value = prov.get(field)
        for command in (value if isinstance(value, list) else [value] if value else []):
            yield field, command


def migrate_doc(doc: dict, file: Path) -> dict:
    """``doc`` with every command in today's form pinned to what the result records, and every path relative to
    the project; numbers untouched (checked)."""
    # a value that is one absolute path (a run folder, a checkpoint); command lines token by token below
    new = _map_strings(doc, lambda s: relative(s) if ABSOLUTE.match(s) and len(s.split()) == 1 else s)
    for prov in _provenances(new['provenance']):
        field_, command_ = _writer(prov)
        writer = (field_, _relative_tokens(command_) if command_ else None)
        for field in COMMAND_FIELDS:
            value, listed = prov.get(field), isinstance(prov.get(field), list)
            if not value:
                continue
            was = [_relative_tokens(c) for c in (value if listed else [value])]
            now = []
            for command in was:
                words = stm_lab_words(command)
                if is_train_result(new, parse(words)[1]):
                    words = pin_training(words, new)
                    subdir = result_subdir(file, new) if (field, command) == writer else None
                    if subdir is not None and parse(words)[0].results_subdir != subdir:
                        words = _add(words, '--results-subdir', subdir)
                now.append(shlex.join(['stm-lab', *words]))
            if now != was:  # the first form it ran as stays (paths aside): running this again keeps it
                prov.setdefault(f'{field}_as_run', was if listed else was[0])
            prov[field] = now if listed else now[0]
            kept = prov.get(f'{field}_as_run')
            if kept:
                prov[f'{field}_as_run'] = [_relative_tokens(c) for c in kept] if listed else _relative_tokens(kept)
    if _numbers(doc) != _numbers(new):
        raise RuntimeError(f'{file}: the migration would change a number')  # it rewrites strings only
    return new


def _numbers(doc: dict) -> List[str]:
    return [json.dumps(v) for _, v in _leaves(doc) if not isinstance(v, str)]


def problems(file: Path, dirty_listed: Iterable[str] = ()) -> List[str]:
    """What keeps a result from being replayed with today's CLI (empty: nothing). ``dirty_listed``: the results
    (relative to the results folder) that results/README.md names as made from a dirty tree."""
    try:
        doc = json.loads(Path(file).read_text())
        prov = doc['provenance']
    except (ValueError, KeyError, TypeError) as e:
        return [f'not a result file ({type(e).__name__}: {e})']
    out = []
    for at, value in _leaves(doc):
        if isinstance(value, str) and ABSOLUTE.search(value):
            out.append(f'{at}: an absolute path in {value[:120]!r}')
    for p in _provenances(prov):
        if not p.get('command'):
            out.append('no command recorded')
        for field, command in _commands(p):
            try:
                if shlex.split(command)[:1] != ['stm-lab']:
                    raise ValueError('not in the stm-lab form (python -m stm_lab.replay migrate rewrites it)')
                words = stm_lab_words(command)
                if not is_train_result(doc, parse(words)[1]):
                    continue
                diff = train_differences(words, doc)
                if diff:
                    raise ValueError('resolves today to another configuration than the result records: '
                                     + '; '.join(f'{k} {a!r} recorded, {b!r} now' for k, (a, b) in diff.items()))
                subdir = result_subdir(Path(file), doc)
                if (field, command) == _writer(p) and subdir is not None and parse(words)[0].results_subdir != subdir:
                    raise ValueError(f'writes results/<profile>/{parse(words)[0].results_subdir or ""}, '
                                     f'not the folder of this file ({subdir or "<profile>"})')
            except ValueError as e:
                out.append(f'{field} `{command}`: {e}')
        if dirty_unrecorded(p) and not any(_names(Path(file), key) for key in dirty_listed):
            out.append(f'made from a dirty tree whose difference was not recorded and not named in results/README.md '
                       f'("{DIRTY_SECTION}")')
    return out


def dirty_unrecorded(prov: dict) -> bool:
    """Made from a dirty tree before provenance recorded the difference."""
    return bool(prov.get('git_dirty')) and 'git_status' not in prov


def _names(file: Path, key: str) -> bool:
    """Whether ``key`` (a path relative to the results folder, as results/README.md writes it) names ``file``."""
    parts = PurePosixPath(key).parts
    return Path(file).resolve().parts[-len(parts):] == parts


def dirty_listed(readme: Optional[Path] = None) -> List[str]:
    """The result files results/README.md names under :data:`DIRTY_SECTION` (relative to the results folder)."""
    readme = readme or results.RESULTS_DIR / 'README.md'
    text = readme.read_text() if readme.exists() else ''
    section = text.split(DIRTY_SECTION, 1)[1].split('\n## ', 1)[0] if DIRTY_SECTION in text else ''
    return re.findall(r'`([^`\s]+\.json)`', section)


def migrate(file: Path) -> bool:
    """Rewrite one result file in place (atomically, in the writer's format); returns whether it changed."""
    file = Path(file)
    text = file.read_text()
    new = json.dumps(migrate_doc(json.loads(text), file), indent=1) + '\n'
    if new == text:
        return False
    results.atomic_write_bytes(file, new.encode())
    return True


def result_files(paths: Iterable = (), root: Optional[Path] = None) -> List[Path]:
    """The JSON results under ``paths`` (files or folders); default: every folder of ``root`` (the results folder)
    but smoke/ (made by the tests and the smoke book, never committed)."""
    root = Path(root or results.RESULTS_DIR)
    paths = [Path(p) for p in paths] or [d for d in sorted(root.iterdir()) if d.is_dir() and d.name != 'smoke']
    return sorted(f for p in paths for f in ([p] if p.is_file() else p.rglob('*.json')))


def main(argv: Optional[List[str]] = None) -> int:
    p = argparse.ArgumentParser(prog='python -m stm_lab.replay', description=__doc__.split('\n\n')[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument('action', choices=('check', 'migrate'), help='report what keeps results from replaying, or '
                                                                 'rewrite old command forms and absolute paths')
    p.add_argument('paths', nargs='*', help='result files or folders (default: results/ but smoke/)')
    args = p.parse_args(argv)
    files, bad = result_files(args.paths), 0
    if args.action == 'migrate':
        changed = []
        for f in files:
            try:
                if migrate(f):
                    changed.append(f)
            except ValueError as e:
                bad += 1
                print(f'{results.project_path(f)}: not migrated: {e}', file=sys.stderr)
        print(f'migrated {len(changed)} of {len(files)} result files'
              + ''.join(f'\n  {results.project_path(f)}' for f in changed))
    listed = dirty_listed()
    for f in files:
        for problem in problems(f, listed):
            bad += 1
            print(f'{results.project_path(f)}: {problem}', file=sys.stderr)
    print(f'{len(files)} result files checked: {bad or "no"} problem{"s" * (bad != 1)}')
    return 1 if bad else 0


if __name__ == '__main__':
    sys.exit(main())
