"""The paper's claims that this project tests, and the one checker that decides them.

One rule for every claim, fixed before the runs it judges (``../shared/reference/statistics.md`` is its source):

- a claim about a *difference* (one model or variant against another, in points) is decided only when the effect is
  beyond twice its noise: ``agrees`` when it has the claimed sign, ``does not agree`` when it has the other;
  otherwise ``cannot tell at this scale``;
- a claim of *no loss* ("loses little or nothing") agrees only when the whole two-noise interval lies within plus
  or minus its margin (:data:`NO_LOSS_MARGIN`; equivalence, two one-sided tests), does not agree when the whole
  interval is a loss beyond the margin, and otherwise cannot tell: failing to find a loss is not evidence of none;
- a claim about a *ranking* (these families are the most / the least ...) is decided on its deciding pair: the
  claimed models' worst against the best of the others (mirrored for "the least"), as a difference claim.

The noise of a model-vs-model difference (:func:`difference`) adds two terms, neither replacing the other:

- the **seed** term ``s_A^2 / n_A + s_B^2 / n_B``: each model's variance over its training seeds (the 12-epoch seed
  set, :data:`SEEDS`); a model with one seed borrows the pooled seed variance of the models that have several, and
  where none has several the seed term is unknown and a ranking claim is not decided on image noise alone;
- the **image** term: a paired bootstrap over the images (the same resampled images for both models) of the
  per-image difference of the two models' seed-averaged outcomes (:mod:`stm_lab.analysis.outcomes`); without
  per-image outcomes, the binomial standard error of two independent proportions (larger: it ignores pairing).

Every number is in points (percentage points of top-1, of consistency, of AP), so one axis shows them all.
"""
from __future__ import annotations

import enum
import math
from dataclasses import dataclass, field
from typing import Callable, Dict, Optional, Sequence, Tuple

import numpy as np


class Verdict(str, enum.Enum):
    """What a claim's check found (a ``str``: it compares and formats as its text)."""
    AGREES = 'agrees'
    DISAGREES = 'does not agree'
    CANNOT_TELL = 'cannot tell at this scale'
    NOT_MEASURED = 'not yet measured'

    def __str__(self) -> str:
        return self.value


NO_LOSS = 'no loss'
DECIDE_AT = 2.0  # a difference is decided beyond this many standard errors (about a 95% two-sided interval)
NO_LOSS_MARGIN = 1.0  #: points; "little or nothing" is a loss smaller than the paper's one reported loss (Shift -1.3)
BOOTSTRAP_DRAWS = 2000
SEEDS = (0, 1, 2, 3, 4)  #: the 12-epoch seed set of the five micro models (cpu profile)


def decide(effect: Optional[float], noise: Optional[float], expects: str) -> Verdict:
    """The rule. ``expects``: '>0' or '<0' (the claimed sign of ``effect``) or 'no loss' (see the module docstring).
    ``noise`` is one standard error; None (unknown) decides nothing."""
    if effect is None:
        return Verdict.NOT_MEASURED
    if noise is None:
        return Verdict.CANNOT_TELL
    lo, hi = effect - DECIDE_AT * noise, effect + DECIDE_AT * noise
    if expects == NO_LOSS:  # equivalence: the whole interval within the margin either way
        if -NO_LOSS_MARGIN < lo and hi < NO_LOSS_MARGIN:
            return Verdict.AGREES
        return Verdict.DISAGREES if hi < -NO_LOSS_MARGIN else Verdict.CANNOT_TELL
    if expects not in ('>0', '<0'):
        raise ValueError(f"expects must be '>0', '<0' or 'no loss', got {expects!r}")
    if lo <= 0 <= hi:
        return Verdict.CANNOT_TELL
    return Verdict.AGREES if (effect > 0) == (expects == '>0') else Verdict.DISAGREES


# ------------------------------------------------------------------------------------------------ noise

@dataclass
class Runs:
    """One model's measurements of a metric (points): a score per training seed, and per-image outcomes (one row
    per seed that has them, columns = the same images for every model) when they were made."""
    model: str
    scores: Dict[int, float]
    per_image: Optional[np.ndarray] = None  # (seeds with outcomes, images), values in [0, 1]
    n_images: Optional[int] = None  # images behind each score (for the binomial fallback)

    @property
    def mean(self) -> float:
        return float(np.mean(list(self.scores.values())))


