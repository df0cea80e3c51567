"""Named unified models (paper Table III), registered with timm.

After ``import stm_lab``::

    timm.create_model('u_swin_micro', num_classes=10, img_size=64)
    timm.list_models('u_*')
    timm.create_model('u_swin_micro', pretrained=True)        # the trained weights: u_swin_micro.cpu_imagenette_64
    timm.list_models('u_*', pretrained=True)                  # the five tags
    timm.create_model('u_swin_test', features_only=True, out_indices=(1, 3))   # stage maps (timm's FeatureGetterNet)

Pretrained tags (:func:`trained_cfg`): the committed weights of a model at the ``cpu`` profile
(:func:`stm_lab.assets.find_weights`, the five ``u_*_micro``) are registered as ``<model>.<profile>_<dataset>_<size>``,
``u_swin_micro.cpu_imagenette_64``: the tag names how they were made (timm's ``<recipe>_<dataset>[_<size>]``), the
profile being the recipe (``stm-lab train --profile cpu``); the dataset is spelled out (Imagenette is not one of
timm's ImageNet abbreviations). Their cfg (input size, crop, interpolation, mean, std, classes) is read from the
checkpoint's own record of its evaluation, and ``file=`` points at it: ``pretrained=True`` works offline and timm's
``resolve_model_data_config`` + ``create_transform`` reproduce ``stm-lab eval``'s input pipeline. The untagged cfg of
every model stays the default (the paper's ImageNet-1k setting: 224 px, 1000 classes, no weights), so
``create_model(name)`` builds what it always built; ``pretrained=True`` without a tag takes the model's trained tag.

Families (prefix -> mixer): ``u_halonet`` halo_attn, ``u_pvt`` sr_attn, ``u_swin`` sw_attn, ``u_dwconv`` dw_conv,
``u_internimage`` dcnv3, plus the lower bounds ``u_identity`` and ``u_pooling``. Scales ``micro``, ``tiny``,
``small``, ``base`` follow the paper's configurations (depths, widths, heads/groups, SR ratios, MLP ratios,
drop-path rates of the authors' factories); ``test`` is a tiny layout for fast tests. Ablation variants, at the
paper's scale and at micro (the CPU reproduction): Table VI ``u_<family>_{small,micro}_{b,c,d,e}`` (A is the plain
model), Table VII ``u_halonet_{small,micro}_{switch,1px,shift}``, Table II (tiny in the paper)
``u_{swin,dwconv}_{tiny,micro}_patchds`` (non-overlapped stem and downsampling) and ``u_halonet_{tiny,micro}_resblock``
(HaloNet's own ResNet bottleneck block).

Sizes that depend on the input (:func:`adapt_to_img_size`, each mixer's ``size_options`` rule), chosen so that 224
gives the paper's values:

- window (Swin) and query block (HaloNet): 7 if 7 divides the stage-1 map side (``ceil(img_size / 4)``), else
  the largest divisor of that side in [4, 7], else 7 (maps are then padded); 224 -> 7, 64 -> 4, 96 -> 6.
  Halo band = block // 2 (224 -> 3, 64 -> 2). A map side no larger than the window (block) is one window (block)
  on that axis, and Swin drops its shift on that axis.
- PVT spatial-reduction ratio of stage i: the paper's ratio (8, 4, 2, 1), halved until the reduced map keeps at
  least 7 tokens per side (or down to 1); 224 -> (8, 4, 2, 1), 64 -> (2, 1, 1, 1).

Register a family for your own mixer with :func:`register_family`.
"""
from __future__ import annotations

import difflib
import importlib.metadata
import warnings
from dataclasses import dataclass, field
from functools import lru_cache, partial
from typing import Callable, Dict, Optional, Tuple

import timm
from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
from timm.models import build_model_with_cfg, generate_default_cfgs, register_model, resolve_pretrained_cfg

from .backbone import UnifiedNet
from .mixers import mixer_trait, size_options, stage_sides
from .paper import DISPLAY
from .mixers.swin import window_for_side

SCALES = ('micro', 'tiny', 'small', 'base')


@dataclass(frozen=True)
class Layout:
    """A family's layout at one scale: blocks, channels and heads (groups) per stage, drop-path rate, MLP ratios."""
    depths: Tuple[int, ...]
    dims: Tuple[int, ...]
    heads: Tuple[int, ...]
    drop_path_rate: float = 0.0
    mlp_ratios: Tuple[float, ...] = (4, 4, 4, 4)


