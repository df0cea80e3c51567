"""stm-lab: a reproducible companion to "Demystify Transformers & Convolutions in Modern Image Deep Networks".

Importing the package registers every spatial token mixer (``stm_lab.mixers.MIXERS``) and every unified model
with timm (``timm.list_models('u_*')``); in the ``stm-lab`` program itself, only once a command runs (its help and
usage errors need neither torch nor timm).
"""
__version__ = '0.1.0'

import os as _os
import sys as _sys

# Idle OpenMP threads that spin make a busy 2-core machine 5-10x slower (measured: U-DWConv-micro trains at
# 9.7 vs 108 images/s); the setting only takes effect if torch is not loaded yet, and a user's value wins.
_os.environ.setdefault('OMP_WAIT_POLICY', 'PASSIVE')

_LAZY = ('mixers', 'UnifiedConfig', 'UnifiedNet', 'MIXERS', 'TokenMixer', 'register_mixer', 'create_model',
         'register_family')
_loaded = False


def _load() -> None:
    """Register the mixers and the models with timm (imports torch and timm), then a user's modules named in
    ``$STM_LAB_IMPORT``. Runs when the package is imported, except in the ``stm-lab`` program: its parsers (--help,
    --version, usage errors) need neither, and it calls this before it runs a command."""
    global _loaded
    if _loaded:
        return
    _loaded = True  # first: the modules imported below may look names up here again (see __getattr__)
    from . import mixers  # registers the mixers
    from .backbone import UnifiedConfig, UnifiedNet
    from .mixers import MIXERS, TokenMixer, register_mixer
    from .models import create_model, register_family  # registers the models with timm
    globals().update(UnifiedConfig=UnifiedConfig, UnifiedNet=UnifiedNet, MIXERS=MIXERS, TokenMixer=TokenMixer,
                     register_mixer=register_mixer, create_model=create_model, register_family=register_family)
    if _os.environ.get(mixers.IMPORT_ENV):  # a user's mixers, for processes started by `stm-lab --import ...`
        mixers.import_user_modules()


def __getattr__(name):  # only reached in the stm-lab program before _load (PEP 562)
    if name in _LAZY:
        _load()
        if name in globals():
            return globals()[name]
    raise AttributeError(f'module {__name__!r} has no attribute {name!r}')


if _os.path.basename((getattr(_sys, 'argv', None) or [''])[0]).removesuffix('.exe') != 'stm-lab':
    _load()
