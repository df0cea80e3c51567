"""Datasets: the shard reader, the decoded cache, missing-data messages, the committed fixture and demo photos,
and the timm-built augmentation."""
import io
import json

import numpy as np
import pytest
import torch
from PIL import Image

from stm_lab import data
from stm_lab.data import DataConfig


def _jpeg(img: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(img).save(buf, format='JPEG', quality=100, subsampling=0)
    return buf.getvalue()


def test_shard_reader_decodes_a_known_image_to_known_pixels(tmp_path):
    colors = np.array([[200, 30, 40], [20, 180, 60], [10, 20, 220], [128, 128, 128]], np.uint8)
    img = np.zeros((16, 16, 3), np.uint8)  # four flat 8x8 blocks: JPEG at q100, no subsampling, keeps them
    for k, (r, c) in enumerate([(0, 0), (0, 8), (8, 0), (8, 8)]):
        img[r:r + 8, c:c + 8] = colors[k]
    other = np.full((8, 24, 3), 77, np.uint8)
    path = data.write_shard(tmp_path / 's.npz', [_jpeg(other), _jpeg(img)], [3, 1], ['a', 'b', 'c', 'd'], ['x', 'y'])
    shard = data.read_shard(path)
    assert len(shard) == 2 and shard.labels.tolist() == [3, 1] and shard.names == ['x', 'y']
    out = shard.decode(1)
    assert out.shape == (16, 16, 3) and out.dtype == np.uint8
    for k, (r, c) in enumerate([(0, 0), (0, 8), (8, 0), (8, 8)]):
        assert np.abs(out[r:r + 8, c:c + 8].astype(int) - colors[k]).max() <= 2
    assert shard.decode(0).shape == (8, 24, 3)


def test_fixture_image_decodes_to_the_recorded_pixels():
    expected = json.loads((data.FIXTURE_DIR / 'expected.json').read_text())
    shard = data.read_shard(data.FIXTURE_DIR / expected['shard'])
    img = shard.decode(expected['index'])
    assert shard.names[expected['index']] == expected['name'] and list(img.shape) == expected['shape']
    for rc, rgb in expected['pixels'].items():
        r, c = map(int, rc.split(','))
        assert img[r, c].tolist() == rgb
    assert float(img.mean()) == pytest.approx(expected['mean'], abs=1e-3)


def test_damaged_shard_is_refused_with_its_path(tmp_path):
    bad = tmp_path / 'bad.npz'
    bad.write_bytes(b'not a shard')
    with pytest.raises(ValueError, match='bad.npz'):
        data.read_shard(bad)


def test_committed_fixture_and_demo_photos_are_small_and_complete():
    files = list(data.FIXTURE_DIR.iterdir()) + list(data.DEMO_DIR.iterdir())
    assert sum(f.stat().st_size for f in files) < 2_000_000
    train, val = (data.read_shard(data.FIXTURE_DIR / f'fixture_{s}.npz') for s in ('train', 'val'))
    assert np.bincount(train.labels).tolist() == [30] * 10 and np.bincount(val.labels).tolist() == [10] * 10
    assert train.classes == val.classes and train.classes[0] == 'tench'
    photos = data.demo_photos()
    assert len(photos) == 10 and sorted(p['label'] for p in photos) == list(range(10))
    for p in photos:
        with Image.open(p['path']) as im:
            assert im.size == (128, 128)
        assert p['class'] == train.classes[p['label']]


def test_decoded_array_is_cached_and_reused(tmp_path, monkeypatch):
    monkeypatch.setattr(data, 'CACHE_DIR', tmp_path)
    src = data.FIXTURE_DIR / 'fixture_val.npz'
    first = data.decoded_images(src, verbose=False)
    assert first.shape == (100, 64, 64, 3) and first.dtype == np.uint8
    assert np.array_equal(first[7], data.read_shard(src).decode(7))
    monkeypatch.setattr(data, 'decode_shard', lambda *_: pytest.fail('decoded twice'))
    again = data.decoded_images(src, verbose=False)
    assert isinstance(again, np.memmap) and np.array_equal(again, first)


def test_missing_data_says_where_it_looked_and_how_to_get_it(tmp_path, monkeypatch):
    monkeypatch.setattr(data, 'DATA_DIR', tmp_path / 'shared')
    monkeypatch.setattr(data, 'CACHE_DIR', tmp_path / 'cache')
    with pytest.raises(FileNotFoundError) as e:
        data.find_shard('imagenette', 'val', download=False)
    msg = str(e.value)
    assert str(tmp_path / 'shared' / 'imagenette' / 'imagenette128_val.npz') in msg
    assert str(tmp_path / 'cache') in msg and 'download' in msg and 'STM_LAB_DATA' in msg

    def offline(_):
        raise OSError('network unreachable')
    monkeypatch.setitem(data.DOWNLOADERS, 'cifar10', offline)
    with pytest.raises(FileNotFoundError, match='download failed: network unreachable'):
        data.find_shard('cifar10', 'val')  # val is CIFAR-10's test split
    with pytest.raises(FileNotFoundError, match='--data-dir'):
        data.load_dataset(DataConfig(dataset='imagenet', data_dir=str(tmp_path)), 'val')
    with pytest.raises(KeyError, match='valid'):
        data.find_shard('imagenet21k', 'val')


def test_train_and_eval_transforms_give_uint8_then_normalized_batches():
    cfg = DataConfig(dataset='fixture', img_size=32)
    ds = data.load_dataset(cfg, 'train', data.image_transform(cfg, True))
    x, y = ds[5]
    assert x.dtype == torch.uint8 and x.shape == (3, 32, 32) and 0 <= y < 10
    ev = data.load_dataset(cfg, 'val', data.image_transform(cfg, False))
    a, _ = ev[3]
    assert torch.equal(a, ev[3][0])  # eval is deterministic
    batch = torch.stack([a, ev[4][0]])
    out = data.BatchFinish(cfg, train=False)(batch)
    mean, std = torch.tensor(cfg.mean).view(3, 1, 1), torch.tensor(cfg.std).view(3, 1, 1)
    assert torch.allclose(out[0], (a.float() / 255 - mean) / std, atol=1e-5)
    assert data.BatchFinish(cfg, train=True).erase is not None


def test_randaugment_posterize_to_zero_bits_gives_black_instead_of_crashing():
    """timm's RandAugment m9/mstd0.5 asks for 0 bits when the sampled magnitude is 10; Pillow 13 refuses 0."""
    img = Image.fromarray(np.full((8, 8, 3), 200, np.uint8))
    assert np.asarray(data._posterize(img, 0)).max() == 0
    assert np.asarray(data._posterize(img, 4)).max() == 192
    tf = data.image_transform(DataConfig(), True)
    ops = [op for t in tf.transforms if isinstance(t, data.RandAugment) for op in t.ops]
    assert any(op.name == 'PosterizeIncreasing' for op in ops)
    assert all(op.aug_fn is data._posterize for op in ops if op.name.startswith('Posterize'))


def test_mixup_gives_smoothed_soft_targets():
    mix = data.build_mixup(DataConfig(), num_classes=10)
    x, y = torch.randn(4, 3, 8, 8), torch.tensor([0, 1, 2, 3])
    _, t = mix(x, y)
    assert t.shape == (4, 10) and torch.allclose(t.sum(1), torch.ones(4))
    assert t.min() >= 0.1 / 10 - 1e-6  # label smoothing 0.1 spreads 0.01 to every class


def test_no_mixup_and_no_cutmix_means_no_mixup_stage():
    assert data.build_mixup(DataConfig(mixup=0.0, cutmix=0.0), num_classes=10) is None  # smoothing is the loss's job
