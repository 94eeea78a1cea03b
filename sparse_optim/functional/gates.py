"""The gate registry: how meta-parameters turn into per-coordinate step sizes.

Every elementwise rule of the library is ``p <- p - scale * gate(xi) * d`` (see
:mod:`sparse_optim.functional.gated`). A gate kind is defined once, here, by

* ``value(m)``: the forward value, in plain tensor ops;
* ``derivative(m)``: its true derivative, or ``None`` where none is usable (the step function);
  under straight-through estimation the derivative is the identity;
* ``lr_scaled``: whether the group's ``lr`` multiplies the gate (``scale = lr``) or the gate is the
  learning rate itself (``scale = 1``);
* ``frozen(m)``: which coordinates receive no update.

The native kernels have one matching trait per kind in ``csrc/gates.h`` (same name). An unknown
kind raises ``ValueError`` on every backend.

=======  ===============  =================  =========  ===========================================
kind     value            true derivative    lr scales  paper
=======  ===============  =================  =========  ===========================================
step     1[m >= 0]        (none: ST only)    yes        sparse-MAML Eq. 4, ST gradient Eq. 5 / 10
relu     max(0, m)        1[m > 0]           no         sparse-ReLU-MAML (Sec. 3.3); La-MAML Eq. 7-8
linear   m                1                  no         Meta-SGD (Li et al. 2017, Eq. 1)
=======  ===============  =================  =========  ===========================================
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Dict, Optional, Union

import torch
from torch.autograd import Function

Tensor = torch.Tensor


@dataclass(frozen=True)
class Gate:
    """One gate kind (see the module docstring)."""

    name: str
    value: Callable[[Tensor], Tensor]
    derivative: Optional[Callable[[Tensor], Tensor]]
    lr_scaled: bool
    frozen: Callable[[Tensor], Tensor]
    identity_derivative: bool = False  # the true derivative is 1 everywhere

    def scale(self, lr):
        """The factor in front of ``gate(m) * d``: ``lr`` or 1."""
        return lr if self.lr_scaled else 1.0

    def straight_through(self, requested: bool) -> bool:
        """Whether the derivative used is the identity (always, for a gate without one)."""
        return requested or self.derivative is None or self.identity_derivative

    def grad_factor(self, meta: Tensor, straight_through: bool) -> Optional[Tensor]:
        """d gate / d meta used in meta-gradients; ``None`` means the identity."""
        if self.straight_through(straight_through):
            return None
        return self.derivative(meta)


_REGISTRY: Dict[str, Gate] = {}


def register_gate(gate_kind: Gate) -> Gate:
    """Add a gate kind (its kernels need a trait of the same name in ``csrc/gates.h``)."""
    if gate_kind.name in _REGISTRY:
        raise ValueError(f"gate kind {gate_kind.name!r} is already registered")
    _REGISTRY[gate_kind.name] = gate_kind
    return gate_kind


def gate_kinds() -> tuple:
    return tuple(_REGISTRY)


def get_gate(kind: Union[str, Gate]) -> Gate:
    """The registered gate of ``kind``; ``ValueError`` for an unknown kind."""
    if isinstance(kind, Gate):
        return kind
    try:
        return _REGISTRY[kind]
    except (KeyError, TypeError):
        raise ValueError(f"gate kind must be one of {gate_kinds()}, got {kind!r}") from None


register_gate(Gate("step", value=lambda m: (m >= 0).to(m.dtype), derivative=None, lr_scaled=True,
                   frozen=lambda m: m < 0))
register_gate(Gate("relu", value=lambda m: m.clamp_min(0), derivative=lambda m: (m > 0).to(m.dtype),
                   lr_scaled=False, frozen=lambda m: m <= 0))
register_gate(Gate("linear", value=lambda m: m, derivative=lambda m: torch.ones_like(m), lr_scaled=False,
                   frozen=lambda m: m == 0, identity_derivative=True))


class _StraightThrough(Function):
    """y = gate(m); dy/dm := 1 (straight-through)."""

    generate_vmap_rule = True

    @staticmethod
    def forward(m: Tensor, kind: str) -> Tensor:
        return _REGISTRY[kind].value(m)

    @staticmethod
    def setup_context(ctx, inputs, output) -> None:
        pass

    @staticmethod
    def backward(ctx, grad: Tensor):
        return grad, None


def gate(meta: Tensor, kind: Union[str, Gate], straight_through: bool = True) -> Tensor:
    """Per-coordinate step size ``gate(meta)``, differentiable (straight-through if asked, and
    always for a gate without a usable derivative)."""
    g = get_gate(kind)
    if g.identity_derivative or not g.straight_through(straight_through):
        return g.value(meta)
    return _StraightThrough.apply(meta, g.name)


def gate_derivative(meta: Tensor, kind: Union[str, Gate], straight_through: bool = True) -> Optional[Tensor]:
    """d gate / d meta, elementwise; ``None`` means the identity (straight-through)."""
    return get_gate(kind).grad_factor(meta, straight_through)


def frozen(meta: Tensor, kind: Union[str, Gate]) -> Tensor:
    """Boolean mask of coordinates whose gate is zero (frozen learning)."""
    return get_gate(kind).frozen(meta)
