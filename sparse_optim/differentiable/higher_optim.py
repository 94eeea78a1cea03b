"""Differentiable counterparts of the optimizers for ``higher`` (registered on import).

``higher.innerloop_ctx(model, MaskedSGD(...))`` builds one of these. Each step computes the
same update as the stateful class (one formula: :mod:`sparse_optim.functional`) out of
place, so gradients of an outer loss reach the initial weights (second order when
``track_higher_grads=True``) and the optimizer's meta-parameters, which are the very
tensors ``opt.meta_parameters()`` returns (not copies).
"""
from __future__ import annotations

from typing import Dict, List

import higher
import torch
from higher.optim import DifferentiableOptimizer

from ..functional.gated import gated_update
from ..ops.autograd import gated_update as fused_gated_update
from ..functional.kronecker import kronecker_transform, kronecker_update
from ..functional.sgd import sgd_direction
from ..optim import KroneckerSGD, LookaheadLRSGD, MaskedSGD, RectifiedLRSGD, StochasticMaskedSGD

Tensor = torch.Tensor


class _MetaDifferentiableOptimizer(DifferentiableOptimizer):
    def __init__(self, other, reference_params, *args, **kwargs) -> None:
        reference_params = list(reference_params)
        super().__init__(other, reference_params, *args, **kwargs)
        self._source = other
        self._meta: List[List[Dict[str, Tensor]]] = [
            [other._meta[p] for p in group["params"]] for group in other.param_groups
        ]

    def _direction(self, group, group_idx: int, p_idx: int, p: Tensor, g: Tensor) -> Tensor:
        state = self.state[group_idx][p_idx]
        d, buf = sgd_direction(g, p, state.get("momentum_buffer"), weight_decay=group["weight_decay"],
                               momentum=group["momentum"], dampening=group["dampening"],
                               nesterov=group["nesterov"], maximize=group["maximize"])
        if buf is not None:
            state["momentum_buffer"] = buf
        return d


class DifferentiableGatedSGD(_MetaDifferentiableOptimizer):
    """higher version of MaskedSGD / RectifiedLRSGD / LookaheadLRSGD (Eq. refs there)."""

    def _logits(self, group_idx: int, p_idx: int) -> Tensor:
        return self._meta[group_idx][p_idx][self._source.meta_key]

    def _update(self, grouped_grads, **kwargs) -> None:
        src = self._source
        for group_idx, (group, grads) in enumerate(zip(self.param_groups, grouped_grads)):
            scale = group["lr"] if src.gate_kind == "step" else 1.0
            for p_idx, (p, g) in enumerate(zip(group["params"], grads)):
                if g is None:
                    continue
                d = self._direction(group, group_idx, p_idx, p, g)
                # fused kernel for a numeric scale; a tensor scale (higher override) stays functional
                update = gated_update if isinstance(scale, Tensor) else fused_gated_update
                group["params"][p_idx] = update(
                    p, d, self._logits(group_idx, p_idx), kind=src.gate_kind, scale=scale,
                    straight_through=group.get("straight_through", True),
                )


class DifferentiableStochasticMaskedSGD(DifferentiableGatedSGD):
    """sparse-MAML+: logits ``A (z * sigma + mu) + b`` sampled once per inner loop, with graph."""

    def __init__(self, other, reference_params, *args, **kwargs) -> None:
        super().__init__(other, reference_params, *args, **kwargs)
        self._sampled: Dict[tuple, Tensor] = {}
        for gi, group in enumerate(other.param_groups):
            for pi, p in enumerate(group["params"]):
                meta = other._meta[p]
                if other.meta_key not in meta:
                    z = torch.randn(meta["mu"].shape, dtype=meta["mu"].dtype, device=meta["mu"].device)
                    self._sampled[(gi, pi)] = other._generate(p, z)

    def _logits(self, group_idx, p_idx):
        sampled = self._sampled.get((group_idx, p_idx))
        return super()._logits(group_idx, p_idx) if sampled is None else sampled


class DifferentiableKroneckerSGD(_MetaDifferentiableOptimizer):
    """higher version of KroneckerSGD; with ``adapt_factors`` the factors' hypergradient
    steps (KFO Eq. 4) are differentiated through as well."""

    def _update(self, grouped_grads, **kwargs) -> None:
        for group_idx, (group, grads) in enumerate(zip(self.param_groups, grouped_grads)):
            hp = dict(variant=group["variant"], depth=group["depth"])
            for p_idx, (p, g) in enumerate(zip(group["params"], grads)):
                if g is None:
                    continue
                state = self.state[group_idx][p_idx]
                factors = state.get("fast_factors", self._meta[group_idx][p_idx])
                if group["adapt_factors"] and "previous_direction" in state:
                    factors = self._adapted(group, factors, state["previous_direction"], g)
                d = self._direction(group, group_idx, p_idx, p, g)
                group["params"][p_idx] = kronecker_update(p, d, factors, lr=group["lr"], **hp)
                if group["adapt_factors"]:
                    state["fast_factors"], state["previous_direction"] = factors, d

    def _adapted(self, group, factors: Dict[str, Tensor], direction: Tensor, grad: Tensor) -> Dict[str, Tensor]:
        signed = -grad if group["maximize"] else grad
        u = kronecker_transform(direction, factors, variant=group["variant"], depth=group["depth"])
        surrogate = -group["lr"] * (u * signed.to(u.dtype)).sum()
        keys = [k for k, v in factors.items() if v.requires_grad]
        hyper = torch.autograd.grad(surrogate, [factors[k] for k in keys], create_graph=self._track_higher_grads,
                                    allow_unused=True)
        new = dict(factors)
        for k, h in zip(keys, hyper):
            if h is not None:
                new[k] = factors[k] - group["factor_inner_lr"] * h
        return new


def register() -> None:
    """Register every optimizer class with ``higher.register_optim``."""
    for cls in (MaskedSGD, RectifiedLRSGD, LookaheadLRSGD):
        higher.register_optim(cls, DifferentiableGatedSGD)
    higher.register_optim(StochasticMaskedSGD, DifferentiableStochasticMaskedSGD)
    higher.register_optim(KroneckerSGD, DifferentiableKroneckerSGD)