@dataclass
class Difference:
    """``effect`` = mean score of A minus that of B (points), ``noise`` its standard error (points)."""
    a: str
    b: str
    effect: float
    noise: float
    seed_term: float  # standard error from the seeds alone
    image_term: float  # standard error from the images alone
    seeds: Tuple[int, int]  # seeds behind A's and B's mean
    paired: bool  # image term from per-image outcomes (else binomial, unpaired)
    pooled_seed: bool  # a model with one seed borrowed the pooled seed variance
    seed_unknown: bool = False  # a model with one seed and no pooled variance to borrow: the seed term is missing

    @property
    def detectable(self) -> float:
        """The smallest |effect| this comparison could have decided (points)."""
        return DECIDE_AT * self.noise


def paired_image_se(a: np.ndarray, b: np.ndarray, draws: int = BOOTSTRAP_DRAWS, seed: int = 0) -> float:
    """Bootstrap standard error (points) of mean(a) - mean(b) over the images, resampled jointly: ``a`` and ``b``
    are per-image outcomes ``(images,)`` (or ``(seeds, images)``, averaged over seeds first)."""
    a = np.atleast_2d(np.asarray(a, float)).mean(0)
    b = np.atleast_2d(np.asarray(b, float)).mean(0)
    if a.shape != b.shape:
        raise ValueError(f'paired outcomes need the same images: {a.shape} vs {b.shape}')
    d = a - b
    n = len(d)
    counts = np.random.default_rng(seed).multinomial(n, np.full(n, 1 / n), size=draws)  # (draws, n) resamples
    return 100 * float(np.std(counts @ d / n, ddof=1))


def pooled_seed_variance(runs: Sequence[Runs]) -> Optional[float]:
    """Mean of the seed variances (points^2) of the models with two seeds or more, weighted by degrees of freedom."""
    num = den = 0.0
    for r in runs:
        k = len(r.scores)
        if k > 1:
            num += np.var(list(r.scores.values()), ddof=1) * (k - 1)
            den += k - 1
    return num / den if den else None


def difference(a: Runs, b: Runs, pooled: Optional[float] = None) -> Difference:
    """The effect A - B and its noise (seed term and image term, see the module docstring)."""
    seed_var, borrowed, unknown = 0.0, False, False
    for r in (a, b):
        k = len(r.scores)
        if k > 1:
            seed_var += np.var(list(r.scores.values()), ddof=1) / k
        elif pooled is not None:
            seed_var += pooled / k
            borrowed = True
        else:
            unknown = True
    if a.per_image is not None and b.per_image is not None:
        image, paired = paired_image_se(a.per_image, b.per_image), True
    else:
        image, paired = math.sqrt(sum(_binomial_var(r) for r in (a, b))), False
    return Difference(a.model, b.model, a.mean - b.mean, math.sqrt(seed_var + image ** 2), math.sqrt(seed_var),
                      image, (len(a.scores), len(b.scores)), paired, borrowed, unknown)


def _binomial_var(r: Runs) -> float:
    p = min(max(r.mean / 100, 1e-6), 1 - 1e-6)
    return 1e4 * p * (1 - p) / (r.n_images or 1) / len(r.scores)


# ------------------------------------------------------------------------------------------------ claims

@dataclass(frozen=True)
class Claim:
    """One claim of the paper: what it says, where (paper and book page), what it compares and how it is decided.
    ``kind``: 'rank' (``families`` at the ``at`` end of the ranking of ``metric``), 'difference' (an effect whose
    sign ``expects`` gives, or 'no loss'), 'correlation' or 'timing' (decided by their own evidence)."""
    id: str
    page: str
    statement: str
    paper_ref: str
    kind: str
    metric: str = ''
    families: Tuple[str, ...] = ()
    at: str = 'top'
    expects: str = '>0'


