"""Builders of the training and speed pages: known inputs give known tables and groupings."""
import pytest

from stm_lab import results
from stm_lab.pages import ablations, architecture, findings, speed, training
from stm_lab.training import reports
from stm_lab.paper import TABLE8


def test_profile_parts_group_into_comparable_components():
    c = speed.profile_component
    assert [c('stem forward'), c('patch_embed backward'), c('stages.0 forward'), c('layers.3 backward')] == \
        ['stem', 'stem', 'stage 1', 'stage 4']
    assert {c('conv_head forward'), c('head backward'), c('loss'), c('between parts (forward)')} == {'head, loss and glue'}
    assert c('optimizer step') == 'optimizer'


def test_profile_bars_sum_forward_and_backward_per_component():
    rec = dict(model='u_swin_micro', parts=[dict(part='stem forward', ms=1.0), dict(part='stem backward', ms=2.0),
                                            dict(part='stages.1 forward', ms=4.0), dict(part='total', ms=7.0)])
    fig = speed.profile_bars([rec])
    by = {t.name: t.x[0] for t in fig.data}
    assert by['stem'] == 3.0 and by['stage 2'] == 4.0 and by['stage 1'] == 0 and sum(by.values()) == 7.0


def test_table8_markdown_puts_ratios_to_dwconv_beside_the_paper():
    recs = [dict(model='u_swin_micro', img_size=256, batch_size=8, images_per_sec=30.0),
            dict(model='u_dwconv_micro', img_size=256, batch_size=8, images_per_sec=20.0)]
    md = speed.table8_markdown(recs)
    swin = next(line for line in md.splitlines() if line.startswith('| U-Swin'))
    paper_ratio = TABLE8['u_swin_micro'][0] / TABLE8['u_dwconv_micro'][0]
    assert '30.0 (1.50x)' in swin and f'{TABLE8["u_swin_micro"][0]} ({paper_ratio:.2f}x)' in swin
    assert 'batch 8' in md.splitlines()[0]


def test_table8_ratios_are_to_the_dwconv_of_the_same_scale():
    recs = [dict(model='u_pvt_tiny', img_size=512, batch_size=32, images_per_sec=50.0),
            dict(model='u_dwconv_tiny', img_size=512, batch_size=32, images_per_sec=200.0)]
    pvt = next(line for line in speed.table8_markdown(recs).splitlines() if line.startswith('| U-PVT'))
    assert '50.0 (0.25x)' in pvt and f'({TABLE8["u_pvt_tiny"][1] / TABLE8["u_dwconv_tiny"][1]:.2f}x)' in pvt


def test_table8_pair_agreement_counts_pairs_in_the_papers_order():
    paper_order = sorted((m for m in TABLE8 if m.endswith('_micro')), key=lambda m: -TABLE8[m][0])
    recs = [dict(model=m, img_size=256, images_per_sec=100.0 - 10 * k) for k, m in enumerate(paper_order)]
    assert speed.table8_pair_agreement(recs) == {256: (10, 10)}
    flipped = [dict(r, images_per_sec=-r['images_per_sec']) for r in recs]
    assert speed.table8_pair_agreement(flipped) == {256: (0, 10)}
    swap = [dict(r) for r in recs]  # exchange the first two: one pair out of order
    swap[0]['images_per_sec'], swap[1]['images_per_sec'] = swap[1]['images_per_sec'], swap[0]['images_per_sec']
    assert speed.table8_pair_agreement(swap) == {256: (9, 10)}
    assert speed.table8_pair_agreement([dict(r, img_size=300) for r in recs]) == {}  # no paper column


def test_training_results_only_reads(tmp_path, monkeypatch):
    from stm_lab.training import engine
    monkeypatch.setattr(results, 'RESULTS_DIR', tmp_path)
    monkeypatch.setattr(engine, 'train', lambda *a, **kw: pytest.fail('reading results trained a model'))
    assert reports.training_results('smoke') == {} and reports.training_results('cpu') == {}
    assert list(tmp_path.iterdir()) == []  # nothing written
    for name in ('u_mine_test', 'u_pvt_test', 'u_halonet_test'):
        results.save_result('smoke', f'train_{name}', [dict(epoch=1)], config=dict(train=dict(model=name)))
    results.save_result('smoke', 'train_throughput', [dict(model='u_pvt_test')])  # a benchmark, not a training
    docs = reports.training_results('smoke')
    assert list(docs) == ['u_halonet_test', 'u_pvt_test', 'u_mine_test']  # the paper's order, then the others
    assert docs['u_pvt_test']['records'] == [dict(epoch=1)]
    assert reports.training_results('smoke', 'epochs40') == {}


