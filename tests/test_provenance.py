"""Provenance that replays: every committed result's command runs with today's command tree and resolves to the
configuration the result records, no result holds an absolute path, a dirty tree is recorded or listed, and the
migration of older forms (stm_lab.replay) gives exactly the committed commands. Hermetic: writes under tmp_path."""
import json
import shutil
import subprocess
from pathlib import Path

import pytest

from stm_lab import parsers, replay, results
from stm_lab.results import PACKAGE_DIR, command_line

ROOT = results.ROOT
RESULTS = ROOT / 'results'  # the checkout's, whatever $STM_LAB_RESULTS says
README = RESULTS / 'README.md'


def committed():
    return replay.result_files(root=RESULTS)


def test_every_committed_result_replays_with_todays_cli():
    files = committed()
    assert len(files) > 80  # the checkout's results were found
    listed = replay.dirty_listed(README)
    bad = [f'{f.relative_to(ROOT)}: {p}' for f in files for p in replay.problems(f, listed)]
    assert not bad, 'results that do not replay (python -m stm_lab.replay migrate fixes old forms):\n' + '\n'.join(bad)


def test_the_readme_lists_exactly_the_results_made_from_an_unrecorded_dirty_tree():
    dirty = {str(f.relative_to(RESULTS)) for f in committed()
             if any(map(replay.dirty_unrecorded, replay._provenances(json.loads(f.read_text())['provenance'])))}
    assert 'cpu/erf.json' in dirty  # the main set's analyses, made at 0bbdc02 with uncommitted changes
    assert set(replay.dirty_listed(README)) == dirty


def _result(tmp_path, rel: str, command: str, **prov) -> Path:
    path = tmp_path / 'results' / rel
    path.parent.mkdir(parents=True, exist_ok=True)
    doc = dict(provenance=dict(dict(git_sha='0' * 40, git_dirty=False, command=command), **prov), config={},
               records=[])
    path.write_text(json.dumps(doc, indent=1) + '\n')
    return path


@pytest.mark.parametrize('command, expected', [
    ('python -m stm_lab.train train --model u_dwconv_micro', 'not in the stm-lab form'),
    ('stm-lab frobnicate --profile cpu', "invalid choice: 'frobnicate'"),
    ('stm-lab analyze erf --profile cpu --no-such-option', 'unrecognized arguments: --no-such-option'),
    ('stm-lab bench table8 --thread 1', '--thread is not an option of stm-lab bench table8 as written (in full: '
                                        '--threads)'),
    ('stm-lab --help', 'prints help or the version'),
])
def test_a_command_that_does_not_run_today_is_named(tmp_path, command, expected):
    path = _result(tmp_path, 'cpu/x.json', command)
    found = replay.problems(path)
    assert len(found) == 1 and expected in found[0] and f'`{command}`' in found[0], found
    assert replay.problems(_result(tmp_path, 'cpu/y.json', 'stm-lab analyze erf --profile cpu --threads 1')) == []


def test_absolute_paths_and_an_unlisted_dirty_tree_are_named(tmp_path):
    path = _result(tmp_path, 'cpu/x.json', 'stm-lab lab check --profile cpu', git_dirty=True,
                   run_folder='/home/someone/stm-lab/runs/cpu/x')
    found = replay.problems(path)
    assert any('.provenance.run_folder: an absolute path' in p for p in found)
    assert any('dirty tree' in p for p in found)
    assert not any('dirty tree' in p for p in replay.problems(path, ['cpu/x.json']))
    assert not any('dirty tree' in p for p in replay.problems(_result(
        tmp_path, 'cpu/z.json', 'stm-lab lab check --profile cpu', git_dirty=True, git_status=[' M a.py'])))
    # base64 of a data URI is no path
    assert replay.problems(_result(tmp_path, 'cpu/w.json', 'stm-lab lab check --profile cpu',
                                   image='data:image/jpeg;base64,/9j/4AAQSkZJRg==')) == []


def _copy(tmp_path, rel: str) -> Path:
    dest = tmp_path / 'results' / rel
    dest.parent.mkdir(parents=True, exist_ok=True)
    shutil.copy(RESULTS / rel, dest)
    return dest


def test_a_training_command_must_resolve_to_the_recorded_configuration(tmp_path):
    path = _copy(tmp_path, 'cpu/epochs12/train_u_halonet_micro.json')  # made from a clean tree
    doc = json.loads(path.read_text())
    assert replay.problems(path) == []
    doc['provenance']['command'] = 'stm-lab train --model u_halonet_micro --profile cpu --results-subdir epochs12'
    path.write_text(json.dumps(doc))
    (found,) = replay.problems(path)
    assert "epochs 12 recorded, 22 now" in found and 'warmup_epochs 0.8 recorded' in found
    # the right recipe, written to another folder than the file's
    doc['provenance']['command'] = 'stm-lab train --model u_halonet_micro --profile cpu --epochs 12'
    path.write_text(json.dumps(doc))
    (found,) = replay.problems(path)
    assert 'writes results/<profile>/, not the folder of this file (epochs12)' in found


