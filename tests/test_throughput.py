"""The throughput tools return sane figures and records (nothing here is timed: no speed assertions)."""
import json
import time

import pytest
import torch

import stm_lab  # noqa: F401  (registers the models)
from stm_lab.analysis import throughput as T


pytestmark = pytest.mark.usefixtures('one_thread')  # tests/conftest.py


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
    records = T.train_speed(models=('u_swin_test', 'u_dwconv_test'), train_size=32, infer_sizes=(32,),
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
    monkeypatch.setattr(T, 'BASELINE', 'u_dwconv_test')
    records = T.train_speed(models=('u_pvt_test', 'u_dwconv_test'), train_size=32, infer_sizes=(),
                            batch_size=2, rounds=1, steps_per_round=1, warmup=0, device='cpu', num_classes=10)
    by = {r['model']: r for r in records}
    assert by['u_dwconv_test']['ratio_to_dwconv'] == 1.0
    assert by['u_pvt_test']['ratio_to_dwconv'] == pytest.approx(
        by['u_pvt_test']['images_per_sec'] / by['u_dwconv_test']['images_per_sec'], rel=1e-2)


def test_table8_protocol_records_state_the_batch():
    records = T.table8_throughput(['u_swin_test'], sizes=(32, 48), batch_sizes=(2, 1), device='cpu',
                                  warmup=0, steps=1, built_for=64)
    assert [(r['img_size'], r['batch_size']) for r in records] == [(32, 2), (48, 1)]
    assert all(r['images_per_sec'] > 0 and r['built_for'] == 64 and r['mode'] == 'infer' for r in records)
    with pytest.raises(ValueError, match='batch sizes'):
        T.table8_throughput(['u_swin_test'], sizes=(32, 48), batch_sizes=(2,), device='cpu')


def test_timm_swin_has_the_micro_shape():
    import timm
    m = T.build_model('timm_swin_micro', 64)
    assert m.embed_dim == 32 and [len(s.blocks) for s in m.layers] == [2, 2, 9, 2]
    assert [s.blocks[0].attn.num_heads for s in m.layers] == [1, 2, 4, 8]
    assert m.layers[0].blocks[0].window_size == (4, 4)
    assert isinstance(m, timm.models.swin_transformer.SwinTransformer)


def test_command_line_without_saving(capsys, monkeypatch):
    monkeypatch.setenv('OMP_WAIT_POLICY', 'PASSIVE')  # already set: runs in this process, no relaunch
    code = T.main(['train-speed', '--models', 'u_swin_test', '--img-size', '32', '--infer-sizes',
                   '--batch-size', '2', '--rounds', '1', '--steps', '1', '--warmup', '0', '--threads', '1',
                   '--no-save'])
    out = capsys.readouterr().out
    assert code == 0 and 'u_swin_test' in out and 'OMP_WAIT_POLICY=PASSIVE' in out


def test_command_line_saves_with_provenance(tmp_path, monkeypatch):
    import stm_lab.results as results
    monkeypatch.setenv('OMP_WAIT_POLICY', 'PASSIVE')
    monkeypatch.setattr(results, 'RESULTS_DIR', tmp_path)
    assert T.main(['table8', '--models', 'u_dwconv_test', '--sizes', '32', '--batch-sizes', '1', '--steps', '1',
                   '--warmup', '0', '--threads', '1', '--name', 't8']) == 0
    doc = json.loads((tmp_path / 'bench' / 't8.json').read_text())
    assert doc['provenance']['omp_wait_policy'] == 'PASSIVE' and doc['provenance']['profile'] == 'bench'
    assert doc['config']['batch_sizes'] == [1] and doc['records'][0]['model'] == 'u_dwconv_test'


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
    assert [n for n, _ in T.model_parts(model)] == ['slow_fwd', 'stages.0', 'stages.1', 'head']
    ms = {r['part']: r['ms'] for r in T.part_times(model, img_size=8, batch_size=2, steps=1, warmup=0)}
    assert ms['slow_fwd forward'] >= 50 and ms['stages.0 forward'] < 50 and ms['head forward'] < 50
    assert ms['stages.0 backward'] >= 50  # the backward of stages.0's output, before slow_fwd's gradient
    assert ms['slow_fwd backward'] < 50 and ms['stages.1 backward'] < 50 and ms['head backward'] < 50
    assert ms['total'] >= 100
    assert sum(v for k, v in ms.items() if k != 'total') == pytest.approx(ms['total'], abs=0.1)


def test_top_operators_of_a_step():
    model = T.build_model('u_dwconv_test', 32, num_classes=10)
    ops = T.top_operators(model, img_size=32, batch_size=2, steps=1, warmup=1, top=5)
    assert len(ops) == 5 and all(o['ms'] > 0 and 0 < o['share'] <= 1 for o in ops)
    assert [o['ms'] for o in ops] == sorted((o['ms'] for o in ops), reverse=True)
    # which operators run is a known answer (which of them is slowest is not, on a shared machine): the stem's
    # convolutions, and the depth-wise mixer's compiled weight gradient
    names = {o['op'] for o in T.top_operators(model, img_size=32, batch_size=2, steps=1, warmup=0, top=1000)}
    from stm_lab.ops import _build
    assert 'aten::convolution' in names
    assert ('stm_lab::dwconv_weight_grad' in names) == (_build.load() is not None)  # the plain path without a compiler
    assert 'u_dwconv_test' in T.format_profile([dict(model='u_dwconv_test', img_size=32, batch_size=2, threads=1,
                                                     parts=[dict(part='total', ms=1.0)], top_operators=ops)])
