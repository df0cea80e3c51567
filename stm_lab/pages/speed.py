"""The Speed page: training and inference speed of the micro models on this machine (``results/bench/``), where a
training step goes, and Table VIII's protocol on the CPU and on a GPU beside the paper's, with its speed claims."""
from __future__ import annotations

from typing import Dict, Iterable, List, Mapping, Tuple

import plotly.graph_objects as go

from .. import layout
from ..claims import BY_ID, Claim, Result, Verdict
from ..models import display_name, scale_of
from ..paper import TABLE8, TABLE8_SIZES
from .common import color_of, models_in_order, names

MIN_SPEED_RATIO = 0.5  # the speed page's floor: no unified model trains at less than half U-DWConv's speed


# ------------------------------------------------------------------------------------------------ facts

def train_ratios(records: Iterable[dict]) -> Dict[str, float]:
    """Training images/s relative to U-DWConv (``ratio_to_dwconv``), per model, from ``train_speed.json``."""
    return {r['model']: r['ratio_to_dwconv'] for r in records if r['mode'] == 'train'}


def train_images_per_sec(records: Iterable[dict], model: str) -> float:
    """A model's training images/s in ``train_speed.json``."""
    return next(r['images_per_sec'] for r in records if r['mode'] == 'train' and r['model'] == model)


def slowest_unified(ratios: Mapping[str, float]) -> str:
    """The unified (``u_*``) model with the lowest speed ratio (the first of equals)."""
    return min((m for m in ratios if m.startswith('u_')), key=ratios.get)


def train_speed_ratio(records: Iterable[dict], a: str, b: str) -> float:
    """Training images/s of model ``a`` over model ``b``."""
    return train_images_per_sec(records, a) / train_images_per_sec(records, b)


def ratio_text(model: str, ratio: float) -> str:
    """'U-HaloNet at 0.84x'."""
    return f'{display_name(model)} at {ratio:.2f}x'


def floor_verdict(value: float, floor: float = MIN_SPEED_RATIO) -> str:
    """'meets' when ``value`` is at least ``floor``, else 'misses'."""
    return 'meets' if value >= floor else 'misses'


def ratios_text(ratios: Mapping[str, float], baseline: str) -> str:
    """'U-HaloNet 0.84x, ...': every model's ratio but the baseline's (``train_speed.json``'s ``config.baseline``,
    the model the ratios divide by), in the records' order."""
    return ', '.join(f'{display_name(m)} {v:.2f}x' for m, v in ratios.items() if m != baseline)


def profile_parts(records: Iterable[dict]) -> Dict[str, Dict[str, float]]:
    """``train_profile.json`` -> {model: {part: ms per training step}} (part 'total' is the whole step)."""
    return {r['model']: {p['part']: p['ms'] for p in r['parts']} for r in records}


def stages_ms(parts: Mapping[str, float]) -> float:
    """Milliseconds in the stages (token mixers, MLPs, norms and the downsampling between stages) of one model's
    :func:`profile_parts` entry."""
    return sum(v for k, v in parts.items() if k.startswith(('stages.', 'layers.')))


def outside_stages_ms(parts: Mapping[str, float]) -> float:
    """Milliseconds of a training step outside the stages (stem, head, loss, optimizer, glue)."""
    return parts['total'] - stages_ms(parts)


def profile_totals_text(parts: Mapping[str, Mapping[str, float]]) -> str:
    """'U-Swin Transformer 557 ms, ...': each profiled model's milliseconds per training step."""
    return ', '.join(f"{display_name(m)} {p['total']:.0f} ms" for m, p in parts.items())


def profile_comparison(parts: Mapping[str, Mapping[str, float]], a: str = 'u_swin_micro',
                       b: str = 'timm_swin_micro') -> Tuple[str, str]:
    """('<a> ms against <b> ms' in the stages, the same outside them), or ('n/a', 'n/a') when either was not
    profiled."""
    if not {a, b} <= set(parts):
        return 'n/a', 'n/a'
    return (f'{stages_ms(parts[a]):.0f} ms against {stages_ms(parts[b]):.0f} ms',
            f'{outside_stages_ms(parts[a]):.0f} ms against {outside_stages_ms(parts[b]):.0f} ms')


def speed_order(records: Iterable[dict]) -> Dict[int, List[str]]:
    """Per input size (ascending): the models, fastest (most images/s) first."""
    records = list(records)
    return {s: [r['model'] for r in sorted((r for r in records if r['img_size'] == s), key=lambda r: -r['images_per_sec'])]
            for s in sorted({r['img_size'] for r in records})}


def speed_order_text(records: Iterable[dict]) -> str:
    """'256: U-DWConv > U-PVT > ...; 512: ...': :func:`speed_order` in display names."""
    return '; '.join(f'{s}: {names(models)}' for s, models in speed_order(records).items())


def _paper_models(scale: str) -> List[str]:
    return [m for m in TABLE8 if scale_of(m) == scale]


