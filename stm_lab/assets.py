"""Where the read-only assets are: the committed cpu weights of the five micro models and the demo photos.

In a checkout (a clone, or an editable install) they are the checkout's own files,
``results/<profile>/<model>.safetensors`` and ``data/demo/``. A wheel carries copies as package data, mapped in
``pyproject.toml`` the way the kernel sources are (``stm_lab._csrc``): ``results/cpu/u_*_micro.safetensors`` as
``stm_lab/_weights/`` and ``data/demo/`` as ``stm_lab/_demo/``. Only the cpu profile's weights are packaged (about
7 MB each); everything an installed package writes goes elsewhere (``stm_lab.results.writable_dir``).

::

    from stm_lab.assets import weights_path, demo_dir
    weights_path('u_swin_micro')      # Path of the trained U-Swin-micro (cpu profile, Imagenette 64x64)
"""
from __future__ import annotations

from pathlib import Path
from typing import List, Optional

from . import results

PACKAGE_DIR = Path(__file__).resolve().parent
PACKAGED_WEIGHTS = PACKAGE_DIR / '_weights'  # results/cpu's five weight files, in a wheel
PACKAGED_DEMO = PACKAGE_DIR / '_demo'        # data/demo, in a wheel
PACKAGED_PROFILE = 'cpu'


def weights_dir(profile: str = 'cpu') -> Optional[Path]:
    """The folder of a profile's committed weights: ``results/<profile>`` of the checkout, or in a wheel the
    packaged copy (cpu only); None where there is none."""
    if results.IN_CHECKOUT:
        return results.ROOT / 'results' / profile
    return PACKAGED_WEIGHTS if profile == PACKAGED_PROFILE else None


def available(profile: str = 'cpu') -> List[str]:
    """The models with committed weights at ``profile`` (in a checkout: what ``results/<profile>`` holds)."""
    folder = weights_dir(profile)
    if folder is None or not folder.is_dir():
        return []
    return sorted(p.stem for p in folder.glob('*.safetensors'))


def find_weights(model: str, profile: str = 'cpu') -> Optional[Path]:
    """:func:`weights_path`, or None where there are no such weights (never raises)."""
    folder = weights_dir(profile)
    path = folder / f'{model}.safetensors' if folder is not None else None
    return path if path is not None and path.is_file() else None


def weights_path(model: str, profile: str = 'cpu') -> Path:
    """The committed weights of ``model`` at ``profile`` (a safetensors checkpoint that
    :func:`stm_lab.training.checkpoint.load_model` reads). In a checkout ``results/<profile>/<model>.safetensors``
    (not ``$STM_LAB_RESULTS``, which is where new results go); in a wheel the packaged copy, cpu profile only.
    A model without committed weights raises FileNotFoundError naming those that have them."""
    path = find_weights(model, profile)
    if path is not None:
        return path
    have = available(profile)
    if have:
        raise FileNotFoundError(f'no committed weights of {model!r} at profile {profile!r}; '
                                f'valid: {", ".join(have)}')
    if not results.IN_CHECKOUT:
        raise FileNotFoundError(f'no committed weights at profile {profile!r}: an installed stm-lab carries the '
                                f'{PACKAGED_PROFILE!r} profile\'s only ({", ".join(available(PACKAGED_PROFILE))})')
    raise FileNotFoundError(f'no committed weights at profile {profile!r} (nothing in {weights_dir(profile)}); '
                            f'train them with `stm-lab train --model {model} --profile {profile}`')


def trained_checkpoint(model: str, profile: str = 'cpu') -> Path:
    """Where a trained classifier is read from: ``<profile>/<model>.safetensors`` of the results folder
    (``stm_lab.results.RESULTS_DIR``); for an installed package whose results lack it, the packaged weights
    where there are some. The path returned may not exist (the caller says what to train)."""
    path = results.RESULTS_DIR / profile / f'{model}.safetensors'
    if not results.IN_CHECKOUT and not path.exists():
        return find_weights(model, profile) or path
    return path


def demo_dir() -> Path:
    """The demo photos (``labels.json`` and ten JPEGs): ``data/demo`` of the checkout, else the packaged copy."""
    if results.IN_CHECKOUT:
        return results.ROOT / 'data' / 'demo'
    return PACKAGED_DEMO