def test_a_missing_result_is_an_error_naming_the_command_that_makes_it(tmp_path, monkeypatch):
    """Readers never compute: a missing result raises, naming the command that makes it, and nothing is written."""
    from stm_lab.analysis import run
    monkeypatch.setattr(results, 'RESULTS_DIR', tmp_path)
    monkeypatch.setattr(run, 'analyze', lambda *a, **kw: pytest.fail('reading computed an analysis'))
    with pytest.raises(FileNotFoundError, match=r'^no erf result at profile smoke: make it with `stm-lab analyze erf '
                       r'--profile smoke` \(or every result: `stm-lab reproduce --profile smoke`\)$'):
        run.load('erf', 'smoke')
    with pytest.raises(FileNotFoundError, match=r"^no result 'train_u_swin_micro' for profile 'cpu/seed3' at .*; make it "
                       r'with `stm-lab reproduce --profile cpu` \(it runs what is missing; --dry-run shows the steps\)$'):
        results.load_result('cpu/seed3', 'train_u_swin_micro')
    with pytest.raises(FileNotFoundError, match=r"^no result 'train_speed' for profile 'bench' at .*; a benchmark: "
                       r'`stm-lab bench` lists them$'):
        results.load_result('bench', 'train_speed')
    assert list(tmp_path.iterdir()) == []
    results.save_result('smoke', 'erf', [dict(model='u_swin_test')])
    assert run.load('erf', 'smoke')['records'] == [dict(model='u_swin_test')]


@pytest.mark.e2e
def test_a_smoke_page_without_its_results_fails_naming_the_command(tmp_path, monkeypatch):
    """The training page at the smoke profile with no results: it stops with the command that makes them and trains
    nothing (it used to train the missing models while being read)."""
    from stm_lab import cli
    monkeypatch.setenv('STM_LAB_RESULTS', str(tmp_path / 'results'))  # the notebook's kernel reads it
    monkeypatch.setenv('STM_LAB_RUNS', str(tmp_path / 'runs'))
    assert cli.main(['notebooks', '--profile', 'smoke', '--only', 'training', '--out', str(tmp_path / 'out')]) == 1
    text = (tmp_path / 'out' / 'training.ipynb').read_text()
    assert 'no training results at profile smoke: `stm-lab reproduce --profile smoke` makes them' in text
    assert not (tmp_path / 'results').exists() and not (tmp_path / 'runs').exists()


def test_accuracy_markdown_has_a_row_per_model():
    rows = [dict(model='u_dwconv_micro', params_m=4.06, epochs=12, top1=52.94, top5=90.73, weights='ema',
                 train_img_per_s=50.7, wall_time_min=35.4, paper_top1=75.1)]
    md = training.accuracy_markdown(rows)
    assert md.count('\n') == 2 and '| U-DWConv | 4.06M | 12 | 52.94% | 90.73% | ema | 51 | 35.4 | 75.1% |' in md


@pytest.mark.parametrize('name', ['train_speed', 'train_profile', 'table8_throughput',
                                  'table8_throughput_micro_cuda', 'table8_throughput_tiny_cuda'])
def test_committed_speed_results_render(name):
    doc = results.load_result('bench', name)
    if name == 'train_speed':
        speed.speed_bars(doc['records'])
    elif name == 'train_profile':
        speed.profile_bars(doc['records'])
        assert 'aten::' in speed.top_operators_markdown(doc['records'])
    else:
        assert speed.table8_markdown(doc['records']).count('\n') == len({r['model'] for r in doc['records']}) + 1


def test_learning_curves_have_a_top1_and_a_loss_trace_per_run():
    doc = dict(records=[dict(epoch=1, train_loss=2.0), dict(epoch=2, train_loss=1.5, top1=40.0, ema_top1=42.0)])
    fig = training.training_curves({'u_dwconv_micro': doc})
    assert [len(t.x) for t in fig.data] == [1, 1, 2]  # weights, EMA (evaluated epochs), loss (every epoch)
    fig = training.comparison_curves({'u_dwconv_micro': doc}, {'u_dwconv_micro': doc}, 'longer')
    assert [t.y[-1] for t in fig.data] == [42.0, 1.5, 42.0, 1.5]  # best of weights and EMA; the loss
    assert [t.line.dash for t in fig.data] == ['solid', 'solid', 'dash', 'dash']  # main run, run kept apart
    assert fig.data[2].name == 'U-DWConv, longer' and fig.data[0].line.color == fig.data[2].line.color


def test_loss_label_names_the_loss_the_runs_trained_with():
    def doc(mixup, cutmix, ls=0.1):
        return dict(config=dict(train=dict(data=dict(mixup=mixup, cutmix=cutmix, label_smoothing=ls))))
    assert training.loss_label([doc(0.0, 0.0), doc(0.0, 0.0)]) == 'cross-entropy, label smoothing 0.1'
    assert training.loss_label([doc(0.8, 1.0)]) == 'mixup/cutmix soft-target loss'
    assert training.loss_label([doc(0.0, 0.0), doc(0.8, 1.0)]) == 'training loss (its own recipe)'
    assert training.loss_label([doc(0.0, 0.0, 0.1), doc(0.0, 0.0, 0.2)]) == 'training loss (its own recipe)'
    assert training.loss_label([{}]) == 'training loss (its own recipe)'  # no recorded configuration


