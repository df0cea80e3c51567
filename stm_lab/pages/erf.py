"""The ERF page (Sec. 6.1, Fig. 6): the effective receptive fields of ``results/<profile>/erf.json`` and
``erf_photos.json`` as maps, a table and bars, the facts its text states, and ERF@50 over the seed set."""
from __future__ import annotations

import json
from typing import Dict, Iterable, List, Optional, Sequence, Tuple

import plotly.graph_objects as go

from .. import layout
from ..analysis.run import demo_images, erf_photo_score, image_data_uri
from ..analysis import outcomes
from ..claims import SEEDS, Runs
from ..models import display_name, family_of
from .common import color_of, models_in_order
from .evidence import roster


# ------------------------------------------------------------------------------------------------ facts

def erf_table(records: Sequence[dict]) -> List[dict]:
    """Flat rows, one per (model, stage, t), without the maps."""
    return [dict(model=r['model'], family=r['family'], trained=r['trained'], stage=r['stage'], **a,
                 theoretical_side_ratio=r['theoretical_side_ratio'], asymmetry=r['asymmetry'])
            for r in records for a in r['erf_at']]


def erf_extremes(rows: Sequence[dict], stage: int = 3, t: float = 0.5) -> Tuple[Tuple[str, float], Tuple[str, float]]:
    """((model, ERF@t side ratio) of the largest ERF at a stage, the same for the smallest), from
    :func:`erf_table` rows; equal ratios go to the later model name for the largest, the earlier for the smallest."""
    s = sorted(((r['side_ratio'], r['model']) for r in rows if r['t'] == t and r['stage'] == stage), reverse=True)
    return (s[0][1], s[0][0]), (s[-1][1], s[-1][0])


def asymmetry_by_family(records: Sequence[dict], stage: int = 3) -> Dict[str, float]:
    """family -> the ERF map's asymmetry at a stage (``erf.json`` records), of the family's first model."""
    out: Dict[str, float] = {}
    for r in records:
        if r['stage'] == stage:
            out.setdefault(family_of(r['model']), r['asymmetry'])
    return out


def erf_shape_verdict(asymmetry: Dict[str, float]) -> str:
    """The paper's reading of Fig. 6 (shifted windows give U-Swin a less symmetric ERF than U-HaloNet's halo
    blocks) against :func:`asymmetry_by_family`: 'agrees with' or 'does not agree with' (a missing family
    counts 0)."""
    return 'agrees with' if asymmetry.get('swin', 0) > asymmetry.get('halonet', 0) else 'does not agree with'


def erf_seed_set(profile: str, stage: int, t: float = 0.5, models: Optional[Sequence[str]] = None) -> Dict[str, Runs]:
    """model -> ERF@t of one stage (side of the square, % of the input side) for every seed of the 12-epoch seed
    set with per-image outcomes (each measured on the same 100 images; no per-image rows: the ERF is one map)."""
    out = {}
    for model in models or roster(profile):
        scores = {}
        for s in outcomes.seeds_with_outcomes(profile, model, SEEDS):
            doc = json.loads(layout.outcomes(profile, s, model)[0].read_text())
            at = next(r['erf_at'] for r in doc['summary']['erf'] if r['stage'] == stage)
            scores[s] = 100 * next(a['side_ratio'] for a in at if a['t'] == t)
        if scores:
            out[model] = Runs(model, scores)
    return out


def erf_photo_uris(img_size: int) -> Dict[str, str]:
    """file -> data URI of each demo photo resized whole to ``img_size`` (what the ERF maps are computed on)."""
    import torch.nn.functional as F
    x, photos = demo_images()
    x = F.interpolate(x, size=(img_size, img_size), mode='bicubic', antialias=True, align_corners=False).clamp(0, 1)
    arr = (x * 255).round().byte().permute(0, 2, 3, 1).numpy()
    return {p['file']: image_data_uri(a) for p, a in zip(photos, arr)}


# ------------------------------------------------------------------------------------------------ tables, figures

