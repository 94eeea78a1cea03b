"""Gated SGD: the elementwise family, and the one dispatcher of its multi-tensor ops.

    p_new = p - scale * gate(xi) * d,     scale = lr if the gate is lr-scaled else 1

=================  =======  ======  ================================================
rule               gate     scale   paper
=================  =======  ======  ================================================
masked_sgd         step     lr      sparse-MAML Eq. 4 (and Eq. 6), straight-through
rectified_sgd      relu     1       sparse-ReLU-MAML (sparse-MAML Sec. 3.3), straight-through
lookahead_sgd      relu     1       La-MAML Eq. 7 (inner) / Eq. 8 (meta-update)
meta_sgd           linear   1       Meta-SGD (Li et al. 2017, Eq. 1)
=================  =======  ======  ================================================

Gates are defined once in :mod:`sparse_optim.functional.gates`. ``d`` is the SGD direction of
:func:`sparse_optim.functional.sgd.sgd_direction` (the raw gradient with default hyperparameters).

Three kinds of entry point, in the shape of ``torch.optim.sgd()``:

* :func:`gated_sgd_` / :func:`gated_meta_grad_`: in place, multi-tensor, no graph. The tensors
  are grouped by (device, dtype) and each group runs on the backend that
  :func:`sparse_optim.ops.implementation` chooses (native kernels or the reference ops) --
  the one place a backend is chosen. The optimizer classes only gather lists for these.
* :func:`gated_sgd`: out of place and differentiable (second order, ``torch.func``), one
  list-level autograd function over the same kernels (:mod:`sparse_optim.ops.autograd`); used
  by ``differentiable=True``, the ``higher`` classes and the rules below.
* :func:`gated_update` / :func:`first_order_meta_grad`: the per-tensor formulas written with
  autograd-visible tensor ops -- the executable specification that the tests check the others
  against.
"""
from __future__ import annotations

from typing import List, Mapping, Optional, Sequence, Union

import torch

from .. import ops
from .._validation import MOVED_PARAMETER
from .gates import Gate, gate, gate_derivative, get_gate

Tensor = torch.Tensor
Tensors = Union[Sequence[Tensor], Mapping[str, Tensor]]
GateLike = Union[str, Gate]


# ------------------------------------------------------------------------- the specification
def gated_step(direction: Tensor, meta: Tensor, *, kind: GateLike, scale, straight_through: bool = True) -> Tensor:
    """The step ``scale * gate(meta) * direction``, in the meta-parameter's precision."""
    return scale * gate(meta, kind, straight_through) * direction.to(meta.dtype)


def gated_update(param: Tensor, direction: Tensor, meta: Tensor, *, kind: GateLike, scale,
                 straight_through: bool = True) -> Tensor:
    """``param - scale * gate(meta) * direction`` (autograd through the gate's definition)."""
    step = gated_step(direction, meta, kind=kind, scale=scale, straight_through=straight_through)
    return param - step.to(param.dtype)


def first_order_meta_grad(outer_grad: Tensor, trace: Tensor, meta: Tensor, *, kind: GateLike, scale,
                          straight_through: bool = True) -> Tensor:
    """First-order meta-gradient dL_out/dxi with inner directions held constant.

    phi_K = theta - scale * gate(xi) * sum_k d_k, so
    dL_out/dxi = -scale * g_out * (sum_k d_k) * gate'(xi), with gate' := 1 under straight-through
    estimation: sparse-MAML Eq. 5 / supplement Eq. 10 (masks), La-MAML Eq. 7 first-order
    (rates, gate' = 1[alpha > 0] unless straight-through), Meta-SGD (gate' = 1).
    """
    g = -scale * outer_grad.to(meta.dtype) * trace.to(meta.dtype)
    derivative = gate_derivative(meta, kind, straight_through)
    return g if derivative is None else g * derivative


