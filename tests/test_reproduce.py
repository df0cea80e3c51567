"""``stm-lab reproduce``: the plan of a profile's steps, what is done already, selection, and the executor (with a fake
step runner: no training here)."""
import json
import os
import subprocess
import sys
import textwrap
import time

import pytest

from stm_lab import reproduce, results
from stm_lab.models import main_models
from stm_lab.reproduce import DONE, FAILED, RAN, SKIPPED, TODO, build_plan, execute

COMMITTED = results.ROOT / 'results'


def _executed_notebook(path, profile, exception=False):
    path.write_text(json.dumps(dict(cells=[], nbformat=4, nbformat_minor=5, metadata=dict(
        papermill=dict(parameters=dict(profile=profile), exception=exception)))))


@pytest.fixture
def cpu_done(tmp_path, monkeypatch):
    """The committed cpu and paper results (as links, so that a test may remove one), executed notebooks and a built
    book newer than them: everything of the cpu profile is there."""
    root = tmp_path / 'results'
    for profile in ('cpu', 'paper'):
        for src in (COMMITTED / profile).rglob('*'):
            if src.is_file():
                dest = root / src.relative_to(COMMITTED)
                dest.parent.mkdir(parents=True, exist_ok=True)
                os.symlink(src, dest)
    monkeypatch.setattr(results, 'RESULTS_DIR', root)
    from stm_lab.ablations import planned_runs
    for r in planned_runs('cpu'):  # seed-set runs still training when these results were committed
        if not r.result.exists():
            r.result.parent.mkdir(parents=True, exist_ok=True)
            r.result.write_text('{}')
    gen = tmp_path / 'generated'
    gen.mkdir()
    for src in reproduce.NOTEBOOKS_DIR.glob('*.ipynb'):
        _executed_notebook(gen / src.name, 'cpu')
    index = tmp_path / '_build' / 'html' / 'index.html'
    index.parent.mkdir(parents=True)
    index.write_text('<html></html>')
    monkeypatch.setattr(reproduce, 'GENERATED_DIR', gen)
    monkeypatch.setattr(reproduce, 'BUILD_DIR', tmp_path / '_build')
    return root


def _todo(plan):
    return [s.name for s in plan if s.status == TODO]


MICRO = tuple(main_models('micro'))


def test_everything_present_is_all_done_already(cpu_done):
    plan = build_plan('cpu')
    names = [s.name for s in plan]
    assert names[:2] == ['complexity:table3', 'complexity:ablations']
    assert [n for n in names if n.startswith('train:')] == [f'train:{m}' for m in MICRO]
    for name in ('summary', 'analyze:erf', 'analyze:erf_photos', 'ablations', 'seeds', 'detect:data', 'detect:evaluate'):
        assert name in names
    assert names[-2:] == ['notebooks', 'book']
    assert _todo(plan) == []
    rows, code = execute(plan, runner=lambda s: pytest.fail(f'{s.name} ran'))
    assert code == 0 and {r.status for r in rows} == {DONE}


def test_a_removed_training_result_plans_that_step_and_what_depends_on_it(cpu_done):
    (cpu_done / 'cpu' / 'train_u_swin_micro.json').unlink()
    plan = build_plan('cpu')
    assert _todo(plan) == ['train:u_swin_micro', 'summary', 'analyze:erf', 'analyze:invariance', 'analyze:fgsm',
                           'analyze:demo', 'analyze:erf_photos', 'detect:data', 'detect:train:u_swin_micro',
                           'detect:evaluate', 'notebooks', 'book']
    step = {s.name: s for s in plan}
    assert 'train_u_swin_micro.json' in step['train:u_swin_micro'].missing
    assert step['detect:train:u_swin_micro'].missing == 'train:u_swin_micro runs first'
    # every notebook runs again when a result before it changes
    assert step['notebooks'].argv == ('notebooks', '--profile', 'cpu')


def test_a_removed_ablation_result_plans_the_ablations_and_the_book_only(cpu_done):
    (cpu_done / 'cpu' / 'ablations' / 'train_u_pvt_micro_d.json').unlink()
    plan = build_plan('cpu')
    assert _todo(plan) == ['ablations', 'notebooks', 'book']
    assert 'ablations/u_pvt_micro_d' in next(s for s in plan if s.name == 'ablations').missing


