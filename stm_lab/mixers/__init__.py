"""Spatial token mixers (STMs), one file each, and the registry that names them.

``MIXERS`` maps a name to a mixer class. Add your own with the decorator::

    from stm_lab.mixers import register_mixer, TokenMixer

    @register_mixer('my_mixer')
    class MyMixer(TokenMixer):
        def forward(self, x):  # (B, H, W, C) -> (B, H, W, C)
            ...

and it can be used in the unified backbone (``UnifiedNet(mixer='my_mixer', ...)``) like any built-in one.
"""
from __future__ import annotations

import inspect
from typing import Callable, Dict, List, Optional, Type

import torch.nn as nn

from .base import TokenMixer, stage_sides

#: The registry, mixer name -> mixer class (filled by :func:`register_mixer`).
MIXERS: Dict[str, Type[nn.Module]] = {}

# keywords the backbone passes to every mixer (see base.py)
CONTEXT_KEYS = ('block_index', 'stage_index', 'feat_size')


def register_mixer(name: str) -> Callable[[Type[nn.Module]], Type[nn.Module]]:
    """Class decorator: register a mixer class under ``name``."""
    def wrap(cls):
        if name in MIXERS and MIXERS[name] is not cls:
            raise ValueError(f'mixer name {name!r} is already registered to {MIXERS[name].__qualname__}')
        MIXERS[name] = cls
        cls.mixer_name = name
        return cls
    return wrap


def get_mixer_class(name: str) -> Type[nn.Module]:
    """The class registered under ``name``; an unknown name is a KeyError that lists the valid ones."""
    try:
        return MIXERS[name]
    except KeyError:
        raise KeyError(f'unknown mixer {name!r}; valid mixers: {", ".join(sorted(MIXERS))}') from None


TRAIT_DEFAULTS = dict(recipe='transformer', dynamic_sampling=False, display_name=None, color=None)


def mixer_trait(name: str, trait: str):
    """A trait of a registered mixer (see ``base.py``), with the default for classes that do not declare it
    (a user's mixer need not derive from :class:`TokenMixer`); ``display_name`` falls back to the registry name."""
    if trait not in TRAIT_DEFAULTS:
        raise KeyError(f'unknown mixer trait {trait!r}; valid: {", ".join(TRAIT_DEFAULTS)}')
    value = getattr(get_mixer_class(name), trait, TRAIT_DEFAULTS[trait])
    return name if trait == 'display_name' and value is None else value


def size_options(name: str, img_size: int, num_stages: int = 4):
    """The input-size-dependent options of a mixer: (for every stage, per stage)."""
    sides = stage_sides(img_size, num_stages)
    rule = getattr(get_mixer_class(name), 'size_options', None)
    return rule(sides) if rule is not None else ({}, tuple({} for _ in sides))


def _accepted(cls, kwargs: dict) -> dict:
    """Keep only the keywords ``cls.__init__`` accepts (all of them if it takes ``**kwargs``)."""
    params = inspect.signature(cls.__init__).parameters
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
        return kwargs
    return {k: v for k, v in kwargs.items() if k in params}


def create_mixer(name: str, dim: int, num_heads: int, **options) -> nn.Module:
    """Build a registered mixer. Context keywords a user's mixer does not accept are dropped;
    its own options are passed through unchanged (so a misspelt option still fails loudly)."""
    cls = get_mixer_class(name)
    context = {k: options.pop(k) for k in CONTEXT_KEYS if k in options}
    return cls(dim, num_heads, **options, **_accepted(cls, context))


def stage_input(name: str, dim: int, feat_size, **options):
    """The module a mixer wants applied at the start of each stage, or None."""
    hook = getattr(get_mixer_class(name), 'stage_input', None)
    return hook(dim, feat_size, **options) if hook is not None else None


IMPORT_ENV = 'STM_LAB_IMPORT'  # comma-separated modules that register a user's mixers and models


def import_user_modules(modules=()) -> List[str]:
    """Import the modules that register a user's mixers (and families): ``modules``, those listed in
    ``$STM_LAB_IMPORT``, and every ``stm_lab.mixers`` entry point of installed packages. The current folder is
    searched first, as ``python -m`` does. Returns the modules imported; a module that cannot be imported is one
    clear ImportError."""
    import importlib
    import os
    import sys
    from importlib.metadata import entry_points
    names = [*modules, *filter(None, os.environ.get(IMPORT_ENV, '').split(','))]
    if os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())
    done = []
    for name in dict.fromkeys(n.strip() for n in names):
        try:
            importlib.import_module(name)
        except ImportError as e:
            raise ImportError(f'cannot import {name!r} (from --import or ${IMPORT_ENV}): {e}') from None
        done.append(name)
    for ep in entry_points(group='stm_lab.mixers'):
        ep.load()
        done.append(ep.value)
    return done


def mixer_module(name: str) -> str:
    """The module that defines a registered mixer (recorded in checkpoints, so a user's mixer can be rebuilt)."""
    return get_mixer_class(name).__module__


def ensure_mixer(name: str, module: Optional[str] = None) -> None:
    """Make sure mixer ``name`` is registered, importing ``module`` (as recorded in a checkpoint) if it is not."""
    if name in MIXERS or not module:
        get_mixer_class(name)  # raises with the list of valid names
        return
    import importlib
    try:
        importlib.import_module(module)
    except ImportError as e:
        raise KeyError(f'mixer {name!r} comes from module {module!r}, which cannot be imported ({e}); '
                       f'put it on the path or pass --import') from None
    get_mixer_class(name)


# built-in mixers register themselves on import
from . import identity, pooling, dwconv, halo, sr_attn, swin, dcnv3  # noqa: E402,F401

__all__ = ['MIXERS', 'TokenMixer', 'register_mixer', 'get_mixer_class', 'create_mixer', 'stage_input', 'mixer_trait',
           'size_options', 'stage_sides']
