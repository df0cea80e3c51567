"""The benchmarks (stm_lab/bench/): the interleaved timer on a fake clock, the command tree, and every protocol at
its smallest settings returning sane figures and records (nothing here is timed: no speed assertions)."""
import json
import subprocess
import sys
import time

import pytest
import torch

import stm_lab  # noqa: F401  (registers the models)
from stm_lab.bench import cli, steps as T, table8, timing, train_profile, train_speed
from stm_lab.results import ROOT


pytestmark = pytest.mark.usefixtures('one_thread')  # tests/conftest.py


# ---------------------------------------------------------------------------------------------- the timer
class _FakeClock:
    """A clock that only contenders move: ``cost`` seconds per call of each."""

    def __init__(self):
        self.now = 0.0
        self.log = []

    def __call__(self):
        return self.now

    def contender(self, name, cost):
        def call():
            self.now += cost
            self.log.append(name)
        return call


def test_interleaved_alternates_rounds_and_reports_the_ratio():
    clock = _FakeClock()
    t = timing.interleaved({'slow': clock.contender('slow', 0.3), 'fast': clock.contender('fast', 0.1)},
                           rounds=4, calls=2, warmup=1, clock=clock)
    # warm-ups first, then each round times every contender (2 calls each), starting with a different one
    assert clock.log == ['slow', 'fast'] + ['slow'] * 2 + ['fast'] * 2 + ['fast'] * 2 + ['slow'] * 2 + \
        ['slow'] * 2 + ['fast'] * 2 + ['fast'] * 2 + ['slow'] * 2
    assert list(t) == ['slow', 'fast']  # the order given
    assert t['slow'].seconds == pytest.approx([0.3] * 4) and t['fast'].seconds == pytest.approx([0.1] * 4)
    assert t['slow'].median / t['fast'].median == pytest.approx(3.0)
    assert t['fast'].spread == pytest.approx(0.0) and t['fast'].rates(4) == pytest.approx([40.0] * 4)


def test_interleaved_spreads_a_slow_moment_over_all_contenders():
    """A load that slows every call of round 2 shows in both contenders' round 2; the medians keep the ratio."""
    clock = _FakeClock()
    calls = []

    def contender(name, cost):
        def call():
            calls.append(name)
            slow = 5 if 5 <= len(calls) <= 6 else 1  # the calls of round 2 (after 2 warm-ups and round 1)
            clock.now += cost * slow
        return call
    t = timing.interleaved({'a': contender('a', 0.2), 'b': contender('b', 0.1)}, rounds=3, clock=clock)
    assert t['a'].seconds == pytest.approx([0.2, 1.0, 0.2]) and t['b'].seconds == pytest.approx([0.1, 0.5, 0.1])
    assert t['a'].median / t['b'].median == pytest.approx(2.0)
    assert t['a'].best == pytest.approx(0.2) and t['a'].spread == pytest.approx(4.0)


def test_interleaved_sizes_calls_to_a_target_and_syncs_around_the_clock():
    clock = _FakeClock()
    syncs = []
    t = timing.interleaved({'x': clock.contender('x', 0.01)}, rounds=2, warmup=1, target_s=0.05, clock=clock,
                           sync=lambda: syncs.append(clock.now))
    assert t['x'].calls == 5 and clock.log.count('x') == 1 + 1 + 2 * 5  # warm-up, sizing call, 2 rounds of 5
    assert t['x'].median == pytest.approx(0.01)
    assert len(syncs) == 2 * 3  # before and after the sizing call and each round
    with pytest.raises(ValueError, match='rounds'):
        timing.interleaved({'x': clock.contender('x', 0.01)}, rounds=0)


def test_provenance_records_the_machine_and_the_load(monkeypatch):
    monkeypatch.setenv('OMP_WAIT_POLICY', 'PASSIVE')
    watch = timing.Watch()
    prov = timing.provenance(watch, threads=1)
    assert prov['profile'] == 'bench' and prov['threads'] == 1 and prov['cpu_threads'] == torch.get_num_threads()
    assert prov['torch'] == torch.__version__ and prov['cpu'] and prov['omp_wait_policy'] == 'PASSIVE'
    assert prov['load_avg_start'] == watch.load_start and len(prov['load_avg_end']) == 3 and prov['wall_s'] >= 0