def _dims(c):
    return (c, 2 * c, 4 * c, 8 * c)


# Local-attention layouts (HaloNet and Swin share them): head dim 32 everywhere
_LOCAL = {
    'micro': Layout((2, 2, 9, 2), _dims(32), (1, 2, 4, 8), 0.0),
    'tiny': Layout((2, 2, 6, 2), _dims(96), (3, 6, 12, 24), 0.2),
    'small': Layout((2, 2, 18, 2), _dims(96), (3, 6, 12, 24), 0.3),
    'base': Layout((2, 2, 18, 2), _dims(128), (4, 8, 16, 32), 0.5),
}
_PVT_DIMS = (64, 128, 320, 512)
_PVT = {
    'micro': Layout((2, 2, 3, 2), (32, 64, 160, 256), (1, 2, 5, 8), 0.0, (8, 8, 4, 4)),
    'tiny': Layout((3, 4, 9, 3), _PVT_DIMS, (1, 2, 5, 8), 0.1, (8, 8, 4, 4)),
    'small': Layout((3, 4, 21, 3), _PVT_DIMS, (1, 2, 5, 8), 0.3, (8, 8, 4, 4)),
    'base': Layout((3, 8, 45, 3), _PVT_DIMS, (1, 2, 5, 8), 0.5, (4, 4, 4, 4)),
}
_DWCONV = {  # heads are unused by dw_conv
    'micro': Layout((3, 3, 8, 3), _dims(32), (1, 2, 4, 8), 0.0),
    'tiny': Layout((2, 2, 9, 2), _dims(96), (3, 6, 12, 24), 0.1),
    'small': Layout((2, 2, 24, 2), _dims(96), (3, 6, 12, 24), 0.4),
    'base': Layout((2, 2, 24, 2), _dims(128), (4, 8, 16, 32), 0.5),
}
_DCN = {  # groups = C / 16
    'micro': Layout((2, 2, 9, 2), _dims(32), (2, 4, 8, 16), 0.0),
    'tiny': Layout((4, 4, 18, 4), _dims(64), (4, 8, 16, 32), 0.1),
    'small': Layout((4, 4, 21, 4), _dims(80), (5, 10, 20, 40), 0.3),
    'base': Layout((4, 4, 21, 4), _dims(112), (7, 14, 28, 56), 0.5),
}
# one tiny layout for tests: 16 channels per head/group, two blocks in stage 3 (so Swin shifts once)
_TEST = Layout((1, 1, 2, 1), (16, 32, 48, 64), (1, 2, 3, 4), 0.0)


@dataclass(frozen=True)
class Family:
    mixer: str
    layouts: Dict[str, Layout]
    norm_eps: float = 1e-5
    options: dict = field(default_factory=dict)
    single_res_pre_norm: bool = False  # ConvNeXt-style (D/E) variants keep an LN before the mixer


FAMILIES: Dict[str, Family] = {
    'halonet': Family('halo_attn', _LOCAL, 1e-5),
    'pvt': Family('sr_attn', _PVT, 1e-5),
    'swin': Family('sw_attn', _LOCAL, 1e-6),
    'dwconv': Family('dw_conv', _DWCONV, 1e-6, single_res_pre_norm=True),
    'internimage': Family('dcnv3', _DCN, 1e-5),
    # lower bounds: U-DWConv's micro layout with the mixer replaced
    'identity': Family('identity', {'micro': _DWCONV['micro']}, 1e-6),
    'pooling': Family('pooling', {'micro': _DWCONV['micro']}, 1e-6),
}

# the five families the paper compares, in its order (the book's roster: :func:`main_models`)
MAIN_FAMILIES = ('halonet', 'pvt', 'swin', 'dwconv', 'internimage')

