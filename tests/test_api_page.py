"""The API page (book/api.md) against the package, without building the book: every name the page documents exists
and has its own docstring, its summary tables list exactly the names it documents, and every public function and
class of the modules it documents is on it or in LEFT_OFF, so that a new public function cannot go undocumented
unnoticed."""
import fnmatch
import importlib
import inspect
import re

import pytest

pytest.importorskip('sphinx', reason='Sphinx comes with the book extra')
from sphinx.ext.napoleon import Config as NapoleonConfig  # noqa: E402
from sphinx.ext.napoleon.docstring import GoogleDocstring  # noqa: E402
from sphinx.pycode import ModuleAnalyzer  # noqa: E402

import stm_lab  # noqa: E402
from stm_lab.results import ROOT  # noqa: E402

PAGE = ROOT / 'book' / 'api.md'

# Public names of the page's modules that are deliberately not on it, and why (one fnmatch pattern: the models)
_BLOCKS = "UnifiedNet's building blocks"
_TRAINING = "training's own: writing, locking, pairing exported weights with their results"
LEFT_OFF = {
    'stm_lab.mixers.mixer_module': 'checkpoint plumbing: the module a checkpoint records to rebuild its mixer',
    'stm_lab.mixers.ensure_mixer': 'checkpoint plumbing: re-imports that recorded module',
    'stm_lab.mixers.sr_attn.AbsolutePositionEmbedding': "PVT's stage input, made by the mixer's stage_input",
    'stm_lab.mixers.swin.window_attention': 'the attention core of Swin and HaloNet (an implementation detail)',
    'stm_lab.mixers.swin.window_for_side': 'the window rule, offered as stm_lab.models.window_for',
    **{f'stm_lab.backbone.{n}': _BLOCKS for n in ('Stem', 'Transition', 'PatchConv', 'patch_stem', 'patch_transition',
                                                  'ChannelsLastLN', 'ChannelsLastBN', 'Block', 'BottleneckBlock',
                                                  'Stage')},
    'stm_lab.models.Family': 'the record register_family keeps',
    'stm_lab.models.u_*': "the model entry points, listed by timm.list_models('u_*')",
    **{f'stm_lab.training.checkpoint.{n}': _TRAINING for n in ('write_checkpoint', 'weights_state',
                                                               'model_from_tensors', 'check_export', 'RunLock',
                                                               'take_lock')},
    **{f'stm_lab.widgets.{n}': "the Lab's parts" for n in ('Entry', 'load_entry', 'decode_photo')},
}


def _resolve(name: str):
    """The object a dotted name names: the longest importable module, then attributes."""
    parts = name.split('.')
    for i in range(len(parts), 0, -1):
        try:
            obj = importlib.import_module('.'.join(parts[:i]))
        except ImportError:
            continue
        for attr in parts[i:]:
            obj = getattr(obj, attr)
        return obj
    raise ImportError(name)


def parse_page(text: str):
    """(modules the page documents, names of its auto* entries, names in its autosummary tables), each name in
    full: directive names are relative to the current module (automodule / currentmodule) unless they start
    with 'stm_lab.'."""
    modules, entries, summaries = [], [], []
    current, in_summary = None, False

    def full(name):
        name = name.lstrip('~').split('(')[0]
        return name if name.startswith('stm_lab.') or current is None else f'{current}.{name}'

    for line in text.splitlines():
        if in_summary:
            if line.startswith('   ') and line.strip() and not line.strip().startswith(':'):
                summaries.append(full(line.strip()))
                continue
            if line.strip() and not line.startswith('   '):
                in_summary = False
        m = re.match(r'\.\. (automodule|currentmodule|auto\w+|autosummary)::\s*(\S*)', line)
        if not m:
            continue
        kind, arg = m.groups()
        if kind in ('automodule', 'currentmodule'):
            current = arg
            if kind == 'automodule':
                modules.append(arg)
        elif kind == 'autosummary':
            in_summary = True
        else:
            entries.append(full(arg))
    return modules, entries, summaries


MODULES, ENTRIES, SUMMARIES = parse_page(PAGE.read_text())


def _public(module_name: str) -> set:
    """A module's public names: its __all__ and the functions and classes it defines whose names do not start with
    an underscore."""
    module = importlib.import_module(module_name)
    own = {n for n, v in vars(module).items() if not n.startswith('_') and (inspect.isfunction(v) or inspect.isclass(v))
           and v.__module__ == module_name}
    return {f'{module_name}.{n}' for n in own | set(getattr(module, '__all__', ()))}


