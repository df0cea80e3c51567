"""The Findings page: verdicts follow the numbers (known answers), every claim has one, missing results say so."""
import json

import pytest

from stm_lab import results
from stm_lab.pages import erf as erf_page, findings, training
from stm_lab.claims import Verdict


def _train_doc(folder, model, top1, n=4000):
    folder.mkdir(parents=True, exist_ok=True)
    doc = dict(provenance=dict(wall_time_s=60, train_img_per_s_median=100), config=dict(params=1e6),
               records=[dict(epoch=12, top1=top1, top5=99.0, top1_fp16=top1, top5_fp16=99.0, weights='model',
                             val_images=n)])
    (folder / f'train_{model}.json').write_text(json.dumps(doc))


@pytest.mark.parametrize('scores,expected', [
    # U-HaloNet first by 10 points on 4000 images each: far beyond two standard errors
    ({'halonet': 0.80, 'pvt': 0.60, 'swin': 0.70, 'dwconv': 0.65, 'internimage': 0.68}, ('agrees', 'agrees')),
    # U-HaloNet last and U-PVT first, by 10 points: the paper's order reversed beyond the noise
    ({'halonet': 0.60, 'pvt': 0.80, 'swin': 0.70, 'dwconv': 0.65, 'internimage': 0.68},
     ('does not agree', 'does not agree')),
    # 0.5 points apart: within the noise either way
    ({'halonet': 0.701, 'pvt': 0.695, 'swin': 0.699, 'dwconv': 0.698, 'internimage': 0.697},
     ('cannot tell at this scale', 'cannot tell at this scale')),
])
def test_accuracy_verdicts_follow_the_numbers(tmp_path, monkeypatch, scores, expected):
    monkeypatch.setattr(results, 'RESULTS_DIR', tmp_path)
    for fam, s in scores.items():  # two seeds each, 0.1 point apart
        _train_doc(tmp_path / 'cpu' / 'epochs12', f'u_{fam}_micro', 100 * s)
        _train_doc(tmp_path / 'cpu' / 'seed1', f'u_{fam}_micro', 100 * s + 0.1)
    best, worst = training.accuracy_results('cpu')
    assert (best.verdict, worst.verdict) == expected
    assert 'U-HaloNet' in best.ours and 'SE' in best.noise_text and 'unpaired' in best.noise_text


def test_missing_results_are_not_yet_measured(tmp_path, monkeypatch):
    monkeypatch.setattr(results, 'RESULTS_DIR', tmp_path)
    rows = findings.findings('cpu')
    assert rows and all(r['verdict'] in {v.value for v in Verdict} for r in rows)
    assert all(r['verdict'] == findings.NOT_YET for r in rows)  # nothing measured in an empty results folder
    assert {r['page'] for r in rows} >= {'Training', 'Ablations', 'Speed', 'Robustness', 'Detection'}
    cover = findings.coverage()
    assert all(c['status'] == 'not yet here' for c in cover)
    (tmp_path / 'cpu').mkdir()
    (tmp_path / 'cpu' / 'erf.json').write_text('{}')
    assert next(c for c in findings.coverage() if c['item'] == 'Fig. 6')['status'] == 'here'


def test_committed_results_give_a_verdict_for_every_measured_claim():
    rows = findings.findings('cpu')
    measured = [r for r in rows if r['page'] in ('Training', 'Speed')]
    assert measured and all(r['verdict'] != findings.NOT_YET for r in measured)
    if not (results.RESULTS_DIR / 'cpu' / 'detection.json').exists():
        assert all(r['verdict'] == findings.NOT_YET for r in rows if r['page'] == 'Detection')


def test_verdict_counts():
    rows = [dict(verdict=v) for v in ('agrees', 'agrees', 'does not agree', 'cannot tell at this scale',
                                      'cannot tell at this scale', 'not yet measured')]
    assert findings.verdict_counts(rows) == dict(total=6, agree=2, disagree=1, cannot=2, not_yet=1)
    assert findings.verdict_counts([]) == dict(total=0, agree=0, disagree=0, cannot=0, not_yet=0)


