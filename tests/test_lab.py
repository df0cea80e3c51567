"""The lab's data (stm_lab.lab): FGSM directions, manifest, cached exports; the lab page at the smoke profile."""
import html
import json

import numpy as np
import pytest
import torch

import stm_lab  # noqa: F401  (registers the models)
from stm_lab.profiles import PROFILES

pytest.importorskip('onnxscript')
pytest.importorskip('onnxruntime')


@pytest.mark.e2e
def test_lab_build_smoke(tmp_path):
    """The lab's data for the smoke profile's untrained test models: every file the manifest names exists, the
    FGSM directions are signs of the right shape and are those of fgsm_direction."""
    from stm_lab import lab
    from stm_lab.analysis.adversarial import fgsm_direction
    from stm_lab.analysis.run import iter_models
    m = lab.build('smoke', out=tmp_path, log=lambda *a: None)
    assert json.loads((tmp_path / 'manifest.json').read_text()) == m
    assert len(m['models']) == 5 and m['img_size'] == 32 and not m['trained']
    assert m['crop_pct'] in m['crop_pcts'] and m['max_shift'] == 9
    n = len(m['photos'])
    labels = torch.tensor([p['label'] for p in m['photos']])
    views = lab.demo_eval_views(32, m['crop_pct'])
    for entry, loaded in zip(m['models'], iter_models(PROFILES['smoke'], log=lambda *a: None)):
        assert (tmp_path / entry['file'].split('?')[0]).stat().st_size == entry['bytes']
        d = np.fromfile(tmp_path / entry['fgsm'].split('?')[0], np.int8).reshape(n, 3, 32, 32)
        assert set(np.unique(d)) <= {-1, 0, 1}
        ref = fgsm_direction(loaded.model, views, labels, mean=loaded.mean, std=loaded.std)
        assert np.array_equal(d, ref.numpy())
    for p in m['photos']:
        assert (tmp_path / p['file']).exists()
    # a second build finds the models up to date (no new export) and gives the same manifest
    stamps = {e['name']: (tmp_path / e['file'].split('?')[0]).stat().st_mtime_ns for e in m['models']}
    assert lab.build('smoke', out=tmp_path, log=lambda *a: None) == m
    assert stamps == {e['name']: (tmp_path / e['file'].split('?')[0]).stat().st_mtime_ns for e in m['models']}


def test_bad_profile_gets_a_clear_message(tmp_path):
    from stm_lab import lab
    with pytest.raises(ValueError, match="unknown profile 'gpu'"):
        lab.build('gpu', out=tmp_path)


@pytest.mark.e2e
def test_lab_page_builds_at_the_smoke_profile(tmp_path, monkeypatch, smoke_results):
    """The lab notebook executes at the smoke profile: its page holds the lab (manifest, script, file:// message),
    the consistency curves and the FGSM panel with the ids lab.js looks for; its files go where STM_LAB_LAB_DIR
    says (the book being built), not into the source tree."""
    import nbformat
    from stm_lab import cli
    monkeypatch.setenv('STM_LAB_LAB_DIR', str(tmp_path / 'lab'))
    assert cli.main(['notebooks', '--profile', 'smoke', '--only', 'lab', '--out', str(tmp_path)]) == 0
    assert json.loads((tmp_path / 'lab' / 'manifest.json').read_text())['profile'] == 'smoke'
    nb = nbformat.read(tmp_path / 'lab.ipynb', as_version=4)
    page = "\n".join(''.join(o['data']['text/html']) for c in nb.cells if c.cell_type == 'code'
                     for o in c.get('outputs', []) if 'text/html' in o.get('data', {}))
    for needle in ('id="stm-lab"', 'data-manifest=', '_static/lab/lab.js', 'id="stm-lab-curves"',
                   'id="stm-lab-fgsm"', 'id="stm-lab-fgsm-curve"', 'python -m http.server -d _build/html'):
        assert needle in page, needle
    manifest = json.loads(html.unescape(page.split('data-manifest="')[1].split('"')[0]))
    assert [m['name'] for m in manifest['models']] == list(PROFILES['smoke'].models)
    assert 'UNTRAINED' in json.dumps(nb.metadata) + str([c.get('outputs') for c in nb.cells])


def test_build_removes_other_models(tmp_path):
    """Files of models that are not in the manifest (another profile's) are not left to be published."""
    from stm_lab import lab
    (tmp_path / 'models').mkdir()
    (tmp_path / 'data').mkdir()
    for f in ('models/u_swin_micro.onnx', 'models/u_swin_micro.json', 'data/fgsm_u_swin_micro.bin'):
        (tmp_path / f).write_bytes(b'x')
    m = lab.build('smoke', models=['u_pvt_test'], out=tmp_path, log=lambda *a: None)
    assert [e['name'] for e in m['models']] == ['u_pvt_test']
    assert sorted(p.name for p in (tmp_path / 'models').iterdir()) == ['u_pvt_test.json', 'u_pvt_test.onnx']
    assert [p.name for p in (tmp_path / 'data').glob('fgsm_*')] == ['fgsm_u_pvt_test.bin']
