"""stm-lab: a reproducible companion to "Demystify Transformers & Convolutions in Modern Image Deep Networks".

Importing the package registers every spatial token mixer (``stm_lab.mixers.MIXERS``) and every unified model
with timm (``timm.list_models('u_*')``).
"""
__version__ = '0.1.0'

import os as _os

# Idle OpenMP threads that spin make a busy 2-core machine 5-10x slower (measured: U-DWConv-micro trains at
# 9.7 vs 108 images/s); the setting only takes effect if torch is not loaded yet, and a user's value wins.
_os.environ.setdefault('OMP_WAIT_POLICY', 'PASSIVE')

from . import mixers  # noqa: F401  (registers the mixers)
from .backbone import UnifiedConfig, UnifiedNet  # noqa: F401
from .mixers import MIXERS, TokenMixer, register_mixer  # noqa: F401
from .models import create_model, register_family  # noqa: F401  (registers the models with timm)

if _os.environ.get(mixers.IMPORT_ENV):  # a user's mixers, for processes started by `stm-lab --import ...`
    mixers.import_user_modules()
