"""What the reproduction found: every claim of the paper that this project tests, with the paper's evidence, ours,
the noise behind ours and a verdict, computed from ``results/`` (the book's Findings page shows it).

The claims and the rule that decides them are :mod:`stm_lab.claims` (one registry, one checker); this module
gathers the evidence each claim needs from ``results/``: the 12-epoch seed set (every seed's training result and,
where made, its per-image outcomes) for the model-vs-model claims, the ablation runs, the detectors, the GPU timing.
"""
from __future__ import annotations

import json
from typing import Dict, List, Optional, Sequence

import numpy as np

from . import ablations, results
from .analysis import outcomes
from .analysis.outcomes import seed_dir
from .claims import (BY_ID, REGISTRY, SEEDS, Claim, Result, Runs, Verdict, check_difference, check_rank,
                     check_rank_draws, deciding_pair)
from .models import display_name, family_of, main_models
from .paper import TABLE3, TABLE8

NOT_YET = Verdict.NOT_MEASURED.value


def _load(profile: str, name: str) -> Optional[dict]:
    try:
        return results.load_result(profile, name)
    except FileNotFoundError:
        return None


def _scale(profile: str) -> str:
    return 'test' if profile == 'smoke' else 'micro'


def _paper_order(scale: str, index: int, reverse: bool = True) -> str:
    models = sorted((m for m in TABLE3 if m.endswith('_' + scale)), key=lambda m: TABLE3[m][index], reverse=reverse)
    return ', '.join(f'{display_name(m)} {TABLE3[m][index]}' for m in models)


def _paper_gap(claim: Claim, values: Dict[str, float]) -> Optional[float]:
    """The paper's value of a ranking claim's deciding difference (``values``: family -> the paper's number)."""
    pair = deciding_pair(values, claim.families, claim.at, lambda f: f)
    return None if pair is None else round(values[pair[0]] - values[pair[1]], 2)


# ------------------------------------------------------------------------------------------------ the seed set

def _final(profile: str, seed: int, model: str) -> Optional[dict]:
    return ablations._final(results.RESULTS_DIR / profile / seed_dir(seed, profile) / f'train_{model}.json')


def seed_set(profile: str, metric: str, models: Optional[Sequence[str]] = None) -> Dict[str, Runs]:
    """model -> its :class:`~stm_lab.claims.Runs` of a metric over the 12-epoch seed set: 'top1' (the exported
    weights' top-1 of every seed's training; per-image correctness where the seed's outcomes were made), 'shift',
    'rotation', 'scale' (mean consistency over the non-zero views), 'fgsm' (mean top-1 over the non-zero epsilons),
    from the seeds with per-image outcomes (:mod:`stm_lab.analysis.outcomes`). Models with no score are left out."""
    out = {}
    for model in models or main_models(_scale(profile)):
        scores, rows, n = {}, [], None
        for s in SEEDS:
            arrays = outcomes.load(profile, s, model)
            if metric == 'top1':
                rec = _final(profile, s, model)
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


def erf_seed_set(profile: str, stage: int, t: float = 0.5, models: Optional[Sequence[str]] = None) -> Dict[str, Runs]:
    """model -> ERF@t of one stage (side of the square, % of the input side) for every seed of the 12-epoch seed
    set with per-image outcomes (each measured on the same 100 images; no per-image rows: the ERF is one map)."""
    out = {}
    for model in models or main_models(_scale(profile)):
        scores = {}
        for s in outcomes.seeds_with_outcomes(profile, model, SEEDS):
            doc = json.loads(outcomes.paths(profile, s, model)[0].read_text())
            at = next(r['erf_at'] for r in doc['summary']['erf'] if r['stage'] == stage)
            scores[s] = 100 * next(a['side_ratio'] for a in at if a['t'] == t)
        if scores:
            out[model] = Runs(model, scores)
    return out


def _seeds_text(seeds: Sequence[int]) -> str:
    return ', '.join(map(str, seeds)) or 'none'


def seed_set_text(profile: str) -> str:
    """Which seeds of the 12-epoch seed set each model has (training results, and per-image outcomes with their
    image counts)."""
    models = main_models(_scale(profile))
    trained = {m: [s for s in SEEDS if _final(profile, s, m)] for m in models}
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
            doc = json.loads(outcomes.paths(profile, analysed[m][0], m)[0].read_text())['config']
            inv = ('all of them' if doc['invariance_images'] == doc['images']
                   else f'a fixed subset of {doc["invariance_images"]:,}')
            sizes = f' (top-1 and FGSM on all {doc["images"]:,} validation images, every invariance view on {inv})'
            break
    return '; '.join(parts) + sizes


