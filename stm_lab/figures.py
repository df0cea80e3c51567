"""Pure plotly figure and table builders for the book: data in, ``go.Figure`` or markdown out, no kernel needed.

The book loads one local copy of plotly.js (``book/_static/plotly.min.js``, copied here from the installed
plotly package by :func:`install_book_assets`), and notebooks render figures as HTML fragments that rely on it
(:func:`use_book_renderer`): pages stay small and work offline.
"""
from __future__ import annotations

import re
import shutil
from pathlib import Path
from typing import Dict, Iterable, Sequence, Tuple

import plotly.graph_objects as go
import plotly.io as pio

from .mixers import mixer_trait
from .models import display_name, family_of  # noqa: F401  (family_of: the notebooks import it from here)
from .results import ROOT

STATIC_DIR = ROOT / 'book' / '_static'
FALLBACK_COLOR = '#7f7f7f'


def family_color(family: str) -> str:
    """The colour of a model family in every figure: its mixer's ``color`` trait."""
    from .models import FAMILIES
    fam = FAMILIES.get(family)
    return (mixer_trait(fam.mixer, 'color') if fam else None) or FALLBACK_COLOR


def color_of(model: str) -> str:
    return family_color(family_of(model))


def stm_name(family: str) -> str:
    """The paper's name of a family's mixer (Tables II, VI): its ``display_name`` trait."""
    from .models import FAMILIES
    return mixer_trait(FAMILIES[family].mixer, 'display_name') if family in FAMILIES else family


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



def scale_of(model_name: str) -> str:
    return model_name.split('_')[2]


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
        rs = [r for r in records if family_of(r['model']) == fam]
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


# ------------------------------------------------------------------------------------------------ architecture

def dashed(values: Iterable) -> str:
    """A per-stage tuple as the architecture tables show it: (2, 2, 9, 2) -> '2-2-9-2'."""
    return '-'.join(str(v) for v in values)


def mixers_markdown(mixers: Dict[str, type]) -> str:
    """The registered mixers (``stm_lab.mixers.MIXERS``), by name: class and the first line of its module's doc."""
    import sys
    rows = ['| mixer | class | what it is |', '|---|---|---|']
    for name, cls in sorted(mixers.items()):
        # the first paragraph of the module's docstring (the built-in mixers have one module each), else the
        # class's, joined: a summary wrapped over lines would otherwise be cut mid-sentence
        doc = ' '.join((sys.modules[cls.__module__].__doc__ or cls.__doc__ or '').strip().split('\n\n')[0].split())
        rows.append(f'| `{name}` | `{cls.__name__}` | {doc} |')
    return '\n'.join(rows)


def layouts_markdown(models: Iterable[str]) -> str:
    """Each model's layout at 224 (``stm_lab.models.model_config``): mixer, depths, widths, heads or groups, MLP
    ratios, drop-path rate."""
    from .models import model_config
    rows = ['| model | mixer | depths | widths | heads / groups | MLP ratios | drop path |',
            '|---|---|---|---|---|---|---:|']
    for name in models:
        c = model_config(family_of(name), scale_of(name))
        rows.append(f"| `{name}` | `{c['mixer']}` | {dashed(c['depths'])} | {dashed(c['dims'])} | {dashed(c['heads'])} "
                    f"| {dashed(c['mlp_ratios'])} | {c['drop_path_rate']} |")
    return '\n'.join(rows)


def size_rules_markdown(sizes: Iterable[int] = (224, 64, 96, 128, 256)) -> str:
    """The options that follow the input size, at each size: Swin's window, HaloNet's block and halo, PVT's
    reduction ratios (micro models)."""
    from .models import model_config
    rows = ['| img_size | Swin window | Halo block / halo | PVT SR ratios |', '|---:|---|---|---|']
    for s in sizes:
        sw = model_config('swin', 'micro', s)['mixer_options']
        ho = model_config('halonet', 'micro', s)['mixer_options']
        pv = model_config('pvt', 'micro', s)['stage_mixer_options']
        rows.append(f"| {s} | {sw['window']} | {ho['block']} / {ho['halo']} | {dashed([o['sr_ratio'] for o in pv])} |")
    return '\n'.join(rows)


def variants_markdown() -> str:
    """The ablation suffixes (Table VI's B-E, Table VII's HaloNet variants) and what each switches."""
    from .models import ABLATIONS, HALO_VARIANTS
    rows = ['| suffix | switches |', '|---|---|']
    rows += [f'| `_{k}` | {v} |' for k, v in ABLATIONS.items()]
    rows += [f'| `_{k}` (HaloNet) | mixer options {v} |' for k, v in HALO_VARIANTS.items()]
    return '\n'.join(rows)


# ------------------------------------------------------------------------------------------- Sec. 6 analyses

