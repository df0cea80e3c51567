"""Spatial-reduction attention and PVT's absolute position embedding."""
import pytest
import timm
import torch

from stm_lab.mixers import create_mixer
from stm_lab.mixers.sr_attn import AbsolutePositionEmbedding


def reference(m, x):
    """Explicit global attention over the sr x sr-reduced map (zero-padded to a multiple of sr)."""
    B, H, W, C = x.shape
    r, nh = m.sr_ratio, m.num_heads
    dh = C // nh
    if r > 1:
        Hp, Wp = -(-H // r) * r, -(-W // r) * r
        xp = torch.zeros(B, Hp, Wp, C, dtype=x.dtype)
        xp[:, :H, :W] = x
        red = torch.zeros(B, Hp // r, Wp // r, C, dtype=x.dtype)
        wconv = m.sr.weight  # (C_out, C_in, r, r)
        for i in range(Hp // r):
            for j in range(Wp // r):
                patch = xp[:, i * r:(i + 1) * r, j * r:(j + 1) * r]  # (B, r, r, C_in)
                red[:, i, j] = torch.einsum('bhwc,ochw->bo', patch, wconv) + m.sr.bias
        kv_in = m.norm(red.reshape(B, -1, C))
    else:
        kv_in = x.reshape(B, -1, C)
    q = m.q(x).reshape(B, H * W, nh, dh)
    k, v = m.kv(kv_in).split(C, -1)
    k, v = k.reshape(B, -1, nh, dh), v.reshape(B, -1, nh, dh)
    attn = torch.softmax(torch.einsum('bqhd,bkhd->bhqk', q, k) * dh ** -0.5, -1)
    out = torch.einsum('bhqk,bkhd->bqhd', attn, v).reshape(B, H, W, C)
    return m.proj(out)


@pytest.mark.parametrize('H,W,sr', [(8, 8, 2), (7, 5, 2), (3, 2, 4), (6, 9, 1), (16, 12, 4)])
def test_matches_the_reference(H, W, sr):
    torch.manual_seed(0)
    m = create_mixer('sr_attn', 16, 2, sr_ratio=sr).double()
    x = torch.randn(2, H, W, 16, dtype=torch.float64)
    with torch.no_grad():
        torch.testing.assert_close(m(x), reference(m, x), rtol=0, atol=1e-10)


def test_reduction_gives_the_expected_number_of_keys():
    m = create_mixer('sr_attn', 16, 2, sr_ratio=4)
    assert m.reduce(torch.randn(1, 16, 12, 16)).shape == (1, 12, 16)
    assert m.reduce(torch.randn(1, 5, 3, 16)).shape == (1, 2, 16)  # ceil, not floor


def test_position_embedding_at_built_size_is_added_exactly():
    pe = AbsolutePositionEmbedding(4, (5, 6))
    x = torch.randn(2, 5, 6, 4)
    assert torch.equal(pe(x), x + pe.pos_embed)


def test_position_embedding_resizing_keeps_a_linear_ramp_and_corners():
    """Bilinear resizing with aligned corners maps a linear ramp onto the same ramp at the new size."""
    pe = AbsolutePositionEmbedding(2, (4, 4))
    with torch.no_grad():
        ys, xs = torch.meshgrid(torch.linspace(0, 1, 4), torch.linspace(0, 1, 4), indexing='ij')
        pe.pos_embed.copy_(torch.stack([ys, xs], -1)[None])
    big = pe.resized(7, 10)
    ys, xs = torch.meshgrid(torch.linspace(0, 1, 7), torch.linspace(0, 1, 10), indexing='ij')
    torch.testing.assert_close(big[0], torch.stack([ys, xs], -1), rtol=0, atol=1e-6)
    small = pe.resized(1, 1)
    assert small.shape == (1, 1, 1, 2)


def test_position_embedding_is_added_at_the_first_block_of_each_stage_only():
    model = timm.create_model('u_pvt_micro', img_size=224)
    entries = [s.entry for s in model.stages]
    assert all(isinstance(e, AbsolutePositionEmbedding) for e in entries)
    assert [tuple(e.pos_embed.shape[1:3]) for e in entries] == [(56, 56), (28, 28), (14, 14), (7, 7)]
    assert not any(isinstance(m, AbsolutePositionEmbedding) for s in model.stages for m in s.blocks.modules())
    # a model built at 64 runs at 96: the embedding is resized, not broadcast
    small = timm.create_model('u_pvt_test', img_size=64)
    assert small(torch.randn(1, 3, 96, 96)).shape == (1, 1000)


def test_position_embedding_can_be_switched_off():
    model = timm.create_model('u_pvt_test', mixer_options=dict(pos_embed=False))
    assert not any(isinstance(m, AbsolutePositionEmbedding) for m in model.modules())
