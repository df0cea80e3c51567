"""The Ablations page: Tables II, VI and VII beside the paper's (:func:`stm_lab.ablations.ablation_rows`), the noise
of their differences, and the ablation claims decided by :mod:`stm_lab.claims`. Nothing here trains."""
from __future__ import annotations

import math
from typing import Iterable, List, Optional, Sequence, Tuple

import plotly.graph_objects as go

from .. import ablations
from ..claims import BY_ID, Result, check_difference
from ..profiles import PROFILES
from .common import family_color, signed, stm_name
from .training import mean_top1_se

VARIANT_NAMES = {'B': 'B: LN after pooling', 'C': 'C: B without stage norms', 'D': "D: ConvNeXt's block",
                 'E': "E: D with C's norms", 'switch': 'Halo-Switch', '1px': 'Halo-1px', 'shift': 'Halo-Shift',
                 'patchds': 'non-overlapped stem and downsampling', 'resblock': "HaloNet's own bottleneck block"}
DECIDED = ('agrees', 'does not agree')  # the verdicts that decide a claim (stm_lab.claims.Verdict)
ABLATION_COMPLEXITY_MODELS = ('u_swin_small', 'u_halonet_small', 'u_halonet_small_switch', 'u_halonet_small_1px',
                              'u_halonet_small_shift', 'u_halonet_micro', 'u_halonet_micro_switch',
                              'u_halonet_micro_1px', 'u_halonet_micro_shift')


# ------------------------------------------------------------------------------------------------ facts

def measured_text(rows: Sequence[dict]) -> str:
    """'k of n': how many of the rows (``ablations.ablation_rows``) have a result (``ours`` not None)."""
    return f'{sum(r["ours"] is not None for r in rows)} of {len(rows)}'


def decided_text(claims: Sequence[dict]) -> str:
    """'k of n': how many claims (Findings rows) have a deciding verdict (agrees or does not agree)."""
    return f'{sum(c["verdict"] in DECIDED for c in claims)} of {len(claims)}'


def baseline_noise(baselines: Sequence[dict]) -> Tuple[int, Optional[float], Optional[float]]:
    """From the A models' records (``ablations.baseline``: ``top1_fp16``, ``val_images``): (validation images, the
    binomial standard error of one model's top-1 at their mean, that of a difference of two models: sqrt(2) times
    it), in points; (0, None, None) without baselines."""
    n = baselines[0]['val_images'] if baselines else 0
    if not n:
        return 0, None, None
    se = mean_top1_se([a['top1_fp16'] for a in baselines], n)
    return n, se, math.sqrt(2) * se


def seed_text(sd: Optional[float], n_seed: int) -> str:
    """The seed-to-seed standard deviation of a run's top-1, where the second-seed runs exist."""
    if sd is None:
        return ('not measured yet (the second-seed runs have not finished), so the noise below is the image '
                'sampling alone and understates the true noise')
    return f'{sd:.2f} points (pooled over the {n_seed} A models of the 12-epoch seed set, each trained with several seeds)'


def ablation_results(profile: str) -> List[Result]:
    """Tables II, VI and VII (:func:`stm_lab.ablations.claims`: effects and noise in top-1 points)."""
    out = []
    for cid, c in ablations.claims(profile).items():
        noise = None if c['noise'] is None else (f'SE {c["noise"]:.2f} points (each variant one run, A the mean of '
                                                 f'its seeds; seed sd {c["seed_sd"]:.2f})')
        out.append(check_difference(BY_ID[cid], c['ours'], c['noise'], noise_text=noise or '-',
                                    paper='-' if c['paper'] is None else f'{c["paper"]:+.2f} points',
                                    paper_effect=c['paper']))
    return out


# ------------------------------------------------------------------------------------------------ tables, figures

def ablation_markdown(rows: Iterable[dict], table: str) -> str:
    """One paper table (``'II'``, ``'VI'``, ``'VII'``): the paper's top-1 and ours, each with its difference to its own
    A, ours with two standard deviations of noise (rows of :func:`stm_lab.ablations.ablation_rows`)."""
    out = ['| STM | variant | paper (- A) | ours (- A, ± 2 sd) | beyond noise? |', '|---|---|---:|---:|---|']
    for r in rows:
        if r['table'] != table:
            continue
        ours = (f'{r["ours"]:.2f} ({signed(r["diff"])} ± {2 * r["noise"]:.2f})' if r['ours'] is not None
                else 'not yet run')
        beyond = '-' if r['beyond_noise'] is None else ('yes' if r['beyond_noise'] else 'no')
        out.append(f'| {stm_name(r["family"])} | {VARIANT_NAMES[r["variant"]]} '
                   f'| {r["paper"]} ({signed(r["paper_diff"], 1)}) | {ours} | {beyond} |')
    return '\n'.join(out)


def claims_markdown(claims: Iterable[dict]) -> str:
    """The paper's claims (:meth:`stm_lab.claims.Result.row`) with the paper's difference, ours with two standard
    errors (top-1 points), and the verdict."""
    out = ['| claim | paper | ours (± 2 SE) | verdict |', '|---|---:|---:|---|']
    for c in claims:
        ours = '-' if c['effect'] is None else f'{signed(c["effect"])} ± {2 * c["se"]:.2f}'
        out.append(f'| {c["claim"]} | {signed(c["paper_effect"])} | {ours} | {c["verdict"]} |')
    return '\n'.join(out)


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
    rows = list(rows)
    labels = [f'{stm_name(r["family"])} {r["variant"]}' for r in rows]
    colors = [family_color(r['family']) for r in rows]
    fig = go.Figure()
    fig.add_bar(x=labels, y=[r['diff'] for r in rows], marker_color=colors,
                name=f'ours (micro, {PROFILES["cpu"].data_short})',
                error_y=dict(type='data', array=[2 * r['noise'] if r['noise'] else 0 for r in rows], visible=True),
                hovertemplate='%{x}: %{y:+.2f} points<extra>ours</extra>')
    fig.add_scatter(x=labels, y=[r['paper_diff'] for r in rows], mode='markers', name='paper (ImageNet, 224 px)',
                    marker=dict(symbol='diamond-open', size=10, color='black'),
                    hovertemplate='%{x}: %{y:+.1f} points<extra>paper</extra>')
    fig.update_layout(template='plotly_white', height=420, margin=dict(l=60, r=10, t=20, b=110),
                      yaxis_title='top-1 minus A (points)', legend=dict(orientation='h', y=1.08, x=0),
                      xaxis=dict(tickangle=-60, automargin=True))
    return fig
