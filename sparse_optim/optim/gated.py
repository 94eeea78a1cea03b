"""The elementwise family: MaskedSGD, StochasticMaskedSGD, RectifiedLRSGD, LookaheadLRSGD, MetaSGD.

All update ``p <- p - scale * gate(xi) * d`` with per-element meta-parameters xi of the
parameter's shape (see :mod:`sparse_optim.functional.gated` for the math).
"""
from __future__ import annotations

import math
from typing import Any, Dict, List, Optional, Tuple

import torch

from .. import functional as F
from .._validation import check_choice, check_fraction, check_rate, check_real, meta_dtype
from ..functional.gates import get_gate
from ..functional.sgd import sgd_direction
from .base import MetaOptimizer

Tensor = torch.Tensor


class GatedSGD(MetaOptimizer):
    """The elementwise family: ``p <- p - scale * gate(xi) * d`` (:mod:`sparse_optim.functional.gated`).

    A subclass names its gate kind (:mod:`sparse_optim.functional.gates`), the key and learning
    rate of its meta-parameters, and how they are initialised (:meth:`_create_meta`); the step,
    traces, meta-gradients, online mode, ``differentiable=True``, ``higher`` and the kernels
    follow from the gate.
    """

    gate_kind = "step"
    meta_key = "meta"

    def __init_subclass__(cls, **kwargs) -> None:
        super().__init_subclass__(**kwargs)
        cls.gate = get_gate(cls.gate_kind)

    def _straight_through(self, group: Dict[str, Any]) -> bool:
        return group.get("straight_through", True)

    def _validate_hparams(self, group: Dict[str, Any]) -> None:
        super()._validate_hparams(group)
        if "online_decay" in group:
            check_fraction("online_decay", group["online_decay"])
        if group.get("online") and group.get("differentiable"):
            raise ValueError("online=True is not supported together with differentiable=True")
        initial = group.get("rates_initialised_from_lr")
        if initial is not None and "lr" in group and group["lr"] != initial:
            raise ValueError(
                f"{type(self).__name__}: lr only sets the initial learning rates (here {initial}); the rates "
                f"are meta-parameters, so changing lr (e.g. with an LR scheduler) to {group['lr']} would have no "
                f"effect. Schedule {self.meta_lr_name} instead, or scale the rates in opt.meta_parameters().")

    def add_param_group(self, param_group: Dict[str, Any]) -> None:
        super().add_param_group(param_group)
        if not self.gate.lr_scaled:  # lr became the rates' initial value: later changes are refused
            self.param_groups[-1]["rates_initialised_from_lr"] = self.param_groups[-1]["lr"]

    def _logits(self, p: Tensor) -> Tensor:
        """The meta-parameter tensor the gate reads for parameter ``p``."""
        return self._meta[p][self.meta_key]

    def _metas(self, params: List[Tensor]) -> List[Tensor]:
        return [self._logits(p) for p in params]

    def _group_metas(self, params: List[Tensor]) -> Optional[List[Tensor]]:
        return self._metas(params)

    def _logit_grad_buffer(self, p: Tensor) -> Tensor:
        return self._meta_grad_buffer(self._logits(p))

    def _logit_grads_done(self, params: List[Tensor], buffers: List[Tensor]) -> None:
        """Hook for meta-parameters that generate the logits (sparse-MAML+)."""

    def _momentum_buffers(self, params: List[Tensor]) -> List[Optional[Tensor]]:
        state = self.state
        return [state[p].get("momentum_buffer") if p in state else None for p in params]

    def _store_momentum_buffers(self, params: List[Tensor], buffers: List[Optional[Tensor]]) -> None:
        for p, b in zip(params, buffers):
            self.state[p]["momentum_buffer"] = b

    def _update_differentiable(self, group, params, grads, metas, record):
        """``differentiable=True``: the same update recorded by autograd (straight-through gates),
        so gradients reach the meta-parameters, the incoming gradients and earlier steps."""
        dirs = []
        for p, g in zip(params, grads):
            d, buf = sgd_direction(g, p, self.state[p].get("momentum_buffer"), weight_decay=group["weight_decay"],
                                   momentum=group["momentum"], dampening=group["dampening"],
                                   nesterov=group["nesterov"], maximize=group["maximize"])
            if buf is not None:
                self.state[p]["momentum_buffer"] = buf
            dirs.append(d)
        new = F.gated_sgd(params, dirs, metas, gate=self.gate, lr=group["lr"],
                          straight_through=self._straight_through(group), backend=self.backend)
        for p, value in zip(params, new):
            p.copy_(value)
        if record:
            for t, d in zip(self._trace.for_params(params, metas), dirs):
                t.add_(d.detach().to(t.dtype))

    def _update(self, group, params, grads, metas, record):
        if metas is None or len(metas) != len(params):
            metas = self._metas(params)
        if group["differentiable"]:
            return self._update_differentiable(group, params, grads, metas, record)
        online = group.get("online", False) and self._episode is None
        if not online:
            return self._gated_step(group, params, grads, metas, record, online=False)
        traced = [i for i, p in enumerate(params) if p in self._trace]
        traces = self._trace.for_params(params, metas)

        def update() -> None:
            if traced:  # hypergradient step: this gradient is the outer gradient of the previous trace
                signed = [(-grads[i] if group["maximize"] else grads[i]) for i in traced]
                traced_metas = [metas[i] for i in traced]
                F.gated_meta_grad_(traced_metas, signed, [traces[i] for i in traced], traced_metas,
                                   gate=self.gate, lr=group["lr"], alpha=-group[self.meta_lr_name],
                                   straight_through=self._straight_through(group), backend=self.backend)
            self._gated_step(group, params, grads, metas, record, online=True)

        def written() -> List[Optional[Tensor]]:
            return params + metas + traces + self._momentum_buffers(params)

        self._nonfinite.guarded(list(grads), written, update, f"{type(self).__name__}.step (online)", self.backend)

    def _gated_step(self, group, params, grads, metas, record, online):
        momentum = group["momentum"]
        buffers = self._momentum_buffers(params) if momentum else [None] * len(params)
        F.gated_sgd_(
            params, grads, metas, buffers, self._trace.for_params(params, metas) if record else None,
            gate=self.gate, lr=group["lr"], weight_decay=group["weight_decay"], momentum=momentum,
            dampening=group["dampening"], nesterov=group["nesterov"], maximize=group["maximize"],
            trace_decay=group.get("online_decay", 0.0) if online else 1.0, backend=self.backend,
        )
        if momentum:
            self._store_momentum_buffers(params, buffers)

    def _accumulate_meta_grads(self, group, params, outer_grads):
        buffers = [self._logit_grad_buffer(p) for p in params]
        F.gated_meta_grad_(buffers, outer_grads, [self._trace[p] for p in params], self._metas(params),
                           gate=self.gate, lr=group["lr"], straight_through=self._straight_through(group),
                           backend=self.backend)
        self._logit_grads_done(params, buffers)

    def _update_params_with_meta(self, group, params, grads):
        F.gated_sgd_(params, grads, self._metas(params), [None] * len(params), None, gate=self.gate,
                     lr=group["lr"], maximize=group["maximize"], backend=self.backend)

    def sparsity(self) -> Dict[str, Any]:
        """Fraction of frozen coordinates (gate = 0): ``{'overall': f, 'per_parameter': {name: f}}``.

        sparse-MAML Sec. 3: ``||1[m < 0]||^2 / dim(m)``; for rates, the fraction with rate <= 0.
        """
        per, frozen_total, total = {}, 0, 0
        for group in self.param_groups:
            for p in group["params"]:
                m = self._logits(p)
                n = int(self.gate.frozen(m.detach()).sum())
                per[self._names[p]] = n / max(m.numel(), 1)
                frozen_total += n
                total += m.numel()
        return {"overall": frozen_total / max(total, 1), "per_parameter": per}


