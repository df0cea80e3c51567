"""What every page shares: the book's figure renderer, model colours and names, numbered tables, and the figures and
tables drawn on several pages (the seed spread, a claims table).

The book loads one local copy of plotly.js (``book/_static/plotly.min.js``, copied here from the installed plotly
package by :func:`install_book_assets`), and notebooks render figures as HTML fragments that rely on it
(:func:`use_book_renderer`): pages stay small and work offline.
"""
from __future__ import annotations

import re
import shutil
from pathlib import Path
from typing import Dict, Iterable, List

import plotly.graph_objects as go
import plotly.io as pio

from ..mixers import mixer_trait
from ..models import FAMILIES, display_name, family_of
from ..results import ROOT

STATIC_DIR = ROOT / 'book' / '_static'
FALLBACK_COLOR = '#7f7f7f'


def family_color(family: str) -> str:
    """The colour of a model family in every figure: its mixer's ``color`` trait."""
    fam = FAMILIES.get(family)
    return (mixer_trait(fam.mixer, 'color') if fam else None) or FALLBACK_COLOR


def color_of(model: str) -> str:
    return family_color(family_of(model))


def stm_name(family: str) -> str:
    """The paper's name of a family's mixer (Tables II, VI): its ``display_name`` trait."""
    return mixer_trait(FAMILIES[family].mixer, 'display_name') if family in FAMILIES else family


def names(models: Iterable[str], sep: str = ' > ') -> str:
    """Display names joined (by default as an ordering, fastest or best first)."""
    return sep.join(display_name(m) for m in models)


def values_text(values: Iterable, sep: str = ' and ') -> str:
    """The distinct values, ascending, joined: [22, 12, 22] -> '12 and 22'."""
    return sep.join(map(str, sorted(set(values))))


def signed(x, digits: int = 2) -> str:
    """A difference with its sign ('-' for None; 0.00 unsigned at two digits)."""
    if x is None:
        return '-'
    text = f'{x:+.{digits}f}'
    return text.replace('+0.00', '0.00').replace('-0.00', '0.00') if digits == 2 else text


def models_in_order(records: Iterable[dict]) -> List[str]:
    """The records' models, each once, in the order of their first record."""
    return list(dict.fromkeys(r['model'] for r in records))


# ------------------------------------------------------------------------------------------------ rendering

def install_book_assets() -> Path:
    """Copy plotly.min.js from the installed plotly into book/_static (ignored by git)."""
    src = Path(pio.__file__).resolve().parent.parent / 'package_data' / 'plotly.min.js'
    dst = STATIC_DIR / 'plotly.min.js'
    STATIC_DIR.mkdir(parents=True, exist_ok=True)
    if not dst.exists() or dst.stat().st_size != src.stat().st_size:
        shutil.copyfile(src, dst)
    return dst


class _BookRenderer(pio.base_renderers.MimetypeRenderer):
    """Figures as HTML fragments for the book: no plotly.js of their own (the page loads one local copy, see
    ``stm_lab.book_sphinx``) and no MathJax (plotly's default fetches it from a CDN for every figure)."""

    def to_mimebundle(self, fig_dict):
        html = pio.to_html(fig_dict, include_plotlyjs=False, include_mathjax=False, full_html=False,
                           default_width='100%', default_height=480, config=dict(responsive=True),
                           auto_play=False)  # figures with frames wait for their slider
        return {'text/html': html}


def use_book_renderer() -> None:
    """Render figures as HTML fragments that use the page's plotly.js (see the book's _config.yml)."""
    pio.renderers['stm_book'] = _BookRenderer()
    pio.renderers.default = 'stm_book'


def book_html(fig: go.Figure) -> str:
    """The figure as the book renders it (:func:`use_book_renderer`), as a string: for ``myst_nb.glue``, which cannot
    store a plotly figure itself (IPython shows an object with ``_ipython_display_`` instead of returning its data).
    A page that draws figures in a loop glues each one and captions it with ``{glue:figure}``."""
    return _BookRenderer().to_mimebundle(fig)['text/html']


