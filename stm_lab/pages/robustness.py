"""The Robustness page (Secs. 6.2-6.3, Figs. 7 and 8): invariance and FGSM curves of ``results/<profile>/``, the
"rotate a photo" figure, consistency over training (Fig. 7c) from the seed set's runs, and the robustness claims
decided over the seed set's per-image outcomes."""
from __future__ import annotations

from typing import Dict, Iterable, List, Sequence

import numpy as np
import plotly.graph_objects as go

from .. import layout
from ..ablations import SEED_SET
from ..analysis.run import DEMO_ANGLES, demo_views, image_data_uri
from ..claims import BY_ID, Result
from ..models import display_name
from .common import color_of, models_in_order, two_panels
from .evidence import roster, seed_rank

ROBUSTNESS_IDS = ('shift_conv_best', 'shift_pvt_worst', 'rotation_dcn_best', 'scale_dcn_best', 'fgsm_halo_dcn_best',
                  'fgsm_pvt_worst')
# short: three panels share a phone's width (the pages' text says what each magnitude means)
INVARIANCE_AXES = {'shift': 'shift (px)', 'rotation': 'rotation (°)', 'scale': 'crop ratio'}


# ------------------------------------------------------------------------------------------------ facts

def robustness_results(profile: str) -> List[Result]:
    """Sec. 6.2-6.3 (Figs. 7 and 8), over the seed set's per-image outcomes. The paper shows these as curves
    without printed values, so there is no paper effect to mark."""
    return [seed_rank(profile, BY_ID[cid], BY_ID[cid].paper_ref) for cid in ROBUSTNESS_IDS]


def tracked_seed_docs(profile: str) -> Dict[str, List[dict]]:
    """model -> the ``train_<model>.json`` documents of its seed-set runs (seeds 1-4) that tracked consistency after
    every epoch (Fig. 7c), in seed order; models without one are left out."""
    out: Dict[str, List[dict]] = {}
    for seed in SEED_SET:
        for model in roster(profile):
            result = layout.train(layout.seed_folder(profile, seed), model)
            if result.exists():
                doc = result.load()
                if any('consistency_shift' in rec for rec in doc['records']):
                    out.setdefault(model, []).append(doc)
    return out


def mean_consistency_records(curves: Sequence[Sequence[dict]]) -> List[dict]:
    """Per epoch, the mean of ``consistency_shift`` and ``consistency_rotation`` over several seeds' records (the
    epochs that every seed measured)."""
    by_epoch = [{r['epoch']: r for r in recs} for recs in curves]
    epochs = sorted(set.intersection(*(set(b) for b in by_epoch))) if by_epoch else []
    return [dict(epoch=e, consistency_images=by_epoch[0][e].get('consistency_images'), seeds=len(by_epoch),
                 **{k: float(np.mean([b[e][k] for b in by_epoch])) for k in ('consistency_shift', 'consistency_rotation')})
            for e in epochs]


def consistency_order_text(recs: Dict[str, List[dict]], at: int, key: str = 'consistency_shift') -> str:
    """'U-X 91.0% > U-Y 88.5% > ...': the models by ``key`` at their ``at``-th measurement (0 first, -1 last), most
    consistent first."""
    vals = {m: r[at][key] for m, r in recs.items()}
    return ' > '.join(f'{display_name(m)} {100 * v:.1f}%' for m, v in sorted(vals.items(), key=lambda kv: -kv[1]))


def consistency_gains_text(recs: Dict[str, List[dict]], key: str = 'consistency_shift') -> str:
    """'U-X +3.0, U-Y -1.2': each model's change of ``key`` (points) from its first to its last measurement."""
    return ', '.join(f'{display_name(m)} {100 * (r[-1][key] - r[0][key]):+.1f}' for m, r in recs.items())


def demo_view_uris(img_size: int, crop_pct: float = 0.875, angles: Sequence[float] = DEMO_ANGLES) -> Dict[float, List[str]]:
    """angle -> data URIs of the demo views (:func:`stm_lab.analysis.run.demo_views`), for
    :func:`demo_rotation_figure`."""
    return {a: [image_data_uri(v) for v in arr] for a, arr in demo_views(img_size, crop_pct, angles).items()}


