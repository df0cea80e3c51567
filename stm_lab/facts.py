"""The numbers and sentences the book's pages state, computed from loaded results: notebooks load, call these,
``glue`` the answers and plot. Each function takes records as the result files hold them (or values read from them)
and returns numbers or text; nothing here reads files, so each is tested on small hand-built records
(``tests/test_facts.py``).

Sections follow the pages: speed (Table VIII), training (Table III accuracy), Table III complexity, ablations and
the lab. The ERF and robustness facts live with their analyses (:mod:`stm_lab.analysis.run`), the detection page's
with :mod:`stm_lab.detection.run`, the findings page's with :mod:`stm_lab.findings`.
"""
from __future__ import annotations

import math
from typing import Dict, Iterable, List, Mapping, Optional, Sequence, Tuple

from .ablations import image_se
from .bench.steps import BASELINE
from .models import display_name
from .paper import TABLE3, TABLE8, TABLE8_SIZES


def names(models: Iterable[str], sep: str = ' > ') -> str:
    """Display names joined (by default as an ordering, fastest or best first)."""
    return sep.join(display_name(m) for m in models)


def values_text(values: Iterable, sep: str = ' and ') -> str:
    """The distinct values, ascending, joined: [22, 12, 22] -> '12 and 22'."""
    return sep.join(map(str, sorted(set(values))))


# ------------------------------------------------------------------------------------------------ speed

MIN_SPEED_RATIO = 0.5  # the speed page's floor: no unified model trains at less than half U-DWConv's speed
SPEED_BASELINE = BASELINE  # the model the speed ratios divide by


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


def ratios_text(ratios: Mapping[str, float], baseline: str = SPEED_BASELINE) -> str:
    """'U-HaloNet 0.84x, ...': every model's ratio but the baseline's, in the records' order."""
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


def paper_speed_order(scale: str = 'micro', size: int = 256) -> List[str]:
    """The paper's Table VIII models of a scale at a size, fastest first."""
    i = TABLE8_SIZES.index(size)
    return sorted((m for m in TABLE8 if m.endswith('_' + scale)), key=lambda m: -TABLE8[m][i])


def fastest_by_size(records: Iterable[dict]) -> Dict[int, str]:
    """Per input size (ascending): the model with the most images/s."""
    return {s: models[0] for s, models in speed_order(records).items()}


def paper_fastest_by_size(scale: str) -> Dict[int, str]:
    """Per Table VIII size: the paper's fastest model of a scale."""
    return {s: max((m for m in TABLE8 if m.endswith('_' + scale)), key=lambda m: TABLE8[m][i])
            for i, s in enumerate(TABLE8_SIZES)}


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


# ------------------------------------------------------------------------------------------------ training

DWCONV_TARGET, TARGET = 70.0, 60.0  # the cpu profile's targets: U-DWConv-micro at least 70%, every model 60%
BUDGET_HOURS, CORES = 3, 2  # the cpu profile's budget: three hours of a two-core machine


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


def budget_text(core_seconds: Mapping[str, float], n_runs: int, cpu: str, source: str,
                hours: float = BUDGET_HOURS, cores: int = CORES) -> str:
    """The core time of the runs (``core_seconds``: model -> core-seconds, from ``train.core_time_estimate``) and
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


def changes_markdown(folder: str, changes: Mapping[str, Mapping[str, tuple]]) -> str:
    """What each run kept apart in ``folder`` changed against its main run (``changes``: model -> {setting: (main,
    this)}, from ``train.config_changes``), as a markdown list under the folder's name."""
    from .figures import setting_text
    lines = [f'**`{folder}`**', '']
    for m, ch in changes.items():
        shown = '; '.join(f'`{k}` {setting_text(a)} → {setting_text(b)}' for k, (a, b) in ch.items()) or 'nothing'
        lines.append(f'- {display_name(m)}: changes {shown}.')
    return '\n'.join(lines)


def original_texts() -> Dict[str, str]:
    """family -> 'Swin-T 81.3%': each mixer's originally reported model and accuracy (``paper.ORIGINAL_TINY``)."""
    from .paper import ORIGINAL_TINY
    return {fam: f'{name} {acc}%' for fam, (name, acc, _key) in ORIGINAL_TINY.items()}


# ------------------------------------------------------------------------------------------------ Table III complexity

PARAMS_TOLERANCE, MACS_TOLERANCE = 0.03, 0.10  # parameters within 3% of Table III, MACs within 10% of its FLOPs


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
    return [r for r in records if r['model'].startswith(f'u_{family}_')]


def record_of(records: Iterable[dict], model: str) -> dict:
    """The record of one model."""
    return next(r for r in records if r['model'] == model)


def position_params_m(records: Iterable[dict], model: str) -> float:
    """A model's parameters in position tables (millions): all parameters less those without position tables."""
    r = record_of(records, model)
    return r['params_m'] - r['params_no_pos_m']


# ------------------------------------------------------------------------------------------------ ablations

DECIDED = ('agrees', 'does not agree')  # the verdicts that decide a claim (stm_lab.claims.Verdict)


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


# ------------------------------------------------------------------------------------------------ the lab

def lab_weights_text(n_bytes: int, n_models: int) -> str:
    """How the lab's models are stored and how large they are."""
    return ('weights stored as int8, one scale per output channel, computed in float32; '
            f'{n_bytes / 1e6:.1f} MB for the {n_models} models')


LAB_EXPORT_KEYS = ('fp32_diff', 'int8_diff', 'int8_agree', 'n_val')
LAB_BROWSER_KEYS = ('ms', 'update_ms', 'first_s', 'browser', 'mb', 'load')


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
