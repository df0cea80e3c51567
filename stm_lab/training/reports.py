"""Reading training results: Table III's accuracy beside the paper's, the runs kept apart, how the exported weights
were chosen, and the markdown written beside the committed weights (``stm-lab summary --save``). Nothing here
trains; the Training page (:mod:`stm_lab.pages.training`) reads through it."""
from __future__ import annotations

from typing import Dict, List

from .. import layout, results
from .checkpoint import check_export
from .config import MICRO_MODELS, SMOKE_MODELS, profile_models


def summary(profile: str = 'cpu', models=None) -> List[dict]:
    """Top-1 of the trained models (default: :func:`profile_models`) beside the paper's Table III (ImageNet-1k at
    224). An exported weights file that does not pair with its result JSON is refused (:func:`check_export`)."""
    from ..paper import TABLE3
    rows = []
    for name in models or profile_models(profile):
        result = layout.train(profile, name)
        if not result.exists():
            continue
        doc = result.load()
        weights = layout.weights(profile, name)
        if weights.exists():
            check_export(weights)
        f = doc['records'][-1]
        rows.append(dict(model=name, top1=f['top1_fp16'], top5=f['top5_fp16'], weights=f['weights'],
                         top1_last=f['top1'], ema_top1_last=f.get('ema_top1'), epochs=f['epoch'],
                         train_img_per_s=round(doc['provenance'].get('train_img_per_s_median') or 0, 1) or None,
                         wall_time_min=round(doc['provenance']['wall_time_s'] / 60, 1),
                         params_m=round(doc['config']['params'] / 1e6, 2),
                         paper_top1=TABLE3.get(name, (None, None, None))[2]))
    return rows


def training_results(profile: str, folder: str = '') -> Dict[str, dict]:
    """model -> its ``train_<model>.json`` document under ``results/<profile>[/<folder>]``: the five main models in
    the paper's order (their ``*_test`` versions at the smoke profile), then any other model with a result there (a
    reader's own mixer), by name. Models without one are left out: this only reads (the smoke profile's are made
    by ``stm-lab train --profile smoke``, all of them by ``stm-lab reproduce --profile smoke``)."""
    where = layout.folder(profile, folder)
    roster = SMOKE_MODELS if profile == 'smoke' else MICRO_MODELS
    found = set(layout.trained_models(where))
    order = [*(m for m in roster if m in found), *sorted(found - set(roster))]
    docs = {m: layout.train(where, m).load() for m in order}
    return {m: d for m, d in docs.items() if 'train' in d['config']}  # not e.g. train_throughput.json


def selection_note(docs: Dict[str, dict]) -> Dict[str, dict]:
    """model -> how its exported weights were chosen, from its ``train_<model>.json`` document: ``weights``
    ('ema' or 'model'), ``rule`` ('fixed: ema' / 'fixed: model': by the configuration, before training; 'score':
    a result written before the rule, whose export took the weights that scored higher on the validation split
    it reports) and, for those, ``gap``: |top1 - ema_top1| of the final epoch (points), which bounds how much that
    choice on the reported split could have gained (None where a score is missing or the rule is fixed)."""
    out = {}
    for m, doc in docs.items():
        last = doc['records'][-1]
        rule = last.get('weights_rule') or 'score'
        gap = None
        if rule == 'score' and last.get('top1') is not None and last.get('ema_top1') is not None:
            gap = round(abs(last['top1'] - last['ema_top1']), 3)
        out[m] = dict(weights=last.get('weights'), rule=rule, gap=gap)
    return out


def selection_text(docs: Dict[str, dict]) -> str:
    """How the exported weights of ``docs`` were chosen, as a clause for the training page (:func:`selection_note`)."""
    notes = selection_note(docs)
    fixed = {m: n for m, n in notes.items() if n['rule'] != 'score'}
    legacy = {m: n for m, n in notes.items() if n['rule'] == 'score'}
    parts = []
    if fixed:
        kinds = sorted({n['weights'] for n in fixed.values()})
        parts.append(('' if not legacy else f'for {len(fixed)} of the models, ')
                     + f'the {" or ".join("EMA" if k == "ema" else "trained" for k in kinds)} weights, as the '
                     'configuration fixes before training (`export_weights`)')
    if legacy:
        gaps = [n['gap'] for n in legacy.values() if n['gap'] is not None]
        ema = sum(n['weights'] == 'ema' for n in legacy.values())
        parts.append(('' if not fixed else f'for {len(legacy)} of the models, ')
                     + f'the weights that scored higher at the last epoch on this same validation split (the EMA for '
                     f'{ema} of {len(legacy)}): these results were exported before the choice was fixed by the '
                     'configuration'
                     + (f'; the EMA and the trained weights differ there by {min(gaps):.2f}-{max(gaps):.2f} points, '
                        f'which bounds what choosing on the reported split could have gained' if gaps else ''))
    return '; '.join(parts) if parts else 'none'