# ---------------------------------------------------------------------------------------------- the command tree
def _stm_lab(*args):
    return subprocess.run([sys.executable, '-c', 'import sys; from stm_lab.cli import main; sys.exit(main())',
                           *args], cwd=ROOT, capture_output=True, text=True, timeout=300)


def test_bare_bench_lists_the_benchmarks():
    r = _stm_lab('bench')
    assert r.returncode == 0 and 'Traceback' not in r.stderr
    for name in cli.BENCHMARKS:
        assert any(line.split()[:1] == [name] for line in r.stdout.splitlines()), name


def test_unknown_benchmark_is_one_line_listing_the_valid_ones(capsys):
    assert cli.main(['nope']) == 2
    err = capsys.readouterr().err
    assert err.count('\n') == 1 and "'nope'" in err and all(name in err for name in cli.BENCHMARKS)


@pytest.mark.parametrize('name', list(cli.BENCHMARKS))
def test_each_benchmark_has_help(name, capsys):
    with pytest.raises(SystemExit) as e:
        cli.main([name, '--help'])
    out = capsys.readouterr().out
    assert e.value.code == 0 and f'stm-lab bench {name}' in out and 'issue' not in out


def test_stm_lab_bench_reaches_the_package():
    from stm_lab.parsers import build_parser
    args = build_parser().parse_args(['bench', 'table8', '--sizes', '32'])
    assert args.handler == 'stm_lab.bench.cli:run_parsed'
    assert (args.bench_module, args.sizes) == ('stm_lab.bench.table8', [32])
    assert build_parser().parse_args(['bench']).benchmark is None  # the list of benchmarks


# ---------------------------------------------------------------------------------------------- the protocols
def test_single_model_figures_are_positive():
    model = T.build_model('u_swin_test', 32, num_classes=10)
    assert T.train_images_per_sec(model, img_size=32, batch_size=2, steps=1, warmup=1) > 0
    assert T.infer_images_per_sec(model, img_size=32, batch_size=2, steps=1, warmup=0) > 0
    assert not model.training  # inference leaves the model in eval mode


def test_train_step_updates_the_weights():
    torch.manual_seed(0)
    model = T.build_model('u_halonet_test', 32, num_classes=10)
    before = [p.detach().clone() for p in model.parameters()]
    T.make_train_step(model, 32, 2)()
    assert any(not torch.equal(a, p) for a, p in zip(before, model.parameters()))


def test_compare_reports_median_best_and_rounds():
    calls = {'a': 0, 'b': 0}

    def step(name):
        def run():
            calls[name] += 1
        return run
    res = T.compare({'a': step('a'), 'b': step('b')}, batch_size=4, rounds=3, steps_per_round=2, warmup=1)
    assert calls == {'a': 7, 'b': 7}  # 1 warm-up + 3 rounds x 2 steps each
    for r in res.values():
        assert len(r['per_round']) == 3
        assert 0 < r['images_per_sec'] <= r['best_images_per_sec']


def test_train_speed_records_and_ratios():
    records = train_speed.train_speed(models=('u_swin_test', 'u_dwconv_test'), train_size=32, infer_sizes=(32,),
                            batch_size=2, infer_batch_size=2, rounds=1, steps_per_round=1, warmup=1,
                            infer_rounds=1, device='cpu', num_classes=10)
    assert [(r['model'], r['mode'], r['img_size']) for r in records] == [
        ('u_swin_test', 'train', 32), ('u_dwconv_test', 'train', 32),
        ('u_swin_test', 'infer', 32), ('u_dwconv_test', 'infer', 32)]
    for r in records:
        assert {'model', 'mode', 'img_size', 'batch_size', 'images_per_sec', 'best_images_per_sec',
                'ratio_to_dwconv', 'per_round', 'device', 'dtype', 'threads'} <= set(r)
        assert r['images_per_sec'] > 0 and r['dtype'] == 'fp32' and r['device'] == 'cpu'
        assert r['ratio_to_dwconv'] is None  # the baseline is u_dwconv_micro, not measured here
    table = T.format_table(records)
    assert 'u_swin_test' in table and 'train 32 (bs 2)' in table and 'infer 32 (bs 2)' in table
    json.dumps(records)  # savable as is


