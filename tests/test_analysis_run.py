"""`stm-lab analyze`: smoke records and their schema, skipped checkpoints at cpu, the book's figure builders
(stm_lab.pages)."""
import json

import pytest

import stm_lab.results as results
from stm_lab.analysis import run
from stm_lab.pages import erf, robustness


@pytest.fixture
def results_dir(tmp_path, monkeypatch):
    monkeypatch.setattr(results, 'RESULTS_DIR', tmp_path)
    return tmp_path


@pytest.fixture(scope='module')
def smoke(tmp_path_factory):
    """All the analyses at the smoke profile (two models, fewest images), saved into a temporary results dir."""
    mp = pytest.MonkeyPatch()
    tmp = tmp_path_factory.mktemp('results')
    mp.setattr(results, 'RESULTS_DIR', tmp)
    models = ['u_swin_test', 'u_dwconv_test']
    for what in run.ANALYSES:
        assert run.main([what, '--profile', 'smoke', '--models', *models, '--limit', '4', '--threads', '1']) == 0
    docs = {name: json.loads((tmp / 'smoke' / f'{name}.json').read_text())
            for name in ('erf', 'invariance', 'fgsm', 'demo_rotation', 'erf_photos')}
    mp.undo()
    return docs


COMMON = {'model', 'family', 'trained'}


def test_smoke_records_have_the_schema(smoke):
    erf = smoke['erf']['records']
    assert len(erf) == 2 * 4 and {r['stage'] for r in erf} == {1, 2, 3, 4}
    for r in erf:
        assert COMMON | {'img_size', 'n_images', 'erf_at', 'score_map', 'centre', 'feat_size',
                         'theoretical_side_ratio', 'asymmetry'} <= set(r)
        assert r['trained'] is False and r['n_images'] == 4
        s = r['img_size']
        assert len(r['score_map']) == s and all(len(row) == s for row in r['score_map'])
        assert max(max(row) for row in r['score_map']) == pytest.approx(1.0)
        assert [a['t'] for a in r['erf_at']] == [0.2, 0.3, 0.5, 0.99]
        assert all(0 < a['side_ratio'] <= 1 for a in r['erf_at'])
    inv = smoke['invariance']['records']
    assert {r['transform'] for r in inv} == {'shift', 'rotation', 'scale'}
    assert all(COMMON | {'magnitude', 'consistency', 'top1', 'n'} <= set(r) for r in inv)
    fgsm = smoke['fgsm']['records']
    assert sorted({r['epsilon_255'] for r in fgsm}) == [0, 0.5, 1, 2, 4, 8]
    assert all(COMMON | {'epsilon', 'top1', 'clean_top1', 'loss', 'n'} <= set(r) for r in fgsm)
    demo = smoke['demo_rotation']['records']
    assert len(demo) == 2 * 10 * len(run.DEMO_ANGLES)
    assert all(COMMON | {'photo', 'angle', 'pred_class', 'prob', 'true_prob', 'correct', 'img_size'} <= set(r)
               for r in demo)
    photos = smoke['erf_photos']['records']
    assert len(photos) == 2 * 10 * len(run.ERF_PHOTO_STAGES) and {r['stage'] for r in photos} == {3, 4}
    assert all(COMMON | {'photo', 'label', 'stage', 'img_size', 'centre', 'score_u8'} <= set(r) for r in photos)
    assert all(run.erf_photo_score(r).shape == (r['img_size'],) * 2 for r in photos)
    for doc in smoke.values():
        assert doc['config']['trained'] is False and doc['provenance']['profile'] == 'smoke'


def test_missing_checkpoint_is_skipped_at_cpu(results_dir, capsys):
    records = run.analyze('fgsm', 'cpu', models=['u_swin_micro'])
    out = capsys.readouterr().out
    assert records == []
    assert 'u_swin_micro: skipped, no checkpoint' in out and 'stm-lab train --model u_swin_micro' in out
    assert not (results_dir / 'cpu' / 'fgsm.json').exists()


def test_unknown_analysis_or_profile_is_an_error():
    with pytest.raises(ValueError, match='valid'):
        run.analyze('nope', 'smoke')
    with pytest.raises(ValueError, match='valid'):
        run.analyze('erf', 'paper')


def test_figure_builders(smoke):
    records = smoke['erf']['records']
    fig = erf.erf_browser(records)
    assert len(fig.frames) == len(records) == len(fig.layout.sliders[0].steps)
    assert not fig.layout.updatemenus and fig.layout.width is None  # no dropdown to go stale; fits its column
    assert all(len(str(v).split('.')[-1]) <= 3 for row in fig.data[0].z for v in row if '.' in str(v))  # rounded
    rows = erf.erf_table(records)
    assert len(erf.erf_bars(rows).data) == 2
    assert erf.erf_markdown(rows).count('\n') == 3  # header, rule, two models
    assert len(robustness.invariance_curves(smoke['invariance']['records']).data) == 2 * 3 * 2
    assert len(robustness.fgsm_curves(smoke['fgsm']['records']).data) == 2
    demo = smoke['demo_rotation']['records']
    _, photos = run.demo_images()
    views = robustness.demo_view_uris(demo[0]['img_size'], demo[0]['crop_pct'])
    fig = robustness.demo_rotation_figure(demo, views, photos)
    assert [f.name for f in fig.frames] == [str(a) for a in run.DEMO_ANGLES]
    assert len(fig.data) == len(photos) + 1 and len(fig.frames[0].data) == len(photos) + 1


