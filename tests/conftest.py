"""Shared test configuration.

* The registry of optimizers under test (:data:`OPTIMIZERS`, one :class:`OptimizerInfo` per
  class, in the style of torch's ``OptimizerInfo``) with the constructor variants the suite runs
  and the selection helpers :func:`infos` / :func:`cases` that test modules parametrize over, so a
  new optimizer or gate is added here once.
* The test's own gate math (:func:`gate_value`, :func:`gate_derivative`, :func:`frozen`,
  :func:`autograd_gate`), written independently of :mod:`sparse_optim.functional.gates`.
* The ``backend`` fixture: the test body runs under ``sparse_optim.ops.use_backend(...)`` once
  on the reference ops and once on the native kernels (skipped where they are not available).
* Which test modules exercise the ops (``-m ops``). CI runs the whole suite on the native
  kernels, then only the ``ops`` tests again on the pure-PyTorch reference ops
  (``SPARSE_OPTIM_BACKEND=reference pytest -m ops``): data loaders, task streams, metrics,
  models, distributed recipes, example smoke tests and the CUDA build check do not depend on
  the backend.

Test modules import the registry with ``from conftest import ...`` (``tests/`` is on
``sys.path`` under pytest's default import mode).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Dict, Iterable, List, Mapping, Optional, Tuple

import pytest
import torch

import sparse_optim as so
from sparse_optim import functional as F
from sparse_optim import ops

# --------------------------------------------------------------------------- the ops marker
NOT_OPS = {
    "test_continual_metrics", "test_continual_replay", "test_continual_streams", "test_continual_learners",
    "test_build", "test_cuda_build", "test_cuda_kernels", "test_triton_ops", "test_data_fewshot", "test_data_mnist", "test_distributed", "test_examples_continual",
    "test_examples_fewshot", "test_models", "test_registry", "test_continual_ablations", "test_continual_vision",
    "test_continual_gem_files", "test_continual_osaka",
}


def pytest_collection_modifyitems(config, items):
    for item in items:
        module = item.module.__name__.rsplit(".", 1)[-1] if item.module is not None else ""
        if module.startswith("test_") and module not in NOT_OPS:
            item.add_marker(pytest.mark.ops)


# ------------------------------------------------------------------------ the backend fixture
BACKEND_PARAMS = [pytest.param("reference", id="reference"), pytest.param("auto", id="native")]


def native_available() -> bool:
    from sparse_optim.ops import native

    return native.available()


@pytest.fixture(params=BACKEND_PARAMS)
def backend(request):
    """Runs the test under ``ops.use_backend("reference")`` and ``ops.use_backend("auto")``
    (the native kernels; skipped when they are not available). Yields the name."""
    if request.param == "auto" and not native_available():
        pytest.skip("native extension not available")
    with ops.use_backend(request.param):
        yield request.param


# --------------------------------------------------------------------------- own gate math
GATE_KINDS = ("step", "relu", "linear")
LR_SCALED = {"step": True, "relu": False, "linear": False}


def gate_value(kind: str, m: torch.Tensor) -> torch.Tensor:
    """gate(m): 1[m >= 0] (sparse-MAML Eq. 4), max(0, m) (sparse-ReLU-MAML, La-MAML), m (Meta-SGD)."""
    if kind == "step":
        return (m >= 0).to(m.dtype)
    if kind == "relu":
        return torch.where(m > 0, m, torch.zeros_like(m))
    if kind == "linear":
        return m.clone()
    raise AssertionError(f"no test math for gate kind {kind!r}")


def step_size(kind: str, m: torch.Tensor, lr: float) -> torch.Tensor:
    """The per-coordinate step ``scale * gate(m)``, ``scale = lr`` for the step gate, else 1."""
    return (lr if LR_SCALED[kind] else 1.0) * gate_value(kind, m)


def gate_derivative(kind: str, m: torch.Tensor, straight_through: bool) -> torch.Tensor:
    """d gate / d m as used by the first-order meta-gradient (1 under straight-through)."""
    if kind == "relu" and not straight_through:
        return (m > 0).to(m.dtype)
    if kind in GATE_KINDS:
        return torch.ones_like(m)
    raise AssertionError(f"no test math for gate kind {kind!r}")


def frozen(kind: str, m: torch.Tensor) -> torch.Tensor:
    """Coordinates whose gate is zero (what ``sparsity()`` counts)."""
    return {"step": lambda: m < 0, "relu": lambda: m <= 0, "linear": lambda: m == 0}[kind]()


class _STStep(torch.autograd.Function):
    @staticmethod
    def forward(ctx, m):
        return (m >= 0).to(m.dtype)

    @staticmethod
    def backward(ctx, g):
        return g


class _STReLU(torch.autograd.Function):
    @staticmethod
    def forward(ctx, m):
        return torch.where(m > 0, m, torch.zeros_like(m))

    @staticmethod
    def backward(ctx, g):
        return g


def autograd_gate(kind: str, straight_through: bool) -> Callable[[torch.Tensor], torch.Tensor]:
    """The gate as an autograd function of m, straight-through where asked (the test's own)."""
    if kind == "step":
        return _STStep.apply
    if kind == "relu":
        return _STReLU.apply if straight_through else torch.relu
    if kind == "linear":
        return lambda m: m
    raise AssertionError(f"no test math for gate kind {kind!r}")


# ------------------------------------------------------------------------------ the registry
@dataclass(frozen=True)
class Variant:
    """Constructor keyword arguments under a short name."""

    desc: str
    kwargs: Mapping[str, Any] = field(default_factory=dict)

    @property
    def online(self) -> bool:
        """Meta-parameters adapt inside plain training (online masks / rates, adapted factors)."""
        return bool(self.kwargs.get("online") or self.kwargs.get("adapt_factors"))

    @property
    def theta_explicit(self) -> bool:
        """The direction depends on theta itself (weight decay), not only through gradients."""
        return bool(self.kwargs.get("weight_decay"))


@dataclass(frozen=True)
class OptimizerInfo:
    """One optimizer class under test and what the suite needs to know about it."""

    name: str
    cls: type
    family: str  # "gated" (p - scale * gate(xi) * d) or "kronecker"
    meta_lr: str  # name of the meta learning rate (meta_step)
    meta_keys: Tuple[str, ...]  # the meta-parameters' name suffixes per parameter
    gate: Optional[str] = None  # gate kind (gated family)
    meta_key: Optional[str] = None  # key of the per-element meta tensor (gated family)
    straight_through: bool = True  # the class's default
    has_straight_through_flag: bool = False  # takes straight_through=
    online_kwargs: Optional[Mapping[str, Any]] = None  # kwargs for adaptation in plain training
    stochastic: bool = False  # samples noise in step()
    update_params_default: bool = False  # meta_step()'s default update_params
    rates_start_at_lr: bool = False  # constant meta init equal to the group's lr
    base: Mapping[str, Any] = field(default_factory=dict)  # kwargs of every construction here
    open_gates: Mapping[str, Any] = field(default_factory=dict)  # kwargs: all gates open, step lr * d
    rate_init: bool = False  # takes rate_init= / rate_init_range=
    functional: Optional[Callable] = None  # the per-class functional rule
    variants: Tuple[Variant, ...] = ()

    def __repr__(self) -> str:
        return f"OptimizerInfo({self.name})"

    @property
    def id(self) -> str:
        return self.name

    @property
    def gated(self) -> bool:
        return self.family == "gated"

    @property
    def elementwise(self) -> bool:
        """Gated with one meta tensor of the parameter's shape (not sparse-MAML+'s generator)."""
        return self.gated and not self.stochastic

    @property
    def supports_online(self) -> bool:
        return self.online_kwargs is not None

    @property
    def lr_scaled(self) -> bool:
        return self.gated and LR_SCALED[self.gate]

    def variant(self, desc: str) -> Variant:
        for v in self.variants:
            if v.desc == desc:
                return v
        raise KeyError(f"{self.name} has no variant {desc!r}")

    def kwargs(self, variant: Optional[Variant] = None, *, meta_lr: Optional[float] = None, open_gates: bool = False,
               **overrides) -> Dict[str, Any]:
        kw = dict(self.base)
        if open_gates:
            kw.update(self.open_gates)
        if variant is not None:
            kw.update(variant.kwargs)
        if meta_lr is not None:
            kw[self.meta_lr] = meta_lr
        kw.update(overrides)
        return kw

    def make(self, params, variant: Optional[Variant] = None, *, meta_lr: Optional[float] = None,
             open_gates: bool = False, **overrides):
        """Construct on ``params``; ``meta_lr`` goes to the class's own meta learning rate name,
        ``open_gates=True`` starts with every step equal to ``lr * d`` (gated family)."""
        return self.cls(params, **self.kwargs(variant, meta_lr=meta_lr, open_gates=open_gates, **overrides))

    def rule(self, params, grads, metas, *, lr: float, straight_through: Optional[bool] = None):
        """The class's functional rule (:mod:`sparse_optim.functional`), out of place."""
        st = self.straight_through if straight_through is None else straight_through
        if self.gate == "step":
            return self.functional(params, grads, metas, lr=lr)
        if self.gate == "relu":
            return self.functional(params, grads, metas, straight_through=st)
        return self.functional(params, grads, metas)


@dataclass(frozen=True)
class Case:
    """An optimizer with one of its variants."""

    info: OptimizerInfo
    variant: Variant

    def __repr__(self) -> str:
        return f"Case({self.id})"

    @property
    def id(self) -> str:
        return f"{self.info.name}-{self.variant.desc}"

    @property
    def kwargs(self) -> Mapping[str, Any]:
        return self.variant.kwargs

    @property
    def straight_through(self) -> bool:
        return self.variant.kwargs.get("straight_through", self.info.straight_through)

    @property
    def online(self) -> bool:
        return self.variant.online

    def make(self, params, *, meta_lr: Optional[float] = None, open_gates: bool = False, **overrides):
        return self.info.make(params, self.variant, meta_lr=meta_lr, open_gates=open_gates, **overrides)


def _sgd_variants(*extra: Variant) -> Tuple[Variant, ...]:
    return (
        Variant("default"),
        Variant("momentum", dict(momentum=0.5)),
        Variant("nesterov", dict(momentum=0.9, nesterov=True)),
        Variant("dampening-wd", dict(momentum=0.5, dampening=0.1, weight_decay=0.01)),
        Variant("wd-maximize", dict(weight_decay=0.01, maximize=True)),
        *extra,
    )


ONLINE = dict(online=True)

MASKED = OptimizerInfo(
    "masked", so.MaskedSGD, "gated", "mask_lr", ("mask_logits",), gate="step", meta_key="mask_logits",
    online_kwargs=ONLINE, open_gates=dict(mask_init="constant", mask_init_value=0.0), functional=F.masked_sgd,
    variants=_sgd_variants(Variant("online", dict(online=True, online_decay=0.5, momentum=0.9))),
)
STOCHASTIC = OptimizerInfo(
    "stochastic", so.StochasticMaskedSGD, "gated", "mask_lr", ("A", "b", "mu", "sigma", "mask_logits"), gate="step",
    meta_key="mask_logits", stochastic=True, base=dict(noise_dim=3), functional=F.masked_sgd,
    variants=_sgd_variants(),
)
RECTIFIED = OptimizerInfo(
    "rectified", so.RectifiedLRSGD, "gated", "rate_lr", ("rates",), gate="relu", meta_key="rates",
    has_straight_through_flag=True, online_kwargs=ONLINE, rates_start_at_lr=True, rate_init=True,
    functional=F.rectified_sgd,
    variants=_sgd_variants(
        Variant("true-relu", dict(straight_through=False)),
        Variant("uniform-init", dict(rate_init="uniform", momentum=0.3)),
        Variant("online", dict(online=True, online_decay=0.5, rate_init="uniform", momentum=0.5)),
        Variant("online-true-relu", dict(online=True, straight_through=False)),
    ),
)
LOOKAHEAD = OptimizerInfo(
    "lookahead", so.LookaheadLRSGD, "gated", "rate_lr", ("rates",), gate="relu", meta_key="rates",
    straight_through=False, has_straight_through_flag=True, update_params_default=True, rates_start_at_lr=True,
    rate_init=True, functional=F.lookahead_sgd,
    variants=_sgd_variants(
        Variant("straight-through", dict(straight_through=True)),
        Variant("uniform-init", dict(rate_init="uniform", momentum=0.3)),
    ),
)
META_SGD = OptimizerInfo(
    "meta_sgd", so.MetaSGD, "gated", "rate_lr", ("rates",), gate="linear", meta_key="rates",
    online_kwargs=ONLINE, rates_start_at_lr=True, functional=F.meta_sgd,
    variants=_sgd_variants(Variant("online", dict(online=True, online_decay=0.5, momentum=0.5))),
)
KRONECKER = OptimizerInfo(
    "kronecker", so.KroneckerSGD, "kronecker", "factor_lr", ("L0", "R0"), online_kwargs=dict(adapt_factors=True),
    functional=F.kronecker_sgd,
    variants=(
        Variant("default"),
        Variant("momentum", dict(momentum=0.5)),
        Variant("depth2-normalize", dict(depth=2, normalize=True)),
        Variant("bias-nesterov", dict(bias=True, momentum=0.9, nesterov=True)),
        Variant("cholesky", dict(variant="cholesky", rank=2)),
        Variant("wd-maximize", dict(weight_decay=0.01, maximize=True)),
        Variant("adapt", dict(adapt_factors=True, depth=2, momentum=0.9)),
    ),
)

OPTIMIZERS: Tuple[OptimizerInfo, ...] = (MASKED, STOCHASTIC, RECTIFIED, LOOKAHEAD, META_SGD, KRONECKER)
BY_NAME: Dict[str, OptimizerInfo] = {info.name: info for info in OPTIMIZERS}


def _select(family, elementwise, online, stochastic, names, where) -> List[OptimizerInfo]:
    chosen = []
    for info in OPTIMIZERS:
        if names is not None and info.name not in names:
            continue
        if family is not None and info.family != family:
            continue
        if elementwise is not None and info.elementwise != elementwise:
            continue
        if online is not None and info.supports_online != online:
            continue
        if stochastic is not None and info.stochastic != stochastic:
            continue
        if where is not None and not where(info):
            continue
        chosen.append(info)
    return chosen


def infos(*, family: Optional[str] = None, elementwise: Optional[bool] = None, online: Optional[bool] = None,
          stochastic: Optional[bool] = None, names: Optional[Iterable[str]] = None,
          where: Optional[Callable[[OptimizerInfo], bool]] = None) -> list:
    """``pytest.param(info, id=name)`` for the optimizers matching every given filter:
    ``family`` ('gated' / 'kronecker'), ``elementwise`` (gated with a per-element meta tensor),
    ``online`` (supports adaptation in plain training), ``stochastic``, ``names``, ``where``."""
    names = None if names is None else set(names)
    return [pytest.param(i, id=i.id) for i in _select(family, elementwise, online, stochastic, names, where)]


def case_list(*, family: Optional[str] = None, elementwise: Optional[bool] = None, online: Optional[bool] = None,
              stochastic: Optional[bool] = None, names: Optional[Iterable[str]] = None,
              where: Optional[Callable[[OptimizerInfo], bool]] = None,
              variants: Optional[Callable[[Variant], bool]] = None, descs: Optional[Iterable[str]] = None) -> List[Case]:
    """The :class:`Case` s (optimizer, variant) of the selected optimizers (filters as
    :func:`infos`; ``online`` here selects variants that adapt online), filtered by ``variants``
    (a predicate) and ``descs`` (variant names)."""
    names = None if names is None else set(names)
    descs = None if descs is None else set(descs)
    out = []
    for info in _select(family, elementwise, None, stochastic, names, where):
        for v in info.variants:
            if descs is not None and v.desc not in descs:
                continue
            if variants is not None and not variants(v):
                continue
            if online is not None and v.online != online:
                continue
            out.append(Case(info, v))
    return out


def cases(**filters) -> list:
    """``pytest.param(Case, id='name-variant')`` for :func:`case_list` ``(**filters)``."""
    return [pytest.param(c, id=c.id) for c in case_list(**filters)]