def test_ratio_to_the_baseline(monkeypatch):
    monkeypatch.setattr(train_speed, 'BASELINE', 'u_dwconv_test')
    records = train_speed.train_speed(models=('u_pvt_test', 'u_dwconv_test'), train_size=32, infer_sizes=(),
                            batch_size=2, rounds=1, steps_per_round=1, warmup=0, device='cpu', num_classes=10)
    by = {r['model']: r for r in records}
    assert by['u_dwconv_test']['ratio_to_dwconv'] == 1.0
    assert by['u_pvt_test']['ratio_to_dwconv'] == pytest.approx(
        by['u_pvt_test']['images_per_sec'] / by['u_dwconv_test']['images_per_sec'], rel=1e-2)


def test_train_speed_fp32_and_bf16_side_by_side(monkeypatch):
    """--bf16: both precisions of every model in the same rounds; each record's ratio to fp32 is its images/s over
    the same model's fp32 figure, and the ratio to the baseline stays within one precision."""
    monkeypatch.setattr(train_speed, 'BASELINE', 'u_dwconv_test')
    records = train_speed.train_speed(models=('u_swin_test', 'u_dwconv_test'), train_size=32, infer_sizes=(),
                                      batch_size=2, rounds=2, steps_per_round=1, warmup=0, device='cpu',
                                      amp_dtypes=(None, torch.bfloat16), num_classes=10)
    assert [(r['model'], r['dtype']) for r in records] == [
        ('u_swin_test', 'fp32'), ('u_dwconv_test', 'fp32'), ('u_swin_test', 'bf16'), ('u_dwconv_test', 'bf16')]
    by = {(r['model'], r['dtype']): r for r in records}
    for m in ('u_swin_test', 'u_dwconv_test'):
        fp32, bf16 = by[(m, 'fp32')], by[(m, 'bf16')]
        assert len(bf16['per_round']) == 2 and fp32['ratio_to_fp32'] == 1.0
        assert bf16['ratio_to_fp32'] == pytest.approx(bf16['images_per_sec'] / fp32['images_per_sec'], rel=1e-2)
    assert by[('u_dwconv_test', 'bf16')]['ratio_to_dwconv'] == 1.0
    assert by[('u_swin_test', 'bf16')]['ratio_to_dwconv'] == pytest.approx(
        by[('u_swin_test', 'bf16')]['images_per_sec'] / by[('u_dwconv_test', 'bf16')]['images_per_sec'], rel=1e-2)
    table = train_speed.format_precision_table(records).splitlines()
    assert 'train 32 (bs 2), images/s' in table[0] and table[1].split() == ['model', '|', 'fp32', 'bf16', 'bf16/fp32']
    row = table[3].split()
    swin = by[('u_swin_test', 'bf16')]
    assert row[0] == 'u_swin_test' and row[-1] == f'{swin["ratio_to_fp32"]:.2f}x'
    assert float(row[2]) == pytest.approx(by[('u_swin_test', 'fp32')]['images_per_sec'], abs=0.06)
    json.dumps(records)