def paper_speed_order(scale: str = 'micro', size: int = 256) -> List[str]:
    """The paper's Table VIII models of a scale at a size, fastest first."""
    i = TABLE8_SIZES.index(size)
    return sorted(_paper_models(scale), key=lambda m: -TABLE8[m][i])


def fastest_by_size(records: Iterable[dict]) -> Dict[int, str]:
    """Per input size (ascending): the model with the most images/s."""
    return {s: models[0] for s, models in speed_order(records).items()}


def paper_fastest_by_size(scale: str) -> Dict[int, str]:
    """Per Table VIII size: the paper's fastest model of a scale."""
    return {s: max(_paper_models(scale), key=lambda m: TABLE8[m][i]) for i, s in enumerate(TABLE8_SIZES)}


def fastest_text(by_size: Mapping[int, str]) -> str:
    """{size: model} -> 'U-X at every size' when one model is fastest at every size, else '256: U-X, 512: U-Y'."""
    shown = {s: display_name(m) for s, m in by_size.items()}
    if len(set(shown.values())) == 1:
        return f'{next(iter(shown.values()))} at every size'
    return ', '.join(f'{s}: {n}' for s, n in shown.items())


def pair_agreement_text(agreement: Mapping[int, Tuple[int, int]]) -> str:
    """{size: (pairs ordered as the paper orders them, pairs)} -> '256: 7 of 10, 512: 6 of 10'."""
    return ', '.join(f'{s}: {a} of {n}' for s, (a, n) in agreement.items())


def by_scale_text(texts: Mapping[str, str]) -> str:
    """{scale: text} -> 'micro: ...; tiny: ...'."""
    return '; '.join(f'{scale}: {t}' for scale, t in texts.items())


def device_text(provenance: Mapping) -> str:
    """'an NVIDIA H200 (PyTorch 2.x, commit abcdef1)' from a GPU measurement's provenance."""
    return f"an {provenance['gpu']} (PyTorch {provenance['torch']}, commit {(provenance['git_sha'] or '?')[:7]})"


def speed_results() -> List[Result]:
    """Table VIII: the fastest and slowest micro model at 256 px on a GPU (the paper: an RTX 3090). A timing of
    one run: no sampling noise, so the verdict is the ranking itself."""
    found = layout.analysis('bench', 'table8_throughput_micro_cuda')
    doc = found.load() if found.exists() else None
    micro = {m: TABLE8[m][0] for m in _paper_models('micro')}
    out = []
    for cid, pick in (('speed_fastest', max), ('speed_slowest', min)):
        claim = BY_ID[cid]
        paper_model = pick(micro, key=micro.get)
        claim = Claim(claim.id, claim.page, f'{display_name(paper_model)} {claim.statement}', claim.paper_ref,
                      claim.kind)
        paper = f'Table VIII (RTX 3090): {display_name(paper_model)} {micro[paper_model]} img/s'
        if doc is None:
            out.append(Result(claim, Verdict.NOT_MEASURED, paper=paper))
            continue
        ours = {r['model']: r['images_per_sec'] for r in doc['records'] if r['img_size'] == 256}
        fastest = pick(ours, key=ours.get)
        out.append(Result(claim, Verdict.AGREES if fastest == paper_model else Verdict.DISAGREES,
                          ours=f'{doc["provenance"].get("gpu")}: {display_name(fastest)} {ours[fastest]:.0f} img/s',
                          noise_text='timing of one run (no sampling noise)', paper=paper, unit='img/s'))
    return out


# ------------------------------------------------------------------------------------------------ tables, figures

def _speed_color(model: str) -> str:
    return '#bcbd22' if model.startswith('timm_') else color_of(model)


def speed_bars(records: Iterable[dict]) -> go.Figure:
    """Images/s relative to U-DWConv per setting (training at 64, inference at 64 and 224), one bar per model;
    ``records``: ``results/bench/train_speed.json``. Hover: the absolute images/s."""
    records = list(records)
    settings = list(dict.fromkeys((r['mode'], r['img_size']) for r in records))
    fig = go.Figure()
    for m in models_in_order(records):
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
    return f'u_dwconv_{scale_of(model)}'


def table8_markdown(records: Iterable[dict]) -> str:
    """Inference images/s here (``results/bench/table8_throughput*.json``) beside the paper's Table VIII (RTX 3090),
    each with its ratio to U-DWConv of the same scale, so that orderings can be compared."""
    records = list(records)
    sizes = sorted({r['img_size'] for r in records})
    by = {(r['model'], r['img_size']): r for r in records}
    head = '| model | ' + ' | '.join(f'{s}: here (batch {by[next(m for m, z in by if z == s), s]["batch_size"]}) '
                                     f'| {s}: paper' for s in sizes) + ' |'
    out = [head, '|---|' + '---:|---:|' * len(sizes)]
    for m in models_in_order(records):
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
