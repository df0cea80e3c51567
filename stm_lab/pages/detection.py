"""The Detection page (Table V, Fig. 5, the detection row of Fig. 7): the detectors of
``results/<profile>/detection.json`` and their training records (``detection/det_train_<model>.json``), the page's
tables, figures and text, and the evidence for the detection claims with their verdicts. It reads results; the runs
are :mod:`stm_lab.detection.run`'s. A configuration argument ``cfg`` is a
:class:`stm_lab.detection.train.DetTrainConfig` (the notebook resolves it)."""
from __future__ import annotations

import itertools
import json
from collections import Counter
from typing import Dict, Iterable, List, Optional, Sequence, Tuple

import numpy as np
import plotly.graph_objects as go

from .. import layout, profiles
from ..claims import BY_ID, Result, Verdict, check_rank_draws
from ..detection.shapes import SHAPES
from ..models import MAIN_FAMILIES, display_name, family_of
from ..paper import TABLE5_MICRO
from .common import color_of, models_in_order, two_panels
from .evidence import paper_gap

AP50_TARGET = 0.5  # box AP50 on the validation split at which the best detector has clearly learned the task


def _load(result: layout.Result) -> Optional[dict]:
    return result.load() if result.exists() else None


def load(profile: str) -> Optional[dict]:
    """``results/<profile>/detection.json``, or None before the detectors are evaluated; its records in the paper's
    model order (an evaluation merged later puts its models last in the file), shared records first."""
    doc = _load(layout.analysis(profile, 'detection'))
    if doc:
        doc['records'] = paper_order(doc['records'])
    return doc


def paper_order(records: Iterable[dict]) -> List[dict]:
    """Records without a model first, then the paper's five in its order, then any other model by name; the order
    within one model is kept."""
    def key(r):
        m = r.get('model')
        if m is None:
            return 0, 0, ''
        try:
            fam = family_of(m)
        except KeyError:  # a reader's mixer whose plugin is not loaded here: after the paper's five
            fam = None
        return 1, MAIN_FAMILIES.index(fam) if fam in MAIN_FAMILIES else len(MAIN_FAMILIES), m
    return sorted(records, key=key)


def made_by(doc: dict) -> List[str]:
    """The commands that made ``detection.json``, oldest first: an evaluation of some models merges into the saved
    result (:func:`stm_lab.results.save_merged`), whose earlier provenance it keeps."""
    prov = doc['provenance']
    commands = [p.get('command') for p in reversed(prov.get('earlier', []))] + [prov.get('command')]
    return list(dict.fromkeys(c for c in commands if c))


def ap_records(doc: Optional[dict]) -> Dict[str, dict]:
    return {r['model']: r for r in (doc or {}).get('records', []) if r['kind'] == 'ap'}


# ------------------------------------------------------------------------------------------------ claims

def erf50(profile: str, stage: int = 4) -> Dict[str, float]:
    """ERF@50 (side ratio) of each model's last stage, from ``results/<profile>/erf.json`` (the Fig. 5 x-axis)."""
    doc = _load(layout.analysis(profile, 'erf'))
    return {r['model']: next(a['side_ratio'] for a in r['erf_at'] if a['t'] == 0.5)
            for r in (doc or {}).get('records', []) if r['stage'] == stage}


def fig5_rows(profile: str) -> List[dict]:
    """Fig. 5: per model, ERF@50 of the last stage against box AP_S, AP_M, AP_L (models with both)."""
    erf, aps = erf50(profile), ap_records(load(profile))
    return [dict(model=m, family=family_of(m), erf50=erf[m], **{k: aps[m][f'box_{k}'] for k in ('APs', 'APm', 'APl')},
                 **{f'se_{k}': aps[m].get(f'se_box_{k}') for k in ('APs', 'APm', 'APl')})
            for m in aps if m in erf]


def _ranks(v: Sequence[float]) -> np.ndarray:
    """Ranks with ties sharing their mean rank (so that equal values carry no order)."""
    v = np.asarray(v, float)
    return np.array([np.mean(np.nonzero(np.sort(v) == x)[0]) for x in v])


