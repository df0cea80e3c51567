"""The book notebooks' papermill parameters, checked in each notebook's first cell after its parameters cell.

    papermill notebooks/training.ipynb out.ipynb -p profile cpu
    stm-lab notebooks --profile cpu

``paper`` is not a notebook profile: no model is trained at that profile here, so the pages that read trained
models would fail. ``stm-lab notebooks`` passes ``--profile``, whose default is every command's,
``stm_lab.parsers.DEFAULT_PROFILE`` (cpu); the ``profile = 'smoke'`` of a notebook's own parameters cell is what it
runs at when it is opened and run by hand.
"""
from __future__ import annotations

from .profiles import NOTEBOOK_PROFILES


def check_parameters(notebook: str, profile, **flags) -> None:
    """Raise one clear ValueError for a bad ``profile`` or a flag that is not True/False (instead of a bare
    ``StopIteration`` cells later)."""
    if profile not in NOTEBOOK_PROFILES:
        raise ValueError(f'{notebook}: parameter profile must be one of {", ".join(NOTEBOOK_PROFILES)}, '
                         f'got {profile!r}')
    for name, value in flags.items():
        if not isinstance(value, bool):
            raise ValueError(f'{notebook}: parameter {name} must be True or False, got {value!r}')
