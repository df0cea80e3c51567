"""The Training page: Table III's accuracy beside the paper's, the training curves, the recipe (Table IV), the runs
kept apart, the core time of the runs, and the Table III accuracy claims decided over the seed set. It reads the
training results (:mod:`stm_lab.training.reports`); nothing here trains."""
from __future__ import annotations

import math
import statistics
from typing import Dict, Iterable, List, Mapping, Sequence, Tuple

import plotly.graph_objects as go

from .. import layout
from ..ablations import image_se
from ..claims import BY_ID, Result
from ..models import display_name, family_of, scale_of
from ..paper import ORIGINAL_TINY, TABLE3
from ..training.config import evaluated_after
from ..training.reports import config_changes
from .common import color_of, family_color, names, stm_name, two_panels
from .evidence import paper_gap, seed_rank, seed_set

DWCONV_TARGET, TARGET = 70.0, 60.0  # the cpu profile's targets: U-DWConv-micro at least 70%, every model 60%
BUDGET_HOURS, CORES = 3, 2  # the cpu profile's budget: three hours of a two-core machine


# ------------------------------------------------------------------------------------------------ facts

def mean_top1_se(top1: Iterable[float], n: int) -> float:
    """Binomial standard error (points) of one model's top-1 on ``n`` images, at the models' mean top-1 (%)."""
    top1 = list(top1)
    return image_se(sum(top1) / max(len(top1), 1), n)


def best_and_worst(top1: Mapping[str, float]) -> Tuple[str, str]:
    """(the model with the highest top-1, the one with the lowest); the first of equals."""
    return max(top1, key=top1.get), min(top1, key=top1.get)


def epochs_of(rows: Iterable[dict]) -> List[int]:
    """The distinct epoch counts of the runs, ascending."""
    return sorted({r['epochs'] for r in rows})


def spread(top1: Mapping[str, float]) -> float:
    """Points between the most and the least accurate model."""
    return max(top1.values()) - min(top1.values())


def total_minutes(rows: Iterable[dict]) -> float:
    """The summed wall time (minutes) of the runs (``train.summary`` rows: ``wall_time_min``)."""
    return sum(r['wall_time_min'] for r in rows)


def accuracy_text(model: str, top1: float) -> str:
    """'U-HaloNet (75.3%)'."""
    return f'{display_name(model)} ({top1:.1f}%)'


def rankings(top1: Mapping[str, float]) -> Tuple[List[str], List[str]]:
    """(the models of Table III among ``top1`` in the paper's top-1 order, the same models in ours), best first."""
    paper = sorted((m for m in top1 if m in TABLE3), key=lambda m: -TABLE3[m][2])
    return paper, sorted(paper, key=lambda m: -top1[m])


def rank_text(models: Sequence[str]) -> str:
    """'U-HaloNet > U-DWConv > ...', or 'n/a' without models."""
    return names(models) or 'n/a'


def targets_text(top1: Mapping[str, float], dwconv: str = 'u_dwconv_micro', dwconv_target: float = DWCONV_TARGET,
                 target: float = TARGET) -> str:
    """'met' when U-DWConv reaches ``dwconv_target`` and every model ``target`` (top-1 %), else 'not met (<what
    falls short>)'."""
    dw = top1.get(dwconv)
    short = ([f'{display_name(dwconv)} {dw:.1f}% < {dwconv_target:g}%'] if dw is not None and dw < dwconv_target
             else []) + [f'{display_name(m)} {v:.1f}% < {target:g}%' for m, v in top1.items() if v < target]
    if dw is not None and not short:
        return 'met'
    return 'not met (' + '; '.join(short or [f'no {display_name(dwconv)}']) + ')'


def label_smoothing_floor(eps: float, num_classes: int) -> float:
    """The lowest cross-entropy label smoothing ``eps`` allows: the entropy of the smoothed target (timm puts
    eps / K on every class, so the true class gets 1 - eps + eps / K)."""
    k = num_classes
    t = [1 - eps + eps / k] + [eps / k] * (k - 1)
    return -sum(q * math.log(q) for q in t if q > 0)


