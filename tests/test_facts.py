"""Known answers for the facts the book's pages state (the modules of stm_lab.pages): small hand-built records in,
exact values out."""
import math

import pytest

from stm_lab.pages import ablations, common, lab, speed, table3_complexity as t3, training
from stm_lab.paper import TABLE8


# ------------------------------------------------------------------------------------------------ speed

def _speed(model, ips, ratio, mode='train'):
    return dict(model=model, mode=mode, img_size=64, images_per_sec=ips, ratio_to_dwconv=ratio)


SPEED = [_speed('u_halonet_micro', 40.0, 0.5), _speed('u_dwconv_micro', 80.0, 1.0),
         _speed('u_swin_micro', 60.0, 0.75), _speed('timm_swin_micro', 30.0, 0.375),
         _speed('u_pvt_micro', 999.0, 9.0, mode='infer')]


def test_train_ratios_keep_training_records_only():
    assert speed.train_ratios(SPEED) == {'u_halonet_micro': 0.5, 'u_dwconv_micro': 1.0, 'u_swin_micro': 0.75,
                                         'timm_swin_micro': 0.375}


def test_slowest_unified_model_ignores_the_reference_model():
    ratios = speed.train_ratios(SPEED)
    assert speed.slowest_unified(ratios) == 'u_halonet_micro'  # timm's Swin is slower but not a unified model
    assert speed.ratio_text('u_halonet_micro', 0.5) == 'U-HaloNet at 0.50x'


def test_images_per_sec_and_ratio_of_two_models():
    assert speed.train_images_per_sec(SPEED, 'u_dwconv_micro') == 80.0
    assert speed.train_speed_ratio(SPEED, 'u_swin_micro', 'timm_swin_micro') == 2.0


def test_floor_verdict_meets_at_the_floor_and_misses_below():
    assert speed.floor_verdict(0.5) == 'meets'
    assert speed.floor_verdict(0.49) == 'misses'
    assert speed.floor_verdict(0.8, floor=0.9) == 'misses'


def test_ratios_text_leaves_out_the_baseline():
    assert speed.ratios_text(speed.train_ratios(SPEED), 'u_dwconv_micro') == \
        "U-HaloNet 0.50x, U-Swin Transformer 0.75x, timm's Swin (same shape) 0.38x"
    # the baseline is the one train_speed.json names (config.baseline), not a fixed model
    assert speed.ratios_text(speed.train_ratios(SPEED), 'u_swin_micro') == \
        "U-HaloNet 0.50x, U-DWConv 1.00x, timm's Swin (same shape) 0.38x"


PROFILE = [dict(model='u_swin_micro', parts=[dict(part='stem forward', ms=5.0), dict(part='stages.0 forward', ms=10.0),
                                             dict(part='stages.1 backward', ms=20.0), dict(part='total', ms=50.0)]),
           dict(model='timm_swin_micro', parts=[dict(part='layers.0 forward', ms=12.0), dict(part='total', ms=20.4)])]


def test_profile_stage_and_outside_milliseconds():
    parts = speed.profile_parts(PROFILE)
    assert speed.stages_ms(parts['u_swin_micro']) == 30.0
    assert speed.outside_stages_ms(parts['u_swin_micro']) == 20.0
    assert speed.stages_ms(parts['timm_swin_micro']) == 12.0
    assert speed.profile_totals_text(parts) == "U-Swin Transformer 50 ms, timm's Swin (same shape) 20 ms"
    assert speed.profile_comparison(parts) == ('30 ms against 12 ms', '20 ms against 8 ms')
    assert speed.profile_comparison({'u_swin_micro': parts['u_swin_micro']}) == ('n/a', 'n/a')


def _t8(model, size, ips):
    return dict(model=model, img_size=size, images_per_sec=ips)


T8 = [_t8('u_swin_micro', 512, 10.0), _t8('u_pvt_micro', 512, 30.0), _t8('u_dwconv_micro', 512, 20.0),
      _t8('u_swin_micro', 256, 90.0), _t8('u_pvt_micro', 256, 70.0), _t8('u_dwconv_micro', 256, 80.0)]


