"""A researcher's own mixer, by command line only: a module that registers it is imported with ``--import``, the
model trains with the recipe its mixer declares, its checkpoint records the module (so a fresh process rebuilds and
evaluates it without being told), the analyses add its records, and the notebooks show it."""
import json
import os
import subprocess
import sys
import textwrap

import pytest

from stm_lab.profiles import PROFILES
from stm_lab.results import ROOT

TOY = textwrap.dedent('''
    import torch.nn.functional as F
    from stm_lab import TokenMixer, register_family, register_mixer

    @register_mixer('toy_maxpool')
    class ToyMaxPool(TokenMixer):
        """3x3 max pooling over (B, H, W, C), a convolution-like mixer."""
        uses_heads = False
        recipe, display_name, color = 'cnn', 'Max-Pool', '#17becf'

        def forward(self, x):
            return F.max_pool2d(x.permute(0, 3, 1, 2), 3, 1, 1).permute(0, 2, 3, 1)

    register_family('u_my_pool', mixer='toy_maxpool')  # a family name with an underscore
''')


def _cli(args, cwd, env):
    env = dict(env, PYTHONPATH=os.pathsep.join(filter(None, [str(ROOT), env.get('PYTHONPATH')])))  # this checkout
    return subprocess.run([sys.executable, '-m', 'stm_lab.cli', *args], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=600)


@pytest.mark.e2e
def test_a_user_mixer_goes_through_the_whole_battery_from_the_command_line(tmp_path, own_smoke_results):
    """Train, evaluate, every analysis, every notebook: by command line only, beside the smoke results of the five,
    and the pages that show per-model results show the new mixer under its own display name."""
    (tmp_path / 'toy_mixers.py').write_text(TOY)
    res = own_smoke_results  # the committed results and the session's smoke results; the battery adds to them
    five = set(PROFILES['smoke'].models)
    env = dict(os.environ, STM_LAB_RESULTS=str(res), STM_LAB_RUNS=str(tmp_path / 'runs'), OMP_NUM_THREADS='1')
    env.pop('STM_LAB_IMPORT', None)
    out = _cli(['train', '--model', 'u_my_pool_test', '--profile', 'smoke', '--no-progress'], tmp_path, env)
    assert out.returncode != 0 and 'u_my_pool_test' in out.stderr  # unknown without the module

    out = _cli(['--import', 'toy_mixers', 'train', '--model', 'u_my_pool_test', '--profile', 'smoke', '--no-progress'],
               tmp_path, env)
    assert out.returncode == 0, out.stderr[-2000:]
    doc = json.loads((res / 'smoke' / 'train_u_my_pool_test.json').read_text())
    assert doc['config']['train']['recipe'] == 'cnn'  # the mixer's own trait, not the transformer default

    weights = res / 'smoke' / 'u_my_pool_test.safetensors'
    out = _cli(['eval', '--checkpoint', str(weights), '--json'], tmp_path, env)  # no --import: the checkpoint knows
    assert out.returncode == 0, out.stderr[-2000:]
    assert json.loads(out.stdout.strip().splitlines()[-1])['top1'] == doc['records'][-1]['top1_fp16']

    out = _cli(['--import', 'toy_mixers', 'analyze', 'all', '--profile', 'smoke', '--models', 'u_my_pool_test'],
               tmp_path, env)
    assert out.returncode == 0, out.stderr[-2000:]
    for name in ('erf', 'invariance', 'fgsm', 'demo_rotation', 'erf_photos'):
        records = json.loads((res / 'smoke' / f'{name}.json').read_text())['records']
        assert {r['model'] for r in records} == five | {'u_my_pool_test'}, name  # added beside the five
        if name in ('erf', 'invariance', 'fgsm'):  # the family from the registry, not the name cut at '_'
            assert {r['family'] for r in records if r['model'] == 'u_my_pool_test'} == {'my_pool'}, name

    gen = tmp_path / 'generated'
    out = _cli(['--import', 'toy_mixers', 'notebooks', '--profile', 'smoke', '--out', str(gen)], tmp_path, env)
    assert out.returncode == 0, (out.stdout + out.stderr)[-3000:]
    assert len(list(gen.glob('*.ipynb'))) == len(list((ROOT / 'notebooks').glob('*.ipynb')))
    pages = {p.stem: p.read_text() for p in gen.glob('*.ipynb')}
    for page in ('training', 'erf', 'robustness', 'lab'):  # the pages of per-model results it has, beside the five
        assert 'Max-Pool' in pages[page] and 'U-Swin' in pages[page], page
    assert 'toy_maxpool' in pages['architecture']  # the table of registered mixers


def test_an_unknown_module_is_one_clear_message(tmp_path):
    out = _cli(['--import', 'no_such_module_here', 'mixers'], tmp_path, dict(os.environ))
    assert out.returncode == 2 and "cannot import 'no_such_module_here'" in out.stderr
    assert 'Traceback' not in out.stderr