def spearman(x: Sequence[float], y: Sequence[float]) -> Optional[float]:
    """Spearman's rank correlation; None for fewer than 3 points or a constant variable."""
    if len(x) < 3 or len(x) != len(y):
        return None
    rx, ry = _ranks(x), _ranks(y)
    if np.std(rx) == 0 or np.std(ry) == 0:
        return None
    return round(float(np.corrcoef(rx, ry)[0, 1]), 3)


def erf_claim(profile: str) -> Optional[dict]:
    """Fig. 5's claim that ERF@50 does not predict detection accuracy. Disagreement: a strong rank correlation
    (|Spearman| >= 0.9) in all three size buckets. Agreement: a pair of models whose larger-ERF member has the lower
    box AP in some bucket by more than twice the paired bootstrap noise (the paper's U-HaloNet against
    U-InternImage). Otherwise the numbers cannot tell."""
    rows = fig5_rows(profile)
    if len(rows) < 3:
        return None
    aps = ap_records(load(profile))
    rho = {k: spearman([r['erf50'] for r in rows], [r[k] for r in rows if r[k] is not None])
           if all(r[k] is not None for r in rows) else None for k in ('APs', 'APm', 'APl')}
    counter = None
    for a, b in itertools.permutations(rows, 2):
        if a['erf50'] <= b['erf50']:
            continue
        for k in ('APs', 'APm', 'APl'):
            if a[k] is None or b[k] is None or a[k] >= b[k]:
                continue
            draws = zip(aps[a['model']].get(f'boot_box_{k}') or [], aps[b['model']].get(f'boot_box_{k}') or [])
            pairs = [(x, y) for x, y in draws if x is not None and y is not None]
            se = float(np.std([y - x for x, y in pairs], ddof=1)) if len(pairs) > 1 else None
            gap = b[k] - a[k]
            if se is not None and gap > 2 * se and (counter is None or gap / se > counter['z']):
                counter = dict(larger=a['model'], smaller=b['model'], bucket=k, gap=gap, se=se, z=gap / se)
    strong = all(r is not None and abs(r) >= 0.9 for r in rho.values())
    verdict = Verdict.DISAGREES if strong else (Verdict.AGREES if counter else Verdict.CANNOT_TELL)
    ours = ', '.join(f'{k} {v:+.2f}' if v is not None else f'{k} n/a' for k, v in rho.items())
    noise = (f'{display_name(counter["larger"])} has the larger ERF@50 but {counter["bucket"]} lower than '
             f'{display_name(counter["smaller"])} by {counter["gap"]:.3f} (bootstrap standard error {counter["se"]:.3f})'
             if counter else 'no pair of models contradicts the ERF order beyond twice the bootstrap noise')
    return dict(verdict=verdict, rho=rho, counterexample=counter, ranking=f'Spearman rank correlation of ERF@50 '
                f'(last stage) with box AP: {ours}', noise=noise)


def claims(profile: str) -> Dict[str, object]:
    """The evidence for the paper's detection claims (decided by :mod:`stm_lab.claims`): ``box`` and ``consistency``
    are (model -> score, model -> paired bootstrap draws), box AP and the mean box consistency over the upscales
    1.25-3; ``erf`` is :func:`erf_claim` (None: not measured)."""
    doc = load(profile)
    aps = ap_records(doc)
    summary = {r['model']: r for r in (doc or {}).get('records', []) if r['kind'] == 'scale_summary'}
    return dict(box=({m: r.get('box_AP') for m, r in aps.items()}, {m: r.get('boot_box_AP') for m, r in aps.items()}),
                consistency=({m: r['consistency_up'] for m, r in summary.items()},
                             {m: r['boot_consistency_up'] for m, r in summary.items()}),
                erf=erf_claim(profile) if doc else None)


