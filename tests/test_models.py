"""Registry-parametrized model tests (timm style): every unified model family through one set of checks."""
import inspect

import pytest
import timm
import torch

import stm_lab
from stm_lab import backbone
from stm_lab.analysis.complexity import count_params, count_position_params
from stm_lab.models import (ABLATIONS, FAMILIES, HALO_VARIANTS, MAIN_FAMILIES, NAMES, SCALES, ModelName,
                            adapt_to_img_size, create_model, paper_model_names, parse_name)
from stm_lab.paper import TABLE3

TEST_MODELS = timm.list_models('u_*_test')


def test_registry_lists_every_model():
    names = set(timm.list_models('u_*'))
    expected = {f'u_{f}_{s}' for f, fam in FAMILIES.items() for s in [*fam.layouts, 'test']}
    expected |= {f'u_{f}_small_{v}' for f in MAIN_FAMILIES for v in ABLATIONS}
    expected |= {f'u_halonet_small_{v}' for v in HALO_VARIANTS}
    assert expected <= names
    assert set(paper_model_names()) <= names and len(paper_model_names()) == 20
    assert set(paper_model_names()) == set(TABLE3)


@pytest.mark.parametrize('name', TEST_MODELS)
def test_forward_backward_every_parameter_gets_a_gradient(name):
    torch.manual_seed(0)
    model = timm.create_model(name, num_classes=7)
    with torch.no_grad():  # zero-initialized layers (DCNv3 offsets) pass no gradient back until they move
        for p in model.parameters():
            if p.ndim > 1 and not p.any():
                p.normal_(0, 0.02)
    x = torch.randn(2, 3, 48, 40)  # not square, not the build size: mixers must pad
    out = model(x)
    assert out.shape == (2, 7) and torch.isfinite(out).all()
    out.square().mean().backward()
    missing = [n for n, p in model.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0]
    assert not missing, f'parameters without gradient: {missing}'
    assert all(torch.isfinite(p.grad).all() for p in model.parameters())


@pytest.mark.parametrize('name', TEST_MODELS)
def test_same_seed_same_output(name):
    x = torch.randn(1, 3, 64, 64)
    outs = []
    for _ in range(2):
        torch.manual_seed(123)
        outs.append(timm.create_model(name).eval()(x))
    assert torch.equal(outs[0], outs[1])


