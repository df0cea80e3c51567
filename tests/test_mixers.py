"""The mixer contract, checked for every registered mixer: (B, H, W, C) in and out for any H, W >= 1."""
import pytest
import torch
import torch.nn as nn
from hypothesis import given, settings, strategies as st

from stm_lab.mixers import MIXERS, TokenMixer, create_mixer, register_mixer

BUILTIN = ['identity', 'pooling', 'dw_conv', 'halo_attn', 'sr_attn', 'sw_attn', 'dcnv3']
# small but non-trivial options, so that windows, strides and padding all come into play
OPTIONS = {'halo_attn': dict(block=4, halo=2), 'sr_attn': dict(sr_ratio=4), 'sw_attn': dict(window=4)}


def make(name, dim=32, heads=2, block_index=1, **kw):
    torch.manual_seed(0)
    return create_mixer(name, dim, heads, block_index=block_index, stage_index=0, feat_size=(16, 16),
                        **{**OPTIONS.get(name, {}), **kw}).eval()


def test_all_builtin_mixers_are_registered():
    assert set(BUILTIN) <= set(MIXERS)


@pytest.mark.parametrize('name', BUILTIN)
@settings(max_examples=15, deadline=None)
@given(h=st.integers(1, 80), w=st.integers(1, 80), b=st.integers(1, 2))
def test_any_size_keeps_shape_and_is_finite(name, h, w, b):
    mixer = make(name)
    x = torch.randn(b, h, w, 32)
    with torch.no_grad():
        y = mixer(x)
    assert y.shape == x.shape
    assert torch.isfinite(y).all()