def _shaped_like(param: Tensor, values: Tensor) -> Tensor:
    """``values`` (drawn in logical order, so seeds give the same numbers for any layout) in
    ``param``'s memory format: the kernels then need no contiguous() copies."""
    return torch.empty_like(param, dtype=values.dtype).detach().copy_(values)


def _is_conv_weight(name: Optional[str], p: Tensor) -> bool:
    """sparse-MAML+ default: stochastic masks for 4-d (convolution) weights."""
    return p.dim() == 4


def _fan_in(p: Tensor) -> int:
    """Kaiming fan-in (at least 1, so zero-size parameters get an empty mask)."""
    if p.dim() < 2:
        return max(p.numel(), 1)
    return max(p.shape[1] * math.prod(p.shape[2:]), 1)


class MaskedSGD(GatedSGD):
    r"""sparse-MAML: SGD through learned binary gradient masks.

    Update (sparse-MAML Eq. 4): ``p <- p - lr * 1[m >= 0] * d`` with mask logits ``m`` of the
    parameter's shape and ``d`` the SGD direction (gradient, weight decay, momentum).
    First-order straight-through meta-gradient (Eq. 5 / supplement Eq. 10):
    ``dL/dm = -lr * g_out * sum_k d_k``; ``meta_step`` is ``m <- m - mask_lr * dL/dm``.

    Args:
        params: iterable of parameters, (name, parameter) pairs, or param-group dicts.
        lr: inner learning rate alpha (default 0.1, supplement B.1.1).
        mask_lr: meta learning rate gamma_m of :meth:`meta_step` (default 0.0075, Table S2).
        init_sparsity: initial fraction of frozen coordinates for ``mask_init='kaiming'``
            (default 0.5, the paper's: half the coordinates start frozen; ``mask_init='constant'``
            with ``mask_init_value=0.0`` starts every mask open, i.e. exactly ``torch.optim.SGD``).
        mask_init: ``'kaiming'`` (Kaiming-uniform logits shifted so that a fraction
            ``init_sparsity`` is negative, supplement B.1.1) or ``'constant'``.
        mask_init_value: logits value for ``mask_init='constant'``.
        momentum, dampening, nesterov, weight_decay, maximize: as in ``torch.optim.SGD``; the
            mask multiplies the final direction.
        online: adapt masks inside an ordinary training loop: each step's gradient is the outer
            gradient of the previous steps' trace (hypergradient-descent style).
        online_decay: trace decay in online mode (0: previous step only).
        differentiable: record ``step()`` with autograd (``torch.optim`` semantics).
        nonfinite: ``'skip'`` / ``'raise'`` / ``'propagate'`` for non-finite gradients where
            meta-parameters would change (see :class:`~sparse_optim.optim.base.MetaOptimizer`).
        backend: force ``'reference'`` / ``'cpu'`` / ``'cuda'`` ops (default: native kernels
            where available, like ``torch.optim``'s ``fused``).
    """

    gate_kind = "step"
    meta_key = "mask_logits"
    meta_lr_name = "mask_lr"

    def __init__(
        self,
        params: Any,
        lr: float = 0.1,
        mask_lr: float = 0.0075,
        init_sparsity: float = 0.5,
        mask_init: str = "kaiming",
        mask_init_value: float = 0.0,
        momentum: float = 0.0,
        dampening: float = 0.0,
        nesterov: bool = False,
        weight_decay: float = 0.0,
        maximize: bool = False,
        online: bool = False,
        online_decay: float = 0.0,
        differentiable: bool = False,
        nonfinite: str = "skip",
        backend: Optional[str] = None,
        foreach: Optional[bool] = None,
        fused: Optional[bool] = None,
    ) -> None:
        defaults = dict(lr=lr, mask_lr=mask_lr, init_sparsity=init_sparsity, mask_init=mask_init,
                        mask_init_value=mask_init_value, momentum=momentum, dampening=dampening,
                        nesterov=nesterov, weight_decay=weight_decay, maximize=maximize,
                        online=online, online_decay=online_decay, differentiable=differentiable)
        super().__init__(params, defaults, nonfinite=nonfinite, backend=backend, foreach=foreach, fused=fused)

    def _validate_hparams(self, group):
        super()._validate_hparams(group)
        if "init_sparsity" in group:
            check_fraction("init_sparsity", group["init_sparsity"])
        if "mask_init" in group:
            check_choice("mask_init", group["mask_init"], ("kaiming", "constant"))
        if "mask_init_value" in group:
            check_real("mask_init_value", group["mask_init_value"])

    def _create_meta(self, param, group):
        dtype = meta_dtype(param)
        if group["mask_init"] == "constant":
            m = torch.full_like(param, float(group["mask_init_value"]), dtype=dtype).detach()
        else:
            bound = 1.0 / math.sqrt(_fan_in(param))
            u = _shaped_like(param, torch.empty(param.shape, dtype=dtype, device=param.device).uniform_(-bound, bound))
            # P(u - s < 0) = (s + bound) / (2 bound) = init_sparsity
            m = u - bound * (2 * group["init_sparsity"] - 1)
        return {self.meta_key: m.requires_grad_(True)}


