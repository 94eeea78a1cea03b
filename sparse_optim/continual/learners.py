"""Online continual learners: online SGD / experience replay and the La-MAML family.

Both learners wrap a model, an optimizer and (optionally) a :class:`ReservoirBuffer`, and
expose ``observe(x, y, task_id)``: one call per incoming mini-batch of the single-pass stream
(GEM / MER / La-MAML protocol, batch size 10). Neither needs task boundaries.

* :class:`ReplayLearner` -- *online* SGD (no buffer) and *experience replay* (ER, Chaudhry et
  al. 2019 / Rolnick et al. 2019; the ``eralg4`` baseline of the La-MAML code): every glance
  takes one SGD step on the incoming batch joined with a replay sample, the gradient clipped
  to norm 2.0 (La-MAML appendix F); the buffer is updated by reservoir sampling afterwards.

* :class:`LaMAMLLearner` -- first-order La-MAML (La-MAML Algorithm 1, Eq. 7-8), C-MAML
  (La-MAML appendix C, Algorithm 2), sparse-La-MAML (sparse-MAML supplement Algorithm 1) and
  the straight-through rectified variant, depending on the (meta-)optimizer and
  ``outer_optimizer`` given:

  ====================  ==========================================  ===================
  method                inner optimizer                             theta update
  ====================  ==========================================  ===================
  La-MAML               ``LookaheadLRSGD(lr=alpha_0, rate_lr=eta)``  Eq. 8 (meta_step)
  sparse-La-MAML        ``MaskedSGD(lr=alpha_0, mask_lr=gamma_m)``   ``alpha_0 1[m>=0] g``
  rectified (ST)        ``RectifiedLRSGD(lr=alpha_0, rate_lr=eta)``  ``relu(m_new) g``
  C-MAML                ``torch.optim.SGD(lr=alpha)``                ``SGD(beta)``
  ====================  ==========================================  ===================

  A plain ``torch.optim`` inner optimizer (C-MAML: no meta-parameters) needs an
  ``outer_optimizer``; its episode is :func:`~sparse_optim.first_order_episode`.

One *glance* (``glances`` of them per incoming batch, each on a fresh shuffle of the batch):

1. draw a replay sample ``R`` (``replay_batch_size`` items) and form the meta-batch
   ``b_m = R u b``;
2. inside ``opt.episode()`` (``first_order_episode`` for a plain optimizer): split the
   incoming batch ``b`` into disjoint chunks of ``inner_batch_size`` (1 = one inner SGD step
   per sample, as La-MAML's code and the sparse-MAML supplement do, ``k = |b|``) and take one
   inner step ``opt.step()`` on each
   (``phi_{k+1} = phi_k - gate(xi) * grad l(phi_k, b_k)``, Eq. 7);
3. the meta-loss ``L(phi_k, b_m)`` is evaluated after every inner step and averaged
   (``meta_loss="all"``, La-MAML Sec. 5.1: "evaluating and summing the meta-loss at all steps
   of the inner updates"; the official code divides by ``k``) or only at the end
   (``meta_loss="last"``, supplement Algorithm 1). Each term's gradient is handed to
   ``opt.meta_backward()`` right away, which adds ``-g_meta_i * sum_{k<=i} g_k`` (gated as the
   optimizer defines) to the meta-parameters' gradient -- exactly the first-order gradient of
   the averaged meta-loss -- and sums ``g_meta_i`` as theta's first-order gradient (a plain
   optimizer: ``episode.record_outer_gradients()``, theta's gradient only);
4. after the episode (theta restored) both gradients are clipped to norm ``clip_grad_norm``
   (official code: the weights' and the learning rates' gradients separately), then
   ``opt.meta_step(update_params=True)`` (asynchronous update: meta-parameters first, then
   theta with the *new* gates) or, with an ``outer_optimizer`` (C-MAML / sync La-MAML),
   ``opt.meta_step(update_params=False)`` (skipped for a plain optimizer) followed by
   ``outer_optimizer.step()``;
5. after the first glance the incoming batch is offered to the reservoir buffer (the official
   code pushes during the first glance after ``b_m`` is drawn, so ``b_m`` of the first glance
   never holds the incoming samples twice; later glances may replay them).

Steps 2-3 run on the optimizer's fused kernels directly where the inner update is plain
(:mod:`.fast_glance`, ``fast=None``: automatic), with the same results bit for bit; otherwise
through the episode API as written above.
"""
from __future__ import annotations