def test_an_analysis_lacking_a_model_is_planned(cpu_done, tmp_path):
    path = cpu_done / 'cpu' / 'fgsm.json'
    doc = json.loads(path.read_text())
    doc['config']['models'].remove('u_pvt_micro')
    path.unlink()
    path.write_text(json.dumps(doc))
    plan = build_plan('cpu', only=['analyze'])
    assert _todo(plan) == ['analyze:fgsm']
    assert plan[2].missing.endswith('lacks u_pvt_micro')


def test_stale_notebooks(cpu_done):
    gen = reproduce.GENERATED_DIR
    _executed_notebook(gen / 'erf.ipynb', 'smoke')
    _executed_notebook(gen / 'speed.ipynb', 'cpu', exception=True)
    (gen / 'lab.ipynb').unlink()
    stale = reproduce.stale_notebooks('cpu')
    assert stale == {'erf': 'executed at profile smoke', 'speed': 'failed when last executed', 'lab': 'not executed'}
    plan = build_plan('cpu', only=['notebooks', 'book'])
    assert plan[0].argv == ('notebooks', '--profile', 'cpu', '--only', 'erf', 'lab', 'speed')
    assert _todo(plan) == ['notebooks', 'book']  # the book is built again after them
    # a result written after the notebooks were executed makes them all stale (one of another profile does not)
    future = time.time() + 60
    (cpu_done / 'smoke').mkdir()
    (cpu_done / 'smoke' / 'erf.json').write_text('{}')
    os.utime(cpu_done / 'smoke' / 'erf.json', (future, future))
    assert len(reproduce.stale_notebooks('cpu')) == 3
    (cpu_done / 'cpu' / 'extra.json').write_text('{}')
    os.utime(cpu_done / 'cpu' / 'extra.json', (future, future))
    assert len(reproduce.stale_notebooks('cpu')) == len(list(reproduce.NOTEBOOKS_DIR.glob('*.ipynb')))


def test_only_selects_steps_and_groups(cpu_done):
    assert [s.name for s in build_plan('cpu', only=['analyze'])] == [
        'analyze:erf', 'analyze:invariance', 'analyze:fgsm', 'analyze:demo', 'analyze:erf_photos']
    assert [s.name for s in build_plan('cpu', only=['detect:train'])] == [f'detect:train:{m}' for m in MICRO]
    assert [s.name for s in build_plan('cpu', only=['train:u_pvt_micro', 'book'])] == ['train:u_pvt_micro', 'book']
    with pytest.raises(ValueError, match=r"unknown step 'trian'; valid: complexity, complexity:table3, .*train:u_pvt_micro"):
        build_plan('cpu', only=['trian'])


def test_skip_leaves_out_steps_and_groups(cpu_done):
    every = [s.name for s in build_plan('cpu')]
    assert every[-2:] == ['notebooks', 'book']
    assert [s.name for s in build_plan('cpu', skip=['notebooks', 'book'])] == every[:-2]  # the results only
    assert [s.name for s in build_plan('cpu', only=['analyze'], skip=['analyze:fgsm', 'analyze:demo'])] == [
        'analyze:erf', 'analyze:invariance', 'analyze:erf_photos']
    assert not [n for n in (s.name for s in build_plan('cpu', skip=['detect'])) if n.startswith('detect')]
    with pytest.raises(ValueError, match=r"unknown step 'boook'; valid: complexity, "):
        build_plan('cpu', skip=['boook'])


def test_smoke_plan_makes_the_outcomes_of_its_main_runs(tmp_path, monkeypatch):
    """At smoke the main runs are the seed set's seed 0: their per-image outcomes are a step after their trainings
    (the pages read them with seeds 1-4's); at cpu seed 0 is epochs12/, whose weights are not kept."""
    monkeypatch.setattr(results, 'RESULTS_DIR', tmp_path)
    plan = {s.name: s for s in build_plan('smoke')}
    step = plan['analyze:outcomes']
    assert step.argv == ('analyze', 'outcomes', '--profile', 'smoke', '--seed', '0')
    assert step.needs == tuple(f'train:{m}' for m in main_models('test')) and step.status == TODO
    assert step.missing == f'no {tmp_path}/smoke/outcomes_{main_models("test")[0]}.npz'
    assert 'analyze:outcomes' not in {s.name for s in build_plan('cpu')}