def detection_results(profile: str = 'cpu') -> List[Result]:
    """Table V, Fig. 5 and the detection row of Fig. 7 (:func:`claims`: box AP and box consistency with
    paired-bootstrap noise over the images, one detector per backbone)."""
    c = claims(profile)
    order = sorted(TABLE5_MICRO, key=lambda m: -TABLE5_MICRO[m][0])
    table5 = 'Table V, micro (COCO box AP): ' + ', '.join(f'{display_name(m)} {TABLE5_MICRO[m][0]}' for m in order)
    box = {family_of(m): v[0] for m, v in TABLE5_MICRO.items()}
    out = [check_rank_draws(BY_ID[cid], *c['box'], family_of, display_name, table5, paper_gap(BY_ID[cid], box),
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


# ------------------------------------------------------------------------------------------------ text

def train_docs(profile: str, models: Sequence[str]) -> Dict[str, dict]:
    """model -> its ``det_train_<model>.json`` document under ``results/<profile>/detection`` (models without one are
    left out)."""
    docs = {m: _load(layout.det_train(profile, m)) for m in models}
    return {m: d for m, d in docs.items() if d is not None}


def training_course(profile: str, models: Sequence[str]) -> dict:
    """How the committed training runs of ``models`` went, from their ``det_train_<model>.json``: per model the
    epochs run, any change of schedule on resume, the loss of each epoch, its fall over the last epoch before the
    first lr drop (a run still learning falls by several percent), and the training speed actually achieved (images
    per second of CPU time, quick evaluations included) beside the bench's estimate; and the best final box AP50
    against ``AP50_TARGET``. ``{}`` when nothing was trained."""
    bench = _load(layout.analysis(profile, 'detection_throughput'))
    bench_speed = {r['model']: r['train_img_per_s'] for r in bench['records']} if bench else {}
    # benches that time the run's own step (train_s_per_step) estimate a run's wall time: steps x the step
    bench_step = {r['model']: r['train_s_per_step'] for r in bench['records'] if 'train_s_per_step' in r} if bench else {}
    beside = {r['model']: bool(r.get('companion')) for r in bench['records']} if bench else {}  # timed beside a training
    rows = []
    for m, doc in train_docs(profile, models).items():
        cfg = doc['config']['train']  # the run's own configuration
        epochs = [r for r in doc['records'] if 'loss' in r]
        loss = [r['loss'] for r in epochs]
        drop = cfg['lr_steps'][0] if cfg['lr_steps'] else len(loss)  # last epoch at the full learning rate
        fall = (loss[drop - 2] - loss[drop - 1]) / loss[drop - 2] if 2 <= drop <= len(loss) else None
        cpu_s = sum(r.get('cpu_time_s', 0) for r in epochs)
        speed = len(epochs) * cfg['shapes']['train_images'] / cpu_s if cpu_s else None
        wall_s = sum(r.get('wall_time_s', 0) for r in epochs)
        estimated_s = (len(epochs) * (cfg['shapes']['train_images'] // cfg['batch_size']) * bench_step[m]
                       if m in bench_step else None)
        rows.append(dict(model=m, epochs=len(epochs), lr_steps=list(cfg['lr_steps']), loss=loss,
                         loss_fall_before_drop=fall, schedule_changes=doc['provenance'].get('schedule_changes', []),
                         img_per_core_s=speed, bench_img_per_s=bench_speed.get(m),
                         speed_ratio=(bench_speed[m] / speed if speed and m in bench_speed else None),
                         train_wall_s=wall_s or None, estimated_train_s=estimated_s,
                         estimate_error=(estimated_s / wall_s - 1 if estimated_s and wall_s else None),
                         bench_beside_training=beside.get(m),
                         box_AP50=doc['records'][-1].get('box_AP50')))
    if not rows:
        return {}
    best = max((r for r in rows if r['box_AP50'] is not None), key=lambda r: r['box_AP50'], default=None)
    at_target = [r['model'] for r in rows if r['box_AP50'] is not None and r['box_AP50'] >= AP50_TARGET]
    return dict(rows=rows, best=best and best['model'], best_AP50=best and best['box_AP50'], target=AP50_TARGET,
                reached=bool(at_target), at_target=at_target)


def _span(values: Sequence[float], fmt: str) -> str:
    lo, hi = format(min(values), fmt), format(max(values), fmt)
    return lo if lo == hi else f'{lo}-{hi}'


def course_note(profile: str, models: Sequence[str]) -> str:
    """The page's account of the training runs: their schedule, and why the best model falls short of the target
    when it does, in the measured numbers of :func:`training_course`."""
    c = training_course(profile, models)
    if not c:
        return '*No detector trained yet.*'
    rows = c['rows']
    lines = []
    for r in rows:
        for ch in r['schedule_changes']:
            lines.append(f"{display_name(r['model'])} ran its first {ch['after_epoch']} epochs under a "
                         f"{ch['epochs']}-epoch schedule (lr drops after epochs {' and '.join(map(str, ch['lr_steps']))}) "
                         f"and was then continued as a {r['epochs']}-epoch run: the learning rate of every finished "
                         f"epoch is the same in both schedules, so it is the run a fresh {r['epochs']}-epoch run "
                         f"would have made (`tests/test_detection.py` checks this equality).")
    ratios = [r['speed_ratio'] for r in rows if r['speed_ratio']]
    speeds = [r['img_per_core_s'] for r in rows if r['img_per_core_s']]
    falls = [r['loss_fall_before_drop'] for r in rows if r['loss_fall_before_drop'] is not None]
    best = next(r for r in rows if r['model'] == c['best'])
    paper_epochs = profiles.get('paper').detection['epochs']  # the 1x schedule
    if c['reached']:
        verdict = (f"{len(c['at_target'])} of the {len(rows)} detectors reach a box AP50 of at least {c['target']:g} "
                   f"at the end of training, taken as the sign of a model that has clearly learned the task ("
                   + ', '.join(f"{display_name(r['model'])} {r['box_AP50']:.3f}" for r in rows
                               if r['box_AP50'] is not None) +
                   f"); the best is {display_name(c['best'])}.")
    else:
        verdict = (f"The best detector, {display_name(c['best'])}, reaches a box AP50 of {c['best_AP50']:.3f} "
                   f"(below the {c['target']:g} taken as the sign of a model that has clearly learned the task).")
    if not c['reached'] and falls and speeds:
        verdict += (f" The runs stopped well before convergence: in the last epoch at the full learning rate (epoch "
                    f"{best['lr_steps'][0] if best['lr_steps'] else best['epochs']}) the training loss still fell by "
                    f"{_span(falls, '.0%')}. They have {best['epochs']} epochs of the 1x schedule's "
                    f"{paper_epochs}: training ran at {min(speeds):.1f}-{max(speeds):.1f} images per core-second")
        if ratios:
            verdict += (f", {_span(ratios, '.1f')} times slower than the short benchmark that sized the "
                        f"profile (`stm-lab detect bench`: a few steps of an untrained detector)")
        verdict += f'. More epochs (`--epochs {paper_epochs}`) are the first thing to try with more compute.'
    timed = [r for r in rows if r['estimate_error'] is not None]
    if timed:
        errors = [r['estimate_error'] for r in timed]
        alone = not all(r['bench_beside_training'] for r in timed)
        verdict += (f" The bench (`stm-lab detect bench`: each run's own training step timed "
                    f"{'alone' if alone else 'beside a second training'}) "
                    f"estimated the training time of the {len(timed)} runs within {max(abs(e) for e in errors):.0%} "
                    f"(" + ', '.join(f"{display_name(r['model'])} {r['estimated_train_s'] / 60:.0f} min estimated, "
                                     f"{r['train_wall_s'] / 60:.0f} measured" for r in timed) + ").")
    return '\n\n'.join([verdict] + lines)


def training_note(model: str, doc: dict) -> str:
    """One line on how a detector was trained (its ``det_train_<model>.json``): where its backbone came from, its
    epochs, core time and command."""
    rep = doc['config'].get('load_report')
    init = (f"{len(rep['loaded']) + len(rep['resized'])} backbone tensors from `{doc['config']['backbone_init']}` "
            f"({len(rep['resized'])} refitted), {len(rep['new'])} new" if rep else 'backbone from its seeded '
            'initialization (no classification checkpoint)')
    return (f"- {display_name(model)}: {init}; {doc['records'][-1]['epoch']} epochs, "
            f"{doc['provenance'].get('cpu_time_s', 0) / 60:.0f} core-minutes. Command: "
            f"`{doc['provenance'].get('command')}`")


def shared_setting(runs: Dict[str, object]) -> Tuple[Optional[object], str]:
    """The setting the page describes, from the committed runs' recorded configurations (``model ->
    DetTrainConfig``; the notebook reads them from each ``det_train_<model>.json``), so that the page says how the runs
    it shows were trained even where the profile has changed since: the setting most runs share (the first run's on a
    tie), None before any run; and '' or a sentence naming each run trained otherwise, with the fields that differ
    (one setting for every backbone is the plan; a run retrained otherwise is said, not hidden)."""
    if not runs:
        return None, ''

    keys = {m: json.dumps({k: v for k, v in c.to_dict().items() if k != 'model'}, sort_keys=True, default=str)
            for m, c in runs.items()}
    counts = Counter(keys.values())
    common = max(counts, key=counts.get)  # the first of the most common, in the runs' order
    shared = next(runs[m] for m, k in keys.items() if k == common)
    odd = [f'{display_name(m)} ({", ".join(_differ(runs[m], shared))})' for m, k in keys.items() if k != common]
    return shared, (f"Trained in another setting than the other detectors, so not comparable with them: "
                    f"{'; '.join(odd)}." if odd else '')


def _differ(a, b) -> List[str]:
    """The configuration fields (``to_dict``) in which two runs' settings differ, the model aside."""
    x, y = a.to_dict(), b.to_dict()
    return [k for k in x if k != 'model' and x[k] != y.get(k)]


def profile_change_note(runs, now) -> str:
    """'' where the shown runs' setting (``runs``) is the profile's current one (``now``); else a sentence saying that
    the reproduce commands now train another setting than the runs the page shows."""
    differ = _differ(now, runs)
    if not differ:
        return ''
    return (f"The profile's detection setting has changed since the runs shown here were trained ({', '.join(differ)}): "
            f"these commands now train {schedule_text(now)}.")


def setting_text(cfg) -> str:
    """The generated shapes set of a profile's configuration, in words."""
    s = cfg.shapes
    return (f'{s.train_images:,} training and {s.val_images} validation images of {s.img_size}x{s.img_size} px, '
            f'{len(SHAPES)} shape classes ({", ".join(SHAPES)}), 1-{s.max_instances} instances per '
            f'image, {s.min_side:g}-{s.max_side:g} px, drawn on '
            + ('Imagenette photos' if s.photos == 'imagenette' else 'the committed fixture photos'))


def heads_text(cfg) -> str:
    """The detector's heads (FPN, box and mask heads, RoI sampling, anchors), in words."""
    d = cfg.detector
    return (f'FPN width {d.fpn_channels}, box head {d.box_head_dim}, mask head {len(d.mask_head_layers)} x '
            f'{d.mask_head_layers[0]} channels, {d.box_batch_size_per_image} sampled RoIs per image, anchors '
            f'{"/".join(map(str, d.anchor_sizes))} px')


def schedule_text(cfg) -> str:
    """The training schedule (epochs, batch, optimizer, warm-up, learning-rate drops, flips), in words."""
    return (f'{cfg.epochs} epochs of batch {cfg.batch_size}, AdamW lr {cfg.lr:g} (weight decay {cfg.weight_decay:g}), '
            f'{cfg.warmup_iters} warm-up steps, lr divided by 10 after epochs {" and ".join(map(str, cfg.lr_steps))}, '
            f'flip {cfg.hflip:g}')


def paper_setting_text(cfg) -> str:
    """The paper's detection setting (its profile's configuration), in words."""
    return (f'COCO train2017 at a shorter side of {cfg.detector.min_size} px (longer at most {cfg.detector.max_size}), '
            f'{cfg.epochs} epochs of batch {cfg.batch_size}, AdamW lr {cfg.lr:g}')


def speed_markdown(profile: str) -> str:
    """The measured speeds (``detection_throughput.json``) and the core time its bench estimated for each run."""
    doc = _load(layout.analysis(profile, 'detection_throughput'))
    if doc is None:
        return f'*No speed measured yet (`stm-lab detect bench --profile {profile} --threads 1 --save`).*'
    hours = doc['config']['core_hours']
    out = ['| model | train img/s (one core) | inference img/s | training, core-h | evaluate, core-h |',
           '|---|---:|---:|---:|---:|']
    for r in doc['records']:
        h = hours[r['model']]
        out.append(f'| {display_name(r["model"])} | {r["train_img_per_s"]:.1f} | {r["eval_img_per_s"]:.1f} | '
                   f'{h["train"]:.2f} | {h["evaluate"]:.2f} |')
    total = sum(h['train'] + h['evaluate'] for h in hours.values())
    load = doc['provenance'].get('loadavg')
    out += ['', f'Total: about {total:.1f} core-hours ({total / 2:.1f} hours on two cores). Measured over '
                f'{doc["config"]["steps"]} training steps per model with `{doc["provenance"].get("command")}`, as CPU '
                f'time of the process (one thread; CPU: {doc["provenance"].get("cpu")}), while both cores were busy '
                f'with other training runs (load average {load[0] if load else "?"}): on an idle machine it may be '
                f'faster.']
    return '\n'.join(out)


def not_yet_note(profile: str, commands: Sequence[str]) -> str:
    """What the detection page says before a profile's runs exist: the ``commands`` that make them, in order
    (:func:`stm_lab.detection.run.commands`), and the measured speed at the profile's settings
    (:func:`speed_markdown`)."""
    cmds = '\n'.join(commands)
    return f"""**The {profile}-profile detection runs have not been made yet**, so the tables and figures
below are empty. They are made, in this order, by

```
{cmds}
```

(the training commands can run two at a time on two cores; each resumes where it stopped). Measured speed at this
profile's settings and the core time it gives:

{speed_markdown(profile)}"""


# ------------------------------------------------------------------------------------------------ tables, figures

def _num(v, digits: int = 3) -> str:
    return '-' if v is None else f'{v:.{digits}f}'


def detection_markdown(records: Iterable[dict]) -> str:
    """Table V: box and mask AP per model (``kind == 'ap'`` records of ``detection.json``), the bootstrap standard
    error of box AP, and the paper's micro row (COCO at 800 px, in percent). Six columns, so that it fits a phone."""
    out = ['| model | box AP (± se) | AP50 | AP small / medium / large | mask AP | paper box / mask AP |',
           '|---|---:|---:|---:|---:|---:|']
    for r in records:
        se = f' ± {r["se_box_AP"]:.3f}' if r.get('se_box_AP') is not None else ''
        sml = ' / '.join(_num(r[f'box_AP{k}']) for k in 'sml')
        paper = f'{r["paper_box_AP"]} / {r["paper_mask_AP"]}' if 'paper_box_AP' in r else '-'
        out.append(f'| {display_name(r["model"])} | {_num(r["box_AP"])}{se} | {_num(r["box_AP50"])} | {sml} | '
                   f'{_num(r["mask_AP"])} | {paper} |')
    return '\n'.join(out)


def fig5_scatter(rows: Iterable[dict]) -> go.Figure:
    """Fig. 5: box AP for small, medium and large objects against ERF@50 (last stage), one marker per model, with
    two bootstrap standard errors (rows of :func:`fig5_rows`)."""
    from plotly.subplots import make_subplots
    rows = list(rows)
    buckets = (('APs', 'small'), ('APm', 'medium'), ('APl', 'large'))
    fig = make_subplots(rows=1, cols=3, shared_yaxes=False, horizontal_spacing=0.08,
                        subplot_titles=[f'{name} objects' for _, name in buckets])
    for r in rows:
        for j, (key, name) in enumerate(buckets, 1):
            se = r.get(f'se_{key}')
            fig.add_scatter(x=[r['erf50']], y=[r[key]], mode='markers', name=display_name(r['model']),
                            legendgroup=r['model'], showlegend=j == 1, marker=dict(size=11, color=color_of(r['model'])),
                            error_y=dict(type='data', array=[2 * se], visible=True) if se else None,
                            hovertemplate=f'ERF@50 %{{x:.2f}}: {name} box AP %{{y:.3f}}<extra>{display_name(r["model"])}'
                                          '</extra>', row=1, col=j)
        fig.update_xaxes(title_text='ERF@50 (last stage)', row=1, col=j)
    fig.update_yaxes(title_text='box AP', row=1, col=1)
    fig.update_layout(template='plotly_white', height=380, margin=dict(l=60, r=20, t=40, b=50),
                      legend=dict(orientation='h', y=-0.25))
    return fig


def detection_scale_curves(records: Iterable[dict]) -> go.Figure:
    """Fig. 7, third row: box consistency mAP (against the unscaled predictions) and box AP (against the ground
    truth) against the input scale, one line per model (``kind == 'scale'`` records)."""
    records = list(records)
    fig = two_panels(['box consistency mAP (unscaled predictions as ground truth)', 'box AP (ground truth)'])
    for m in models_in_order(records):
        rs = sorted((r for r in records if r['model'] == m), key=lambda r: r['scale'])
        for row, key in ((1, 'consistency_AP'), (2, 'box_AP')):
            fig.add_scatter(x=[r['scale'] for r in rs], y=[r[key] for r in rs], mode='lines+markers',
                            name=display_name(m), legendgroup=m, showlegend=row == 1, line=dict(color=color_of(m)),
                            hovertemplate='scale %{x}: %{y:.3f}<extra>' + display_name(m) + '</extra>', row=row, col=1)
    fig.update_xaxes(title_text='input scale', row=2, col=1)
    fig.update_layout(template='plotly_white', height=600, margin=dict(l=60, r=20, t=40, b=50),
                      legend=dict(orientation='h', y=-0.12))
    return fig


SHAPE_COLORS = ('#e41a1c', '#377eb8', '#4daf4a', '#984ea3', '#ff7f00', '#a65628', '#f781bf', '#999999')


def detection_demo_figure(demo: Iterable[dict], images: Iterable[dict], categories: Iterable[dict]) -> go.Figure:
    """"Scale an image": a slider over the input scale; one row per demo image, one column per model, each model's
    boxes (score >= 0.5, mapped back onto the image) drawn over it, coloured by class (``kind == 'demo'`` and
    ``'demo_image'`` records of ``detection.json``; ``categories``: the set's COCO categories)."""
    from plotly.subplots import make_subplots
    demo, images = list(demo), list(images)
    names = {c['id']: c['name'] for c in categories}
    models = models_in_order(demo)
    ids = [im['image_id'] for im in images]
    scales = sorted({r['scale'] for r in demo})
    fig = make_subplots(rows=len(ids), cols=len(models), horizontal_spacing=0.01, vertical_spacing=0.01,
                        column_titles=[display_name(m).replace('U-', '').replace(' Transformer', '') for m in models])
    for i, im in enumerate(images):
        for j, m in enumerate(models):
            fig.add_trace(go.Image(source=im['uri'], hoverinfo='skip'), row=i + 1, col=j + 1)
    index = {(r['model'], r['image_id'], r['scale']): r for r in demo}

    def shapes_at(s):
        out = []
        for i, image_id in enumerate(ids):
            for j, m in enumerate(models):
                k = i * len(models) + j + 1
                ref = '' if k == 1 else str(k)
                r = index.get((m, image_id, s))
                for box, label in zip(r['boxes'] if r else [], r['labels'] if r else []):
                    out.append(dict(type='rect', xref=f'x{ref}', yref=f'y{ref}', x0=box[0], y0=box[1], x1=box[2],
                                    y1=box[3], line=dict(color=SHAPE_COLORS[(label - 1) % len(SHAPE_COLORS)],
                                                         width=2)))
        return out

    start = scales.index(1.0) if 1.0 in scales else 0
    legend = ', '.join(f'<span style="color:{SHAPE_COLORS[(c - 1) % len(SHAPE_COLORS)]}">{n}</span>'
                       for c, n in sorted(names.items()))
    fig.update_layout(
        template='plotly_white', height=110 + 150 * len(ids), margin=dict(l=10, r=10, t=60, b=90),
        shapes=shapes_at(scales[start]),
        title=dict(text=f'boxes with score >= 0.5, by class: {legend}', font=dict(size=12), x=0),
        sliders=[dict(active=start, currentvalue=dict(prefix='input scale: ', font=dict(size=12)),
                      pad=dict(t=10, b=0), x=0, len=1, y=0, yanchor='top',
                      steps=[dict(method='relayout', label=f'{s:g}', args=[{'shapes': shapes_at(s)}])
                             for s in scales])])
    fig.update_xaxes(visible=False)
    fig.update_yaxes(visible=False)
    return fig
