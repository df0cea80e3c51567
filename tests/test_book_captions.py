"""The book reads like a paper's companion: every figure and table has a number, a caption and a label, prose refers
to them with {numref}, and what the book uses is cited.

Most checks read the notebooks' sources (no execution): a cell that draws a figure (a page builder of ``stm_lab.pages``
that returns a ``go.Figure``) carries a ``mystnb.figure`` caption and name in its metadata, or captions its figures
with ``{glue:figure}`` (a loop that draws several); a table (a ``*_markdown`` builder of ``stm_lab.pages``) is
printed through ``numbered_table``; every {numref} names a label that some page defines. The checker is tested on a
notebook with known faults, and one test builds a two-page book with the repository's configuration to see that the
two mechanisms give numbered, captioned figures and tables that {numref} resolves across pages.
"""
import ast
import importlib
import inspect
import pkgutil
import re
import shutil
import subprocess
import sys
import typing
from pathlib import Path

import nbformat
import plotly.graph_objects as go
import pytest
import yaml

from stm_lab import pages
from stm_lab.pages import common
from stm_lab.results import ROOT

NUMREF = re.compile(r'\{numref\}`([^`]+)`')
CITE = re.compile(r'\{cite(?::[pt])?\}`([^`]+)`')
NAME_LINE = re.compile(r':name:\s*(\S+)')


def _builders():
    """(figure builders, table builders) of the page modules (stm_lab.pages), by their return types and names."""
    figs, tables = set(), set()
    for info in pkgutil.iter_modules(pages.__path__):
        module = importlib.import_module(f'{pages.__name__}.{info.name}')
        for name, fn in inspect.getmembers(module, inspect.isfunction):
            if fn.__module__ != module.__name__ or name.startswith('_'):
                continue
            ret = typing.get_type_hints(fn).get('return')
            if ret is go.Figure:
                figs.add(name)
            elif ret is str and name.endswith('_markdown'):
                tables.add(name)
    return figs, tables


FIGURE_BUILDERS, TABLE_BUILDERS = _builders()


def book_notebooks():
    """The notebooks behind the book's pages (book/generated/<name> in _toc.yml), by name."""
    toc = yaml.safe_load((ROOT / '_toc.yml').read_text())
    files = [c['file'] for c in toc['chapters']]
    return {f.split('/')[-1]: ROOT / 'notebooks' / (f.split('/')[-1] + '.ipynb')
            for f in files if f.startswith('book/generated/')}


def _called(node) -> str:
    f = node.func
    return f.id if isinstance(f, ast.Name) else f.attr if isinstance(f, ast.Attribute) else ''


def _pattern(node) -> str:
    """A label given in code as a regular expression: a string literal as itself, an f-string's fields as '.+'."""
    if isinstance(node, ast.Constant) and isinstance(node.value, str):
        return re.escape(node.value)
    if isinstance(node, ast.JoinedStr):
        return _as_pattern(''.join(v.value if isinstance(v, ast.Constant) else HOLE for v in node.values))
    return '.+'


HOLE = '\x00'  # where an f-string's field stands in the text of _strings


def _strings(tree) -> list:
    """The string literals of the code (captions written in code, with their {numref}s and :name:s), an f-string's
    fields as HOLE."""
    out, inside = [], set()
    for n in ast.walk(tree):
        if isinstance(n, ast.JoinedStr):
            out.append(''.join(v.value if isinstance(v, ast.Constant) else HOLE for v in n.values))
            inside |= {id(v) for v in n.values}
        elif isinstance(n, ast.Constant) and isinstance(n.value, str) and id(n) not in inside:
            out.append(n.value)
    return out


def _as_pattern(text: str) -> str:
    return re.escape(text).replace(re.escape(HOLE), '.+')