def _seed_rank(profile: str, claim: Claim, paper: str = '-', paper_effect: Optional[float] = None) -> Result:
    return check_rank(claim, seed_set(profile, claim.metric), family_of, display_name, paper_effect, paper)


# ------------------------------------------------------------------------------------------------ by page

def accuracy_results(profile: str) -> List[Result]:
    """Table III at the micro scale: which unified model is the most and the least accurate, over the seed set."""
    paper = 'Table III, micro: ' + _paper_order('micro', 2)
    top1 = {family_of(m): v[2] for m, v in TABLE3.items() if m.endswith('_micro')}
    return [_seed_rank(profile, BY_ID[cid], paper, _paper_gap(BY_ID[cid], top1))
            for cid in ('acc_halo_best', 'acc_pvt_worst')]


ROBUSTNESS_IDS = ('shift_conv_best', 'shift_pvt_worst', 'rotation_dcn_best', 'scale_dcn_best', 'fgsm_halo_dcn_best',
                  'fgsm_pvt_worst')


def robustness_results(profile: str) -> List[Result]:
    """Sec. 6.2-6.3 (Figs. 7 and 8), over the seed set's per-image outcomes. The paper shows these as curves
    without printed values, so there is no paper effect to mark."""
    return [_seed_rank(profile, BY_ID[cid], BY_ID[cid].paper_ref) for cid in ROBUSTNESS_IDS]


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


def speed_results() -> List[Result]:
    """Table VIII: the fastest and slowest micro model at 256 px on a GPU (the paper: an RTX 3090). A timing of
    one run: no sampling noise, so the verdict is the ranking itself."""
    doc = _load('bench', 'table8_throughput_micro_cuda')
    micro = {m: v[0] for m, v in TABLE8.items() if m.endswith('_micro')}
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
        found = pick(ours, key=ours.get)
        out.append(Result(claim, Verdict.AGREES if found == paper_model else Verdict.DISAGREES,
                          ours=f'{doc["provenance"].get("gpu")}: {display_name(found)} {ours[found]:.0f} img/s',
                          noise_text='timing of one run (no sampling noise)', paper=paper, unit='img/s'))
    return out


def detection_results(profile: str = 'cpu') -> List[Result]:
    """Table V, Fig. 5 and the detection row of Fig. 7 (:func:`stm_lab.detection.run.claims`: box AP and box
    consistency with paired-bootstrap noise over the images, one detector per backbone)."""
    from .detection.run import claims as detection_claims
    from .paper import TABLE5_MICRO
    c = detection_claims(profile)
    order = sorted(TABLE5_MICRO, key=lambda m: -TABLE5_MICRO[m][0])
    table5 = 'Table V, micro (COCO box AP): ' + ', '.join(f'{display_name(m)} {TABLE5_MICRO[m][0]}' for m in order)
    box = {family_of(m): v[0] for m, v in TABLE5_MICRO.items()}
    out = [check_rank_draws(BY_ID[cid], *c['box'], family_of, display_name, table5, _paper_gap(BY_ID[cid], box),
                            what='box AP') for cid in ('det_best', 'det_pvt_worst')]
    e, claim = c['erf'], BY_ID['det_erf']
    paper = 'Fig. 5: U-HaloNet detects as well as U-InternImage with a smaller ERF@50'
    out.append(Result(claim, Verdict.NOT_MEASURED, paper=paper) if e is None else
               Result(claim, Verdict(e['verdict']), ours=e['ranking'], noise_text=e['noise'], paper=paper,
                      unit='rank correlation'))
    out.append(check_rank_draws(BY_ID['det_scale_dcn_best'], *c['consistency'], family_of, display_name,
                                'Fig. 7, row 3: DCNv3 keeps the highest box consistency for scales above 1',
                                what='box consistency mAP, mean over the upscales 1.25-3'))
    return out


def detection_findings(profile: str = 'cpu') -> List[dict]:
    """The Detection page's rows of the Findings table."""
    return [r.row() for r in detection_results(profile)]


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