@pytest.mark.parametrize('name', BUILTIN)
def test_batch_elements_are_independent(name):
    mixer = make(name)
    x = torch.randn(3, 9, 11, 32)
    with torch.no_grad():
        together = mixer(x)
        alone = torch.cat([mixer(x[i:i + 1]) for i in range(3)])
    torch.testing.assert_close(together, alone, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize('name', BUILTIN)
def test_same_seed_same_output(name):
    x = torch.randn(2, 10, 7, 32)
    with torch.no_grad():
        assert torch.equal(make(name)(x), make(name)(x))


@pytest.mark.parametrize('name', [n for n in BUILTIN if MIXERS[n].uses_heads])
def test_dim_not_divisible_by_heads_fails_at_construction(name):
    with pytest.raises(ValueError, match='divisible'):
        create_mixer(name, 30, 4)


def test_unknown_mixer_lists_the_valid_names():
    with pytest.raises(KeyError) as e:
        create_mixer('swin_attention', 32, 2)
    for name in BUILTIN:
        assert name in str(e.value)


def test_known_answers_of_the_simple_mixers():
    x = torch.randn(1, 5, 6, 8)
    assert torch.equal(make('identity', dim=8)(x), x)
    const = torch.ones(1, 5, 6, 8)  # average of a constant is the constant: pooling - x == 0 everywhere
    assert torch.equal(make('pooling', dim=8)(const), torch.zeros_like(const))


def test_a_user_mixer_with_a_plain_signature_joins_the_backbone():
    """A researcher's class need not know about the context keywords (block_index, ...)."""
    import timm
    from stm_lab.models import register_family

    @register_mixer('test_plain_mixer')
    class Plain(nn.Module):
        def __init__(self, dim, num_heads):
            super().__init__()
            self.proj = nn.Linear(dim, dim)

        def forward(self, x):
            return self.proj(x.mean((1, 2), keepdim=True)).expand_as(x)

    try:
        register_family('u_testplain', mixer='test_plain_mixer')
        model = timm.create_model('u_testplain_test', num_classes=3)
        assert model(torch.randn(2, 3, 32, 32)).shape == (2, 3)
    finally:
        MIXERS.pop('test_plain_mixer')


def test_registering_a_taken_name_fails():
    with pytest.raises(ValueError, match='already registered'):
        register_mixer('sw_attn')(type('Other', (TokenMixer,), {}))


def test_circular_dw_conv_is_exactly_shift_equivariant():
    mixer = make('dw_conv', padding_mode='circular').double()
    x = torch.randn(1, 12, 10, 32, dtype=torch.float64)
    with torch.no_grad():
        y = mixer(x)
        y_shifted = mixer(torch.roll(x, (3, -2), (1, 2)))
    torch.testing.assert_close(y_shifted, torch.roll(y, (3, -2), (1, 2)), rtol=0, atol=1e-12)


# ----------------------------------------------------------------------------------------------- traits

@pytest.mark.parametrize('name', sorted(MIXERS))
def test_every_registered_mixer_declares_usable_traits(name):
    from stm_lab.mixers import mixer_trait, size_options
    assert mixer_trait(name, 'recipe') in ('transformer', 'cnn')
    assert isinstance(mixer_trait(name, 'dynamic_sampling'), bool)
    assert isinstance(mixer_trait(name, 'display_name'), str) and mixer_trait(name, 'display_name')
    for stages in (3, 4):  # the rule follows the layout's number of stages
        every, per_stage = size_options(name, 64, stages)
        assert isinstance(every, dict) and len(per_stage) == stages


def test_traits_of_the_paper_mixers():
    from stm_lab.mixers import mixer_trait
    assert {n for n in BUILTIN if mixer_trait(n, 'recipe') == 'cnn'} == {'dw_conv', 'dcnv3', 'identity', 'pooling'}
    assert {n for n in BUILTIN if mixer_trait(n, 'dynamic_sampling')} == {'dcnv3'}
    assert [mixer_trait(n, 'display_name') for n in ('halo_attn', 'sr_attn', 'sw_attn', 'dw_conv', 'dcnv3')] == \
        ['Halo-Attn', 'SR-Attn', 'SW-Attn', 'DW-Conv', 'DCNv3']


@pytest.mark.parametrize('img,window,sr', [(224, 7, (8, 4, 2, 1)), (64, 4, (2, 1, 1, 1)), (96, 6, (2, 1, 1, 1)),
                                          (320, 5, (8, 4, 2, 1))])
def test_size_rules_give_the_paper_values_at_224_and_follow_the_maps(img, window, sr):
    from stm_lab.mixers import size_options, stage_sides
    assert stage_sides(224) == (56, 28, 14, 7) and stage_sides(65, 2) == (17, 9)
    assert size_options('sw_attn', img)[0] == dict(window=window)
    assert size_options('halo_attn', img)[0] == dict(block=window, halo=window // 2)
    assert tuple(o['sr_ratio'] for o in size_options('sr_attn', img)[1]) == sr


def test_a_user_mixer_without_traits_gets_the_defaults_and_can_declare_them():
    from stm_lab.mixers import MIXERS, mixer_trait
    from stm_lab.models import FAMILIES, register_family
    from stm_lab.training.config import model_recipe

    class Plain(nn.Module):  # not a TokenMixer: every trait has its default
        def __init__(self, dim, num_heads):
            super().__init__()

        def forward(self, x):
            return x
    try:
        register_mixer('plain_trait_test')(Plain)
        assert mixer_trait('plain_trait_test', 'recipe') == 'transformer'
        assert mixer_trait('plain_trait_test', 'display_name') == 'plain_trait_test'
        Plain.recipe, Plain.dynamic_sampling = 'cnn', True
        register_family('u_plaintrait', mixer='plain_trait_test')
        assert model_recipe('u_plaintrait_test') == 'cnn'  # read from the mixer, not from a list of names
        from stm_lab.analysis.erf import theoretical_rf
        import timm
        m = timm.create_model('u_plaintrait_test', num_classes=3)
        assert theoretical_rf(m, 64) == dict.fromkeys((0, 1, 2, 3))  # dynamic sampling: no fixed field
        with pytest.raises(KeyError, match='valid'):
            mixer_trait('plain_trait_test', 'nope')
    finally:
        MIXERS.pop('plain_trait_test', None)
        FAMILIES.pop('plaintrait', None)


def test_a_three_stage_layout_gets_per_stage_options_for_its_stages():
    from stm_lab.backbone import UnifiedNet
    from stm_lab.models import adapt_to_img_size
    every, per_stage = adapt_to_img_size('sr_attn', 64, 3)
    net = UnifiedNet(mixer='sr_attn', depths=(1, 1, 1), dims=(16, 32, 64), heads=(1, 2, 4), mlp_ratios=(4, 4, 4),
                     stage_mixer_options=per_stage, mixer_options=every, num_classes=5, img_size=64)
    assert [s.blocks[0].mixer.sr_ratio for s in net.stages] == [2, 1, 1]
    assert net(torch.randn(1, 3, 64, 64)).shape == (1, 5)
