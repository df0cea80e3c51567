"""The suite's own isolation (tests/conftest.py): results and runs go to the session's temporary folders, the committed
results are read through links, and a write replaces a link instead of writing through it into the checkout."""
import os
from pathlib import Path

from conftest import RESULTS, ROOT, RUNS, committed_results, link_farm
from stm_lab import results


def test_the_session_writes_outside_the_checkout():
    assert results.RESULTS_DIR == RESULTS and results.RUNS_DIR == RUNS
    assert not RESULTS.is_relative_to(ROOT) and not RUNS.is_relative_to(ROOT)
    assert os.environ['STM_LAB_RESULTS'] == str(RESULTS)  # what the processes tests start inherit


def test_the_committed_results_are_read_through_links():
    files = committed_results()
    assert Path('results/cpu/train_u_swin_micro.json') in files and Path('results/paper/table3_complexity.json') in files
    assert not [f for f in files if f.parts[1] == 'smoke']  # not committed: made by the smoke_results fixture
    link = RESULTS / 'cpu' / 'train_u_swin_micro.json'
    assert link.is_symlink() and link.resolve() == (ROOT / 'results' / 'cpu' / 'train_u_swin_micro.json').resolve()
    assert results.load_result('cpu', 'train_u_swin_micro')['config']['train']['model'] == 'u_swin_micro'


def test_a_write_replaces_the_link_and_leaves_the_checkout_alone(tmp_path, monkeypatch):
    committed = ROOT / 'results' / 'cpu' / 'train_u_swin_micro.json'
    before = committed.read_bytes()
    link_farm([Path('results/cpu/train_u_swin_micro.json')], tmp_path)
    monkeypatch.setattr(results, 'RESULTS_DIR', tmp_path)
    path = results.save_result('cpu', 'train_u_swin_micro', [dict(model='mine')])
    assert path == tmp_path / 'cpu' / 'train_u_swin_micro.json' and not path.is_symlink()
    assert results.load_result('cpu', 'train_u_swin_micro')['records'] == [dict(model='mine')]
    assert committed.read_bytes() == before
