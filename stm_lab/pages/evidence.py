"""The evidence several pages read: the 12-epoch seed set (every seed's training result and, where made, its per-image
outcomes), which decides the model-vs-model claims of the Training, Robustness and ERF pages, and the helpers that
check a ranking claim against it (:mod:`stm_lab.claims` decides)."""
from __future__ import annotations

import json
from typing import Dict, List, Optional, Sequence

import numpy as np

from .. import layout, profiles
from ..analysis import outcomes
from ..claims import SEEDS, Claim, Result, Runs, check_rank, deciding_pair
from ..models import display_name, family_of, main_models


def final_record(profile: str, seed: int, model: str) -> Optional[dict]:
    """The last record (final top-1, validation images) of a seed-set run, or None when it has not been made."""
    result = layout.train(layout.seed_folder(profile, seed), model)
    return result.load()['records'][-1] if result.exists() else None


def roster(profile: str) -> List[str]:
    """The models of the seed set: the main models at the profile's scale."""
    return main_models(profiles.get(profile).scale)


def seed_set(profile: str, metric: str, models: Optional[Sequence[str]] = None) -> Dict[str, Runs]:
    """model -> its :class:`~stm_lab.claims.Runs` of a metric over the 12-epoch seed set: 'top1' (the exported
    weights' top-1 of every seed's training; per-image correctness where the seed's outcomes were made), 'shift',
    'rotation', 'scale' (mean consistency over the non-zero views), 'fgsm' (mean top-1 over the non-zero epsilons),
    from the seeds with per-image outcomes (:mod:`stm_lab.analysis.outcomes`). Models with no score are left out."""
    out = {}
    for model in models or roster(profile):
        scores, rows, n = {}, [], None
        for s in SEEDS:
            arrays = outcomes.load(profile, s, model)
            if metric == 'top1':
                rec = final_record(profile, s, model)
                if rec is None:
                    continue
                scores[s], n = rec['top1_fp16'], rec.get('val_images')
                if arrays is not None:
                    rows.append(outcomes.correct(arrays, 'clean'))
            elif arrays is not None:
                per = (outcomes.correct(arrays, 'fgsm') if metric == 'fgsm'
                       else outcomes.consistency(arrays, metric))
                rows.append(per)
                scores[s], n = 100 * float(per.mean()), len(per)
        if scores:
            out[model] = Runs(model, scores, np.stack(rows) if rows else None, n)
    return out


def _seeds_text(seeds: Sequence[int]) -> str:
    return ', '.join(map(str, seeds)) or 'none'


def seed_set_text(profile: str) -> str:
    """Which seeds of the 12-epoch seed set each model has (training results, and per-image outcomes with their
    image counts)."""
    models = roster(profile)
    trained = {m: [s for s in SEEDS if final_record(profile, s, m)] for m in models}
    analysed = {m: outcomes.seeds_with_outcomes(profile, m, SEEDS) for m in models}
    groups: Dict[tuple, List[str]] = {}
    for m in models:
        groups.setdefault((tuple(trained[m]), tuple(analysed[m])), []).append(display_name(m))
    parts = []
    for (t, a), names in groups.items():
        who = 'every model' if len(groups) == 1 else ', '.join(names)
        parts.append(f'{who}: trained with seeds {_seeds_text(t)}, '
                     + (f'per-image outcomes of seed{"s" if len(a) > 1 else ""} {_seeds_text(a)}' if a
                        else 'no per-image outcomes yet'))
    sizes = ''
    for m in models:
        if analysed[m]:
            doc = json.loads(layout.outcomes(profile, analysed[m][0], m)[0].read_text())['config']
            inv = ('all of them' if doc['invariance_images'] == doc['images']
                   else f'a fixed subset of {doc["invariance_images"]:,}')
            sizes = f' (top-1 and FGSM on all {doc["images"]:,} validation images, every invariance view on {inv})'
            break
    return '; '.join(parts) + sizes


def seed_rank(profile: str, claim: Claim, paper: str = '-', paper_effect: Optional[float] = None) -> Result:
    """A ranking claim decided over the seed set's runs of its metric."""
    return check_rank(claim, seed_set(profile, claim.metric), family_of, display_name, paper_effect, paper)


def paper_gap(claim: Claim, values: Dict[str, float]) -> Optional[float]:
    """The paper's value of a ranking claim's deciding difference (``values``: family -> the paper's number)."""
    pair = deciding_pair(values, claim.families, claim.at, lambda f: f)
    return None if pair is None else round(values[pair[0]] - values[pair[1]], 2)