def result_folders(profile: str) -> List[str]:
    """Sub-folders of ``results/<profile>/`` that hold training results (runs kept apart with ``--results-subdir``)."""
    root = results.RESULTS_DIR / profile
    return sorted(p.name for p in root.iterdir() if p.is_dir() and layout.trained_models(layout.folder(profile, p.name))
                  ) if root.is_dir() else []


def config_changes(base: dict, other: dict) -> Dict[str, tuple]:
    """``{key: (base value, other value)}`` for the training-config fields (``data.<field>`` for the data
    pipeline) that differ between two ``train_<model>.json`` documents."""
    def flat(doc):
        cfg = dict(doc['config']['train'])
        return {**{k: v for k, v in cfg.items() if k != 'data'}, **{f'data.{k}': v for k, v in cfg['data'].items()}}
    a, b = flat(base), flat(other)
    return {k: (a.get(k), b.get(k)) for k in sorted(a.keys() | b.keys()) if a.get(k) != b.get(k)}


def format_summary(rows: List[dict], profile: str) -> str:
    lines = [f'| model | params | top-1 ({profile}) | top-5 | weights | epochs | train img/s | minutes | paper top-1 (ImageNet, 224) |',
             '|---|---|---|---|---|---|---|---|---|']
    for r in rows:
        lines.append(f'| {r["model"]} | {r["params_m"]}M | {r["top1"]:.2f}% | {r["top5"]:.2f}% | {r["weights"]} | '
                     f'{r["epochs"]} | {r["train_img_per_s"]} | {r["wall_time_min"]} | '
                     f'{str(r["paper_top1"]) + "%" if r["paper_top1"] else "-"} |')
    return '\n'.join(lines)


def summary_readme(rows: List[dict], table: str, profile: str) -> str:
    """Markdown beside the committed checkpoints: the table, the input-size adaptations, the commands."""
    main = training_results(profile) if profile in ('smoke', 'cpu') else {}
    lines = [f'# Trained models, `{profile}` profile', '', 'Written by `stm-lab summary --profile '
             f'{profile} --save` from the `train_<model>.json` files here. Top-1 is that of the committed half-precision '
             'weights (`<model>.safetensors`; the weights column says which), on the full validation split; the '
             'paper\'s column is ImageNet-1k at 224x224 after 300 epochs (Table III), so only the ranking can be '
             'compared.' + (f' Exported weights: {selection_text(main)}.' if main else ''), '', table, '',
             '## Input-size adaptations', '',
             'Windows and reduction ratios follow the feature maps at this input size (`stm_lab.models.adapt_to_img_size`):', '']
    for r in rows:
        doc = layout.train(profile, r['model']).load()
        mc, tc = doc['config']['model'], doc['config']['train']
        stage = [o for o in mc['stage_mixer_options'] if o]
        opts = ', '.join(f'{k}={v}' for k, v in mc['mixer_options'].items()) or 'none'
        lines.append(f'- `{r["model"]}` at {mc["img_size"]}x{mc["img_size"]}: mixer options {opts}'
                     + (f'; per stage {stage}' if stage else '') + f'; batch {tc["batch_size"]}, peak lr {tc["lr"]:g}, '
                     f'EMA {tc["ema_decay"]}, {tc["epochs"]} epochs. {_command_at(doc)}')
    folders = result_folders(profile)
    if folders:
        lines += ['', '## Runs kept apart', '', 'Written with `--results-subdir <folder>`; each differs from the run above '
                  'of the same model in the configuration fields listed. Only their results are committed, not their '
                  'weights (`.gitignore`); the command re-creates them.']
    for folder in folders:
        docs = training_results(profile, folder)
        lines += ['', f'### `{folder}/`', '']
        if not docs:  # other models than the main set: the ablation variants, tabulated by `stm-lab ablations`
            names = layout.trained_models(layout.folder(profile, folder))
            lines.append(f'{len(names)} runs of other models ({", ".join(f"`{n}`" for n in names)}); their tables '
                         'are on the book\'s Ablations page (`stm-lab ablations list` prints each command).')
            continue
        for m, doc in docs.items():
            try:
                changes = config_changes(layout.train(profile, m).load(), doc)
            except FileNotFoundError:
                changes = {}
            lines.append(f'- `{m}`: ' + ('; '.join(f'{k} {a} -> {b}' for k, (a, b) in changes.items()) or 'no change')
                         + f'. {_command_at(doc)}')
        lines += ['', format_summary(summary(f'{profile}/{folder}', models=list(docs)), profile)]
    return '\n'.join(lines) + '\n'


def _command_at(doc: dict) -> str:
    """The command of a result and the commit it ran at: profile defaults change, so the command alone can mislead."""
    prov = doc['provenance']
    dirty = ' with uncommitted changes' if prov.get('git_dirty') else ''
    return f'Command: `{prov["command"]}` (at commit {str(prov.get("git_sha"))[:7]}{dirty})'
