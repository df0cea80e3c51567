"""The unified models as a timm user meets them: pretrained tags of the committed cpu weights (their cfg, loading
offline, timm's transforms), features_only, num_features / head_hidden_size and reset_classifier, across the
registry as timm tests its own models (the ``u_*_test*`` layouts at 64 px)."""
import shutil

import pytest
import timm
import torch
from PIL import Image
from timm.data import create_transform, resolve_model_data_config
from timm.models import get_pretrained_cfg

import stm_lab
from stm_lab import assets
from stm_lab.data import IMAGENETTE_CLASSES, IMAGENETTE_WNIDS, BatchFinish, DataConfig, demo_photos, image_transform
from stm_lab.models import main_models
from stm_lab.training.checkpoint import load_model

TRAINED = main_models('micro')  # the five committed cpu checkpoints
TAG = 'cpu_imagenette_64'
TEST_MODELS = timm.list_models('u_*_test*')
S = 64


def test_the_committed_checkpoints_are_the_pretrained_tags():
    assert timm.list_models('u_*', pretrained=True) == sorted(f'{m}.{TAG}' for m in TRAINED)
    for m in TRAINED:
        cfg = get_pretrained_cfg(f'{m}.{TAG}').to_dict()
        assert cfg['file'] == str(assets.weights_path(m, profile='cpu'))
        assert cfg['input_size'] == (3, 64, 64) and cfg['fixed_input_size'] and cfg['num_classes'] == 10
        assert (cfg['crop_pct'], cfg['crop_mode'], cfg['interpolation']) == (0.875, 'center', 'bicubic')
        assert cfg['mean'] == (0.485, 0.456, 0.406) and cfg['std'] == (0.229, 0.224, 0.225)
        assert cfg['label_names'] == IMAGENETTE_WNIDS and cfg['label_names'][0] == 'n01440764'
        assert [cfg['label_descriptions'][n] for n in cfg['label_names']] == list(IMAGENETTE_CLASSES)
        assert cfg['license'] == 'Apache-2.0' and cfg['paper_ids'] == 'arXiv:2211.05781'
        assert any('ImageNet terms' in n and 'non-commercial' in n for n in cfg['notes'])


def test_the_untagged_default_stays_the_papers_setting_without_weights():
    for m in ('u_swin_micro', 'u_swin_tiny', 'u_pvt_small_b'):
        cfg = get_pretrained_cfg(m).to_dict()
        assert cfg['input_size'] == (3, 224, 224) and cfg['num_classes'] == 1000 and 'file' not in cfg
    model = timm.create_model('u_swin_micro')  # what it always built: Table III's model
    assert model.config.img_size == 224 and model.num_classes == 1000
    assert model.stages[0].blocks[0].mixer.window == 7
    assert get_pretrained_cfg('u_swin_test').input_size == (3, 64, 64)


def test_wrong_pretrained_requests_list_the_valid_choices():
    with pytest.raises(ValueError, match=r'u_swin_tiny: no trained weights .*u_dwconv_micro\.cpu_imagenette_64'):
        timm.create_model('u_swin_tiny', pretrained=True)
    with pytest.raises(ValueError, match=r"u_swin_micro has no pretrained tag 'in1k'; valid: cpu_imagenette_64"):
        timm.create_model('u_swin_micro.in1k', pretrained=True)
    with pytest.raises(ValueError, match='square'):
        timm.create_model('u_swin_test', img_size=(64, 32))


@pytest.fixture(scope='module')
def demo():
    photos = demo_photos()
    images = [Image.open(p['path']).convert('RGB') for p in photos]
    return images, torch.tensor([p['label'] for p in photos])


def project_batch(state, images):
    """The project's own eval input (``stm-lab eval``): the checkpoint's data record, its uint8 transform,
    then ``BatchFinish``'s normalization."""
    rec = state['data']
    dcfg = DataConfig(dataset=rec['dataset'], img_size=rec['img_size'], crop_pct=rec['crop_pct'],
                      interpolation=rec['interpolation'], mean=tuple(rec['mean']), std=tuple(rec['std']))
    tf = image_transform(dcfg, train=False)
    return BatchFinish(dcfg, train=False)(torch.stack([tf(im) for im in images]))


@pytest.fixture(scope='module')
def runs(demo):
    """Each trained model through both pipelines: ``load_model`` + the project's eval input, and timm's
    ``create_model(pretrained=True)`` + ``resolve_model_data_config`` + ``create_transform``."""
    images = demo[0]
    out = {}
    for name in TRAINED:
        ref, state = load_model(assets.weights_path(name, profile='cpu'))
        model = timm.create_model(name, pretrained=True).eval()  # the default tag, offline
        x_project = project_batch(state, images)
        x_timm = torch.stack([create_transform(**resolve_model_data_config(model))(im) for im in images])
        with torch.no_grad():
            out[name] = dict(ref=ref, model=model, x_project=x_project, x_timm=x_timm, expected=ref(x_project),
                             same_input=model(x_project), got=model(x_timm))
    return out


@pytest.mark.parametrize('name', TRAINED)
def test_pretrained_true_is_the_checkpoint_with_timms_transforms(name, runs):
    r = runs[name]
    model = r['model']
    assert model.pretrained_cfg['tag'] == TAG and model.config.img_size == 64 and model.num_classes == 10
    assert model.config.to_dict() == r['ref'].config.to_dict()
    assert r['x_timm'].shape == (10, 3, 64, 64)
    torch.testing.assert_close(r['x_timm'], r['x_project'], rtol=0, atol=1e-6)  # same pixels, same normalization
    assert torch.equal(r['same_input'], r['expected'])  # the same weights, to the bit
    assert torch.equal(r['got'].argmax(1), r['expected'].argmax(1))  # the project's predictions: the known answer


