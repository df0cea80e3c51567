"""Results with provenance, atomic writes, and the stm-lab command's error paths."""
import json
import os
import stat
import subprocess
import sys
import time

import nbformat
import pytest

from stm_lab import cli, results
from stm_lab.notebook_params import check_parameters


def test_save_and_load_round_trip_with_provenance(tmp_path, monkeypatch):
    monkeypatch.setattr(results, 'RESULTS_DIR', tmp_path)
    path = results.save_result('smoke', 'demo', [dict(a=1.5)], config=dict(seed=3))
    doc = results.load_result('smoke', 'demo')
    assert doc['records'] == [dict(a=1.5)] and doc['config'] == dict(seed=3)
    prov = doc['provenance']
    for key in ('git_sha', 'git_dirty', 'profile', 'command', 'torch', 'timm', 'cpu', 'created'):
        assert key in prov
    assert prov['profile'] == 'smoke'
    assert [p.name for p in path.parent.iterdir()] == ['demo.json']  # no temporary files left


def test_atomic_write_keeps_the_old_file_when_writing_fails(tmp_path):
    target = tmp_path / 'r.json'
    results.atomic_write_bytes(target, b'old')
    with pytest.raises(TypeError):
        results.atomic_write_bytes(target, object())  # not bytes: the write fails midway
    assert target.read_bytes() == b'old'
    assert os.listdir(tmp_path) == ['r.json']


def test_atomic_rewrites_keep_permissions_and_new_files_follow_the_umask(tmp_path):
    target = tmp_path / 'r.json'
    results.atomic_write_bytes(target, b'1')
    umask = os.umask(0o022)
    os.umask(umask)
    assert stat.S_IMODE(target.stat().st_mode) == 0o666 & ~umask  # as open() would create it (mkstemp gave 0600)
    target.chmod(0o640)
    results.atomic_write_bytes(target, b'2')
    assert stat.S_IMODE(target.stat().st_mode) == 0o640 and target.read_bytes() == b'2'
    target.chmod(0o600)  # as the earlier writes left every file
    results.atomic_write_bytes(target, b'3')
    assert stat.S_IMODE(target.stat().st_mode) == 0o666 & ~umask


def test_temporaries_of_killed_writers_are_removed_and_live_ones_kept(tmp_path):
    target = tmp_path / 'last.safetensors'
    dead = subprocess.Popen([sys.executable, '-c', 'pass'])
    dead.wait()  # a pid that no longer runs
    old_style = tmp_path / '.last.safetensors.k2x9_q1a.tmp'  # mkstemp's name, before pids were recorded
    leftovers = {'killed': tmp_path / f'.last.safetensors.{dead.pid}.00ff00ff.tmp', 'old': old_style,
                 'live': tmp_path / f'.last.safetensors.{os.getpid()}.12345678.tmp',
                 'recent': tmp_path / '.last.safetensors.abcdefgh.tmp',
                 'other file': tmp_path / f'.metrics.jsonl.{dead.pid}.00ff00ff.tmp'}
    for p in leftovers.values():
        p.write_bytes(b'x' * 1000)
    hours_ago = time.time() - 2 * results.LEGACY_TMP_AGE_S
    os.utime(old_style, (hours_ago, hours_ago))
    results.atomic_write_bytes(target, b'new')
    left = {k for k, p in leftovers.items() if p.exists()}
    assert left == {'live', 'recent', 'other file'} and target.read_bytes() == b'new'
    assert results.remove_stale_temporaries(target, every=True) == 2000 and not any(tmp_path.glob('.last*'))


def test_missing_and_corrupt_results_name_their_path(tmp_path, monkeypatch):
    monkeypatch.setattr(results, 'RESULTS_DIR', tmp_path)
    with pytest.raises(FileNotFoundError, match=str(tmp_path)):
        results.load_result('cpu', 'nothing')
    (tmp_path / 'cpu').mkdir()
    (tmp_path / 'cpu' / 'bad.json').write_text('{"records": [')
    with pytest.raises(ValueError, match='bad.json'):
        results.load_result('cpu', 'bad')


def test_cli_lists_models_and_reports_unknown_names(capsys):
    assert cli.main(['models', 'u_swin_*']) == 0
    out = capsys.readouterr().out.split()
    assert 'u_swin_micro' in out and 'u_swin_small_b' in out
    assert cli.main(['complexity', '--models', 'u_swin_mikro']) == 2
    err = capsys.readouterr().err
    assert 'unknown model' in err and 'u_swin_micro' in err


def test_cli_complexity_prints_paper_beside_ours(capsys):
    assert cli.main(['complexity', '--models', 'u_dwconv_micro', '--no-save']) == 0
    out = capsys.readouterr().out
    assert 'u_dwconv_micro' in out and '4.4M' in out


def _notebook(path, code):
    nb = nbformat.v4.new_notebook()
    nb.cells = [nbformat.v4.new_code_cell("profile = 'smoke'", metadata={'tags': ['parameters']}),
                nbformat.v4.new_code_cell(code)]
    nb.metadata['kernelspec'] = {'name': 'python3', 'display_name': 'Python 3', 'language': 'python'}
    nbformat.write(nb, path)


