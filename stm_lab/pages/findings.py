"""The Findings page: every claim of the paper that this project tests, with the paper's evidence, ours, the noise
behind ours and a verdict (each page module checks its own claims with :mod:`stm_lab.claims`; this one gathers
them), and which of the paper's tables and figures are reproduced here."""
from __future__ import annotations

from typing import Dict, Iterable, List, Sequence

import plotly.graph_objects as go

from .. import layout, profiles
from ..ablations import CONSISTENCY_IMAGES, planned_runs
from ..claims import REGISTRY, Result, Verdict
from .ablations import ablation_results
from .detection import detection_results
from .robustness import robustness_results
from .speed import speed_results
from .training import accuracy_results

NOT_YET = Verdict.NOT_MEASURED.value
VERDICT_COLORS = {'agrees': '#1a9850', 'does not agree': '#d73027', 'cannot tell at this scale': '#7f7f7f',
                  'not yet measured': '#bdbdbd'}
PROFILE = profiles.DEFAULT  # the coverage is that of the committed results
DETECTION_SETTING = ('micro backbones in Mask R-CNN with slim heads, on a generated shapes set in COCO format at '
                     '160 px (paper: COCO at 800 px)')


def results_of(profile: str) -> List[Result]:
    """Every registered claim checked, page by page (the registry's order)."""
    got = {r.claim.id: r for r in (accuracy_results(profile) + ablation_results(profile) + speed_results()
                                   + robustness_results(profile) + detection_results(profile))}
    missing = [c.id for c in REGISTRY if c.id not in got]
    if missing:
        raise KeyError(f'claims registered but not checked: {", ".join(missing)}')
    return [got[c.id] for c in REGISTRY]


def findings(profile: str) -> List[dict]:
    """Every tested claim as a Findings table row (:meth:`stm_lab.claims.Result.row`)."""
    return [r.row() for r in results_of(profile)]


def verdict_counts(rows: List[dict]) -> Dict[str, int]:
    """How many claims (:func:`findings` rows) there are and how many of them agree, do not agree, cannot tell at
    this scale, and are not yet measured."""
    n = {v: sum(r['verdict'] == v.value for r in rows) for v in Verdict}
    return dict(total=len(rows), agree=n[Verdict.AGREES], disagree=n[Verdict.DISAGREES],
                cannot=n[Verdict.CANNOT_TELL], not_yet=n[Verdict.NOT_MEASURED])


def headline(rows: List[dict]) -> str:
    """Two sentences for the landing page, from the :func:`findings` rows: how many claims were decided, and the
    strongest agreement and disagreement (largest |effect| / noise among the decided difference claims)."""
    c = verdict_counts(rows)

    def n(k, one, many):
        return f'{k} {one if k == 1 else many}'
    text = (f'Of the paper\'s {c["total"]} claims tested here, {c["agree"] + c["disagree"]} '
            f'{"is" if c["agree"] + c["disagree"] == 1 else "are"} decided at this scale ({n(c["agree"], "agrees", "agree")}, '
            f'{n(c["disagree"], "does not", "do not")}) and {c["cannot"]} cannot be told apart from the noise'
            + (f'; {n(c["not_yet"], "is", "are")} not yet measured.' if c['not_yet'] else '.'))

    def strongest(verdict):
        decided = [r for r in rows if r['verdict'] == verdict.value and r['se']]
        return max(decided, key=lambda r: abs(r['effect']) / r['se'], default=None)
    parts = []
    for verdict, word in ((Verdict.AGREES, 'agreement'), (Verdict.DISAGREES, 'disagreement')):
        r = strongest(verdict)
        if r:
            parts.append(f'the strongest {word} is "{r["claim"]}" ({r["effect"]:+.1f} {r["unit"]}, '
                         f'{abs(r["effect"]) / r["se"]:.1f} standard errors)')
    return text + (' ' + '; '.join(parts).capitalize()[0] + '; '.join(parts)[1:] + '.' if parts else '')


def by_page(rows: List[dict]) -> Dict[str, List[dict]]:
    """The :func:`findings` rows grouped by page, pages in their first appearance's order."""
    out: Dict[str, List[dict]] = {}
    for r in rows:
        out.setdefault(r['page'], []).append(r)
    return out


# ------------------------------------------------------------------------------------------------ coverage