def range_text(values: Iterable[float], digits: int = 2) -> str:
    """'1.23-1.45': the lowest and highest value."""
    values = list(values)
    return f'{min(values):.{digits}f}-{max(values):.{digits}f}'


def core_time_estimate(docs: Dict[str, dict], speeds: List[dict]) -> Dict[str, float]:
    """model -> core-seconds its run takes at the one-thread speeds ``speeds`` (the records of
    ``train_throughput.json``): every epoch's training, and each evaluation the configuration schedules (every
    ``eval_every`` epochs and the last; the trained weights and, where there is one, the EMA). Models without a
    speed record are left out. The sum over the five, halved, is the wall time on two cores shared perfectly."""
    speed = {r['model']: r for r in speeds}
    out = {}
    for m, doc in docs.items():
        if m not in speed or not speed[m].get('train_epoch_s'):
            continue
        cfg, last = doc['config']['train'], doc['records'][-1]
        epochs = cfg['epochs']
        evals = sum(evaluated_after(e, epochs, cfg.get('eval_every') or 1) for e in range(1, epochs + 1))
        per_eval = last['val_images'] / speed[m]['eval_img_per_s'] * (2 if cfg.get('ema_decay', 0) > 0 else 1)
        out[m] = epochs * speed[m]['train_epoch_s'] + evals * per_eval
    return out


def budget_text(core_seconds: Mapping[str, float], n_runs: int, cpu: str, source: str,
                hours: float = BUDGET_HOURS, cores: int = CORES) -> str:
    """The core time of the runs (``core_seconds``: model -> core-seconds, from :func:`core_time_estimate`) and
    whether it fits ``hours`` of ``cores`` cores shared evenly; a note when not every one of the ``n_runs`` runs has
    an estimate. ``source``: the speed measurement's file, ``cpu``: its processor."""
    if not core_seconds or len(core_seconds) != n_runs:
        return 'not estimated here (no one-thread speed measurement for these models at this profile)'
    core_min = sum(core_seconds.values()) / 60
    return (f'about {core_min:.0f} core-minutes for the {len(core_seconds)} runs, i.e. {core_min / cores:.0f} minutes '
            f'of two cores shared evenly (epochs and scheduled evaluations at the one-thread speeds measured on '
            f'{cpu}, {source}), ' + ('within' if core_min / cores <= hours * 60 else 'beyond')
            + ' three hours of the two cores')


def count_text(items: Sequence[str]) -> str:
    """'2 (a, b)', or 'none'."""
    return f'{len(items)} ({", ".join(items)})' if items else 'none'


def other_runs_text(top1: Mapping[str, float], other: Mapping[str, Sequence[dict]]) -> str:
    """Runs kept apart (``other``: folder -> their summary rows) against the main run of the same model (``top1``),
    the largest gain first: 'U-X in folder/ 80.1% against 78.0% (40 epochs); ...', or 'none yet'."""
    gains = []
    for folder, rows in other.items():
        for r in rows:
            if r['model'] in top1:
                gains.append((r['top1'] - top1[r['model']], f'{display_name(r["model"])} in {folder}/ '
                              f'{r["top1"]:.1f}% against {top1[r["model"]]:.1f}% ({r["epochs"]} epochs)'))
    return '; '.join(t for _, t in sorted(gains, reverse=True)) or 'none yet'


def config_text(value) -> str:
    """A configuration value as a reader reads it: None and 0 as 'off', ranges as 'a-b', floats without noise."""
    if value is None:
        return 'off'
    if isinstance(value, (list, tuple)):
        return '-'.join(config_text(v) for v in value)
    if isinstance(value, float):
        return f'{value:g}'
    return str(value)


def changes_list(folder: str, changes: Mapping[str, Mapping[str, tuple]]) -> str:
    """What each run kept apart in ``folder`` changed against its main run (``changes``: model -> {setting: (main,
    this)}, from ``train.config_changes``), as a markdown list under the folder's name."""
    lines = [f'**`{folder}`**', '']
    for m, ch in changes.items():
        shown = '; '.join(f'`{k}` {config_text(a)} → {config_text(b)}' for k, (a, b) in ch.items()) or 'nothing'
        lines.append(f'- {display_name(m)}: changes {shown}.')
    return '\n'.join(lines)


