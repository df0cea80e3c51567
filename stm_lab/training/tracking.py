"""Fig. 7(c): translation and rotation consistency of a model while it trains (``--set track_consistency=N``).

The tracker measures with the invariance sweeps (:mod:`stm_lab.analysis.invariance`, pure functions of a model and
images, below the engines) on the validation images the analyses use (:func:`stm_lab.data.split_images`), so the
training engine needs nothing from the analysis runners."""
from __future__ import annotations

import time
from typing import Callable

import numpy as np
import torch.nn as nn

from .. import profiles
from ..analysis.invariance import ANGLES, rotation_sweep, translation_sweep
from ..data import ANALYSIS_SEED as SEED, split_images


def consistency_tracker(profile: str, n_images: int, data_cfg) -> Callable[[nn.Module], dict]:
    """A function of a model in training that returns its mean translation and rotation consistency (over the
    non-zero shifts and angles of the sweeps) on a fixed subset of ``n_images`` validation images, the same subset
    for every epoch and model. ``data_cfg`` is the run's DataConfig (input pipeline)."""
    prof = profiles.get(profile, among=profiles.ANALYSIS_PROFILES)
    images, labels, _ = split_images(prof.dataset, prof.analyses.split, n_images, SEED)
    kw = dict(img_size=data_cfg.img_size, crop_pct=data_cfg.crop_pct, batch_size=100, mean=tuple(data_cfg.mean),
              std=tuple(data_cfg.std), progress=False)

    def mean_nonzero(rows):
        return round(float(np.mean([r['consistency'] for r in rows if r['magnitude'] != 0])), 5)

    def hook(model: nn.Module) -> dict:
        device = next(model.parameters()).device
        data = (images.to(device), labels.to(device))
        t0 = time.perf_counter()
        shift = translation_sweep(model, data, seed=SEED, **kw)
        rot = rotation_sweep(model, data, ANGLES, **kw)
        return dict(consistency_shift=mean_nonzero(shift), consistency_rotation=mean_nonzero(rot),
                    consistency_images=len(images), consistency_time_s=round(time.perf_counter() - t0, 1))
    return hook
