"""Tables II, VI, VII at CPU scale: the switches (known answers), the registered names, the noise and verdict rules,
and the per-epoch consistency tracker (Fig. 7c)."""
import json
import types

import pytest
import timm
import torch

import stm_lab  # noqa: F401
from stm_lab import ablations, backbone, results
from stm_lab.analysis.complexity import count_params
from stm_lab.training.cli import main as train_main
from stm_lab.training.config import profile_config


def _rows_touched(f, out_index, x):
    """Input rows (H axis of an NCHW input) that the output at spatial position ``out_index`` depends on."""
    x = x.clone().requires_grad_(True)
    y = f(x)
    w = torch.randn(y.shape[1], generator=torch.Generator().manual_seed(1))  # not a plain sum: LN outputs sum to a constant
    g, = torch.autograd.grad((y[(0, slice(None), *out_index)] * w).sum(), x)
    rows = g.abs().sum(dim=(0, 1, 3)).nonzero().flatten().tolist()
    cols = g.abs().sum(dim=(0, 1, 2)).nonzero().flatten().tolist()
    return rows, cols


def test_patch_stem_and_merging_do_not_overlap_while_the_unified_ones_do():
    torch.manual_seed(0)
    x = torch.randn(1, 3, 32, 32)
    patch = backbone.patch_stem(3, 16)
    assert _rows_touched(patch, (2, 5), x) == (list(range(8, 12)), list(range(20, 24)))  # exactly its 4x4 patch
    # the unified stem: two 3x3 stride-2 convolutions (padding 1) see 7 pixels, starting 3 before 4 * i
    assert _rows_touched(backbone.Stem(3, 16), (2, 5), x) == (list(range(5, 12)), list(range(17, 24)))
    x = torch.randn(1, 8, 16, 16)
    assert _rows_touched(backbone.patch_transition(8, 16), (3, 1), x) == ([6, 7], [2, 3])
    assert _rows_touched(backbone.Transition(8, 16), (3, 1), x) == ([5, 6, 7], [1, 2, 3])


def test_patch_convolution_pads_to_keep_the_ceil_size():
    conv = backbone.PatchConv(3, 4, 4)
    assert conv(torch.randn(1, 3, 30, 33)).shape[-2:] == (8, 9)  # ceil(30/4), ceil(33/4), as the overlapped stem


def test_patchds_models_use_patch_layers_everywhere():
    m = timm.create_model('u_swin_micro_patchds', num_classes=10, img_size=64)
    assert m.stem[0].kernel_size == (4, 4) and m.stem[0].stride == (4, 4)
    assert all(s.downsample[0].kernel_size == (2, 2) for s in m.stages[1:])
    feats = m.forward_intermediates(torch.randn(2, 3, 64, 64), intermediates_only=True)
    assert [f.shape[-1] for f in feats] == [16, 8, 4, 2]  # the same map sizes as the unified model
    a = timm.create_model('u_swin_micro', num_classes=10, img_size=64)
    # 4x4x3x32 + 2x2 merging kernels replace the 3x3 stem pair and 3x3 transitions: fewer parameters
    assert count_params(m) < count_params(a)


def test_bottleneck_block_starts_as_relu_and_matches_the_unified_parameter_count():
    torch.manual_seed(0)
    m = timm.create_model('u_halonet_micro_resblock', num_classes=10, img_size=64).eval()
    block = m.stages[1].blocks[0]
    assert isinstance(block, backbone.BottleneckBlock) and block.mixer.dim == 96  # 1.5 x 64 channels
    x = torch.randn(2, 8, 8, 64)
    torch.testing.assert_close(block(x), torch.relu(x))  # zero-init last BN: the residual branch starts at zero
    a = timm.create_model('u_halonet_micro', num_classes=10, img_size=64)
    assert abs(count_params(m) / count_params(a) - 1) < 0.002  # 12 C^2 per block either way
    assert m(torch.randn(2, 3, 64, 64)).shape == (2, 10)


def test_bottleneck_branch_trains_away_from_identity():
    torch.manual_seed(0)
    m = timm.create_model('u_halonet_test_resblock', num_classes=4, img_size=32)
    loss = m(torch.randn(4, 3, 32, 32)).logsumexp(-1).sum()
    loss.backward()
    last_bn = m.stages[0].blocks[0].expand[-1]
    assert last_bn.weight.grad.abs().sum() > 0  # the zero-init scale receives a gradient