DETECTION_SETTING = ('micro backbones in Mask R-CNN with slim heads, on a generated shapes set in COCO format at '
                     '160 px (paper: COCO at 800 px)')
# (paper item, what it is, results it needs (relative to results/), where the setting differs)
COVERAGE = (
    ('Table I', 'the five spatial token mixers', ('paper/table3_complexity.json',), 'same operators; plain PyTorch '
     'plus a compiled DCNv3 core'),
    ('Table II', 'stage and block design', ('cpu/ablations/train_u_halonet_micro_resblock.json',
                                            'cpu/ablations/train_u_swin_micro_patchds.json',
                                            'cpu/ablations/train_u_dwconv_micro_patchds.json'),
     'micro models, Imagenette 64 px, 12 epochs (paper: tiny, ImageNet 224, 300 epochs)'),
    ('Table III', 'parameters and FLOPs', ('paper/table3_complexity.json',), 'none: counted at 224 as in the paper'),
    ('Table III', 'accuracy', ('cpu/table3_accuracy.json',), 'micro models only, Imagenette 64 px, 22 epochs'),
    ('Table IV', 'training recipe', ('cpu/table3_accuracy.json',), 'a light form at the cpu profile (no RandAugment, '
     'mixup/cutmix, random erasing); the full recipe at the paper profile'),
    ('Table V', 'detection with Mask R-CNN', ('cpu/detection.json',), DETECTION_SETTING),
    ('Table VI', 'unified architecture A to ConvNeXt E', tuple(f'cpu/ablations/train_u_{f}_micro_{x}.json'
                                                               for f in ablations.MAIN_FAMILIES for x in 'bcde'),
     'micro models, Imagenette 64 px, 12 epochs (paper: small, ImageNet 224, 300 epochs)'),
    ('Table VII', 'HaloNet local-attention variants', tuple(f'cpu/ablations/train_u_halonet_micro_{v}.json'
                                                            for v in ablations.TABLE7_VARIANTS),
     'micro models, Imagenette 64 px, 12 epochs; MACs also at the paper\'s small scale'),
    ('Table VIII', 'throughput', ('bench/table8_throughput.json', 'bench/table8_throughput_micro_cuda.json'),
     'an H200 GPU and a 2-core CPU (paper: RTX 3090)'),
    ('Fig. 1', 'original vs unified accuracy', ('cpu/table3_accuracy.json',), 'published numbers beside ours'),
    ('Fig. 5', 'ERF against detection AP', ('cpu/detection.json', 'cpu/erf.json'), DETECTION_SETTING),
    ('Fig. 6', 'ERF maps', ('cpu/erf.json',), 'micro models at 64 px'),
    ('Fig. 7', 'invariance, classification rows', ('cpu/invariance.json',), 'micro models at 64 px'),
    ('Fig. 7', 'invariance, detection row', ('cpu/detection.json',), 'the micro detectors on 50 validation images '
     'of the generated set'),
    ('Fig. 7(c)', 'consistency over training', tuple(f'cpu/seed1/train_u_{f}_micro.json' for f in ablations.MAIN_FAMILIES),
     'micro models, 12 epochs, 200 images'),
    ('Fig. 8', 'FGSM robustness', ('cpu/fgsm.json',), 'micro models at 64 px'),
)


def coverage() -> List[dict]:
    """Each table and figure of the paper: here (all its results exist), partly here, or not yet here."""
    out = []
    for item, what, needs, setting in COVERAGE:
        have = sum((results.RESULTS_DIR / p).exists() for p in needs)
        status = 'here' if have == len(needs) else ('partly here' if have else 'not yet here')
        out.append(dict(item=item, what=what, status=status, done=have, needed=len(needs),
                        setting=setting if status != 'not yet here' else '-'))
    return out


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


def coverage_text(cover: List[dict], status: str) -> str:
    """'Table I (the five spatial token mixers), ...': the :func:`coverage` items with a status, or 'none'."""
    return ', '.join(f"{c['item']} ({c['what']})" for c in cover if c['status'] == status) or 'none'


def by_page(rows: List[dict]) -> Dict[str, List[dict]]:
    """The :func:`findings` rows grouped by page, pages in their first appearance's order."""
    out: Dict[str, List[dict]] = {}
    for r in rows:
        out.setdefault(r['page'], []).append(r)
    return out
