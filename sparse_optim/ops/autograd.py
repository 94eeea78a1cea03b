"""The differentiable gated update over the kernels (second-order meta-learning).

:func:`gated_sgd_update` computes ``p_i - scale * gate(m_i) * d_i`` for a whole list in one
forward pass (:func:`sparse_optim.functional.gated.gated_sgd_` on copies of the parameters: one
kernel call per (device, dtype) group) and differentiates it with the analytic formulas of
:func:`sparse_optim.functional.gated.gated_update` (the specification):

    dL/dp = g,   dL/dd = -scale * gate(m) * g,   dL/dm = -scale * d * g * gate'(m),
    dL/dscale = -sum_i <gate(m_i) * d_i, g_i>          (a tensor ``scale``, e.g. a higher override)

with ``gate'`` = 1 under straight-through estimation (sparse-MAML Eq. 5 / supplement Eq. 10)
and the gate's true derivative otherwise (La-MAML Eq. 7: ``1[m > 0]``). The backward is written
in differentiable tensor ops, so double backward (second-order MAML) works. Under ``torch.func``
transforms (vmap, grad) and for a tensor ``scale`` the forward uses the same formula in tensor ops.
"""
from __future__ import annotations

from typing import List, Optional, Sequence

import torch
from torch.autograd import Function

from ..functional.gates import Gate, gate
from .reference import gated_value

Tensor = torch.Tensor
_is_wrapped = torch._C._functorch.is_functorch_wrapped_tensor


class _GatedSGDUpdate(Function):
    generate_vmap_rule = True

    @staticmethod
    def forward(g: Gate, straight_through: bool, backend: Optional[str], n: int, scale, *tensors: Tensor):
        params, dirs, metas = tensors[:n], tensors[n:2 * n], tensors[2 * n:3 * n]
        if len(tensors) > 3 * n:
            scale = tensors[3 * n]
        if isinstance(scale, Tensor) or any(_is_wrapped(t) for t in tensors):
            return tuple(gated_value(p, d, m, g, scale) for p, d, m in zip(params, dirs, metas))
        from ..functional.gated import run_grouped

        out = [p.detach().clone() for p in params]
        run_grouped("gated_sgd_step_", [out, [d.detach() for d in dirs], [m.detach() for m in metas], [None] * n, None],
                    backend, (), kind=g.name, scale=scale)
        return tuple(out)

    @staticmethod
    def setup_context(ctx, inputs, output) -> None:
        g, straight_through, _, n, scale, *tensors = inputs
        ctx.gate, ctx.straight_through, ctx.n = g, straight_through, n
        ctx.tensor_scale = len(tensors) > 3 * n
        ctx.scale = None if ctx.tensor_scale else scale
        ctx.save_for_backward(*tensors[n:])  # directions, metas (and the scale tensor)

    @staticmethod
    def backward(ctx, *grads: Tensor):
        n, g = ctx.n, ctx.gate
        saved = ctx.saved_tensors
        dirs, metas = saved[:n], saved[n:2 * n]
        scale = saved[2 * n] if ctx.tensor_scale else ctx.scale
        need = ctx.needs_input_grad[5:]
        grad_params: List[Optional[Tensor]] = [gr if need[i] else None for i, gr in enumerate(grads)]
        grad_dirs: List[Optional[Tensor]] = [None] * n
        grad_metas: List[Optional[Tensor]] = [None] * n
        grad_scale = None
        for i, (gr, d, m) in enumerate(zip(grads, dirs, metas)):
            if gr is None:
                continue
            gm = gr.to(m.dtype)
            if need[n + i]:
                grad_dirs[i] = (-scale * gate(m, g, ctx.straight_through) * gm).to(d.dtype)
            if need[2 * n + i]:
                gmeta = -scale * d.to(m.dtype) * gm
                derivative = g.grad_factor(m, ctx.straight_through)
                grad_metas[i] = gmeta if derivative is None else gmeta * derivative
            if ctx.tensor_scale and need[3 * n]:
                term = -(gate(m, g, ctx.straight_through) * d.to(m.dtype) * gm).sum()
                grad_scale = term if grad_scale is None else grad_scale + term
        extra = (grad_scale.to(scale.dtype).reshape(scale.shape) if grad_scale is not None else None,) \
            if ctx.tensor_scale else ()
        return (None, None, None, None, None, *grad_params, *grad_dirs, *grad_metas, *extra)


def gated_sgd_update(params: Sequence[Tensor], directions: Sequence[Tensor], metas: Sequence[Tensor], g: Gate,
                     scale, straight_through: bool = True, backend: Optional[str] = None) -> List[Tensor]:
    """Fused, differentiable ``[p - scale * gate(m) * d]`` over lists (see the module docstring).

    ``scale`` is a number or a 0-d tensor (then differentiable too)."""
    n = len(params)
    if n == 0:
        return []
    extra = (scale,) if isinstance(scale, Tensor) else ()
    num_scale = None if extra else float(scale)
    return list(_GatedSGDUpdate.apply(g, straight_through, backend, n, num_scale, *params, *directions, *metas,
                                      *extra))
