"""The checkpoint format: tensors plus a JSON state in one safetensors file, with digests of both; exported weights
and the models rebuilt from them; the lock that keeps a second process out of a run folder."""
from __future__ import annotations

import fcntl
import hashlib
import json
import os
import socket
import time
from pathlib import Path
from typing import Dict, List, Optional, Tuple

import torch
import torch.distributed as dist
from safetensors import safe_open
from safetensors.torch import save as st_save

from ..backbone import UnifiedNet
from ..mixers import ensure_mixer, mixer_module
from .. import layout
from ..results import atomic_write_bytes
from .config import TrainConfig
from .distributed import Dist


FORMAT = 'stm-lab-checkpoint/1'
STATE_DIGEST = 'stm_lab_sha256'  # metadata key of the state's digest (absent in checkpoints written before it)
LOCK_NAME = '.train.lock'  # not '.lock': stm-lab ablations holds that one around the trainer it starts


def _tensor_digest(tensors: Dict[str, torch.Tensor]) -> str:
    h = hashlib.sha256()
    for k in sorted(tensors):
        t = tensors[k].detach().contiguous().reshape(-1)
        h.update(f'{k}|{t.dtype}|{tuple(tensors[k].shape)}|'.encode())
        h.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b'')
    return h.hexdigest()


def write_checkpoint(path: Path, tensors: Dict[str, torch.Tensor], state: dict) -> Path:
    """Tensors plus a JSON state in one safetensors file, written atomically: a crash leaves the previous file
    intact. The state (in the metadata) records a digest of the tensors, and a second metadata entry the digest
    of the state's text, so a change anywhere in the file is caught on reading."""
    tensors = {k: v.detach().cpu().contiguous() for k, v in tensors.items()}
    text = json.dumps(dict(state, format=FORMAT, tensors_sha256=_tensor_digest(tensors)))
    atomic_write_bytes(path, st_save(tensors, metadata={'stm_lab': text, STATE_DIGEST: _sha256(text)}))
    return path


