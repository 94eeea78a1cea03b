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

from typing import List, Optional, Sequence

import torch
import torch.distributed as dist

from .optim.base import MetaOptimizer


def all_reduce_gradients(tensors: Sequence[torch.Tensor], group: Optional[dist.ProcessGroup] = None) -> None:
    """Average the ``.grad`` of ``tensors`` across ranks in one flattened all-reduce.

    A gradient that is ``None`` on some rank counts as zeros there; every rank must call this
    collectively with tensors of the same shapes in the same order.
    """
    if not dist.is_available() or not dist.is_initialized():
        raise RuntimeError("all_reduce_gradients() needs an initialised torch.distributed process group")
    tensors = list(tensors)
    if not tensors:
        return
    for t in tensors:
        if t.grad is None:
            t.grad = torch.zeros_like(t)
    grads = [t.grad for t in tensors]
    flat = torch.cat([g.reshape(-1).to(torch.float32) for g in grads])
    dist.all_reduce(flat, op=dist.ReduceOp.SUM, group=group)
    flat /= dist.get_world_size(group)
    offset = 0
    for g in grads:
        g.copy_(flat[offset:offset + g.numel()].view_as(g))
        offset += g.numel()


def all_reduce_meta_gradients(
    optimizer: MetaOptimizer, include_params: bool = True, group: Optional[dist.ProcessGroup] = None,
) -> None:
    """Average ``.grad`` of the optimizer's meta-parameters (and of its parameters) across ranks."""
    tensors: List[torch.Tensor] = list(optimizer.meta_parameters())
    if include_params:
        tensors += [p for g in optimizer.param_groups for p in g["params"]]
    if not dist.is_available() or not dist.is_initialized():
        raise RuntimeError("all_reduce_meta_gradients() needs an initialised torch.distributed process group")
    all_reduce_gradients(tensors, group)
