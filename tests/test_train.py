"""The training engine: Table IV profile, exact resume, checkpoint safety, evaluation, and DDP gradients."""
import fcntl
import json
import os
import shutil
import socket
import subprocess
import sys

import pytest

from stm_lab.profiles import PROFILES
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F
from safetensors.torch import load_file, save as st_save

from stm_lab import models, results
from stm_lab.training import checkpoint, cli, config, distributed, engine, reports
from stm_lab.data import build_mixup

TIMING = {'train_time_s', 'train_img_per_s', 'eval_time_s', 'wall_time_s', 'cpu_time_s'}
SMOKE = dict(limit_val=40, progress=False)
# tiny models run fastest on one thread, and two OpenMP threads crawl when another job holds a core
pytestmark = pytest.mark.usefixtures('one_thread')  # tests/conftest.py


def _cfg(**kw):
    return config.profile_config('u_swin_test', 'smoke', **kw)  # attention + relative position tables + BN head


def _files(folder):
    return {p.name: p.read_bytes() for p in folder.iterdir()}


def _numbers(history):
    return [{k: v for k, v in h.items() if k not in TIMING} for h in history]


@pytest.fixture(scope='module')
def smoke_run(tmp_path_factory, one_thread):
    """One uninterrupted smoke run (2 epochs), with its export under a temporary results folder."""
    root = tmp_path_factory.mktemp('smoke')
    with pytest.MonkeyPatch.context() as mp_:
        mp_.setattr(results, 'RESULTS_DIR', root / 'results')
        final = engine.train(_cfg(), root / 'run', resume='none', command='stm-lab train (smoke)', **SMOKE)
    return root, final


def test_paper_profile_is_table4():
    for model, batch, lr, warm_lr, min_lr in (('u_swin_tiny', 1024, 1e-3, 1e-6, 1e-5),
                                              ('u_halonet_micro', 1024, 1e-3, 1e-6, 1e-5),
                                              ('u_pvt_small', 1024, 1e-3, 1e-6, 1e-5),
                                              ('u_dwconv_base', 4096, 4e-3, 0.0, 1e-6),
                                              ('u_internimage_tiny', 4096, 4e-3, 0.0, 1e-6)):
        c = config.profile_config(model, 'paper')
        assert (c.epochs, c.warmup_epochs, c.batch_size, c.warmup_lr, c.min_lr) == (300, 20, batch, warm_lr, min_lr)
        assert c.lr == pytest.approx(lr) and c.lr == pytest.approx(batch / 1024 * 1e-3)  # linear scaling rule
        assert (c.weight_decay, c.clip_grad, c.ema_decay, c.layer_scale_init) == (0.05, 5.0, 0.9999, 1e-6)
        assert c.drop_path_rate is None and c.betas == (0.9, 0.999)  # the model's own drop-path rate
        d = c.data
        assert (d.dataset, d.img_size, d.crop_pct, d.interpolation) == ('imagenet', 224, 0.875, 'bicubic')
        assert (d.mixup, d.cutmix, d.label_smoothing, d.re_prob, d.color_jitter) == (0.8, 1.0, 0.1, 0.25, 0.4)
        assert d.auto_augment == 'rand-m9-mstd0.5-inc1' and d.scale == (0.08, 1.0)
        assert c.amp == 'fp16' and c.nproc == 8


def test_dry_run_prints_config_and_torchrun_command(capsys):
    assert cli.main(['train', '--model', 'u_dwconv_tiny', '--profile', 'paper', '--dry-run', '--data-dir', '/in1k']) == 0
    out = capsys.readouterr().out
    cfg = json.loads(out[:out.index('\n}\n') + 2])
    assert cfg['batch_size'] == 4096 and cfg['lr'] == pytest.approx(4e-3) and cfg['epochs'] == 300
    assert 'per process: batch 512 on each of 8 processes' in out
    assert ('torchrun --nproc_per_node=8 -m stm_lab.training train --model u_dwconv_tiny --profile paper '
            '--data-dir /in1k') in out
    # the printed command is the run itself: every override it was given, ImageNet's folder as a placeholder
    assert cli.main(['train', '--model', 'u_dwconv_tiny', '--profile', 'paper', '--epochs', '100', '--set',
                     'drop_path_rate=0.3', '--dry-run']) == 0
    assert out_line(capsys.readouterr().out, 'torchrun') == (
        'torchrun --nproc_per_node=8 -m stm_lab.training train --model u_dwconv_tiny --profile paper --epochs 100 '
        '--set drop_path_rate=0.3 --data-dir $IMAGENET')


def out_line(out: str, start: str) -> str:
    return next(line for line in out.splitlines() if line.startswith(start))