def test_a_failing_notebook_is_reported_and_the_others_still_run(tmp_path, capsys):
    src, out = tmp_path / 'src', tmp_path / 'out'
    src.mkdir()
    _notebook(src / 'a_fails.ipynb', "raise RuntimeError('broken on purpose')")
    _notebook(src / 'b_works.ipynb', "print('fine', profile)")
    assert cli.main(['notebooks', '--src', str(src), '--out', str(out)]) == 1
    captured = capsys.readouterr()
    assert 'a_fails.ipynb FAILED' in captured.err and 'broken on purpose' in captured.err
    assert '1 of 2 ran' in captured.out
    executed = nbformat.read(out / 'b_works.ipynb', as_version=4)
    assert 'fine cpu' in executed.cells[-1].outputs[0]['text']  # the command's default profile, not the cell's


def test_notebook_parameters_are_checked_with_a_clear_message():
    check_parameters('training', 'cpu')
    check_parameters('table3_complexity', 'smoke', recompute=True)
    wrong = "training: parameter profile must be one of smoke, cpu, got "
    for args, kw, message in ((('training', 'nope'), {}, wrong + "'nope'"),
                              (('training', 'paper'), {}, wrong + "'paper'"),
                              (('table3_complexity', 'cpu'), dict(recompute='yes'),
                               "table3_complexity: parameter recompute must be True or False, got 'yes'")):
        with pytest.raises(ValueError) as e:
            check_parameters(*args, **kw)
        assert str(e.value) == message
    with pytest.raises(SystemExit):  # the command offers only the profiles every notebook runs at
        cli.main(['notebooks', '--profile', 'paper'])


def test_every_notebook_checks_all_its_parameters_first():
    for path in sorted((results.ROOT / 'notebooks').glob('*.ipynb')):
        cells = json.loads(path.read_text())['cells']
        i = next(i for i, c in enumerate(cells) if 'parameters' in c['metadata'].get('tags', []))
        names = [line.split('=')[0].strip() for line in ''.join(cells[i]['source']).splitlines() if '=' in line]
        first = next(c for c in cells[i + 1:] if c['cell_type'] == 'code')
        call = f"check_parameters('{path.stem}', profile" + ''.join(f', {n}={n}' for n in names if n != 'profile') + ')'
        assert names[0] == 'profile' and call in ''.join(first['source']).splitlines()[:3], path.name


@pytest.mark.e2e
def test_a_bad_papermill_parameter_stops_the_notebook_with_the_message(tmp_path):
    import papermill as pm
    with pytest.raises(pm.PapermillExecutionError) as e:
        pm.execute_notebook(str(results.ROOT / 'notebooks' / 'training.ipynb'), str(tmp_path / 'out.ipynb'),
                            parameters=dict(profile='nope'), cwd=str(results.ROOT), kernel_name='python3',
                            progress_bar=False)
    assert e.value.ename == 'ValueError'
    assert e.value.evalue == "training: parameter profile must be one of smoke, cpu, got 'nope'"


def _merge_in(profile, model, value, prov_note='x'):
    return results.save_merged(profile, 'r', [dict(model=model, v=value), dict(photo=1)],
                               dict(models=[model], seed=0), dict(note=prov_note), [model], same=('seed',))


def test_merged_saves_add_models_replace_their_own_and_keep_shared_records_once(tmp_path, monkeypatch):
    monkeypatch.setattr(results, 'RESULTS_DIR', tmp_path)
    _merge_in('p', 'a', 1, 'first')
    _merge_in('p', 'b', 2)
    _, recs, config = _merge_in('p', 'a', 3)  # a again: its old record goes
    doc = results.load_result('p', 'r')
    assert doc['records'] == recs
    assert sorted((r['model'], r['v']) for r in recs if 'model' in r) == [('a', 3), ('b', 2)]
    assert [r for r in recs if 'model' not in r] == [dict(photo=1)]  # the shared record is not duplicated
    assert config['models'] == ['b', 'a']
    assert [p['note'] for p in doc['provenance']['earlier']] == ['x', 'first']
    with pytest.raises(ValueError, match='other settings'):
        results.save_merged('p', 'r', [], dict(models=['c'], seed=1), {}, ['c'], same=('seed',))
    assert results.load_result('p', 'r')['records'] == recs  # the refused merge wrote nothing


def test_concurrent_merges_lose_no_model(tmp_path):
    # four processes merge one model each into one result at the same time: the lock serializes them
    code = ('import sys; from stm_lab import results; m = sys.argv[1]; '
            "results.save_merged('p', 'r', [dict(model=m)], dict(models=[m]), {}, [m])")
    env = dict(os.environ, STM_LAB_RESULTS=str(tmp_path))
    procs = [subprocess.Popen([sys.executable, '-c', code, f'm{i}'], env=env) for i in range(4)]
    assert all(p.wait() == 0 for p in procs)
    doc = json.loads((tmp_path / 'p' / 'r.json').read_text())
    assert sorted(r['model'] for r in doc['records']) == [f'm{i}' for i in range(4)]
    assert sorted(doc['config']['models']) == [f'm{i}' for i in range(4)]