def labels_and_problems(name: str, nb) -> tuple:
    """(label patterns the notebook defines, {numref} targets it uses, problems with its figures and tables)."""
    labels, targets, problems = [], [], []
    for i, cell in enumerate(nb.cells):
        caption = cell.metadata.get('mystnb', {}).get('figure', {})
        if caption.get('name'):
            labels.append(re.escape(caption['name']))
        text = cell.source + '\n' + caption.get('caption', '')
        if cell.cell_type == 'code':
            tree = ast.parse(cell.source)
            strings = _strings(tree)
            text += '\n' + '\n'.join(strings)
            labels += [_as_pattern(m) for t in strings for m in NAME_LINE.findall(t)]  # {glue:figure} in a loop
            if 'remove-cell' in cell.metadata.get('tags', []):
                continue
            calls = [n for n in ast.walk(tree) if isinstance(n, ast.Call)]
            if any(_called(c) in FIGURE_BUILDERS for c in calls) and not (
                    caption.get('name') and caption.get('caption')) and '{glue:figure}' not in cell.source:
                problems.append(f'{name} cell {i}: a figure without a caption and a name')
            wrapped = set()
            for c in calls:
                if _called(c) == 'numbered_table':
                    wrapped |= {id(n) for n in ast.walk(c.args[0])}
                    labels.append(_pattern(c.args[2] if len(c.args) > 2 else
                                           next(k.value for k in c.keywords if k.arg == 'name')))
            problems += [f'{name} cell {i}: table {_called(c)} printed without numbered_table'
                         for c in calls if _called(c) in TABLE_BUILDERS and id(c) not in wrapped]
        targets += [t.split('<')[-1].rstrip('>').strip() for t in NUMREF.findall(text)]
    return labels, targets, problems


def book_problems(notebooks: dict) -> list:
    """Problems of a set of notebooks ({name: notebook}): uncaptioned figures and tables, {numref}s to no label,
    labels defined twice."""
    labels, targets, problems = [], [], []
    for name, nb in notebooks.items():
        lab, tgt, prob = labels_and_problems(name, nb)
        labels += lab
        targets += tgt
        problems += prob
    literal = [lab.replace('\\', '') for lab in labels if '.+' not in lab]
    problems += [f'label defined twice: {lab}' for lab in sorted({lab for lab in literal if literal.count(lab) > 1})]
    problems += [f'{{numref}} to an undefined label: {t}' for t in dict.fromkeys(targets)
                 if not any(re.fullmatch(lab, t) for lab in labels)]
    return problems


# ------------------------------------------------------------------------------------------------ the checker

def test_the_checker_finds_an_uncaptioned_figure_an_unnumbered_table_and_a_dangling_numref():
    nb = nbformat.v4.new_notebook()
    caption = {'mystnb': {'figure': {'caption': 'A.', 'name': 'fig-a'}}}
    nb.cells = [
        nbformat.v4.new_markdown_cell('As {numref}`fig-a` and {numref}`Table %s <tab-b>` show, unlike {numref}`fig-z`'),
        nbformat.v4.new_code_cell('forest_figure(rows)', metadata=caption),
        nbformat.v4.new_code_cell("Markdown(numbered_table(claims_markdown(c), 'B.', 'tab-b'))"),
        nbformat.v4.new_code_cell('fgsm_curves(adv)'),  # no caption
        nbformat.v4.new_code_cell('Markdown(erf_markdown(rows))'),  # no number
        nbformat.v4.new_code_cell('fgsm_curves(adv)', metadata={'tags': ['remove-cell']}),  # not on the page
    ]
    assert book_problems({'x': nb}) == ['x cell 3: a figure without a caption and a name',
                                        'x cell 4: table erf_markdown printed without numbered_table',
                                        '{numref} to an undefined label: fig-z']
    twice = book_problems({'x': nb, 'y': nb})
    assert 'label defined twice: fig-a' in twice and 'label defined twice: tab-b' in twice