import math
from typing import Callable, Dict, Optional

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..optim.episode import first_order_episode
from . import fast_glance
from .heads import uses_task_ids
from .replay import ReservoirBuffer

__all__ = ["ReplayLearner", "LaMAMLLearner", "LaERLearner"]

LossFn = Callable[..., Tensor]
TaskLoss = Callable[[Tensor, Tensor, Tensor], Tensor]


def _check_int(value, name: str, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"{name} must be an int >= {minimum}, got {value!r}")
    return value


def _check_clip(value) -> Optional[float]:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0 or not math.isfinite(value):
        raise ValueError(f"clip_grad_norm must be a positive finite number or None, got {value!r}")
    return float(value)


def _check_batch(x: Tensor, y: Tensor) -> None:
    if not isinstance(x, Tensor) or not isinstance(y, Tensor):
        raise TypeError("x and y must be tensors")
    if x.dim() < 1 or y.dim() != 1 or x.shape[0] != y.shape[0] or x.shape[0] == 0:
        raise ValueError(f"x [N, ...] and y [N] must share a non-zero batch size, got {tuple(x.shape)} and {tuple(y.shape)}")


def _replay_batch(buffer: Optional[ReservoirBuffer], n: int, x: Tensor, y: Tensor, t: Tensor):
    """Meta-batch / ER batch ``R u b``: up to ``n`` stored items followed by the incoming ones,
    as ``(x, y, task_ids)``."""
    if buffer is None or n == 0 or len(buffer) == 0:
        return x, y, t
    bx, by, bt = buffer.sample(n)[:3]
    return (torch.cat([bx.to(x.dtype), x]), torch.cat([by.to(y.dtype), y]),
            torch.cat([bt.to(device=t.device, dtype=t.dtype), t]))


def _task_column(task_id, n: int) -> Tensor:
    return torch.full((n,), -1 if task_id is None else int(task_id), dtype=torch.long)


def _task_loss(loss_fn: LossFn) -> TaskLoss:
    """``loss(logits, y, task_ids)``: task-aware losses as they are, ``loss_fn(logits, y)`` otherwise."""
    if not callable(loss_fn):
        raise TypeError(f"loss_fn must be callable, got {type(loss_fn).__name__}")
    if uses_task_ids(loss_fn):
        return loss_fn
    return lambda logits, y, t: loss_fn(logits, y)


def _task_ids(loss_fn: LossFn, task_id, n: int) -> Tensor:
    if task_id is None and uses_task_ids(loss_fn):
        raise ValueError(f"task_id is required: the loss ({loss_fn!r}) is task-aware (multi-headed)")
    return _task_column(task_id, n)


class ReplayLearner:
    """Online SGD (``buffer=None``) or experience replay with a reservoir buffer.

    Args:
        model: the network (``model(x)`` returns logits).
        optimizer: any ``torch.optim`` optimizer over ``model``'s parameters.
        buffer: reservoir buffer storing ``(x, y, task_id)``; ``None`` = online SGD.
        replay_batch_size: stored items joined to every incoming batch (ER; default 10).
        glances: SGD steps per incoming batch (each with a fresh replay sample).
        clip_grad_norm: gradient-norm clip before every step (La-MAML appendix F: 2.0).
        loss_fn: ``loss_fn(logits, y)`` (default cross-entropy), or a task-aware loss
            (:class:`~sparse_optim.continual.MultiHeadLoss`: every sample scored by its task's head).
    """

    def __init__(self, model: nn.Module, optimizer: torch.optim.Optimizer,
                 buffer: Optional[ReservoirBuffer] = None, *, replay_batch_size: int = 10,
                 glances: int = 1, clip_grad_norm: Optional[float] = 2.0,
                 loss_fn: LossFn = F.cross_entropy) -> None:
        self.model, self.optimizer, self.buffer = model, optimizer, buffer
        self.replay_batch_size = _check_int(replay_batch_size, "replay_batch_size", 0)
        self.glances = _check_int(glances, "glances", 1)
        self.clip_grad_norm = _check_clip(clip_grad_norm)
        self.loss_fn = loss_fn
        self._loss = _task_loss(loss_fn)

    def observe(self, x: Tensor, y: Tensor, task_id: Optional[int] = None) -> Dict[str, float]:
        """Learn from one incoming batch; returns ``{'loss': last training loss}``."""
        _check_batch(x, y)
        t = _task_ids(self.loss_fn, task_id, x.shape[0])
        self.model.train()
        loss = torch.zeros(())
        for _ in range(self.glances):
            bx, by, bt = _replay_batch(self.buffer, self.replay_batch_size, x, y, t)
            self.optimizer.zero_grad(set_to_none=True)
            loss = self._loss(self.model(bx), by, bt)
            loss.backward()
            if self.clip_grad_norm is not None:
                nn.utils.clip_grad_norm_(self.model.parameters(), self.clip_grad_norm)
            self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        if self.buffer is not None:
            self.buffer.add(x, y, t)
        return {"loss": float(loss.detach())}


