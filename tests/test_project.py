"""The project's own promises: set-up files agree, notebooks are stripped, committed results match the code,
transcribed paper numbers match the paper."""
import json
import re
import subprocess
import tomllib
from pathlib import Path

import pytest
import torch
import yaml

from stm_lab.results import ROOT

PAPER = ROOT.parent / 'shared' / 'paper' / 'demystify-stm-paper.txt'


def _name(req: str) -> str:
    return re.split(r'[<>=!~ \[]', req.strip(), maxsplit=1)[0].lower()


def test_environment_yml_lists_the_same_dependencies_as_pyproject():
    """environment.yml is the dev environment: the core and every extra, each with pyproject's version rule; the
    dev extra is the union of the others, and a package in two extras has one rule."""
    project = tomllib.loads((ROOT / 'pyproject.toml').read_text())['project']
    extras = project['optional-dependencies']
    assert set(extras) == {'book', 'detect', 'lab', 'test', 'dev'}
    rule = {}
    for req in [r for reqs in extras.values() for r in reqs]:
        assert rule.setdefault(_name(req), req.replace(' ', '')) == req.replace(' ', ''), req
    assert {_name(r) for r in extras['dev']} == {_name(r) for e in ('book', 'detect', 'lab', 'test') for r in extras[e]}
    core = {_name(r): r.replace(' ', '') for r in project['dependencies']}
    assert not set(core) & set(rule), 'a core dependency repeated in an extra'
    env = yaml.safe_load((ROOT / 'environment.yml').read_text())
    pip = next(d['pip'] for d in env['dependencies'] if isinstance(d, dict))
    listed = {_name(r): r.replace(' ', '') for r in pip}
    assert len(listed) == len(pip)
    assert listed == core | rule


def test_notebook_sources_are_stripped_and_parameterized():
    sources = sorted((ROOT / 'notebooks').glob('*.ipynb'))
    assert sources
    for path in sources:
        cells = json.loads(path.read_text())['cells']
        code = [c for c in cells if c['cell_type'] == 'code']
        assert not any(c.get('outputs') or c.get('execution_count') for c in code), f'{path.name} has outputs'
        assert any('parameters' in c.get('metadata', {}).get('tags', []) for c in code), f'{path.name}: no parameters cell'


def test_every_notebook_is_in_the_book():
    toc = (ROOT / '_toc.yml').read_text()
    for path in (ROOT / 'notebooks').glob('*.ipynb'):
        assert f'book/generated/{path.stem}' in toc, f'{path.name} is not in _toc.yml'


def test_ci_runs_the_readme_test_command():
    readme = (ROOT / 'README.md').read_text()
    assert 'make test' in readme and 'make book' in readme
    assert 'make test' in (ROOT / '.ci' / 'run').read_text()


def test_committed_table3_matches_the_code():
    """The committed complexity table is what the code counts now (micro rows, recounted)."""
    from stm_lab.analysis.complexity import table3
    committed = {r['model']: r for r in json.loads((ROOT / 'results/paper/table3_complexity.json').read_text())['records']}
    assert len(committed) == 20
    for r in table3([n for n in committed if n.endswith('_micro')]):
        c = committed[r['model']]
        for key in ('params_m', 'params_no_pos_m', 'gmacs', 'attention_gmacs'):
            assert r[key] == pytest.approx(c[key], rel=1e-9), (r['model'], key)


def _scale_table(text: str, numbers: str, cast) -> dict:
    """Rows '[Scale] U-Name n1 n2 n3' of a paper table (the scale printed on its first row only) as
    {'u_<family>_<scale>': (n1, n2, n3)}; ``numbers``: the regex of the three numbers, as groups."""
    from stm_lab.paper import DISPLAY
    scale, found = None, {}
    for line in text.splitlines():
        m = re.match(r'^(Micro|Tiny|Small|Base)? ?(U-[\w ]+?) ' + numbers, line)
        if m:
            scale = (m.group(1) or scale).lower()
            fam = next(k for k, v in DISPLAY.items() if v == m.group(2))
            found[f'u_{fam}_{scale}'] = tuple(cast(m.group(i)) for i in (3, 4, 5))
    return found


@pytest.mark.skipif(not PAPER.exists(), reason=f'paper text not found at {PAPER}')
def test_transcribed_tables_match_the_paper_text():
    from stm_lab.paper import TABLE3, TABLE7, TABLE8
    text = PAPER.read_text()
    t3 = text[text.index('TABLE III'):text.index('4.3.2')]
    assert _scale_table(t3, r'([\d.]+)M ([\d.]+)G ([\d.]+)%', float) == TABLE3
    t7 = text[text.index('TABLE VII'):text.index('TABLE VIII')]
    for name, (macs, acc) in TABLE7.items():
        assert f'{macs:.2f} {acc}' in t7, name
    t6 = text[text.index('TABLE VI: Ablation'):text.index('TABLE VII: Ablation')]
    t6 = t6[t6.index('\nSTM A B C D E'):]
    from stm_lab.pages.common import stm_name  # the mixers' display_name traits are the paper's names
    from stm_lab.paper import TABLE2_BLOCK, TABLE2_STAGE, TABLE6
    for fam, values in TABLE6.items():
        printed = ' '.join('--- -' if v is None else f'{v}' for v in values)
        assert f'\n{stm_name(fam)} {printed}' in t6, fam
    t2 = text[text.index('TABLE II:'):text.index('4.1 Stage-Level')]
    stage, block = TABLE2_STAGE, TABLE2_BLOCK  # printed side by side, one row per pair
    assert f'SW-Attn {stage["swin"][0]} {stage["swin"][1]} Halo-Attn {block["halonet"][0]} {block["halonet"][1]}' in t2
    assert f'DW-Conv {stage["dwconv"][0]} {stage["dwconv"][1]} DW-Conv {block["dwconv"][0]} {block["dwconv"][1]}' in t2
    t8 = text[text.index('TABLE VIII'):text.index('5.4 Ablation')]
    assert _scale_table(t8, r'(\d+) (\d+) (\d+)$', int) == TABLE8


def test_kernel_sources_ship_with_the_package():
    """ops/ is packaged as stm_lab._csrc (a non-editable install builds the kernels from there); a checkout uses
    ops/ itself."""
    from stm_lab.ops import _build
    setuptools = tomllib.loads((ROOT / 'pyproject.toml').read_text())['tool']['setuptools']
    assert setuptools['package-dir']['stm_lab._csrc'] == 'ops' and 'stm_lab._csrc' in setuptools['packages']
    assert set(setuptools['package-data']['stm_lab._csrc']) == {'*.cpp', '*.h'}
    assert _build.SOURCE_DIR == ROOT / 'ops'
    assert {p.name for p in (ROOT / 'ops').iterdir()} >= set(_build.CPU_SOURCES + _build.HEADERS)
    shipped = {p.parent.name for p in (ROOT / 'stm_lab').rglob('__init__.py')} - {'stm_lab'}
    assert shipped <= {p.split('.')[-1] for p in setuptools['packages']}  # no sub-package left out of the list