@dataclass
class Result:
    """A checked claim: the verdict with the numbers behind it (``effect``/``noise`` in points where the claim is
    a difference; ``paper_effect`` the paper's value of the same difference, where it gives one)."""
    claim: Claim
    verdict: Verdict
    ours: str = '-'
    noise_text: str = '-'
    paper: str = '-'
    effect: Optional[float] = None
    noise: Optional[float] = None
    paper_effect: Optional[float] = None
    unit: str = 'points'
    detail: dict = field(default_factory=dict)
    noise_complete: bool = True  # False: a noise term is missing (the seed spread of one-seed models), nothing decided

    @property
    def detectable(self) -> Optional[float]:
        return None if self.noise is None else DECIDE_AT * self.noise

    def row(self) -> dict:
        """The Findings table's row."""
        return dict(id=self.claim.id, label=LABELS.get(self.claim.id, self.claim.id), page=self.claim.page,
                    claim=self.claim.statement, paper=self.paper,
                    ours=self.ours, noise=self.noise_text, verdict=self.verdict.value, effect=self.effect,
                    se=self.noise, detectable=self.detectable, paper_effect=self.paper_effect, unit=self.unit,
                    noise_complete=self.noise_complete)


def deciding_pair(scores: Dict[str, float], claimed: Sequence[str], at: str, family: Callable[[str], str]
                  ) -> Optional[Tuple[str, str]]:
    """(a, b) such that the claim holds when score[a] - score[b] > 0: for 'top', the claimed models' lowest against
    the best of the others; for 'bottom', the others' lowest against the claimed models' best. None when a claimed
    family or every other family is missing."""
    inside = [m for m in scores if family(m) in claimed]
    outside = [m for m in scores if family(m) not in claimed]
    if {family(m) for m in inside} != set(claimed) or not outside:
        return None
    if at == 'top':
        return min(inside, key=scores.get), max(outside, key=scores.get)
    return min(outside, key=scores.get), max(inside, key=scores.get)


def check_rank(claim: Claim, runs: Dict[str, Runs], family: Callable[[str], str], display: Callable[[str], str],
               paper_effect: Optional[float] = None, paper: str = '-', fmt: str = '{:.1f}') -> Result:
    """A ranking claim, decided on its deciding pair by :func:`difference` (all models' seed spread pooled)."""
    scores = {m: r.mean for m, r in runs.items()}
    pair = deciding_pair(scores, claim.families, claim.at, family)
    if pair is None:
        return Result(claim, Verdict.NOT_MEASURED, paper=paper, paper_effect=paper_effect)
    a, b = pair
    d = difference(runs[a], runs[b], pooled_seed_variance(list(runs.values())))
    # one seed per model and no seed spread to borrow: the image noise alone would understate the noise
    verdict = Verdict.CANNOT_TELL if d.seed_unknown else decide(d.effect, d.noise, '>0')
    seeds = sorted({len(r.scores) for r in runs.values()})
    ranking = ', '.join(f'{display(m)} {fmt.format(scores[m])}' for m in sorted(scores, key=lambda m: -scores[m]))
    noise = (f'deciding pair {display(a)} - {display(b)} = {d.effect:+.2f} points, SE {d.noise:.2f} from seeds '
             f'{d.seed_term:.2f}'
             f'{" (pooled)" if d.pooled_seed else ""} and images {d.image_term:.2f} '
             f'({"paired" if d.paired else "unpaired"}); {"-".join(map(str, seeds[::len(seeds) - 1 or 1]))} '
             f'seed{"s" if seeds[-1] > 1 else ""} per model'
             + ('; the seed spread is not measured yet, so nothing is decided' if d.seed_unknown else ''))
    return Result(claim, verdict, ours=ranking, noise_text=noise, paper=paper, effect=d.effect, noise=d.noise,
                  paper_effect=paper_effect, detail=dict(pair=pair, difference=d), noise_complete=not d.seed_unknown)