def test_speed_order_and_fastest_per_size():
    assert speed.speed_order(T8) == {256: ['u_swin_micro', 'u_dwconv_micro', 'u_pvt_micro'],
                                     512: ['u_pvt_micro', 'u_dwconv_micro', 'u_swin_micro']}
    assert speed.speed_order_text(T8) == ('256: U-Swin Transformer > U-DWConv > U-PVT; '
                                          '512: U-PVT > U-DWConv > U-Swin Transformer')
    assert speed.fastest_by_size(T8) == {256: 'u_swin_micro', 512: 'u_pvt_micro'}
    assert speed.fastest_text(speed.fastest_by_size(T8)) == '256: U-Swin Transformer, 512: U-PVT'
    assert speed.fastest_text({256: 'u_pvt_micro', 512: 'u_pvt_micro'}) == 'U-PVT at every size'


def test_paper_speed_order_and_fastest_follow_table8():
    # Table VIII, micro at 256: Swin 5307 > DWConv 4299 > PVT 3755 > HaloNet 3627 > InternImage 3018
    assert speed.paper_speed_order('micro', 256) == ['u_swin_micro', 'u_dwconv_micro', 'u_pvt_micro',
                                                     'u_halonet_micro', 'u_internimage_micro']
    assert speed.paper_fastest_by_size('micro') == {256: 'u_swin_micro', 512: 'u_swin_micro', 1024: 'u_swin_micro'}
    assert speed.paper_speed_order('tiny', 1024)[0] == max((m for m in TABLE8 if m.endswith('_tiny')),
                                                           key=lambda m: TABLE8[m][2])


def test_agreement_scale_and_device_texts():
    assert speed.pair_agreement_text({256: (7, 10), 512: (6, 10)}) == '256: 7 of 10, 512: 6 of 10'
    assert speed.by_scale_text({'micro': 'a', 'tiny': 'b'}) == 'micro: a; tiny: b'
    assert speed.device_text(dict(gpu='NVIDIA H200', torch='2.5.0', git_sha='0123456789abc')) == \
        'an NVIDIA H200 (PyTorch 2.5.0, commit 0123456)'
    assert speed.device_text(dict(gpu='G', torch='2', git_sha=None)) == 'an G (PyTorch 2, commit ?)'


# ------------------------------------------------------------------------------------------------ training

def test_standard_error_at_the_mean_top1():
    # mean of 40, 50, 60 is 50%: 100 * sqrt(0.5 * 0.5 / 100) = 5 points
    assert training.mean_top1_se([40.0, 50.0, 60.0], 100) == pytest.approx(5.0)
    assert training.mean_top1_se([90.0], 400) == pytest.approx(100 * math.sqrt(0.9 * 0.1 / 400))


TOP1 = {'u_halonet_micro': 74.8, 'u_pvt_micro': 72.3, 'u_swin_micro': 74.2, 'u_dwconv_micro': 72.1,
        'u_internimage_micro': 73.3}


def test_best_worst_and_accuracy_text():
    assert training.best_and_worst(TOP1) == ('u_halonet_micro', 'u_dwconv_micro')
    assert training.accuracy_text('u_halonet_micro', 74.84) == 'U-HaloNet (74.8%)'
    # the first of equals
    assert training.best_and_worst({'u_a_micro': 1.0, 'u_b_micro': 1.0}) == ('u_a_micro', 'u_a_micro')


def test_rankings_paper_and_ours():
    paper, ours = training.rankings({**TOP1, 'u_pooling_micro': 99.0})  # not in Table III: left out
    # Table III micro top-1: HaloNet 75.8, InternImage 75.3, DWConv 75.1, Swin 74.4, PVT 72.8
    assert paper == ['u_halonet_micro', 'u_internimage_micro', 'u_dwconv_micro', 'u_swin_micro', 'u_pvt_micro']
    assert ours == ['u_halonet_micro', 'u_swin_micro', 'u_internimage_micro', 'u_pvt_micro', 'u_dwconv_micro']
    assert training.rank_text(ours[:2]) == 'U-HaloNet > U-Swin Transformer'
    assert training.rank_text([]) == 'n/a'


def test_targets_met_and_missed():
    assert training.targets_text(TOP1) == 'met'
    assert training.targets_text({'u_dwconv_micro': 65.0, 'u_pvt_micro': 59.5}) == \
        'not met (U-DWConv 65.0% < 70%; U-PVT 59.5% < 60%)'
    assert training.targets_text({'u_pvt_micro': 80.0}) == 'not met (no U-DWConv)'


def test_label_smoothing_floor_is_the_entropy_of_the_smoothed_target():
    assert training.label_smoothing_floor(0.0, 10) == 0.0
    # eps 0.1 over 2 classes: target (0.95, 0.05)
    assert training.label_smoothing_floor(0.1, 2) == pytest.approx(-(0.95 * math.log(0.95) + 0.05 * math.log(0.05)))


