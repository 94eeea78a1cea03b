"""Pure-PyTorch multi-tensor in-place ops: the executable specification of the kernels.

Every op works on lists of tensors of one parameter group. Homogeneous float lists take
``torch._foreach_*`` paths; mixed precision (bfloat16 / float16 parameters with float32
meta-parameters and traces) is computed per tensor in the meta-parameter's precision.
The math is that of :mod:`sparse_optim.functional.gated`; tests check the two agree.
"""
from __future__ import annotations

from typing import List, Optional, Sequence

import torch

from ..functional.gates import get_gate

Tensor = torch.Tensor


def _same_dtype(*lists: Sequence[Optional[Tensor]]) -> bool:
    dtypes = {t.dtype for lst in lists for t in lst if t is not None}
    devices = {t.device for lst in lists for t in lst if t is not None}
    return len(dtypes) <= 1 and len(devices) <= 1


def sgd_directions(
    params: List[Tensor],
    grads: List[Tensor],
    momentum_buffers: List[Optional[Tensor]],
    *,
    weight_decay: float,
    momentum: float,
    dampening: float,
    nesterov: bool,
    maximize: bool,
) -> List[Tensor]:
    """Directions of :func:`sparse_optim.functional.sgd.sgd_direction`; buffers updated in place.

    ``momentum_buffers`` entries that are None are created (filled in the list). The returned
    tensors may alias ``grads`` or the buffers: read them, never write them.
    """
    dirs: List[Tensor] = list(grads)
    if maximize:
        dirs = torch._foreach_neg(dirs)
    if weight_decay != 0:
        dirs = torch._foreach_add(dirs, params, alpha=weight_decay)
    if momentum == 0:
        return dirs
    fresh = [i for i, b in enumerate(momentum_buffers) if b is None]
    old = [i for i, b in enumerate(momentum_buffers) if b is not None]
    for i in fresh:
        momentum_buffers[i] = dirs[i].detach().clone()
    if old:
        bufs = [momentum_buffers[i] for i in old]
        torch._foreach_mul_(bufs, momentum)
        torch._foreach_add_(bufs, [dirs[i] for i in old], alpha=1 - dampening)
    bufs = [b for b in momentum_buffers]  # all filled now
    if nesterov:
        return torch._foreach_add(dirs, bufs, alpha=momentum)
    return bufs


def gated_value(param: Tensor, direction: Tensor, meta: Tensor, gate, scale) -> Tensor:
    """``param - scale * gate(meta) * direction`` out of place, computed in the meta-parameter's
    precision and rounded once to the parameter's (the per-tensor form of :func:`gated_sgd_step_`).
    ``scale`` may be a tensor."""
    if param.dtype == meta.dtype == direction.dtype and not isinstance(scale, Tensor):
        return torch.addcmul(param, gate.value(meta), direction, value=-scale)
    return (param.to(meta.dtype) - scale * gate.value(meta) * direction.to(meta.dtype)).to(param.dtype)


def gated_sgd_step_(
    params: List[Tensor],
    grads: List[Tensor],
    metas: List[Tensor],
    momentum_buffers: List[Optional[Tensor]],
    traces: Optional[List[Tensor]],
    *,
    kind: str,
    scale: float,
    weight_decay: float = 0.0,
    momentum: float = 0.0,
    dampening: float = 0.0,
    nesterov: bool = False,
    maximize: bool = False,
    trace_decay: float = 1.0,
) -> None:
    """In place: ``p -= scale * gate(m) * d`` and ``trace = trace_decay * trace + d``.

    ``gate`` is the registered gate ``kind`` (:mod:`sparse_optim.functional.gates`): sparse-MAML
    Eq. 4 (kind='step', scale=lr); sparse-ReLU-MAML / La-MAML Eq. 7-8 (kind='relu', scale=1);
    Meta-SGD (kind='linear', scale=1). ``d`` as in :func:`sgd_directions`.
    """
    gate = get_gate(kind)
    if not params:
        return
    with torch.no_grad():
        dirs = sgd_directions(
            params, grads, momentum_buffers, weight_decay=weight_decay, momentum=momentum,
            dampening=dampening, nesterov=nesterov, maximize=maximize,
        )
        if _same_dtype(params, metas, dirs, traces or []):
            torch._foreach_addcmul_(params, [gate.value(m) for m in metas], dirs, value=-scale)
            if traces is not None:
                if trace_decay != 1.0:
                    torch._foreach_mul_(traces, trace_decay)
                torch._foreach_add_(traces, dirs)
            return
        for i, (p, d, m) in enumerate(zip(params, dirs, metas)):
            p.copy_(gated_value(p, d, m, gate, scale))
            if traces is not None:
                t = traces[i]
                if trace_decay != 1.0:
                    t.mul_(trace_decay)
                t.add_(d.to(m.dtype).to(t.dtype))


def meta_grad_accumulate_(
    meta_grads: List[Tensor],
    outer_grads: List[Tensor],
    traces: List[Tensor],
    metas: List[Tensor],
    *,
    kind: str,
    scale: float,
    straight_through: bool,
) -> None:
    """In place: ``meta_grad += -scale * g_out * trace * gate'(m)`` (gate' = 1 if straight-through).

    The first-order meta-gradient of :func:`sparse_optim.functional.gated.first_order_meta_grad`.
    """
    gate = get_gate(kind)
    if not meta_grads:
        return
    with torch.no_grad():
        gated = not gate.straight_through(straight_through)
        if not gated and _same_dtype(meta_grads, outer_grads, traces):
            torch._foreach_addcmul_(meta_grads, outer_grads, traces, value=-scale)
            return
        for mg, g, t, m in zip(meta_grads, outer_grads, traces, metas):
            prod = g.to(mg.dtype) * t.to(mg.dtype)
            if gated:
                prod = prod * gate.derivative(m).to(mg.dtype)
            mg.add_(prod, alpha=-scale)


def all_finite(tensors: Sequence[Tensor]) -> Tensor:
    """0-d bool tensor: whether every element of every tensor is finite (no host sync).

    ``x * 0`` is 0 for finite ``x`` and NaN otherwise, so one sum per tensor decides it exactly
    (a plain sum could overflow on finite values)."""
    floats = [t for t in tensors if t.numel() > 0 and t.is_floating_point()]
    if not floats:
        device = tensors[0].device if tensors else None
        return torch.ones((), dtype=torch.bool, device=device)
    zeros = torch._foreach_mul(floats, 0.0)
    return torch.stack([z.sum(dtype=torch.float32) for z in zeros]).sum().eq(0)