def _coverage_items(p: str = PROFILE) -> tuple:
    """(paper item, what it is, the result files it needs (:mod:`stm_lab.layout`), where the setting differs)."""
    prof = profiles.get(p)
    runs = planned_runs(p)

    def ablation(table, seed=0):
        return [layout.train(layout.folder(p, r.subdir), r.model) for r in runs if r.table == table and r.seed == seed]
    complexity, accuracy = layout.analysis('paper', 'table3_complexity'), layout.analysis(p, 'table3_accuracy')
    detection, erf = layout.analysis(p, 'detection'), layout.analysis(p, 'erf')
    short = f'{prof.caption}, {prof.seed_epochs} epochs'  # the ablations' and the seed set's runs
    return (
        ('Table I', 'the five spatial token mixers', [complexity],
         'same operators; plain PyTorch plus a compiled DCNv3 core'),
        ('Table II', 'stage and block design', ablation('II'), f'{short} (paper: tiny, ImageNet 224, 300 epochs)'),
        ('Table III', 'parameters and FLOPs', [complexity], 'none: counted at 224 as in the paper'),
        ('Table III', 'accuracy', [accuracy], f'micro models only, {prof.data_short}, {prof.epochs} epochs'),
        ('Table IV', 'training recipe', [accuracy], 'a light form at the cpu profile (no RandAugment, mixup/cutmix, '
         'random erasing); the full recipe at the paper profile'),
        ('Table V', 'detection with Mask R-CNN', [detection], DETECTION_SETTING),
        ('Table VI', 'unified architecture A to ConvNeXt E', ablation('VI'),
         f'{short} (paper: small, ImageNet 224, 300 epochs)'),
        ('Table VII', 'HaloNet local-attention variants', ablation('VII'),
         f'{short}; MACs also at the paper\'s small scale'),
        ('Table VIII', 'throughput', [layout.analysis('bench', 'table8_throughput'),
                                      layout.analysis('bench', 'table8_throughput_micro_cuda')],
         'an H200 GPU and a 2-core CPU (paper: RTX 3090)'),
        ('Fig. 1', 'original vs unified accuracy', [accuracy], 'published numbers beside ours'),
        ('Fig. 5', 'ERF against detection AP', [detection, erf], DETECTION_SETTING),
        ('Fig. 6', 'ERF maps', [erf], 'micro models at 64 px'),
        ('Fig. 7', 'invariance, classification rows', [layout.analysis(p, 'invariance')], 'micro models at 64 px'),
        ('Fig. 7', 'invariance, detection row', [detection], 'the micro detectors on 50 validation images of the '
         'generated set'),
        ('Fig. 7(c)', 'consistency over training', ablation('seed', seed=1),
         f'micro models, {prof.seed_epochs} epochs, {CONSISTENCY_IMAGES[p]} images'),
        ('Fig. 8', 'FGSM robustness', [layout.analysis(p, 'fgsm')], 'micro models at 64 px'),
    )


def coverage() -> List[dict]:
    """Each table and figure of the paper: here (all its results exist), partly here, or not yet here."""
    out = []
    for item, what, needs, setting in _coverage_items():
        have = sum(r.exists() for r in needs)
        status = 'here' if have == len(needs) else ('partly here' if have else 'not yet here')
        out.append(dict(item=item, what=what, status=status, done=have, needed=len(needs),
                        setting=setting if status != 'not yet here' else '-'))
    return out


def coverage_text(cover: List[dict], status: str) -> str:
    """'Table I (the five spatial token mixers), ...': the :func:`coverage` items with a status, or 'none'."""
    return ', '.join(f"{c['item']} ({c['what']})" for c in cover if c['status'] == status) or 'none'


# ------------------------------------------------------------------------------------------------ tables, figures

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
    """:func:`coverage` as the Findings page shows it: each table and figure of the paper, its status (with the runs
    done where it needs several and is not all here) and the setting here."""
    lines = ['| paper | what | status | setting here |', '|---|---|---|---|']
    for c in cover:
        status = c['status'] + (f" ({c['done']} of {c['needed']} runs)" if c['needed'] > 1 and c['status'] != 'here'
                                else '')
        lines.append(f"| {c['item']} | {c['what']} | {status} | {c['setting']} |")
    return '\n'.join(lines)