def _as_first_recorded(doc: dict) -> dict:
    """A migrated result as it was before the migration (the commands as they ran)."""
    for prov in replay._provenances(doc['provenance']):
        for field in replay.COMMAND_FIELDS:
            if f'{field}_as_run' in prov:
                prov[field] = prov.pop(f'{field}_as_run')
    return doc


def test_the_migration_gives_the_committed_commands_and_is_idempotent(tmp_path):
    migrated = [f for f in committed() if '_as_run"' in f.read_text()]
    assert len(migrated) >= 50  # the committed results from before the migration (re-made runs no longer need it)
    for f in migrated:
        rel = f.relative_to(RESULTS)
        old = _as_first_recorded(json.loads(f.read_text()))
        dest = tmp_path / 'results' / rel
        dest.parent.mkdir(parents=True, exist_ok=True)
        dest.write_text(json.dumps(old, indent=1) + '\n')
        assert replay.migrate(dest), rel
        assert dest.read_text() == f.read_text(), rel
        assert not replay.migrate(dest), rel  # again: nothing to do
    # one known answer in full: Table IV's recipe at 12 epochs, run before the cpu profile dropped it, moved into
    # table4_recipe/ afterwards, its trained (not EMA) weights exported by score
    doc = json.loads((tmp_path / 'results/cpu/table4_recipe/train_u_halonet_micro.json').read_text())['provenance']
    assert doc['command_as_run'] == ('python -m stm_lab.train --model u_halonet_micro --profile cpu --threads 1 '
                                     '--no-progress --epochs 12')
    assert doc['command'] == (
        'stm-lab train --model u_halonet_micro --profile cpu --threads 1 --no-progress --epochs 12 '
        '--set data.auto_augment=rand-m9-mstd0.5-inc1 --set data.color_jitter=0.4 --set data.cutmix=1.0 '
        '--set data.mixup=0.8 --set data.re_prob=0.25 --set export_weights=model --results-subdir table4_recipe')


def test_the_migration_makes_paths_relative_and_refuses_outside_ones(tmp_path):
    path = _copy(tmp_path, 'cpu/detection/det_train_u_swin_micro.json')
    doc = json.loads(path.read_text())
    doc['provenance']['run_folder'] = '/some/other/machine/stm-lab/runs/cpu/detection/u_swin_micro'
    doc['config']['backbone_init'] = '/some/other/machine/stm-lab/results/cpu/u_swin_micro.safetensors'
    doc['provenance']['command'] = 'stm-lab detect train --model u_swin_micro --profile cpu --out=/m/runs/x'
    path.write_text(json.dumps(doc, indent=1) + '\n')
    assert replay.migrate(path)
    new = json.loads(path.read_text())
    assert new['provenance']['run_folder'] == 'runs/cpu/detection/u_swin_micro'
    assert new['config']['backbone_init'] == 'results/cpu/u_swin_micro.safetensors'
    assert new['provenance']['command'] == 'stm-lab detect train --model u_swin_micro --profile cpu --out=runs/x'
    assert 'command_as_run' not in new['provenance']  # only its path changed
    assert new['records'] == doc['records'] and replay.problems(path) == []
    with pytest.raises(ValueError, match='none of the project folders results, runs'):
        replay.relative('/etc/stm-lab/weights.safetensors')


@pytest.mark.parametrize('argv, expected', [
    (['/x/.venv/bin/stm-lab', 'train', '--model', 'u_x', '--set', 'data.auto_augment=rand m9'],
     "stm-lab train --model u_x --set 'data.auto_augment=rand m9'"),
    ([PACKAGE_DIR / 'training' / '__main__.py', '--model', 'u_x'], 'stm-lab train --model u_x'),
    ([PACKAGE_DIR / 'training' / '__main__.py', 'summary', '--profile', 'cpu'], 'stm-lab summary --profile cpu'),
    ([PACKAGE_DIR / 'analysis' / 'run.py', 'erf', '--profile', 'cpu'], 'stm-lab analyze erf --profile cpu'),
    ([PACKAGE_DIR / 'bench' / '__main__.py', 'table8'], 'stm-lab bench table8'),
    ([PACKAGE_DIR / 'cli.py', 'detect', 'evaluate'], 'stm-lab detect evaluate'),
    (['/usr/lib/python3/site-packages/ipykernel_launcher.py', '-f', 'k.json'], 'ipykernel_launcher.py -f k.json'),
])
def test_the_command_is_recorded_in_the_stm_lab_form_however_it_was_started(argv, expected, monkeypatch):
    monkeypatch.delenv(results.IMPORT_ENV, raising=False)
    assert command_line([str(a) for a in argv]) == expected


