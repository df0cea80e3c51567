"""The claim engine (stm_lab.claims): the rule, the noise model on constructed cases with known answers, the registry,
and two claims recomputed from the committed per-image outcomes by a second, independent code path."""
import json
import math

import numpy as np
import pytest

from stm_lab import claims, results
from stm_lab.pages import findings, robustness
from stm_lab.analysis import outcomes
from stm_lab.claims import Runs, Verdict, decide, difference, paired_image_se


@pytest.mark.parametrize('effect,noise,expects,expected', [
    (1.0, 0.4, '>0', 'agrees'), (-1.0, 0.4, '>0', 'does not agree'), (0.7, 0.4, '>0', 'cannot tell at this scale'),
    (-1.3, 0.5, '<0', 'agrees'), (None, None, '<0', 'not yet measured'), (1.0, None, '>0', 'cannot tell at this scale'),
    # no loss: the whole interval within +-1 point agrees, a loss beyond it wholly does not, else cannot tell
    (0.1, 0.4, 'no loss', 'agrees'), (0.1, 0.6, 'no loss', 'cannot tell at this scale'),
    (-2.0, 0.4, 'no loss', 'does not agree'), (3.13, 1.51, 'no loss', 'cannot tell at this scale'),
    (3.0, 0.5, 'no loss', 'cannot tell at this scale')])  # a gain beyond the margin is not "little or nothing"
def test_the_rule(effect, noise, expects, expected):
    assert decide(effect, noise, expects) == expected
    assert isinstance(decide(effect, noise, expects), Verdict)


def test_paired_image_noise_known_answer():
    """Two models that differ on 100 of 400 images (A right, B wrong): the per-image difference is 1 on a quarter of
    the images, so its standard error is sqrt(0.25 * 0.75 / 400) = 2.165 points; the unpaired error of the two
    accuracies would be far larger, and identical outcomes have no image noise."""
    b = np.zeros(400)
    b[:200] = 1
    a = b.copy()
    a[200:300] = 1
    assert paired_image_se(a, b) == pytest.approx(100 * np.sqrt(0.25 * 0.75 / 400), rel=0.05)
    assert paired_image_se(a, a) == 0.0
    with pytest.raises(ValueError, match='same images'):
        paired_image_se(a, b[:10])


def test_difference_adds_the_seed_and_image_terms():
    """Seed term s_A^2/n_A + s_B^2/n_B (A: 70 and 72 -> variance 2 over 2 seeds = 1; B: no spread), image term from
    the paired outcomes; a model with one seed borrows the pooled variance."""
    rng = np.random.default_rng(0)
    base = (rng.random(2000) < 0.7).astype(float)
    flip = rng.random(2000) < 0.1
    other = np.where(flip, 1 - base, base)
    a = Runs('u_halonet_micro', {0: 70.0, 1: 72.0}, np.stack([base, base]))
    b = Runs('u_pvt_micro', {0: 68.0, 1: 68.0, 2: 68.0}, np.stack([other]))
    d = difference(a, b)
    image = paired_image_se(base, other)
    assert d.effect == pytest.approx(3.0) and d.seed_term == pytest.approx(1.0)
    assert d.image_term == pytest.approx(image) and d.noise == pytest.approx(np.sqrt(1.0 + image ** 2))
    assert d.paired and not d.pooled_seed and d.detectable == pytest.approx(2 * d.noise)
    one = Runs('u_swin_micro', {0: 66.0}, np.stack([other]))
    d1 = difference(a, one, pooled=4.0)
    assert d1.pooled_seed and d1.seed_term == pytest.approx(np.sqrt(1.0 + 4.0))
    # without per-image outcomes: the unpaired binomial error of each mean
    d2 = difference(Runs('a', {0: 50.0}, n_images=1000), Runs('b', {0: 50.0}, n_images=1000))
    assert not d2.paired and d2.image_term == pytest.approx(100 * np.sqrt(2 * 0.25 / 1000))


