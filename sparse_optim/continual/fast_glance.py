"""One La-MAML glance without the episode plumbing: the fast path of :class:`LaMAMLLearner`.

The episode path (:meth:`LaMAMLLearner._episode_glance`) goes through the optimizer's public
API for every inner step: ``zero_grad``, ``backward`` into ``.grad``, ``step()``, a second
``zero_grad`` / ``backward`` for the meta-loss and ``meta_backward()`` (validation, the
non-finite check, the trace bookkeeping). Without momentum or weight decay the same glance is:

* per inner step ``j``: ``g_j = autograd.grad(l(phi_j, b_j))`` and one call of the optimizer's
  fused update kernel, ``phi_{j+1} = phi_j - scale * gate(xi) * g_j`` with ``S += g_j``
  (La-MAML Eq. 7, sparse-MAML Eq. 4);
* per meta-loss term ``i``: ``g_meta_i = autograd.grad(L(phi_{i+1}, b_m) / k)``, added to theta's
  first-order gradient, and the fused meta-gradient kernel adds
  ``-scale * g_meta_i * S_i * gate'(xi)`` (La-MAML Eq. 7-8 first order, sparse-MAML Eq. 5) --
  what ``meta_backward()`` adds;
* one non-finite check for the whole glance (the learner's).

The kernels and the order of every floating-point operation are the episode path's, so the
results are the same bit for bit (tested). Batching the k meta-losses into one call
(``torch.func.vmap`` over the stacked ``phi_i``) was measured slower on CPU: batched matmuls of
these shapes and the k-fold elementwise passes cost more than k plain ones.
"""
from __future__ import annotations

from typing import Callable, List, Optional, Tuple

import torch
from torch import Tensor, nn

from .. import functional as F

TaskLoss = Callable[[Tensor, Tensor, Tensor], Tensor]  # loss(logits, y, task_ids)


def _plain_sgd(opt) -> bool:
    return type(opt) is torch.optim.SGD


def unsupported(model: nn.Module, opt, params: List[Tensor]) -> Optional[str]:
    """Why the fast glance cannot compute what the episode path does, or None."""
    from ..optim.gated import GatedSGD

    if not all(p.requires_grad for p in params):
        return "some of the optimizer's parameters do not require gradients"
    if isinstance(opt, GatedSGD):
        if any(opt._group_metas(list(g["params"])) is None for g in opt.param_groups):
            return f"{type(opt).__name__} generates its gates per step (no fixed per-element meta-parameters)"
        keys = ("momentum", "weight_decay")
        for g in opt.param_groups:
            if any(g.get(k, 0) for k in keys) or g.get("maximize") or g.get("differentiable") or g.get("online"):
                return "momentum, weight decay, maximize, differentiable or online groups change the inner update"
        return None
    if _plain_sgd(opt):
        for g in opt.param_groups:
            if g["momentum"] or g["weight_decay"] or g["maximize"] or isinstance(g["lr"], Tensor):
                return "torch.optim.SGD with momentum, weight decay, maximize or a Tensor lr"
        return None
    return f"{type(opt).__name__} is neither a gated sparse_optim optimizer nor torch.optim.SGD"


def _zeros_for_unused(grads, params) -> List[Tensor]:
    """A parameter the loss does not use: zero gradient (the episode path's None step is a no-op too)."""
    return [torch.zeros_like(p) if g is None else g for g, p in zip(grads, params)]


class FastGlance:
    """The fast glance of one (model, inner optimizer) pair; see the module docstring."""

    def __init__(self, model: nn.Module, opt, loss_fn: TaskLoss) -> None:
        self.model, self.opt, self.loss_fn = model, opt, loss_fn
        self.gated = not _plain_sgd(opt)

    # ------------------------------------------------------------------- the glance
    def __call__(self, chunks: List[Tuple[Tensor, Tensor, Tensor]], meta_batch: Tuple[Tensor, Tensor, Tensor],
                 keep_all: bool, clamp: Optional[float] = None) -> Tuple[List[Tensor], List[Tuple[Tensor, Tensor]], float]:
        """Runs the inner steps on ``(x, y, task_ids)`` chunks (the module's parameters end at
        ``phi_k``); returns theta's first-order gradients, (meta-parameter, gradient) pairs (none for
        plain SGD) and the meta-loss on ``meta_batch``."""
        mx, my, mt = meta_batch
        opt, gated, model, loss_fn = self.opt, self.gated, self.model, self.loss_fn
        params = [p for g in opt.param_groups for p in g["params"]]  # read per glance: groups may change
        k = len(chunks)
        weight = 1.0 / k if keep_all else 1.0
        metas = opt._metas(params) if gated else []
        # S_i in the meta-parameters' precision, as the optimizer's traces
        sums = [torch.zeros_like(m) for m in metas] if gated else [torch.zeros_like(p) for p in params]
        theta_grads = [torch.zeros_like(p) for p in params]
        meta_grads = [torch.zeros_like(m) for m in metas]
        groups = []
        start = 0
        for g_opt in opt.param_groups:
            size = len(g_opt["params"])
            groups.append((g_opt, slice(start, start + size)))
            start += size
        total = 0.0
        for i, (x, y, t) in enumerate(chunks):
            with torch.enable_grad():
                grads = _zeros_for_unused(torch.autograd.grad(loss_fn(model(x), y, t), params, allow_unused=True),
                                          params)
            if clamp is not None:   # element-wise, as the episode path's inner gradients
                torch._foreach_clamp_min_(grads, -clamp)
                torch._foreach_clamp_max_(grads, clamp)
            with torch.no_grad():
                for g_opt, s in groups:
                    if gated:
                        F.gated_sgd_(params[s], list(grads[s]), metas[s], [None] * len(params[s]), sums[s],
                                     gate=opt.gate, lr=g_opt["lr"], backend=opt.backend)
                    else:
                        torch._foreach_add_(params[s], grads[s], alpha=-g_opt["lr"])
                        torch._foreach_add_(sums[s], grads[s])
            if not (keep_all or i == k - 1):
                continue
            with torch.enable_grad():
                meta_loss = loss_fn(model(mx), my, mt) * weight
                outer = _zeros_for_unused(torch.autograd.grad(meta_loss, params, allow_unused=True), params)
            total += float(meta_loss.detach())
            with torch.no_grad():
                torch._foreach_add_(theta_grads, outer)
                if gated:  # the meta_backward() term: -scale * g_meta_i * S_i * gate'(xi)
                    for g_opt, s in groups:
                        F.gated_meta_grad_(meta_grads[s], list(outer[s]), sums[s], metas[s], gate=opt.gate,
                                           lr=g_opt["lr"], straight_through=opt._straight_through(g_opt),
                                           backend=opt.backend)
        return theta_grads, list(zip(metas, meta_grads)), total