def test_ln_after_pooling_normalizes_the_pooled_features():
    m = timm.create_model('u_dwconv_micro_b', num_classes=10, img_size=64).eval()
    f = m.forward_head(m.forward_features(torch.randn(3, 3, 64, 64)), pre_logits=True)
    torch.testing.assert_close(f.mean(-1), torch.zeros(3), atol=1e-5, rtol=0)
    torch.testing.assert_close(f.var(-1, unbiased=False), torch.ones(3), atol=1e-3, rtol=0)


def test_every_planned_run_resolves_at_the_cpu_profile():
    runs = ablations.planned_runs('cpu')
    assert len(runs) == 46 and len({(r.subdir, r.model) for r in runs}) == 46  # 26 ablations, seeds 1-4 of five
    assert sum(r.table == 'VI' for r in runs) == 20 and sum(r.table == 'seed' for r in runs) == 20
    seeds = [r for r in runs if r.table == 'seed']
    assert {r.subdir for r in seeds} == {f'seed{s}' for s in (1, 2, 3, 4)} and all(r.analysis_command() for r in seeds)
    assert ' '.join(seeds[-1].analysis_command()[1:]).startswith('-m stm_lab.analysis.run outcomes --profile cpu --seed')
    for r in runs:
        cfg = profile_config(r.model, 'cpu', epochs=12, seed=r.seed)
        assert cfg.epochs == 12 and cfg.batch_size == 64
    # the A runs they are compared with were trained with the same settings (only the model differs)
    a = profile_config('u_pvt_micro', 'cpu', epochs=12)
    d = profile_config('u_pvt_micro_d', 'cpu', epochs=12)
    assert {k: v for k, v in a.to_dict().items() if k != 'model'} == {k: v for k, v in d.to_dict().items() if k != 'model'}


def test_train_dry_run_accepts_every_new_name(capsys):
    for r in ablations.planned_runs('cpu'):
        assert train_main(['train', '--model', r.model, '--profile', 'cpu', '--epochs', '12', '--dry-run']) == 0
    assert '"model": "u_halonet_micro_resblock"' in capsys.readouterr().out


def _result(folder, model, top1, n=1000, params=100):
    folder.mkdir(parents=True, exist_ok=True)
    doc = dict(provenance=dict(cpu='test cpu', command='test'), config=dict(params=params),
               records=[dict(epoch=1, top1_fp16=top1, val_images=n)])
    (folder / f'train_{model}.json').write_text(json.dumps(doc))


def test_rows_and_noise_from_results(tmp_path, monkeypatch):
    """Known answers: the seed spread from two seeds, the noise of a difference, the sign of a claim."""
    monkeypatch.setattr(results, 'RESULTS_DIR', tmp_path)
    base, seed1, abl = tmp_path / 'cpu/epochs12', tmp_path / 'cpu/seed1', tmp_path / 'cpu/ablations'
    for f, d in zip(ablations.MAIN_FAMILIES, (1.0, -1.0, 1.0, -1.0, 1.0)):
        _result(base, f'u_{f}_micro', 50.0)
        _result(seed1, f'u_{f}_micro', 50.0 + d)
    sd, k = ablations.seed_sd('cpu')
    assert k == 5 and sd == pytest.approx(1 / 2 ** 0.5)  # sqrt(mean(d^2) / 2)
    _result(abl, 'u_pvt_micro_d', 40.0)
    row = next(r for r in ablations.ablation_rows('cpu') if r['model'] == 'u_pvt_micro_d')
    # A = mean of its two seeds (50, 49) = 49.5; image SE of 49.5% on 1000 images = 1.581 points;
    # noise = sqrt(2 * 1.581^2 + 0.5 * (1 + 1/2)) = 2.398 (the variant's seed spread once, A's mean's once)
    assert row['ours_a'] == 49.5 and row['seeds_a'] == 2
    assert row['diff'] == -9.5 and row['noise'] == pytest.approx(2.398, abs=0.005) and row['beyond_noise']
    assert row['paper_diff'] == pytest.approx(-4.6)
    claims = ablations.claims('cpu')
    assert claims['sr_attn_block']['ours'] == -9.5 and claims['sr_attn_block']['noise'] == pytest.approx(2.40, abs=0.01)
    assert claims['ln_after_pool']['ours'] is None
    from stm_lab.pages.ablations import ablation_results
    verdicts = {r.claim.id: r.verdict for r in ablation_results('cpu')}
    assert verdicts['sr_attn_block'] == 'agrees' and verdicts['ln_after_pool'] == 'not yet measured'