class RectifiedLRSGD(GatedSGD):
    r"""sparse-ReLU-MAML: per-element learning rates ``relu(m)``.

    Update (sparse-MAML Sec. 3.3, Eq. 4 with 1[m >= 0] replaced by (m)_+):
    ``p <- p - relu(m) * d``; straight-through first-order meta-gradient (Eq. 5):
    ``dL/dm = -g_out * sum_k d_k`` so rates can recover from zero.

    Args:
        lr: initial rate value (default 0.1, Table S2); rates start at ``lr`` (sparsity 0%).
        rate_lr: meta learning rate of :meth:`meta_step` (default 0.0075, Table S2).
        rate_init: ``'constant'`` (all rates = lr) or ``'uniform'`` in ``rate_init_range``
            (C-MAML setting [0.005, 0.1]).
        straight_through: identity derivative of the rectifier (default True).
        Others as :class:`MaskedSGD`.
    """

    gate_kind = "relu"
    meta_key = "rates"
    meta_lr_name = "rate_lr"

    def __init__(
        self,
        params: Any,
        lr: float = 0.1,
        rate_lr: float = 0.0075,
        rate_init: str = "constant",
        rate_init_range: Tuple[float, float] = (0.005, 0.1),
        straight_through: bool = True,
        momentum: float = 0.0,
        dampening: float = 0.0,
        nesterov: bool = False,
        weight_decay: float = 0.0,
        maximize: bool = False,
        online: bool = False,
        online_decay: float = 0.0,
        differentiable: bool = False,
        nonfinite: str = "skip",
        backend: Optional[str] = None,
        foreach: Optional[bool] = None,
        fused: Optional[bool] = None,
    ) -> None:
        defaults = dict(lr=lr, rate_lr=rate_lr, rate_init=rate_init, rate_init_range=rate_init_range,
                        straight_through=straight_through, momentum=momentum, dampening=dampening,
                        nesterov=nesterov, weight_decay=weight_decay, maximize=maximize,
                        online=online, online_decay=online_decay, differentiable=differentiable)
        super().__init__(params, defaults, nonfinite=nonfinite, backend=backend, foreach=foreach, fused=fused)

    def _validate_hparams(self, group):
        super()._validate_hparams(group)
        if "rate_init" in group:
            check_choice("rate_init", group["rate_init"], ("constant", "uniform"))
        if "rate_init_range" in group:
            bounds = group["rate_init_range"]
            if not isinstance(bounds, (tuple, list)) or len(bounds) != 2:
                raise ValueError(f"rate_init_range must be a (low, high) pair, got {bounds!r}")
            lo, hi = bounds
            check_rate("rate_init_range[0]", lo)
            check_rate("rate_init_range[1]", hi)
            if lo > hi:
                raise ValueError(f"rate_init_range must be (low, high) with low <= high, got {(lo, hi)}")

    def _create_meta(self, param, group):
        dtype = meta_dtype(param)
        if group["rate_init"] == "uniform":
            lo, hi = group["rate_init_range"]
            m = _shaped_like(param, torch.empty(param.shape, dtype=dtype, device=param.device).uniform_(lo, hi))
        else:
            m = torch.full_like(param, float(group["lr"]), dtype=dtype).detach()
        return {self.meta_key: m.requires_grad_(True)}


