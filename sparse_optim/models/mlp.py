"""Fully connected network of the La-MAML / sparse-La-MAML MNIST experiments."""

from __future__ import annotations

from typing import Sequence

import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["MLP", "count_parameters"]


class MLP(nn.Module):
    """ReLU multilayer perceptron; inputs are flattened from dim 1.

    The default ``sizes=(784, 100, 100, 10)`` is the La-MAML MNIST network
    (sparse-MAML supplement: 89,610 parameters, weights/biases
    ``[(78400, 100), (10000, 100), (1000, 10)]``).  The output layer returns
    logits (softmax lives in the cross-entropy loss).  Layers are
    ``self.layers[i]`` (``nn.Linear``), so parameters are named
    ``layers.{i}.weight`` / ``layers.{i}.bias``.
    """

    def __init__(self, sizes: Sequence[int] = (784, 100, 100, 10), bias: bool = True) -> None:
        super().__init__()
        sizes = tuple(sizes)
        if len(sizes) < 2:
            raise ValueError(f"sizes must list at least an input and an output size, got {sizes}")
        for s in sizes:
            if isinstance(s, bool) or not isinstance(s, int) or s < 1:
                raise ValueError(f"sizes must be positive ints, got {sizes}")
        self.sizes = sizes
        self.layers = nn.ModuleList(nn.Linear(a, b, bias=bias) for a, b in zip(sizes[:-1], sizes[1:]))

    def forward(self, x: Tensor) -> Tensor:
        x = x.flatten(1) if x.dim() > 2 else x
        if x.shape[-1] != self.sizes[0]:
            raise ValueError(f"x must have {self.sizes[0]} features after flattening, got shape {tuple(x.shape)}")
        for i, layer in enumerate(self.layers):
            x = layer(x)
            if i < len(self.layers) - 1:
                x = F.relu(x)
        return x


def count_parameters(model: nn.Module, trainable_only: bool = False) -> int:
    """Number of scalar parameters of ``model`` (only ``requires_grad`` ones if
    ``trainable_only``); shared parameters are counted once."""
    if not isinstance(model, nn.Module):
        raise ValueError(f"model must be an nn.Module, got {type(model).__name__}")
    return sum(p.numel() for p in model.parameters() if p.requires_grad or not trainable_only)
