"""The ``stm-lab`` command tree: every (sub)command's ``--help``, ``--version``, one default profile, and parsers that
are built without torch, timm or numpy (stm_lab/parsers.py)."""
import argparse
import importlib
import importlib.metadata
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from stm_lab import cli, parsers
from stm_lab.parsers import DEFAULT_PROFILE, HelpFormatter, build_parser, plain, walk

ROOT = Path(__file__).resolve().parent.parent
PATHS = [path for path, _ in walk(build_parser()) if path]  # every subcommand and sub-subcommand
RST = re.compile(r'``|:[a-z]+:`')  # a literal's double backquotes, or a role such as :func:`...`
HEAVY = ('torch', 'timm', 'numpy', 'torchvision', 'papermill', 'nbformat', 'plotly', 'matplotlib', 'pandas')


def _help(args, capsys) -> str:
    with pytest.raises(SystemExit) as e:
        cli.main([*args, '--help'])
    assert e.value.code == 0
    return capsys.readouterr().out


def test_the_tree_has_every_command():
    assert {p[0] for p in PATHS} == {'models', 'mixers', 'complexity', 'notebooks', 'train', 'eval', 'summary',
                                     'analyze', 'ablations', 'detect', 'lab', 'bench', 'reproduce'}
    assert {p[1] for p in PATHS if p[0] == 'detect' and len(p) == 2} == {'data', 'train', 'evaluate', 'bench',
                                                                         'run', 'commands'}
    assert {p[1] for p in PATHS if p[0] == 'bench' and len(p) == 2} == {'dcnv3', 'train-speed', 'train-profile',
                                                                        'table8', 'analyses', 'cpu-profile'}
    assert len(PATHS) == 13 + 3 + 6 + 4 + 6  # commands; ablations, detect, lab and bench actions


@pytest.mark.parametrize('path', [()] + PATHS, ids=lambda p: ' '.join(p) or 'stm-lab')
def test_every_command_has_plain_help_with_its_full_usage(path, capsys):
    out = _help(path, capsys)
    assert out.startswith(f'usage: {" ".join(["stm-lab", *path])} '), out[:200]
    assert not RST.search(out), RST.search(out)
    parser = dict(walk(build_parser()))[path]
    for action in parser._actions:
        if isinstance(action, (argparse._HelpAction, argparse._VersionAction)):
            continue
        assert action.help and action.help is not argparse.SUPPRESS, (path, action.dest)
        if isinstance(action, argparse._SubParsersAction):
            assert all(a.help for a in action._choices_actions), path
        if action.option_strings and action.nargs != 0 and action.default not in (None, '', []):
            assert 'default' in parser._get_formatter()._get_help_string(action), (path, action.dest)


def test_defaults_are_shown_with_their_values(capsys):
    out = ' '.join(_help(['bench', 'train-speed'], capsys).split())
    assert '--infer-sizes [INFER_SIZES ...] inference image sizes (default: 64 224)' in out
    assert 'training image size (default: 64)' in out and 'autocast dtype (fp32: none) (default: fp32)' in out
    assert 'print only, write no result file --name' in out  # a flag's False is not shown
    out = ' '.join(_help(['train'], capsys).split())
    assert "(default: auto)" in out and 'training epochs (default: the profile\'s)' in out
    assert '(default: None)' not in out and '(default: False)' not in out


def test_one_default_profile_for_every_command():
    assert DEFAULT_PROFILE == 'cpu'
    seen = []
    for path, parser in walk(build_parser()):
        for action in parser._actions:
            if '--profile' in action.option_strings:
                seen.append(path)
                if path == ('detect', 'run'):  # the one command that exists at smoke only
                    assert tuple(action.choices) == ('smoke',) and action.default == 'smoke'
                else:
                    assert action.default == DEFAULT_PROFILE, path
    assert len(seen) == 17 and ('notebooks',) in seen and ('analyze',) in seen and ('reproduce',) in seen


def test_version_is_the_package_version(capsys):
    import stm_lab
    with pytest.raises(SystemExit) as e:
        cli.main(['--version'])
    assert e.value.code == 0
    assert capsys.readouterr().out == f'stm-lab {stm_lab.__version__}\n'
    assert stm_lab.__version__ == importlib.metadata.version('stm-lab')