# Table VI (Fig. 4): A is the unified model; B adds LN after pooling; C also drops stage norms;
# D uses the ConvNeXt-style single-residual block; E = D with C's norms
ABLATIONS = {
    'b': dict(norm_after_pool=True),
    'c': dict(norm_after_pool=True, stage_norm=False),
    'd': dict(block='single'),
    'e': dict(block='single', norm_after_pool=True, stage_norm=False),
}
# Table VII: HaloNet local-attention variants (small scale)
HALO_VARIANTS = {
    'switch': dict(switch=True),  # halo only on every other block
    '1px': dict(halo=1),
    'shift': dict(centric=False),  # query block at the top-left corner of its key window
}
# Table II (tiny scale in the paper): the original stage design (non-overlapped patch stem and merging) of Swin and
# ConvNeXt, and the original (ResNet bottleneck) block of HaloNet; DW-Conv with ConvNeXt's block is Table VI's D
TABLE2_VARIANTS = {
    ('swin', 'patchds'): dict(downsample='patch'),
    ('dwconv', 'patchds'): dict(downsample='patch'),
    ('halonet', 'resblock'): dict(block='bottleneck'),
}
# the paper's scale, micro (the cpu profile's runs) and test (the smoke profile's)
ABLATION_SCALES = {'table6': ('small', 'micro', 'test'), 'table7': ('small', 'micro', 'test'),
                   'table2': ('tiny', 'micro', 'test')}


def window_for(img_size: int) -> int:
    """Swin's window (and HaloNet's block) at an input size: the mixers' rule on the first stage's map."""
    return window_for_side(stage_sides(img_size, 1)[0])


def adapt_to_img_size(mixer: str, img_size: int, num_stages: int = 4) -> Tuple[dict, Tuple[dict, ...]]:
    """Input-size-dependent mixer options: (options for all stages, per-stage options), by the mixer's own
    ``size_options`` rule (``stm_lab.mixers.base``)."""
    return size_options(mixer, img_size, num_stages)


def _layout(family: str, scale: str) -> Layout:
    layouts = {**FAMILIES[family].layouts, 'test': _TEST}
    if scale not in layouts:
        raise KeyError(f'family {family!r} has no scale {scale!r}; valid: {", ".join(layouts)}')
    return layouts[scale]


def model_config(family: str, scale: str, img_size: int = 224, **overrides) -> dict:
    """Keyword arguments of :class:`UnifiedNet` for a family at a scale (``overrides`` win)."""
    if family not in FAMILIES:
        raise KeyError(f'unknown model family {family!r}; valid: {", ".join(sorted(FAMILIES))}')
    fam = FAMILIES[family]
    lay = _layout(family, scale)
    options, stage_options = adapt_to_img_size(fam.mixer, img_size, len(lay.depths))
    cfg = dict(mixer=fam.mixer, depths=lay.depths, dims=lay.dims, heads=lay.heads, mlp_ratios=lay.mlp_ratios,
               drop_path_rate=lay.drop_path_rate, norm_eps=fam.norm_eps, img_size=img_size,
               mixer_options={**options, **fam.options}, stage_mixer_options=stage_options,
               single_res_pre_norm=fam.single_res_pre_norm)
    extra_options = overrides.pop('mixer_options', {})
    cfg['mixer_options'] = {**cfg['mixer_options'], **extra_options}
    cfg.update(overrides)
    return cfg


default_cfgs: Dict[str, object] = {}  # read by timm's register_model: a DefaultCfg (tags) per model

PRETRAINED_PROFILE = 'cpu'  # the profile whose committed weights are published as timm pretrained tags
PAPER = dict(paper_name='Demystify Transformers & Convolutions in Modern Image Deep Networks',
             paper_ids='arXiv:2211.05781')
DATA_TERMS = ('Data: Imagenette (fast.ai) is a 10-class subset of ImageNet; its images fall under the ImageNet '
              'terms of access (non-commercial research and educational use only, https://image-net.org/download). '
              'These weights are derived from those images: use them within those terms.')


@lru_cache(maxsize=None)
def _project_license() -> Optional[str]:
    try:
        return importlib.metadata.metadata('stm-lab').get('License-Expression')
    except importlib.metadata.PackageNotFoundError:  # run from a checkout without installing it
        return None


def _untrained_cfg(img_size: int) -> dict:
    """The paper's ImageNet-1k setting, without weights (what ``create_model(name)`` builds)."""
    # fixed_input_size: img_size is a construction argument (windows, halo blocks, SR ratios and position tables
    # adapt to it), so timm passes the cfg's input size to the model as img_size
    return dict(num_classes=1000, input_size=(3, img_size, img_size), fixed_input_size=True, pool_size=None,
                crop_pct=0.875, interpolation='bicubic', mean=IMAGENET_DEFAULT_MEAN, std=IMAGENET_DEFAULT_STD,
                first_conv='stem.0', classifier='head', license=_project_license(), **PAPER)