def test_cpu_profile_keeps_the_recipe_at_a_small_scale():
    t, c = config.profile_config('u_swin_micro', 'cpu'), config.profile_config('u_dwconv_micro', 'cpu')
    assert (t.batch_size, c.batch_size) == (64, 64) and (t.lr, c.lr) == pytest.approx((1e-3, 1e-3))
    assert (t.warmup_lr, t.min_lr, c.warmup_lr, c.min_lr) == (1e-6, 1e-5, 0.0, 1e-6)
    assert t.epochs == c.epochs == PROFILES['cpu'].epochs and t.data.img_size == 64 and t.data.dataset == 'imagenette'
    # EMA time constant 1/(1-decay), as a fraction of the run, equals 0.9999's in the paper's run
    for cfg, paper_batch in ((t, 1024), (c, 4096)):
        paper_steps = 300 * -(-1281167 // paper_batch)
        steps = cfg.epochs * (9469 // 64)
        rounding = 0.5e-5 / (1 - cfg.ema_decay)  # the decay is kept to 5 decimals
        assert 1 / (1 - cfg.ema_decay) / steps == pytest.approx(1e4 / paper_steps, rel=rounding)
    long = config.profile_config('u_dwconv_micro', 'cpu', epochs=45)
    assert long.warmup_epochs == 3.0 and long.ema_decay > c.ema_decay  # longer run, longer EMA time constant
    # the light form of the recipe (data/README.md): crop, flip, label smoothing; no RandAugment, mixup, cutmix, erasing
    for d in (t.data, c.data):
        assert (d.mixup, d.cutmix, d.re_prob, d.color_jitter, d.auto_augment) == (0.0, 0.0, 0.0, 0.0, None)
        assert (d.label_smoothing, d.hflip, d.scale, d.crop_pct) == (0.1, 0.5, (0.35, 1.0), 0.875)
    assert build_mixup(c.data, 10) is None


def test_no_weight_decay_for_norms_biases_and_position_tables(smoke_run):
    run = engine.Run(_cfg(), distributed.Dist(), limit_val=8)
    decay, no_decay = sorted(run.opt.param_groups, key=lambda g: -g['weight_decay'])
    assert decay['weight_decay'] == 0.05 and no_decay['weight_decay'] == 0.0
    names = {id(p): n for n, p in run.model.named_parameters()}
    skipped = {names[id(p)] for p in no_decay['params']}
    assert any('relative_position_bias_table' in n for n in skipped)
    assert all(names[id(p)].endswith('weight') and p.ndim > 1 for p in decay['params'])
    # schedule: warm-up from warmup_lr to the peak, cosine to min_lr, per step
    s, total = run.sched, run.total_steps
    assert s.warmup_t == 1 and total == 18
    lrs = [s._get_lr(t)[0] for t in (0, s.warmup_t, total - 1)]
    assert lrs[0] == pytest.approx(run.cfg.warmup_lr) and lrs[1] == pytest.approx(run.cfg.lr)
    assert run.cfg.min_lr < lrs[2] < 2e-5 and s._get_lr(total)[0] == pytest.approx(run.cfg.min_lr)


def test_interrupted_and_resumed_run_ends_exactly_like_an_uninterrupted_one(smoke_run, tmp_path, monkeypatch,
                                                                            crash_in_second_epoch):
    root, final = smoke_run
    monkeypatch.setattr(results, 'RESULTS_DIR', tmp_path / 'results')
    with pytest.raises(KeyboardInterrupt):
        engine.train(_cfg(), tmp_path / 'run', resume='none', command='first', **SMOKE)
    crash_in_second_epoch()  # lifts the interruption
    assert json.loads((tmp_path / 'run' / 'last.json').read_text())['epoch'] == 1
    resumed = engine.train(_cfg(), tmp_path / 'run', resume='auto', command='second', **SMOKE)
    prov = results.load_result('smoke', 'train_u_swin_test')['provenance']
    assert (prov['command'], prov['resumed_with']) == ('first', ['second']) and 'exported_with' not in prov

    a, b = load_file(root / 'run' / 'last.safetensors'), load_file(tmp_path / 'run' / 'last.safetensors')
    assert a.keys() == b.keys() and any(k.startswith('ema/') for k in a) and any(k.startswith('optim/') for k in a)
    assert all(torch.equal(a[k], b[k]) for k in a)  # weights, EMA and optimizer state, bit for bit
    hist = [json.loads(line) for line in (tmp_path / 'run' / 'metrics.jsonl').read_text().splitlines()]
    ref = [json.loads(line) for line in (root / 'run' / 'metrics.jsonl').read_text().splitlines()]
    assert len(hist) == 2 and _numbers(hist) == _numbers(ref)
    assert all(h['cpu_time_s'] > 0 for h in hist)  # core time of each epoch, summed into the provenance
    assert prov['cpu_time_s'] == pytest.approx(sum(h['cpu_time_s'] for h in hist), abs=0.051)
    assert {k: v for k, v in resumed.items() if k not in TIMING | {'checkpoint'}} == \
        {k: v for k, v in final.items() if k not in TIMING | {'checkpoint'}}


def test_truncated_corrupted_or_foreign_checkpoints_are_refused_and_left_in_place(smoke_run, tmp_path):
    root, _ = smoke_run
    good = (root / 'run' / 'last.safetensors').read_bytes()
    run = tmp_path / 'run'
    run.mkdir()
    ckpt = run / 'last.safetensors'
    ckpt.write_bytes(good[:len(good) // 2])
    with pytest.raises(ValueError, match=r'damaged.*left in place.*--resume none'):
        engine.train(_cfg(), run, **SMOKE)
    assert ckpt.read_bytes() == good[:len(good) // 2] and sorted(p.name for p in run.iterdir()) == ['last.safetensors']
    with pytest.raises(ValueError, match=str(ckpt)) as refused:  # eval names the file, without training's advice
        checkpoint.load_model(ckpt)
    assert '--resume' not in str(refused.value)

    flipped = bytearray(good)
    flipped[-100] ^= 0xFF  # inside the tensor data
    ckpt.write_bytes(bytes(flipped))
    with pytest.raises(ValueError, match='corrupted'):
        engine.train(_cfg(), run, **SMOKE)
    assert ckpt.read_bytes() == bytes(flipped)

    ckpt.write_bytes(good)
    with pytest.raises(ValueError, match=r'different run \(.*seed: 0 there, 1 here'):
        engine.train(_cfg(seed=1), run, **SMOKE)
    with pytest.raises(ValueError, match='different run'):
        engine.train(config.profile_config('u_dwconv_test', 'smoke'), run, **SMOKE)
    assert ckpt.read_bytes() == good
    assert cli.main(['train', '--model', 'u_swin_test', '--profile', 'smoke', '--out', str(run), '--seed', '2',
                       '--no-progress']) == 2


def test_a_flipped_bit_in_the_checkpoint_state_or_its_digest_is_refused(smoke_run, tmp_path, monkeypatch):
    root, _ = smoke_run
    monkeypatch.setattr(results, 'RESULTS_DIR', tmp_path / 'results')  # where a wrongly accepted run would export
    good = (root / 'run' / 'last.safetensors').read_bytes()
    run = tmp_path / 'run'
    run.mkdir()
    metrics = (root / 'run' / 'metrics.jsonl').read_bytes()
    (run / 'metrics.jsonl').write_bytes(metrics)
    ckpt = run / 'last.safetensors'
    # the state is a JSON string inside the file's JSON header, hence the escaped quotes
    for before, after, refusal in ((rb'\"epoch\": 2, \"steps_per_epoch\"', rb'\"epoch\": 0, \"steps_per_epoch\"',
                                    'state does not match the recorded sha256'),  # '2' -> '0' is one bit
                                   (b'"stm_lab_sha256"', b'"stm_lab_sha257"', 'unexpected metadata')):
        assert good.count(before) == 1
        flipped = good.replace(before, after)
        assert sum(bin(a ^ b).count('1') for a, b in zip(good, flipped)) == 1
        ckpt.write_bytes(flipped)
        with pytest.raises(ValueError, match=refusal):
            engine.train(_cfg(), run, **SMOKE)
        assert ckpt.read_bytes() == flipped and (run / 'metrics.jsonl').read_bytes() == metrics
        assert sorted(p.name for p in run.iterdir()) == ['last.safetensors', 'metrics.jsonl']


def test_a_checkpoint_written_before_the_new_fields_still_resumes_exactly(smoke_run, tmp_path, monkeypatch):
    root, final = smoke_run
    monkeypatch.setattr(results, 'RESULTS_DIR', tmp_path / 'results')
    run = tmp_path / 'run'
    engine.train(_cfg(), run, resume='none', stop_after=1, command='first', **SMOKE)
    tensors, state = checkpoint.read_checkpoint(run / 'last.safetensors')
    # as the code before them wrote it (format 1): no execution settings, no digest of the state
    old = {k: v for k, v in state.items() if k != 'execution'}
    old['config'] = {k: v for k, v in old['config'].items() if k != 'export_weights'}  # nor the export rule
    assert old['format'] == 'stm-lab-checkpoint/1' and 'tensors_sha256' in old
    (run / 'last.safetensors').write_bytes(st_save(tensors, metadata={'stm_lab': json.dumps(old)}))
    resumed = engine.train(_cfg(), run, command='second', **SMOKE)
    a, b = load_file(root / 'run' / 'last.safetensors'), load_file(run / 'last.safetensors')
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert resumed['top1_fp16'] == final['top1_fp16'] and resumed['ema_top1'] == final['ema_top1']
    assert checkpoint.read_checkpoint(run / 'last.safetensors')[1]['execution'] == dict(world_size=1, threads=1,
                                                                                         workers=0, device='cpu')
    assert resumed['weights'] == 'ema' and resumed['weights_rule'] == 'fixed: ema'  # the default where the EMA is on


@pytest.mark.parametrize('rule, better', [(None, 'model'), ('model', 'ema')])
def test_exported_weights_follow_the_fixed_rule_not_the_scores(rule, better, tmp_path, monkeypatch):
    """The exported weights are those the configuration names, even when the others score higher."""
    monkeypatch.setattr(results, 'RESULTS_DIR', tmp_path / 'results')
    evaluate = engine.Run.evaluate

    def rigged(self):  # the other weights score far higher on the reported split
        out = evaluate(self)
        out.update(top1=90.0 if better == 'model' else 10.0, ema_top1=90.0 if better == 'ema' else 10.0)
        return out
    monkeypatch.setattr(engine.Run, 'evaluate', rigged)
    cfg = _cfg(epochs=1) if rule is None else config.apply_settings(_cfg(epochs=1), [f'export_weights={rule}'])
    final = engine.train(cfg, tmp_path / 'run', resume='none', **SMOKE)
    expected = 'ema' if rule is None else rule
    assert final['weights'] == expected and final['weights_rule'] == f'fixed: {expected}'
    assert final['top1'] != final['ema_top1']  # both scores are still recorded
    exported = load_file(tmp_path / 'results' / 'smoke' / 'u_swin_test.safetensors')
    tensors, state = checkpoint.read_checkpoint(tmp_path / 'run' / 'last.safetensors')
    chosen = {k[len(expected) + 1:]: v for k, v in tensors.items() if k.startswith(expected + '/')}
    assert exported.keys() == chosen.keys()
    assert all(torch.equal(exported[k], v.half() if v.is_floating_point() else v) for k, v in chosen.items())
    doc = results.load_result('smoke', 'train_u_swin_test')
    assert doc['config']['train']['export_weights'] == expected
    assert checkpoint.read_checkpoint(tmp_path / 'results' / 'smoke' / 'u_swin_test.safetensors')[1]['weights_rule'] \
        == f'fixed: {expected}'
    assert reports.selection_note({'u_swin_test': doc}) == {
        'u_swin_test': dict(weights=expected, rule=f'fixed: {expected}', gap=None)}
    # a run checkpoint's 'auto' weights are those the run exports
    assert checkpoint.load_model(tmp_path / 'run' / 'last.safetensors')[1]['weights'] == expected


def test_export_weights_values():
    assert _cfg().export_weights is None and _cfg().exported == 'ema' and _cfg().to_dict()['export_weights'] == 'ema'
    assert _cfg(ema_decay=0).exported == 'model'
    assert config.TrainConfig.from_dict(_cfg().to_dict()).to_dict() == _cfg().to_dict()
    with pytest.raises(ValueError, match="export_weights must be one of ema, model, or none .*got 'best'"):
        config.apply_settings(_cfg(), ['export_weights=best'])
    with pytest.raises(ValueError, match="export_weights is 'ema' but the EMA is off"):
        _cfg(ema_decay=0, export_weights='ema')
    # a config recorded before the field reads as its default: no difference for the resume check
    old = {k: v for k, v in _cfg().to_dict().items() if k != 'export_weights'}
    assert config.config_differences(config.TrainConfig.from_dict(old), _cfg()) == []
    assert config.config_differences(config.TrainConfig.from_dict(old), _cfg(export_weights='model')) == [
        "export_weights: 'ema' there, 'model' here"]


def test_export_weights_bad_value_is_one_line(capsys):
    assert cli.main(['train', '--model', 'u_swin_test', '--profile', 'smoke', '--set', 'export_weights=best',
                     '--dry-run']) == 2
    err = capsys.readouterr().err
    assert err.count('\n') == 1 and 'export_weights must be one of ema, model' in err


def test_selection_note_of_legacy_results():
    doc = dict(records=[dict(epoch=2, top1=60.0, ema_top1=61.5, weights='ema')])
    assert reports.selection_note({'m': doc}) == {'m': dict(weights='ema', rule='score', gap=1.5)}
    text = reports.selection_text({'m': doc})
    assert 'exported before the choice was fixed' in text and '1.50-1.50 points' in text
    committed = reports.training_results('cpu')  # the committed results were exported by score
    notes = reports.selection_note(committed)
    assert notes and all(n['rule'] == 'score' and n['gap'] is not None for n in notes.values())


def _copy_of_finished_run(smoke_run, tmp_path, monkeypatch):
    """A copy of the finished smoke run, results redirected under tmp_path: (run folder, final metrics, its files)."""
    root, final = smoke_run
    monkeypatch.setattr(results, 'RESULTS_DIR', tmp_path / 'results')
    run = tmp_path / 'run'
    shutil.copytree(root / 'run', run)
    return run, final, _files(run)


def test_resume_refuses_other_workers_or_threads_and_keeps_the_recorded_threads(smoke_run, tmp_path, monkeypatch):
    run, final, before = _copy_of_finished_run(smoke_run, tmp_path, monkeypatch)
    with pytest.raises(ValueError, match=r'change the result \(--workers 0 there, 2 here\).*left in place'):
        engine.train(_cfg(data=dict(num_workers=2)), run, **SMOKE)
    with pytest.raises(ValueError, match=r'change the result \(--threads 1 there, 2 here\)'):
        engine.train(_cfg(), run, threads=2, **SMOKE)
    assert _files(run) == before and torch.get_num_threads() == 1
    torch.set_num_threads(2)  # no --threads: the checkpoint's count is taken
    again = engine.train(_cfg(), run, **SMOKE)  # finished: exports again
    assert torch.get_num_threads() == 1 and again['top1_fp16'] == final['top1_fp16']


def test_resume_on_another_device_type_is_refused(smoke_run, tmp_path, monkeypatch):
    """A checkpoint trained on a GPU continued on the CPU would not give the uninterrupted run's numbers."""
    monkeypatch.setattr(results, 'RESULTS_DIR', tmp_path / 'results')
    run = tmp_path / 'run'
    engine.train(_cfg(), run, resume='none', stop_after=1, command='first', **SMOKE)
    tensors, state = checkpoint.read_checkpoint(run / 'last.safetensors')
    state['execution']['device'] = 'cuda'
    checkpoint.write_checkpoint(run / 'last.safetensors', tensors, state)
    before = _files(run)
    with pytest.raises(ValueError, match=r'change the result \(trained on cuda there, cpu here\).*left in place'):
        engine.train(_cfg(), run, **SMOKE)
    assert _files(run) == before


def test_a_second_run_on_a_locked_folder_is_refused_and_a_killed_holder_blocks_nothing(smoke_run, tmp_path,
                                                                                      monkeypatch, capsys):
    run, final, before = _copy_of_finished_run(smoke_run, tmp_path, monkeypatch)
    lock = run / checkpoint.LOCK_NAME
    holder = subprocess.Popen([sys.executable, '-c', 'import fcntl, sys, time\n'
                               'f = open(sys.argv[1], "w"); fcntl.flock(f, fcntl.LOCK_EX)\n'
                               'f.write("pid of the first run"); f.flush()\n'
                               'print("locked", flush=True); time.sleep(60)', str(lock)],
                              stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline() == 'locked\n'
        with pytest.raises(ValueError, match=r'in use by another training run \(pid of the first run\)'):
            engine.train(_cfg(), run, resume='none', **SMOKE)
        assert cli.main(['train', '--model', 'u_swin_test', '--profile', 'smoke', '--out', str(run),
                           '--no-progress']) == 2
        assert len(capsys.readouterr().err.strip().splitlines()) == 1
        assert _files(run) == before | {checkpoint.LOCK_NAME: b'pid of the first run'}
    finally:
        holder.kill()  # as a killed run: its lock goes with it
        holder.wait()
    with open(run / '.lock', 'w') as runner_lock:  # stm-lab ablations holds this one around the trainer it starts
        fcntl.flock(runner_lock, fcntl.LOCK_EX)
        again = engine.train(_cfg(), run, **SMOKE)
    assert again['top1_fp16'] == final['top1_fp16'] and not lock.exists()


def test_temporaries_left_in_a_run_folder_by_killed_writes_are_removed(smoke_run, tmp_path, monkeypatch, capsys):
    run, _, _ = _copy_of_finished_run(smoke_run, tmp_path, monkeypatch)
    (run / '.last.safetensors.k2x9_q1a.tmp').write_bytes(bytes(4_000_000))  # fresh, of a writer without a pid
    (run / f'.metrics.jsonl.{os.getpid()}.0badf00d.tmp').write_bytes(bytes(1000))  # a live pid, yet no writer
    engine.train(_cfg(), run, **SMOKE)
    assert not list(run.glob('.*.tmp')) and 'removed 4.0 MB of temporaries' in capsys.readouterr().err


def test_ctrl_c_says_where_the_run_stopped_and_how_to_continue(tmp_path, monkeypatch, capsys, crash_in_second_epoch):
    monkeypatch.setattr(results, 'RESULTS_DIR', tmp_path / 'results')
    run = tmp_path / 'run'
    argv = ['train', '--model', 'u_swin_test', '--profile', 'smoke', '--out', str(run), '--no-progress']
    assert cli.main(argv + ['--resume', 'none']) == 130
    err = capsys.readouterr().err
    assert 'Traceback' not in err and err.strip().splitlines()[-1] == (
        f'stm-lab train: interrupted during epoch 2 of 2; {run / "last.safetensors"} holds the run after epoch 1; '
        'run the same command again without --resume none to continue')
    assert json.loads((run / 'last.json').read_text())['epoch'] == 1 and not list(run.glob('.*'))


def test_bad_arguments_are_one_line_messages_and_change_nothing(smoke_run, tmp_path, monkeypatch, capsys):
    # a finished run: --resume none must not touch it before its first epoch
    run, _, before = _copy_of_finished_run(smoke_run, tmp_path, monkeypatch)
    new = tmp_path / 'new'
    base = ['train', '--model', 'u_swin_test', '--profile', 'smoke', '--no-progress', '--resume', 'none']
    for args, message in ((['--epochs', '0'], 'epochs must be an integer of at least 1, got 0'),
                          (['--epochs', '-3'], 'epochs must be an integer of at least 1, got -3'),
                          (['--batch-size', '0'], 'batch_size must be an integer of at least 1, got 0'),
                          (['--batch-size', '1000'], '300 training images make no batch of 1000'),
                          (['--set', 'data.scale=1'], "--set data.scale: expected 2 comma-separated values, got '1'"),
                          (['--set', 'betas=0.9'], "--set betas: expected 2 comma-separated values, got '0.9'"),
                          (['--threads', '-2'], '--threads must be at least 1, got -2'),
                          (['--threads', '0'], '--threads must be at least 1, got 0'),
                          (['--seed', '-1'], 'seed must be an integer of at least 0, got -1'),
                          (['--stop-after', '0'], '--stop-after must be at least 1, got 0'),
                          (['--workers', '-1'], 'data.num_workers must be an integer of at least 0, got -1')):
        for out in (run, new):
            assert cli.main(base + ['--out', str(out), *args]) == 2, args
            assert capsys.readouterr().err == f'stm-lab train: error: {message}\n'
    assert _files(run) == before and not new.exists() and not (tmp_path / 'results').exists()
    assert torch.get_num_threads() == 1
    ckpt = str(smoke_run[0] / 'run' / 'last.safetensors')
    for limit in ('-5', '0'):  # were 95 images and the whole split
        assert cli.main(['eval', '--checkpoint', ckpt, '--limit', limit]) == 2
        assert capsys.readouterr().err == f'stm-lab eval: error: --limit must be at least 1, got {limit}\n'
    with pytest.raises(SystemExit) as e:  # a usage error: one line too, not the dozen lines of usage
        cli.main(base + ['--epochs', 'x'])
    assert e.value.code == 2 and capsys.readouterr().err == (
        "python -m stm_lab.training train: error: argument --epochs: invalid int value: 'x' (see --help)\n")


def test_starting_over_leaves_the_old_run_whole_until_the_first_new_epoch(smoke_run, tmp_path, monkeypatch):
    run, _, before = _copy_of_finished_run(smoke_run, tmp_path, monkeypatch)
    step = engine.Run.step

    def interrupted(self, x, y, global_step):
        if global_step == 3:
            raise KeyboardInterrupt
        return step(self, x, y, global_step)
    monkeypatch.setattr(engine.Run, 'step', interrupted)
    with pytest.raises(engine.RunInterrupted, match='during epoch 1 of 2; no epoch of this run had finished, so '
                                                   'nothing was saved'):
        engine.train(_cfg(), run, resume='none', **SMOKE)
    assert _files(run) == before  # metrics.jsonl still agrees with last.safetensors


def test_exported_half_precision_weights_evaluate_from_what_they_record(smoke_run, capsys):
    root, final = smoke_run
    path = root / 'results' / 'smoke' / 'u_swin_test.safetensors'
    tensors = load_file(path)
    assert all(v.dtype == torch.float16 for v in tensors.values() if v.is_floating_point())
    doc = json.loads((root / 'results' / 'smoke' / 'train_u_swin_test.json').read_text())
    assert doc['provenance']['profile'] == 'smoke' and 'git_sha' in doc['provenance']
    assert doc['config']['train']['model'] == 'u_swin_test' and doc['records'][-1]['top1_fp16'] == final['top1_fp16']
    r = engine.evaluate_checkpoint(path, split='val', limit=40)
    assert r['images'] == 40 and r['top1'] == final['top1_fp16'] and r['weights'] == final['weights']
    assert cli.main(['eval', '--checkpoint', str(root / 'run' / 'last.safetensors'), '--split', 'val',
                       '--limit', '40', '--weights', 'model', '--json']) == 0
    line = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert line['top1'] == final['top1'] and line['images'] == 40
    assert cli.main(['eval', '--checkpoint', str(root / 'nothing.safetensors')]) == 2


def test_a_kill_between_the_two_export_writes_is_detected_and_exporting_again_repairs_it(smoke_run, tmp_path,
                                                                                          monkeypatch):
    root, final = smoke_run
    monkeypatch.setattr(results, 'RESULTS_DIR', tmp_path / 'results')
    shutil.copytree(root / 'results', tmp_path / 'results')  # an earlier export of the same model
    weights = tmp_path / 'results' / 'smoke' / 'u_swin_test.safetensors'
    assert reports.summary('smoke', models=('u_swin_test',))[0]['top1'] == final['top1_fp16']
    save_result = results.save_result

    def killed(*args, **kw):  # the kill lands after the weights are written, before the result JSON
        raise KeyboardInterrupt
    monkeypatch.setattr(results, 'save_result', killed)
    with pytest.raises(KeyboardInterrupt):
        engine.train(_cfg(epochs=1), tmp_path / 'run', resume='none', **SMOKE)  # other weights, same file names
    monkeypatch.setattr(results, 'save_result', save_result)
    for read in (lambda: reports.summary('smoke', models=('u_swin_test',)), lambda: checkpoint.load_model(weights),
                 lambda: engine.evaluate_checkpoint(weights, limit=8)):
        with pytest.raises(ValueError, match='come from different exports'):
            read()
    again = engine.train(_cfg(epochs=1), tmp_path / 'run', **SMOKE)  # the finished run exports again
    assert again['weights_sha256'] != final['weights_sha256']  # the interrupted export had other weights
    assert reports.summary('smoke', models=('u_swin_test',))[0]['top1'] == again['top1_fp16']
    assert checkpoint.load_model(weights)[1]['metrics'] == again


def test_exports_written_before_the_weights_digest_pair_by_their_metrics():
    committed = sorted((results.ROOT / 'results' / 'cpu').glob('u_*_micro.safetensors'))
    if not committed:
        pytest.skip('no committed cpu weights')
    for path in committed:
        state = checkpoint.read_checkpoint(path, tensors=False)[1]
        assert 'weights_sha256' not in state['metrics']
        checkpoint.check_export(path, state)


def test_summary_puts_top1_beside_the_paper(smoke_run, monkeypatch):
    root, final = smoke_run
    monkeypatch.setattr(results, 'RESULTS_DIR', root / 'results')
    rows = reports.summary('smoke', models=('u_swin_test', 'u_swin_micro'))
    assert len(rows) == 1 and rows[0]['top1'] == final['top1_fp16'] and rows[0]['paper_top1'] is None
    readme = reports.summary_readme(rows, reports.format_summary(rows, 'smoke'), 'smoke')
    assert '| u_swin_test |' in readme and 'window=' in readme
    assert reports.summary('smoke', models=('u_swin_micro',)) == [] and reports.format_summary([], 'cpu').count('\n') == 1


def test_summary_command_reads_the_profiles_own_models(smoke_run, monkeypatch, capsys):
    root, final = smoke_run
    monkeypatch.setattr(results, 'RESULTS_DIR', root / 'results')
    assert cli.main(['summary', '--profile', 'smoke']) == 0  # looked only for micro models before
    assert '| u_swin_test | ' in capsys.readouterr().out and config.profile_models('smoke/again') == config.SMOKE_MODELS
    monkeypatch.setattr(results, 'RESULTS_DIR', root / 'nothing')
    assert cli.main(['summary', '--profile', 'smoke']) == 2
    assert '--model u_dwconv_test --profile smoke' in capsys.readouterr().err


# ------------------------------------------------------------------------------ DDP gradient equivalence

def _tiny_model():
    torch.manual_seed(0)
    return models.create_model('u_swin_test', num_classes=10, img_size=32)


def _batch():
    g = torch.Generator().manual_seed(1)
    x = torch.randn(8, 3, 32, 32, generator=g)
    target = torch.softmax(torch.randn(8, 10, generator=g), 1)  # soft targets, as after mixup
    return x, target


def _loss(model, x, target):
    return torch.sum(-target * F.log_softmax(model(x), dim=-1), dim=-1).mean()  # SoftTargetCrossEntropy


def _ddp_worker(rank, world, port, out):
    import os
    os.environ.update(MASTER_ADDR='127.0.0.1', MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world),
                      LOCAL_RANK=str(rank))
    torch.set_num_threads(1)
    d = distributed.init_distributed('cpu')
    model = _tiny_model().eval()  # BN from running statistics: SyncBatchNorm has no CPU kernel
    ddp = distributed.prepare_model(model, d)
    x, target = _batch()
    _loss(ddp, x.chunk(world)[rank], target.chunk(world)[rank]).backward()
    if rank == 0:
        torch.save({n: p.grad for n, p in model.named_parameters()}, out)
    dist.destroy_process_group()


def test_two_gloo_processes_average_the_same_gradients_as_one_process(tmp_path):
    mp.spawn(_ddp_worker, args=(2, _free_port(), str(tmp_path / 'g.pt')), nprocs=2, join=True)
    ddp_grads = torch.load(tmp_path / 'g.pt', weights_only=True)
    model = _tiny_model().eval()
    _loss(model, *_batch()).backward()
    assert ddp_grads.keys() == {n for n, _ in model.named_parameters()}
    for n, p in model.named_parameters():
        torch.testing.assert_close(ddp_grads[n], p.grad, rtol=1e-5, atol=1e-7, msg=n)


def _free_port():
    with socket.socket() as s:
        s.bind(('127.0.0.1', 0))
        return s.getsockname()[1]


def _two_process_run_worker(rank, world, port, root):
    """A tiny two-process training run (rank 0's digests of the model and EMA at each evaluation, and every rank's),
    then a one-process checkpoint resumed by both processes."""
    import os
    from pathlib import Path
    os.environ.update(MASTER_ADDR='127.0.0.1', MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world),
                      LOCAL_RANK=str(rank))
    torch.set_num_threads(1)
    root = Path(root)
    results.RESULTS_DIR = root / 'results'
    seen = []
    evaluate = engine.Run.evaluate

    def spy(self):  # what each process evaluates: every tensor of the weights and of the EMA
        out = evaluate(self)
        seen.append([checkpoint._tensor_digest(self.model.state_dict()), checkpoint._tensor_digest(self.ema.module.state_dict())])
        return out
    engine.Run.evaluate = spy
    engine.train(_cfg(epochs=1), root / 'two', resume='none', limit_train=128, limit_val=40, progress=False)
    try:
        engine.train(_cfg(), root / 'one', limit_val=40, progress=False)
        refused = None
    except ValueError as e:
        refused = str(e)
    (root / f'rank{rank}.json').write_text(json.dumps(dict(seen=seen, refused=refused)))
    dist.destroy_process_group()


@pytest.fixture(scope='module')
def two_process_run(smoke_run, tmp_path_factory):
    root = tmp_path_factory.mktemp('two')
    shutil.copytree(smoke_run[0] / 'run', root / 'one')  # written by one process
    mp.spawn(_two_process_run_worker, args=(2, _free_port(), str(root)), nprocs=2, join=True)
    return root, [json.loads((root / f'rank{r}.json').read_text()) for r in range(2)]


def test_two_processes_evaluate_the_one_model_they_checkpoint(two_process_run):
    root, ranks = two_process_run
    assert len(ranks[0]['seen']) == 1 and ranks[0]['seen'] == ranks[1]['seen']  # weights, BN statistics, EMA
    state = checkpoint.read_checkpoint(root / 'two' / 'last.safetensors')[1]
    assert state['execution']['world_size'] == 2
    last = state['history'][-1]
    run = engine.Run(_cfg(epochs=1), distributed.Dist(), limit_val=40)  # the same 40 images, scored by one process
    for weights, prefix in (('model', ''), ('ema', 'ema_')):
        scored = engine.evaluate_models({'': checkpoint.load_model(root / 'two' / 'last.safetensors', weights)[0]},
                                       run.val_loader, run.finish_val, run.d, run.autocast)
        assert (scored['top1'], scored['top5']) == (last[f'{prefix}top1'], last[f'{prefix}top5'])


def test_a_checkpoint_resumed_under_another_number_of_processes_is_refused(two_process_run, tmp_path, monkeypatch):
    root, ranks = two_process_run
    for r in ranks:  # both processes refuse (neither waits for the other) and the checkpoint is as it was
        assert 'would change the result (1 process(es) there, 2 here)' in r['refused']
    monkeypatch.setattr(results, 'RESULTS_DIR', tmp_path)
    with pytest.raises(ValueError, match=r'change the result \(2 process\(es\) there, 1 here\)'):
        engine.train(_cfg(epochs=1), root / 'two', **SMOKE)


def test_a_finished_run_exports_again_into_a_results_subdir(smoke_run, tmp_path, monkeypatch):
    root, final = smoke_run
    monkeypatch.setattr(results, 'RESULTS_DIR', tmp_path)
    again = engine.train(_cfg(), root / 'run', results_subdir='longer', command='export', **SMOKE)  # 2/2: no training
    doc = results.load_result('smoke/longer', 'train_u_swin_test')
    # the numbers keep the command that trained them; the re-export is named beside it
    assert doc['provenance']['command'] == 'stm-lab train (smoke)' and doc['provenance']['exported_with'] == 'export'
    assert 'resumed_with' not in doc['provenance']
    assert (tmp_path / 'smoke' / 'longer' / 'u_swin_test.safetensors').exists()
    assert not (tmp_path / 'smoke' / 'u_swin_test.safetensors').exists()  # the profile's main set is untouched
    assert again['top1_fp16'] == final['top1_fp16'] and doc['records'][-1]['epoch'] == 2
    assert reports.summary('smoke/longer', models=('u_swin_test',))[0]['top1'] == final['top1_fp16']


def test_settings_override_config_fields_with_their_types():
    cfg = config.apply_settings(config.profile_config('u_dwconv_micro', 'cpu'),
                               ['data.mixup=0.8', 'data.auto_augment=none', 'seed=3', 'data.scale=0.5,1', 'clip_grad=1'])
    assert (cfg.data.mixup, cfg.data.auto_augment, cfg.seed, cfg.data.scale, cfg.clip_grad) == (0.8, None, 3, (0.5, 1.0), 1.0)
    assert cfg.data.cutmix == 0.0 and cfg.epochs == PROFILES['cpu'].epochs  # the rest stays the profile's
    with pytest.raises(ValueError, match=r"unknown key 'data.foo'; valid: dataset, .*mixup"):
        config.apply_settings(cfg, ['data.foo=1'])
    with pytest.raises(ValueError, match="'x' is not of type int"):
        config.apply_settings(cfg, ['seed=x'])
    with pytest.raises(ValueError, match='KEY=VALUE'):
        config.apply_settings(cfg, ['seed'])
    with pytest.raises(ValueError, match="unknown key 'model'"):
        config.apply_settings(cfg, ['model=u_swin_micro'])
    # fields whose default is None take their declared type; 'none' stays a word where the field is a string
    cfg = config.apply_settings(cfg, ['drop_path_rate=0.1', 'amp=none', 'betas=0.8, 0.99'])
    assert (cfg.drop_path_rate, cfg.amp, cfg.betas) == (0.1, 'none', (0.8, 0.99))
    assert config.apply_settings(cfg, ['drop_path_rate=none']).drop_path_rate is None
    for setting, message in (('betas=0.9', "--set betas: expected 2 comma-separated values, got '0.9'"),
                             ('data.scale=1', "--set data.scale: expected 2 comma-separated values, got '1'"),
                             ('drop_path_rate=x', "--set drop_path_rate: 'x' is not of type float"),
                             ('drop_path_rate=1.5', "drop_path_rate must be a number in [0, 1), or none for the "
                                                    "model's own, got 1.5"),
                             ('data.scale=0.5,0.2', 'data.scale must be two numbers lo,hi with 0 < lo <= hi <= 1, '
                                                    'got (0.5, 0.2)')):
        with pytest.raises(ValueError) as e:
            config.apply_settings(cfg, [setting])
        assert str(e.value) == message


def test_light_recipe_trains_with_plain_label_smoothing(tmp_path, monkeypatch):
    monkeypatch.setattr(results, 'RESULTS_DIR', tmp_path / 'results')
    cfg = config.apply_settings(_cfg(epochs=1), ['data.mixup=0', 'data.cutmix=0', 'data.auto_augment=none'])
    final = engine.train(cfg, tmp_path / 'run', resume='none', **SMOKE)
    assert final['epoch'] == 1 and 0 <= final['top1'] <= 100


def test_config_changes_and_result_folders(tmp_path, monkeypatch):
    monkeypatch.setattr(results, 'RESULTS_DIR', tmp_path)
    base = dict(config=dict(train=config.profile_config('u_dwconv_micro', 'cpu').to_dict()))
    other = dict(config=dict(train=config.apply_settings(config.profile_config('u_dwconv_micro', 'cpu', epochs=24),
                                                        ['data.mixup=0.8']).to_dict()))
    changes = reports.config_changes(base, other)
    assert changes['epochs'] == (PROFILES['cpu'].epochs, 24) and changes['data.mixup'] == (0.0, 0.8)
    assert 'data.cutmix' not in changes and 'model' not in changes
    assert reports.result_folders('cpu') == []
    results.save_result('cpu/longer', 'train_u_dwconv_micro', [])
    results.save_result('cpu/notes', 'something_else', [])
    assert reports.result_folders('cpu') == ['longer']


def test_summary_readme_lists_runs_kept_apart(smoke_run, tmp_path, monkeypatch):
    root, final = smoke_run
    monkeypatch.setattr(results, 'RESULTS_DIR', tmp_path)
    (tmp_path / 'smoke').mkdir()
    (tmp_path / 'smoke' / 'train_u_swin_test.json').write_bytes(
        (root / 'results' / 'smoke' / 'train_u_swin_test.json').read_bytes())
    engine.train(_cfg(), root / 'run', results_subdir='again', **SMOKE)  # the same run, exported apart
    rows = reports.summary('smoke', models=('u_swin_test',))
    readme = reports.summary_readme(rows, reports.format_summary(rows, 'smoke'), 'smoke')
    assert '### `again/`' in readme and '- `u_swin_test`: no change.' in readme
    assert readme.count(f'{final["top1_fp16"]:.2f}%') == 2  # the main table and the kept-apart one
