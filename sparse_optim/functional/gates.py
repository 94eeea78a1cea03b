"""Gates that turn meta-parameters into per-coordinate step sizes, with their derivatives.

* ``step``  : 1[m >= 0]   (sparse-MAML Eq. 4); derivative by straight-through estimation
  (identity), supplement Eq. 10 derivation.
* ``relu``  : max(0, m)   (sparse-ReLU-MAML, La-MAML Eq. 7-8); derivative either the
  straight-through identity (sparse-MAML Sec. 3.3) or the true one, 1[m > 0] (La-MAML).
"""
from __future__ import annotations

import torch
from torch.autograd import Function

GATES = ("step", "relu")


class _StraightThroughStep(Function):
    """y = 1[m >= 0]; dy/dm := 1 (straight-through)."""

    generate_vmap_rule = True

    @staticmethod
    def forward(m: torch.Tensor) -> torch.Tensor:
        return (m >= 0).to(m.dtype)

    @staticmethod
    def setup_context(ctx, inputs, output) -> None:
        pass

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        return grad


class _StraightThroughReLU(Function):
    """y = max(0, m); dy/dm := 1 (straight-through)."""

    generate_vmap_rule = True

    @staticmethod
    def forward(m: torch.Tensor) -> torch.Tensor:
        return m.clamp_min(0)

    @staticmethod
    def setup_context(ctx, inputs, output) -> None:
        pass

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        return grad


def gate(meta: torch.Tensor, kind: str, straight_through: bool = True) -> torch.Tensor:
    """Per-coordinate step size from meta-parameters (differentiable).

    ``kind='step'`` is always straight-through: its true derivative is zero almost everywhere.
    """
    if kind == "step":
        return _StraightThroughStep.apply(meta)
    if kind == "relu":
        return _StraightThroughReLU.apply(meta) if straight_through else torch.relu(meta)
    raise ValueError(f"gate kind must be one of {GATES}, got {kind!r}")


def gate_derivative(meta: torch.Tensor, kind: str, straight_through: bool = True) -> torch.Tensor | None:
    """d gate / d meta, elementwise; ``None`` means the identity (straight-through)."""
    if kind == "step" or straight_through:
        return None
    return (meta > 0).to(meta.dtype)


def frozen(meta: torch.Tensor, kind: str) -> torch.Tensor:
    """Boolean mask of coordinates whose gate is zero (frozen learning)."""
    return meta < 0 if kind == "step" else meta <= 0
