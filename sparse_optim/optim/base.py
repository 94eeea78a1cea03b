"""Shared machinery of the meta-optimizers: meta-parameters, the step plumbing, state.

A subclass provides the update rule (:meth:`MetaOptimizer._update`, which only gathers lists
for a :mod:`sparse_optim.functional` dispatcher), how meta-parameters are created
(:meth:`_create_meta`), its trace type (:mod:`.traces`), the first-order meta-gradient
(:meth:`_accumulate_meta_grads`) and the theta-update of :meth:`meta_step`. Episodes
(:mod:`.episode`) and the non-finite policy (:mod:`.nonfinite`) are pieces of their own.
"""
from __future__ import annotations

import functools
from contextlib import contextmanager
from typing import Any, Callable, Dict, Iterator, List, Optional, Tuple

import torch
from torch.optim import Optimizer
from torch.optim import optimizer as _torch_optimizer

from .. import ops
from .._validation import check_choice, check_grad, check_param, check_rate
from .episode import Episode
from .nonfinite import POLICIES as NONFINITE_POLICIES
from .nonfinite import NonFinitePolicy
from .traces import DirectionSums

Tensor = torch.Tensor


class _GroupPlan:
    """What a step of one param group needs, computed when the group's hyperparameters or
    parameters change (checked by identity on every step), not on every step."""

    __slots__ = ("group", "values", "count", "params", "metas")

    def __init__(self, group: Dict[str, Any], metas: Optional[List[Tensor]]) -> None:
        self.group = group
        self.values = list(group.values())
        self.count = len(group["params"])
        self.params: List[Tensor] = list(group["params"])
        self.metas = metas

    def current(self, group: Dict[str, Any]) -> bool:
        values = self.values
        if len(group) != len(values) or len(group["params"]) != self.count:
            return False
        for a, b in zip(group.values(), values):
            if a is not b:
                return False
        return True


