"""The Table III complexity page: parameters and MACs of the 20 unified models at 224 beside the paper's
(``results/paper/table3_complexity.json``), the table, the scatter and the numbers its text states."""
from __future__ import annotations

from typing import Iterable, List

import plotly.graph_objects as go

from ..models import display_name, family_of, scale_of
from .common import family_color

PARAMS_TOLERANCE, MACS_TOLERANCE = 0.03, 0.10  # parameters within 3% of Table III, MACs within 10% of its FLOPs


def pct(ours: float, paper: float) -> str:
    """Relative difference as a signed percentage ('-' without a paper value; never '-0.0%')."""
    if not paper:
        return '-'
    value = round(100 * (ours / paper - 1), 1) or 0.0
    return f'{value:+.1f}%'


def table3_markdown(records: Iterable[dict]) -> str:
    """Table III, paper beside reproduction, as a markdown table. Parameters are compared without position
    tables (all parameters in brackets) and MACs in total (without attention matmuls in brackets, which is what
    the paper's U-HaloNet numbers count), as the Table III page explains."""
    rows = ['| model | params paper (M) | ours excl. pos. (all) | diff | GFLOPs paper | GMACs ours (excl. attn.) '
            '| diff (excl. attn.) |', '|---|---:|---:|---:|---:|---:|---:|']
    for r in records:
        pp, pf = r['paper_params_m'], r['paper_gflops']
        rows.append(
            f'| {display_name(r["model"]).replace(" Transformer", "")} {scale_of(r["model"])} '
            f'| {pp} | {r["params_no_pos_m"]:.2f} ({r["params_m"]:.2f}) | {pct(r["params_no_pos_m"], pp)} '
            f'| {pf} | {r["gmacs"]:.2f} ({r["gmacs_no_attention"]:.2f}) '
            f'| {pct(r["gmacs"], pf)} ({pct(r["gmacs_no_attention"], pf)}) |')
    return '\n'.join(rows)


def complexity_scatter(records: Iterable[dict]) -> go.Figure:
    """MACs vs parameters, ours (filled) and the paper's (open), one colour per family; log axes."""
    fig = go.Figure()
    records = list(records)
    for fam in dict.fromkeys(family_of(r['model']) for r in records):
        rs = of_family(records, fam)
        name = display_name(rs[0]['model'])
        fig.add_scatter(x=[r['params_m'] for r in rs], y=[r['gmacs'] for r in rs], mode='markers+lines',
                        name=f'{name} (ours)', marker=dict(color=family_color(fam), size=9),
                        line=dict(color=family_color(fam), width=1),
                        text=[scale_of(r['model']) for r in rs],
                        hovertemplate='%{text}: %{x:.2f}M params, %{y:.2f} GMACs<extra>' + name + '</extra>')
        fig.add_scatter(x=[r['paper_params_m'] for r in rs], y=[r['paper_gflops'] for r in rs], mode='markers',
                        name=f'{name} (paper)', marker=dict(color=family_color(fam), size=11, symbol='circle-open'),
                        text=[scale_of(r['model']) for r in rs],
                        hovertemplate='paper, %{text}: %{x}M params, %{y} GFLOPs<extra>' + name + '</extra>')
    fig.update_layout(xaxis=dict(title='parameters (M)', type='log'), yaxis=dict(title='GMACs at 224x224', type='log'),
                      height=520, margin=dict(l=60, r=20, t=30, b=50),
                      legend=dict(font=dict(size=11), orientation='h', y=-0.15), template='plotly_white')
    return fig


def relative_gap(ours: float, paper: float) -> float:
    """|ours / paper - 1|."""
    return abs(ours / paper - 1)


def worst_gap_pct(records: Iterable[dict], ours: str, paper: str) -> float:
    """The largest relative gap (%) between two fields over the records (``table3_complexity.json``)."""
    return max(relative_gap(r[ours], r[paper]) for r in records) * 100


def count_within(records: Iterable[dict], ours: str, paper: str, tolerance: float) -> int:
    """How many records have ``ours`` within ``tolerance`` (a fraction) of ``paper``."""
    return sum(relative_gap(r[ours], r[paper]) <= tolerance for r in records)


def of_family(records: Iterable[dict], family: str) -> List[dict]:
    """The records of one family's models."""
    return [r for r in records if family_of(r['model']) == family]


def record_of(records: Iterable[dict], model: str) -> dict:
    """The record of one model."""
    return next(r for r in records if r['model'] == model)


def position_params_m(records: Iterable[dict], model: str) -> float:
    """A model's parameters in position tables (millions): all parameters less those without position tables."""
    r = record_of(records, model)
    return r['params_m'] - r['params_no_pos_m']
