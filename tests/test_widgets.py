"""The kernel-backed lab (stm_lab.widgets): moving a control updates the outputs, uploads work or get a clear
message, models come from names, checkpoints or modules."""
import datetime
import io

import numpy as np
import pytest
import torch

pytest.importorskip('ipywidgets')
from stm_lab.widgets import Lab, decode_photo  # noqa: E402


@pytest.fixture(scope='module')
def lab():
    return Lab(['u_dwconv_test', 'u_swin_test'], img_size=32)


def _png_bytes(arr):
    from PIL import Image
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format='PNG')
    return buf.getvalue()


def test_starts_on_the_first_demo_photo(lab):
    s = lab.state()
    assert s['view'].shape == (1, 3, 32, 32)
    assert set(s['top5']) == {'u_dwconv_test', 'u_swin_test'}
    for rows in s['top5'].values():
        assert len(rows) == 5 and sum(p for _, p in rows) <= 1 + 1e-6
    assert lab.w_view.value[:4] == b'\x89PNG' and 'u_swin_test' in lab.w_top5.value


@pytest.mark.parametrize('control,value', [('w_angle', 30.0), ('w_dx', 5), ('w_dy', -4), ('w_scale', 0.45)])
def test_each_geometry_control_updates_view_and_predictions(lab, control, value):
    from stm_lab.analysis.invariance import view
    before = lab.state()
    image = lab.w_view.value
    setattr(getattr(lab, control), 'value', value)
    after = lab.state()
    assert lab.w_view.value != image
    want = view(lab.photo, 32, crop_pct=lab.w_scale.value, angle=lab.w_angle.value,
                shift=(lab.w_dy.value, lab.w_dx.value))
    assert torch.equal(after['view'], want)
    assert after['top5'] != before['top5']
    getattr(lab, control).value = getattr(lab, control).trait_defaults('value') if control != 'w_scale' else 0.875


def test_epsilon_moves_the_fgsm_image_by_epsilon(lab):
    lab.w_eps.value = 0
    x = lab.state()['view']
    assert torch.equal(lab.state()['fgsm_image'], x)
    lab.w_eps.value = 4
    adv = lab.state()['fgsm_image']
    d = (adv - x).abs()
    assert d.max() <= 4 / 255 + 1e-6 and (d > 0).float().mean() > 0.5
    lab.w_eps.value = 0


def test_erf_stage_and_model_choice(lab):
    lab.w_stage.value = 1
    s1 = lab.state()['erf_score'].copy()
    lab.w_stage.value = 4
    s4 = lab.state()['erf_score']
    assert s1.shape == s4.shape == (32, 32) and s1.max() == pytest.approx(1) and not np.array_equal(s1, s4)
    # stage 1 sees a smaller neighbourhood than stage 4
    assert (s1 > 0).sum() < (s4 > 0).sum()
    lab.w_model.value = 'u_swin_test'
    assert 'u_swin_test at epsilon' in lab.w_fgsm.value
    lab.w_model.value = 'u_dwconv_test'


def test_upload_a_photo_and_a_non_image(lab):
    rng = np.random.default_rng(0)
    arr = rng.integers(0, 255, (50, 70, 3), dtype=np.uint8)
    lab.w_upload.value = ({'name': 'mine.png', 'type': 'image/png', 'size': 1, 'content': memoryview(_png_bytes(arr)),
                           'last_modified': datetime.datetime(2026, 1, 1)},)
    assert 'your photo: mine.png (70x50)' in lab.w_status.value
    assert torch.equal((lab.photo[0] * 255).round().byte().permute(1, 2, 0), torch.from_numpy(arr))
    state = lab.state()
    lab.w_upload.value = ({'name': 'notes.txt', 'type': 'text/plain', 'size': 3, 'content': memoryview(b'abc'),
                           'last_modified': datetime.datetime(2026, 1, 1)},)
    assert '"notes.txt" is not an image' in lab.w_status.value
    assert lab.state() is state  # nothing recomputed, the photo kept
    lab.w_photo.value = 1
    assert 'demo photo' in lab.w_status.value and lab.label == lab.photos[1]['label']


def test_models_from_modules_checkpoints_and_bad_names(tmp_path):
    import timm
    import stm_lab  # noqa: F401
    torch.manual_seed(0)
    mine = timm.create_model('u_pooling_micro', num_classes=10, img_size=32)
    lab = Lab({'my mixer': mine}, img_size=32)
    assert list(lab.state()['top5']) == ['my mixer']
    with pytest.raises(ValueError, match='neither a checkpoint file nor a registered model'):
        Lab(['u_nothing_micro'])
    with pytest.raises(FileNotFoundError, match='no checkpoint'):
        Lab([str(tmp_path / 'missing.safetensors')])
    with pytest.raises(ValueError, match='not an image'):
        decode_photo(b'\x00\x01', 'x.bin')
