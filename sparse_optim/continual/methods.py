"""The continual-learning methods of La-MAML / sparse-MAML as (learner, optimizer) pairs, by name.

One place that maps a method and its hyperparameters to the library's learners, for every
benchmark (MNIST, CIFAR-100, TinyImageNet, Split-CIFAR-10):

=================  =========================================================================
``online``         SGD on the incoming batch, no replay (La-MAML Table 1 "Online")
``er``             experience replay: SGD on incoming batch + replay sample (``eralg4``)
``cmaml``          C-MAML (La-MAML App. C, Algorithm 2): fixed inner rate ``alpha``, outer SGD ``beta``
``sync``           Sync-La-MAML (La-MAML Sec. 5.3): learned inner rates (``alpha0``, ``eta``), outer SGD ``beta``
``lamaml``         La-MAML (Algorithm 1, Eq. 7-8): learned rates, asynchronous update
``laer``           La-ER (Sec. 5.3): La-MAML's rate update, ER's weight gradient
``sparse_lamaml``  sparse-La-MAML (sparse-MAML suppl. Algorithm 1): binary masks, ``alpha0``, ``gamma_m``
``rectified``      relu(m) rates with the straight-through meta-gradient (sparse-ReLU-La-MAML)
=================  =========================================================================

Hyperparameter keys: ``lr`` (online / ER), ``alpha`` / ``beta`` (C-MAML), ``alpha0`` / ``eta`` /
``beta`` (La-MAML family), ``gamma_m`` / ``mask_init`` (sparse), ``glances``, ``replay`` (replay
batch, default 10), ``inner_batch`` (samples per inner step, default 1; the official CIFAR code's
``cifar_batches = 5`` of a 10-batch is 2), ``meta_loss`` ("all" / "last").
"""
from __future__ import annotations

from typing import Any, Dict, Optional, Tuple

import torch
import torch.nn.functional as F
from torch import nn

from .. import optim as so_optim
from .learners import LaERLearner, LaMAMLLearner, LossFn, ReplayLearner
from .replay import ReservoirBuffer

__all__ = ["METHODS", "build_learner"]

METHODS = ("online", "er", "cmaml", "sync", "lamaml", "laer", "sparse_lamaml", "rectified")
_REQUIRED = {"online": ("lr", "glances"), "er": ("lr", "glances"), "cmaml": ("alpha", "beta", "glances"),
             "sync": ("alpha0", "eta", "beta", "glances"), "lamaml": ("alpha0", "eta", "glances"),
             "laer": ("alpha0", "eta", "glances"), "sparse_lamaml": ("alpha0", "gamma_m", "glances"),
             "rectified": ("alpha0", "eta", "glances")}


def build_learner(method: str, model: nn.Module, hp: Dict[str, Any], *, memories: int, seed: int,
                  loss_fn: LossFn = F.cross_entropy, clip_grad_norm: Optional[float] = 2.0,
                  second_order: bool = False,
                  inner_grad_clamp: Optional[float] = None) -> Tuple[Any, Optional[torch.optim.Optimizer]]:
    """``(learner, meta-optimizer or None)`` for ``method`` with hyperparameters ``hp``.

    ``second_order`` differentiates through the inner updates (official ``--second_order``, the
    CIFAR / TinyImageNet runs) for the meta-learning methods; C-MAML then uses frozen rates
    ``LookaheadLRSGD(lr=alpha, rate_lr=0)`` (relu(alpha) = alpha: the same inner SGD step).
    ``inner_grad_clamp`` clamps the inner gradients element-wise (the official CIFAR code).
    """
    if method not in METHODS:
        raise ValueError(f"unknown method {method!r}; expected one of {METHODS}")
    missing = [k for k in _REQUIRED[method] if k not in hp]
    if missing:
        raise ValueError(f"{method}: hyperparameters {missing} are missing (given: {sorted(hp)})")
    buffer = ReservoirBuffer(memories, seed=seed) if method != "online" else None
    named = list(model.named_parameters())
    if method in ("online", "er"):
        opt = torch.optim.SGD(model.parameters(), lr=hp["lr"])
        return ReplayLearner(model, opt, buffer, replay_batch_size=hp.get("replay", 10), glances=hp["glances"],
                             clip_grad_norm=clip_grad_norm, loss_fn=loss_fn), None
    common = dict(glances=hp["glances"], replay_batch_size=hp.get("replay", 10),
                  inner_batch_size=hp.get("inner_batch", 1), clip_grad_norm=clip_grad_norm, loss_fn=loss_fn,
                  generator=torch.Generator().manual_seed(10_000 + seed), second_order=second_order,
                  inner_grad_clamp=inner_grad_clamp)
    meta_loss = hp.get("meta_loss", "last" if method == "laer" else "all")
    if method == "cmaml":
        outer = torch.optim.SGD(model.parameters(), lr=hp["beta"])
        if second_order:
            opt = so_optim.LookaheadLRSGD(named, lr=hp["alpha"], rate_lr=0.0)
            return LaMAMLLearner(model, opt, buffer, outer_optimizer=outer, meta_loss=meta_loss, **common), None
        common.pop("second_order")
        opt = torch.optim.SGD(model.parameters(), lr=hp["alpha"])
        return LaMAMLLearner(model, opt, buffer, outer_optimizer=outer, meta_loss=meta_loss, **common), None
    if method in ("lamaml", "sync", "laer"):
        opt = so_optim.LookaheadLRSGD(named, lr=hp["alpha0"], rate_lr=hp["eta"])
    elif method == "rectified":
        opt = so_optim.RectifiedLRSGD(named, lr=hp["alpha0"], rate_lr=hp["eta"], straight_through=True)
    else:
        opt = so_optim.MaskedSGD(named, lr=hp["alpha0"], mask_lr=hp["gamma_m"], mask_init="constant",
                                 mask_init_value=hp.get("mask_init", hp["alpha0"]))
    if method == "laer":
        return LaERLearner(model, opt, buffer, meta_loss=meta_loss, **common), opt
    outer = torch.optim.SGD(model.parameters(), lr=hp["beta"]) if method == "sync" else None
    return LaMAMLLearner(model, opt, buffer, outer_optimizer=outer, meta_loss=meta_loss, **common), opt
