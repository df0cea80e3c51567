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
from .models import display_name
from .paper import TABLE3, TABLE8, TABLE8_SIZES


def names(models: Iterable[str], sep: str = ' > ') -> str:
    """Display names joined (by default as an ordering, fastest or best first)."""
    return sep.join(display_name(m) for m in models)


# ------------------------------------------------------------------------------------------------ speed

MIN_SPEED_RATIO = 0.5  # the speed page's floor: no unified model trains at less than half U-DWConv's speed
SPEED_BASELINE = 'u_dwconv_micro'


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