def pretrained_tag(profile: str, data: dict) -> str:
    """A trained checkpoint's timm tag, from its record: ``<profile>_<dataset>_<img size>``."""
    return f'{profile}_{data["dataset"]}_{data["img_size"]}'


def trained_cfg(model: str, profile: str = PRETRAINED_PROFILE) -> Optional[Tuple[str, dict]]:
    """``(tag, pretrained cfg)`` of the committed weights of ``model`` at ``profile``; None where there are none.
    Everything about the input comes from the checkpoint's record of how it was evaluated (``data``)."""
    from .assets import find_weights
    from .data import IMAGENETTE_CLASSES, IMAGENETTE_WNIDS
    from .training.checkpoint import read_checkpoint
    path = find_weights(model, profile)
    if path is None:
        return None
    try:
        state = read_checkpoint(path, tensors=False)[1]
    except ValueError as e:  # a damaged file must not stop `import stm_lab`: no tag, and say why
        warnings.warn(f'{model}: no pretrained tag registered ({e})')
        return None
    data, classes, config = state['data'], list(state['classes']), state['model_config']
    if classes == list(IMAGENETTE_CLASSES):  # timm's convention: label_names are synsets, described in words
        names, descriptions = tuple(IMAGENETTE_WNIDS), dict(zip(IMAGENETTE_WNIDS, classes))
    else:
        names, descriptions = tuple(classes), None
    epochs = state.get('metrics', {}).get('epoch')
    cfg = dict(
        file=str(path), num_classes=len(classes), input_size=(config['in_chans'], data['img_size'], data['img_size']),
        fixed_input_size=True, pool_size=None, crop_pct=data['crop_pct'],
        crop_mode='center',  # stm_lab.data.image_transform leaves timm's eval crop at its default: center
        interpolation=data['interpolation'], mean=tuple(data['mean']), std=tuple(data['std']),
        label_names=names, label_descriptions=descriptions, first_conv='stem.0', classifier='head',
        license=_project_license(),
        description=(f'{display_name(model)} ({model}) trained by stm-lab at the {profile} profile: {data["dataset"]}, '
                     f'{len(classes)} classes, {data["img_size"]}x{data["img_size"]}'
                     + (f', {epochs} epochs' if epochs else '') + f', {state.get("weights", "model")} weights'),
        notes=(f'Made by `stm-lab train --model {model} --profile {profile}`; its training record is '
               f'results/{profile}/train_{model}.json in the stm-lab repository.',
               DATA_TERMS,
               f'Weights: released with stm-lab under its license ({_project_license() or "see LICENSE"}), '
               'within the data terms above.'),
        **PAPER)
    return pretrained_tag(profile, data), cfg


_TRAINED_FILES: Dict[str, str] = {}  # registered tag file -> model (the files the pretrained filter verifies)


def _default_cfg(name: str, img_size: int):
    """timm's DefaultCfg of a model: the untagged paper cfg first (the default), then the trained tag if any."""
    cfgs = {name: _untrained_cfg(img_size)}
    trained = trained_cfg(name)
    if trained is not None:
        tag, cfg = trained
        cfgs[f'{name}.{tag}'] = cfg
        _TRAINED_FILES[cfg['file']] = name
    default = generate_default_cfgs(cfgs)[name]
    # timm puts the first tag with weights first (the default); the untagged cfg stays first here, so that
    # create_model(name) keeps building the paper's 224 px / 1000 class model (Table III's counts, the tests)
    default.tags.remove('')
    default.tags.appendleft('')
    return default


def trained_tag(name: str) -> Optional[str]:
    """The pretrained tag a model's ``pretrained=True`` loads (its first tag with weights), or None."""
    default = default_cfgs.get(name)
    return next((t for t in getattr(default, 'tags', ()) if t and default.cfgs[t].has_weights), None)