# ------------------------------------------------------------------ in-place multi-tensor ops
def gated_sgd_(
    params: List[Tensor],
    grads: List[Tensor],
    metas: List[Tensor],
    momentum_buffers: List[Optional[Tensor]],
    traces: Optional[List[Tensor]],
    *,
    gate: GateLike,
    lr: float,
    weight_decay: float = 0.0,
    momentum: float = 0.0,
    dampening: float = 0.0,
    nesterov: bool = False,
    maximize: bool = False,
    trace_decay: float = 1.0,
    backend: Optional[str] = None,
) -> None:
    """In place, for every i: ``d_i`` = the SGD direction (``torch.optim.SGD`` semantics; None
    entries of ``momentum_buffers`` are created and filled in), ``params[i] -= scale * gate(metas[i])
    * d_i`` and, if ``traces`` is given, ``traces[i] = trace_decay * traces[i] + d_i``.

    No graph is recorded. ``backend`` forces ``'reference'`` / ``'cpu'`` / ``'cuda'`` ops.
    """
    g = get_gate(gate)
    run_grouped("gated_sgd_step_", [params, grads, metas, momentum_buffers, traces], backend, written_lists=(3,),
         kind=g.name, scale=g.scale(lr), weight_decay=weight_decay, momentum=momentum, dampening=dampening,
         nesterov=nesterov, maximize=maximize, trace_decay=trace_decay)


def gated_meta_grad_(
    meta_grads: List[Tensor],
    outer_grads: List[Tensor],
    traces: List[Tensor],
    metas: List[Tensor],
    *,
    gate: GateLike,
    lr: float,
    alpha: float = 1.0,
    straight_through: bool = True,
    backend: Optional[str] = None,
) -> None:
    """In place: ``meta_grads[i] += alpha * -scale * outer_grads[i] * traces[i] * gate'(metas[i])``,
    ``alpha`` times the first-order meta-gradient of :func:`first_order_meta_grad`. ``meta_grads``
    may be ``metas`` itself: ``alpha = -meta_lr`` is then an online hypergradient step."""
    g = get_gate(gate)
    run_grouped("meta_grad_accumulate_", [meta_grads, outer_grads, traces, metas], backend, written_lists=(),
         kind=g.name, scale=alpha * g.scale(lr), straight_through=straight_through)


def run_grouped(op: str, lists: List[Optional[list]], backend: Optional[str], written_lists, **kw) -> None:
    """Run ``op`` of the chosen implementation on each (device, dtype) group of ``lists``."""
    first = lists[0]
    if not first:
        return
    n = len(first)
    if len({id(t) for t in first}) != n:
        raise ValueError(f"{op}: a tensor appears more than once in the list it updates (tied weights?): "
                         "the updates would race; pass each tensor once")
    impl = ops.implementation(first[0].device, backend)
    if impl is not ops.reference:  # the kernels validate every tensor before writing any
        try:
            getattr(impl, op)(*lists, **kw)
            return
        except NotImplementedError:  # mixed devices / dtypes, or no kernel for them: nothing was written
            pass
    full = [lst if lst is not None else [None] * n for lst in lists]
    _check_matching_shapes(full)  # the reference ops may write some tensors before an error
    if impl is ops.reference:
        getattr(impl, op)(*lists, **kw)
        return
    groups: dict = {}  # by the written tensors' (device, dtype); each group one call
    for i, t in enumerate(first):
        groups.setdefault((t.device, t.dtype), []).append(i)
    for (device, _), indices in groups.items():
        args = [None if lst is None else [lst[i] for i in indices] for lst in lists]
        impl = ops.implementation(device, backend)
        try:
            getattr(impl, op)(*args, **kw)
        except NotImplementedError:
            getattr(ops.reference, op)(*args, **kw)
        for k in written_lists:
            if lists[k] is not None:
                for j, i in enumerate(indices):
                    lists[k][i] = args[k][j]


def _check_matching_shapes(lists: List[list]) -> None:
    """Before a reference or grouped (several-call) update writes anything: every index has one
    shape, dense real tensors."""
    for i, tensors in enumerate(zip(*lists)):
        shapes = {tuple(t.shape) for t in tensors if t is not None}
        if len(shapes) > 1:
            raise ValueError(f"tensors at index {i} have different shapes {sorted(shapes)}")
        devices = {str(t.device) for t in tensors if t is not None}
        if len(devices) > 1:
            raise ValueError(f"tensors at index {i} are on different devices {sorted(devices)}: {MOVED_PARAMETER}")
        if any(t is not None and t.layout is not torch.strided for t in tensors):
            raise ValueError(f"tensors at index {i} must be dense (strided)")
        if any(t is not None and t.is_complex() for t in tensors):
            raise TypeError(f"tensors at index {i} must be real")


