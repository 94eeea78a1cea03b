"""Differentiable counterparts of the optimizers for ``higher`` (registered on import).

``higher.innerloop_ctx(model, MaskedSGD(...))`` builds one of these. Each step computes the
same update as the stateful class out of place -- the gated family through
:func:`sparse_optim.functional.gated_sgd` (one list-level autograd function over the kernels),
the Kronecker family through :func:`sparse_optim.functional.kronecker_update` and
:func:`~sparse_optim.functional.adapted_factors` (KFO Eq. 4) -- so gradients of an outer loss
reach the initial weights (second order when ``track_higher_grads=True``) and the optimizer's
meta-parameters, which are the very tensors ``opt.meta_parameters()`` returns (not copies).
Every :class:`~sparse_optim.GatedSGD` subclass is registered, so a new gate needs nothing here.
"""
from __future__ import annotations

import warnings
from typing import Dict, List

import higher
import torch
from higher.optim import DifferentiableOptimizer

from ..functional.gated import gated_sgd
from ..functional.kronecker import adapted_factors, kronecker_update
from ..functional.sgd import sgd_direction
from ..optim import GatedSGD, KroneckerSGD, StochasticMaskedSGD

Tensor = torch.Tensor


class _MetaDifferentiableOptimizer(DifferentiableOptimizer):
    def __init__(self, other, reference_params, *args, **kwargs) -> None:
        reference_params = list(reference_params)
        super().__init__(other, reference_params, *args, **kwargs)
        self._source = other
        if not self._track_higher_grads:
            warnings.warn(
                f"higher with track_higher_grads=False detaches the fast weights at every step, so the "
                f"meta-parameters of {type(other).__name__} receive no gradient; for first-order "
                "meta-learning use `with opt.episode(): ...; opt.meta_backward()`", UserWarning, stacklevel=4)
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
    """higher version of every :class:`~sparse_optim.GatedSGD` (MaskedSGD, RectifiedLRSGD,
    LookaheadLRSGD, MetaSGD; equations there)."""

    def _logits(self, group_idx: int, p_idx: int) -> Tensor:
        return self._meta[group_idx][p_idx][self._source.meta_key]

    def _update(self, grouped_grads, **kwargs) -> None:
        src = self._source
        for group_idx, (group, grads) in enumerate(zip(self.param_groups, grouped_grads)):
            idx = [i for i, g in enumerate(grads) if g is not None]
            if not idx:
                continue
            params = group["params"]
            dirs = [self._direction(group, group_idx, i, params[i], grads[i]) for i in idx]
            new = gated_sgd([params[i] for i in idx], dirs, [self._logits(group_idx, i) for i in idx],
                            gate=src.gate, lr=group["lr"], straight_through=group.get("straight_through", True),
                            backend=src.backend)
            for i, value in zip(idx, new):
                params[i] = value


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
                    factors = adapted_factors(factors, state["previous_direction"], -g if group["maximize"] else g,
                                              lr=group["lr"], factor_lr=group["factor_inner_lr"],
                                              create_graph=self._track_higher_grads, **hp)
                d = self._direction(group, group_idx, p_idx, p, g)
                group["params"][p_idx] = kronecker_update(p, d, factors, lr=group["lr"], **hp)
                if group["adapt_factors"]:
                    state["fast_factors"], state["previous_direction"] = factors, d


def _subclasses(cls) -> List[type]:
    out = []
    for sub in cls.__subclasses__():
        out += [sub] + _subclasses(sub)
    return out


def register() -> None:
    """Register every optimizer class with ``higher.register_optim``."""
    for cls in _subclasses(GatedSGD):
        higher.register_optim(cls, DifferentiableStochasticMaskedSGD if issubclass(cls, StochasticMaskedSGD)
                              else DifferentiableGatedSGD)
    higher.register_optim(KroneckerSGD, DifferentiableKroneckerSGD)