class MetaOptimizer(Optimizer):
    """A ``torch.optim.Optimizer`` whose update ``p <- p - u(d; xi)`` has meta-parameters xi.

    Meta-parameters are leaf tensors (``requires_grad=True``) owned by the optimizer; see
    :meth:`meta_parameters`. First-order meta-learning::

        with opt.episode():                 # snapshot theta, reset traces
            for k in range(K):
                opt.zero_grad(); inner_loss().backward(); opt.step()
            opt.zero_grad(); outer_loss().backward()
            opt.meta_backward()             # first-order meta-gradients into xi.grad
        # theta restored; p.grad = first-order gradient for theta, summed over episodes
        opt.meta_step()                     # SGD on xi (and theta, if update_params)

    Non-finite gradients (``nonfinite``): wherever meta-parameters would change
    (:meth:`meta_backward`, :meth:`meta_step`, online steps) the gradients involved are checked
    first; ``'skip'`` (default) skips that update with a warning and counts it in
    ``skipped_updates``, ``'raise'`` raises ``FloatingPointError``, ``'propagate'`` does no check.
    ``backend`` (``None``: the process-wide choice of :mod:`sparse_optim.ops`, i.e. the native
    kernels where available) forces ``'reference'``, ``'cpu'`` or ``'cuda'`` ops for this optimizer,
    like ``torch.optim``'s ``foreach`` / ``fused`` flags.

    Plain ``step()`` behaves like ``torch.optim.SGD`` (use ``torch.amp.GradScaler`` to skip
    overflowing steps); inside an episode a bad inner gradient only reaches the trace, which
    :meth:`meta_backward` rejects, and theta is restored when the episode ends. Hyperparameters
    are validated when they change (e.g. by a scheduler), gradients by the ops: a step that
    raises changes no parameter and no state.
    """

    meta_lr_name = "meta_lr"
    default_update_params = False
    trace_type: Callable[[], Any] = DirectionSums

    @staticmethod
    def profile_hook_step(func: Callable) -> Callable:
        """``torch.optim``'s step wrapper (pre / post hooks, profiler label), entered only when a
        hook is registered, a profiler runs or the step is being compiled: otherwise its
        ``record_function`` alone costs as much as a small model's whole update."""
        hooked = Optimizer.profile_hook_step(func)

        @functools.wraps(func)
        def wrapper(*args, **kwargs):
            self = args[0]
            if (torch.compiler.is_compiling() or torch._C._autograd._profiler_enabled()
                    or self._optimizer_step_pre_hooks or self._optimizer_step_post_hooks
                    or _torch_optimizer._global_optimizer_pre_hooks or _torch_optimizer._global_optimizer_post_hooks):
                return hooked(*args, **kwargs)
            return func(*args, **kwargs)

        return wrapper

    def __init__(self, params: Any, defaults: Dict[str, Any], nonfinite: str = "skip",
                 backend: Optional[str] = None, foreach: Optional[bool] = None,
                 fused: Optional[bool] = None) -> None:
        self._nonfinite = NonFinitePolicy(nonfinite)
        self.backend = _backend_argument(backend, foreach, fused)
        self._meta: Dict[Tensor, Dict[str, Tensor]] = {}
        self._names: Dict[Tensor, str] = {}
        self._trace = self.trace_type()
        self._episode: Optional[Episode] = None
        self._plans: List[_GroupPlan] = []
        self._validate_hparams(defaults)
        super().__init__(params, defaults)

    @property
    def nonfinite(self) -> str:
        return self._nonfinite.policy

    @nonfinite.setter
    def nonfinite(self, policy: str) -> None:
        self._nonfinite.policy = check_choice("nonfinite", policy, NONFINITE_POLICIES)

    @property
    def skipped_updates(self) -> int:
        """How many meta-parameter updates the non-finite policy skipped."""
        return self._nonfinite.skipped

    # ------------------------------------------------------------- copies
    def __getstate__(self) -> Dict[str, Any]:
        """Everything, so ``copy.deepcopy`` / ``pickle`` give an optimizer that continues exactly
        like this one (copy the model together with it: ``deepcopy((model, opt))``)."""
        if self._episode is not None:
            raise RuntimeError("an optimizer cannot be copied or pickled inside an episode")
        state = dict(self.__dict__)
        state["_plans"] = []
        return state

    def __setstate__(self, state: Dict[str, Any]) -> None:
        super().__setstate__(state)
        self._plans = []

    # ------------------------------------------------------------------ hooks
    def _validate_hparams(self, group: Dict[str, Any]) -> None:
        for key in ("lr", "weight_decay", "momentum", "dampening", self.meta_lr_name):
            if key in group:
                check_rate(key, group[key])
        if group.get("nesterov") and (group.get("momentum", 0) <= 0 or group.get("dampening", 0) != 0):
            raise ValueError("nesterov=True requires momentum > 0 and dampening = 0")

    def _create_meta(self, param: Tensor, group: Dict[str, Any]) -> Dict[str, Tensor]:
        raise NotImplementedError

    def _group_metas(self, params: List[Tensor]) -> Optional[List[Tensor]]:
        """Per-parameter tensors a group's plan caches for the update (default: none)."""
        return None

    def _update(self, group: Dict[str, Any], params: List[Tensor], grads: List[Tensor],
                metas: Optional[List[Tensor]], record: bool) -> None:
        raise NotImplementedError

    def _accumulate_meta_grads(self, group: Dict[str, Any], params: List[Tensor], outer_grads: List[Tensor]) -> None:
        raise NotImplementedError

    def _update_params_with_meta(self, group: Dict[str, Any], params: List[Tensor], grads: List[Tensor]) -> None:
        raise NotImplementedError

    def _episode_started(self) -> None:
        """Called on entering an episode (after the snapshot)."""

    def _episode_ended(self) -> None:
        """Called on leaving an episode (after theta is restored)."""

    # --------------------------------------------------------------- groups
    def add_param_group(self, param_group: Dict[str, Any]) -> None:
        merged = {**self.defaults, **{k: v for k, v in param_group.items() if k != "params"}}
        self._validate_hparams(merged)
        params = param_group.get("params")
        if isinstance(params, (list, tuple)) and len({id(p) for p in params}) != len(params):
            raise ValueError("a param group lists the same parameter more than once (tied weights?): "
                             "pass each parameter once (model.parameters() already does)")
        super().add_param_group(param_group)
        group = self.param_groups[-1]
        first = sum(len(g["params"]) for g in self.param_groups[:-1])
        names = group.get("param_names") or [f"param{first + j}" for j in range(len(group["params"]))]
        try:
            for p, name in zip(group["params"], names):
                check_param(p, name)
            created = {p: self._create_meta(p, group) for p in group["params"]}
        except Exception:
            self.param_groups.pop()
            raise
        for p, name in zip(group["params"], names):
            self._meta[p] = created[p]
            self._names[p] = name
        self._plans = []

    def _current_plans(self) -> List[_GroupPlan]:
        """One plan per group; hyperparameters are re-validated when they changed."""
        plans, groups = self._plans, self.param_groups
        if len(plans) == len(groups):
            for plan, group in zip(plans, groups):
                if plan.group is not group or not plan.current(group):
                    break
            else:
                return plans
        for group in groups:
            self._validate_hparams(group)
        self._plans = [_GroupPlan(g, self._group_metas(list(g["params"]))) for g in groups]
        return self._plans

    # ------------------------------------------------------ meta-parameters
    def named_meta_parameters(self) -> Iterator[Tuple[str, Tensor]]:
        """(name, tensor) pairs; names are ``<parameter name>.<kind>``."""
        for group in self.param_groups:
            for p in group["params"]:
                for key, t in self._meta[p].items():
                    yield f"{self._names[p]}.{key}", t

    def meta_parameters(self) -> List[Tensor]:
        """Leaf tensors (``requires_grad=True``) to hand to an outer optimizer."""
        return [t for _, t in self.named_meta_parameters()]

    def zero_meta_grad(self, set_to_none: bool = True) -> None:
        for t in self.meta_parameters():
            if t.grad is not None:
                if set_to_none:
                    t.grad = None
                else:
                    t.grad.zero_()

    # ----------------------------------------------------------------- step
    def _params_with_grad(self, group: Dict[str, Any]) -> Tuple[List[Tensor], List[Tensor]]:
        params = [p for p in group["params"] if p.grad is not None]
        return params, [p.grad for p in params]

    def _check_all_grads(self) -> None:
        """Hyperparameters and gradients of every group, with errors naming the parameter."""
        for group in self.param_groups:
            self._validate_hparams(group)
            for p in group["params"]:
                check_grad(p, self._names[p])

    def step(self, closure: Optional[Callable[[], Any]] = None) -> Any:
        """One update of every parameter with a gradient; returns the closure's loss."""
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        plans = self._current_plans()
        if len(plans) > 1:
            self._check_all_grads()  # several calls: check everything before the first one writes
        episode = self._episode
        for plan in plans:
            group = plan.group
            params, metas = plan.params, plan.metas
            grads = [p.grad for p in params]
            if any(g is None for g in grads):
                keep = [i for i, g in enumerate(grads) if g is not None]
                if not keep:
                    continue
                params, grads = [params[i] for i in keep], [grads[i] for i in keep]
                metas = None if metas is None else [metas[i] for i in keep]
            record = episode is not None or group.get("online", False)
            try:
                if group["differentiable"]:
                    with torch.enable_grad():
                        self._update(group, params, grads, metas, record)
                else:
                    self._update(group, params, grads, metas, record)
            except (RuntimeError, ValueError, TypeError):
                self._check_all_grads()  # name the parameter where the op's error allows it
                raise
        if episode is not None:
            episode.steps += 1
        return loss

    # -------------------------------------------------------------- episode
    @property
    def in_episode(self) -> bool:
        return self._episode is not None

    @contextmanager
    def episode(self, buffers: Optional[torch.nn.Module] = None) -> Iterator["MetaOptimizer"]:
        """Inner loop of one task: theta and gradients are snapshotted and restored on exit.

        Module buffers (BatchNorm running statistics, ``num_batches_tracked``) are not parameters
        and by default are *not* restored: adaptation moves them. ``buffers=model`` snapshots
        and restores ``model``'s buffers too (test-time adaptation without leaking into the model).
        """
        if self._episode is not None:
            raise RuntimeError("nested episodes are not supported: leave the current opt.episode() first")
        if any(g.get("online", False) for g in self.param_groups):
            raise RuntimeError("episode() cannot be used with online=True param groups")
        ep = Episode(self._ordered_params(), self.state, buffers=buffers)
        self._trace.clear()
        self._episode = ep
        self._episode_started()
        try:
            yield self
        finally:
            self._episode = None
            self._trace.clear()
            ep.restore()
            self._episode_ended()

    def meta_backward(self) -> None:
        """Add first-order meta-gradients (from the current ``p.grad``, the outer gradient) to
        each meta-parameter's ``.grad``, and record ``p.grad`` as this episode's first-order
        theta-gradient (sparse-MAML Eq. 9), handed back in ``p.grad`` when the episode ends."""
        ep = self._episode
        if ep is None:
            raise RuntimeError("meta_backward() must be called inside `with opt.episode():` after the inner steps")
        if ep.steps == 0:
            raise RuntimeError("meta_backward(): no inner step was taken in this episode, there is no trace")
        self._check_all_grads()
        outer = [p.grad for g in self.param_groups for p in g["params"] if p.grad is not None]
        if not self._nonfinite.all_finite(outer + self._trace.tensors(), self.backend):
            return self._reject_nonfinite("meta_backward")
        with torch.no_grad():
            for group in self.param_groups:
                params, grads = self._params_with_grad(group)
                traced = [(p, g) for p, g in zip(params, grads) if p in self._trace]
                if traced:
                    self._accumulate_meta_grads(group, [p for p, _ in traced], [g for _, g in traced])
        ep.record_outer_gradients()

    def _reject_nonfinite(self, where: str) -> None:
        self._nonfinite.reject(f"{type(self).__name__}.{where}")

    def _meta_grad_buffer(self, meta: Tensor) -> Tensor:
        if meta.grad is None:
            meta.grad = torch.zeros_like(meta)
        return meta.grad

    def meta_step(self, update_params: Optional[bool] = None) -> None:
        """Plain SGD on the meta-parameters with the group's meta learning rate
        (sparse-MAML Eq. 5, La-MAML Eq. 7 update of alpha), then zero their gradients.

        With ``update_params`` (default: class-specific) the parameters are then updated with
        the *new* meta-parameters from their ``.grad``: La-MAML Eq. 8 asynchronous update and
        sparse-La-MAML (supplement Algorithm 1); that gradient is consumed: ``p.grad`` is set to
        None afterwards, so a loop without ``zero_grad()`` never applies an old gradient again.
        """
        if self._episode is not None:
            raise RuntimeError("meta_step() must be called after the episode has ended")
        if update_params is None:
            update_params = self.default_update_params
        for group in self.param_groups:
            self._validate_hparams(group)
        if update_params:
            self._check_all_grads()
        checked = [t.grad for t in self.meta_parameters()]
        if update_params:
            checked += [p.grad for p in self._ordered_params()]
        if not self._nonfinite.all_finite(checked, self.backend):
            return self._reject_nonfinite("meta_step")
        with torch.no_grad():
            for group in self.param_groups:
                lr = group[self.meta_lr_name]
                for p in group["params"]:
                    for t in self._meta[p].values():
                        if t.grad is not None:
                            t.add_(t.grad, alpha=-lr)
                            t.grad = None
            if update_params:
                for group in self.param_groups:
                    params, grads = self._params_with_grad(group)
                    if params:
                        self._update_params_with_meta(group, params, grads)
                        for p in params:  # consumed, like the meta-parameters' gradients
                            p.grad = None

    # ---------------------------------------------------------------- state
    def _ordered_params(self) -> List[Tensor]:
        return [p for g in self.param_groups for p in g["params"]]

    def state_dict(self) -> Dict[str, Any]:
        if self._episode is not None:
            raise RuntimeError("state_dict() inside an episode is not supported: save between episodes")
        sd = super().state_dict()
        sd["meta_optimizer"] = type(self).__name__
        sd["meta_state"] = {
            i: {
                "meta": {k: t.detach().clone() for k, t in self._meta[p].items()},
                "trace": self._trace.state(p),
            }
            for i, p in enumerate(self._ordered_params())
        }
        return sd

    def _align_by_name(self, saved_groups, meta_state):
        """Saved parameters matched by name where both sides have names (torch 2.x saves
        ``param_names`` for named parameters), else by position."""
        return _align(self.param_groups, saved_groups, meta_state)

    def load_state_dict(self, state_dict: Dict[str, Any]) -> None:
        if self._episode is not None:
            raise RuntimeError("load_state_dict() inside an episode is not supported")
        if not isinstance(state_dict, dict) or "meta_state" not in state_dict:
            raise ValueError("state_dict has no 'meta_state': it was not produced by a sparse_optim optimizer")
        saved_class = state_dict.get("meta_optimizer")
        if saved_class is not None and saved_class != type(self).__name__:
            raise ValueError(f"state_dict was saved by {saved_class}, cannot load it into {type(self).__name__} "
                             "(same meta-parameter shapes, different update rule)")
        state_dict = dict(state_dict)
        state_dict.pop("meta_optimizer", None)
        meta_state = state_dict.pop("meta_state")
        params = self._ordered_params()
        saved_groups = state_dict.get("param_groups", [])
        if [len(g["params"]) for g in saved_groups] != [len(g["params"]) for g in self.param_groups]:
            raise ValueError(
                "state_dict has a different parameter layout: group sizes "
                f"{[len(g['params']) for g in saved_groups]} vs {[len(g['params']) for g in self.param_groups]}"
            )
        for g in saved_groups:
            self._validate_hparams(g)
        if len(meta_state) != len(params):
            raise ValueError(f"state_dict has meta-parameters for {len(meta_state)} parameters, expected {len(params)}")
        saved_groups, meta_state, saved_names = self._align_by_name(saved_groups, meta_state)
        state_dict["param_groups"] = saved_groups
        for i, p in enumerate(params):
            saved = meta_state[i]["meta"]
            mine = self._meta[p]
            where = f"{self._names[p]} (saved as {saved_names[i]})" if saved_names[i] != self._names[p] \
                else self._names[p]
            if set(saved) != set(mine):
                raise ValueError(f"meta-parameters of {where}: keys {sorted(saved)} in the state_dict, "
                                 f"expected {sorted(mine)}")
            for k, t in mine.items():
                if tuple(saved[k].shape) != tuple(t.shape):
                    raise ValueError(
                        f"meta-parameter {k} of {where} has shape {tuple(saved[k].shape)} in the "
                        f"state_dict, expected {tuple(t.shape)}"
                    )
        # never alias the caller's tensors: momentum buffers are updated in place
        state_dict["state"] = _clone_tree(state_dict.get("state", {}))
        super().load_state_dict(state_dict)
        for group in self.param_groups:  # state_dicts from before a flag existed (torch.optim does the same)
            for key, value in self.defaults.items():
                group.setdefault(key, value)
        with torch.no_grad():
            self._trace.clear()
            for i, p in enumerate(params):
                for k, t in self._meta[p].items():
                    t.copy_(meta_state[i]["meta"][k])
                self._trace.load(p, meta_state[i].get("trace"))
        self._plans = []


