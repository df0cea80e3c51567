"""What the reproduction found: every claim of the paper that this project tests, with the paper's evidence, ours,
the noise behind ours and a verdict, computed from ``results/`` (the book's Findings page shows it).

Verdicts: ``agrees`` / ``does not agree`` only when our deciding difference is beyond twice its noise;
``cannot tell at this scale`` when it is not; ``not yet measured`` when the results do not exist yet. The noise is
the image-sampling standard error and, where a second seed exists, the seed-to-seed spread (stm_lab.ablations).
"""
from __future__ import annotations

import json
from typing import Dict, List, Optional

from . import ablations, results
from .models import display_name
from .paper import TABLE3, TABLE8

VERDICTS = ('agrees', 'does not agree', 'cannot tell at this scale', 'not yet measured',
            ablations.NO_LOSS)
NOT_YET = 'not yet measured'


def _load(profile: str, name: str) -> Optional[dict]:
    try:
        return results.load_result(profile, name)
    except FileNotFoundError:
        return None


def _row(page: str, claim: str, paper: str, ours: str, noise: str, verdict: str) -> dict:
    assert verdict in VERDICTS, verdict
    return dict(page=page, claim=claim, paper=paper, ours=ours, noise=noise, verdict=verdict)


def _from_rank(page: str, claim: Optional[dict], text: str, paper: str) -> dict:
    """A row from :func:`stm_lab.analysis.run.rank_claim` (None: not measured)."""
    if claim is None:
        return _row(page, text, paper, '-', '-', NOT_YET)
    verdict = 'cannot tell at this scale' if claim['separable'] is False else claim['verdict']
    noise = claim['noise'].strip('()') if claim['noise'] else 'no image counts recorded'
    return _row(page, text, paper, claim['ranking'], noise, verdict)


def _paper_order(scale: str, index: int, reverse: bool = True) -> str:
    models = sorted((m for m in TABLE3 if m.endswith('_' + scale)), key=lambda m: TABLE3[m][index], reverse=reverse)
    return ', '.join(f'{display_name(m)} {TABLE3[m][index]}' for m in models)


def accuracy_findings(profile: str) -> List[dict]:
    """Table III at the micro scale: which unified model is the most and the least accurate."""
    from .analysis.run import rank_claim
    from .training.config import MICRO_MODELS, SMOKE_MODELS
    from .training.reports import summary
    rows = summary(profile, models=SMOKE_MODELS if profile == 'smoke' else MICRO_MODELS)
    docs = {r['model']: _load(profile, f'train_{r["model"]}') for r in rows}
    scores = {r['model']: r['top1'] / 100 for r in rows}
    n = {m: d['records'][-1].get('val_images') for m, d in docs.items() if d}
    paper = 'Table III, micro: ' + _paper_order('micro', 2)
    page = 'Training'
    return [_from_rank(page, rank_claim('', 'top-1', scores, n, {'halonet'}, 'top'),
                       'In the unified architecture, halo attention is the most accurate mixer (micro scale)', paper),
            _from_rank(page, rank_claim('', 'top-1', scores, n, {'pvt'}, 'bottom'),
                       'SR attention (U-PVT) is the least accurate (micro scale)', paper)]


def robustness_findings(profile: str) -> List[dict]:
    """Sec. 6.2-6.3 (Figs. 7 and 8), from the invariance and FGSM results."""
    from .analysis.run import paper_claims
    inv, adv = _load(profile, 'invariance'), _load(profile, 'fgsm')
    claims = paper_claims(inv['records'] if inv else [], adv['records'] if adv else [])
    texts = {'shift_conv_best': ('Convolution mixers (DW-Conv, DCNv3) are the most translation-invariant', 'Fig. 7, row 1'),
             'shift_pvt_worst': ('SR attention (U-PVT) is the least translation-invariant', 'Fig. 7, row 1'),
             'rotation_dcn_best': ('DCNv3 is the most rotation-invariant', 'Fig. 7, row 2'),
             'scale_dcn_best': ('DCNv3 is the most scale-invariant', 'Fig. 7, row 3'),
             'fgsm_halo_dcn_best': ('U-HaloNet and U-InternImage are the most robust to FGSM', 'Fig. 8'),
             'fgsm_pvt_worst': ('U-PVT is the least robust to FGSM', 'Fig. 8')}
    return [_from_rank('Robustness', claims.get(cid), text, paper) for cid, (text, paper) in texts.items()]