def test_range_and_count_texts():
    assert training.range_text([1.12, 1.049, 1.1]) == '1.05-1.12'
    assert training.range_text([72.1, 74.8], digits=1) == '72.1-74.8'
    assert training.count_text(['epochs12', 'epochs24']) == '2 (epochs12, epochs24)'
    assert training.count_text([]) == 'none'


def test_core_time_estimate_adds_epochs_and_scheduled_evaluations():
    doc = dict(config=dict(train=dict(epochs=22, eval_every=5, ema_decay=0.99)), records=[dict(val_images=1000)])
    speeds = [dict(model='u_pvt_micro', train_epoch_s=100.0, eval_img_per_s=50.0),
              dict(model='u_swin_micro', train_epoch_s=None, eval_img_per_s=50.0)]
    est = training.core_time_estimate({'u_pvt_micro': doc, 'u_swin_micro': doc, 'u_dwconv_micro': doc}, speeds)
    # evaluations after epochs 5, 10, 15, 20 and the last (22); each of weights and EMA: 1000 / 50 = 20 s
    assert est == {'u_pvt_micro': 22 * 100.0 + 5 * 2 * 20.0}
    no_ema = dict(doc, config=dict(train=dict(epochs=10, eval_every=5, ema_decay=0)))
    assert training.core_time_estimate({'u_pvt_micro': no_ema}, speeds) == {'u_pvt_micro': 10 * 100.0 + 2 * 20.0}


def test_budget_within_and_beyond_three_hours_of_two_cores():
    text = training.budget_text({'a': 6000.0, 'b': 3600.0}, 2, 'CPU X', 'results/cpu/t.json')
    assert text == ('about 160 core-minutes for the 2 runs, i.e. 80 minutes of two cores shared evenly (epochs and '
                    'scheduled evaluations at the one-thread speeds measured on CPU X, results/cpu/t.json), within '
                    'three hours of the two cores')
    assert training.budget_text({'a': 3 * 3600 * 2 + 60}, 1, 'c', 's').endswith('beyond three hours of the two cores')
    assert training.budget_text({'a': 60.0}, 2, 'c', 's').startswith('not estimated here')
    assert training.budget_text({}, 0, None, 's').startswith('not estimated here')


def test_other_runs_largest_gain_first():
    other = {'epochs12': [dict(model='u_pvt_micro', top1=68.2, epochs=12), dict(model='u_x_micro', top1=1, epochs=1)],
             'epochs24': [dict(model='u_dwconv_micro', top1=73.1, epochs=24)]}
    assert training.other_runs_text(TOP1, other) == ('U-DWConv in epochs24/ 73.1% against 72.1% (24 epochs); '
                                                  'U-PVT in epochs12/ 68.2% against 72.3% (12 epochs)')
    assert training.other_runs_text(TOP1, {}) == 'none yet'


def test_changes_markdown():
    text = training.changes_list('epochs40', {'u_swin_micro': {'epochs': (22, 40), 'ema': (None, 0.5)},
                                               'u_pvt_micro': {}})
    assert text == ('**`epochs40`**\n\n- U-Swin Transformer: changes `epochs` 22 → 40; `ema` off → 0.5.\n'
                    '- U-PVT: changes nothing.')


# ------------------------------------------------------------------------------------------------ Table III complexity

CX = [dict(model='u_halonet_micro', params_m=4.5, params_no_pos_m=4.2, paper_params_m=4.0, gmacs=1.05,
           gmacs_no_attention=0.9, paper_gflops=1.0),
      dict(model='u_pvt_micro', params_m=4.25, params_no_pos_m=4.0, paper_params_m=4.0, gmacs=0.8,
           gmacs_no_attention=0.8, paper_gflops=1.0)]


def test_counts_within_tolerance_and_worst_gap():
    assert t3.count_within(CX, 'params_no_pos_m', 'paper_params_m', 0.03) == 1  # 5% and 0%
    assert t3.count_within(CX, 'params_no_pos_m', 'paper_params_m', 0.06) == 2
    assert t3.worst_gap_pct(CX, 'params_no_pos_m', 'paper_params_m') == pytest.approx(5.0)
    assert t3.worst_gap_pct(CX, 'gmacs', 'paper_gflops') == pytest.approx(20.0)  # 0.8 of 1.0
    assert t3.count_within(CX, 'gmacs', 'paper_gflops', 0.10) == 1