def _models_in_order(records: Iterable[dict]) -> list:
    return list(dict.fromkeys(r['model'] for r in records))


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
    short = {m: display_name(m).split()[0].replace('U-', '') for m in _models_in_order(records)}
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
    """ERF@t side ratio per stage, one bar per model (rows: ``stm_lab.analysis.run.erf_table``); the theoretical
    receptive field's side ratio as a hover note."""
    rows = [r for r in rows if r['t'] == t]
    fig = go.Figure()
    for m in _models_in_order(rows):
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
    for m in _models_in_order(rows):
        cells = {r['stage']: f'{r["side_ratio"]:.2f} ({r["area_ratio"]:.3f})' for r in rows if r['model'] == m}
        out.append(f'| {display_name(m)} | ' + ' | '.join(cells.get(s, '-') for s in stages) + ' |')
    return '\n'.join(out)


# short: three panels share a phone's width (the pages' text says what each magnitude means)
INVARIANCE_AXES = {'shift': 'shift (px)', 'rotation': 'rotation (°)', 'scale': 'crop ratio'}


def invariance_curves(records: Iterable[dict]) -> go.Figure:
    """Consistency (top row) and top-1 (bottom row) against each transform's magnitude, one line per model."""
    from plotly.subplots import make_subplots
    records = list(records)
    transforms = [t for t in INVARIANCE_AXES if any(r['transform'] == t for r in records)]
    fig = make_subplots(rows=2, cols=len(transforms), shared_yaxes=False, horizontal_spacing=0.06,
                        vertical_spacing=0.12, column_titles=[t for t in transforms])
    for m in _models_in_order(records):
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
    for m in _models_in_order(records):
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
    (left; PNG data URIs ``views[angle][i]`` for ``photos[i]``) and each model's top-1 class and probability (right;
    cell colour: the probability given to the true class, full names on hover). One column per model keeps it
    readable on a phone. ``records``: ``demo_rotation.json``."""
    from plotly.subplots import make_subplots
    records = list(records)
    angles = sorted({r['angle'] for r in records})
    models = _models_in_order(records)
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


# ------------------------------------------------------------------------------------------------ training

def accuracy_markdown(rows: Iterable[dict]) -> str:
    """Trained top-1/top-5 (rows of ``stm_lab.training.reports.summary``) beside Table III's ImageNet top-1."""
    out = ['| model | params | epochs | top-1 | top-5 | weights | img/s | min | paper (ImageNet) |',
           '|---|---:|---:|---:|---:|---|---:|---:|---:|']
    for r in rows:
        paper = f'{r["paper_top1"]}%' if r.get('paper_top1') else '-'
        out.append(f'| {display_name(r["model"]).replace(" Transformer", "")} | {r["params_m"]}M | {r["epochs"]} '
                   f'| {r["top1"]:.2f}% | {r["top5"]:.2f}% | {r["weights"]} | {r["train_img_per_s"]:.0f} '
                   f'| {r["wall_time_min"]} | {paper} |')
    return '\n'.join(out)


def training_curves(docs: dict, title_suffix: str = '') -> go.Figure:
    """Validation top-1 (weights: solid, EMA: dotted) and training loss per epoch, one colour per model.
    ``docs``: model -> ``results/<profile>/train_<model>.json`` document."""
    fig = _two_panels([f'validation top-1{title_suffix}', f'training loss{title_suffix}'])
    for m, doc in docs.items():
        recs, color, name = doc['records'], color_of(m), display_name(m)
        evals = [r for r in recs if r.get('top1') is not None]
        fig.add_scatter(x=[r['epoch'] for r in evals], y=[r['top1'] for r in evals], mode='lines+markers',
                        name=name, legendgroup=m, line=dict(color=color),
                        hovertemplate='epoch %{x}: top-1 %{y:.2f}%<extra>' + name + '</extra>', row=1, col=1)
        ema = [r for r in evals if r.get('ema_top1') is not None]
        if ema:
            fig.add_scatter(x=[r['epoch'] for r in ema], y=[r['ema_top1'] for r in ema], mode='lines+markers',
                            name=f'{name} (EMA)', legendgroup=m, showlegend=False,
                            line=dict(color=color, dash='dot'), marker=dict(symbol='circle-open'),
                            hovertemplate='epoch %{x}: EMA top-1 %{y:.2f}%<extra>' + name + '</extra>', row=1, col=1)
        _add_loss(fig, recs, name, m, color)
    return _finish_curves(fig, 'top-1 (%)', loss_label(docs.values()))


def loss_label(docs) -> str:
    """What the training loss of these result documents is, from their recorded data configuration."""
    data = [d.get('config', {}).get('train', {}).get('data', {}) for d in docs]
    mixed = {bool(x.get('mixup') or x.get('cutmix')) for x in data}
    smoothing = {x.get('label_smoothing') for x in data}
    if len(mixed) != 1 or len(smoothing) != 1 or None in smoothing:
        return 'training loss (its own recipe)'
    return ('mixup/cutmix soft-target loss' if mixed.pop() else
            f'cross-entropy, label smoothing {smoothing.pop():g}')


def _add_loss(fig: go.Figure, recs: list, name: str, group: str, color: str, dash: str = 'solid') -> None:
    fig.add_scatter(x=[r['epoch'] for r in recs], y=[r['train_loss'] for r in recs], mode='lines', name=name,
                    legendgroup=group, showlegend=False, line=dict(color=color, dash=dash),
                    hovertemplate='epoch %{x}: loss %{y:.3f}<extra>' + name + '</extra>', row=2, col=1)


