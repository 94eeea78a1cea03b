"""Gradient alignment between tasks (La-MAML Sec. 5.2 Table 4, App. B Figure 4).

La-MAML's objective rewards aligned task gradients; the paper measures it as the average
pairwise similarity of the tasks' loss gradients at the current weights. Here: for every task
``j`` the gradient ``g_j = grad L_j(theta)`` of its loss on the given data, and the mean of the
cosine similarities ``<g_i, g_j> / (|g_i| |g_j|)`` over pairs ``i < j`` (values in ``[-1, 1]``).
"""
from __future__ import annotations

from typing import Callable, Dict, List, Sequence, Tuple

import torch
from torch import Tensor, nn

__all__ = ["task_gradient", "gradient_alignment"]


def task_gradient(model: nn.Module, x: Tensor, y: Tensor, loss: Callable[[Tensor, Tensor], Tensor]) -> Tensor:
    """``grad L(theta)`` of ``loss(model(x), y)`` as one flat vector (the model is left unchanged)."""
    params = [p for p in model.parameters() if p.requires_grad]
    was_training = model.training
    model.eval()
    try:
        with torch.enable_grad():
            grads = torch.autograd.grad(loss(model(x), y), params, allow_unused=True)
    finally:
        model.train(was_training)
    return torch.cat([(torch.zeros_like(p) if g is None else g).flatten() for g, p in zip(grads, params)])


def gradient_alignment(grads: Sequence[Tensor]) -> Tuple[float, List[List[float]]]:
    """(mean pairwise cosine similarity over ``i < j``, the full cosine matrix) of task gradients."""
    if len(grads) < 2:
        raise ValueError(f"gradient alignment needs at least two task gradients, got {len(grads)}")
    g = torch.stack([t.detach().double() for t in grads])
    norms = g.norm(dim=1).clamp_min(torch.finfo(torch.float64).tiny)
    cos = (g @ g.T) / (norms[:, None] * norms[None, :])
    i, j = torch.triu_indices(len(grads), len(grads), offset=1)
    return float(cos[i, j].mean()), cos.tolist()