def test_plain_turns_rst_into_help_text():
    assert plain('see :func:`~stm_lab.bench.timing.interleaved`, :mod:`.shapes` and :data:`CPU`') == \
        'see stm_lab.bench.timing.interleaved, shapes and CPU'
    assert plain('run ``stm-lab train --profile cpu`` (:ref:`the recipe <recipe>`); `x` stays x') == \
        'run stm-lab train --profile cpu (the recipe); x stays x'
    assert plain('Add your own with the decorator::\n\n    code') == 'Add your own with the decorator:\n\n    code'


def test_help_formatter_appends_only_real_defaults():
    p = argparse.ArgumentParser(prog='x', formatter_class=HelpFormatter)
    p.add_argument('--n', type=int, default=3, help='count')
    p.add_argument('--sizes', type=int, nargs='*', default=[1, 2], help='sizes')
    p.add_argument('--out', help='folder (default: runs/)')
    p.add_argument('--none', help='nothing')
    p.add_argument('--pct', default='50%', help='share')
    p.add_argument('--flag', action='store_true', help='a flag')
    p.add_argument('--seed', type=int, default=0, help='seed')
    text = ' '.join(p.format_help().split())
    for shown in ('count (default: 3)', 'sizes (default: 1 2)', 'folder (default: runs/)', 'NONE nothing --pct',
                  'share (default: 50%)', 'a flag --seed', 'seed (default: 0)'):
        assert shown in text, shown


def test_usage_errors_name_the_command(capsys):
    with pytest.raises(SystemExit) as e:
        cli.main(['analyze', 'nope'])
    err = capsys.readouterr().err
    assert e.value.code == 2 and err.startswith('usage: stm-lab analyze') and "invalid choice: 'nope'" in err
    with pytest.raises(SystemExit) as e:  # train's usage is a dozen lines: its errors are one
        cli.main(['train', '--model', 'm', '--epochs', 'x'])
    assert e.value.code == 2 and capsys.readouterr().err == (
        "stm-lab train: error: argument --epochs: invalid int value: 'x' (see --help)\n")
    with pytest.raises(SystemExit) as e:  # an unknown option is reported by the command that was given it
        cli.main(['train', '--model', 'm', '--foo'])
    assert capsys.readouterr().err == 'stm-lab train: error: unrecognized arguments: --foo (see --help)\n'
    with pytest.raises(SystemExit) as e:
        cli.main(['detect', 'commands', '--foo', 'x'])
    err = capsys.readouterr().err
    assert e.value.code == 2 and err.startswith('usage: stm-lab detect commands ')
    assert err.endswith('stm-lab detect commands: error: unrecognized arguments: --foo x\n')


def test_bare_bench_lists_the_benchmarks(capsys):
    assert cli.main(['bench']) == 0
    out = capsys.readouterr().out
    assert out.startswith('usage: stm-lab bench')
    for name in parsers.BENCHMARKS:
        assert any(line.split()[:1] == [name] for line in out.splitlines()), name


def test_the_modules_run_alone_with_the_same_parsers(capsys):
    from stm_lab.analysis import run as analysis_run
    from stm_lab.bench import cli as bench_cli
    from stm_lab.training import cli as training_cli
    for main, argv, usage in ((training_cli.main, ['train', '--help'], 'usage: python -m stm_lab.training train '),
                              (analysis_run.main, ['--help'], 'usage: stm-lab analyze '),
                              (bench_cli.main, ['table8', '--help'], 'usage: stm-lab bench table8 ')):
        with pytest.raises(SystemExit) as e:
            main(argv)
        assert e.value.code == 0 and capsys.readouterr().out.startswith(usage)
    with pytest.raises(SystemExit):
        bench_cli.main(['table8', '--help'], prog='python -m stm_lab.bench')
    assert capsys.readouterr().out.startswith('usage: python -m stm_lab.bench table8 ')


def test_the_light_tree_agrees_with_the_modules_it_stands_for():
    """The parsers repeat a few names so as not to import the modules that define them: they must agree."""
    from stm_lab import results
    from stm_lab.analysis import run as analysis_run
    from stm_lab.bench import steps
    assert parsers.ANALYSES == analysis_run.ANALYSES
    assert parsers.ROOT == results.ROOT
    tree = build_parser()
    amp = next(a for a in dict(walk(tree))[('bench', 'table8')]._actions if a.dest == 'amp')
    assert tuple(amp.choices) == tuple(steps.AMP_DTYPES)
    for name, bench in parsers.BENCHMARKS.items():
        module = importlib.import_module(f'stm_lab.bench.{bench.module}')
        assert callable(module.run), name
        named = [a for a in dict(walk(tree))[('bench', name)]._actions if a.dest == 'name']
        assert not named or f'(default: {module.NAME})' in named[0].help, name
    for name, command in parsers.COMMANDS.items():  # every handler exists
        module, function = command.handler.split(':')
        assert callable(getattr(importlib.import_module(module), function)), name