def original_texts() -> Dict[str, str]:
    """family -> 'Swin-T 81.3%': each mixer's originally reported model and accuracy (``paper.ORIGINAL_TINY``)."""
    return {fam: f'{name} {acc}%' for fam, (name, acc, _key) in ORIGINAL_TINY.items()}


# ------------------------------------------------------------------------------------------------ claims

def _paper_order(scale: str, index: int, reverse: bool = True) -> str:
    models = sorted((m for m in TABLE3 if scale_of(m) == scale), key=lambda m: TABLE3[m][index], reverse=reverse)
    return ', '.join(f'{display_name(m)} {TABLE3[m][index]}' for m in models)


def accuracy_results(profile: str) -> List[Result]:
    """Table III at the micro scale: which unified model is the most and the least accurate, over the seed set."""
    paper = 'Table III, micro: ' + _paper_order('micro', 2)
    top1 = {family_of(m): v[2] for m, v in TABLE3.items() if scale_of(m) == 'micro'}
    return [seed_rank(profile, BY_ID[cid], paper, paper_gap(BY_ID[cid], top1))
            for cid in ('acc_halo_best', 'acc_pvt_worst')]


def precision_runs(profile: str, others: Mapping[str, Mapping[str, dict]]) -> List[dict]:
    """The runs kept apart (``others``: folder -> model -> its ``train_<model>.json``) that change only the autocast
    (``amp``) of a run of the 12-epoch seed set (same model, seed, epochs and every other setting): each one's top-1
    beside that run's and the float32 seed set's mean, sample standard deviation and range. ``within``: the run lies
    within two standard deviations of the seeds' mean (None with fewer than two seeds)."""
    rows = []
    for folder, runs in others.items():
        for m, doc in runs.items():
            base = layout.train(layout.seed_folder(profile, doc['config']['train']['seed']), m)
            if not base.exists():
                continue
            base_doc = base.load()
            if set(config_changes(base_doc, doc)) != {'amp'}:
                continue
            seeds = seed_set(profile, 'top1', [m]).get(m)
            scores = sorted(seeds.scores.items()) if seeds else []
            values = [v for _, v in scores]
            mean = statistics.mean(values) if values else None
            sd = statistics.stdev(values) if len(values) > 1 else None
            top1 = doc['records'][-1]['top1_fp16']
            rows.append(dict(model=m, folder=folder, amp=doc['config']['train']['amp'],
                             base_amp=base_doc['config']['train']['amp'], seed=doc['config']['train']['seed'],
                             epochs=doc['config']['train']['epochs'], top1=top1,
                             base_top1=base_doc['records'][-1]['top1_fp16'], seeds=[s for s, _ in scores],
                             seed_mean=mean, seed_sd=sd, seed_range=(min(values), max(values)) if values else None,
                             within=(abs(top1 - mean) <= 2 * sd) if sd else None,
                             cpu=doc['provenance'].get('cpu'), bf16_units=doc['provenance'].get('cpu_bf16_units')))
    return rows


def precision_text(rows: Iterable[dict]) -> str:
    """The reader's account of :func:`precision_runs`: one sentence per run, or '' when there is none."""
    out = []
    for r in rows:
        units = {True: 'with bf16 units', False: 'without bf16 units: bf16 emulated, the same rounding, slower'}
        made = f" (made on {r['cpu']}, {units[r['bf16_units']]})" if r['bf16_units'] is not None else ''
        verdict = ('' if r['within'] is None else
                   f": {'within' if r['within'] else 'outside'} the seeds' spread (two standard deviations)")
        out.append(f"{display_name(r['model'])} trained with `amp` {r['amp']} (`{r['folder']}/`, seed {r['seed']}, "
                   f"{r['epochs']} epochs, every other setting that of the seed set){made}: top-1 {r['top1']:.2f}% "
                   f"against {r['base_top1']:.2f}% for the same run with `amp` {r['base_amp']}; the seed set's "
                   f"{len(r['seeds'])} seeds ({', '.join(map(str, r['seeds']))}) {r['seed_mean']:.2f}% on average"
                   + (f", standard deviation {r['seed_sd']:.2f}, range {r['seed_range'][0]:.2f}-"
                      f"{r['seed_range'][1]:.2f}%" if r['seed_sd'] else '') + verdict + '.')
    return '\n\n'.join(out)