def _two_panels(titles) -> go.Figure:
    """Two panels stacked (side by side they overlap on a phone), sharing the x axis (epochs)."""
    from plotly.subplots import make_subplots
    return make_subplots(rows=2, cols=1, vertical_spacing=0.12, shared_xaxes=True, subplot_titles=titles)


def _finish_curves(fig: go.Figure, top1_title: str, loss_title: str) -> go.Figure:
    fig.update_xaxes(title_text='epoch', row=2, col=1)
    fig.update_yaxes(title_text=top1_title, row=1, col=1)
    fig.update_yaxes(title_text=loss_title, row=2, col=1)
    fig.update_layout(template='plotly_white', height=640, margin=dict(l=60, r=20, t=40, b=50),
                      legend=dict(orientation='h', y=-0.12))
    return fig


# ------------------------------------------------------------------------------------------------ speed

def _speed_color(model: str) -> str:
    return '#bcbd22' if model.startswith('timm_') else color_of(model)


def speed_bars(records: Iterable[dict]) -> go.Figure:
    """Images/s relative to U-DWConv per setting (training at 64, inference at 64 and 224), one bar per model;
    ``records``: ``results/bench/train_speed.json``. Hover: the absolute images/s."""
    records = list(records)
    settings = list(dict.fromkeys((r['mode'], r['img_size']) for r in records))
    fig = go.Figure()
    for m in _models_in_order(records):
        rs = [next((r for r in records if r['model'] == m and (r['mode'], r['img_size']) == s), None) for s in settings]
        fig.add_bar(x=[f'{mode} {size}x{size}' for mode, size in settings],
                    y=[r['ratio_to_dwconv'] if r else None for r in rs], name=display_name(m),
                    marker_color=_speed_color(m), customdata=[r['images_per_sec'] if r else None for r in rs],
                    hovertemplate='%{x}: %{y:.2f}x U-DWConv (%{customdata:.0f} images/s)<extra>' + display_name(m)
                                  + '</extra>')
    fig.add_hline(y=1.0, line=dict(color='grey', dash='dash'))
    fig.update_layout(barmode='group', template='plotly_white', height=400, margin=dict(l=60, r=20, t=30, b=40),
                      yaxis=dict(title='images/s relative to U-DWConv'), legend=dict(orientation='h', y=-0.15))
    return fig


def profile_component(part: str) -> str:
    """Groups the parts of ``stm_lab.bench.train_profile.part_times`` into components comparable across models."""
    name = part.rsplit(' ', 1)[0] if part.endswith((' forward', ' backward')) else part
    if name in ('stem', 'patch_embed'):
        return 'stem'
    if name.startswith(('stages.', 'layers.')):
        return f'stage {int(name.split(".")[1]) + 1}'
    if name == 'optimizer step':
        return 'optimizer'
    return 'head, loss and glue'


def profile_bars(records: Iterable[dict]) -> go.Figure:
    """Milliseconds per training step by component (stem, stages 1-4 with their downsampling, head/loss, optimizer),
    forward + backward, one horizontal bar per model; ``records``: ``results/bench/train_profile.json``."""
    records = list(records)
    components = ['stem', 'stage 1', 'stage 2', 'stage 3', 'stage 4', 'head, loss and glue', 'optimizer']
    palette = ['#8c564b', '#1f77b4', '#2ca02c', '#d62728', '#9467bd', '#7f7f7f', '#bcbd22']
    fig = go.Figure()
    for comp, color in zip(components, palette):
        ys, xs, fwd, bwd = [], [], [], []
        for r in records:
            parts = [p for p in r['parts'] if p['part'] != 'total' and profile_component(p['part']) == comp]
            ys.append(display_name(r['model']))
            xs.append(sum(p['ms'] for p in parts))
            fwd.append(sum(p['ms'] for p in parts if p['part'].endswith('forward')))
            bwd.append(sum(p['ms'] for p in parts if p['part'].endswith('backward')))
        fig.add_bar(y=ys, x=xs, name=comp, orientation='h', marker_color=color, customdata=list(zip(fwd, bwd)),
                    hovertemplate=comp + ': %{x:.1f} ms (forward %{customdata[0]:.1f}, backward %{customdata[1]:.1f})'
                                         '<extra>%{y}</extra>')
    fig.update_layout(barmode='stack', template='plotly_white', height=200 + 60 * len(records),
                      margin=dict(l=10, r=20, t=10, b=40), xaxis=dict(title='ms per training step'),
                      legend=dict(orientation='h', y=1.02, yanchor='bottom', x=0, traceorder='normal'),
                      yaxis=dict(autorange='reversed', automargin=True))
    return fig


def _same_scale_dwconv(model: str) -> str:
    """U-DWConv of ``model``'s scale (``u_swin_tiny`` -> ``u_dwconv_tiny``): the baseline of speed ratios."""
    return 'u_dwconv_' + model.rsplit('_', 1)[-1]


