"""Parameters and multiply-accumulates (MACs) of any model, counted with ``torch.utils.flop_counter``.

MACs = FLOPs / 2 of the matrix products and convolutions, attention's two matmuls included. PyTorch's counter
has no formula for two operators these models use on the CPU, so two are added here:

- ``_scaled_dot_product_flash_attention_for_cpu`` (what ``F.scaled_dot_product_attention`` runs on the CPU):
  q.k^T and attn.v, as PyTorch counts its GPU attention kernels; any number of batch dimensions;
- ``grid_sampler_2d`` (DCNv3's sampling): one MAC per sampled value, the convention of the paper's counter for
  deformable attention (queries x groups x points x channels per group).

Element-wise work (norms, activations, softmax, the weighted sum of sampled points) is not counted, as in the
usual MAC counts. ``attention_macs`` reports the attention share separately, because Table III's U-HaloNet
numbers appear to leave it out (Table VII's do not).
"""
from __future__ import annotations

import math
from typing import Dict

import torch
import torch.nn as nn
from torch.utils.flop_counter import FlopCounterMode

from ..mixers.reference import reference_mixers
from ..ops import dcnv3_backend

aten = torch.ops.aten


def _sdpa_cpu_flops(query_shape, key_shape, value_shape, *args, out_shape=None, **kwargs) -> int:
    batch = math.prod(query_shape[:-2])
    L, E = query_shape[-2:]
    S, Ev = key_shape[-2], value_shape[-1]
    return 2 * batch * L * S * E + 2 * batch * L * S * Ev


def _grid_sample_flops(input_shape, grid_shape, *args, out_shape=None, **kwargs) -> int:
    n, c = input_shape[:2]
    return 2 * n * c * math.prod(grid_shape[1:-1])


CUSTOM_FLOPS = {
    aten._scaled_dot_product_flash_attention_for_cpu: _sdpa_cpu_flops,
    aten.grid_sampler_2d: _grid_sample_flops,
}
# operators whose FLOPs are attention between tokens (as opposed to projections and convolutions)
ATTENTION_OPS = {'_scaled_dot_product_flash_attention_for_cpu', '_scaled_dot_product_efficient_attention',
                 '_scaled_dot_product_flash_attention', '_scaled_dot_product_cudnn_attention', 'bmm'}


def count_params(model: nn.Module) -> int:
    """All parameters of ``model``."""
    return sum(p.numel() for p in model.parameters())


def count_position_params(model: nn.Module) -> int:
    """Parameters of position tables (PVT's absolute embeddings, relative-position tables): the paper's counter
    (thop, which counts parameters of leaf layers) leaves out such free-standing tensors."""
    names = model.no_weight_decay() if hasattr(model, 'no_weight_decay') else ()
    return sum(p.numel() for n, p in model.named_parameters() if n in names)


@torch.no_grad()
def count_macs(model: nn.Module, img_size: int = 224, in_chans: int = 3) -> Dict[str, float]:
    """MACs of one forward pass on a (1, in_chans, img_size, img_size) input.

    Returns ``{'macs': total, 'attention_macs': token-to-token matmuls, 'by_op': {op name: MACs}}``.
    Halo attention's relative-position logits are matmuls of queries with position tables; they are counted
    in ``macs`` (under whatever op computes them) and in ``attention_macs`` only if they run as ``bmm``.
    """
    was_training = model.training
    model.eval()
    counter = FlopCounterMode(display=False, custom_mapping=CUSTOM_FLOPS)
    # count the reference paths: the compiled DCNv3 kernel is opaque to the counter, and the fast attention
    # paths fuse or skip work, so what they execute describes the implementation rather than the model
    with counter, dcnv3_backend('torch'), reference_mixers():
        model(torch.zeros(1, in_chans, img_size, img_size))
    model.train(was_training)
    by_op = {str(op).removeprefix('aten.').split('.')[0]: n / 2
             for op, n in counter.get_flop_counts()['Global'].items()}
    return dict(macs=counter.get_total_flops() / 2,
                attention_macs=sum(v for k, v in by_op.items() if k in ATTENTION_OPS),
                by_op=by_op)


def table3(models=None, img_size: int = 224, num_classes: int = 1000) -> list:
    """One record per model: our parameters and MACs at ``img_size`` beside the paper's Table III."""
    from ..models import create_model, paper_model_names
    from ..paper import TABLE3
    records = []
    for name in models or paper_model_names():
        model = create_model(name, num_classes=num_classes, img_size=img_size)
        macs = count_macs(model, img_size)
        params = count_params(model)
        pos = count_position_params(model)
        paper_params, paper_flops, paper_top1 = TABLE3.get(name, (None, None, None))
        records.append(dict(
            model=name, params_m=params / 1e6, params_no_pos_m=(params - pos) / 1e6,
            gmacs=macs['macs'] / 1e9, attention_gmacs=macs['attention_macs'] / 1e9,
            gmacs_no_attention=(macs['macs'] - macs['attention_macs']) / 1e9,
            paper_params_m=paper_params, paper_gflops=paper_flops, paper_top1=paper_top1))
    return records