def test_the_demo_photos_come_out_right(runs, demo):
    right = {name: (r['got'].argmax(1) == demo[1]).sum().item() for name, r in runs.items()}
    # measured: halonet 7, pvt 8, swin 8, dwconv 7, internimage 6 of 10 (224-px transforms gave 2 of 10)
    assert right['u_swin_micro'] >= 7
    assert sum(right.values()) >= 7 * len(TRAINED)


def test_pretrained_features_and_a_new_head(demo):
    images, _ = demo
    ref, state = load_model(assets.weights_path('u_swin_micro', profile='cpu'))
    x = project_batch(state, images[:2])
    feats = timm.create_model('u_swin_micro', pretrained=True, features_only=True, out_indices=(1, 3)).eval()
    assert resolve_model_data_config(feats)['input_size'] == (3, 64, 64)
    tuned = timm.create_model('u_swin_micro', pretrained=True, num_classes=5).eval()  # timm drops the 10-class head
    with torch.no_grad():
        for a, b in zip(feats(x), ref.forward_intermediates(x, indices=(1, 3), intermediates_only=True)):
            assert torch.equal(a, b)
        assert tuned(x).shape == (2, 5)
        assert torch.equal(tuned.forward_features(x), ref.forward_features(x))


def test_pretrained_loading_refuses_a_damaged_checkpoint(tmp_path, monkeypatch):
    good, bad = tmp_path / 'good.safetensors', tmp_path / 'bad.safetensors'
    shutil.copy(assets.weights_path('u_swin_micro', profile='cpu'), good)
    data = bytearray(good.read_bytes())
    data[-3] ^= 0x40  # a byte of the last tensor
    bad.write_bytes(bytes(data))
    for path in (good, bad):  # checked as the registered files are
        monkeypatch.setitem(stm_lab.models._TRAINED_FILES, str(path), 'u_swin_micro')
    model = timm.create_model('u_swin_micro', pretrained=True, pretrained_cfg_overlay=dict(file=str(good)))
    ref = load_model(good)[0].state_dict()
    loaded = model.state_dict()
    assert loaded.keys() == ref.keys() and all(torch.equal(v, ref[k]) for k, v in loaded.items())
    with pytest.raises(ValueError, match='corrupted'):
        timm.create_model('u_swin_micro', pretrained=True, pretrained_cfg_overlay=dict(file=str(bad)))


def test_no_weights_no_tag_and_the_package_still_imports(tmp_path, monkeypatch):
    committed = assets.weights_path('u_swin_micro', profile='cpu')
    monkeypatch.setattr(assets, 'find_weights', lambda model, profile='cpu': None)  # a wheel without weights
    assert stm_lab.models.trained_cfg('u_swin_micro') is None
    assert list(stm_lab.models._default_cfg('u_swin_micro', 224).tags) == ['']
    broken = tmp_path / 'u_swin_micro.safetensors'
    broken.write_bytes(committed.read_bytes()[:1000])  # truncated
    monkeypatch.setattr(assets, 'find_weights', lambda model, profile='cpu': broken)
    with pytest.warns(UserWarning, match='u_swin_micro: no pretrained tag registered'):
        assert stm_lab.models.trained_cfg('u_swin_micro') is None


# ------------------------------------------------------------------------- the registry, as timm tests its models

@pytest.mark.parametrize('name', TEST_MODELS)
def test_features_only_num_features_and_reset_classifier(name):
    x = torch.randn(2, 3, S, S)
    torch.manual_seed(0)
    model = timm.create_model(name).eval()
    dims = model.config.dims
    assert dims == (16, 32, 48, 64)  # the test layout: the known answers below
    torch.manual_seed(0)
    every = timm.create_model(name, features_only=True).eval()
    torch.manual_seed(0)
    some = timm.create_model(name, features_only=True, out_indices=(1, 3)).eval()
    with torch.no_grad():
        _, stages = model.forward_intermediates(x)
        for net, take in ((every, [0, 1, 2, 3]), (some, [1, 3])):
            maps = net(x)
            assert len(maps) == len(take)
            assert [m.shape[1] for m in maps] == net.feature_info.channels() == [dims[i] for i in take]
            assert [S // m.shape[-1] for m in maps] == net.feature_info.reduction() == [4 * 2 ** i for i in take]
            assert all(torch.equal(m, stages[i]) for m, i in zip(maps, take))  # the stage outputs themselves
        assert some.feature_info.channels() == [32, 64] and some.feature_info.reduction() == [8, 32]

        features = model.forward_features(x)
        assert features.shape[1] == model.num_features == 64  # the last stage's channels
        assert model.forward_head(features, pre_logits=True).shape == (2, model.head_hidden_size)
        assert model.head_hidden_size == 96  # the 1x1 conv head, 1.5 x C4
        model.reset_classifier(5)
        assert model(x).shape == (2, 5) and model.get_classifier().in_features == 96
        model.reset_classifier(0)
        assert torch.equal(model(x), model.forward_head(features, pre_logits=True))
    with pytest.raises(AssertionError, match=r'out of range \(0 to 3\)'):
        timm.create_model(name, features_only=True, out_indices=(1, 4))