def test_models_restricts_the_per_model_steps(cpu_done):
    plan = build_plan('cpu', models=['u_swin_micro'])
    names = [s.name for s in plan]
    assert [n for n in names if n.startswith(('train:', 'detect:train:'))] == ['train:u_swin_micro',
                                                                                 'detect:train:u_swin_micro']
    step = {s.name: s for s in plan}
    assert step['analyze:erf'].argv[-2:] == ('--models', 'u_swin_micro')
    assert step['detect:evaluate'].argv[-2:] == ('--models', 'u_swin_micro')
    abl = step['ablations'].argv
    assert abl[:7] == ('ablations', 'run', '--profile', 'cpu', '--which', 'ablations', '--only')
    assert set(abl[7:]) == {'u_swin_micro_b', 'u_swin_micro_c', 'u_swin_micro_d', 'u_swin_micro_e',
                            'u_swin_micro_patchds'}  # Tables VI and II
    assert step['seeds'].argv == ('ablations', 'run', '--profile', 'cpu', '--which', 'seeds', '--only',
                                  'u_swin_micro')  # its seeds 1-4
    assert _todo(plan) == []
    # a registered model outside the roster is accepted (no ablation runs for its family)
    names = [s.name for s in build_plan('cpu', models=['u_identity_micro'])]
    assert [n for n in names if n.startswith('train:')] == ['train:u_identity_micro'] and 'ablations' not in names
    with pytest.raises(ValueError, match=r"unknown model 'u_nope_micro' at profile cpu; valid: u_halonet_micro, "):
        build_plan('cpu', models=['u_nope_micro'])
    with pytest.raises(ValueError, match='unknown model'):
        build_plan('cpu', models=['u_swin_test'])  # the smoke profile's


def test_bad_names_are_one_line_errors(cpu_done, capsys):
    assert reproduce.main(['--profile', 'cpu', '--only', 'nope']) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("stm-lab reproduce: error: unknown step 'nope'; valid: ") and '\n' not in err
    assert reproduce.main(['--profile', 'smoke', '--models', 'u_swin_micro']) == 2
    err = capsys.readouterr().err.strip()
    assert 'unknown model' in err and 'u_swin_test' in err and '\n' not in err


def _fake(plan, fail=(), no_result=()):
    """Each step's result appears when the fake runner 'runs' it, except for ``fail`` (exit 1) and ``no_result``."""
    made, calls = set(), []
    for s in plan:
        s.check = lambda s=s: None if s.name in made else 'missing'

    def runner(step):
        calls.append(step.name)
        if step.name in fail:
            return 1
        if step.name not in no_result:
            made.add(step.name)
        return 0
    return runner, calls


def test_a_failed_step_is_reported_and_the_independent_ones_still_run(tmp_path, monkeypatch):
    monkeypatch.setattr(results, 'RESULTS_DIR', tmp_path / 'results')
    monkeypatch.setattr(reproduce, 'GENERATED_DIR', tmp_path / 'generated')
    monkeypatch.setattr(reproduce, 'BUILD_DIR', tmp_path / '_build')
    plan = build_plan('cpu', only=['train', 'summary', 'analyze:erf', 'ablations', 'detect', 'notebooks', 'book'])
    assert all(s.status == TODO for s in plan)
    runner, calls = _fake(plan, fail={'train:u_pvt_micro'}, no_result={'analyze:erf'})
    rows, code = execute(plan, runner, log=lambda *a, **k: None)
    status = {r.step: r.status for r in rows}
    assert code == 1
    assert status['train:u_pvt_micro'] == FAILED
    assert status['train:u_swin_micro'] == RAN and status['ablations'] == RAN
    # what reads the failed training is skipped, and so is what needs a skipped step
    assert status['summary'] == SKIPPED and status['analyze:erf'] == SKIPPED
    assert status['detect:train:u_pvt_micro'] == SKIPPED and status['detect:evaluate'] == SKIPPED
    assert status['detect:train:u_swin_micro'] == RAN
    assert status['notebooks'] == RAN and status['book'] == RAN  # the book shows what there is
    assert 'summary' not in calls and 'detect:train:u_pvt_micro' not in calls
    table = reproduce.format_rows(rows)
    assert 'train:u_pvt_micro' in table and 'exit status 1' in table and 'needs train:u_pvt_micro (failed)' in table

    # a step that exits 0 without its result is a failure too
    plan = build_plan('smoke', only=['analyze:erf', 'analyze:fgsm'])
    runner, _ = _fake(plan, no_result={'analyze:erf'})
    rows, code = execute(plan, runner, log=lambda *a, **k: None)
    assert code == 1 and [(r.status, r.note) for r in rows] == [(FAILED, 'ran, but missing'), (RAN, '')]