# ------------------------------------------------------------------------------------------------ figures

def invariance_curves(records: Iterable[dict]) -> go.Figure:
    """Consistency (top row) and top-1 (bottom row) against each transform's magnitude, one line per model."""
    from plotly.subplots import make_subplots
    records = list(records)
    transforms = [t for t in INVARIANCE_AXES if any(r['transform'] == t for r in records)]
    fig = make_subplots(rows=2, cols=len(transforms), shared_yaxes=False, horizontal_spacing=0.06,
                        vertical_spacing=0.12, column_titles=[t for t in transforms])
    for m in models_in_order(records):
        for j, tr in enumerate(transforms, 1):
            rs = sorted((r for r in records if r['model'] == m and r['transform'] == tr), key=lambda r: r['magnitude'])
            for i, key in enumerate(('consistency', 'top1'), 1):
                fig.add_scatter(x=[r['magnitude'] for r in rs], y=[r[key] for r in rs], mode='lines+markers',
                                name=display_name(m), legendgroup=m, showlegend=(i == 1 and j == 1),
                                line=dict(color=color_of(m)), marker=dict(size=5),
                                hovertemplate=f'{tr} %{{x}}: {key} %{{y:.3f}}<extra>{display_name(m)}</extra>',
                                row=i, col=j)
            fig.update_xaxes(title_text=INVARIANCE_AXES[tr], row=2, col=j)
    fig.update_yaxes(title_text='consistency', row=1, col=1)
    fig.update_yaxes(title_text='top-1', row=2, col=1)
    fig.update_layout(template='plotly_white', height=620, margin=dict(l=60, r=20, t=40, b=60),
                      legend=dict(orientation='h', y=-0.15))
    return fig


def fgsm_curves(records: Iterable[dict]) -> go.Figure:
    """FGSM top-1 against epsilon (in 1/255 units), one line per model."""
    records = list(records)
    fig = go.Figure()
    for m in models_in_order(records):
        rs = sorted((r for r in records if r['model'] == m), key=lambda r: r['epsilon'])
        fig.add_scatter(x=[r['epsilon_255'] for r in rs], y=[r['top1'] for r in rs], mode='lines+markers',
                        name=display_name(m), line=dict(color=color_of(m)),
                        hovertemplate='epsilon %{x}/255: top-1 %{y:.3f}<extra>' + display_name(m) + '</extra>')
    fig.update_layout(template='plotly_white', height=440, margin=dict(l=60, r=20, t=30, b=50),
                      xaxis=dict(title='epsilon (x 1/255)'), yaxis=dict(title='top-1 on FGSM images', rangemode='tozero'),
                      legend=dict(orientation='h', y=-0.2))
    return fig


def _short_class(name: str, width: int = 9) -> str:
    return name if len(name) <= width else name.split()[-1][:width]


