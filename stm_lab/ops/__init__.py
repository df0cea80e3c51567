"""Low-level operators used by the mixers (pure PyTorch; compiled kernels may be added beside them)."""
from .dcnv3 import dcnv3_core

__all__ = ['dcnv3_core']
