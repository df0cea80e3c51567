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