def test_labels_made_in_a_loop_match_the_numrefs_they_serve():
    nb = nbformat.v4.new_notebook()
    nb.cells = [nbformat.v4.new_markdown_cell('See {numref}`tab-page-training` and {numref}`fig-run-epochs12`.'),
                nbformat.v4.new_code_cell(
                    "for p in pages:\n    Markdown(numbered_table(findings_table_markdown(r), 'C.', f'tab-page-{p}'))\n"
                    "    display(Markdown(f'~~~{{glue:figure}} k\\n:name: fig-run-{f}\\n\\nD.\\n~~~'))\n"
                    "    comparison_curves(a, b, f)")]
    assert book_problems({'x': nb}) == []


def test_the_builders_are_found():
    assert {'forest_figure', 'invariance_curves', 'lab_consistency_figure'} <= FIGURE_BUILDERS
    assert {'table3_markdown', 'findings_table_markdown', 'coverage_markdown'} <= TABLE_BUILDERS
    assert not FIGURE_BUILDERS & TABLE_BUILDERS


# ------------------------------------------------------------------------------------------------ the book

def test_every_figure_and_table_of_the_book_is_numbered_captioned_and_referred_to_by_existing_labels():
    notebooks = {name: nbformat.read(path, as_version=4) for name, path in book_notebooks().items()}
    assert len(notebooks) >= 10
    assert book_problems(notebooks) == []
    named = sum(bool(c.metadata.get('mystnb', {}).get('figure')) for nb in notebooks.values() for c in nb.cells)
    assert named >= 24  # the figures drawn one per cell on the ten pages (a loop's are glued)


def test_every_citation_is_in_the_bibliography_and_every_entry_is_cited():
    from pybtex.database import parse_file
    keys = set(parse_file(str(ROOT / 'book' / 'references.bib')).entries)
    texts = [p.read_text() for p in (ROOT / 'book').glob('*.md')]
    for path in book_notebooks().values():
        nb = nbformat.read(path, as_version=4)
        texts += [c.source + str(c.metadata.get('mystnb', '')) for c in nb.cells]
    cited = {k.strip() for t in texts for group in CITE.findall(t) for k in group.split(',')}
    assert cited - keys == set()
    assert keys - cited == set()
    assert {'goodfellow2015explaining', 'luo2016understanding', 'ding2022scaling', 'he2017mask', 'lin2014coco',
            'cubuk2020randaugment', 'zhang2018mixup', 'yun2019cutmix', 'howard2019imagenette', 'wightman2019timm',
            'onnxruntime'} <= cited


def test_the_findings_headings_link_to_their_pages():
    from stm_lab.claims import REGISTRY
    pages = book_notebooks()
    assert {c.page.lower() for c in REGISTRY} <= set(pages)  # the heading's {doc} target is the page name, lowercase
    source = ''.join(c.source for c in nbformat.read(pages['findings'], as_version=4).cells)
    assert "f'### {{doc}}`{page} <{doc}>`" in source


def test_numbered_table_is_a_myst_table_with_its_caption_and_label():
    from docutils.core import publish_doctree
    from myst_parser.parsers.docutils_ import Parser
    text = common.numbered_table('| a | b |\n|---|--:|\n| 1 | 2 |', 'Ours against `the paper`,\nin points.', 'tab-x')
    doc = publish_doctree(text, parser=Parser(), settings_overrides={'report_level': 2, 'halt_level': 2,
                                                                      'warning_stream': False})
    table = doc.children[0]
    assert table.tagname == 'table' and table['ids'] == ['tab-x']
    assert table.children[0].astext() == 'Ours against the paper, in points.'  # a code span and a line break
    assert common.numbered_table('*Not yet measured.*', 'C.', 'tab-y') == '*Not yet measured.*'