def ablation_findings(profile: str) -> List[dict]:
    """Tables II, VI and VII (stm_lab.ablations)."""
    out = []
    for c in ablations.claims(profile):
        ours = '-' if c['ours'] is None else f'{c["ours"]:+.2f} points'
        noise = '-' if c['noise'] is None else f'1 sd {c["noise"]:.2f} points'
        out.append(_row('Ablations', c['claim'], f'{c["paper"]:+.2f} points', ours, noise, c['verdict']))
    return out


def speed_findings() -> List[dict]:
    """Table VIII: the fastest and slowest micro model at 256 px on a GPU (the paper: an RTX 3090)."""
    doc = _load('bench', 'table8_throughput_micro_cuda')
    micro = {m: v[0] for m, v in TABLE8.items() if m.endswith('_micro')}
    paper_fast, paper_slow = max(micro, key=micro.get), min(micro, key=micro.get)
    rows = []
    for claim, paper_model, pick in (('fastest', paper_fast, max), ('slowest', paper_slow, min)):
        text = f'{display_name(paper_model)} is the {claim} micro model at 256x256 on a GPU'
        paper = f'Table VIII (RTX 3090): {display_name(paper_model)} {micro[paper_model]} img/s'
        if doc is None:
            rows.append(_row('Speed', text, paper, '-', '-', NOT_YET))
            continue
        ours = {r['model']: r['images_per_sec'] for r in doc['records'] if r['img_size'] == 256}
        found = pick(ours, key=ours.get)
        rows.append(_row('Speed', text, paper, f'{doc["provenance"].get("gpu")}: {display_name(found)} '
                         f'{ours[found]:.0f} img/s', 'timing of one run (no sampling noise)',
                         'agrees' if found == paper_model else 'does not agree'))
    return rows


def detection_findings(profile: str = 'cpu') -> List[dict]:
    """Table V, Fig. 5 and the detection row of Fig. 7, from ``results/<profile>/detection.json``
    (stm_lab.detection.run): box AP rankings with paired-bootstrap noise, ERF@50 against AP_S/M/L, and box
    consistency when upscaling."""
    from .detection.run import claims
    from .paper import TABLE5_MICRO
    c = claims(profile)
    order = sorted(TABLE5_MICRO, key=lambda m: -TABLE5_MICRO[m][0])
    table5 = 'Table V, micro (COCO box AP): ' + ', '.join(f'{display_name(m)} {TABLE5_MICRO[m][0]}'
                                                          for m in order)
    page = 'Detection'
    rows = [_from_rank(page, c['best'], 'DCNv3 and halo attention give the best box AP (Table V)', table5),
            _from_rank(page, c['pvt_worst'], 'SR attention (U-PVT) gives the lowest box AP (Table V, micro)', table5)]
    text, paper = ('A larger ERF does not mean better detection (Fig. 5)',
                   'Fig. 5: U-HaloNet detects as well as U-InternImage with a smaller ERF@50')
    e = c['erf']
    rows.append(_row(page, text, paper, '-', '-', NOT_YET) if e is None else
                _row(page, text, paper, e['ranking'], e['noise'], e['verdict']))
    rows.append(_from_rank(page, c['scale_dcn_best'], 'DCNv3 is the most scale-invariant detector when upscaling '
                                                      '(Fig. 7, detection row)',
                           'Fig. 7, row 3: DCNv3 keeps the highest box consistency for scales above 1'))
    return rows


def findings(profile: str) -> List[dict]:
    """Every tested claim, page by page."""
    return (accuracy_findings(profile) + ablation_findings(profile) + speed_findings() + robustness_findings(profile)
            + detection_findings(profile))


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
    """How many claims (:func:`findings` rows) there are and how many of them agree (an ablation's 'no loss beyond
    the noise' included), do not agree, cannot tell at this scale, and are not yet measured."""
    n = {v: sum(r['verdict'] == v for r in rows) for v in VERDICTS}
    return dict(total=len(rows), agree=n['agrees'] + n[ablations.NO_LOSS], disagree=n['does not agree'],
                cannot=n['cannot tell at this scale'], not_yet=n[NOT_YET])


def coverage_text(cover: List[dict], status: str) -> str:
    """'Table I (the five spatial token mixers), ...': the :func:`coverage` items with a status, or 'none'."""
    return ', '.join(f"{c['item']} ({c['what']})" for c in cover if c['status'] == status) or 'none'


def by_page(rows: List[dict]) -> Dict[str, List[dict]]:
    """The :func:`findings` rows grouped by page, pages in their first appearance's order."""
    out: Dict[str, List[dict]] = {}
    for r in rows:
        out.setdefault(r['page'], []).append(r)
    return out