def test_rank_claims_are_decided_on_their_deciding_pair():
    fam = lambda m: m.split('_')[1]  # noqa: E731
    claim = claims.BY_ID['acc_halo_best']
    runs = {f'u_{f}_micro': Runs(f'u_{f}_micro', {0: v, 1: v + 0.5}, n_images=4000)
            for f, v in (('halonet', 80.0), ('pvt', 60.0), ('swin', 70.0), ('dwconv', 65.0), ('internimage', 75.0))}
    r = claims.check_rank(claim, runs, fam, str)
    assert r.verdict == 'agrees' and r.detail['pair'] == ('u_halonet_micro', 'u_internimage_micro')
    assert r.effect == pytest.approx(5.0)
    r = claims.check_rank(claims.BY_ID['acc_pvt_worst'], runs, fam, str)
    assert r.verdict == 'agrees' and r.detail['pair'] == ('u_dwconv_micro', 'u_pvt_micro')
    one = {m: Runs(m, {0: r.scores[0]}, n_images=4000) for m, r in runs.items()}  # one seed each: no seed spread
    r = claims.check_rank(claim, one, fam, str)
    assert r.verdict == 'cannot tell at this scale' and r.detail['difference'].seed_unknown
    assert 'not measured yet' in r.noise_text
    del runs['u_pvt_micro']
    assert claims.check_rank(claims.BY_ID['acc_pvt_worst'], runs, fam, str).verdict == 'not yet measured'


def test_the_registry_is_the_findings_page():
    """Every registered claim is checked once, in the registry's order, and has a short label for the plot."""
    ids = [c.id for c in claims.REGISTRY]
    assert len(ids) == len(set(ids)) == 24
    assert set(claims.LABELS) == set(ids) and all(len(v) <= 30 for v in claims.LABELS.values())
    assert [r['id'] for r in findings.findings('cpu')] == ids


def _committed(model, seeds):
    """The committed per-image outcomes of a model, read with numpy alone (the second code path)."""
    out = {}
    for s in seeds:
        path = results.ROOT / 'results' / 'cpu' / ('epochs12' if s == 0 else f'seed{s}') / f'outcomes_{model}.npz'
        if path.exists():
            with np.load(path) as d:
                out[s] = {k: d[k] for k in d.files}
    return out


def _hierarchical_bootstrap(per_a, per_b, draws=2000, seed=1, resample_seeds=True):
    """Statistics reference, steps 1-4: one image resample for every model and seed, each model's seeds resampled
    (``resample_seeds=False``: the images alone)."""
    rng = np.random.default_rng(seed)
    n = per_a.shape[1]
    eff = []
    for _ in range(draws):
        idx = rng.integers(0, n, n)
        sa = rng.integers(0, len(per_a), len(per_a)) if resample_seeds else np.arange(len(per_a))
        sb = rng.integers(0, len(per_b), len(per_b)) if resample_seeds else np.arange(len(per_b))
        eff.append(per_a[sa][:, idx].mean() - per_b[sb][:, idx].mean())
    return 100 * float(np.std(eff, ddof=1))


def _seed_bootstrap_var(per, draws=4000, seed=2):
    """Variance (points^2) of one model's mean over its seeds resampled with replacement (images fixed), times
    k / (k - 1)."""
    rng = np.random.default_rng(seed)
    k = len(per)
    scores = 100 * per.mean(1)
    means = scores[rng.integers(0, k, (draws, k))].mean(1)
    return float(np.var(means, ddof=1)) * k / (k - 1)