def test_main_prints_the_summary_and_fails_when_a_step_fails(cpu_done, capsys):
    (cpu_done / 'cpu' / 'ablations' / 'train_u_pvt_micro_d.json').unlink()
    calls = []

    def runner(step):
        calls.append(step.name)
        return 1 if step.name == 'ablations' else 0
    assert reproduce.main(['--profile', 'cpu'], runner=runner) == 1
    out = capsys.readouterr().out
    assert calls == ['ablations', 'notebooks', 'book']
    lines = {line.split()[0]: line for line in out.splitlines() if line[:1].isalpha() and '  ' in line}
    assert 'done already' in lines['train:u_swin_micro'] and 'failed' in lines['ablations']
    assert ' ran ' in lines['notebooks'] and ' ran ' in lines['book']


def test_dry_run_prints_the_plan_and_runs_nothing(cpu_done, capsys):
    (cpu_done / 'cpu' / 'erf.json').unlink()
    assert reproduce.main(['--profile', 'cpu', '--dry-run'], runner=lambda s: pytest.fail('ran')) == 0
    out = capsys.readouterr().out
    assert 'stm-lab analyze erf --profile cpu' in out and f'(no {cpu_done / "cpu" / "erf.json"})' in out
    assert '24 steps at profile cpu: 21 done already, 3 to run' in out


def test_paper_prints_the_commands_and_runs_nothing(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(results, 'RESULTS_DIR', tmp_path / 'results')
    assert reproduce.main(['--profile', 'paper', '--models', 'u_swin_tiny', 'u_dwconv_micro'],
                          runner=lambda s: pytest.fail('ran')) == 0
    out = capsys.readouterr().out
    torchrun = [line.split('  ')[-1].strip() for line in out.splitlines() if 'torchrun ' in line]
    assert len(torchrun) == 4  # two trainings, two detectors
    assert all(t.startswith('torchrun --nproc_per_node=8 -m ') for t in torchrun)
    assert '--model u_swin_tiny --profile paper --data-dir $IMAGENET' in torchrun[0]
    assert '--model u_dwconv_micro --profile paper --data-dir $COCO' in torchrun[3]
    assert 'stm-lab summary --profile paper --save' in out
    assert not [line for line in out.splitlines() if line.startswith(('analyze', 'notebooks', 'book'))]
    assert not (tmp_path / 'results').exists()


def test_paper_plan_trains_table3(tmp_path, monkeypatch):
    monkeypatch.setattr(results, 'RESULTS_DIR', tmp_path / 'results')
    plan = build_plan('paper')
    from stm_lab.paper import TABLE3
    assert [s.model for s in plan if s.name.startswith('train:')] == list(TABLE3)
    assert [s.model for s in plan if s.name.startswith('detect:train:')] == list(MICRO)
    assert all(s.torchrun for s in plan if ':' in s.name and s.group in ('train', 'detect'))


TOY = textwrap.dedent('''
    import torch.nn.functional as F
    from stm_lab import TokenMixer, register_family, register_mixer

    @register_mixer('toy_repro')
    class ToyRepro(TokenMixer):
        uses_heads = False
        recipe = 'cnn'

        def forward(self, x):
            return F.max_pool2d(x.permute(0, 3, 1, 2), 3, 1, 1).permute(0, 2, 3, 1)

    register_family('u_toyrepro', mixer='toy_repro')
''')


@pytest.mark.e2e
def test_a_user_model_is_accepted_with_import(tmp_path):
    (tmp_path / 'toy_repro.py').write_text(TOY)
    env = dict(os.environ, STM_LAB_RESULTS=str(tmp_path / 'results'), OMP_NUM_THREADS='1',
               PYTHONPATH=os.pathsep.join(filter(None, [str(results.ROOT), os.environ.get('PYTHONPATH')])))
    env.pop('STM_LAB_IMPORT', None)
    args = [sys.executable, '-m', 'stm_lab.cli', 'reproduce', '--profile', 'smoke', '--models', 'u_toyrepro_test',
            '--only', 'train', 'analyze:erf', '--dry-run']
    out = subprocess.run(args, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert out.returncode == 2 and "unknown model 'u_toyrepro_test'" in out.stderr
    out = subprocess.run([*args[:3], '--import', 'toy_repro', *args[3:]], cwd=tmp_path, env=env,
                         capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-2000:]
    # the steps' processes import the module too
    assert 'stm-lab --import toy_repro train --model u_toyrepro_test --profile smoke' in out.stdout
    assert 'analyze erf --profile smoke --models u_toyrepro_test' in out.stdout