def _verified_weights(state_dict: dict, model) -> dict:
    """timm's ``pretrained_filter_fn``: a registered stm-lab checkpoint is checked as ``load_model`` checks it
    (the digests of its tensors and state, the pairing with its result JSON) and its verified tensors are loaded;
    any other file (a ``pretrained_cfg_overlay``) goes through as timm read it."""
    from .training.checkpoint import check_export, read_checkpoint
    path = model.pretrained_cfg.get('file')
    if path not in _TRAINED_FILES:
        return state_dict
    tensors, state = read_checkpoint(path)
    check_export(path, state)
    return tensors


def _build(family: str, scale: str, variant: dict, default_img_size: int, img_size=None, **kwargs) -> UnifiedNet:
    """The model class timm's builder calls, with the cfg's defaults (img_size, num_classes, in_chans) applied."""
    if img_size is None:  # a pretrained_cfg of the caller's without fixed_input_size
        img_size = default_img_size
    if not isinstance(img_size, int):
        sides = tuple(img_size)
        if len(sides) != 2 or sides[0] != sides[1]:
            raise ValueError(f'the unified models are built for square images: img_size must be an int S or (S, S), '
                             f'got {img_size!r}')
        img_size = int(sides[0])
    extra = dict(variant)
    extra['mixer_options'] = {**extra.get('mixer_options', {}), **kwargs.pop('mixer_options', {})}
    return UnifiedNet(**model_config(family, scale, img_size, **extra, **kwargs))


@dataclass(frozen=True)
class ModelName:
    """What a model's name means, as it was registered: ``u_<family>_<scale>[_<variant>]`` (a family may itself
    hold underscores: ``u_my_pool_micro`` is family 'my_pool')."""
    family: str
    scale: str
    variant: str = ''  # '' for the family's model itself; 'B'..'E' style ablation letters, 'patchds', ...


NAMES: Dict[str, ModelName] = {}  # every registered unified model (filled by _register)
# models measured beside the unified ones (the speed page's reference), by their name on the pages
REFERENCES: Dict[str, Tuple[ModelName, str]] = {
    'timm_swin_micro': (ModelName('swin', 'micro', 'timm'), "timm's Swin (same shape)")}


def parse_name(model: str) -> ModelName:
    """Family, scale and variant of a registered model, from its registry entry (never from splitting the name at
    underscores); unknown names raise KeyError with the valid ones."""
    if model in NAMES:
        return NAMES[model]
    if model in REFERENCES:
        return REFERENCES[model][0]
    close = difflib.get_close_matches(str(model), list(NAMES), n=3)
    hint = f' Did you mean: {", ".join(close)}?' if close else ''
    raise KeyError(f'unknown model {model!r}.{hint} Valid models: {", ".join(NAMES)}')


def _register(name: str, family: str, scale: str, variant: Optional[dict] = None,
              default_img_size: int = 224) -> Callable:
    variant = dict(variant or {})
    base = f'u_{family}_{scale}'
    if not (name == base or name.startswith(base + '_')):
        raise ValueError(f'model name {name!r} must be {base} or {base}_<variant>')
    NAMES[name] = ModelName(family, scale, name[len(base) + 1:])

    def entrypoint(pretrained: bool = False, **kwargs):
        tag = kwargs.get('pretrained_cfg')
        valid = [t for t in default_cfgs[name].tags if t]
        if isinstance(tag, str) and tag and tag not in valid:  # timm's own error does not list the valid tags
            raise ValueError(f'{name} has no pretrained tag {tag!r}; valid: {", ".join(valid) or "none"}'
                             + ('' if valid else ' (no trained weights under this name)'))
        if pretrained and not tag:
            kwargs['pretrained_cfg'] = trained_tag(name)
        if pretrained and not resolve_pretrained_cfg(name, kwargs['pretrained_cfg'],
                                                     kwargs.get('pretrained_cfg_overlay')).has_weights:
            raise ValueError(f'{name}: no trained weights are published under this name; the pretrained models are '
                             f'{", ".join(timm.list_models("u_*", pretrained=True)) or "none"}. Train one with '
                             f'`stm-lab train` and load its checkpoint (stm_lab.training.load_model)')
        stages = len(kwargs.get('depths', _layout(family, scale).depths))
        return build_model_with_cfg(
            partial(_build, family, scale, variant, default_img_size), name, pretrained,
            pretrained_filter_fn=_verified_weights,
            # stages hand on NCHW maps through a channels-last interior: features come from forward_intermediates
            feature_cfg=dict(feature_cls='getter', out_indices=tuple(range(stages))), **kwargs)

    entrypoint.__name__ = entrypoint.__qualname__ = name
    entrypoint.__module__ = __name__
    entrypoint.__doc__ = f'U-{family} {scale} ({FAMILIES[family].mixer}){" " + str(variant) if variant else ""}'
    default_cfgs[name] = _default_cfg(name, default_img_size)
    register_model(entrypoint)
    globals()[name] = entrypoint
    return entrypoint