def test_train_speed_bf16_command_line(capsys, monkeypatch, tmp_path):
    import stm_lab.results as results
    monkeypatch.setattr(results, 'RESULTS_DIR', tmp_path)
    for units in (False, True):  # the title says which kind of CPU gave the ratios
        monkeypatch.setattr(results, 'cpu_bf16_units', lambda: units)
        assert cli.main(['train-speed', '--bf16', '--models', 'u_dwconv_test', '--img-size', '32', '--infer-sizes',
                         '--batch-size', '2', '--rounds', '1', '--steps', '1', '--warmup', '0', '--threads', '1']) == 0
        title = capsys.readouterr().out.splitlines()[0]
        assert 'fp32 and bf16 (autocast)' in title and results.cpu_name() in title
        assert ('WITHOUT bf16 units' in title and 'emulated' in title) != units
    doc = json.loads((tmp_path / 'bench' / 'train_speed_bf16.json').read_text())
    assert [r['dtype'] for r in doc['records']] == ['fp32', 'bf16'] and doc['records'][1]['ratio_to_fp32'] > 0
    assert doc['config']['dtype'] == doc['provenance']['dtype'] == 'fp32 and bf16 (autocast)'
    assert cli.main(['train-speed', '--bf16', '--amp', 'bf16', '--models', 'u_dwconv_test', '--no-save']) == 2
    assert 'cannot be combined with --amp bf16' in capsys.readouterr().err


def test_table8_protocol_records_state_the_batch():
    records = table8.table8_throughput(['u_swin_test'], sizes=(32, 48), batch_sizes=(2, 1), device='cpu',
                                  warmup=0, steps=1, built_for=64)
    assert [(r['img_size'], r['batch_size']) for r in records] == [(32, 2), (48, 1)]
    assert all(r['images_per_sec'] > 0 and r['built_for'] == 64 and r['mode'] == 'infer' for r in records)
    with pytest.raises(ValueError, match='batch sizes'):
        table8.table8_throughput(['u_swin_test'], sizes=(32, 48), batch_sizes=(2,), device='cpu')


def test_timm_swin_has_the_micro_shape():
    import timm
    m = T.build_model('timm_swin_micro', 64)
    assert m.embed_dim == 32 and [len(s.blocks) for s in m.layers] == [2, 2, 9, 2]
    assert [s.blocks[0].attn.num_heads for s in m.layers] == [1, 2, 4, 8]
    assert m.layers[0].blocks[0].window_size == (4, 4)
    assert isinstance(m, timm.models.swin_transformer.SwinTransformer)


def test_command_line_without_saving(capsys, monkeypatch):
    monkeypatch.setenv('OMP_WAIT_POLICY', 'PASSIVE')
    code = cli.main(['train-speed', '--models', 'u_swin_test', '--img-size', '32', '--infer-sizes',
                     '--batch-size', '2', '--rounds', '1', '--steps', '1', '--warmup', '0', '--threads', '1',
                     '--no-save'])
    out = capsys.readouterr().out
    assert code == 0 and 'u_swin_test' in out and 'OMP_WAIT_POLICY=PASSIVE' in out and 'saved' not in out


def test_command_line_saves_with_provenance(tmp_path, monkeypatch):
    import stm_lab.results as results
    monkeypatch.setenv('OMP_WAIT_POLICY', 'PASSIVE')
    monkeypatch.setattr(results, 'RESULTS_DIR', tmp_path)
    assert cli.main(['table8', '--models', 'u_dwconv_test', '--sizes', '32', '--batch-sizes', '1', '--steps', '1',
                     '--warmup', '0', '--threads', '1', '--name', 't8']) == 0
    doc = json.loads((tmp_path / 'bench' / 't8.json').read_text())
    prov = doc['provenance']
    assert prov['omp_wait_policy'] == 'PASSIVE' and prov['profile'] == 'bench'
    assert prov['threads'] == 1 and prov['cpu'] and prov['torch'] == torch.__version__
    assert len(prov['load_avg_start']) == len(prov['load_avg_end']) == 3
    assert doc['config']['batch_sizes'] == [1] and doc['records'][0]['model'] == 'u_dwconv_test'


def test_train_profile_command(tmp_path, monkeypatch, capsys):
    import stm_lab.results as results
    monkeypatch.setattr(results, 'RESULTS_DIR', tmp_path)
    assert cli.main(['train-profile', '--models', 'u_dwconv_test', '--img-size', '32', '--batch-size', '2',
                     '--steps', '1', '--top', '3', '--threads', '1', '--device', 'cpu']) == 0
    doc = json.loads((tmp_path / 'bench' / 'train_profile.json').read_text())
    assert doc['records'][0]['model'] == 'u_dwconv_test' and len(doc['records'][0]['top_operators']) == 3
    assert 'u_dwconv_test (training step, 32x32, batch 2, 1 threads, fp32)' in capsys.readouterr().out