def test_consistency_tracking_records_each_epoch_and_does_not_change_training(tmp_path):
    from stm_lab.training import checkpoint, engine
    from stm_lab.training.tracking import consistency_tracker
    cfg = profile_config('u_dwconv_test', 'smoke')
    plain = engine.train(cfg, tmp_path / 'a', resume='none', progress=False, export=False)
    tracked_cfg = profile_config('u_dwconv_test', 'smoke', track_consistency=8)
    hook = consistency_tracker('smoke', 8, tracked_cfg.data)
    tracked = engine.train(tracked_cfg, tmp_path / 'b', resume='none', progress=False, export=False, epoch_hook=hook)
    assert 0 <= tracked['consistency_shift'] <= 1 and 0 <= tracked['consistency_rotation'] <= 1
    assert tracked['consistency_images'] == 8
    assert tracked['top1'] == plain['top1'] and tracked['train_loss'] == plain['train_loss']
    a, _ = checkpoint.read_checkpoint(tmp_path / 'a' / 'last.safetensors')
    b, _ = checkpoint.read_checkpoint(tmp_path / 'b' / 'last.safetensors')
    assert all(torch.equal(a[k], b[k]) for k in a)
    history = [json.loads(line) for line in (tmp_path / 'b' / 'metrics.jsonl').read_text().splitlines()]
    assert all('consistency_shift' in h for h in history) and len(history) == cfg.epochs


def test_tracking_without_a_hook_is_refused(tmp_path):
    from stm_lab.training import engine
    with pytest.raises(ValueError, match='epoch_hook'):
        engine.train(profile_config('u_dwconv_test', 'smoke', track_consistency=8), tmp_path, progress=False)


def test_table4_rows_come_from_the_configurations():
    from stm_lab.training.config import recipe_table
    cols = {'t': profile_config('u_swin_tiny', 'paper'), 'c': profile_config('u_dwconv_tiny', 'paper'),
            'cpu': profile_config('u_swin_micro', 'cpu')}
    rows = {r['setting']: r for r in recipe_table(cols)}
    assert rows['batch size']['t'] == 1024 and rows['batch size']['c'] == 4096 and rows['batch size']['cpu'] == 64
    assert rows['epochs (warm-up)']['t'] == '300 (20)'
    assert rows['RandAugment']['t'].startswith('rand-m9') and rows['RandAugment']['cpu'] == 'off'
    assert rows['peak learning rate']['c'].startswith('0.004')


def test_smoke_runs_train_in_the_runners_process_and_record_their_command(tmp_path, monkeypatch, one_thread):
    """`stm-lab ablations run --profile smoke`: runs of seconds are trained one after another in its own process (no
    process per run), each recording the stm-lab command that makes it; a finished run is not trained again."""
    monkeypatch.setattr(results, 'RESULTS_DIR', tmp_path / 'results')
    monkeypatch.setattr(ablations, 'RUNS_DIR', tmp_path / 'runs')
    fail = types.SimpleNamespace(Popen=lambda *a, **kw: pytest.fail('a process per smoke run'))
    monkeypatch.setattr(ablations, 'subprocess', fail)  # the runner's own (git, started by provenance, may run)
    (run,) = [r for r in ablations.planned_runs('smoke') if r.model == 'u_pvt_test_d']
    assert ablations.run_queue(profile='smoke', only=['u_pvt_test_d'], which='ablations') == 0
    doc = json.loads(run.result.read_text())
    assert doc['provenance']['command'] == (f'stm-lab train --model u_pvt_test_d --profile smoke --no-progress --out '
                                            f'{tmp_path}/runs/smoke/ablations/u_pvt_test_d --results-subdir ablations')
    assert doc['config']['train']['epochs'] == 2 and run.out.is_dir()
    stamp = run.result.stat().st_mtime_ns
    assert ablations.run_queue(profile='smoke', only=['u_pvt_test_d'], which='ablations') == 0
    assert run.result.stat().st_mtime_ns == stamp


@pytest.mark.e2e
def test_ablations_page_builds_at_the_smoke_profile(tmp_path, smoke_results):
    """CI builds the ablation page from the tiny runs of the smoke results: every table and verdict renders."""
    from stm_lab import cli
    assert cli.main(['notebooks', '--profile', 'smoke', '--only', 'ablations', '--out', str(tmp_path)]) == 0
    text = (tmp_path / 'ablations.ipynb').read_text()
    for needle in ('SR-Attn', 'Halo-Shift', 'non-overlapped stem', 'verdict', 'beyond noise?', '± 2 SE'):
        assert needle in text
    assert 'not yet run' not in text  # at the smoke profile every run exists