def _saved_names(group: Dict[str, Any], first: int) -> List[str]:
    return list(group.get("param_names") or [f"param{first + j}" for j in range(len(group["params"]))])


def _align(self_groups, saved_groups, meta_state):
    """Reorder each saved group to this optimizer's parameter order, by parameter name."""
    aligned, new_meta, names, first = [], {}, [], 0
    for mine, saved in zip(self_groups, saved_groups):
        my_names, old_names = _saved_names(mine, first), _saved_names(saved, first)
        order = list(range(len(old_names)))
        if mine.get("param_names") and saved.get("param_names"):
            if sorted(my_names) != sorted(old_names) or len(set(old_names)) != len(old_names):
                raise ValueError(f"state_dict names parameters {old_names}, this optimizer {my_names}")
            order = [old_names.index(n) for n in my_names]
        aligned.append({**saved, "params": [saved["params"][j] for j in order],
                        **({"param_names": [old_names[j] for j in order]} if saved.get("param_names") else {})})
        for k, j in enumerate(order):
            new_meta[first + k] = meta_state[first + j]
            names.append(old_names[j])
        first += len(order)
    return aligned, new_meta, names


def _clone_tree(x: Any) -> Any:
    if x is None:
        return None
    if isinstance(x, Tensor):
        return x.detach().clone()
    if isinstance(x, (list, tuple)):
        return type(x)(_clone_tree(v) for v in x)
    if isinstance(x, dict):
        return {k: _clone_tree(v) for k, v in x.items()}
    return x


