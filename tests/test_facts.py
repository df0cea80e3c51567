"""Known answers for the facts the book's pages state (stm_lab.facts): small hand-built records in, exact values out."""
import math

import pytest

from stm_lab import facts
from stm_lab.paper import TABLE8


# ------------------------------------------------------------------------------------------------ speed

def _speed(model, ips, ratio, mode='train'):
    return dict(model=model, mode=mode, img_size=64, images_per_sec=ips, ratio_to_dwconv=ratio)


SPEED = [_speed('u_halonet_micro', 40.0, 0.5), _speed('u_dwconv_micro', 80.0, 1.0),
         _speed('u_swin_micro', 60.0, 0.75), _speed('timm_swin_micro', 30.0, 0.375),
         _speed('u_pvt_micro', 999.0, 9.0, mode='infer')]


def test_train_ratios_keep_training_records_only():
    assert facts.train_ratios(SPEED) == {'u_halonet_micro': 0.5, 'u_dwconv_micro': 1.0, 'u_swin_micro': 0.75,
                                         'timm_swin_micro': 0.375}


def test_slowest_unified_model_ignores_the_reference_model():
    ratios = facts.train_ratios(SPEED)
    assert facts.slowest_unified(ratios) == 'u_halonet_micro'  # timm's Swin is slower but not a unified model
    assert facts.ratio_text('u_halonet_micro', 0.5) == 'U-HaloNet at 0.50x'


def test_images_per_sec_and_ratio_of_two_models():
    assert facts.train_images_per_sec(SPEED, 'u_dwconv_micro') == 80.0
    assert facts.train_speed_ratio(SPEED, 'u_swin_micro', 'timm_swin_micro') == 2.0


def test_floor_verdict_meets_at_the_floor_and_misses_below():
    assert facts.floor_verdict(0.5) == 'meets'
    assert facts.floor_verdict(0.49) == 'misses'
    assert facts.floor_verdict(0.8, floor=0.9) == 'misses'


def test_ratios_text_leaves_out_the_baseline():
    assert facts.ratios_text(facts.train_ratios(SPEED)) == \
        "U-HaloNet 0.50x, U-Swin Transformer 0.75x, timm's Swin (same shape) 0.38x"


PROFILE = [dict(model='u_swin_micro', parts=[dict(part='stem forward', ms=5.0), dict(part='stages.0 forward', ms=10.0),
                                             dict(part='stages.1 backward', ms=20.0), dict(part='total', ms=50.0)]),
           dict(model='timm_swin_micro', parts=[dict(part='layers.0 forward', ms=12.0), dict(part='total', ms=20.4)])]


def test_profile_stage_and_outside_milliseconds():
    parts = facts.profile_parts(PROFILE)
    assert facts.stages_ms(parts['u_swin_micro']) == 30.0
    assert facts.outside_stages_ms(parts['u_swin_micro']) == 20.0
    assert facts.stages_ms(parts['timm_swin_micro']) == 12.0
    assert facts.profile_totals_text(parts) == "U-Swin Transformer 50 ms, timm's Swin (same shape) 20 ms"
    assert facts.profile_comparison(parts) == ('30 ms against 12 ms', '20 ms against 8 ms')
    assert facts.profile_comparison({'u_swin_micro': parts['u_swin_micro']}) == ('n/a', 'n/a')


def _t8(model, size, ips):
    return dict(model=model, img_size=size, images_per_sec=ips)


T8 = [_t8('u_swin_micro', 512, 10.0), _t8('u_pvt_micro', 512, 30.0), _t8('u_dwconv_micro', 512, 20.0),
      _t8('u_swin_micro', 256, 90.0), _t8('u_pvt_micro', 256, 70.0), _t8('u_dwconv_micro', 256, 80.0)]


def test_speed_order_and_fastest_per_size():
    assert facts.speed_order(T8) == {256: ['u_swin_micro', 'u_dwconv_micro', 'u_pvt_micro'],
                                     512: ['u_pvt_micro', 'u_dwconv_micro', 'u_swin_micro']}
    assert facts.speed_order_text(T8) == ('256: U-Swin Transformer > U-DWConv > U-PVT; '
                                          '512: U-PVT > U-DWConv > U-Swin Transformer')
    assert facts.fastest_by_size(T8) == {256: 'u_swin_micro', 512: 'u_pvt_micro'}
    assert facts.fastest_text(facts.fastest_by_size(T8)) == '256: U-Swin Transformer, 512: U-PVT'
    assert facts.fastest_text({256: 'u_pvt_micro', 512: 'u_pvt_micro'}) == 'U-PVT at every size'


def test_paper_speed_order_and_fastest_follow_table8():
    # Table VIII, micro at 256: Swin 5307 > DWConv 4299 > PVT 3755 > HaloNet 3627 > InternImage 3018
    assert facts.paper_speed_order('micro', 256) == ['u_swin_micro', 'u_dwconv_micro', 'u_pvt_micro',
                                                     'u_halonet_micro', 'u_internimage_micro']
    assert facts.paper_fastest_by_size('micro') == {256: 'u_swin_micro', 512: 'u_swin_micro', 1024: 'u_swin_micro'}
    assert facts.paper_speed_order('tiny', 1024)[0] == max((m for m in TABLE8 if m.endswith('_tiny')),
                                                           key=lambda m: TABLE8[m][2])


def test_agreement_scale_and_device_texts():
    assert facts.pair_agreement_text({256: (7, 10), 512: (6, 10)}) == '256: 7 of 10, 512: 6 of 10'
    assert facts.by_scale_text({'micro': 'a', 'tiny': 'b'}) == 'micro: a; tiny: b'
    assert facts.device_text(dict(gpu='NVIDIA H200', torch='2.5.0', git_sha='0123456789abc')) == \
        'an NVIDIA H200 (PyTorch 2.5.0, commit 0123456)'
    assert facts.device_text(dict(gpu='G', torch='2', git_sha=None)) == 'an G (PyTorch 2, commit ?)'
