"""The lab page: the facts its text states about the exported models (``lab_export.json``) and their speed in a
browser (``lab_browser.json``), and the two figures whose markers the in-browser lab moves. The page's HTML and the
exported models are :mod:`stm_lab.lab`'s."""
from __future__ import annotations

from typing import Dict, Iterable, Optional

import plotly.graph_objects as go

from ..models import display_name
from .common import color_of, models_in_order
from .robustness import INVARIANCE_AXES, fgsm_curves

LAB_EXPORT_KEYS = ('fp32_diff', 'int8_diff', 'int8_agree', 'n_val')
LAB_BROWSER_KEYS = ('ms', 'update_ms', 'first_s', 'browser', 'mb', 'load')


def lab_weights_text(n_bytes: int, n_models: int) -> str:
    """How the lab's models are stored and how large they are."""
    return ('weights stored as int8, one scale per output channel, computed in float32; '
            f'{n_bytes / 1e6:.1f} MB for the {n_models} models')


def lab_export_facts(doc: Optional[dict]) -> Dict[str, object]:
    """From ``lab_export.json`` (None: not checked yet): the largest logit difference of the float32 and of the int8
    models against PyTorch, each int8 model's top-1 agreement with PyTorch, and the number of validation images."""
    if not doc:
        return {k: 'not checked yet (`stm-lab lab check`)' for k in LAB_EXPORT_KEYS}
    recs = doc['records']
    return dict(fp32_diff=f"{max(r['fp32']['val_max_abs_diff'] for r in recs):.1g}",
                int8_diff=f"{max(r['int8']['val_max_abs_diff'] for r in recs):.2f}",
                int8_agree=', '.join(f"{100 * r['int8']['val_top1_agreement']:.1f}% ({display_name(r['model'])})"
                                     for r in recs),
                n_val=doc['config']['n_images'])


def lab_browser_facts(doc: Optional[dict]) -> Dict[str, str]:
    """From ``lab_browser.json`` (None: not measured yet): each model's inference time in the browser, the slider's
    update time, the time to the first prediction, the browser and machine, the models' size and the load."""
    if not doc:
        return {k: 'not measured yet (`stm-lab lab measure`)' for k in LAB_BROWSER_KEYS}
    p = doc['records'][0]
    return dict(ms=', '.join(f"{v:.1f} ms ({display_name(m)})" for m, v in p['inference_ms'].items()),
                update_ms=f"{p['slider_update_ms_median']:.0f} ms (median; slowest {p['slider_update_ms_max']:.0f} ms)",
                first_s=f"{p['first_prediction_ms'] / 1000:.1f} s",
                browser=f"{p['browser']} on {doc['provenance']['cpu']}",
                mb=f"{p['model_mb']:.1f} MB",
                load=f"load average {p['loadavg'][0]:.1f} on {p['cpu_count']} cores")


def _marker(axis: int, x: float) -> dict:
    suffix = '' if axis == 1 else str(axis)
    return dict(type='line', xref=f'x{suffix}', yref=f'y{suffix} domain', x0=x, x1=x, y0=0, y1=1,
                line=dict(color='black', width=2, dash='dot'))


def lab_consistency_figure(records: Iterable[dict], crop_pct: float = 0.875) -> go.Figure:
    """The invariance sweeps' consistency (``invariance.json`` records), one panel per transform, with a dotted
    marker per panel (shapes 0, 1, 2: shift, rotation, crop ratio) that the in-browser lab moves to its current
    setting (``book/_static/lab/lab.js``)."""
    from plotly.subplots import make_subplots
    records = list(records)
    transforms = ('shift', 'rotation', 'scale')
    # no panel titles: the x-axis titles name each panel, and three titles overlap at a phone's width
    fig = make_subplots(rows=1, cols=3, shared_yaxes=True, horizontal_spacing=0.04)
    for m in models_in_order(records):
        for j, tr in enumerate(transforms, 1):
            rs = sorted((r for r in records if r['model'] == m and r['transform'] == tr), key=lambda r: r['magnitude'])
            fig.add_scatter(x=[r['magnitude'] for r in rs], y=[r['consistency'] for r in rs], mode='lines+markers',
                            name=display_name(m), legendgroup=m, showlegend=j == 1, marker=dict(size=4),
                            line=dict(color=color_of(m), width=1.5),
                            hovertemplate=f'{tr} %{{x}}: consistency %{{y:.3f}}<extra>{display_name(m)}</extra>',
                            row=1, col=j)
    for j, tr in enumerate(transforms, 1):
        fig.update_xaxes(title_text=INVARIANCE_AXES[tr], row=1, col=j)
    fig.update_yaxes(title_text='consistency', row=1, col=1)
    fig.update_layout(template='plotly_white', height=330, margin=dict(l=60, r=20, t=15, b=50),
                      shapes=[_marker(1, 0), _marker(2, 0), _marker(3, crop_pct)],
                      legend=dict(orientation='h', y=-0.3))
    return fig


def lab_fgsm_figure(records: Iterable[dict]) -> go.Figure:
    """:func:`stm_lab.pages.robustness.fgsm_curves` with a dotted marker (shape 0) that the lab's epsilon slider
    moves."""
    fig = fgsm_curves(records)
    fig.update_layout(height=330, shapes=[_marker(1, 0)], xaxis=dict(range=[-0.2, 8.2]))
    return fig


def figure_html(fig: go.Figure, div_id: str) -> str:
    """A figure as an HTML fragment with a known element id, using the page's plotly.js."""
    return fig.to_html(full_html=False, include_plotlyjs=False, include_mathjax=False, auto_play=False, div_id=div_id)
