"""Pure plotly figure and table builders for the book: data in, ``go.Figure`` or markdown out, no kernel needed.

The book loads one local copy of plotly.js (``book/_static/plotly.min.js``, copied here from the installed
plotly package by :func:`install_book_assets`), and notebooks render figures as HTML fragments that rely on it
(:func:`use_book_renderer`): pages stay small and work offline.
"""
from __future__ import annotations

import shutil
from pathlib import Path
from typing import Iterable

import plotly.graph_objects as go
import plotly.io as pio

from .paper import DISPLAY
from .results import ROOT

STATIC_DIR = ROOT / 'book' / '_static'
# one colour per mixer family, used by every figure of the book
COLORS = {'halonet': '#1f77b4', 'pvt': '#ff7f0e', 'swin': '#2ca02c', 'dwconv': '#d62728', 'internimage': '#9467bd',
          'identity': '#7f7f7f', 'pooling': '#8c564b'}


def install_book_assets() -> Path:
    """Copy plotly.min.js from the installed plotly into book/_static (ignored by git)."""
    src = Path(pio.__file__).resolve().parent.parent / 'package_data' / 'plotly.min.js'
    dst = STATIC_DIR / 'plotly.min.js'
    STATIC_DIR.mkdir(parents=True, exist_ok=True)
    if not dst.exists() or dst.stat().st_size != src.stat().st_size:
        shutil.copyfile(src, dst)
    return dst


def use_book_renderer() -> None:
    """Render figures as HTML fragments that use the page's plotly.js (see the book's _config.yml)."""
    pio.renderers['stm_book'] = pio.base_renderers.HtmlRenderer(
        connected=False, full_html=False, global_init=False, include_plotlyjs=False)
    pio.renderers.default = 'stm_book'


def family_of(model_name: str) -> str:
    return model_name.split('_')[1]


def scale_of(model_name: str) -> str:
    return model_name.split('_')[2]


def pct(ours: float, paper: float) -> str:
    return f'{100 * (ours / paper - 1):+.1f}%' if paper else '-'


def table3_markdown(records: Iterable[dict]) -> str:
    """Table III, paper beside reproduction, as a markdown table. Parameters are compared without position
    tables and U-HaloNet's MACs also without attention matmuls, as the Table III page explains."""
    rows = ['| Scale | Model | Params paper | ours | excl. pos. | diff '
            '| GFLOPs paper | GMACs ours | diff | excl. attn. | diff |',
            '|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|']
    for r in records:
        pp, pf = r['paper_params_m'], r['paper_gflops']
        rows.append(
            f'| {scale_of(r["model"])} | {DISPLAY.get(family_of(r["model"]), r["model"])} | {pp} '
            f'| {r["params_m"]:.2f} | {r["params_no_pos_m"]:.2f} | {pct(r["params_no_pos_m"], pp)} '
            f'| {pf} | {r["gmacs"]:.2f} | {pct(r["gmacs"], pf)} '
            f'| {r["gmacs_no_attention"]:.2f} | {pct(r["gmacs_no_attention"], pf)} |')
    return '\n'.join(rows)


def complexity_scatter(records: Iterable[dict]) -> go.Figure:
    """MACs vs parameters, ours (filled) and the paper's (open), one colour per family; log axes."""
    fig = go.Figure()
    records = list(records)
    for fam in dict.fromkeys(family_of(r['model']) for r in records):
        rs = [r for r in records if family_of(r['model']) == fam]
        name = DISPLAY.get(fam, fam)
        fig.add_scatter(x=[r['params_m'] for r in rs], y=[r['gmacs'] for r in rs], mode='markers+lines',
                        name=f'{name} (ours)', marker=dict(color=COLORS.get(fam), size=9),
                        line=dict(color=COLORS.get(fam), width=1),
                        text=[scale_of(r['model']) for r in rs],
                        hovertemplate='%{text}: %{x:.2f}M params, %{y:.2f} GMACs<extra>' + name + '</extra>')
        fig.add_scatter(x=[r['paper_params_m'] for r in rs], y=[r['paper_gflops'] for r in rs], mode='markers',
                        name=f'{name} (paper)', marker=dict(color=COLORS.get(fam), size=11, symbol='circle-open'),
                        text=[scale_of(r['model']) for r in rs],
                        hovertemplate='paper, %{text}: %{x}M params, %{y} GFLOPs<extra>' + name + '</extra>')
    fig.update_layout(xaxis=dict(title='parameters (M)', type='log'), yaxis=dict(title='GMACs at 224x224', type='log'),
                      height=480, margin=dict(l=60, r=20, t=30, b=50), legend=dict(font=dict(size=11)),
                      template='plotly_white')
    return fig