class LaMAMLLearner:
    """First-order La-MAML / C-MAML / sparse-La-MAML learner (see the module docstring).

    Args:
        model: the network; its parameters must be the ones ``optimizer`` updates.
        optimizer: a :class:`~sparse_optim.MetaOptimizer` (``LookaheadLRSGD``, ``MaskedSGD``,
            ``RectifiedLRSGD``) used for the inner loop and the meta-parameters' update, or a
            plain ``torch.optim`` optimizer for the inner loop alone (C-MAML's ``SGD(alpha)``;
            needs ``outer_optimizer``).
        buffer: reservoir replay buffer (``(x, y, task_id)`` items); ``None`` disables replay
            (the meta-batch is then the incoming batch alone).
        outer_optimizer: optimizer for the theta-update (C-MAML's SGD with ``beta``); ``None``
            = asynchronous update through ``optimizer.meta_step(update_params=True)``.
        glances: repetitions of (inner loop + meta-update) per incoming batch.
        replay_batch_size: replay items in the meta-batch (La-MAML: 10).
        inner_batch_size: samples per inner step (1: ``k = |b|`` inner steps).
        meta_loss: ``"all"`` (average over all inner steps, La-MAML code) or ``"last"``.
        clip_grad_norm: norm clip of theta's and (separately) the meta-parameters' first-order
            gradients before the meta-update (La-MAML appendix F: 2.0); ``None`` = no clip.
        shuffle: shuffle the incoming batch before every glance (La-MAML code).
        generator: CPU generator for the shuffles.
        loss_fn: ``loss_fn(logits, y)`` for both inner and meta loss (default cross-entropy), or a
            task-aware loss (:class:`~sparse_optim.continual.MultiHeadLoss`; ``observe`` then needs
            ``task_id``, and replayed items are scored by their own task's head).
        second_order: differentiate the meta-loss through the inner updates (the official code's
            ``--second_order``, used for its CIFAR / TinyImageNet runs): the inner steps run on
            fast weights with :func:`sparse_optim.functional.gated_sgd` (``create_graph=True``) and
            one backward gives theta's and the meta-parameters' gradients. Needs a gated
            optimizer without momentum / weight decay; ``False`` (default): first order.
        inner_grad_clamp: clamp every inner-step gradient element to ``[-c, c]`` before the inner
            update (the official CIFAR / TinyImageNet code clamps to its ``grad_clip_norm``; its
            MNIST code's clamp has no effect); ``None`` (default): no clamp.
        fast: run glances on the optimizer's kernels directly, without the episode API's
            per-step plumbing (:mod:`sparse_optim.continual.fast_glance`; bit-identical results).
            ``None`` (default): where it applies -- a gated optimizer (or ``torch.optim.SGD``)
            without momentum, weight decay, maximize, differentiable or online groups; ``True``:
            raise ``ValueError`` where it does not; ``False``: the per-step episode path. On the
            fast path a non-finite meta-gradient skips the glance's whole meta-update (the episode
            path skips the offending ``meta_backward()`` term).
    """

    def __init__(self, model: nn.Module, optimizer, buffer: Optional[ReservoirBuffer] = None, *,
                 outer_optimizer: Optional[torch.optim.Optimizer] = None, glances: int = 5,
                 replay_batch_size: int = 10, inner_batch_size: int = 1, meta_loss: str = "all",
                 clip_grad_norm: Optional[float] = 2.0, shuffle: bool = True,
                 generator: Optional[torch.Generator] = None, loss_fn: LossFn = F.cross_entropy,
                 second_order: bool = False, inner_grad_clamp: Optional[float] = None,
                 fast: Optional[bool] = None) -> None:
        self._is_meta = hasattr(optimizer, "episode") and hasattr(optimizer, "meta_backward")
        if not self._is_meta:
            if not isinstance(optimizer, torch.optim.Optimizer):
                raise TypeError("optimizer must be a sparse_optim MetaOptimizer (episode / meta_backward / "
                                f"meta_step) or a torch.optim.Optimizer, got {type(optimizer).__name__}")
            if outer_optimizer is None:
                raise TypeError(f"a plain optimizer ({type(optimizer).__name__}) has no meta-update: pass "
                                "outer_optimizer (e.g. C-MAML's torch.optim.SGD(lr=beta)) or use a sparse_optim "
                                "MetaOptimizer")
        if meta_loss not in ("all", "last"):
            raise ValueError(f"meta_loss must be 'all' or 'last', got {meta_loss!r}")
        self.model, self.optimizer, self.buffer = model, optimizer, buffer
        self.outer_optimizer = outer_optimizer
        self.glances = _check_int(glances, "glances", 1)
        self.replay_batch_size = _check_int(replay_batch_size, "replay_batch_size", 0)
        self.inner_batch_size = _check_int(inner_batch_size, "inner_batch_size", 1)
        self.meta_loss = meta_loss
        self.clip_grad_norm = _check_clip(clip_grad_norm)
        self.shuffle = bool(shuffle)
        self.generator = generator
        self.loss_fn = loss_fn
        self._loss = _task_loss(loss_fn)
        self._params = [p for g in optimizer.param_groups for p in g["params"]]
        self.second_order = bool(second_order)
        self.inner_grad_clamp = None if inner_grad_clamp is None else _check_clip(inner_grad_clamp)
        if self.second_order:
            reason = fast_glance.unsupported(model, optimizer, self._params)
            if not self._is_meta or reason is not None:
                raise ValueError("second_order=True needs a gated sparse_optim optimizer without momentum, weight "
                                 f"decay, maximize, differentiable or online groups ({reason or type(optimizer).__name__})")
            if fast:
                raise ValueError("fast=True is first order; use second_order=True alone")
            fast = False
        reason = fast_glance.unsupported(model, optimizer, self._params)
        if fast and reason is not None:
            raise ValueError(f"fast=True: {reason}; use fast=None (automatic) or False")
        self._fast = fast_glance.FastGlance(model, optimizer, self._loss) if reason is None and fast is not False else None
        self._fast_requested = bool(fast)

    @property
    def fast(self) -> bool:
        """Whether glances run on the kernels directly (:mod:`.fast_glance`), not the episode API."""
        return self._fast is not None

    def _glance(self, x: Tensor, y: Tensor, t: Tensor) -> float:
        opt = self.optimizer
        if self.shuffle:
            perm = torch.randperm(x.shape[0], generator=self.generator)
            x, y, t = x[perm], y[perm], t[perm]
        meta_batch = _replay_batch(self.buffer, self.replay_batch_size, x, y, t)
        n = self.inner_batch_size
        chunks = list(zip(x.split(n), y.split(n), t.split(n)))
        opt.zero_grad(set_to_none=True)
        if self.second_order:
            total, ok = self._second_order_glance(chunks, meta_batch)
        elif self._fast is not None and self._fast_applies():
            total, ok = self._fast_glance(chunks, meta_batch)
        else:
            total, ok = self._episode_glance(chunks, meta_batch), True
        if ok:
            self._meta_update(meta_batch)
        opt.zero_grad(set_to_none=True)
        return total

    def _episode_glance(self, chunks, meta_batch) -> float:
        """Step 2-3 of the module docstring with the optimizer's episode API."""
        opt = self.optimizer
        k = len(chunks)
        weight = 1.0 / k if self.meta_loss == "all" else 1.0
        total = 0.0
        mx, my, mt = meta_batch
        with (opt.episode() if self._is_meta else first_order_episode(self._params, opt)) as ep:
            for i, (xi, yi, ti) in enumerate(chunks):
                opt.zero_grad(set_to_none=True)
                self._loss(self.model(xi), yi, ti).backward()
                self._clamp_inner([p.grad for p in self._params if p.grad is not None])
                opt.step()                                      # inner update (Eq. 7)
                if self.meta_loss == "all" or i == k - 1:
                    opt.zero_grad(set_to_none=True)
                    meta = self._loss(self.model(mx), my, mt) * weight
                    meta.backward()
                    if self._is_meta:
                        opt.meta_backward()                     # g_meta_i . trace_i
                    else:
                        ep.record_outer_gradients()             # theta's first-order gradient
                    total += float(meta.detach())
        return total  # theta restored; p.grad = first-order meta-gradient for theta

    def _clamp_inner(self, grads) -> None:
        if self.inner_grad_clamp is not None and grads:
            torch._foreach_clamp_min_(grads, -self.inner_grad_clamp)
            torch._foreach_clamp_max_(grads, self.inner_grad_clamp)

    def _fast_applies(self) -> bool:
        """Re-checked every glance: hyperparameters may have changed since construction."""
        reason = fast_glance.unsupported(self.model, self.optimizer, self._params)
        if reason is not None and self._fast_requested:
            raise ValueError(f"fast=True: {reason} (the optimizer changed after the learner was built)")
        return reason is None

    def _fast_glance(self, chunks, meta_batch):
        """Step 2-3 without the episode plumbing (:mod:`.fast_glance`): the same kernels and results."""
        params = [p for g in self.optimizer.param_groups for p in g["params"]]  # the glance's own order
        with torch.no_grad():
            theta = [p.detach().clone() for p in params]
        try:
            theta_grads, meta_grads, total = self._fast(chunks, meta_batch, self.meta_loss == "all",
                                                        self.inner_grad_clamp)
        finally:
            with torch.no_grad():
                torch._foreach_copy_(params, theta)
        return total, self._set_gradients(params, theta_grads, meta_grads)

    def _set_gradients(self, params, theta_grads, meta_grads) -> bool:
        """theta's and the meta-parameters' gradients from a glance, after the non-finite check."""
        if self._is_meta:
            policy = self.optimizer._nonfinite
            if not policy.all_finite(theta_grads + [g for _, g in meta_grads], self.optimizer.backend):
                policy.reject(f"{type(self).__name__} ({type(self.optimizer).__name__}) meta-gradients")
                return False
            for m, g in meta_grads:
                if g is not None:
                    m.grad = g if m.grad is None else m.grad + g
        for p, g in zip(params, theta_grads):
            p.grad = g
        return True

    def _second_order_glance(self, chunks, meta_batch):
        """Steps 2-3 on fast weights, differentiating through the inner updates (second order)."""
        from torch.func import functional_call

        from .. import functional as F_

        opt, model = self.optimizer, self.model
        params = [p for g in opt.param_groups for p in g["params"]]
        names = {id(p): name for name, p in model.named_parameters()}
        missing = [i for i, p in enumerate(params) if id(p) not in names]
        if missing:
            raise ValueError(f"second_order=True: optimizer parameters {missing} are not parameters of the model")
        metas = opt._metas(params)
        groups, start = [], 0
        for g_opt in opt.param_groups:
            groups.append((g_opt, slice(start, start + len(g_opt["params"]))))
            start += len(g_opt["params"])
        mx, my, mt = meta_batch
        k = len(chunks)
        weight = 1.0 / k if self.meta_loss == "all" else 1.0
        leaves = [m.detach().requires_grad_(True) for m in metas]
        fast = list(params)
        meta_total = None
        with torch.enable_grad():
            for i, (xi, yi, ti) in enumerate(chunks):
                out = functional_call(model, {names[id(p)]: w for p, w in zip(params, fast)}, (xi,))
                grads = torch.autograd.grad(self._loss(out, yi, ti), fast, create_graph=True, allow_unused=True)
                grads = [torch.zeros_like(w) if g is None else g for g, w in zip(grads, fast)]
                if self.inner_grad_clamp is not None:
                    grads = [g.clamp(-self.inner_grad_clamp, self.inner_grad_clamp) for g in grads]
                new = list(fast)
                for g_opt, s in groups:  # Eq. 7 with the graph kept: phi - scale * gate(xi) * g
                    new[s] = F_.gated_sgd(fast[s], grads[s], leaves[s], gate=opt.gate, lr=g_opt["lr"], backend=opt.backend,
                                          straight_through=opt._straight_through(g_opt))
                fast = new
                if self.meta_loss == "all" or i == k - 1:
                    out = functional_call(model, {names[id(p)]: w for p, w in zip(params, fast)}, (mx,))
                    term = self._loss(out, my, mt) * weight
                    meta_total = term if meta_total is None else meta_total + term
            all_grads = torch.autograd.grad(meta_total, params + leaves, allow_unused=True)
        theta_grads = [torch.zeros_like(p) if g is None else g for g, p in zip(all_grads[:len(params)], params)]
        meta_grads = [(m, torch.zeros_like(m) if g is None else g) for m, g in zip(metas, all_grads[len(params):])]
        return float(meta_total.detach()), self._set_gradients(params, theta_grads, meta_grads)

    def _clip(self) -> None:
        """theta's and (separately) the meta-parameters' gradients to norm ``clip_grad_norm``."""
        if self.clip_grad_norm is not None:
            nn.utils.clip_grad_norm_(self._params, self.clip_grad_norm)
            metas = [t for t in self.optimizer.meta_parameters() if t.grad is not None] if self._is_meta else []
            if metas:
                nn.utils.clip_grad_norm_(metas, self.clip_grad_norm)

    def _meta_update(self, meta_batch) -> None:
        """Step 4: clip, then the asynchronous (or outer-optimizer) update."""
        opt = self.optimizer
        self._clip()
        if self.outer_optimizer is None:
            opt.meta_step(update_params=True)                   # Eq. 8 / suppl. Alg. 1
        else:
            if self._is_meta:
                opt.meta_step(update_params=False)
            self.outer_optimizer.step()                         # C-MAML: theta -= beta * g

    def observe(self, x: Tensor, y: Tensor, task_id: Optional[int] = None) -> Dict[str, float]:
        """Learn from one incoming batch; returns ``{'meta_loss': last glance's meta-loss}``."""
        _check_batch(x, y)
        t = _task_ids(self.loss_fn, task_id, x.shape[0])
        self.model.train()
        loss = 0.0
        for g in range(self.glances):
            loss = self._glance(x, y, t)
            if g == 0 and self.buffer is not None:
                self.buffer.add(x, y, t)
        return {"meta_loss": loss}