def table8_markdown(records: Iterable[dict]) -> str:
    """Inference images/s here (``results/bench/table8_throughput*.json``) beside the paper's Table VIII (RTX 3090),
    each with its ratio to U-DWConv of the same scale, so that orderings can be compared."""
    from .paper import TABLE8, TABLE8_SIZES
    records = list(records)
    sizes = sorted({r['img_size'] for r in records})
    by = {(r['model'], r['img_size']): r for r in records}
    head = '| model | ' + ' | '.join(f'{s}: here (batch {by[next(m for m, z in by if z == s), s]["batch_size"]}) '
                                     f'| {s}: paper' for s in sizes) + ' |'
    out = [head, '|---|' + '---:|---:|' * len(sizes)]
    for m in _models_in_order(records):
        cells, base_name = [], _same_scale_dwconv(m)
        for s in sizes:
            r, base = by.get((m, s)), by.get((base_name, s))
            cells.append(f'{r["images_per_sec"]:.1f} ({r["images_per_sec"] / base["images_per_sec"]:.2f}x)'
                         if r and base else (f'{r["images_per_sec"]:.1f}' if r else '-'))
            paper, paper_base = TABLE8.get(m), TABLE8.get(base_name)
            i = TABLE8_SIZES.index(s) if s in TABLE8_SIZES else None
            cells.append(f'{paper[i]} ({paper[i] / paper_base[i]:.2f}x)' if paper and paper_base and i is not None
                         else '-')
        out.append(f'| {display_name(m)} | ' + ' | '.join(cells) + ' |')
    return '\n'.join(out)


def table8_pair_agreement(records: Iterable[dict]) -> Dict[int, Tuple[int, int]]:
    """Per input size: (pairs of models that the measurement orders as the paper's Table VIII does, pairs compared),
    over the models that both have. Ties in either count as disagreement; 5 models give 10 pairs."""
    from .paper import TABLE8, TABLE8_SIZES
    out = {}
    for s in sorted({r['img_size'] for r in records}):
        here = {r['model']: r['images_per_sec'] for r in records if r['img_size'] == s and r['model'] in TABLE8}
        if s not in TABLE8_SIZES or len(here) < 2:
            continue
        i = TABLE8_SIZES.index(s)
        pairs = [(a, b) for j, a in enumerate(here) for b in list(here)[j + 1:]]
        same = sum((here[a] - here[b]) * (TABLE8[a][i] - TABLE8[b][i]) > 0 for a, b in pairs)
        out[s] = (same, len(pairs))
    return out


def top_operators_markdown(records: Iterable[dict], top: int = 8) -> str:
    """The operators with the most self time in a training step (``train_profile.json``), ms per step (share), one
    column per model; rows are the union of each model's ``top`` first."""
    records = list(records)
    ops = list(dict.fromkeys(o['op'] for r in records for o in r['top_operators'][:top]))
    out = ['| operator | ' + ' | '.join(display_name(r['model']) for r in records) + ' |',
           '|---|' + '---:|' * len(records)]
    for op in ops:
        cells = []
        for r in records:
            o = next((o for o in r['top_operators'] if o['op'] == op), None)
            cells.append(f'{o["ms"]:.1f} ({100 * o["share"]:.0f}%)' if o else '-')
        out.append(f'| `{op}` | ' + ' | '.join(cells) + ' |')
    return '\n'.join(out)


def comparison_curves(main: dict, other: dict, folder: str) -> go.Figure:
    """Validation top-1 (best of weights and EMA at each evaluation) and training loss of runs kept apart in
    ``folder`` (dashed) beside the main run of the same model (solid), one colour per model;
    ``main``, ``other``: model -> ``train_<model>.json`` document."""
    fig = _two_panels(['validation top-1', 'training loss'])
    for runs, which, dash in ((main, 'main run', 'solid'), (other, folder, 'dash')):
        for m, doc in runs.items():
            recs, color, label = doc['records'], color_of(m), f'{display_name(m)}, {which}'
            evals = [r for r in recs if r.get('top1') is not None]
            fig.add_scatter(x=[r['epoch'] for r in evals], y=[max(r['top1'], r.get('ema_top1') or 0) for r in evals],
                            mode='lines+markers', name=label, legendgroup=label, line=dict(color=color, dash=dash),
                            hovertemplate='epoch %{x}: top-1 %{y:.2f}%<extra>' + label + '</extra>', row=1, col=1)
            _add_loss(fig, recs, label, label, color, dash)
    return _finish_curves(fig, 'top-1 (%), best of weights and EMA', loss_label([*main.values(), *other.values()]))


# ------------------------------------------------------------------------------------------------ ablations

VARIANT_NAMES = {'B': 'B: LN after pooling', 'C': 'C: B without stage norms', 'D': "D: ConvNeXt's block",
                 'E': "E: D with C's norms", 'switch': 'Halo-Switch', '1px': 'Halo-1px', 'shift': 'Halo-Shift',
                 'patchds': 'non-overlapped stem and downsampling', 'resblock': "HaloNet's own bottleneck block"}


