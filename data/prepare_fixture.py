"""Regenerate the committed test fixture (data/fixture/) and demo photos (data/demo/) from the Imagenette shards.

    .venv/bin/python data/prepare_fixture.py [--data-dir ../shared/data]

- fixture: 30 train images per class from imagenette128_train and 10 val images per class from imagenette128_val,
  resized 128 -> 64 (bicubic) and stored as JPEG q85 in the shard format (fixture_{train,val}.npz, about 1 MB);
  expected.json records a few decoded pixels of fixture_val image 0 (tests check the reader against them).
- demo: one Imagenette val photo per class, the shard's own 128x128 JPEG bytes unchanged, with labels.json.
Selection is a seeded permutation, so the output is the same on every run.
"""
from __future__ import annotations

import argparse
import io
import json
import sys
from pathlib import Path

import numpy as np
from PIL import Image

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
from stm_lab.data import DATA_DIR, read_shard, write_shard  # noqa: E402

PER_CLASS = {'train': 30, 'val': 10}
SIZE = 64
PROBES = [(0, 0), (10, 20), (31, 31), (63, 63), (40, 5)]  # (row, col) pixels recorded in expected.json


def pick(labels: np.ndarray, per_class: int, seed: int) -> list:
    rng = np.random.default_rng(seed)
    out = []
    for c in range(int(labels.max()) + 1):
        idx = np.flatnonzero(labels == c)
        out += sorted(rng.permutation(idx)[:per_class].tolist())
    return out


def small_jpeg(jpeg: bytes) -> bytes:
    with Image.open(io.BytesIO(jpeg)) as im:
        img = im.convert('RGB').resize((SIZE, SIZE), Image.BICUBIC)
    buf = io.BytesIO()
    img.save(buf, format='JPEG', quality=85)
    return buf.getvalue()


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument('--data-dir', default=str(DATA_DIR), help='folder holding imagenette/imagenette128_*.npz')
    args = p.parse_args(argv)
    src = Path(args.data_dir) / 'imagenette'
    fixture, demo = HERE / 'fixture', HERE / 'demo'
    fixture.mkdir(exist_ok=True)
    demo.mkdir(exist_ok=True)
    for split, n in PER_CLASS.items():
        shard = read_shard(src / f'imagenette128_{split}.npz')
        idx = pick(shard.labels, n, seed=0)
        out = write_shard(fixture / f'fixture_{split}.npz', [small_jpeg(shard.jpeg_bytes(i)) for i in idx],
                          shard.labels[idx], shard.classes, [shard.names[i] for i in idx])
        print(f'{out.relative_to(HERE.parent)}: {len(idx)} images, {out.stat().st_size / 1e6:.2f} MB')
    val = read_shard(fixture / 'fixture_val.npz')
    img = val.decode(0)
    expected = dict(shard='fixture_val.npz', index=0, name=val.names[0], shape=list(img.shape),
                    pixels={f'{r},{c}': img[r, c].tolist() for r, c in PROBES},
                    mean=round(float(img.mean()), 4))
    (fixture / 'expected.json').write_text(json.dumps(expected, indent=1) + '\n')

    shard = read_shard(src / 'imagenette128_val.npz')
    meta = []
    for c, i in enumerate(pick(shard.labels, 1, seed=1)):
        name = f'{c}_{shard.classes[c].lower().replace(" ", "_")}.jpg'
        (demo / name).write_bytes(shard.jpeg_bytes(i))
        meta.append(dict(file=name, label=int(shard.labels[i]), **{'class': shard.classes[c]},
                         source=f'imagenette2 val/{shard.names[i]}'))
    (demo / 'labels.json').write_text(json.dumps(meta, indent=1) + '\n')
    print(f'data/demo: {len(meta)} photos')
    return 0


if __name__ == '__main__':
    sys.exit(main())
