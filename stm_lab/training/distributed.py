"""One process or a torchrun process group: devices, DistributedDataParallel, per-epoch seeding."""
from __future__ import annotations

import os
import random
import sys
from dataclasses import dataclass

import numpy as np
import torch
import torch.distributed as dist
import torch.nn as nn


@dataclass
class Dist:
    rank: int = 0
    world: int = 1
    local_rank: int = 0
    device: torch.device = torch.device('cpu')

    @property
    def main(self) -> bool:
        return self.rank == 0


def init_distributed(device: str = 'auto') -> Dist:
    """One process, or the process group that torchrun describes (env RANK/WORLD_SIZE/LOCAL_RANK):
    NCCL on GPUs, gloo on CPUs."""
    cuda = torch.cuda.is_available() and device != 'cpu'
    world = int(os.environ.get('WORLD_SIZE', '1'))
    if world == 1:
        return Dist(device=torch.device('cuda') if cuda else torch.device('cpu'))
    local = int(os.environ.get('LOCAL_RANK', '0'))
    if cuda:
        torch.cuda.set_device(local)
    if not dist.is_initialized():
        dist.init_process_group('nccl' if cuda else 'gloo')
    return Dist(dist.get_rank(), dist.get_world_size(), local, torch.device('cuda', local) if cuda else torch.device('cpu'))


def prepare_model(model: nn.Module, d: Dist) -> nn.Module:
    """DistributedDataParallel with several processes; the head's BatchNorm becomes SyncBatchNorm on GPUs
    (PyTorch's SyncBatchNorm has no CPU kernel: on gloo each process normalizes with its own batch statistics,
    and DDP broadcasts rank 0's running statistics)."""
    if d.world == 1:
        return model
    if d.device.type == 'cuda':
        model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
    return nn.parallel.DistributedDataParallel(model, device_ids=[d.local_rank] if d.device.type == 'cuda' else None)


def seed_everything(seed: int, epoch: int, rank: int) -> None:
    """Every epoch starts from RNG states that are a function of (seed, epoch, rank): python, numpy and torch
    (augmentation, mixup, drop path, loader workers), so a resumed run draws the same numbers."""
    s = int(np.random.SeedSequence([seed, epoch, rank]).generate_state(1)[0])
    random.seed(s)
    np.random.seed(s)
    torch.manual_seed(s)


def _all_mean(value: float, d: Dist) -> float:
    if d.world == 1:
        return value
    t = torch.tensor([value], dtype=torch.float64, device=d.device)
    dist.all_reduce(t)
    return t.item() / d.world


def _log(d: Dist, msg: str) -> None:
    if d.main:
        print(msg, file=sys.stderr, flush=True)
