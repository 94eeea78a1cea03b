"""The SGD direction that the gates scale (torch.optim.SGD semantics)."""
from __future__ import annotations

from typing import Optional, Tuple

import torch


def sgd_direction(
    grad: torch.Tensor,
    param: torch.Tensor,
    momentum_buffer: Optional[torch.Tensor],
    *,
    weight_decay: float = 0.0,
    momentum: float = 0.0,
    dampening: float = 0.0,
    nesterov: bool = False,
    maximize: bool = False,
) -> Tuple[torch.Tensor, Optional[torch.Tensor]]:
    """Direction d and new momentum buffer, exactly as ``torch.optim.SGD`` computes them:

    d = (-g if maximize else g) + weight_decay * p;
    b = d (first step) or momentum * b + (1 - dampening) * d;
    d = d + momentum * b (nesterov) or b.

    The update is then ``p - u(d; xi)``: the masks, rates and factors act on the final direction.
    Out of place and differentiable.
    """
    d = -grad if maximize else grad
    if weight_decay != 0:
        d = d + weight_decay * param
    if momentum == 0:
        return d, None
    if momentum_buffer is None:
        buf = d.clone()
    else:
        buf = momentum * momentum_buffer + (1 - dampening) * d
    d = d + momentum * buf if nesterov else buf
    return d, buf