def _signed(x, digits: int = 2) -> str:
    if x is None:
        return '-'
    text = f'{x:+.{digits}f}'
    return text.replace('+0.00', '0.00').replace('-0.00', '0.00') if digits == 2 else text


def ablation_markdown(rows: Iterable[dict], table: str) -> str:
    """One paper table (``'II'``, ``'VI'``, ``'VII'``): the paper's top-1 and ours, each with its difference to its own
    A, ours with two standard deviations of noise (rows of :func:`stm_lab.ablations.ablation_rows`)."""
    out = ['| STM | variant | paper (- A) | ours (- A, ± 2 sd) | beyond noise? |', '|---|---|---:|---:|---|']
    for r in rows:
        if r['table'] != table:
            continue
        ours = (f'{r["ours"]:.2f} ({_signed(r["diff"])} ± {2 * r["noise"]:.2f})' if r['ours'] is not None
                else 'not yet run')
        beyond = '-' if r['beyond_noise'] is None else ('yes' if r['beyond_noise'] else 'no')
        out.append(f'| {stm_name(r["family"])} | {VARIANT_NAMES[r["variant"]]} '
                   f'| {r["paper"]} ({_signed(r["paper_diff"], 1)}) | {ours} | {beyond} |')
    return '\n'.join(out)


def claims_markdown(claims: Iterable[dict]) -> str:
    """The paper's claims (:meth:`stm_lab.claims.Result.row`) with the paper's difference, ours with two standard
    errors (top-1 points), and the verdict."""
    out = ['| claim | paper | ours (± 2 SE) | verdict |', '|---|---:|---:|---|']
    for c in claims:
        ours = '-' if c['effect'] is None else f'{_signed(c["effect"])} ± {2 * c["se"]:.2f}'
        out.append(f'| {c["claim"]} | {_signed(c["paper_effect"])} | {ours} | {c["verdict"]} |')
    return '\n'.join(out)


ABLATION_COMPLEXITY_MODELS = ('u_swin_small', 'u_halonet_small', 'u_halonet_small_switch', 'u_halonet_small_1px',
                              'u_halonet_small_shift', 'u_halonet_micro', 'u_halonet_micro_switch',
                              'u_halonet_micro_1px', 'u_halonet_micro_shift')


def ablation_complexity_markdown(records: Iterable[dict], models: Iterable[str] = ABLATION_COMPLEXITY_MODELS) -> str:
    """Parameters and MACs of the Table VII models (``results/paper/ablation_complexity.json``), with the paper's
    MACs where it gives them; a note when none has been counted."""
    cx = {r['model']: r for r in records}
    lines = ['| model | params | GMACs at 224 | paper GMACs |', '|---|---:|---:|---:|']
    for name in models:
        if name in cx:
            r = cx[name]
            lines.append(f"| `{name}` | {r['params_m']:.2f}M | {r['gmacs']:.2f} | "
                         f"{r['paper_gmacs'] if r['paper_gmacs'] else '-'} |")
    return '\n'.join(lines) if len(lines) > 2 else '*No complexity counts yet (`stm-lab ablations complexity`).*'


def ablation_bars(rows: Iterable[dict]) -> go.Figure:
    """Difference to A per variant: the paper's (open markers) and ours with +-2 noise (bars), one row per table."""
    rows = [r for r in rows]
    labels = [f'{stm_name(r["family"])} {r["variant"]}' for r in rows]
    colors = [family_color(r['family']) for r in rows]
    fig = go.Figure()
    fig.add_bar(x=labels, y=[r['diff'] for r in rows], marker_color=colors, name='ours (micro, Imagenette 64 px)',
                error_y=dict(type='data', array=[2 * r['noise'] if r['noise'] else 0 for r in rows], visible=True),
                hovertemplate='%{x}: %{y:+.2f} points<extra>ours</extra>')
    fig.add_scatter(x=labels, y=[r['paper_diff'] for r in rows], mode='markers', name='paper (ImageNet, 224 px)',
                    marker=dict(symbol='diamond-open', size=10, color='black'),
                    hovertemplate='%{x}: %{y:+.1f} points<extra>paper</extra>')
    fig.update_layout(template='plotly_white', height=420, margin=dict(l=60, r=10, t=20, b=110),
                      yaxis_title='top-1 minus A (points)', legend=dict(orientation='h', y=1.08, x=0),
                      xaxis=dict(tickangle=-60, automargin=True))
    return fig