class MetaSGD(GatedSGD):
    r"""Meta-SGD (Li et al. 2017): learned per-element learning rates of either sign.

    Update (Meta-SGD Eq. 1): ``p <- p - alpha * d`` with rates ``alpha`` of the parameter's shape,
    initialised to ``lr``; a baseline of sparse-MAML Table 1 and KFO Table 2. First-order
    meta-gradient (inner directions held constant): ``dL/dalpha = -g_out * sum_k d_k``;
    :meth:`meta_step` is ``alpha <- alpha - rate_lr * dL/dalpha``. Second order through
    ``differentiable=True``, ``higher`` or :func:`sparse_optim.functional.meta_sgd`. Rates are
    not clipped: a negative rate ascends (sparsity counts rates that are exactly 0).

    Args:
        lr: initial rate alpha_0 (default 0.1).
        rate_lr: meta learning rate of :meth:`meta_step` (default 0.01).
        Others as :class:`MaskedSGD`.
    """

    gate_kind = "linear"
    meta_key = "rates"
    meta_lr_name = "rate_lr"

    def __init__(
        self,
        params: Any,
        lr: float = 0.1,
        rate_lr: float = 0.01,
        momentum: float = 0.0,
        dampening: float = 0.0,
        nesterov: bool = False,
        weight_decay: float = 0.0,
        maximize: bool = False,
        online: bool = False,
        online_decay: float = 0.0,
        differentiable: bool = False,
        nonfinite: str = "skip",
        backend: Optional[str] = None,
        foreach: Optional[bool] = None,
        fused: Optional[bool] = None,
    ) -> None:
        defaults = dict(lr=lr, rate_lr=rate_lr, momentum=momentum, dampening=dampening, nesterov=nesterov,
                        weight_decay=weight_decay, maximize=maximize, online=online, online_decay=online_decay,
                        differentiable=differentiable)
        super().__init__(params, defaults, nonfinite=nonfinite, backend=backend, foreach=foreach, fused=fused)

    def _create_meta(self, param, group):
        m = torch.full_like(param, float(group["lr"]), dtype=meta_dtype(param)).detach()
        return {self.meta_key: m.requires_grad_(True)}