def _attr_doc(name: str):
    module, attr = name.rsplit('.', 1)
    return ModuleAnalyzer.for_module(module).find_attr_docs().get(('', attr))


def _own_doc(obj) -> str:
    doc = vars(obj).get('__doc__') if inspect.isclass(obj) else getattr(obj, '__doc__', None)
    if inspect.isclass(obj) and doc and doc.startswith(obj.__name__ + '('):
        return ''  # the signature a dataclass writes when it has no docstring
    return (doc or '').strip()


def test_the_parser_reads_the_page():
    assert {'stm_lab.models.create_model', 'stm_lab.mixers.TokenMixer', 'stm_lab.widgets.Lab',
            'stm_lab.training.checkpoint.load_model', 'stm_lab.claims.Verdict'} <= set(ENTRIES)
    assert {'stm_lab.mixers', 'stm_lab.models', 'stm_lab.analysis.erf', 'stm_lab.claims'} <= set(MODULES)
    assert parse_page('.. automodule:: a.b\n\n.. autosummary::\n   :nosignatures:\n\n   ~c.D\n   e\n\n'
                      '.. autofunction:: e\n.. autoclass:: stm_lab.x.Y(value)\n') == (
        ['a.b'], ['a.b.e', 'stm_lab.x.Y'], ['a.b.c.D', 'a.b.e'])


def test_every_entry_exists_and_has_its_own_docstring():
    assert len(ENTRIES) == len(set(ENTRIES)), 'a name is documented twice'
    undocumented = []
    for name in ENTRIES:
        obj = _resolve(name)
        if inspect.isfunction(obj) or inspect.isclass(obj):
            ok = bool(_own_doc(obj))
        else:  # data: a `#:` comment before (or after) the assignment
            ok = bool(_attr_doc(name))
        if not ok:
            undocumented.append(name)
    assert not undocumented, f'no docstring of their own: {undocumented}'


def test_the_summary_tables_list_what_the_page_documents():
    assert sorted(SUMMARIES) == sorted(set(ENTRIES) - {'stm_lab.analysis.common.PixelSpace', 'stm_lab.widgets.Lab'})


def test_every_public_name_of_the_documented_modules_is_on_the_page_or_left_off():
    documented = {id(_resolve(n)) for n in ENTRIES if inspect.isfunction(_resolve(n)) or inspect.isclass(_resolve(n))}
    public = set().union(*(_public(m) for m in MODULES))
    missing = sorted(n for n in public
                     if n not in ENTRIES and id(_resolve(n)) not in documented
                     and not any(fnmatch.fnmatchcase(n, pattern) for pattern in LEFT_OFF))
    assert not missing, f'public but neither on book/api.md nor in LEFT_OFF: {missing}'
    # and LEFT_OFF names nothing that is gone, or that is on the page after all
    for pattern in LEFT_OFF:
        matched = [n for n in public if fnmatch.fnmatchcase(n, pattern)]
        assert matched, f'LEFT_OFF pattern {pattern} matches no public name'
        assert not set(matched) & set(ENTRIES), f'{pattern} is in LEFT_OFF and on the page'


def test_the_top_level_names_the_page_promises_are_documented():
    documented = {id(_resolve(n)) for n in ENTRIES}
    for name in stm_lab._LAZY:
        obj = getattr(stm_lab, name)
        if inspect.ismodule(obj):
            assert obj.__name__ in MODULES, name
        else:
            assert id(obj) in documented, f'stm_lab.{name} is not on the API page'
        assert f'`{name}`' in PAGE.read_text() or inspect.ismodule(obj), f'the intro does not name {name}'


def test_data_docs_are_not_read_as_types():
    """napoleon (the page's Google-style Args) reads ``word: text`` in the first line of an attribute's or a
    constant's doc as its type; the docs of the documented modules must not start that way."""
    config = NapoleonConfig(napoleon_numpy_docstring=False)
    read_as_type = []
    for module in MODULES:
        for (cls, attr), lines in ModuleAnalyzer.for_module(module).find_attr_docs().items():
            out = str(GoogleDocstring(list(lines), config, what='attribute', name=f'{module}.{cls}.{attr}'))
            if ':type:' in out:
                read_as_type.append(f'{module}.{cls}.{attr}'.replace('..', '.'))
    assert not read_as_type, read_as_type
    out = str(GoogleDocstring(['points: a margin'], config, what='attribute', name='x'))
    assert ':type: points' in out  # the check can fail