def original_vs_unified(ours: Dict[str, float], ours_label: str) -> go.Figure:
    """Fig. 1: each STM's originally reported top-1 (its own paper, ~30M models), its unified re-implementation
    (Table III, tiny) and our micro models (``ours``: family -> top-1, on another task; ``ours_label`` says which)."""
    from .paper import ORIGINAL_TINY, TABLE3
    fams = list(ORIGINAL_TINY)
    names = [stm_name(f) for f in fams]
    fig = go.Figure()
    fig.add_scatter(x=names, y=[ORIGINAL_TINY[f][1] for f in fams], mode='markers+lines', name='original (own paper)',
                    text=[ORIGINAL_TINY[f][0] for f in fams], line=dict(color='#888', dash='dot'),
                    marker=dict(size=10, symbol='square-open', color='#555'),
                    hovertemplate='%{text}: %{y:.1f}%<extra>original</extra>')
    fig.add_scatter(x=names, y=[TABLE3[f'u_{f}_tiny'][2] for f in fams], mode='markers+lines',
                    name='unified, tiny (Table III)', line=dict(color='black'), marker=dict(size=10),
                    hovertemplate='%{x}: %{y:.1f}%<extra>unified (paper)</extra>')
    fig.add_scatter(x=[stm_name(f) for f in fams if f in ours], y=[ours[f] for f in fams if f in ours],
                    mode='markers+lines', name=ours_label, yaxis='y2',
                    marker=dict(size=10, color=[family_color(f) for f in fams if f in ours], symbol='diamond'),
                    line=dict(color='#bbb'), hovertemplate='%{x}: %{y:.2f}%<extra>ours</extra>')
    fig.update_layout(template='plotly_white', height=420, margin=dict(l=60, r=60, t=20, b=40),
                      yaxis=dict(title='ImageNet-1k top-1 (%)'),
                      yaxis2=dict(title='ours: Imagenette top-1 (%)', overlaying='y', side='right', showgrid=False),
                      legend=dict(orientation='h', y=-0.15, x=0))
    return fig


def consistency_over_training(docs: dict) -> go.Figure:
    """Fig. 7(c): mean translation and rotation consistency after every epoch, one line per model: the mean over the
    seeds that tracked it, each seed a thin line of the same colour (``docs``: model -> a ``train_<model>.json``
    document whose records carry ``consistency_*``, or a list of them, one per seed)."""
    from .analysis.run import mean_consistency_records
    fig = _two_panels(['translation', 'rotation'])
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


def recipe_markdown(rows: Iterable[dict], columns: Iterable[str]) -> str:
    """Table IV: one row per setting, one column per configuration (rows of :func:`stm_lab.training.config.recipe_table`)."""
    columns = list(columns)
    out = ['| setting | ' + ' | '.join(columns) + ' |', '|---|' + '---|' * len(columns)]
    for r in rows:
        out.append(f'| {r["setting"]} | ' + ' | '.join(str(r[c]) for c in columns) + ' |')
    return '\n'.join(out)


def setting_text(value) -> str:
    """A configuration value as a reader reads it: None and 0 as 'off', ranges as 'a-b', floats without noise."""
    if value is None:
        return 'off'
    if isinstance(value, (list, tuple)):
        return '-'.join(setting_text(v) for v in value)
    if isinstance(value, float):
        return f'{value:g}'
    return str(value)


# ------------------------------------------------------------------------------------------------ detection

def _num(v, digits: int = 3) -> str:
    return '-' if v is None else f'{v:.{digits}f}'


def detection_markdown(records: Iterable[dict]) -> str:
    """Table V: box and mask AP per model (``kind == 'ap'`` records of ``detection.json``), the bootstrap standard
    error of box AP, and the paper's micro row (COCO at 800 px, in percent). Six columns, so that it fits a phone."""
    out = ['| model | box AP (± se) | AP50 | AP small / medium / large | mask AP | paper box / mask AP |',
           '|---|---:|---:|---:|---:|---:|']
    for r in records:
        se = f' ± {r["se_box_AP"]:.3f}' if r.get('se_box_AP') is not None else ''
        sml = ' / '.join(_num(r[f'box_AP{k}']) for k in 'sml')
        paper = f'{r["paper_box_AP"]} / {r["paper_mask_AP"]}' if 'paper_box_AP' in r else '-'
        out.append(f'| {display_name(r["model"])} | {_num(r["box_AP"])}{se} | {_num(r["box_AP50"])} | {sml} | '
                   f'{_num(r["mask_AP"])} | {paper} |')
    return '\n'.join(out)


def fig5_scatter(rows: Iterable[dict]) -> go.Figure:
    """Fig. 5: box AP for small, medium and large objects against ERF@50 (last stage), one marker per model, with
    two bootstrap standard errors (rows of :func:`stm_lab.detection.run.fig5_rows`)."""
    from plotly.subplots import make_subplots
    rows = list(rows)
    buckets = (('APs', 'small'), ('APm', 'medium'), ('APl', 'large'))
    fig = make_subplots(rows=1, cols=3, shared_yaxes=False, horizontal_spacing=0.08,
                        subplot_titles=[f'{name} objects' for _, name in buckets])
    for r in rows:
        for j, (key, name) in enumerate(buckets, 1):
            se = r.get(f'se_{key}')
            fig.add_scatter(x=[r['erf50']], y=[r[key]], mode='markers', name=display_name(r['model']),
                            legendgroup=r['model'], showlegend=j == 1, marker=dict(size=11, color=color_of(r['model'])),
                            error_y=dict(type='data', array=[2 * se], visible=True) if se else None,
                            hovertemplate=f'ERF@50 %{{x:.2f}}: {name} box AP %{{y:.3f}}<extra>{display_name(r["model"])}'
                                          '</extra>', row=1, col=j)
        fig.update_xaxes(title_text='ERF@50 (last stage)', row=1, col=j)
    fig.update_yaxes(title_text='box AP', row=1, col=1)
    fig.update_layout(template='plotly_white', height=380, margin=dict(l=60, r=20, t=40, b=50),
                      legend=dict(orientation='h', y=-0.25))
    return fig