def check_rank_draws(claim: Claim, scores: Dict[str, float], draws: Dict[str, Sequence[Optional[float]]],
                     family: Callable[[str], str], display: Callable[[str], str], paper: str = '-',
                     paper_effect: Optional[float] = None, scale: float = 100.0, what: str = '') -> Result:
    """A ranking claim measured once per model, with paired bootstrap draws over the images (``draws[model][i]``:
    the score on the i-th resampling, the same resampled images for every model): the noise of the deciding pair's
    difference is the spread of the draws' differences. Scores are proportions; ``scale`` turns them into points.
    One run per model: the seed term is unknown, and the noise text says so."""
    scores = {m: v for m, v in scores.items() if v is not None}
    pair = deciding_pair(scores, claim.families, claim.at, family)
    if pair is None:
        return Result(claim, Verdict.NOT_MEASURED, paper=paper, paper_effect=paper_effect)
    a, b = pair
    pairs = [(x, y) for x, y in zip(draws.get(a) or [], draws.get(b) or []) if x is not None and y is not None]
    effect = scale * (scores[a] - scores[b])
    noise = scale * float(np.std([x - y for x, y in pairs], ddof=1)) if len(pairs) > 1 else None
    ranking = ', '.join(f'{display(m)} {scale * scores[m]:.1f}' for m in sorted(scores, key=lambda m: -scores[m]))
    text = (f'{display(a)} - {display(b)} = {effect:+.2f} points' +
            (f', bootstrap SE {noise:.2f} over {len(pairs)} paired resamplings of the images' if noise is not None
             else ', no bootstrap draws recorded') + '; one run per model (seed spread not measured)')
    return Result(claim, decide(effect, noise, '>0'), ours=(what + ': ' if what else '') + ranking, noise_text=text,
                  paper=paper, effect=effect, noise=noise, paper_effect=paper_effect, detail=dict(pair=pair))


def check_difference(claim: Claim, effect: Optional[float], noise: Optional[float], ours: str = '',
                     noise_text: str = '', paper: str = '-', paper_effect: Optional[float] = None,
                     unit: str = 'points') -> Result:
    """A difference claim whose effect and noise were measured elsewhere (ablations, detection)."""
    verdict = decide(effect, noise, claim.expects)
    return Result(claim, verdict, ours=ours or ('-' if effect is None else f'{effect:+.2f} {unit}'),
                  noise_text=noise_text or ('-' if noise is None else f'SE {noise:.2f} {unit}'), paper=paper,
                  effect=effect, noise=noise, paper_effect=paper_effect, unit=unit)


def counts(results: Sequence[Result]) -> Dict[str, int]:
    """How many claims there are and how many agree, do not agree, cannot tell, are not yet measured."""
    n = {v: sum(r.verdict == v for r in results) for v in Verdict}
    return dict(total=len(results), agree=n[Verdict.AGREES], disagree=n[Verdict.DISAGREES],
                cannot=n[Verdict.CANNOT_TELL], not_yet=n[Verdict.NOT_MEASURED])


# ------------------------------------------------------------------------------------------------ the registry
# Registered before the seed set's runs 2-4 finished; the statements are the Findings page's since the first
# session that showed them. Nothing is dropped or reworded after seeing results.

def _rank(cid, page, statement, paper_ref, metric, families, at='top'):
    return Claim(cid, page, statement, paper_ref, 'rank', metric, tuple(families), at)


def _diff(cid, statement, paper_ref, expects, page='Ablations'):
    return Claim(cid, page, statement, paper_ref, 'difference', 'top1', expects=expects)


