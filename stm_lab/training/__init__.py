"""Training with the paper's recipe (Table IV), its checkpoints, and the reading of its results.

``config`` (TrainConfig, profiles, ``--set``), ``distributed`` (processes, seeding), ``checkpoint`` (the file format,
exported weights, the run-folder lock), ``engine`` (the run, evaluation, export), ``reports`` (reading results:
nothing there trains), ``cli`` (``stm-lab train|eval|summary``, also ``python -m stm_lab.training``).
"""
from .checkpoint import load_model, read_checkpoint
from .config import MICRO_MODELS, SMOKE_MODELS, TrainConfig, profile_config
from .engine import train
from .reports import summary, training_results

__all__ = ['MICRO_MODELS', 'SMOKE_MODELS', 'TrainConfig', 'load_model', 'profile_config', 'read_checkpoint', 'summary',
           'train', 'training_results']