def test_modules_of_a_users_mixers_are_recorded_as_import_options(monkeypatch):
    monkeypatch.setenv(results.IMPORT_ENV, 'my_mixers,more_mixers')  # what stm-lab --import sets for its children
    assert (command_line([str(PACKAGE_DIR / 'training' / '__main__.py'), 'train', '--model', 'u_my_pool_micro'])
            == 'stm-lab --import my_mixers --import more_mixers train --model u_my_pool_micro')
    assert (command_line(['stm-lab', '--import', 'my_mixers', 'train', '--model', 'u_my_pool_micro'])
            == 'stm-lab --import more_mixers --import my_mixers train --model u_my_pool_micro')


def test_every_entry_module_runs_the_stm_lab_command_it_is_recorded_as():
    from stm_lab import mixers
    assert results.IMPORT_ENV == mixers.IMPORT_ENV and results.TRAINING_COMMANDS == parsers.TRAINING_COMMANDS
    for module, words in results.ENTRY_MODULES.items():
        path = PACKAGE_DIR.joinpath(*module.split('.')[1:])
        source = (path / '__main__.py' if path.is_dir() else path.with_suffix('.py')).read_text()
        assert "__name__ == '__main__'" in source or path.is_dir(), module
        assert not words or words[0] in parsers.COMMANDS, module


def _git(repo: Path, *args: str) -> str:
    return subprocess.run(['git', '-c', 'user.name=t', '-c', 'user.email=t@example.org', *args], cwd=repo,
                          check=True, capture_output=True, text=True).stdout


def test_a_dirty_tree_is_recorded_with_the_files_and_a_digest_of_the_difference(tmp_path, monkeypatch):
    _git(tmp_path, 'init', '-q')
    (tmp_path / 'a.py').write_text('x = 1\n')
    _git(tmp_path, 'add', 'a.py')
    _git(tmp_path, 'commit', '-q', '-m', 'a')
    monkeypatch.setattr(results, 'ROOT', tmp_path)
    sha = _git(tmp_path, 'rev-parse', 'HEAD').strip()
    (tmp_path / 'untracked.json').write_text('{}')  # a result being written does not make the tree dirty
    assert results.git_state() == dict(git_sha=sha, git_dirty=False)
    (tmp_path / 'a.py').write_text('x = 2\n')
    one = results.git_state()
    assert one['git_dirty'] and one['git_status'] == [' M a.py'] and len(one['git_diff_sha256']) == 16
    (tmp_path / 'a.py').write_text('x = 3\n')
    two = results.git_state()
    assert two['git_status'] == one['git_status'] and two['git_diff_sha256'] != one['git_diff_sha256']
    (tmp_path / 'a.py').write_text('x = 2\n')
    assert results.git_state() == one


def test_paths_are_recorded_relative_to_the_project(tmp_path, monkeypatch):
    assert results.project_path(ROOT / 'runs' / 'cpu' / 'x') == 'runs/cpu/x'
    assert results.project_path(ROOT / 'runs' / '..' / 'results' / 'cpu') == 'results/cpu'
    monkeypatch.chdir(ROOT)
    assert results.project_path('runs/cpu/x') == 'runs/cpu/x'
    assert results.project_path(tmp_path / 'runs') == str(tmp_path / 'runs')  # outside: as it is
    (tmp_path / 'link').symlink_to(ROOT, target_is_directory=True)
    assert results.project_path(tmp_path / 'link' / 'results') == 'results'


def test_the_command_line_migrates_and_then_finds_nothing(tmp_path, capsys):
    path = _copy(tmp_path, 'cpu/epochs12/train_u_halonet_micro.json')
    old = _as_first_recorded(json.loads(path.read_text()))
    path.write_text(json.dumps(old, indent=1) + '\n')
    assert replay.main(['check', str(tmp_path / 'results')]) == 1
    assert 'not in the stm-lab form' in capsys.readouterr().err
    assert replay.main(['migrate', str(tmp_path / 'results')]) == 0
    out = capsys.readouterr().out
    assert 'migrated 1 of 1 result files' in out and '1 result files checked: no problems' in out
    assert path.read_text() == (RESULTS / 'cpu/epochs12/train_u_halonet_micro.json').read_text()