def detection_scale_curves(records: Iterable[dict]) -> go.Figure:
    """Fig. 7, third row: box consistency mAP (against the unscaled predictions) and box AP (against the ground
    truth) against the input scale, one line per model (``kind == 'scale'`` records)."""
    records = list(records)
    fig = _two_panels(['box consistency mAP (unscaled predictions as ground truth)', 'box AP (ground truth)'])
    for m in _models_in_order(records):
        rs = sorted((r for r in records if r['model'] == m), key=lambda r: r['scale'])
        for row, key in ((1, 'consistency_AP'), (2, 'box_AP')):
            fig.add_scatter(x=[r['scale'] for r in rs], y=[r[key] for r in rs], mode='lines+markers',
                            name=display_name(m), legendgroup=m, showlegend=row == 1, line=dict(color=color_of(m)),
                            hovertemplate='scale %{x}: %{y:.3f}<extra>' + display_name(m) + '</extra>', row=row, col=1)
    fig.update_xaxes(title_text='input scale', row=2, col=1)
    fig.update_layout(template='plotly_white', height=600, margin=dict(l=60, r=20, t=40, b=50),
                      legend=dict(orientation='h', y=-0.12))
    return fig


SHAPE_COLORS = ('#e41a1c', '#377eb8', '#4daf4a', '#984ea3', '#ff7f00', '#a65628', '#f781bf', '#999999')


def detection_demo_figure(demo: Iterable[dict], images: Iterable[dict], categories: Iterable[dict]) -> go.Figure:
    """"Scale an image": a slider over the input scale; one row per demo image, one column per model, each model's
    boxes (score >= 0.5, mapped back onto the image) drawn over it, coloured by class (``kind == 'demo'`` and
    ``'demo_image'`` records of ``detection.json``; ``categories``: the set's COCO categories)."""
    from plotly.subplots import make_subplots
    demo, images = list(demo), list(images)
    names = {c['id']: c['name'] for c in categories}
    models = _models_in_order(demo)
    ids = [im['image_id'] for im in images]
    scales = sorted({r['scale'] for r in demo})
    fig = make_subplots(rows=len(ids), cols=len(models), horizontal_spacing=0.01, vertical_spacing=0.01,
                        column_titles=[display_name(m).replace('U-', '').replace(' Transformer', '') for m in models])
    for i, im in enumerate(images):
        for j, m in enumerate(models):
            fig.add_trace(go.Image(source=im['uri'], hoverinfo='skip'), row=i + 1, col=j + 1)
    index = {(r['model'], r['image_id'], r['scale']): r for r in demo}

    def shapes_at(s):
        out = []
        for i, image_id in enumerate(ids):
            for j, m in enumerate(models):
                k = i * len(models) + j + 1
                ref = '' if k == 1 else str(k)
                r = index.get((m, image_id, s))
                for box, label in zip(r['boxes'] if r else [], r['labels'] if r else []):
                    out.append(dict(type='rect', xref=f'x{ref}', yref=f'y{ref}', x0=box[0], y0=box[1], x1=box[2],
                                    y1=box[3], line=dict(color=SHAPE_COLORS[(label - 1) % len(SHAPE_COLORS)],
                                                         width=2)))
        return out

    start = scales.index(1.0) if 1.0 in scales else 0
    legend = ', '.join(f'<span style="color:{SHAPE_COLORS[(c - 1) % len(SHAPE_COLORS)]}">{n}</span>'
                       for c, n in sorted(names.items()))
    fig.update_layout(
        template='plotly_white', height=110 + 150 * len(ids), margin=dict(l=10, r=10, t=60, b=90),
        shapes=shapes_at(scales[start]),
        title=dict(text=f'boxes with score >= 0.5, by class: {legend}', font=dict(size=12), x=0),
        sliders=[dict(active=start, currentvalue=dict(prefix='input scale: ', font=dict(size=12)),
                      pad=dict(t=10, b=0), x=0, len=1, y=0, yanchor='top',
                      steps=[dict(method='relayout', label=f'{s:g}', args=[{'shapes': shapes_at(s)}])
                             for s in scales])])
    fig.update_xaxes(visible=False)
    fig.update_yaxes(visible=False)
    return fig


