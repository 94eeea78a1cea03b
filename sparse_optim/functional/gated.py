"""Gated SGD update rules: the elementwise family (pure, out of place, differentiable).

    p_new = p - scale * gate(xi) * d

=================  =======  ======  ================================================
rule               gate     scale   paper
=================  =======  ======  ================================================
masked_sgd         step     lr      sparse-MAML Eq. 4 (and Eq. 6), straight-through
rectified_sgd      relu     1       sparse-ReLU-MAML (sparse-MAML Sec. 3.3), straight-through
lookahead_sgd      relu     1       La-MAML Eq. 7 (inner) / Eq. 8 (meta-update)
=================  =======  ======  ================================================

``d`` is the SGD direction of :func:`sparse_optim.functional.sgd.sgd_direction` (the raw
gradient with default hyperparameters).
"""
from __future__ import annotations

from typing import Mapping, Sequence, TypeVar, Union

import torch

from .gates import gate, gate_derivative

T = TypeVar("T")
Tensors = Union[Sequence[torch.Tensor], Mapping[str, torch.Tensor]]


def gated_step(
    direction: torch.Tensor,
    meta: torch.Tensor,
    *,
    kind: str,
    scale: float,
    straight_through: bool = True,
) -> torch.Tensor:
    """The step ``scale * gate(meta) * direction``, in the meta-parameter's precision."""
    return scale * gate(meta, kind, straight_through) * direction.to(meta.dtype)


def gated_update(
    param: torch.Tensor,
    direction: torch.Tensor,
    meta: torch.Tensor,
    *,
    kind: str,
    scale: float,
    straight_through: bool = True,
) -> torch.Tensor:
    """``param - scale * gate(meta) * direction``."""
    step = gated_step(direction, meta, kind=kind, scale=scale, straight_through=straight_through)
    return param - step.to(param.dtype)


def first_order_meta_grad(
    outer_grad: torch.Tensor,
    trace: torch.Tensor,
    meta: torch.Tensor,
    *,
    kind: str,
    scale: float,
    straight_through: bool = True,
) -> torch.Tensor:
    """First-order meta-gradient dL_out/dxi with inner directions held constant.

    phi_K = theta - scale * gate(xi) * sum_k d_k, so
    dL_out/dxi = -scale * g_out * (sum_k d_k) * gate'(xi), with gate' := 1 under straight-through
    estimation: sparse-MAML Eq. 5 / supplement Eq. 10 (masks), La-MAML Eq. 7 first-order
    (rates, gate' = 1[alpha > 0] unless straight-through).
    """
    g = -scale * outer_grad.to(meta.dtype) * trace.to(meta.dtype)
    derivative = gate_derivative(meta, kind, straight_through)
    return g if derivative is None else g * derivative


def _map(fn, params: Tensors, *others: Tensors):
    if isinstance(params, Mapping):
        return {k: fn(params[k], *(o[k] for o in others)) for k in params}
    if len({len(params), *(len(o) for o in others)}) != 1:
        raise ValueError(
            f"params, grads and meta-parameters must have the same length, got "
            f"{[len(params)] + [len(o) for o in others]}"
        )
    return [fn(*xs) for xs in zip(params, *others)]


def _check_shapes(name: str, meta: torch.Tensor, p: torch.Tensor) -> None:
    if meta.shape != p.shape:
        raise ValueError(f"{name} of shape {tuple(meta.shape)} does not match parameter shape {tuple(p.shape)}")


def _gated_sgd(params: Tensors, grads: Tensors, metas: Tensors, meta_name: str, **kw):
    def one(p, g, m):
        _check_shapes(meta_name, m, p)
        _check_shapes("gradient", g, p)
        return gated_update(p, g, m, **kw)

    return _map(one, params, grads, metas)


def masked_sgd(params: Tensors, grads: Tensors, mask_logits: Tensors, *, lr: float = 0.1):
    """sparse-MAML inner step (Eq. 4): ``p - lr * 1[m >= 0] * g``; straight-through in m.

    Works on lists or dicts of tensors, returns new tensors; differentiable w.r.t. params
    (second order through ``grads`` if they carry a graph) and mask logits.
    """
    return _gated_sgd(params, grads, mask_logits, "mask_logits", kind="step", scale=lr)


def rectified_sgd(params: Tensors, grads: Tensors, rates: Tensors, *, straight_through: bool = True):
    """sparse-ReLU-MAML inner step: ``p - relu(m) * g``; straight-through in m by default."""
    return _gated_sgd(params, grads, rates, "rates", kind="relu", scale=1.0, straight_through=straight_through)


def lookahead_sgd(params: Tensors, grads: Tensors, rates: Tensors, *, straight_through: bool = False):
    """La-MAML step (Eq. 7 inner, Eq. 8 meta-update): ``p - max(0, alpha) * g``.

    ``straight_through=False`` is the official La-MAML derivative (zero where alpha <= 0).
    """
    return _gated_sgd(params, grads, rates, "rates", kind="relu", scale=1.0, straight_through=straight_through)