def test_train_profile_counts_the_bf16_conversions(tmp_path, monkeypatch, capsys):
    import stm_lab.results as results
    monkeypatch.setattr(results, 'RESULTS_DIR', tmp_path)
    assert cli.main(['train-profile', '--models', 'u_swin_test', '--img-size', '32', '--batch-size', '2', '--steps',
                     '1', '--top', '3', '--threads', '1', '--device', 'cpu', '--amp', 'bf16']) == 0
    record = json.loads((tmp_path / 'bench' / 'train_profile.json').read_text())['records'][0]
    c = record['conversions']
    assert record['dtype'] == 'bf16' and c['count'] > 0 and c['mb'] > 0 and 0 < c['share'] < 1
    assert sum(n for _, _, n, _ in c['causes']) <= c['count'] and len(c['causes']) <= 12
    # autocast's casts of the linear layers' weights, forward and backward, are among the causes
    assert any(cause.startswith('forward torch/nn/modules/linear.py') and d == 'float -> BFloat16'
               for cause, d, _, _ in c['causes'])
    assert any(cause == 'backward ToCopyBackward0' for cause, _, _, _ in c['causes'])
    out = capsys.readouterr().out
    assert 'u_swin_test (training step, 32x32, batch 2, 1 threads, bf16)' in out and 'dtype conversions:' in out


class _SlowBackward(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x):
        return x.clone()

    @staticmethod
    def backward(ctx, grad):
        time.sleep(0.05)
        return grad


class _SleepyNet(torch.nn.Module):
    """'slow_fwd' sleeps 50 ms in its forward, 'slow_bwd' 50 ms in its backward, 'head' neither."""

    class Part(torch.nn.Module):
        def __init__(self, fwd_s=0.0, slow_bwd=False):
            super().__init__()
            self.scale = torch.nn.Parameter(torch.ones(1))
            self.fwd_s, self.slow_bwd = fwd_s, slow_bwd

        def forward(self, x):
            time.sleep(self.fwd_s)
            x = x * self.scale
            return _SlowBackward.apply(x) if self.slow_bwd else x

    def __init__(self):
        super().__init__()
        self.slow_fwd = self.Part(fwd_s=0.05)
        self.stages = torch.nn.ModuleList([self.Part(slow_bwd=True), self.Part()])
        self.head = torch.nn.Linear(3, 4)

    def forward(self, x):
        x = self.slow_fwd(x)
        for s in self.stages:
            x = s(x)
        return self.head(x.mean((2, 3)))


def test_part_times_put_known_sleeps_in_the_right_parts():
    model = _SleepyNet()
    assert [n for n, _ in train_profile.model_parts(model)] == ['slow_fwd', 'stages.0', 'stages.1', 'head']
    ms = {r['part']: r['ms'] for r in train_profile.part_times(model, img_size=8, batch_size=2, steps=1, warmup=0)}
    assert ms['slow_fwd forward'] >= 50 and ms['stages.0 forward'] < 50 and ms['head forward'] < 50
    assert ms['stages.0 backward'] >= 50  # the backward of stages.0's output, before slow_fwd's gradient
    assert ms['slow_fwd backward'] < 50 and ms['stages.1 backward'] < 50 and ms['head backward'] < 50
    assert ms['total'] >= 100
    assert sum(v for k, v in ms.items() if k != 'total') == pytest.approx(ms['total'], abs=0.1)