def test_book_figures_load_nothing_from_other_sites():
    """The book's figure renderer writes no script from a CDN (plotly's own HTML renderer adds MathJax's)."""
    import plotly.graph_objects as go
    import plotly.io as pio
    from stm_lab.pages.common import use_book_renderer
    use_book_renderer()
    fig = go.Figure(go.Scatter(x=[1, 2], y=[3, 4]), frames=[go.Frame(data=[go.Scatter(x=[1, 2], y=[4, 3])])])
    html = pio.renderers['stm_book'].to_mimebundle(fig.to_dict())['text/html']
    assert 'Plotly.newPlot' in html and '<script' in html
    assert 'src="http' not in html and 'cdn' not in html.lower()
    assert 'Plotly.animate' not in html  # figures with frames wait for their slider (no auto-play)


def test_erf_fig6_and_photo_figure():
    """Fig. 6 view: one image per (stage, model); the photo figure: a frame per photo that changes the photo column
    and the per-photo maps only (the average maps stay)."""
    import base64
    import numpy as np
    from stm_lab.pages.erf import erf_fig6, erf_photo_figure
    rng = np.random.default_rng(0)
    models = ['u_swin_micro', 'u_halonet_micro']
    avg = [dict(model=m, stage=s, score_map=rng.random((8, 8)).tolist(), erf_at=[dict(t=0.5, side_ratio=0.5)])
           for m in models for s in (1, 2, 3, 4)]
    fig = erf_fig6(avg)
    assert len(fig.data) == 4 and all(d.type == 'image' for d in fig.data)
    titles = [a.text for a in fig.layout.annotations]
    assert 'U-Swin<br>Transformer' in titles and 'stage 3' in titles and 'stage 4' in titles
    assert fig.layout.xaxis.title.text == 'ERF@50<br>0.50'  # under each map
    photos = [dict(file=f'{i}.jpg', **{'class': f'c{i}'}) for i in range(3)]
    per = [dict(model=m, photo=p['file'], stage=s, img_size=8,
                score_u8=base64.b64encode(rng.integers(0, 256, 64, dtype=np.uint8).tobytes()).decode())
           for m in models for p in photos for s in (3, 4)]
    uris = {p['file']: f'data:image/jpeg;base64,{i}' for i, p in enumerate(photos)}
    fig = erf_photo_figure(per, avg, uris, photos)
    assert len(fig.data) == 2 * 5 and len(fig.frames) == 3
    assert list(fig.frames[1].traces) == [0, 1, 3, 5, 6, 8]  # photo, stage-3 map, stage-4 map of each model
    assert fig.frames[2].data[0].source == uris['2.jpg'] and fig.data[0].source == uris['0.jpg']
    assert fig.frames[1].data[1].source != fig.frames[2].data[1].source


def test_ablation_complexity_markdown_rows_in_the_given_order():
    records = [dict(model='u_halonet_micro', params_m=4.321, gmacs=0.6543, paper_gmacs=None),
               dict(model='u_swin_small', params_m=49.5, gmacs=8.7, paper_gmacs=9.16)]
    assert ablations.ablation_complexity_markdown(records) == (
        '| model | params | GMACs at 224 | paper GMACs |\n|---|---:|---:|---:|\n'
        '| `u_swin_small` | 49.50M | 8.70 | 9.16 |\n| `u_halonet_micro` | 4.32M | 0.65 | - |')
    assert ablations.ablation_complexity_markdown([]).startswith('*No complexity counts yet')


def test_architecture_tables():
    from stm_lab.mixers import MIXERS
    assert architecture.dashed((2, 2, 9, 2)) == '2-2-9-2'
    assert architecture.layouts_markdown(['u_swin_micro']).splitlines()[2] == \
        '| `u_swin_micro` | `sw_attn` | 2-2-9-2 | 32-64-128-256 | 1-2-4-8 | 4-4-4-4 | 0.0 |'
    # 224: window 7, halo block 7 / 3, PVT (8, 4, 2, 1); 64: window 4, block 4 / 2, PVT (2, 1, 1, 1) (models.py)
    assert architecture.size_rules_markdown((224, 64)).splitlines()[2:] == ['| 224 | 7 | 7 / 3 | 8-4-2-1 |',
                                                                      '| 64 | 4 | 4 / 2 | 2-1-1-1 |']
    mixers = architecture.mixers_markdown(MIXERS)
    assert mixers.count('\n') == len(MIXERS) + 1 and '| `sw_attn` |' in mixers
    # a summary wrapped over lines in its docstring is shown whole, not cut at the line's end
    assert 'Foundation Models with Deformable Convolutions", CVPR 2023). |' in mixers
    assert "| `_1px` (HaloNet) | mixer options {'halo': 1} |" in architecture.variants_markdown()


def test_coverage_markdown_counts_runs_only_where_several_are_needed_and_missing():
    cover = [dict(item='Table I', what='mixers', status='here', done=1, needed=1, setting='same'),
             dict(item='Table VI', what='A to E', status='partly here', done=7, needed=20, setting='micro'),
             dict(item='Fig. 8', what='FGSM', status='here', done=3, needed=3, setting='64 px')]
    assert findings.coverage_markdown(cover).splitlines()[2:] == [
        '| Table I | mixers | here | same |', '| Table VI | A to E | partly here (7 of 20 runs) | micro |',
        '| Fig. 8 | FGSM | here | 64 px |']
