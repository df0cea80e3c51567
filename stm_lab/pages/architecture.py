"""The Architecture page: the registered mixers, the models' layouts, the sizes that follow the input, and the
ablation variants, read from the registries (nothing trained)."""
from __future__ import annotations

import sys
from typing import Dict, Iterable

from ..models import ABLATIONS, HALO_VARIANTS, model_config, parse_name


def dashed(values: Iterable) -> str:
    """A per-stage tuple as the architecture tables show it: (2, 2, 9, 2) -> '2-2-9-2'."""
    return '-'.join(str(v) for v in values)


def mixers_markdown(mixers: Dict[str, type]) -> str:
    """The registered mixers (``stm_lab.mixers.MIXERS``), by name: class and the first line of its module's doc."""
    rows = ['| mixer | class | what it is |', '|---|---|---|']
    for name, cls in sorted(mixers.items()):
        # the first paragraph of the module's docstring (the built-in mixers have one module each), else the
        # class's, joined: a summary wrapped over lines would otherwise be cut mid-sentence
        doc = ' '.join((sys.modules[cls.__module__].__doc__ or cls.__doc__ or '').strip().split('\n\n')[0].split())
        rows.append(f'| `{name}` | `{cls.__name__}` | {doc} |')
    return '\n'.join(rows)


def layouts_markdown(models: Iterable[str]) -> str:
    """Each model's layout at 224 (``stm_lab.models.model_config``): mixer, depths, widths, heads or groups, MLP
    ratios, drop-path rate."""
    rows = ['| model | mixer | depths | widths | heads / groups | MLP ratios | drop path |',
            '|---|---|---|---|---|---|---:|']
    for name in models:
        parsed = parse_name(name)
        c = model_config(parsed.family, parsed.scale)
        rows.append(f"| `{name}` | `{c['mixer']}` | {dashed(c['depths'])} | {dashed(c['dims'])} | {dashed(c['heads'])} "
                    f"| {dashed(c['mlp_ratios'])} | {c['drop_path_rate']} |")
    return '\n'.join(rows)


def size_rules_markdown(sizes: Iterable[int] = (224, 64, 96, 128, 256)) -> str:
    """The options that follow the input size, at each size: Swin's window, HaloNet's block and halo, PVT's
    reduction ratios (micro models)."""
    rows = ['| img_size | Swin window | Halo block / halo | PVT SR ratios |', '|---:|---|---|---|']
    for s in sizes:
        sw = model_config('swin', 'micro', s)['mixer_options']
        ho = model_config('halonet', 'micro', s)['mixer_options']
        pv = model_config('pvt', 'micro', s)['stage_mixer_options']
        rows.append(f"| {s} | {sw['window']} | {ho['block']} / {ho['halo']} | {dashed([o['sr_ratio'] for o in pv])} |")
    return '\n'.join(rows)


def variants_markdown() -> str:
    """The ablation suffixes (Table VI's B-E, Table VII's HaloNet variants) and what each switches."""
    rows = ['| suffix | switches |', '|---|---|']
    rows += [f'| `_{k}` | {v} |' for k, v in ABLATIONS.items()]
    rows += [f'| `_{k}` (HaloNet) | mixer options {v} |' for k, v in HALO_VARIANTS.items()]
    return '\n'.join(rows)