def erf_browser(records: Iterable[dict], t: float = 0.5) -> go.Figure:
    """ERF score maps, one precomputed frame per (model, stage) on one slider. The dashed square is ERF@t (the
    smallest centred square holding a fraction t of the score's mass). Maps are stored to 3 decimals (the colour scale
    cannot show more), which keeps the page small. ``records``: ``results/<profile>/erf.json`` records."""
    records = list(records)
    if not records:
        raise ValueError('erf_browser got no records')

    def name(r):
        return f'{display_name(r["model"])} | stage {r["stage"]}'

    def square(r):
        a = next(a for a in r['erf_at'] if a['t'] == t)
        half = (a['side_px'] - 1) / 2
        cy, cx = r['centre']
        return [dict(type='rect', x0=cx - half - 0.5, x1=cx + half + 0.5, y0=cy - half - 0.5, y1=cy + half + 0.5,
                     line=dict(color='white', width=2, dash='dash'))]

    def title(r):
        a = next(a for a in r['erf_at'] if a['t'] == t)
        return (f'{name(r)}{"" if r["trained"] else " (untrained)"}<br><sup>ERF@{round(100 * t)}: side '
                f'{a["side_ratio"]:.2f}, area {a["area_ratio"]:.3f} of the input</sup>')

    def heat(r):
        z = [[round(v, 3) for v in row] for row in r['score_map']]
        return go.Heatmap(z=z, zmin=0, zmax=1, colorscale='Viridis', colorbar=dict(title='score', thickness=12),
                          hovertemplate='x %{x}, y %{y}: %{z:.3f}<extra></extra>')

    frames = [go.Frame(data=[heat(r)], name=name(r), layout=dict(shapes=square(r), title=dict(text=title(r))))
              for r in records]
    first = records[0]
    fig = go.Figure(data=[heat(first)], frames=frames)
    anim = dict(mode='immediate', frame=dict(duration=0, redraw=True), transition=dict(duration=0))
    short = {m: display_name(m).split()[0].replace('U-', '') for m in models_in_order(records)}
    steps = [dict(method='animate', label=f'{short[r["model"]]} {r["stage"]}', args=[[name(r)], anim])
             for r in records]
    size = len(first['score_map'])
    fig.update_layout(
        title=dict(text=title(first), x=0, xanchor='left', font=dict(size=14)), shapes=square(first),
        template='plotly_white', height=560, margin=dict(l=40, r=10, t=70, b=100),
        xaxis=dict(range=[-0.5, size - 0.5], constrain='domain', showgrid=False, title='x (input pixel)'),
        yaxis=dict(range=[size - 0.5, -0.5], scaleanchor='x', constrain='domain', showgrid=False, title='y'),
        sliders=[dict(active=0, steps=steps, currentvalue=dict(prefix='model and stage: ', font=dict(size=12)),
                      pad=dict(t=50), font=dict(size=9))])
    return fig


def erf_bars(rows: Iterable[dict], t: float = 0.5) -> go.Figure:
    """ERF@t side ratio per stage, one bar per model (rows: :func:`erf_table`); the theoretical receptive field's
    side ratio as a hover note."""
    rows = [r for r in rows if r['t'] == t]
    fig = go.Figure()
    for m in models_in_order(rows):
        rs = sorted((r for r in rows if r['model'] == m), key=lambda r: r['stage'])
        theo = ['-' if r['theoretical_side_ratio'] is None else f'{r["theoretical_side_ratio"]:.2f}' for r in rs]
        fig.add_bar(x=[f'stage {r["stage"]}' for r in rs], y=[r['side_ratio'] for r in rs], name=display_name(m),
                    marker_color=color_of(m), customdata=theo,
                    hovertemplate='%{x}: ERF@' + str(round(100 * t)) + ' %{y:.3f} (theoretical RF %{customdata})'
                                  '<extra>' + display_name(m) + '</extra>')
    fig.update_layout(barmode='group', template='plotly_white', height=420, margin=dict(l=60, r=20, t=30, b=40),
                      yaxis=dict(title=f'ERF@{round(100 * t)} (side / input side)', range=[0, 1.05]),
                      legend=dict(orientation='h', y=-0.12))
    return fig


def erf_markdown(rows: Iterable[dict], t: float = 0.5) -> str:
    """Model x stage table of ERF@t side ratios (area ratio in brackets)."""
    rows = [r for r in rows if r['t'] == t]
    stages = sorted({r['stage'] for r in rows})
    out = ['| model | ' + ' | '.join(f'stage {s}' for s in stages) + ' |', '|---|' + '---:|' * len(stages)]
    for m in models_in_order(rows):
        cells = {r['stage']: f'{r["side_ratio"]:.2f} ({r["area_ratio"]:.3f})' for r in rows if r['model'] == m}
        out.append(f'| {display_name(m)} | ' + ' | '.join(cells.get(s, '-') for s in stages) + ' |')
    return '\n'.join(out)


def map_uri(score, cmap: str = 'viridis') -> str:
    """A [0, 1] map as a colour-mapped PNG data URI (for ``go.Image``: a few kB, where a heatmap's numbers cost
    tens of kB per 64x64 map)."""
    import base64
    import io
    import numpy as np
    from matplotlib import colormaps
    from PIL import Image
    rgb = (colormaps[cmap](np.clip(np.asarray(score, float), 0, 1))[..., :3] * 255).round().astype(np.uint8)
    buf = io.BytesIO()
    Image.fromarray(rgb).save(buf, format='PNG', optimize=True)
    return 'data:image/png;base64,' + base64.b64encode(buf.getvalue()).decode()