def numbered_table(markdown: str, caption: str, name: str) -> str:
    """A pipe table as a MyST ``{table}`` directive: the book numbers it, shows ``caption`` above it, and prose
    refers to it with ``{numref}`name```. Notebooks print it with ``Markdown(...)``, whose output the book parses
    as MyST (``nb_render_markdown_format``). A tilde fence, because a caption may hold roles or code: the info string
    of a backtick fence cannot contain backticks. Text without a table (a 'not yet measured' note) is returned as
    it is: the directive accepts exactly one table."""
    if not re.search(r'^\|[-:| ]+\|$', markdown, re.M):  # no delimiter row: no table
        return markdown
    caption = ' '.join(caption.split())  # a directive's argument is one line
    return f'~~~{{table}} {caption}\n:name: {name}\n\n{markdown.strip()}\n~~~'


def two_panels(titles) -> go.Figure:
    """Two panels stacked (side by side they overlap on a phone), sharing the x axis (epochs)."""
    from plotly.subplots import make_subplots
    return make_subplots(rows=2, cols=1, vertical_spacing=0.12, shared_xaxes=True, subplot_titles=titles)


# ------------------------------------------------------------------------------------ drawn on several pages

def seed_spread_figure(panels: Dict[str, dict], unit: str = 'points') -> go.Figure:
    """Each model's score for every training seed as a dot and their mean as a bar, one panel per metric
    (``panels``: title -> model -> :class:`stm_lab.claims.Runs`), stacked (a phone's width)."""
    from plotly.subplots import make_subplots
    panels = {t: p for t, p in panels.items() if p}
    height = 90 + 210 * max(len(panels), 1)
    # about 120 px between panels at any count: room for one panel's axis title and the next one's title
    fig = make_subplots(rows=max(len(panels), 1), cols=1, subplot_titles=list(panels),
                        vertical_spacing=min(0.3, 120 / height) if len(panels) > 1 else 0.1)
    for row, (title, runs) in enumerate(panels.items(), start=1):
        models = list(runs)
        for m in models:
            r = runs[m]
            name = display_name(m)
            fig.add_scatter(x=list(r.scores.values()), y=[name] * len(r.scores), mode='markers', showlegend=False,
                            marker=dict(color=color_of(m), size=8, opacity=0.75),
                            customdata=list(r.scores), row=row, col=1,
                            hovertemplate='seed %{customdata}: %{x:.2f}<extra>' + name + '</extra>')
            fig.add_scatter(x=[r.mean], y=[name], mode='markers', showlegend=False, row=row, col=1,
                            marker=dict(symbol='line-ns-open', color='#222', size=18, line=dict(width=2)),
                            hovertemplate=f'mean of {len(r.scores)} seeds: %{{x:.2f}}<extra>{name}</extra>')
        fig.update_yaxes(categoryorder='array', categoryarray=[display_name(m) for m in models][::-1], row=row,
                         col=1, automargin=True)
        fig.update_xaxes(title_text=unit, row=row, col=1)
    fig.update_layout(template='plotly_white', height=height, margin=dict(l=10, r=10, t=40, b=40))
    return fig


def findings_table_markdown(rows: Iterable[dict]) -> str:
    """Claims (:meth:`stm_lab.claims.Result.row`) as the Findings page shows them: claim, paper, ours (the deciding
    difference with two standard errors first, two standard errors being the smallest difference the comparison
    could decide; then what was measured and the noise), verdict. Four columns, as a phone's width allows."""
    lines = ['| claim | paper | ours: difference ± 2 SE; measured (noise) | verdict |', '|---|---|---|---|']
    for r in rows:
        ours = r['ours'] if r['noise'] in ('-', '') else f"{r['ours']} ({r['noise']})"
        if r['effect'] is not None:
            ours = (f"**{signed(r['effect'])}" + ('' if r['se'] is None else f" ± {2 * r['se']:.2f}")
                    + f" {r['unit']}**; {ours}")
        lines.append(f"| {r['claim']} | {r['paper']} | {ours} | **{r['verdict']}** |")
    return '\n'.join(lines)