def findings_table_markdown(rows: Iterable[dict]) -> str:
    """Rows of :mod:`stm_lab.findings` as the Findings page shows them: claim, paper, ours (the deciding difference
    with two standard errors first, two standard errors being the smallest difference the comparison could decide;
    then what was measured and the noise), verdict. Four columns, as a phone's width allows."""
    lines = ['| claim | paper | ours: difference ± 2 SE; measured (noise) | verdict |', '|---|---|---|---|']
    for r in rows:
        ours = r['ours'] if r['noise'] in ('-', '') else f"{r['ours']} ({r['noise']})"
        if r['effect'] is not None:
            ours = (f"**{_signed(r['effect'])}" + ('' if r['se'] is None else f" ± {2 * r['se']:.2f}")
                    + f" {r['unit']}**; {ours}")
        lines.append(f"| {r['claim']} | {r['paper']} | {ours} | **{r['verdict']}** |")
    return '\n'.join(lines)


VERDICT_COLORS = {'agrees': '#1a9850', 'does not agree': '#d73027', 'cannot tell at this scale': '#7f7f7f',
                  'not yet measured': '#bdbdbd'}


def forest_figure(rows: Sequence[dict]) -> go.Figure:
    """The Findings page at a glance: one row per claim measured as a difference in points (top-1, consistency or
    AP), our effect with its two-standard-error interval coloured by verdict, the paper's value of the same
    difference as an open diamond where it gives one, and the zero line. A positive effect is the claimed
    direction for every claim but the ablations' losses (their sign is the paper's). Claims whose noise lacks a term
    (one seed per model, no seed spread to borrow) show an open circle: their interval is the image noise alone."""
    rows = [r for r in rows if r['effect'] is not None and r['unit'] == 'points']
    labels = [r['label'] for r in rows]
    fig = go.Figure()
    groups = [(v, c, True) for v, c in VERDICT_COLORS.items()] + [('cannot tell at this scale', '#7f7f7f', False)]
    for verdict, color, complete in groups:
        sub = [r for r in rows if r['verdict'] == verdict and r.get('noise_complete', True) == complete]
        if not sub:
            continue
        fig.add_trace(go.Scatter(
            x=[r['effect'] for r in sub], y=[r['label'] for r in sub], mode='markers',
            name=verdict if complete else 'not decided: image noise only (seed spread not yet measured)',
            marker=dict(color=color, size=9, symbol='circle' if complete else 'circle-open', line=dict(width=2)),
            error_x=dict(type='data', array=[2 * (r['se'] or 0) for r in sub], color=color, thickness=2, width=4),
            customdata=[[r['claim'], 2 * (r['se'] or 0)] for r in sub],
            hovertemplate='%{customdata[0]}<br>ours %{x:+.2f} ± %{customdata[1]:.2f} points<extra></extra>'))
    paper = [r for r in rows if r['paper_effect'] is not None]
    if paper:
        fig.add_trace(go.Scatter(x=[r['paper_effect'] for r in paper], y=[r['label'] for r in paper], mode='markers',
                                 name='paper', marker=dict(symbol='diamond-open', color='#000', size=10),
                                 hovertemplate='paper %{x:+.2f} points<extra></extra>'))
    fig.add_vline(x=0, line=dict(color='#444', width=1))
    fig.update_yaxes(categoryorder='array', categoryarray=labels[::-1], automargin=True)
    fig.update_xaxes(title_text='effect (points)', zeroline=False)
    fig.update_layout(height=110 + 24 * len(rows), margin=dict(l=10, r=10, t=10, b=40),
                      legend=dict(orientation='h', y=-0.12, yanchor='top', x=0), template='plotly_white')
    return fig


def coverage_markdown(cover: Iterable[dict]) -> str:
    """:func:`stm_lab.findings.coverage` as the Findings page shows it: each table and figure of the paper, its
    status (with the runs done where it needs several and is not all here) and the setting here."""
    lines = ['| paper | what | status | setting here |', '|---|---|---|---|']
    for c in cover:
        status = c['status'] + (f" ({c['done']} of {c['needed']} runs)" if c['needed'] > 1 and c['status'] != 'here'
                                else '')
        lines.append(f"| {c['item']} | {c['what']} | {status} | {c['setting']} |")
    return '\n'.join(lines)


# ------------------------------------------------------------------------------------------------ the lab

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
    for m in _models_in_order(records):
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
    """:func:`fgsm_curves` with a dotted marker (shape 0) that the lab's epsilon slider moves."""
    fig = fgsm_curves(records)
    fig.update_layout(height=330, shapes=[_marker(1, 0)], xaxis=dict(range=[-0.2, 8.2]))
    return fig


def figure_html(fig: go.Figure, div_id: str) -> str:
    """A figure as an HTML fragment with a known element id, using the page's plotly.js."""
    return fig.to_html(full_html=False, include_plotlyjs=False, include_mathjax=False, auto_play=False, div_id=div_id)


# ------------------------------------------------------------------------------------------------ ERF, Fig. 6

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
    models = _models_in_order(records)
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
    ``photo_uris``: file -> data URI of the photo resized to the model input."""
    from plotly.subplots import make_subplots
    from .analysis.run import erf_photo_score
    photo_records = list(photo_records)
    stages = sorted({r['stage'] for r in photo_records})
    models = _models_in_order(photo_records)
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