REGISTRY: Tuple[Claim, ...] = (
    _rank('acc_halo_best', 'Training', 'In the unified architecture, halo attention is the most accurate mixer '
          '(micro scale)', 'Table III, micro', 'top1', ['halonet']),
    _rank('acc_pvt_worst', 'Training', 'SR attention (U-PVT) is the least accurate (micro scale)', 'Table III, micro',
          'top1', ['pvt'], 'bottom'),
    _diff('ln_after_pool', 'LN after global pooling (B) helps (mean of B - A over the five STMs)', 'Table VI', '>0'),
    _diff('no_stage_norm', 'Removing the stage norms as well (C) helps further (mean of C - B)', 'Table VI', '>0'),
    _diff('convnext_block_hurts', "ConvNeXt's block (D) hurts the STMs other than DW-Conv (mean of D - A over four)",
          'Table VI', '<0'),
    _diff('convnext_block_dwconv', "DW-Conv fares better with ConvNeXt's block than the others do "
          '(D - A of DW-Conv minus the mean D - A of the four others)', 'Table VI', '>0'),
    _diff('sr_attn_block', "SR-Attn loses most with ConvNeXt's block (D - A)", 'Table VI', '<0'),
    _diff('halo_shift', 'Halo-Shift (query block at the corner of its window) loses accuracy (Shift - A)',
          'Table VII', '<0'),
    _diff('halo_switch', 'Halo-Switch loses little or nothing (switch - A)', 'Table VII', NO_LOSS),
    _diff('halo_1px', 'Halo-1px loses little or nothing (1px - A)', 'Table VII', NO_LOSS),
    _diff('overlap_swin_vs_dwconv', 'Overlapped downsampling helps SW-Attn more than DW-Conv '
          '((A - non-overlapped) of Swin minus that of DW-Conv)', 'Table II', '>0'),
    _diff('transformer_block_halo', 'The unified (transformer) block helps HaloNet over its own bottleneck block '
          '(A - bottleneck)', 'Table II', '>0'),
    Claim('speed_fastest', 'Speed', 'is the fastest micro model at 256x256 on a GPU', 'Table VIII', 'timing'),
    Claim('speed_slowest', 'Speed', 'is the slowest micro model at 256x256 on a GPU', 'Table VIII', 'timing'),
    _rank('shift_conv_best', 'Robustness', 'Convolution mixers (DW-Conv, DCNv3) are the most translation-invariant',
          'Fig. 7, row 1', 'shift', ['dwconv', 'internimage']),
    _rank('shift_pvt_worst', 'Robustness', 'SR attention (U-PVT) is the least translation-invariant', 'Fig. 7, row 1',
          'shift', ['pvt'], 'bottom'),
    _rank('rotation_dcn_best', 'Robustness', 'DCNv3 is the most rotation-invariant', 'Fig. 7, row 2', 'rotation',
          ['internimage']),
    _rank('scale_dcn_best', 'Robustness', 'DCNv3 is the most scale-invariant', 'Fig. 7, row 3', 'scale',
          ['internimage']),
    _rank('fgsm_halo_dcn_best', 'Robustness', 'U-HaloNet and U-InternImage are the most robust to FGSM', 'Fig. 8',
          'fgsm', ['halonet', 'internimage']),
    _rank('fgsm_pvt_worst', 'Robustness', 'U-PVT is the least robust to FGSM', 'Fig. 8', 'fgsm', ['pvt'], 'bottom'),
    _rank('det_best', 'Detection', 'DCNv3 and halo attention give the best box AP (Table V)', 'Table V, micro',
          'box_AP', ['halonet', 'internimage']),
    _rank('det_pvt_worst', 'Detection', 'SR attention (U-PVT) gives the lowest box AP (Table V, micro)',
          'Table V, micro', 'box_AP', ['pvt'], 'bottom'),
    Claim('det_erf', 'Detection', 'A larger ERF does not mean better detection (Fig. 5)', 'Fig. 5', 'correlation'),
    _rank('det_scale_dcn_best', 'Detection', 'DCNv3 is the most scale-invariant detector when upscaling '
          '(Fig. 7, detection row)', 'Fig. 7, row 3', 'consistency_up', ['internimage']),
)
BY_ID: Dict[str, Claim] = {c.id: c for c in REGISTRY}
# short labels for the forest plot's rows (a phone's width)
LABELS = {
    'acc_halo_best': 'Halo most accurate', 'acc_pvt_worst': 'PVT least accurate',
    'ln_after_pool': 'B: LN after pooling helps', 'no_stage_norm': 'C: no stage norms helps',
    'convnext_block_hurts': 'D: ConvNeXt block hurts', 'convnext_block_dwconv': 'D: DW-Conv fares better',
    'sr_attn_block': 'D: SR-Attn loses most', 'halo_shift': 'Halo-Shift loses',
    'halo_switch': 'Halo-Switch no loss', 'halo_1px': 'Halo-1px no loss',
    'overlap_swin_vs_dwconv': 'Overlap helps Swin more', 'transformer_block_halo': 'Unified block helps Halo',
    'speed_fastest': 'Fastest on a GPU', 'speed_slowest': 'Slowest on a GPU',
    'shift_conv_best': 'Convs most shift-invariant', 'shift_pvt_worst': 'PVT least shift-invariant',
    'rotation_dcn_best': 'DCNv3 most rotation-inv.', 'scale_dcn_best': 'DCNv3 most scale-invariant',
    'fgsm_halo_dcn_best': 'Halo, DCNv3 most FGSM-robust', 'fgsm_pvt_worst': 'PVT least FGSM-robust',
    'det_best': 'DCNv3, Halo best box AP', 'det_pvt_worst': 'PVT lowest box AP',
    'det_erf': 'ERF does not predict AP', 'det_scale_dcn_best': 'DCNv3 most scale-inv. detector',
}
