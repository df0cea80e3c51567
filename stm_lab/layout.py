"""The results layout, defined once: which file under ``results/`` holds what, as a function of profile, model and
seed. Every producer writes through these functions and every reader (the pages, ``findings`` coverage,
``reproduce``'s done-checks) reads through them; no other module formats a result file's name.

::

    results/<profile>/train_<model>.json, <model>.safetensors      a model's main run (Table III), :func:`train`
    results/<profile>/<seed folder>/...                            the seed set (:func:`seed_folder`): the same two
                                                                   files and outcomes_<model>.json/.npz
    results/<profile>/<subdir>/train_<model>.json                  an ablation run (``subdir``: ablations/, ...)
    results/<profile>/detection/det_train_<model>.json, .safetensors   a detector, :func:`det_train`
    results/<profile>/<name>.json                                  one analysis or table over all models
                                                                   (:data:`ANALYSES`), :func:`analysis`

A folder is named as :mod:`stm_lab.results` takes it: ``'cpu'``, ``'cpu/seed3'``, ``'cpu/detection'``.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Tuple

from . import profiles, results

# the result each ``stm-lab analyze <what>`` writes
ANALYSIS_RESULTS = {'erf': 'erf', 'invariance': 'invariance', 'fgsm': 'fgsm', 'demo': 'demo_rotation',
                    'erf_photos': 'erf_photos'}
# the result files over all models of a profile, by the command that writes them
ANALYSES = {
    **{name: f'stm-lab analyze {what}' for what, name in ANALYSIS_RESULTS.items()},
    'table3_accuracy': 'stm-lab summary --save', 'detection': 'stm-lab detect evaluate',
    'detection_throughput': 'stm-lab detect bench', 'train_throughput': 'stm-lab bench cpu-profile',
    'lab_export': 'stm-lab lab measure', 'lab_browser': 'stm-lab lab measure',
    'table3_complexity': 'stm-lab complexity', 'ablation_complexity': 'stm-lab ablations complexity',
    # results/bench/: the benchmarks' figures (stm-lab bench <protocol>)
    'train_speed': 'stm-lab bench train-speed',
    'train_speed_bf16': 'stm-lab bench train-speed --bf16',
    'train_profile': 'stm-lab bench train-profile', 'dcnv3': 'stm-lab bench dcnv3',
    'table8_throughput': 'stm-lab bench table8',
    **{f'table8_throughput_{scale}_cuda': f'stm-lab bench table8 --scale {scale} (on a GPU)' for scale in ('micro', 'tiny')},
}


@dataclass(frozen=True)
class Result:
    """One JSON result: ``results/<where>/<name>.json``."""
    where: str
    name: str

    @property
    def path(self) -> Path:
        return results.result_path(self.where, self.name)

    def exists(self) -> bool:
        return self.path.exists()

    def load(self) -> dict:
        return results.load_result(self.where, self.name)

    def save(self, records: list, **kwargs) -> Path:
        return results.save_result(self.where, self.name, records, **kwargs)

    @property
    def folder(self) -> Path:
        return results.RESULTS_DIR / self.where


def folder(profile: str, subdir: str = '') -> str:
    """``'cpu'`` or ``'cpu/<subdir>'``."""
    return f'{profile}/{subdir}'.rstrip('/')


def seed_folder(profile: str, seed: int) -> str:
    """The folder of the seed set's runs of a seed (seed 0 is the profile's ``seed0_dir``: ``cpu/epochs12``)."""
    return folder(profile, profiles.get(profile).seed_dir(seed))


def train(where: str, model: str) -> Result:
    """A classification run's record (history, final top-1, config, provenance) in a folder (:func:`folder`)."""
    return Result(where, f'train_{model}')


def weights(where: str, model: str) -> Path:
    """A classification run's exported weights (half precision safetensors) in a folder."""
    return results.RESULTS_DIR / where / f'{model}.safetensors'


def train_record_beside(weights_file: Path, model: str) -> Path:
    """The run record exported beside a run's weights (the same folder, wherever the weights were copied)."""
    return Path(weights_file).parent / f'train_{model}.json'


def trained_models(where: str) -> Tuple[str, ...]:
    """The models with a run record in a folder, sorted."""
    return tuple(sorted(p.stem[len('train_'):] for p in (results.RESULTS_DIR / where).glob('train_*.json')))


def outcomes(profile: str, seed: int, model: str) -> Tuple[Path, Path]:
    """(summary JSON, per-image npz) of one seed-set run's outcomes (:mod:`stm_lab.analysis.outcomes`)."""
    base = results.RESULTS_DIR / seed_folder(profile, seed)
    return base / f'outcomes_{model}.json', base / f'outcomes_{model}.npz'


def det_folder(profile: str) -> str:
    return folder(profile, 'detection')


def det_train(profile: str, model: str) -> Result:
    """A detector's run record (history, AP, config, provenance)."""
    return Result(det_folder(profile), f'det_train_{model}')


def det_weights(profile: str, model: str) -> Path:
    return results.RESULTS_DIR / det_folder(profile) / f'{model}.safetensors'


def analysis(where: str, name: str) -> Result:
    """A result over all models of a profile (one of :data:`ANALYSES`; ``where`` may be 'bench' or 'paper')."""
    if name not in ANALYSES:
        raise KeyError(f'unknown result {name!r}; valid: {", ".join(ANALYSES)}')
    return Result(where, name)



def rel(path: Path) -> str:
    """A result file's path as the pages print it: ``results/<...>`` wherever ``$STM_LAB_RESULTS`` puts the folder
    (so a page built from a temporary results folder reads the same), else as results record paths."""
    path = Path(path)
    if path.resolve().is_relative_to(results.RESULTS_DIR.resolve()):
        return str(Path('results') / path.resolve().relative_to(results.RESULTS_DIR.resolve()))
    return results.project_path(path)