@pytest.mark.parametrize('cid,metric', [('shift_pvt_worst', 'shift'), ('fgsm_pvt_worst', 'fgsm')])
def test_two_claims_recomputed_from_the_committed_outcomes(cid, metric):
    """The engine's effect and noise for two robustness claims, against numpy on the committed npz files and a
    hierarchical bootstrap written here: the same effect, and noise within sampling error of the two bootstraps."""
    models = [f'u_{f}_micro' for f in ('halonet', 'pvt', 'swin', 'dwconv', 'internimage')]
    per = {}
    for m in models:
        got = _committed(m, claims.SEEDS)
        if not got:
            pytest.skip(f'no committed per-image outcomes of {m} yet')
        if metric == 'shift':
            per[m] = np.stack([(o['shift'] == o['reference'][None]).mean(0) for o in got.values()])
        else:
            per[m] = np.stack([(o['fgsm'] == o['labels'][None]).mean(0) for o in got.values()])
    means = {m: 100 * p.mean(1).mean() for m, p in per.items()}
    others = [m for m in models if m != 'u_pvt_micro']
    a = min(others, key=means.get)  # the deciding pair of "U-PVT is the least ...": the others' lowest against U-PVT
    r = next(x for x in robustness.robustness_results('cpu') if x.claim.id == cid)
    assert r.detail['pair'] == (a, 'u_pvt_micro')
    assert r.effect == pytest.approx(means[a] - means['u_pvt_micro'], abs=1e-9)
    # the image term alone (a one-seed model borrows the pooled seed spread, which a bootstrap cannot resample)
    images = _hierarchical_bootstrap(per[a], per['u_pvt_micro'], resample_seeds=False)
    assert r.detail['difference'].image_term == pytest.approx(images, rel=0.15)
    if min(len(per[a]), len(per['u_pvt_micro'])) > 1:
        # the seed term: each model's seeds resampled with the images fixed; a bootstrap over k seeds spreads the
        # mean by the plug-in variance (divisor k), so k / (k - 1) turns it into the unbiased s^2 / k the engine uses
        # (with 2 seeds the plain two-level bootstrap gives half the seed variance)
        seeds = math.sqrt(sum(_seed_bootstrap_var(p) for p in (per[a], per['u_pvt_micro'])))
        assert r.detail['difference'].seed_term == pytest.approx(seeds, rel=0.15)
        assert r.noise == pytest.approx(math.hypot(seeds, images), rel=0.15)


def test_outcomes_of_a_smoke_run_agree_with_the_sweeps(tmp_path, monkeypatch):
    """Per-image outcomes of a trained smoke model: the share of views equal to the reference reproduces each sweep's
    consistency, the share of right answers each FGSM accuracy; written atomically beside the run's result."""
    from stm_lab.training.config import profile_config
    from stm_lab.training.engine import train
    monkeypatch.setattr(results, 'RESULTS_DIR', tmp_path)
    train(profile_config('u_dwconv_test', 'smoke', seed=2), tmp_path / 'run', resume='none', progress=False,
          results_subdir='seed2')
    assert outcomes.run('smoke', 2, ['u_dwconv_test'], log=lambda m: None) == ['u_dwconv_test']
    assert outcomes.run('smoke', 3, ['u_dwconv_test'], log=lambda m: None) == []  # no weights: skipped
    arrays = outcomes.load('smoke', 2, 'u_dwconv_test')
    doc = json.loads(outcomes.paths('smoke', 2, 'u_dwconv_test')[0].read_text())
    n = doc['config']['images']
    assert arrays['clean'].shape == (n,) and arrays['fgsm'].shape == (5, n)
    for kind in outcomes.VIEW_KINDS:
        assert arrays[kind].shape == (len(arrays[f'{kind}_magnitudes']), doc['config']['invariance_images'])
    inv = {(r['transform'], r['magnitude']): r['consistency'] for r in doc['summary']['invariance']}
    for kind in outcomes.VIEW_KINDS:
        for i, mag in enumerate(arrays[f'{kind}_magnitudes']):
            key = (kind, int(mag) if kind != 'scale' else round(float(mag), 3))
            assert (arrays[kind][i] == arrays['reference']).mean() == pytest.approx(inv[key])
    for i, r in enumerate(doc['summary']['fgsm'][1:]):
        assert (arrays['fgsm'][i] == arrays['labels']).mean() == pytest.approx(r['top1'], abs=1e-5)
    assert doc['provenance']['command'].startswith('stm-lab analyze outcomes --profile smoke --seed 2')