class LaERLearner(LaMAMLLearner):
    """La-ER (La-MAML Sec. 5.3 ablation; the official ``eralg4`` with ``--learn_lr``).

    The learning rates are modulated by La-MAML's first-order objective, the weights are
    updated as in ER. Per glance: the inner loop of :class:`LaMAMLLearner` (``k`` chunks of the
    incoming batch, meta-loss of the *last* inner step by default, as the official code's
    ``meta_losses[-1]``) gives the rates' gradient (Eq. 7, first order), clipped to
    ``clip_grad_norm``; theta's meta-gradient is discarded. Then theta's ER gradient
    ``g_ER = grad L(theta, R u b)`` on the same meta-batch, clipped, and the asynchronous update of
    Eq. 8, ``alpha <- alpha - eta g(alpha)``, ``theta <- theta - relu(alpha_new) * g_ER``
    (``optimizer.meta_step(update_params=True)``).

    Args: as :class:`LaMAMLLearner`, with ``meta_loss="last"`` by default and no
    ``outer_optimizer`` (the rates set theta's step); ``optimizer`` must be a rate-learning
    sparse_optim optimizer (``LookaheadLRSGD``, ``RectifiedLRSGD``, ``MetaSGD``).
    """

    def __init__(self, model: nn.Module, optimizer, buffer: Optional[ReservoirBuffer] = None, *,
                 meta_loss: str = "last", **kwargs) -> None:
        if "outer_optimizer" in kwargs:
            raise TypeError("LaERLearner takes no outer_optimizer: theta moves by relu(alpha) * g_ER")
        if not (hasattr(optimizer, "episode") and hasattr(optimizer, "meta_step")):
            raise TypeError(f"LaERLearner needs a sparse_optim optimizer with learned rates, got {type(optimizer).__name__}")
        super().__init__(model, optimizer, buffer, meta_loss=meta_loss, **kwargs)

    def _meta_update(self, meta_batch) -> None:
        opt = self.optimizer
        if self.clip_grad_norm is not None:
            metas = [t for t in opt.meta_parameters() if t.grad is not None]
            if metas:
                nn.utils.clip_grad_norm_(metas, self.clip_grad_norm)
        mx, my, mt = meta_batch
        for p in self._params:
            p.grad = None
        with torch.enable_grad():
            self._loss(self.model(mx), my, mt).backward()     # ER's gradient at theta
        if self.clip_grad_norm is not None:
            nn.utils.clip_grad_norm_(self._params, self.clip_grad_norm)
        opt.meta_step(update_params=True)
