"""Low-level operators used by the mixers: pure-PyTorch reference paths and compiled CPU kernels (``ops/``)."""
from .dcnv3 import BACKENDS, dcnv3_backend, dcnv3_core
from .dwconv import depthwise_conv2d

__all__ = ['BACKENDS', 'dcnv3_backend', 'dcnv3_core', 'depthwise_conv2d']