# ------------------------------------------------------------------------------------------------ tables, figures

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


def recipe_markdown(rows: Iterable[dict], columns: Iterable[str]) -> str:
    """Table IV: one row per setting, one column per configuration (rows of :func:`stm_lab.training.config.recipe_table`)."""
    columns = list(columns)
    out = ['| setting | ' + ' | '.join(columns) + ' |', '|---|' + '---|' * len(columns)]
    for r in rows:
        out.append(f'| {r["setting"]} | ' + ' | '.join(str(r[c]) for c in columns) + ' |')
    return '\n'.join(out)


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


def _finish_curves(fig: go.Figure, top1_title: str, loss_title: str) -> go.Figure:
    fig.update_xaxes(title_text='epoch', row=2, col=1)
    fig.update_yaxes(title_text=top1_title, row=1, col=1)
    fig.update_yaxes(title_text=loss_title, row=2, col=1)
    fig.update_layout(template='plotly_white', height=640, margin=dict(l=60, r=20, t=40, b=50),
                      legend=dict(orientation='h', y=-0.12))
    return fig


def training_curves(docs: dict, title_suffix: str = '') -> go.Figure:
    """Validation top-1 (weights: solid, EMA: dotted) and training loss per epoch, one colour per model.
    ``docs``: model -> ``results/<profile>/train_<model>.json`` document."""
    fig = two_panels([f'validation top-1{title_suffix}', f'training loss{title_suffix}'])
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


def comparison_curves(main: dict, other: dict, folder: str) -> go.Figure:
    """Validation top-1 (best of weights and EMA at each evaluation) and training loss of runs kept apart in
    ``folder`` (dashed) beside the main run of the same model (solid), one colour per model;
    ``main``, ``other``: model -> ``train_<model>.json`` document."""
    fig = two_panels(['validation top-1', 'training loss'])
    for runs, which, dash in ((main, 'main run', 'solid'), (other, folder, 'dash')):
        for m, doc in runs.items():
            recs, color, label = doc['records'], color_of(m), f'{display_name(m)}, {which}'
            evals = [r for r in recs if r.get('top1') is not None]
            fig.add_scatter(x=[r['epoch'] for r in evals], y=[max(r['top1'], r.get('ema_top1') or 0) for r in evals],
                            mode='lines+markers', name=label, legendgroup=label, line=dict(color=color, dash=dash),
                            hovertemplate='epoch %{x}: top-1 %{y:.2f}%<extra>' + label + '</extra>', row=1, col=1)
            _add_loss(fig, recs, label, label, color, dash)
    return _finish_curves(fig, 'top-1 (%), best of weights and EMA', loss_label([*main.values(), *other.values()]))


def original_vs_unified(ours: Dict[str, float], ours_label: str) -> go.Figure:
    """Fig. 1: each STM's originally reported top-1 (its own paper, ~30M models), its unified re-implementation
    (Table III, tiny) and our micro models (``ours``: family -> top-1, on another task; ``ours_label`` says which)."""
    fams = list(ORIGINAL_TINY)
    labels = [stm_name(f) for f in fams]
    fig = go.Figure()
    fig.add_scatter(x=labels, y=[ORIGINAL_TINY[f][1] for f in fams], mode='markers+lines', name='original (own paper)',
                    text=[ORIGINAL_TINY[f][0] for f in fams], line=dict(color='#888', dash='dot'),
                    marker=dict(size=10, symbol='square-open', color='#555'),
                    hovertemplate='%{text}: %{y:.1f}%<extra>original</extra>')
    fig.add_scatter(x=labels, y=[TABLE3[f'u_{f}_tiny'][2] for f in fams], mode='markers+lines',
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