def test_coverage_text_lists_the_items_of_a_status():
    cover = [dict(item='Table I', what='mixers', status='here'), dict(item='Fig. 5', what='ERF', status='partly here'),
             dict(item='Fig. 8', what='FGSM', status='here')]
    assert findings.coverage_text(cover, 'here') == 'Table I (mixers), Fig. 8 (FGSM)'
    assert findings.coverage_text(cover, 'not yet here') == 'none'


def test_rows_by_page_keep_the_order_of_first_appearance():
    rows = [dict(page='Training', n=1), dict(page='Speed', n=2), dict(page='Training', n=3)]
    assert {p: [r['n'] for r in rs] for p, rs in findings.by_page(rows).items()} == {'Training': [1, 3], 'Speed': [2]}
    assert list(findings.by_page(rows)) == ['Training', 'Speed']


def test_erf_seed_set_reads_erf50_of_every_seed_with_outcomes(tmp_path, monkeypatch):
    from stm_lab.analysis import outcomes
    monkeypatch.setattr(results, 'RESULTS_DIR', tmp_path)
    model = 'u_swin_micro'
    for seed, side3 in ((2, 0.453125), (4, 0.5)):  # seed 3 made no outcomes: it is left out
        jpath, npath = outcomes.paths('cpu', seed, model)
        jpath.parent.mkdir(parents=True, exist_ok=True)
        erf = [dict(stage=st, erf_at=[dict(t=0.2, side_ratio=0.1), dict(t=0.5, side_ratio=side)])
               for st, side in ((3, side3), (4, 0.75))]
        jpath.write_text(json.dumps(dict(summary=dict(erf=erf))))
        npath.write_bytes(b'')  # its presence marks the seed as analysed
    runs = erf_page.erf_seed_set('cpu', 3, models=[model])[model]
    assert runs.scores == {2: 45.3125, 4: 50.0}
    assert erf_page.erf_seed_set('cpu', 4, models=[model])[model].mean == 75.0
    assert erf_page.erf_seed_set('cpu', 3, models=['u_pvt_micro']) == {}


def test_precision_run_is_compared_with_its_seed_and_the_seed_set(tmp_path, monkeypatch):
    """Known answer: float32 seeds 68, 70, 72 (mean 70, sd 2); a bf16 run of seed 0 at 71.5 is within two standard
    deviations, one at 75 outside; a run that also changes the epochs is not a precision run."""
    monkeypatch.setattr(results, 'RESULTS_DIR', tmp_path)

    def doc(folder, top1, seed, amp='none', epochs=12):
        _train_doc(tmp_path / 'cpu' / folder, 'u_swin_micro', top1)
        path = tmp_path / 'cpu' / folder / 'train_u_swin_micro.json'
        d = json.loads(path.read_text())
        d['config']['train'] = dict(seed=seed, amp=amp, epochs=epochs, data={})
        d['provenance'].update(cpu='CPU X', cpu_bf16_units=False)
        path.write_text(json.dumps(d))
        return d
    for folder, top1, seed in (('epochs12', 68.0, 0), ('seed1', 70.0, 1), ('seed2', 72.0, 2)):
        doc(folder, top1, seed)
    near, far, longer = doc('bf16', 71.5, 0, 'bf16'), doc('bf16b', 75.0, 0, 'bf16'), doc('e24', 75.0, 0, 'bf16', 24)
    rows = training.precision_runs('cpu', {'bf16': {'u_swin_micro': near}, 'bf16b': {'u_swin_micro': far},
                                           'e24': {'u_swin_micro': longer}})
    assert [(r['folder'], r['top1'], r['base_top1'], r['within']) for r in rows] == [('bf16', 71.5, 68.0, True),
                                                                                     ('bf16b', 75.0, 68.0, False)]
    assert rows[0]['seed_mean'] == pytest.approx(70.0) and rows[0]['seed_sd'] == pytest.approx(2.0)
    assert rows[0]['seeds'] == [0, 1, 2] and rows[0]['seed_range'] == (68.0, 72.0)
    text = training.precision_text(rows)
    assert 'top-1 71.50% against 68.00% for the same run with `amp` none' in text
    assert 'standard deviation 2.00, range 68.00-72.00%: within the seeds' in text
    assert 'top-1 75.00% against 68.00%' in text and 'outside the seeds' in text
    assert 'without bf16 units: bf16 emulated' in text
    assert training.precision_text([]) == ''
