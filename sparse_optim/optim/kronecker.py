"""KroneckerSGD: Kronecker-factored meta-optimizers (KFO) as a torch.optim.Optimizer."""
from __future__ import annotations

from typing import Any, Dict, List, Optional

import torch

from .._validation import MOVED_PARAMETER, check_choice, check_grad, check_rate, meta_dtype
from ..functional.kronecker import VARIANTS, adapted_factors, init_factors, kronecker_sgd_, kronecker_transform
from ..functional.sgd import sgd_direction
from ..ops.reference import sgd_directions
from .base import MetaOptimizer
from .traces import DirectionHistory

Tensor = torch.Tensor


def _positive_int(name: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be a positive integer, got {value!r}")
    return value


class KroneckerSGD(MetaOptimizer):
    r"""KFO meta-optimizer: ``p <- p - lr * U_xi(d)`` with one learned U per parameter.

    ``U`` is KLin (KFO Eq. 2/5, ``variant='kronecker', depth=1``), KFC (Eq. 6-7, ``depth>=2``,
    ReLU between Kronecker layers) or the low-rank Cholesky form (appendix A.2.3, Eq. 8,
    ``variant='cholesky'``, rank ``rank``); optional gradient normalisation with a learnable
    scale (appendix A.1.2, ``normalize=True``) and bias (KFO uses none). Kronecker factors
    start at the identity, so the first step is plain SGD; low-rank Cholesky factors are
    Glorot-normal (KFO A.2.3), so its first step ``lr * C C^T d`` is a random rank-r projection
    of the gradient, not SGD (meta-train it before using it as a drop-in). Matrix views of parameters are
    described in :mod:`sparse_optim.functional.kronecker`.

    First-order meta-gradient: with inner directions held constant,
    ``dL/dxi = -lr * sum_k J_xi U_xi(d_k)^T g_out`` (computed by autograd from the recorded
    directions, O(K * #params) memory). ``adapt_factors=True`` also adapts the factors in the
    inner loop (KFO Eq. 4): before step t+1 the factors take a hypergradient step
    ``xi <- xi - factor_inner_lr * dL(theta_{t+1})/dxi``; inside an episode the adapted factors
    are fast copies (the meta-parameters are the initial ones) and the first-order
    meta-gradient treats ``d xi_k / d xi_0`` as the identity.

    Args:
        lr: fast-adaptation learning rate (default 0.5, KFO A.1.2).
        factor_lr: meta learning rate of :meth:`meta_step` (default 0.003, KFO A.1.2).
        variant: ``'kronecker'`` or ``'cholesky'``.  depth: number of linear layers.
        rank: Cholesky rank r.  bias: learn a bias b.  normalize: A.1.2 normalisation.
        init_gain: Glorot gain for Cholesky factors.
        adapt_factors, factor_inner_lr: KFO Eq. 4 (``factor_inner_lr`` defaults to ``factor_lr``).
        momentum, dampening, nesterov, weight_decay, maximize: as ``torch.optim.SGD``.
        differentiable: build the autograd graph of each step (as ``torch.optim``); factor
            adaptation (``adapt_factors``) stays first-order on this path.
        nonfinite: policy for non-finite gradients (see :class:`~sparse_optim.optim.base.MetaOptimizer`).
        backend: force ``'reference'`` / ``'cpu'`` / ``'cuda'`` ops (default: native where available).
    """

    meta_lr_name = "factor_lr"
    trace_type = DirectionHistory

    def __init__(
        self,
        params: Any,
        lr: float = 0.5,
        factor_lr: float = 0.003,
        variant: str = "kronecker",
        depth: int = 1,
        rank: int = 1,
        bias: bool = False,
        normalize: bool = False,
        init_gain: float = 1.0,
        adapt_factors: bool = False,
        factor_inner_lr: Optional[float] = None,
        momentum: float = 0.0,
        dampening: float = 0.0,
        nesterov: bool = False,
        weight_decay: float = 0.0,
        maximize: bool = False,
        differentiable: bool = False,
        nonfinite: str = "skip",
        backend: Optional[str] = None,
        foreach: Optional[bool] = None,
        fused: Optional[bool] = None,
    ) -> None:
        defaults = dict(lr=lr, factor_lr=factor_lr, variant=variant, depth=depth, rank=rank, bias=bias,
                        normalize=normalize, init_gain=init_gain, adapt_factors=adapt_factors,
                        factor_inner_lr=factor_lr if factor_inner_lr is None else factor_inner_lr,
                        momentum=momentum, dampening=dampening, nesterov=nesterov,
                        weight_decay=weight_decay, maximize=maximize, differentiable=differentiable)
        self._fast: Dict[Tensor, Dict[str, Tensor]] = {}
        super().__init__(params, defaults, nonfinite=nonfinite, backend=backend, foreach=foreach, fused=fused)

    def _validate_hparams(self, group):
        super()._validate_hparams(group)
        if "variant" in group:
            check_choice("variant", group["variant"], VARIANTS)
        for key in ("depth", "rank"):
            if key in group:
                _positive_int(key, group[key])
        for key in ("factor_inner_lr", "init_gain"):
            if key in group:
                check_rate(key, group[key])

    def _create_meta(self, param, group):
        factors = init_factors(
            param.shape, variant=group["variant"], depth=group["depth"], rank=group["rank"], bias=group["bias"],
            normalize=group["normalize"], init_gain=group["init_gain"], dtype=meta_dtype(param), device=param.device,
        )
        return {k: v.requires_grad_(True) for k, v in factors.items()}

    def _transform(self, group, direction: Tensor, factors: Dict[str, Tensor]) -> Tensor:
        return kronecker_transform(direction, factors, variant=group["variant"], depth=group["depth"])

    # factors in use: fast copies inside an adapting episode, else the meta-parameters
    def _factors(self, p: Tensor, group) -> Dict[str, Tensor]:
        if self._episode is not None and group["adapt_factors"]:
            if p not in self._fast:
                self._fast[p] = {k: v.detach().clone() for k, v in self._meta[p].items()}
            return self._fast[p]
        return self._meta[p]

    def _adapt(self, group, p: Tensor, grad: Tensor) -> None:
        """KFO Eq. 4: hypergradient step on the factors from the previous direction."""
        previous = self._trace.get(p)
        if not previous:
            return
        direction, used = previous[-1]
        factors = self._factors(p, group) if used is None else used
        new = adapted_factors(factors, direction, -grad if group["maximize"] else grad, lr=group["lr"],
                              factor_lr=group["factor_inner_lr"], variant=group["variant"], depth=group["depth"])
        new = {k: v.detach() for k, v in new.items()}
        if self._episode is not None:
            self._fast[p] = new
        else:
            for k, v in self._meta[p].items():
                v.copy_(new[k])

    def _directions(self, group, params: List[Tensor], grads: List[Tensor]) -> List[Tensor]:
        hp = dict(weight_decay=group["weight_decay"], momentum=group["momentum"], dampening=group["dampening"],
                  nesterov=group["nesterov"], maximize=group["maximize"])
        if group.get("differentiable", False):
            dirs = []
            for p, g in zip(params, grads):
                d, buf = sgd_direction(g, p, self.state[p].get("momentum_buffer"), **hp)
                if buf is not None:
                    self.state[p]["momentum_buffer"] = buf
                dirs.append(d)
            return dirs
        buffers = [self.state[p].get("momentum_buffer") for p in params] if group["momentum"] else [None] * len(params)
        dirs = sgd_directions(params, grads, buffers, **hp)
        if group["momentum"]:
            for p, b in zip(params, buffers):
                self.state[p]["momentum_buffer"] = b
        return dirs

    def _check_step_inputs(self, params) -> None:
        """Before anything is written (the directions update momentum buffers in place)."""
        for p in params:
            check_grad(p, self._names[p])
            factor = next(iter(self._meta[p].values()))
            if factor.device != p.device:
                raise ValueError(f"parameter {self._names[p]} is on {p.device} but its Kronecker factors on "
                                 f"{factor.device}: {MOVED_PARAMETER}")

    def _update(self, group, params, grads, metas, record):
        self._check_step_inputs(params)
        if group["differentiable"]:
            return self._update_kronecker(group, params, grads, record)
        with torch.no_grad():
            self._update_kronecker(group, params, grads, record)

    def _update_kronecker(self, group, params, grads, record):
        if not (group["adapt_factors"] and self._episode is None):
            return self._kronecker_step(group, params, grads, record)
        # factors change outside an episode: the non-finite policy guards the whole step

        def written() -> List[Optional[Tensor]]:
            out: List[Optional[Tensor]] = list(params)
            for p in params:
                out += list(self._meta[p].values())
                entries = self._trace.get(p)
                out.append(entries[-1][0] if entries else None)
                out.append(self.state[p].get("momentum_buffer") if p in self.state else None)
            return out

        self._nonfinite.guarded(list(grads), written, lambda: self._kronecker_step(group, params, grads, record),
                                f"{type(self).__name__}.step (adapt_factors)", self.backend)

    def _kronecker_step(self, group, params, grads, record):
        dirs = self._directions(group, params, grads)
        adapt = group["adapt_factors"]
        differentiable = group.get("differentiable", False)
        used = []
        for p, g, d in zip(params, grads, dirs):
            if adapt:
                self._adapt(group, p, g)
            factors = self._factors(p, group)
            if differentiable:
                self._apply(p, group["lr"] * self._transform(group, d, factors))
            else:
                used.append(factors)
            if record or adapt:
                in_episode = self._episode is not None
                self._trace.append(p, d.detach().to(meta_dtype(p), copy=True),
                                   factors if (in_episode and adapt) else None, keep=in_episode)
        if not differentiable:  # all parameters in one call: batched GEMMs (sparse_optim.ops.kronecker)
            kronecker_sgd_(params, dirs, used, lr=group["lr"], variant=group["variant"], depth=group["depth"],
                           backend=self.backend)

    @staticmethod
    def _apply(p: Tensor, step: Tensor) -> None:
        """``p -= step`` with a single rounding to the parameter's precision."""
        if step.dtype == p.dtype:
            p.sub_(step)
        else:
            p.copy_(p.to(step.dtype) - step)

    def _accumulate_meta_grads(self, group, params, outer_grads):
        for p, g in zip(params, outer_grads):
            meta = self._meta[p]
            with torch.enable_grad():
                leaves: Dict[int, Dict[str, Tensor]] = {}
                total = 0.0
                for direction, used in self._trace[p]:
                    key = id(used)
                    if key not in leaves:
                        source = meta if used is None else used
                        leaves[key] = {k: v.detach().requires_grad_(True) for k, v in source.items()}
                    u = self._transform(group, direction, leaves[key])
                    total = total + (u * g.to(u.dtype)).sum()
                flat = [t for d in leaves.values() for t in d.values()]
                grads = torch.autograd.grad(-group["lr"] * total, flat, allow_unused=True)
            i = 0
            for d in leaves.values():
                for k in d:
                    if grads[i] is not None:
                        self._meta_grad_buffer(meta[k]).add_(grads[i])
                    i += 1

    def _update_params_with_meta(self, group, params, grads):
        for p, g in zip(params, grads):
            d = -g if group["maximize"] else g
            self._apply(p, group["lr"] * self._transform(group, d, self._meta[p]))

    def _episode_started(self) -> None:
        self._fast = {}

    def _episode_ended(self) -> None:
        self._fast = {}