def _sha256(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def read_checkpoint(path, tensors: bool = True) -> Tuple[Optional[Dict[str, torch.Tensor]], dict]:
    """Tensors and state of a checkpoint; a damaged or foreign file raises ValueError (and is left untouched).
    Checkpoints written before the state digest existed are accepted with their tensors checked.
    ``tensors=False``: the state alone (None for the tensors, which are then neither read nor checked)."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f'checkpoint not found: {path}')
    try:
        with safe_open(str(path), framework='pt') as f:
            meta = f.metadata() or {}
            data = {k: f.get_tensor(k) for k in f.keys()} if tensors else None
        text = meta['stm_lab']
        state = json.loads(text)
        if not isinstance(state, dict):
            raise TypeError(f'state is a {type(state).__name__}')
    except Exception as e:  # safetensors raises its own error types for truncated or garbled files
        raise ValueError(f'checkpoint {path} is damaged or is not a stm-lab checkpoint ({type(e).__name__}: {e}); '
                         f'it was left in place') from None
    # an unknown key is a damaged digest key: without this, flipping its name would pass as an older checkpoint
    unknown = sorted(set(meta) - {'stm_lab', STATE_DIGEST})
    if unknown:
        raise ValueError(f'checkpoint {path} is damaged (unexpected metadata {unknown}); it was left in place')
    if STATE_DIGEST in meta and meta[STATE_DIGEST] != _sha256(text):
        raise ValueError(f'checkpoint {path} is corrupted (its state does not match the recorded sha256); '
                         f'it was left in place')
    if state.get('format') != FORMAT:
        raise ValueError(f'checkpoint {path} has format {state.get("format")!r}, expected {FORMAT!r}; it was left in place')
    if data is not None and _tensor_digest(data) != state.get('tensors_sha256'):
        raise ValueError(f'checkpoint {path} is corrupted (its tensors do not match the recorded sha256); '
                         f'it was left in place')
    return data, state


def _prefixed(prefix: str, tensors: Dict[str, torch.Tensor]) -> Dict[str, torch.Tensor]:
    return {k[len(prefix):]: v for k, v in tensors.items() if k.startswith(prefix)}


def _optimizer_tensors(opt: torch.optim.Optimizer) -> Tuple[Dict[str, torch.Tensor], list]:
    sd = opt.state_dict()
    tensors = {f'optim/{i}/{k}': v for i, s in sd['state'].items() for k, v in s.items()}
    return tensors, sd['param_groups']


def _load_optimizer(opt: torch.optim.Optimizer, tensors: Dict[str, torch.Tensor], groups: list) -> None:
    state: Dict[int, dict] = {}
    for k, v in _prefixed('optim/', tensors).items():
        i, name = k.split('/', 1)
        state.setdefault(int(i), {})[name] = v
    opt.load_state_dict(dict(state=state, param_groups=groups))


def weights_state(cfg: TrainConfig, model_config: dict, classes: List[str], weights: str, metrics: dict) -> dict:
    """What a weights file records so that evaluation can rebuild everything (model, input, normalization)."""
    return dict(kind='weights', model=cfg.model, model_config=model_config, classes=classes, weights=weights,
                mixer_module=mixer_module(model_config['mixer']),
                data=dict(dataset=cfg.data.dataset, img_size=cfg.data.img_size, crop_pct=cfg.data.crop_pct,
                          interpolation=cfg.data.interpolation, mean=list(cfg.data.mean), std=list(cfg.data.std)),
                train_config=cfg.to_dict(), metrics=metrics)


def load_model(path, weights: str = 'auto') -> Tuple[UnifiedNet, dict]:
    """Rebuild a model from a checkpoint (exported weights or a run's ``last.safetensors``), in float32 eval mode.
    ``weights``: for run checkpoints, 'model', 'ema', or 'auto' (those the run exports: its configuration's
    ``export_weights``). Exported weights that do not pair with the result JSON beside them are refused
    (``check_export``)."""
    tensors, state = read_checkpoint(path)
    ensure_mixer(state['model_config']['mixer'], state.get('mixer_module'))  # a user's mixer: import its module
    if state['kind'] == 'train_state':
        cfg = TrainConfig.from_dict(state['config'])
        last = state['history'][-1] if state['history'] else {}
        if weights == 'auto':
            weights = cfg.exported
        tensors = _prefixed(f'{weights}/', tensors)
        if not tensors:
            raise ValueError(f'checkpoint {path} holds no {weights!r} weights')
        state = weights_state(cfg, state['model_config'], state['classes'], weights, last)
    else:
        check_export(path, state)
    return model_from_tensors(state['model_config'], tensors, path), state


def model_from_tensors(model_config: dict, tensors: Dict[str, torch.Tensor], path) -> UnifiedNet:
    """The model a checkpoint records, with these (possibly half-precision) weights, in float32 eval mode."""
    model = UnifiedNet(**model_config)
    try:
        model.load_state_dict({k: v.float() if v.is_floating_point() else v for k, v in tensors.items()})
    except RuntimeError as e:
        raise ValueError(f'checkpoint {path}: weights do not fit the recorded model config ({e})') from None
    return model.eval()


def check_export(weights, state: Optional[dict] = None) -> None:
    """Refuse exported weights whose ``train_<model>.json`` beside them comes from another export (a kill between
    the export's two writes): the JSON's last record must be the metrics the weights file records, and name its
    digest where it has one (exports before the digest are paired by their metrics alone). No JSON: nothing to
    pair."""
    weights = Path(weights)
    if state is None:
        state = read_checkpoint(weights, tensors=False)[1]
    doc_path = layout.train_record_beside(weights, state.get('model'))
    if not doc_path.exists():
        return
    try:
        last = json.loads(doc_path.read_text())['records'][-1]
    except (ValueError, KeyError, IndexError, TypeError) as e:
        raise ValueError(f'result {doc_path} is damaged ({type(e).__name__}: {e}); export the run again') from None
    if last != state.get('metrics') or last.get('weights_sha256', state['tensors_sha256']) != state['tensors_sha256']:
        raise ValueError(f'{weights} and {doc_path.name} beside it come from different exports (one was interrupted '
                         f'between its two writes); run the training command of {state.get("model")} again: its '
                         f'finished run exports again')


class RunLock:
    """An exclusive ``flock`` on ``<run folder>/.train.lock`` while a run trains there: a second run on the folder
    is refused. Rank 0 takes it and every rank learns the outcome. The kernel drops the lock when its process dies,
    so a killed run never blocks the next one; the file says who holds it, and goes when the run ends."""

    def __init__(self, folder: Path, d: Dist, command: Optional[str] = None):
        self.folder, self.d, self.command = Path(folder), d, command
        self.path = self.folder / LOCK_NAME
        self.fd: Optional[int] = None
        self.created = False

    def __enter__(self) -> 'RunLock':
        holder = None
        if self.d.main:
            self.created = not self.folder.exists()
            self.folder.mkdir(parents=True, exist_ok=True)
            who = f'pid {os.getpid()} on {socket.gethostname()} since {time.strftime("%Y-%m-%d %H:%M:%S")}'
            self.fd, holder = take_lock(self.path, who + (f': {self.command}' if self.command else ''))
        ok = self.fd is not None or not self.d.main
        if self.d.world > 1:
            flag = torch.tensor([int(ok)], device=self.d.device)
            dist.broadcast(flag, 0)
            ok = bool(flag.item())
        if not ok:
            self._drop_folder()
            raise ValueError(f'run folder {self.folder} is in use by another training run'
                             + (f' ({holder})' if holder else '') + '; wait for it to end or use another --out. '
                             'Nothing was changed.')
        return self

    def __exit__(self, *exc) -> None:
        if self.fd is not None:
            self.path.unlink(missing_ok=True)  # before unlocking: whoever opened this file meanwhile will retry
            os.close(self.fd)
            self.fd = None
        self._drop_folder()

    def _drop_folder(self) -> None:
        if self.created:  # a folder made for a start that wrote nothing (refused early) goes again
            try:
                self.folder.rmdir()
            except OSError:
                pass


def take_lock(path: Path, who: str) -> Tuple[Optional[int], Optional[str]]:
    """``(fd, None)``: an exclusive flock on ``path``, with ``who`` written in the file; ``(None, holder)`` if
    another open file holds it (``holder``: what its owner wrote)."""
    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.read(fd, 4096).decode(errors='replace').strip()
            os.close(fd)
            return None, holder
        try:
            current = os.stat(path).st_ino == os.fstat(fd).st_ino
        except FileNotFoundError:
            current = False
        if current:
            os.ftruncate(fd, 0)
            os.write(fd, (who + '\n').encode())
            return fd, None
        os.close(fd)  # the previous holder removed the file after we opened it: lock the new one
