"""Data- and task-parallel meta-learning across processes (``torch.distributed``).

Two recipes, both keeping parameters and meta-parameters identical on every rank:

* **DDP (data parallel).** Wrap the model in ``DistributedDataParallel`` and build the optimizer
  on ``ddp.parameters()``. DDP averages every gradient before ``step()`` and
  ``meta_backward()`` see it, so each rank computes the same traces, masks, rates and factors,
  equal to a single process on the concatenated batch (with mean-reduced losses). Nothing else
  is needed.
* **Task parallel.** Each rank adapts to its own tasks with the plain (unwrapped) model, then
  :func:`all_reduce_meta_gradients` averages the first-order theta gradients and the
  meta-gradients before the outer update, as if all tasks were one meta-batch.
"""
from __future__ import annotations

from typing import List, Optional

import torch
import torch.distributed as dist

from .optim.base import MetaOptimizer


def all_reduce_meta_gradients(
    optimizer: MetaOptimizer, include_params: bool = True, group: Optional[dist.ProcessGroup] = None,
) -> None:
    """Average ``.grad`` of the meta-parameters (and of the parameters) across ranks.

    A gradient that is ``None`` on some rank counts as zeros there; every rank must call this
    collectively with the same optimizer layout.
    """
    if not dist.is_available() or not dist.is_initialized():
        raise RuntimeError("all_reduce_meta_gradients() needs an initialised torch.distributed process group")
    tensors: List[torch.Tensor] = list(optimizer.meta_parameters())
    if include_params:
        tensors += [p for g in optimizer.param_groups for p in g["params"]]
    world = dist.get_world_size(group)
    for t in tensors:
        if t.grad is None:
            t.grad = torch.zeros_like(t)
    grads = [t.grad for t in tensors]
    flat = torch.cat([g.reshape(-1).to(torch.float32) for g in grads]) if grads else torch.zeros(0)
    dist.all_reduce(flat, op=dist.ReduceOp.SUM, group=group)
    flat /= world
    offset = 0
    for g in grads:
        n = g.numel()
        g.copy_(flat[offset:offset + n].view_as(g))
        offset += n