def test_family_records_and_position_parameters():
    assert [r['model'] for r in t3.of_family(CX, 'halonet')] == ['u_halonet_micro']
    assert t3.worst_gap_pct(t3.of_family(CX, 'halonet'), 'gmacs_no_attention', 'paper_gflops') == \
        pytest.approx(10.0)
    assert t3.position_params_m(CX, 'u_pvt_micro') == 0.25
    assert t3.record_of(CX, 'u_pvt_micro')['gmacs'] == 0.8


def test_values_text_joins_distinct_values_in_order():
    assert common.values_text([22, 12, 22]) == '12 and 22'
    assert common.values_text([12, 40, 22], '-') == '12-22-40'


# ------------------------------------------------------------------------------------------------ ablations

def test_measured_and_decided_texts():
    assert ablations.measured_text([dict(ours=1.0), dict(ours=None), dict(ours=0.0)]) == '2 of 3'
    claims = [dict(verdict='agrees'), dict(verdict='agrees'), dict(verdict='cannot tell at this scale'),
              dict(verdict='does not agree'), dict(verdict='not yet measured')]
    assert ablations.decided_text(claims) == '3 of 5'


def test_baseline_noise_of_one_model_and_of_a_difference():
    n, se, diff = ablations.baseline_noise([dict(top1_fp16=40.0, val_images=100), dict(top1_fp16=60.0, val_images=100)])
    assert n == 100 and se == pytest.approx(5.0) and diff == pytest.approx(5.0 * math.sqrt(2))
    assert ablations.baseline_noise([]) == (0, None, None)


def test_seed_text():
    assert ablations.seed_text(0.456, 5) == ('0.46 points (pooled over the 5 A models of the 12-epoch seed set, each trained '
                                         'with several seeds)')
    assert ablations.seed_text(None, 0).startswith('not measured yet')


# ------------------------------------------------------------------------------------------------ the lab

def test_lab_weights_text():
    assert lab.lab_weights_text(21_650_000, 5) == ('weights stored as int8, one scale per output channel, computed '
                                                     'in float32; 21.6 MB for the 5 models')


def test_lab_export_facts_take_the_largest_differences():
    doc = dict(config=dict(n_images=200), records=[
        dict(model='u_swin_micro', fp32=dict(val_max_abs_diff=2.4e-6), int8=dict(val_max_abs_diff=0.31,
                                                                              val_top1_agreement=0.985)),
        dict(model='u_pvt_micro', fp32=dict(val_max_abs_diff=7.6e-6), int8=dict(val_max_abs_diff=0.123,
                                                                             val_top1_agreement=0.99))])
    assert lab.lab_export_facts(doc) == dict(fp32_diff='8e-06', int8_diff='0.31',
                                               int8_agree='98.5% (U-Swin Transformer), 99.0% (U-PVT)', n_val=200)
    assert set(lab.lab_export_facts(None).values()) == {'not checked yet (`stm-lab lab check`)'}
    assert set(lab.lab_export_facts(None)) == set(lab.LAB_EXPORT_KEYS)


def test_lab_browser_facts():
    doc = dict(provenance=dict(cpu='CPU X'), records=[dict(
        inference_ms={'u_swin_micro': 12.34, 'u_dwconv_micro': 5.0}, slider_update_ms_median=41.6,
        slider_update_ms_max=120.2, first_prediction_ms=2345.0, browser='Chromium 120', model_mb=21.65,
        loadavg=[1.23, 1.0, 0.9], cpu_count=2)])
    assert lab.lab_browser_facts(doc) == dict(
        ms='12.3 ms (U-Swin Transformer), 5.0 ms (U-DWConv)', update_ms='42 ms (median; slowest 120 ms)',
        first_s='2.3 s', browser='Chromium 120 on CPU X', mb='21.6 MB', load='load average 1.2 on 2 cores')
    assert set(lab.lab_browser_facts(None)) == set(lab.LAB_BROWSER_KEYS)


def test_original_texts_from_the_papers_sources():
    texts = training.original_texts()
    assert texts['swin'] == 'Swin-T 81.3%' and texts['dwconv'] == 'ConvNeXt-T 82.1%'
    assert list(texts) == ['halonet', 'pvt', 'swin', 'dwconv', 'internimage']


def test_epochs_spread_and_total_minutes():
    rows = [dict(epochs=22, wall_time_min=90.5), dict(epochs=12, wall_time_min=30.0), dict(epochs=22, wall_time_min=1.0)]
    assert training.epochs_of(rows) == [12, 22]
    assert training.total_minutes(rows) == 121.5
    assert training.spread(TOP1) == pytest.approx(74.8 - 72.1)