def demo_rotation_figure(records: Iterable[dict], views: dict, photos: list) -> go.Figure:
    """"Rotate a photo": a slider over angles; each frame shows, one row per photo, the rotated view the models saw
    (left; data URIs ``views[angle][i]`` for ``photos[i]``, :func:`demo_view_uris`) and each model's top-1 class and
    probability (right; cell colour: the probability given to the true class, full names on hover). One column per
    model keeps it readable on a phone. ``records``: ``demo_rotation.json``."""
    from plotly.subplots import make_subplots
    records = list(records)
    angles = sorted({r['angle'] for r in records})
    models = models_in_order(records)
    files = [p['file'] for p in photos]
    n = len(files)
    specs = [[{'type': 'xy'}, {'type': 'xy', 'rowspan': n} if i == 0 else None] for i in range(n)]
    fig = make_subplots(rows=n, cols=2, specs=specs, column_widths=[0.2, 0.8], horizontal_spacing=0.02,
                        vertical_spacing=0.006)
    index = {(r['model'], r['photo'], r['angle']): r for r in records}
    names = [display_name(m).replace('U-', '').replace(' Transformer', '') for m in models]

    def traces(a):
        out = [go.Image(source=views[a][i], hoverinfo='skip') for i in range(n)]
        cells = [[index.get((m, f, a)) for m in models] for f in files]
        z = [[c['true_prob'] if c else None for c in row] for row in cells]
        text = [[f'{_short_class(c["pred_class"])}<br>{c["prob"]:.2f}{" ✓" if c["correct"] else ""}' if c else ''
                 for c in row] for row in cells]
        full = [[f'{c["pred_class"]} {c["prob"]:.2f}' if c else '' for c in row] for row in cells]
        out.append(go.Heatmap(z=z, x=names, y=[p['class'] for p in photos], text=text, customdata=full,
                              texttemplate='%{text}', textfont=dict(size=10), zmin=0, zmax=1, colorscale='RdYlGn',
                              showscale=False, xgap=2, ygap=2,
                              hovertemplate='%{x} on the %{y} photo: %{customdata}<br>p(true class) %{z:.2f}'
                                            '<extra></extra>'))
        return out

    for i, tr in enumerate(traces(angles[0])):
        fig.add_trace(tr, row=i + 1 if i < n else 1, col=1 if i < n else 2)
    fig.frames = [go.Frame(data=traces(a), name=str(a), traces=list(range(n + 1))) for a in angles]
    anim = dict(mode='immediate', frame=dict(duration=0, redraw=True), transition=dict(duration=0))
    fig.update_layout(
        template='plotly_white', height=120 + 62 * n, margin=dict(l=10, r=10, t=50, b=10),
        sliders=[dict(active=0, currentvalue=dict(prefix='rotation: ', suffix=' degrees', font=dict(size=12)),
                      pad=dict(t=10, b=0), x=0, len=1, y=0, yanchor='top',
                      steps=[dict(method='animate', label=str(a), args=[[str(a)], anim]) for a in angles])])
    fig.update_layout(margin=dict(b=90))
    for i in range(1, n + 1):
        fig.update_xaxes(visible=False, row=i, col=1)
        fig.update_yaxes(visible=False, row=i, col=1)
    fig.update_yaxes(autorange='reversed', showticklabels=False, row=1, col=2)  # the photo names its row
    fig.update_xaxes(side='top', tickfont=dict(size=11), row=1, col=2)
    return fig


def consistency_over_training(docs: dict) -> go.Figure:
    """Fig. 7(c): mean translation and rotation consistency after every epoch, one line per model: the mean over the
    seeds that tracked it, each seed a thin line of the same colour (``docs``: model -> a ``train_<model>.json``
    document whose records carry ``consistency_*``, or a list of them, one per seed: :func:`tracked_seed_docs`)."""
    fig = two_panels(['translation', 'rotation'])
    for m, seeds in docs.items():
        seeds = seeds if isinstance(seeds, list) else [seeds]
        curves = [[r for r in d['records'] if 'consistency_shift' in r] for d in seeds]
        mean = mean_consistency_records(curves)
        for row, key in ((1, 'consistency_shift'), (2, 'consistency_rotation')):
            if len(curves) > 1:
                for recs in curves:
                    fig.add_scatter(x=[r['epoch'] for r in recs], y=[100 * r[key] for r in recs], mode='lines',
                                    legendgroup=m, showlegend=False, opacity=0.35, hoverinfo='skip',
                                    line=dict(color=color_of(m), width=1), row=row, col=1)
            fig.add_scatter(x=[r['epoch'] for r in mean], y=[100 * r[key] for r in mean], mode='lines+markers',
                            name=display_name(m), legendgroup=m, showlegend=row == 1,
                            line=dict(color=color_of(m)),
                            hovertemplate='epoch %{x}: %{y:.1f}%<extra>' + display_name(m) + '</extra>', row=row, col=1)
    fig.update_xaxes(title_text='epoch', row=2, col=1)
    fig.update_yaxes(title_text='mean consistency (%)')
    fig.update_layout(template='plotly_white', height=600, margin=dict(l=60, r=20, t=40, b=50),
                      legend=dict(orientation='h', y=-0.12))
    return fig