@pytest.mark.parametrize('name', TEST_MODELS)
def test_forward_intermediates_are_the_four_stages(name):
    model = timm.create_model(name).eval()
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        final, feats = model.forward_intermediates(x)
        dims = model.config.dims
        assert [f.shape for f in feats] == [(1, d, 64 // 2 ** (i + 2), 64 // 2 ** (i + 2)) for i, d in enumerate(dims)]
        assert torch.allclose(final, model.forward_features(x))
        assert torch.allclose(model.forward_head(final), model(x))
        assert model.forward_head(final, pre_logits=True).shape == (1, model.head_hidden_size)
        last_two = model.forward_intermediates(x, indices=2, intermediates_only=True)
        assert len(last_two) == 2 and torch.equal(last_two[1], feats[3])
        first = model.forward_intermediates(x, indices=[0], intermediates_only=True, stop_early=True)
        assert torch.equal(first[0], feats[0])


def test_unknown_model_lists_valid_names():
    with pytest.raises(KeyError, match='u_swin_micro') as e:
        create_model('u_swin_mikro')
    assert 'Did you mean' in str(e.value)


def test_unknown_family_and_scale():
    with pytest.raises(KeyError, match='valid'):
        stm_lab.models.model_config('resnet', 'micro')
    with pytest.raises(KeyError, match='micro'):
        stm_lab.models.model_config('swin', 'huge')


def test_heads_must_divide_dim_at_construction():
    with pytest.raises(ValueError, match='divisible'):
        timm.create_model('u_swin_test', heads=(3, 2, 3, 4))


def test_unknown_mixer_in_config_lists_valid_mixers():
    with pytest.raises(KeyError, match='sw_attn'):
        backbone.UnifiedNet(mixer='window_attn')


def test_backbone_has_no_branch_on_mixer_type():
    src = inspect.getsource(backbone)
    for name in stm_lab.MIXERS:
        assert f"'{name}'" not in src.replace("mixer: str = 'dw_conv'", '')


def test_img_size_rule_gives_paper_values_at_224():
    assert adapt_to_img_size('sw_attn', 224)[0] == dict(window=7)
    assert adapt_to_img_size('halo_attn', 224)[0] == dict(block=7, halo=3)
    assert [o['sr_ratio'] for o in adapt_to_img_size('sr_attn', 224)[1]] == [8, 4, 2, 1]
    assert adapt_to_img_size('sw_attn', 64)[0] == dict(window=4)
    assert adapt_to_img_size('halo_attn', 64)[0] == dict(block=4, halo=2)
    assert [o['sr_ratio'] for o in adapt_to_img_size('sr_attn', 64)[1]] == [2, 1, 1, 1]
    m = timm.create_model('u_swin_test', img_size=224)
    assert m.stages[0].blocks[0].mixer.window == 7


def test_block_layout_of_the_paper_micro_models():
    m = timm.create_model('u_swin_micro')
    assert [len(s.blocks) for s in m.stages] == [2, 2, 9, 2]
    shifts = [b.mixer.shift for b in m.stages[2].blocks]
    assert shifts == [0, 3] * 4 + [0]  # shifted windows on odd blocks
    m = timm.create_model('u_internimage_micro')
    assert [s.blocks[0].mixer.num_heads for s in m.stages] == [2, 4, 8, 16]
    m = timm.create_model('u_pvt_micro')
    assert [s.blocks[0].mixer.sr_ratio for s in m.stages] == [8, 4, 2, 1]
    assert m.head_hidden_size == 384 and m.num_features == 256  # 1.5 x C4 head; C4


def test_ablation_switches():
    a, b, c, d = (timm.create_model(n) for n in ('u_swin_test', 'u_swin_test', 'u_swin_test', 'u_swin_test'))
    b = timm.create_model('u_swin_test', **ABLATIONS['b'])
    c = timm.create_model('u_swin_test', **ABLATIONS['c'])
    d = timm.create_model('u_swin_test', **ABLATIONS['d'])
    e = timm.create_model('u_dwconv_test', **ABLATIONS['e'])
    ln = torch.nn.LayerNorm
    assert isinstance(b.pool_norm, ln) and not isinstance(a.pool_norm, ln)
    assert all(isinstance(s.norm, ln) for s in b.stages) and not any(isinstance(s.norm, ln) for s in c.stages)
    assert not isinstance(c.end_norm, ln)  # C has LN after pooling, so no extra end norm
    assert d.stages[0].blocks[0].single and not hasattr(d.stages[0].blocks[0], 'ls1')
    assert not isinstance(d.stages[0].blocks[0].norm1, ln)  # no norm before an attention mixer in D/E
    assert isinstance(e.stages[0].blocks[0].norm1, ln)  # the paper's DW-Conv keeps it
    x = torch.randn(1, 3, 64, 64)
    for m in (b, c, d, e):
        assert m(x).shape == (1, 1000)


def test_small_variants_are_registered_with_their_switches():
    m = timm.create_model('u_halonet_small_shift', img_size=64)
    assert m.stages[0].blocks[0].mixer.centric is False
    m = timm.create_model('u_halonet_small_switch', img_size=64)
    assert [b.mixer.halo for b in m.stages[2].blocks[:4]] == [0, 2, 0, 2]
    m = timm.create_model('u_halonet_small_1px', img_size=224)
    assert m.stages[0].blocks[0].mixer.halo == 1
    m = timm.create_model('u_pvt_small_c', img_size=64)
    assert m.config.stage_norm is False and m.config.norm_after_pool is True


@pytest.mark.parametrize('scale', SCALES)
def test_parameters_within_3_percent_of_table3(scale):
    """Position tables left out, as the paper's counter (thop) does: see the Table III page."""
    for fam in MAIN_FAMILIES:
        name = f'u_{fam}_{scale}'
        with torch.device('meta'):  # no memory, no init cost: only shapes matter
            model = timm.create_model(name)
        ours = (count_params(model) - count_position_params(model)) / 1e6
        assert abs(ours / TABLE3[name][0] - 1) <= 0.03, (name, ours, TABLE3[name][0])


def test_user_family_registration():
    from stm_lab.models import register_family
    names = register_family('u_identitytest', mixer='identity')
    assert 'u_identitytest_micro' in names and 'u_identitytest_micro' in timm.list_models('u_*')
    with pytest.raises(ValueError, match="u_"):
        register_family('mine', mixer='identity')


def test_dcnv3_zero_init_survives_the_global_init():
    m = timm.create_model('u_internimage_test')
    mixer = m.stages[0].blocks[0].mixer
    zero = [p for n, p in mixer.named_parameters() if n.startswith(('offset', 'mask'))]
    assert zero and all(torch.count_nonzero(p) == 0 for p in zero)


@pytest.mark.parametrize('name', ['u_swin_test', 'u_internimage_test'])
def test_grad_checkpointing_gives_the_same_output_and_gradients(name):
    torch.manual_seed(0)
    model = timm.create_model(name, num_classes=5)
    x = torch.randn(2, 3, 32, 32)
    model(x).sum().backward()
    ref = [p.grad.clone() for p in model.parameters()]
    out = model(x)
    model.zero_grad()
    model.set_grad_checkpointing(True)
    out2 = model(x)
    out2.sum().backward()
    assert torch.equal(out, out2)
    for g, p in zip(ref, model.parameters()):
        torch.testing.assert_close(p.grad, g, rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize('name', TEST_MODELS)
def test_training_works_after_an_inference_mode_forward(name):
    """Cached masks and index tables built under inference_mode must not leak into training."""
    model = timm.create_model(name)
    x = torch.randn(1, 3, 40, 40)
    with torch.inference_mode():
        model(x)
    model(x).sum().backward()


def test_an_unbatched_image_is_refused_with_a_clear_message():
    for name in TEST_MODELS:
        model = create_model(name, num_classes=10, img_size=32).eval()
        x = torch.randn(3, 32, 32)
        for call in (model, model.forward_intermediates):
            with pytest.raises(ValueError, match=r'expected a batch of images \(N, 3, H, W\), got shape \(3, 32, 32\); '
                                                 r'add the batch dimension with x\[None\]'):
                call(x)
        with torch.no_grad():
            assert model(x[None]).shape == (1, 10)


def test_display_name_is_the_paper_name_of_the_family_at_every_scale_and_variant():
    from stm_lab.models import display_name
    assert display_name('u_swin_micro') == 'U-Swin Transformer'
    assert display_name('u_halonet_small_1px') == display_name('u_halonet_test') == 'U-HaloNet'
    assert display_name('u_internimage_tiny') == 'U-InternImage'
    assert display_name('timm_swin_micro') == "timm's Swin (same shape)"  # the speed page's reference model
    assert display_name('something_else') == 'something_else'


def test_display_name_of_a_family_the_paper_does_not_name_is_its_mixers_display_name():
    from stm_lab.models import display_name
    from stm_lab.models import register_family
    register_family("u_displaynametest", mixer="dw_conv", layouts={"micro": FAMILIES["dwconv"].layouts["micro"]})
    assert display_name('u_displaynametest_micro') == 'U-DW-Conv'



def test_model_names_are_read_from_the_registry_not_cut_at_underscores():
    """A family whose name holds an underscore keeps it whole, at every scale and variant (registered in a fresh
    process, so the registry of this one stays as it is)."""
    import subprocess
    import sys
    script = (
        "from stm_lab.models import ModelName, display_name, family_of, parse_name, register_family, scale_of\n"
        "names = register_family('u_my_pool', mixer='pooling')\n"
        "assert 'u_my_pool_micro' in names and 'u_my_pool_test' in names, names\n"
        "assert parse_name('u_my_pool_micro') == ModelName('my_pool', 'micro', '')\n"
        "assert family_of('u_my_pool_test') == 'my_pool' and scale_of('u_my_pool_test') == 'test'\n"
        "assert display_name('u_my_pool_micro') == display_name('u_pooling_micro'), display_name('u_my_pool_micro')\n"
        "print('ok')\n")
    out = subprocess.run([sys.executable, '-c', script], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0 and out.stdout.strip().endswith('ok'), out.stderr[-2000:]
    assert parse_name('u_swin_micro_patchds') == ModelName('swin', 'micro', 'patchds')
    assert parse_name('u_halonet_micro_b') == ModelName('halonet', 'micro', 'b')
    assert parse_name('timm_swin_micro').family == 'swin'
    for name, entry in NAMES.items():  # every entry spells its own name back
        assert name == '_'.join(filter(None, ('u', entry.family, entry.scale, entry.variant))), name
    with pytest.raises(KeyError, match="unknown model 'u_swin_huge'.*Did you mean"):
        parse_name('u_swin_huge')