# ------------------------------------------------------------------ differentiable, out of place
def gated_sgd(params: Tensors, directions: Tensors, metas: Tensors, *, gate: GateLike, lr,
              straight_through: bool = True, backend: Optional[str] = None, meta_name: str = "meta-parameter"):
    """``params[i] - scale * gate(metas[i]) * directions[i]`` for lists or dicts, out of place.

    Differentiable with respect to params, directions (second order), metas and a tensor ``lr``
    (e.g. a ``higher`` override), with analytic double-differentiable formulas; the forward pass
    is one kernel call per (device, dtype) group. Works under ``torch.func`` transforms.
    ``meta_name`` names the meta-parameters in error messages.
    """
    from ..ops.autograd import gated_sgd_update

    g = get_gate(gate)
    if isinstance(params, Mapping):
        keys = list(params)
        for k in keys:
            _check_shape(f"{meta_name} {k!r}", params[k], directions[k], metas[k])
        out = gated_sgd_update([params[k] for k in keys], [directions[k] for k in keys], [metas[k] for k in keys],
                               g, g.scale(lr), straight_through, backend)
        return dict(zip(keys, out))
    params, directions, metas = list(params), list(directions), list(metas)
    if not len(params) == len(directions) == len(metas):
        raise ValueError(f"params, grads and meta-parameters must have the same length, got "
                         f"{[len(params), len(directions), len(metas)]}")
    for i, (p, d, m) in enumerate(zip(params, directions, metas)):
        _check_shape(f"{meta_name}[{i}]", p, d, m)
    return gated_sgd_update(params, directions, metas, g, g.scale(lr), straight_through, backend)


def _check_shape(where: str, p: Tensor, d: Tensor, m: Tensor) -> None:
    if m.shape != p.shape:
        raise ValueError(f"{where} of shape {tuple(m.shape)} does not match parameter shape "
                         f"{tuple(p.shape)}")
    if d.shape != p.shape:
        raise ValueError(f"gradient of {where} has shape {tuple(d.shape)}, but the parameter's shape is "
                         f"{tuple(p.shape)}")


def masked_sgd(params: Tensors, grads: Tensors, mask_logits: Tensors, *, lr=0.1):
    """sparse-MAML inner step (Eq. 4): ``p - lr * 1[m >= 0] * g``; straight-through in m.

    Works on lists or dicts of tensors, returns new tensors; differentiable w.r.t. params
    (second order through ``grads`` if they carry a graph) and mask logits.
    """
    return gated_sgd(params, grads, mask_logits, gate="step", lr=lr, meta_name="mask_logits")


def rectified_sgd(params: Tensors, grads: Tensors, rates: Tensors, *, straight_through: bool = True):
    """sparse-ReLU-MAML inner step: ``p - relu(m) * g``; straight-through in m by default."""
    return gated_sgd(params, grads, rates, gate="relu", lr=1.0, straight_through=straight_through, meta_name="rates")


def lookahead_sgd(params: Tensors, grads: Tensors, rates: Tensors, *, straight_through: bool = False):
    """La-MAML step (Eq. 7 inner, Eq. 8 meta-update): ``p - max(0, alpha) * g``.

    ``straight_through=False`` is the official La-MAML derivative (zero where alpha <= 0).
    """
    return gated_sgd(params, grads, rates, gate="relu", lr=1.0, straight_through=straight_through, meta_name="rates")


def meta_sgd(params: Tensors, grads: Tensors, rates: Tensors):
    """Meta-SGD step (Li et al. 2017, Eq. 1): ``p - alpha * g`` with learned per-element rates
    ``alpha`` of either sign; differentiable w.r.t. params, grads and ``alpha``."""
    return gated_sgd(params, grads, rates, gate="linear", lr=1.0, meta_name="rates")
