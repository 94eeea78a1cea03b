"""Linear few-shot models of KFO Table 1 (Arnold et al., appendix A.1.1).

:class:`LinearNet` flattens its input and applies ``len(hidden)`` linear layers without
nonlinearity before the linear head: ``hidden=()`` is (multinomial) logistic regression (LR),
``hidden=(256, 128, 64, 64)`` the Omniglot "LR + LinNet" and ``hidden=(64, 64, 64)`` the
synthetic one. A linear network collapses to one affine map, so it has the capacity of LR; only
its (over-)parameterisation, and so its adaptation dynamics, differ.
"""
from __future__ import annotations

from typing import Sequence

from torch import Tensor, nn

__all__ = ["LinearNet"]


class LinearNet(nn.Module):
    """``head(W_h ... W_1 flatten(x))`` with no nonlinearity (see the module docstring).

    Args:
        in_features: flattened input size (784 for 28x28 Omniglot, 100 for KFO's synthetic tasks).
        num_classes: output logits.
        hidden: widths of the hidden linear layers (``()``: logistic regression).
        bias: biases in every layer.
    """

    def __init__(self, in_features: int, num_classes: int, hidden: Sequence[int] = (), bias: bool = True) -> None:
        super().__init__()
        for name, v in (("in_features", in_features), ("num_classes", num_classes), *(("hidden", h) for h in hidden)):
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ValueError(f"{name} must be a positive int, got {v!r}")
        dims = [in_features, *hidden]
        self.layers = nn.Sequential(*(nn.Linear(a, b, bias=bias) for a, b in zip(dims[:-1], dims[1:])))
        self.head = nn.Linear(dims[-1], num_classes, bias=bias)
        self.in_features, self.hidden = in_features, tuple(hidden)

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.layers(x.flatten(1)))
