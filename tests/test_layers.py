"""Layers one way: core -> engines -> the book's pages -> orchestration. Every ``stm_lab`` module's imports, at
module level and inside functions (parsed, not run), go to its own layer or one below, never above; and the pages
(``stm_lab.pages``) only read: they import no runner (a module that runs, trains, exports or benchmarks) and, from
the modules that hold both runners and readers, only the readers. Known exceptions are listed with their reason."""
import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / 'stm_lab'

# lowest first; a module is in the layer of the longest name here that is it or a package above it ('stm_lab' itself:
# the package's __init__ only). The engines are ordered among themselves: analysis loads training's checkpoints,
# and detection, the benchmarks, the export and the ablations use both.
LAYERS = {
    'core': ('stm_lab', 'stm_lab.mixers', 'stm_lab.backbone', 'stm_lab.models', 'stm_lab.profiles', 'stm_lab.layout',
             'stm_lab.results', 'stm_lab.claims', 'stm_lab.paper', 'stm_lab.data', 'stm_lab.assets', 'stm_lab.ops',
             'stm_lab.parsers', 'stm_lab.notebook_params',
             # the analyses' methods: pure functions of a model and images
             'stm_lab.analysis.common', 'stm_lab.analysis.invariance', 'stm_lab.analysis.erf',
             'stm_lab.analysis.adversarial', 'stm_lab.analysis.complexity'),
    'engine: training': ('stm_lab.training',),
    'engine: analysis': ('stm_lab.analysis',),
    'engines': ('stm_lab.detection', 'stm_lab.bench', 'stm_lab.export', 'stm_lab.ablations'),
    'pages': ('stm_lab.pages',),
    # what drives the others: the command line, reproduce, the lab (export and the pages' figures), the book's tools
    'orchestration': ('stm_lab.cli', 'stm_lab.reproduce', 'stm_lab.replay', 'stm_lab.lab', 'stm_lab.lab_browser',
                      'stm_lab.book_check', 'stm_lab.book_sphinx', 'stm_lab.widgets'),
}
RANK = {name: rank for rank, names in enumerate(LAYERS.values()) for name in names}

# (importer, imported): why the import goes up a layer
EXCEPTIONS = {
    ('stm_lab.models', 'stm_lab.training.checkpoint'): "timm's pretrained cfg of a registered model is read from its "
                                                       "committed checkpoint, whose format is training's",
}

# Runners the pages must not import: modules that run, train, export or benchmark ...
RUNNERS = ('stm_lab.training.engine', 'stm_lab.training.cli', 'stm_lab.training.distributed',
           'stm_lab.training.tracking', 'stm_lab.detection.train', 'stm_lab.detection.run', 'stm_lab.bench',
           'stm_lab.export', 'stm_lab.lab', 'stm_lab.reproduce', 'stm_lab.cli')
# ... and, of the modules that hold runners beside readers, what the pages may read
READERS = {
    'stm_lab.ablations': {'planned_runs', 'SEED_SET', 'CONSISTENCY_IMAGES', 'image_se', 'baseline', 'seed_sd',
                          'ablation_rows', 'claims'},
    'stm_lab.analysis.run': {'demo_images', 'demo_views', 'image_data_uri', 'erf_photo_score', 'DEMO_ANGLES'},
    'stm_lab.analysis.outcomes': {'load', 'correct', 'consistency', 'seeds_with_outcomes', 'paths'},
}


def module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix('').parts)
    return '.'.join(parts[:-1] if parts[-1] == '__init__' else parts)


MODULES = {module_name(p): p for p in sorted(PACKAGE.rglob('*.py'))}


def layer_rank(module: str):
    """The rank of a module's layer, or None when no layer holds it."""
    parts = module.split('.')
    for i in range(len(parts), 0, -1):
        name = '.'.join(parts[:i])
        if name in RANK and (name != 'stm_lab' or module == 'stm_lab'):
            return RANK[name]
    return None


def imports(source: str, module: str, is_package: bool = False):
    """(imported module, names taken from it or None, line) for every stm_lab import of a module's source, at any
    depth; ``from x import y`` names module x.y where that is a module."""
    package = module if is_package else module.rsplit('.', 1)[0]
    out = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            out += [(a.name, None, node.lineno) for a in node.names if a.name.split('.')[0] == 'stm_lab']
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split('.')[:len(package.split('.')) - node.level + 1]
                target = '.'.join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ''
            if target.split('.')[0] != 'stm_lab':
                continue
            for a in node.names:
                sub = f'{target}.{a.name}'
                out.append((sub, None, node.lineno) if sub in MODULES else (target, a.name, node.lineno))
    return out


def _all_imports():
    for module, path in MODULES.items():
        for target, name, line in imports(path.read_text(), module, path.name == '__init__.py'):
            yield module, target, name, line


def violations(edges, exceptions=EXCEPTIONS):
    """The imports ``(importer, imported, name, line)`` that go up a layer and are not listed exceptions."""
    out = []
    for module, target, _name, line in edges:
        if target == module or (module, target) in exceptions:
            continue
        low, high = layer_rank(module), layer_rank(target)
        if high > low:
            out.append(f'{module}:{line} imports {target} (a higher layer)')
    return out