@pytest.mark.e2e
def test_a_book_built_with_the_repository_configuration_numbers_captions_and_cross_references(tmp_path):
    """Two pages with outputs as the notebooks write them (no kernel): a plotly figure through the book's renderer
    with a mystnb.figure caption, a table through numbered_table, a figure glued and captioned by {glue:figure};
    the second page refers to the first page's figure and table."""
    from IPython.display import HTML
    fig = go.Figure(go.Scatter(x=[1, 2], y=[2, 1]))
    shutil.copy(ROOT / '_config.yml', tmp_path / '_config.yml')
    shutil.copytree(ROOT / 'book', tmp_path / 'book', ignore=shutil.ignore_patterns('generated', 'lab', 'node_modules'))
    (tmp_path / '_toc.yml').write_text('format: jb-book\nroot: book/intro\nchapters:\n'
                                       '  - file: book/generated/one\n  - file: book/generated/two\n')
    (tmp_path / 'book' / 'intro.md').write_text('# Intro\n')
    (tmp_path / 'book' / 'generated').mkdir()
    for page in ('one', 'two'):
        nb = nbformat.v4.new_notebook(metadata={'kernelspec': {'name': 'python3', 'display_name': 'Python 3',
                                                               'language': 'python'}})
        html = nbformat.v4.new_output('display_data', data={'text/html': common.book_html(fig)})
        table = nbformat.v4.new_output('display_data', data={'text/markdown': common.numbered_table(
            '| a |\n|---|\n| 1 |', 'A table of `a`.', f'tab-{page}'), 'text/plain': '<Markdown>'})
        glued = nbformat.v4.new_output('display_data', data={  # what myst_nb.glue(name, HTML(...)) writes
            'application/papermill.record/text/html': HTML(common.book_html(fig)).data,
            'application/papermill.record/text/plain': '<IPython.core.display.HTML object>'},
            metadata={'scrapbook': {'name': f'g_{page}', 'mime_prefix': 'application/papermill.record/'}})
        nb.cells = [
            nbformat.v4.new_markdown_cell(f'# Page {page}\n\n' + ('See {numref}`fig-one` and {numref}`tab-one`.'
                                                                    if page == 'two' else 'Text.')),
            nbformat.v4.new_code_cell('fig', outputs=[html], metadata={'tags': ['remove-input'], 'mystnb': {
                'figure': {'caption': f'Figure of page {page}.', 'name': f'fig-{page}'}}}),
            nbformat.v4.new_code_cell('table', outputs=[table], metadata={'tags': ['remove-input']}),
            nbformat.v4.new_code_cell('glue', outputs=[glued], metadata={'tags': ['remove-cell']}),
            nbformat.v4.new_markdown_cell(f'```{{glue:figure}} g_{page}\n:name: fig-glued-{page}\n\nGlued.\n```'),
        ]
        nbformat.write(nb, tmp_path / 'book' / 'generated' / f'{page}.ipynb')
    jb = [str(Path(sys.executable).parent / 'jupyter-book'), 'build', str(tmp_path), '-W', '--keep-going']
    out = subprocess.run(jb, capture_output=True, text=True)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    one, two = ((tmp_path / '_build' / 'html' / 'book' / 'generated' / f'{p}.html').read_text() for p in ('one', 'two'))
    text = lambda html: re.sub(r'\s+', ' ', re.sub(r'<[^>]+>', '', html))  # noqa: E731
    # numbered through the book: page two continues page one's numbers
    assert 'Fig. 1 Figure of page one.' in text(one) and 'Fig. 2 Glued.' in text(one)
    assert 'Fig. 3 Figure of page two.' in text(two) and 'Table 2 A table of a.' in text(two)
    assert one.count('<figcaption>') == 2 and 'class="plotly-graph-div"' in one.split('<figcaption>')[0]
    assert '<caption><span class="caption-number">Table 1 </span>' in one
    assert re.search(r'href="one.html#fig-one"><span class="std std-numref">Fig. 1</span>', two)
    assert re.search(r'href="one.html#tab-one"><span class="std std-numref">Table 1</span>', two)