def erf_fig6(records: Iterable[dict], stages: Tuple[int, ...] = (3, 4), t: float = 0.5) -> go.Figure:
    """The paper's Fig. 6 view: the (average) ERF score maps of the last two stages, one column per model, side by
    side (``erf.json`` records); the title of each map gives its ERF@t side ratio."""
    from plotly.subplots import make_subplots
    records = [r for r in records if r['stage'] in stages]
    models = models_in_order(records)
    if not models:
        raise ValueError(f'erf_fig6: no records of stages {stages}')
    index = {(r['model'], r['stage']): r for r in records}
    # models above the columns (a name's words on lines of their own), stages beside the rows, each map's ERF@t
    # under it: titles that fit five columns on a phone
    fig = make_subplots(rows=len(stages), cols=len(models), horizontal_spacing=0.01, vertical_spacing=0.1,
                        column_titles=[display_name(m).replace(' ', '<br>') for m in models],
                        row_titles=[f'stage {s}' for s in stages])
    for i, s in enumerate(stages, 1):
        for j, m in enumerate(models, 1):
            r = index.get((m, s))
            if r:
                fig.add_trace(go.Image(source=map_uri(r['score_map']), hoverinfo='skip'), row=i, col=j)
                side = next((a['side_ratio'] for a in r['erf_at'] if a['t'] == t), None)
                fig.update_xaxes(title_text=f'ERF@{round(100 * t)}<br>{side:.2f}' if side else '', row=i, col=j)
    fig.update_xaxes(showticklabels=False, showgrid=False, zeroline=False, title_standoff=2, title_font_size=10)
    fig.update_yaxes(visible=False)
    fig.update_annotations(font_size=10)
    fig.update_layout(template='plotly_white', height=190 * len(stages) + 80, margin=dict(l=10, r=30, t=50, b=10))
    return fig


def erf_photo_figure(photo_records: Iterable[dict], avg_records: Iterable[dict], photo_uris: Dict[str, str],
                     photos: list) -> go.Figure:
    """One demo photo at a time (slider): per model (rows), the photo as the models saw it, then for each stage
    the ERF map of that photo beside the average map (``erf_photos.json`` and ``erf.json`` records);
    ``photo_uris``: file -> data URI of the photo resized to the model input (:func:`erf_photo_uris`)."""
    from plotly.subplots import make_subplots
    photo_records = list(photo_records)
    stages = sorted({r['stage'] for r in photo_records})
    models = models_in_order(photo_records)
    avg = {(r['model'], r['stage']): r for r in avg_records}
    per = {(r['model'], r['photo'], r['stage']): r for r in photo_records}
    cols = ['photo'] + [c for s in stages for c in (f'stage {s}<br>this photo', f'stage {s}<br>average')]
    fig = make_subplots(rows=len(models), cols=len(cols), column_titles=cols, row_titles=[display_name(m) for m in models],
                        horizontal_spacing=0.01, vertical_spacing=0.02)
    blank = map_uri([[0.0]])

    def photo_traces(f):
        out = []
        for m in models:
            out.append(go.Image(source=photo_uris[f], hoverinfo='skip'))
            for s in stages:
                r = per.get((m, f, s))
                out.append(go.Image(source=map_uri(erf_photo_score(r)) if r else blank, hoverinfo='skip'))
        return out

    first = photos[0]['file']
    moving = []  # trace indices that change with the photo
    k = 0
    for i, m in enumerate(models, 1):
        fig.add_trace(go.Image(source=photo_uris[first], hoverinfo='skip'), row=i, col=1)
        moving.append(k)
        k += 1
        for j, s in enumerate(stages):
            r = per.get((m, first, s))
            fig.add_trace(go.Image(source=map_uri(erf_photo_score(r)) if r else blank, hoverinfo='skip'),
                          row=i, col=2 + 2 * j)
            moving.append(k)
            a = avg.get((m, s))
            fig.add_trace(go.Image(source=map_uri(a['score_map']) if a else blank, hoverinfo='skip'),
                          row=i, col=3 + 2 * j)
            k += 2
    fig.frames = [go.Frame(data=photo_traces(p['file']), traces=moving, name=p['file']) for p in photos]
    anim = dict(mode='immediate', frame=dict(duration=0, redraw=True), transition=dict(duration=0))
    fig.update_xaxes(visible=False)
    fig.update_yaxes(visible=False)
    fig.update_annotations(font_size=10)
    fig.update_layout(
        template='plotly_white', height=130 * len(models) + 160, margin=dict(l=10, r=110, t=50, b=80),
        sliders=[dict(active=0, currentvalue=dict(prefix='photo: '), pad=dict(t=10),
                      steps=[dict(method='animate', label=p['class'], args=[[p['file']], anim]) for p in photos])])
    return fig
