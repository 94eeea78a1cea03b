"""First-order episodes: the inner loop of one task, with theta snapshotted and restored.

Used by every :class:`~sparse_optim.optim.base.MetaOptimizer` (``opt.episode()``), and on its
own with any optimizer -- e.g. first-order MAML / C-MAML with ``torch.optim.SGD``::

    with first_order_episode(model.parameters(), sgd) as ep:
        for _ in range(K):
            sgd.zero_grad(); inner_loss().backward(); sgd.step()
        sgd.zero_grad(); outer_loss().backward()
        ep.record_outer_gradients()       # first-order theta gradient (sparse-MAML Eq. 9)
    # theta restored; p.grad += the recorded outer gradients
"""
from __future__ import annotations

from contextlib import contextmanager
from typing import Dict, Iterable, Iterator, List, Optional

import torch

Tensor = torch.Tensor


class Episode:
    """Snapshot of parameters, their gradients and momentum buffers (``state``: an optimizer's
    ``state`` mapping, or None). :meth:`restore` puts them back and hands the accumulated outer
    gradients back in ``p.grad`` (added to the gradients stashed at the start)."""

    def __init__(self, params: Iterable[Tensor], state: Optional[Dict] = None,
                 buffers: Optional[torch.nn.Module] = None) -> None:
        if buffers is not None and not isinstance(buffers, torch.nn.Module):
            raise TypeError(f"buffers must be a torch.nn.Module (its buffers are restored), got {type(buffers).__name__}")
        self.buffers = [] if buffers is None else [b for b in buffers.buffers() if b is not None]
        self.buffer_values = [b.detach().clone() for b in self.buffers]
        self.params: List[Tensor] = list(params)
        self.state = state
        self.steps = 0
        self.theta = [p.detach().clone() for p in self.params]
        self.stashed_grads = [p.grad for p in self.params]
        self.stashed_momentum: Dict[int, Tensor] = {}
        if state is not None:
            for i, p in enumerate(self.params):
                if p in state and "momentum_buffer" in state[p]:
                    self.stashed_momentum[i] = state[p].pop("momentum_buffer")
        self.outer_grads: Dict[int, Tensor] = {}
        for p in self.params:
            p.grad = None

    def record_outer_gradients(self) -> None:
        """Add every parameter's current ``.grad`` (the outer gradient) to this episode's sum."""
        for i, p in enumerate(self.params):
            g = p.grad
            if g is not None:
                acc = self.outer_grads.get(i)
                self.outer_grads[i] = g.detach().clone() if acc is None else acc.add_(g)

    def restore(self) -> None:
        with torch.no_grad():
            for b, value in zip(self.buffers, self.buffer_values):
                b.copy_(value)
            for i, p in enumerate(self.params):
                p.copy_(self.theta[i])
                stashed, outer = self.stashed_grads[i], self.outer_grads.get(i)
                if outer is None:
                    p.grad = stashed
                else:
                    p.grad = outer.to(p.dtype) if stashed is None else stashed.add_(outer.to(stashed.dtype))
                if self.state is not None:
                    if p in self.state:
                        self.state[p].pop("momentum_buffer", None)
                    if i in self.stashed_momentum:
                        self.state[p]["momentum_buffer"] = self.stashed_momentum[i]


@contextmanager
def first_order_episode(params: Iterable[Tensor], optimizer: Optional[torch.optim.Optimizer] = None,
                        buffers: Optional[torch.nn.Module] = None) -> Iterator[Episode]:
    """An :class:`Episode` over ``params`` (momentum buffers of ``optimizer`` are stashed too),
    restored on exit, also when the body raises; ``buffers=model`` restores its buffers too."""
    params = list(params)
    if optimizer is not None:
        owned = {id(p) for g in optimizer.param_groups for p in g["params"]}
        params = params or [p for g in optimizer.param_groups for p in g["params"]]
        if any(id(p) not in owned for p in params):
            raise ValueError("first_order_episode: every parameter must belong to the optimizer")
    ep = Episode(params, None if optimizer is None else optimizer.state, buffers=buffers)
    try:
        yield ep
    finally:
        ep.restore()