def test_analysing_one_model_adds_to_the_saved_result(results_dir):
    """Running one model keeps the other models' records (and the provenance they were computed under); settings
    that make records incomparable refuse the merge."""
    def saved():
        return json.loads((results_dir / 'smoke' / 'fgsm.json').read_text())
    assert run.main(['fgsm', '--profile', 'smoke', '--models', 'u_swin_test', 'u_dwconv_test', '--limit', '4']) == 0
    first = saved()
    swin_before = [r for r in first['records'] if r['model'] == 'u_swin_test']
    assert run.main(['fgsm', '--profile', 'smoke', '--models', 'u_dwconv_test', '--limit', '4']) == 0
    after = saved()
    assert after['config']['models'] == ['u_swin_test', 'u_dwconv_test']
    assert [r for r in after['records'] if r['model'] == 'u_swin_test'] == swin_before
    assert len(after['records']) == len(first['records'])
    assert after['provenance']['earlier'][0]['created'] == first['provenance']['created']
    with pytest.raises(ValueError, match='other settings'):
        run.analyze('fgsm', 'smoke', models=['u_dwconv_test'], limit=3)


def _erf_row(model, stage, side, t=0.5):
    return dict(model=model, stage=stage, t=t, side_ratio=side)


def test_erf_extremes_pick_the_largest_and_smallest_erf50_at_a_stage():
    from stm_lab.pages.erf import erf_extremes
    rows = [_erf_row('u_swin_micro', 3, 0.40), _erf_row('u_halonet_micro', 3, 0.55), _erf_row('u_pvt_micro', 3, 0.30),
            _erf_row('u_pvt_micro', 4, 0.99), _erf_row('u_swin_micro', 3, 0.95, t=0.9)]
    assert erf_extremes(rows) == (('u_halonet_micro', 0.55), ('u_pvt_micro', 0.30))
    assert erf_extremes(rows, stage=4) == (('u_pvt_micro', 0.99), ('u_pvt_micro', 0.99))
    assert erf_extremes(rows, t=0.9) == (('u_swin_micro', 0.95), ('u_swin_micro', 0.95))


def test_erf_shape_verdict_from_the_asymmetry_of_swin_and_halonet():
    from stm_lab.pages.erf import asymmetry_by_family, erf_shape_verdict
    records = [dict(model='u_swin_micro', stage=3, asymmetry=0.3), dict(model='u_halonet_micro', stage=3, asymmetry=0.1),
               dict(model='u_swin_micro', stage=4, asymmetry=0.0), dict(model='u_swin_small', stage=3, asymmetry=9.0)]
    asym = asymmetry_by_family(records)
    assert asym == {'swin': 0.3, 'halonet': 0.1}  # the family's first model
    assert erf_shape_verdict(asym) == 'agrees with'
    assert erf_shape_verdict({'swin': 0.1, 'halonet': 0.3}) == 'does not agree with'
    assert erf_shape_verdict({'halonet': 0.1}) == 'does not agree with'  # no U-Swin: 0
    assert erf_shape_verdict({'swin': 0.1}) == 'agrees with'


def test_consistency_over_training_order_and_gains():
    from stm_lab.pages.robustness import consistency_gains_text, consistency_order_text, mean_consistency_records

    def rec(epoch, shift):
        return dict(epoch=epoch, consistency_shift=shift, consistency_rotation=shift / 2, consistency_images=200)
    seeds = {'u_swin_micro': [[dict(epoch=1), rec(2, 0.80), rec(3, 0.85)], [rec(2, 0.70), rec(3, 0.75)]],
             'u_dwconv_micro': [[rec(2, 0.90), rec(3, 0.88)]]}
    recs = {m: mean_consistency_records([[r for r in c if 'consistency_shift' in r] for c in curves])
            for m, curves in seeds.items()}
    assert [len(r) for r in recs.values()] == [2, 2] and recs['u_swin_micro'][0]['seeds'] == 2
    assert recs['u_swin_micro'][1]['consistency_rotation'] == pytest.approx(0.4)  # mean of 0.425 and 0.375
    assert consistency_order_text(recs, 0) == 'U-DWConv 90.0% > U-Swin Transformer 75.0%'
    assert consistency_order_text(recs, -1) == 'U-DWConv 88.0% > U-Swin Transformer 80.0%'
    assert consistency_gains_text(recs) == 'U-Swin Transformer +5.0, U-DWConv -2.0'
