"""Differentiable front end of the elementwise kernels (second-order meta-learning).

:func:`gated_update` computes ``p - scale * gate(m) * d`` with one fused kernel pass
(:func:`sparse_optim.ops.gated_sgd_step_` on a copy of ``p``) and differentiates it with the
analytic formulas of :func:`sparse_optim.functional.gated.gated_update` (the specification):

    dL/dp = g,   dL/dd = -scale * gate(m) * g,   dL/dm = -scale * d * g * gate'(m)

with ``gate'`` = 1 under straight-through estimation (sparse-MAML Eq. 5 / supplement Eq. 10)
and ``1[m > 0]`` for the true rectifier derivative (La-MAML Eq. 7). The backward is written
in differentiable tensor ops, so double backward (second-order MAML) works.
"""
from __future__ import annotations

import torch
from torch.autograd import Function

from ..functional.gates import gate, gate_derivative

Tensor = torch.Tensor


class _GatedUpdate(Function):
    @staticmethod
    def forward(param: Tensor, direction: Tensor, meta: Tensor, kind: str, scale: float,
                straight_through: bool) -> Tensor:
        from . import gated_sgd_step_

        out = param.detach().clone()
        gated_sgd_step_([out], [direction.detach()], [meta.detach()], [None], None, kind=kind, scale=scale)
        return out

    @staticmethod
    def setup_context(ctx, inputs, output) -> None:
        _, direction, meta, kind, scale, straight_through = inputs
        ctx.save_for_backward(direction, meta)
        ctx.kind, ctx.scale, ctx.straight_through = kind, scale, straight_through

    @staticmethod
    def backward(ctx, grad: Tensor):
        direction, meta = ctx.saved_tensors
        g = grad.to(meta.dtype)
        grad_param = grad if ctx.needs_input_grad[0] else None
        grad_direction = None
        if ctx.needs_input_grad[1]:
            step = gate(meta, ctx.kind, ctx.straight_through)
            grad_direction = (-ctx.scale * step * g).to(direction.dtype)
        grad_meta = None
        if ctx.needs_input_grad[2]:
            grad_meta = -ctx.scale * direction.to(meta.dtype) * g
            derivative = gate_derivative(meta, ctx.kind, ctx.straight_through)
            if derivative is not None:
                grad_meta = grad_meta * derivative
        return grad_param, grad_direction, grad_meta, None, None, None


def gated_update(param: Tensor, direction: Tensor, meta: Tensor, *, kind: str, scale: float,
                 straight_through: bool = True) -> Tensor:
    """Fused, differentiable ``param - scale * gate(meta) * direction``.

    ``scale`` must be a Python number (a tensor learning rate, e.g. a ``higher`` override,
    goes through :func:`sparse_optim.functional.gated.gated_update` instead).
    """
    if isinstance(scale, Tensor):
        raise TypeError("scale must be a Python number for the fused op; use functional.gated.gated_update")
    if direction.shape != param.shape or meta.shape != param.shape:
        raise ValueError(f"direction {tuple(direction.shape)} and meta {tuple(meta.shape)} must match "
                         f"the parameter shape {tuple(param.shape)}")
    return _GatedUpdate.apply(param, direction, meta, kind, float(scale), straight_through)