class LookaheadLRSGD(RectifiedLRSGD):
    r"""La-MAML: per-element learning rates alpha with the asynchronous meta-update.

    Inner update (La-MAML Eq. 7 / Algorithm 1): ``p <- p - max(0, alpha) * d``.
    First-order rate gradient (Eq. 7): ``g(alpha) = -g_meta * sum_k g_k`` times
    ``1[alpha > 0]`` (official La-MAML; rates that reach 0 stay dead) or 1
    (``straight_through=True``, as sparse-MAML suggests).
    :meth:`meta_step` is the asynchronous meta-update of Eq. 8: first
    ``alpha <- alpha - rate_lr * g(alpha)``, then ``theta <- theta - max(0, alpha_new) * grad``
    (``update_params=True`` by default).

    Args:
        lr: initial rate alpha_0 (default 0.15, sparse-MAML Table S6, MNIST rotations).
        rate_lr: eta, the rates' learning rate (default 0.3, Table S6).
        straight_through: default False (official La-MAML).
    """

    default_update_params = True

    def __init__(
        self,
        params: Any,
        lr: float = 0.15,
        rate_lr: float = 0.3,
        rate_init: str = "constant",
        rate_init_range: Tuple[float, float] = (0.005, 0.1),
        straight_through: bool = False,
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
        super().__init__(params, lr=lr, rate_lr=rate_lr, rate_init=rate_init, rate_init_range=rate_init_range,
                         straight_through=straight_through, momentum=momentum, dampening=dampening,
                         nesterov=nesterov, weight_decay=weight_decay, maximize=maximize,
                         differentiable=differentiable, nonfinite=nonfinite, backend=backend, foreach=foreach, fused=fused)


class StochasticMaskedSGD(MaskedSGD):
    r"""sparse-MAML+: mask logits generated from low-dimensional Gaussian noise.

    For the selected parameters (convolution weights by default, supplement B.1.1) the logits
    are ``m = A (z * sigma + mu) + b`` (supplement Eq. 11) with ``z ~ N(0, I_E)`` drawn once per
    episode (every step outside episodes), ``A`` of shape (numel, E), ``b`` of the parameter's
    shape, ``mu, sigma`` of size E. Other parameters use plain :class:`MaskedSGD` logits.
    ``A, b, mu, sigma`` learn by the first-order straight-through update: the logit gradient
    of :class:`MaskedSGD` back-propagated through Eq. 11.

    Initialisation (not specified by the paper): ``b`` as MaskedSGD logits, ``mu = 0``,
    ``sigma = 1``, ``A ~ N(0, noise_scale^2 / E)`` so that ``A z`` has std ``noise_scale``
    (default: the Kaiming bound 1/sqrt(fan_in) of the logits). Memory: numel x E floats per
    selected parameter (E = 1600 in the paper: about 236 MB for a 64x64x3x3 convolution).

    Args:
        noise_dim: E (default 1600, supplement B.1.1).
        noise_scale: std of ``A z`` at initialisation (None: Kaiming bound of the parameter).
        stochastic: predicate ``(name, param) -> bool`` choosing the parameters with generated
            logits (default: 4-D tensors, i.e. convolution weights).
        Others as :class:`MaskedSGD` (``online`` is not supported).
    """

    def __init__(self, params: Any, lr: float = 0.1, mask_lr: float = 0.0075, init_sparsity: float = 0.5,
                 noise_dim: int = 1600, noise_scale: Optional[float] = None, stochastic=None,
                 momentum: float = 0.0, dampening: float = 0.0, nesterov: bool = False,
                 weight_decay: float = 0.0, maximize: bool = False, differentiable: bool = False,
                 nonfinite: str = "skip", backend: Optional[str] = None,
                 foreach: Optional[bool] = None, fused: Optional[bool] = None) -> None:
        if isinstance(noise_dim, bool) or not isinstance(noise_dim, int) or noise_dim < 1:
            raise ValueError(f"noise_dim must be a positive integer, got {noise_dim!r}")
        if noise_scale is not None:
            check_rate("noise_scale", noise_scale)
        self._noise_dim, self._noise_scale = noise_dim, noise_scale
        self._stochastic = stochastic or _is_conv_weight
        self._sampled: Dict[Tensor, Tuple[Tensor, Tensor]] = {}
        super().__init__(params, lr=lr, mask_lr=mask_lr, init_sparsity=init_sparsity, momentum=momentum,
                         dampening=dampening, nesterov=nesterov, weight_decay=weight_decay, maximize=maximize,
                         differentiable=differentiable, nonfinite=nonfinite, backend=backend, foreach=foreach, fused=fused)

    def _validate_hparams(self, group):
        super()._validate_hparams(group)
        if group.get("online"):
            raise ValueError("online=True is not supported by StochasticMaskedSGD")

    def _create_meta(self, param, group):
        base = super()._create_meta(param, group)[self.meta_key].detach()
        name = (group.get("param_names") or [None] * len(group["params"]))[
            next(i for i, q in enumerate(group["params"]) if q is param)]
        if not self._stochastic(name, param):
            return {self.meta_key: base.requires_grad_(True)}
        e = self._noise_dim
        scale = self._noise_scale if self._noise_scale is not None else 1.0 / math.sqrt(_fan_in(param))
        kw = dict(dtype=base.dtype, device=base.device)
        return {
            "A": (torch.randn(param.numel(), e, **kw) * (scale / math.sqrt(e))).requires_grad_(True),
            "b": base.requires_grad_(True),
            "mu": torch.zeros(e, **kw).requires_grad_(True),
            "sigma": torch.ones(e, **kw).requires_grad_(True),
        }

    def _generate(self, p: Tensor, z: Tensor) -> Tensor:
        """Supplement Eq. 11: ``m = A (z * sigma + mu) + b``."""
        g = self._meta[p]
        return (g["A"] @ (z * g["sigma"] + g["mu"])).reshape(p.shape) + g["b"]

    def _sample(self, p: Tensor) -> None:
        g = self._meta[p]
        z = torch.randn(g["mu"].shape, dtype=g["mu"].dtype, device=g["mu"].device)
        with torch.no_grad():
            self._sampled[p] = (z, self._generate(p, z))

    def _logits(self, p):
        if self.meta_key in self._meta[p]:
            return self._meta[p][self.meta_key]
        if p not in self._sampled:
            self._sample(p)
        return self._sampled[p][1]

    def mean_logits(self, p: Tensor) -> Tensor:
        """Noise-free logits ``A mu + b`` of parameter ``p``."""
        if self.meta_key in self._meta[p]:
            return self._meta[p][self.meta_key].detach()
        with torch.no_grad():
            return self._generate(p, torch.zeros_like(self._meta[p]["mu"]))

    def _group_metas(self, params):
        return None  # sampled logits change between steps

    def _update(self, group, params, grads, metas, record):
        if self._episode is None:
            for p in params:
                if self.meta_key not in self._meta[p]:
                    self._sample(p)
        super()._update(group, params, grads, None, record)

    def _logit_grad_buffer(self, p):
        if self.meta_key in self._meta[p]:
            return super()._logit_grad_buffer(p)
        return torch.zeros_like(self._logits(p))

    def _logit_grads_done(self, params, buffers):
        for p, dm in zip(params, buffers):
            if self.meta_key in self._meta[p]:
                continue
            with torch.enable_grad():
                self._generate(p, self._sampled[p][0]).backward(dm)

    def _episode_started(self) -> None:
        self._sampled = {}

    def sparsity(self) -> Dict[str, Any]:
        """Sparsity of the mean (noise-free) masks; see :meth:`MaskedSGD.sparsity`."""
        sampled, self._sampled = self._sampled, {p: (None, self.mean_logits(p)) for p in self._meta}
        try:
            return super().sparsity()
        finally:
            self._sampled = sampled