def test_top_operators_of_a_step():
    model = T.build_model('u_dwconv_test', 32, num_classes=10)
    ops = train_profile.top_operators(model, img_size=32, batch_size=2, steps=1, warmup=1, top=5)
    assert len(ops) == 5 and all(o['ms'] > 0 and 0 < o['share'] <= 1 for o in ops)
    assert [o['ms'] for o in ops] == sorted((o['ms'] for o in ops), reverse=True)
    # which operators run is a known answer (which of them is slowest is not, on a shared machine): the stem's
    # convolutions, and the depth-wise mixer's compiled weight gradient
    names = {o['op'] for o in train_profile.top_operators(model, img_size=32, batch_size=2, steps=1, warmup=0,
                                                          top=1000)}
    from stm_lab.ops import _build
    assert 'aten::convolution' in names
    assert ('stm_lab::dwconv_weight_grad' in names) == (_build.load() is not None)  # the plain path without a compiler
    assert 'u_dwconv_test' in train_profile.format_profile([dict(
        model='u_dwconv_test', img_size=32, batch_size=2, threads=1, parts=[dict(part='total', ms=1.0)],
        top_operators=ops)])


def test_dcnv3_protocol_at_its_smallest(monkeypatch, capsys, tmp_path):
    from stm_lab.bench import dcnv3
    from stm_lab.ops import _build
    import stm_lab.results as results
    if _build.load() is None:
        pytest.skip(f'no compiled kernel here: {_build.LOADER.error}')
    monkeypatch.setattr(dcnv3, 'IMG_SIZES', (64,))
    monkeypatch.setattr(dcnv3, 'BATCH', 2)
    monkeypatch.setattr(results, 'RESULTS_DIR', tmp_path)
    train = dcnv3.bench_training
    monkeypatch.setattr(dcnv3, 'bench_training', lambda rounds: train(rounds, steps=1, img_size=32))
    assert cli.main(['dcnv3', '--rounds', '1', '--threads', '1', '--save']) == 0
    doc = json.loads((tmp_path / 'bench' / 'dcnv3.json').read_text())
    core = [r for r in doc['records'] if r['kind'] == 'core']
    assert [(r['img_size'], r['stage']) for r in core] == [(64, 1), (64, 3)]
    assert all(r['fwd_torch_ms'] > 0 and r['fwd+bwd_cpp_best_ms'] > 0 and r['fwd_speedup'] > 0 for r in core)
    train = [r for r in doc['records'] if r['kind'] == 'train']
    assert [r['model'] for r in train] == ['u_dwconv_micro', 'u_internimage_micro torch', 'u_internimage_micro cpp']
    assert doc['config']['batch'] == 2 and doc['provenance']['load_avg_end']
    assert 'core fwd+bwd speedup' in capsys.readouterr().out


def test_analyses_protocol_at_its_smallest(capsys):
    assert cli.main(['analyses', '--models', 'u_dwconv_test', '--img-size', '32', '--erf-images', '2',
                     '--fgsm-images', '2', '--threads', '1']) == 0  # seconds: both targets met
    out = capsys.readouterr().out
    assert 'ERF total' in out and 'FGSM total' in out and out.count('u_dwconv_test') == 2


def test_cpu_profile_protocol_at_its_smallest(tmp_path, monkeypatch, capsys):
    """The trainer's pipeline on the committed fixture: two models interleaved over two rounds, saved under the
    profile with the records the training page reads."""
    import stm_lab.results as results
    monkeypatch.setattr(results, 'RESULTS_DIR', tmp_path)
    assert cli.main(['cpu-profile', '--profile', 'smoke', '--models', 'u_dwconv_test', 'u_swin_test', '--steps', '1',
                     '--warmup', '1', '--rounds', '2', '--workers', '0', '--threads', '1', '--save']) == 0
    doc = json.loads((tmp_path / 'smoke' / 'train_throughput.json').read_text())
    assert [r['model'] for r in doc['records']] == ['u_dwconv_test', 'u_swin_test']
    for r in doc['records']:
        assert set(r) == {'model', 'batch_size', 'num_workers', 'amp', 'train_img_per_s', 'eval_img_per_s',
                          'params_m', 'train_epoch_s'}
        assert r['train_img_per_s'] > 0 and r['eval_img_per_s'] > 0 and r['train_epoch_s'] is None
    assert doc['config'] == dict(steps=1, models=['u_dwconv_test', 'u_swin_test'])
    assert doc['provenance']['profile'] == 'smoke' and doc['provenance']['load_avg_start']
    assert capsys.readouterr().out.count('"train_img_per_s"') == 2