def register_family(prefix: str, mixer: str, layouts: Optional[Dict[str, Layout]] = None, norm_eps: float = 1e-5,
                    options: Optional[dict] = None, single_res_pre_norm: bool = False) -> list:
    """Register ``<prefix>_{micro,tiny,small,base,test}`` for a mixer (e.g. a user's own, registered with
    ``register_mixer``). ``layouts`` defaults to the local-attention layouts (2-2-9-2 micro ... base).
    Returns the registered model names."""
    if not prefix.startswith('u_'):
        raise ValueError(f"model family prefix must start with 'u_' (got {prefix!r}) so list_models('u_*') finds it")
    family = prefix[2:]
    FAMILIES[family] = Family(mixer, dict(layouts or _LOCAL), norm_eps, dict(options or {}), single_res_pre_norm)
    return _register_scales(family)


def _default_size(scale: str) -> int:
    return 64 if scale == 'test' else 224


def _register_scales(family: str) -> list:
    names = []
    for scale in [*FAMILIES[family].layouts, 'test']:
        names.append(f'u_{family}_{scale}')
        _register(names[-1], family, scale, default_img_size=_default_size(scale))
    return names


def create_model(name: str, **kwargs):
    """``timm.create_model`` for the unified models, with an error that lists the valid names."""
    valid = timm.list_models('u_*')
    if name not in valid:
        close = difflib.get_close_matches(name, valid, n=3)
        hint = f' Did you mean: {", ".join(close)}?' if close else ''
        raise KeyError(f'unknown model {name!r}.{hint} Valid models: {", ".join(valid)}')
    return timm.create_model(name, **kwargs)


def main_models(scale: str = 'micro') -> list:
    """The roster: the five models the book compares, in the paper's order, at a scale (``test``: the smoke
    profile's layouts). Training, analyses, benchmarks, figures and tests read it from here."""
    return [f'u_{f}_{scale}' for f in MAIN_FAMILIES]


def family_of(model: str) -> str:
    """The family of a registered model: 'swin' for 'u_swin_micro_patchds' (:func:`parse_name`)."""
    return parse_name(model).family


def scale_of(model: str) -> str:
    """The scale of a registered model: 'micro' for 'u_swin_micro_patchds' (:func:`parse_name`)."""
    return parse_name(model).scale


def display_name(model: str) -> str:
    """A model's name on every page, table and figure: the paper's name of its family (``paper.DISPLAY``: U-HaloNet,
    U-Swin Transformer, ...) at any scale or variant; a registered family the paper does not name (a user's) is
    'U-' and its mixer's ``display_name``; a reference model its own name (``REFERENCES``); anything else
    keeps its name."""
    if model in REFERENCES:
        return REFERENCES[model][1]
    if model not in NAMES:
        return model
    family = NAMES[model].family
    if family in DISPLAY:
        return DISPLAY[family]
    return 'U-' + mixer_trait(FAMILIES[family].mixer, 'display_name')


def paper_model_names() -> list:
    """The 20 models of Table III, in its order (scale-major)."""
    return [m for s in SCALES for m in main_models(s)]


for _family in list(FAMILIES):
    _register_scales(_family)
for _family in MAIN_FAMILIES:
    for _scale in ABLATION_SCALES['table6']:
        for _letter, _switch in ABLATIONS.items():
            _register(f'u_{_family}_{_scale}_{_letter}', _family, _scale, _switch, _default_size(_scale))
for _scale in ABLATION_SCALES['table7']:
    for _name, _opts in HALO_VARIANTS.items():
        _register(f'u_halonet_{_scale}_{_name}', 'halonet', _scale, dict(mixer_options=_opts), _default_size(_scale))
for _scale in ABLATION_SCALES['table2']:
    for (_family, _name), _switch in TABLE2_VARIANTS.items():
        _register(f'u_{_family}_{_scale}_{_name}', _family, _scale, _switch, _default_size(_scale))