PROBE = r'''
import json, sys
sys.argv[0] = sys.argv[1]  # as the console script runs: the stm-lab program imports the package lazily
import stm_lab.cli
from stm_lab.parsers import build_parser, walk
texts = [parser.format_help() for _, parser in walk(build_parser())]
print(json.dumps(dict(parsers=len(texts), heavy=sorted(m for m in sys.modules if m.split('.')[0] in HEAVY))))
'''


def test_building_and_printing_every_parser_imports_no_heavy_module():
    code = f'HEAVY = {HEAVY!r}\n' + PROBE
    out = subprocess.run([sys.executable, '-c', code, 'stm-lab'], cwd=ROOT, capture_output=True, text=True,
                         timeout=120, env=dict(os.environ, PYTHONPATH=str(ROOT)))
    assert out.returncode == 0, out.stderr[-2000:]
    report = json.loads(out.stdout)
    assert report == dict(parsers=1 + len(PATHS), heavy=[])
    # the same probe in any other program: importing the package registers the models (imports torch and timm)
    out = subprocess.run([sys.executable, '-c', code, 'python'], cwd=ROOT, capture_output=True, text=True,
                         timeout=300, env=dict(os.environ, PYTHONPATH=str(ROOT)))
    assert out.returncode == 0, out.stderr[-2000:]
    assert {'torch', 'timm'} <= set(json.loads(out.stdout)['heavy'])


SCRIPT = Path(sys.executable).parent / 'stm-lab'


@pytest.mark.skipif(not SCRIPT.exists(), reason='no stm-lab console script next to this Python')
def test_the_installed_command_helps_without_torch_and_still_runs_commands():
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    for args in (['--help'], ['--version'], ['train', '--help'], ['bench', 'table8', '--help'], ['bench']):
        out = subprocess.run([sys.executable, '-X', 'importtime', str(SCRIPT), *args], capture_output=True,
                             text=True, timeout=120, env=env)
        assert out.returncode == 0 and out.stdout.startswith(('usage: stm-lab', 'stm-lab ')), (args, out.stderr[-500:])
        imported = {line.split('|')[-1].strip() for line in out.stderr.splitlines() if line.startswith('import time:')}
        assert 'stm_lab.parsers' in imported and not {m for m in imported if m.split('.')[0] in HEAVY}, args
    # a command that runs still finds the models registered (the lazy package is loaded before it runs)
    out = subprocess.run([str(SCRIPT), 'models', 'u_dwconv_mic?o'], capture_output=True, text=True, timeout=300,
                         env=env)
    assert out.returncode == 0 and out.stdout.split() == ['u_dwconv_micro'], out.stderr[-2000:]


def test_a_missing_optional_dependency_names_its_extra(monkeypatch, capsys):
    from stm_lab import cli
    assert cli.extra_for('pycocotools') == 'detect'  # the smallest extra that has it (book has it too)
    assert cli.extra_for('matplotlib', 'book') == 'book' and cli.extra_for('voila') == 'lab'
    assert cli.extra_for('torch') is None  # the core: no extra

    def missing(*_):
        raise ModuleNotFoundError("No module named 'pycocotools'", name='pycocotools')
    monkeypatch.setattr(cli, '_run', missing)
    assert cli.main(['detect', 'commands']) == 2
    assert "pip install 'stm-lab[detect]'" in capsys.readouterr().err

    def core_missing(*_):
        raise ModuleNotFoundError("No module named 'torch'", name='torch')
    monkeypatch.setattr(cli, '_run', core_missing)
    with pytest.raises(ModuleNotFoundError):  # not an extra's: the error stays as it is
        cli.main(['detect', 'commands'])


def test_book_commands_outside_a_checkout_say_so(monkeypatch, tmp_path, capsys):
    from stm_lab import cli
    monkeypatch.setattr(cli, 'ROOT', tmp_path)  # an installed copy: no notebooks/ beside the package
    monkeypatch.setattr(cli, '_run', lambda *a: pytest.fail('the command ran'))
    for argv in (['notebooks'], ['reproduce', '--dry-run'], ['lab', 'build']):
        assert cli.main(argv) == 2
        assert 'checkout' in capsys.readouterr().err