def _backend_argument(backend: Optional[str], foreach: Optional[bool], fused: Optional[bool]) -> Optional[str]:
    """The forced backend of ``backend=`` or torch.optim's flags: ``fused=True`` asks for the
    native kernels on every device (``RuntimeError`` if they cannot be used; ``'native'``),
    ``foreach=False`` for the reference ops; ``foreach=True`` / ``fused=False`` keep the default."""
    if backend is not None:
        check_choice("backend", backend, ops.BACKENDS)
        backend = None if backend == "auto" else backend
    for name, flag in (("foreach", foreach), ("fused", fused)):
        if flag is not None and not isinstance(flag, bool):
            raise TypeError(f"{name} must be a bool or None, got {type(flag).__name__}")
    if fused and foreach is False:
        raise ValueError("fused=True and foreach=False cannot be combined")
    wanted = "reference" if foreach is False else ("native" if fused else None)
    if wanted == "reference":
        if backend not in (None, "reference"):
            raise ValueError(f"backend={backend!r} contradicts foreach=False")
        return "reference"
    if wanted == "native" and backend == "reference":
        raise ValueError("backend='reference' contradicts fused=True")
    if backend in ("cpu", "cuda") or wanted == "native":
        from ..ops import native

        if not native.available():
            what = f"backend={backend!r}" if backend is not None else "fused=True"
            raise RuntimeError(f"{what} needs the native kernels, which are not available here (see the warning above)")
        if backend == "cuda" and not native.supports("cuda"):
            raise RuntimeError("backend='cuda' needs the CUDA kernels: no CUDA device or no CUDA build here")
    return "native" if wanted == "native" and backend is None else backend