def impure(edges):
    """The imports of page modules that reach a runner."""
    out = []
    for module, target, name, line in edges:
        if layer_rank(module) != RANK['stm_lab.pages']:
            continue
        if any(target == r or target.startswith(r + '.') for r in RUNNERS):
            out.append(f'{module}:{line} imports the runner {target}')
        elif target in READERS and name is not None and name not in READERS[target]:
            out.append(f'{module}:{line} imports {name} from {target}, which is not one of its readers')
    return out


def module_attributes(source: str, module: str):
    """``x.attr`` uses of a mixed module imported whole (``from stm_lab import ablations``) in a page's source."""
    tree = ast.parse(source)
    aliases = {}
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            for target, name, _ in imports(ast.unparse(node), module):
                if target in READERS and name is None:
                    aliases[next(a.asname or a.name for a in node.names
                                 if target.endswith('.' + a.name))] = target
    return [(aliases[n.value.id], n.attr, n.lineno) for n in ast.walk(tree)
            if isinstance(n, ast.Attribute) and isinstance(n.value, ast.Name) and n.value.id in aliases]


# ------------------------------------------------------------------------------------------------ the checker

def test_the_checker_resolves_relative_and_function_local_imports():
    source = ('from .. import layout\nfrom ..analysis.run import demo_images\nimport stm_lab.pages.common\n'
              'def f():\n    from ..training import engine\n    from . import evidence\n')
    assert imports(source, 'stm_lab.pages.erf') == [
        ('stm_lab.layout', None, 1), ('stm_lab.analysis.run', 'demo_images', 2), ('stm_lab.pages.common', None, 3),
        ('stm_lab.training.engine', None, 5), ('stm_lab.pages.evidence', None, 6)]
    assert imports('from .invariance import crop\n', 'stm_lab.analysis.run') == [
        ('stm_lab.analysis.invariance', 'crop', 1)]
    assert imports('from .run import x\n', 'stm_lab.analysis', is_package=True) == [('stm_lab.analysis.run', 'x', 1)]


def test_the_checker_finds_an_upward_import_and_an_impure_page():
    edges = [('stm_lab.models', 'stm_lab.pages.common', 'color_of', 7),  # core -> pages
             ('stm_lab.training.cli', 'stm_lab.analysis.run', 'x', 3),  # training below analysis
             ('stm_lab.pages.erf', 'stm_lab.models', 'display_name', 1),  # down: fine
             ('stm_lab.cli', 'stm_lab.pages.common', None, 2)]  # orchestration -> pages: fine
    assert violations(edges, {}) == ['stm_lab.models:7 imports stm_lab.pages.common (a higher layer)',
                                     'stm_lab.training.cli:3 imports stm_lab.analysis.run (a higher layer)']
    edges = [('stm_lab.pages.speed', 'stm_lab.bench.steps', 'BASELINE', 4),
             ('stm_lab.pages.erf', 'stm_lab.analysis.run', 'load_or_compute', 5),
             ('stm_lab.pages.erf', 'stm_lab.analysis.run', 'demo_images', 6),
             ('stm_lab.training.cli', 'stm_lab.training.engine', 'train', 1)]  # not a page
    assert impure(edges) == ['stm_lab.pages.speed:4 imports the runner stm_lab.bench.steps',
                             'stm_lab.pages.erf:5 imports load_or_compute from stm_lab.analysis.run, which is not '
                             'one of its readers']
    source = 'from .. import ablations\ndef f(p):\n    ablations.ensure_smoke_runs()\n    return ablations.claims(p)\n'
    assert module_attributes(source, 'stm_lab.pages.x') == [('stm_lab.ablations', 'ensure_smoke_runs', 3),
                                                            ('stm_lab.ablations', 'claims', 4)]


# ------------------------------------------------------------------------------------------------ the package

def test_every_module_is_in_a_layer():
    assert [m for m in MODULES if layer_rank(m) is None] == []


def test_imports_go_down_the_layers():
    assert violations(list(_all_imports())) == []


def test_every_listed_exception_is_still_needed():
    edges = {(m, t) for m, t, _, _ in _all_imports()}
    assert [e for e in EXCEPTIONS if e not in edges] == []


def test_pages_only_read():
    assert impure(list(_all_imports())) == []
    used = [(f'{m}:{line}', target, attr) for m, p in MODULES.items() if m.startswith('stm_lab.pages')
            for target, attr, line in module_attributes(p.read_text(), m)]
    assert [u for u in used if u[2] not in READERS[u[1]]] == []


@pytest.mark.parametrize('page', ['architecture', 'table3_complexity', 'training', 'ablations', 'detection', 'erf',
                                  'robustness', 'speed', 'findings', 'lab'])
def test_every_book_page_has_its_module(page):
    assert (PACKAGE.parent / 'notebooks' / f'{page}.ipynb').exists() and f'stm_lab.pages.{page}' in MODULES
