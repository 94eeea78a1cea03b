"""The OSAKA online-learning benchmark (Omniglot -> Omniglot / MNIST / FashionMNIST) and C-MAML.

Reference: Caccia et al. 2020, "Online Fast Adaptation and Knowledge Accumulation (OSAKA)"
(sparse-MAML ref. [7]; official code ``github.com/ElementAI/osaka``, branch ``camera_ready``),
as used by sparse-MAML Sec. 4.2, Table 6 and supplement B.3 (Algorithm 2, Tables S8 / S9).
This module is an independent re-implementation of the protocol; no code is shared with the
official repository.

Pieces (each usable on its own):

* :func:`order_and_split` / :func:`load_osaka_data` -- the three data sources as per-class
  tensors read through ``torchvision`` (MNIST, FashionMNIST: the raw idx files in
  ``root/{MNIST,FashionMNIST}/raw``) and the extracted Omniglot folders
  (``root/omniglot-py/images_{background,evaluation}``, read by
  :func:`sparse_optim.data.omniglot.load_omniglot`), plus the pre-training split (the first
  900 Omniglot characters meta-train, the next 100 meta-validation, 10 + 10 drawings each).
* :class:`OSAKAStream` -- the non-stationary stream: at every step, with probability
  ``1 - p`` (and at the first step) a new task is drawn: a source with probabilities
  0.5 / 0.25 / 0.25 (Omniglot / MNIST / FashionMNIST) and ``n_way`` of its classes in random
  order (for MNIST / FashionMNIST a random permutation of the 10 digits); every step then
  shows ``n_shots`` images per class (drawn with replacement), labelled ``0..n_way-1`` in the
  task's class order.  A switch counts even when the same source is drawn again.
* :func:`detect_task_boundary` -- OSAKA's loss-based boundary detection: a boundary is declared
  when adapting on the incoming batch lowers its loss by at least a threshold,
  ``L(phi_new, B) + threshold <= L(phi_old, B)`` (the inner and outer loops disagree).
* :func:`update_modulation` -- UM: the meta-loss is weighted by ``1 - exp(-lambda L)``.
* :class:`ContinualMAML` -- C-MAML + UM + PAP (OSAKA's best variant, the one sparse-MAML
  extends), with any first-order inner rule of this library: learned per-tensor rates
  (``"cmaml"``), a fixed rate (``"cmaml_fixed"``), binary gradient masks (``"sparse_cmaml"``,
  sparse-MAML Eq. 4 / Algorithm 2) or rectified rates (``"sparse_relu_cmaml"``); and
  :meth:`ContinualMAML.pretrain_step` for the MAML pre-training on Omniglot.
* :class:`FineTuneLearner` -- the fine-tuning baseline (online Adam on every incoming batch).

Learned per-group rates of C-MAML.  The OSAKA code learns one unconstrained scalar step size
per weight / bias tensor of the conv layers and the classifier (``per_param_step_size`` over
``meta_named_parameters``; BatchNorm affine parameters are not adapted in the inner loop) with
the same Adam as theta.  Here this is :class:`sparse_optim.MetaSGD` (rates of either sign,
initialised to ``alpha_0``, first-order rule ``dL/dalpha = -g_out * sum_k g_k``) with the rates
*tied within each tensor*: after every meta-backward each rate tensor's gradient is replaced by
its sum, so all its entries receive the same (Adam) update and remain one scalar per tensor;
the summed gradient is exactly the first-order gradient of that scalar.
"""
from __future__ import annotations

import math
import os
from dataclasses import dataclass, field
from typing import Any, Dict, Iterator, List, Optional, Sequence, Tuple, Union

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

import sparse_optim as so

__all__ = [
    "OSAKA_SOURCES",
    "OSAKA_SOURCE_PROBS",
    "OSAKAData",
    "OSAKAStep",
    "OSAKAStream",
    "order_and_split",
    "load_osaka_data",
    "detect_task_boundary",
    "update_modulation",
    "inner_parameters",
    "ContinualMAML",
    "FineTuneLearner",
    "CMAML_KINDS",
    "sample_task_batch",
    "sample_pretrain_tasks",
]

PathLike = Union[str, "os.PathLike[str]"]
OSAKA_SOURCES: Tuple[str, ...] = ("omniglot", "mnist", "fashion")
#: OSAKA ``init_dataloaders`` (Omniglot): prob_pretrain, prob_ood1, prob_ood2
OSAKA_SOURCE_PROBS: Tuple[float, ...] = (0.5, 0.25, 0.25)
CMAML_KINDS: Tuple[str, ...] = ("cmaml", "cmaml_fixed", "sparse_cmaml", "sparse_relu_cmaml")


# ----------------------------------------------------------------------------- data
def order_and_split(images: Tensor, labels: Tensor) -> Tensor:
    """Group a labelled dataset by class: ``[n_classes, n_min, *image_shape]``.

    Classes are ordered by label; every class is truncated to the size of the smallest one
    (as OSAKA's ``order_and_split``), keeping the dataset's order within a class.
    """
    if images.shape[0] != labels.shape[0]:
        raise ValueError(f"{images.shape[0]} images but {labels.shape[0]} labels")
    classes = torch.unique(labels).tolist()
    per = [images[labels == c] for c in classes]
    n = min(len(x) for x in per)
    return torch.stack([x[:n] for x in per])


@dataclass
class OSAKAData:
    """The sources of the stream and the pre-training split.

    ``sources[name]``: float tensor ``[n_classes, n_per_class, 1, 28, 28]`` in [0, 1].
    ``pretrain_train`` / ``pretrain_val``: ``(support_pool, query_pool)`` tensors
    ``[n_classes, n, 1, 28, 28]`` (OSAKA: drawings 0-9 and 10-19 of the first 900 / next 100
    Omniglot characters).
    """

    sources: Dict[str, Tensor]
    pretrain_train: Tuple[Tensor, Tensor]
    pretrain_val: Tuple[Tensor, Tensor]
    info: Dict[str, Any] = field(default_factory=dict)


def _torchvision_split(cls_name: str, root: PathLike, download: bool) -> Tensor:
    import torchvision.datasets as tvd

    ds = getattr(tvd, cls_name)(os.fspath(root), train=True, download=download)
    x = ds.data.to(torch.uint8).unsqueeze(1).float().div_(255.0)   # [N, 1, 28, 28]
    return order_and_split(x, ds.targets.to(torch.int64))


def load_osaka_data(root: PathLike, download: bool = False, n_pretrain: int = 900, n_val: int = 100,
                    n_support: int = 10, omniglot_invert: bool = False,
                    device: Union[str, torch.device] = "cpu") -> OSAKAData:
    """Load Omniglot, MNIST and FashionMNIST in the OSAKA layout (see the module docstring).

    Args:
        root: folder holding ``omniglot-py/``, ``MNIST/raw/`` and ``FashionMNIST/raw/`` (the
            layouts ``torchvision.datasets.{Omniglot, MNIST, FashionMNIST}`` download to).
        download: fetch missing datasets through torchvision.
        n_pretrain, n_val: Omniglot characters (in the fixed listing order: background
            alphabets, then evaluation alphabets, sorted by name) used for meta-training and
            meta-validation of the pre-training phase (OSAKA: 900 / 100).
        n_support: drawings per character in the support pool (OSAKA: 10 of 20).
        omniglot_invert: ``False`` (OSAKA) keeps Omniglot as loaded, white background = 1;
            ``True`` gives strokes = 1 like MNIST.
        device: where the tensors live (the stream's batches are drawn there).

    MNIST and FashionMNIST are their 60,000-image training sets (OSAKA ``train=True``) scaled
    to [0, 1]; the stream's Omniglot source is all characters (pre-training ones included).
    """
    from sparse_optim.data.omniglot import load_omniglot

    om = load_omniglot(root, download=download, image_size=28, num_train=0, num_val=0, seed=None,
                       rotate_train=False, rotate_eval=False, invert=omniglot_invert)
    chars = list(om.train) + list(om.val) + list(om.test)
    if n_pretrain + n_val > len(chars):
        raise ValueError(f"n_pretrain + n_val = {n_pretrain + n_val} > {len(chars)} Omniglot characters")
    n = min(len(c) for c in chars)
    if not 0 < n_support < n:
        raise ValueError(f"n_support must be in (0, {n}), got {n_support}")
    omni = torch.stack([c[:n] for c in chars]).float().to(device)
    pre, val = omni[:n_pretrain], omni[n_pretrain:n_pretrain + n_val]
    sources = {"omniglot": omni, "mnist": _torchvision_split("MNIST", root, download).to(device),
               "fashion": _torchvision_split("FashionMNIST", root, download).to(device)}
    return OSAKAData(sources, (pre[:, :n_support], pre[:, n_support:]), (val[:, :n_support], val[:, n_support:]),
                     info={name: list(t.shape) for name, t in sources.items()})


def sample_task_batch(pool: Tensor, classes: Tensor, n_shots: int, generator: torch.Generator) -> Tuple[Tensor, Tensor]:
    """``n_shots`` images (with replacement) of each class in ``classes``; labels ``0..len-1``."""
    n_per = pool.shape[1]
    idx = torch.randint(n_per, (len(classes), n_shots), generator=generator)
    x = pool[classes.view(-1, 1).to(pool.device), idx.to(pool.device)].flatten(0, 1)
    y = torch.arange(len(classes), device=pool.device).repeat_interleave(n_shots)
    return x, y


@dataclass
class OSAKAStep:
    """One step of the stream: images, labels, whether a new task started, its source."""

    x: Tensor
    y: Tensor
    task_switch: bool
    source: str
    classes: Tensor


class OSAKAStream:
    """The OSAKA stream (Caccia et al. 2020, Sec. 4 / code ``StreamDataset``), pre-drawn.

    With probability ``1 - p`` per step (and at step 0) a task switch: a source is drawn with
    ``probs`` and ``n_way`` distinct classes of it in random order. Every step shows
    ``n_shots`` images of each class of the current task. :attr:`schedule` holds the per-step
    ``(source index, classes, switch)`` so several methods can see the identical stream.

    Args:
        sources: name -> ``[n_classes, n_per_class, ...]`` tensor.
        steps: stream length (OSAKA: 10,000).
        p: stay probability (sparse-MAML Table 6: 0.98 and 0.9).
        n_way, n_shots: classes per task and images per class per step (OSAKA: 10, 5).
        probs: source probabilities (default :data:`OSAKA_SOURCE_PROBS`).
        seed: seed of the stream's generator.
    """

    def __init__(self, sources: Dict[str, Tensor], steps: int, p: float, n_way: int = 10, n_shots: int = 5,
                 probs: Optional[Sequence[float]] = None, seed: int = 0) -> None:
        if not 0.0 <= p <= 1.0:
            raise ValueError(f"p must be in [0, 1], got {p}")
        if steps < 1 or n_way < 1 or n_shots < 1:
            raise ValueError("steps, n_way and n_shots must be positive")
        self.names = list(sources)
        probs = list(OSAKA_SOURCE_PROBS if probs is None else probs)
        if len(probs) != len(self.names) or abs(sum(probs) - 1.0) > 1e-6 or min(probs) < 0:
            raise ValueError(f"probs must be {len(self.names)} non-negative numbers summing to 1, got {probs}")
        for name, t in sources.items():
            if t.shape[0] < n_way:
                raise ValueError(f"source {name!r} has {t.shape[0]} classes < n_way = {n_way}")
        self.sources, self.steps, self.p, self.n_way, self.n_shots = sources, steps, p, n_way, n_shots
        self.probs = probs
        self.seed = seed
        g = torch.Generator().manual_seed(seed)
        pr = torch.tensor(probs, dtype=torch.float64)
        self.schedule: List[Tuple[int, Tensor, bool]] = []
        src, classes = 0, torch.arange(n_way)
        for t in range(steps):
            switch = t == 0 or float(torch.rand((), generator=g, dtype=torch.float64)) > p
            if switch:
                src = int(torch.multinomial(pr, 1, generator=g))
                classes = torch.randperm(sources[self.names[src]].shape[0], generator=g)[:n_way]
            self.schedule.append((src, classes, switch))
        self._sample_seed = int(torch.randint(2 ** 31 - 1, (), generator=g))

    def __len__(self) -> int:
        return self.steps

    def __iter__(self) -> Iterator[OSAKAStep]:
        g = torch.Generator().manual_seed(self._sample_seed)
        for src, classes, switch in self.schedule:
            name = self.names[src]
            x, y = sample_task_batch(self.sources[name], classes, self.n_shots, g)
            yield OSAKAStep(x, y, switch, name, classes)

    def switch_steps(self) -> List[int]:
        """Steps ``t > 0`` at which a new task starts."""
        return [t for t, (_, _, s) in enumerate(self.schedule) if s and t > 0]


# ----------------------------------------------------------------------------- C-MAML pieces
def detect_task_boundary(loss_before: float, loss_after: float, threshold: float) -> bool:
    """OSAKA's task-boundary detection (C-MAML, Caccia et al. 2020 Sec. 5; code ``cl_tbd_thres``).

    ``loss_before = L(phi, B)`` is the incoming batch's loss under the current fast weights,
    ``loss_after`` its loss after adapting on ``B``. A boundary is declared iff
    ``loss_after + threshold <= loss_before``; the detection is off unless
    ``0 < threshold < 100`` (the code's convention).
    """
    if not (0.0 < threshold < 100.0):
        return False
    return loss_after + threshold <= loss_before


def update_modulation(loss: float, lam: float) -> float:
    """UM of C-MAML (OSAKA ``loss_smooth``): the meta-loss is multiplied by ``1 - exp(-lam L)``,
    so a task that is already solved (small ``L``) barely moves theta."""
    return 1.0 - math.exp(-lam * float(loss))


def inner_parameters(model: nn.Module) -> List[Tuple[str, nn.Parameter]]:
    """Named parameters adapted in the inner loop: all but BatchNorm affine parameters (as in
    OSAKA, where ``nn.BatchNorm2d`` is not a torchmeta ``MetaModule``)."""
    bn = {id(p) for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm) for p in m.parameters()}
    return [(n, p) for n, p in model.named_parameters() if id(p) not in bn]


def _loss_acc(model: nn.Module, x: Tensor, y: Tensor) -> Tuple[float, float]:
    with torch.no_grad():
        logits = model(x)
        return float(F.cross_entropy(logits, y)), float((logits.argmax(1) == y).float().mean())


class ContinualMAML:
    """C-MAML + UM + PAP (OSAKA ``observe_accumulate``; sparse-MAML supplement Algorithm 2).

    The model holds the fast weights phi of the inner parameters (conv / linear) and the shared
    BatchNorm parameters; the slow weights theta are kept apart. One :meth:`observe` on the
    incoming batch ``B``:

    1. predict ``B`` with phi (the online accuracy), ``l_before = L(phi, B)``;
    2. adapt: ``phi <- U^K(theta, B)`` right after a detected boundary, else ``phi <- U^K(phi, B)``
       (prolonged adaptation phase, PAP); ``U`` is the inner rule of ``kind``, ``K = num_steps``;
    3. boundary iff ``L(phi, B) + tbd_threshold <= l_before`` (:func:`detect_task_boundary`);
    4. on a boundary (with a non-empty buffer) or a full buffer: meta-update of theta from the
       buffer ``R`` (first half of its batches support, second half query, paired;
       first-order gradient of ``L(U^K(theta, R_t^i), R_v^i)`` averaged over pairs, weighted
       by UM :func:`update_modulation`) with Adam, and of the meta-parameters of the inner
       rule (rates / mask logits) by their first-order rule; ``R <- {}``. Otherwise ``R <- R + B``.

    Inner rules (``kind``): ``"cmaml"`` learned per-tensor scalar rates (MetaSGD, tied; see the
    module docstring), ``"cmaml_fixed"`` plain SGD at ``alpha``, ``"sparse_cmaml"`` MaskedSGD
    ``alpha * 1[m >= 0] * g`` (sparse-MAML Eq. 4, masks Kaiming-initialised, 50 % sparse),
    ``"sparse_relu_cmaml"`` RectifiedLRSGD ``relu(m) * g`` (m uniform in ``rate_init_range``).

    Args:
        model: the network (e.g. the 4-conv-64 :class:`sparse_optim.models.ConvNet4`).
        kind: one of :data:`CMAML_KINDS`.
        alpha: inner learning rate alpha_0 (initial rate for ``"cmaml"``).
        gamma: learning rate (Adam) of the inner rule's meta-parameters.
        meta_lr: Adam learning rate of theta.
        num_steps: inner steps per adaptation.
        tbd_threshold: boundary threshold (``<= 0`` or ``>= 100``: detection off).
        um_lambda: UM lambda (large: no modulation).
        max_buffer: the buffer is consumed when it holds more batches than this (OSAKA:
            ``2 x batch size`` = 100).
    """

    def __init__(self, model: nn.Module, kind: str = "sparse_cmaml", alpha: float = 0.1, gamma: float = 0.01,
                 meta_lr: float = 1e-4, num_steps: int = 8, tbd_threshold: float = 2.5, um_lambda: float = 0.25,
                 max_buffer: int = 100, rate_init_range: Tuple[float, float] = (0.005, 0.1)) -> None:
        if kind not in CMAML_KINDS:
            raise ValueError(f"kind must be one of {CMAML_KINDS}, got {kind!r}")
        if num_steps < 1:
            raise ValueError("num_steps must be >= 1")
        self.model, self.kind, self.num_steps = model, kind, num_steps
        self.tbd_threshold, self.um_lambda, self.max_buffer = tbd_threshold, um_lambda, max_buffer
        named = inner_parameters(model)
        self.inner = [p for _, p in named]
        inner_ids = {id(p) for p in self.inner}
        self.shared = [p for p in model.parameters() if id(p) not in inner_ids]
        if kind == "cmaml_fixed":
            self.opt: torch.optim.Optimizer = torch.optim.SGD(self.inner, lr=alpha)
        elif kind == "cmaml":
            self.opt = so.MetaSGD(named, lr=alpha, rate_lr=gamma)
        elif kind == "sparse_cmaml":
            self.opt = so.MaskedSGD(named, lr=alpha, mask_lr=gamma, mask_init="kaiming", init_sparsity=0.5)
        else:
            self.opt = so.RectifiedLRSGD(named, lr=0.1, rate_lr=gamma, rate_init="uniform",
                                         rate_init_range=rate_init_range, straight_through=True)
        self.meta = list(self.opt.meta_parameters()) if kind != "cmaml_fixed" else []
        self.theta = [p.detach().clone().requires_grad_(True) for p in self.inner]
        groups: List[Dict[str, Any]] = [{"params": self.theta + self.shared, "lr": meta_lr}]
        if self.meta:
            groups.append({"params": self.meta, "lr": gamma})
        self.outer = torch.optim.Adam(groups)
        self.buffer: List[Tuple[Tensor, Tensor]] = []
        self.started = False
        self.last_tbd = False
        self.detected: List[int] = []
        self.um: List[float] = []
        self.t = 0

    # -- inner loop ------------------------------------------------------------------
    def _adapt(self, x: Tensor, y: Tensor) -> None:
        for _ in range(self.num_steps):
            self.opt.zero_grad(set_to_none=True)
            F.cross_entropy(self.model(x), y).backward()
            self.opt.step()
        self.opt.zero_grad(set_to_none=True)

    def _load_theta(self) -> None:
        with torch.no_grad():
            for p, t in zip(self.inner, self.theta):
                p.copy_(t)

    def _episode(self):
        if isinstance(self.opt, so.MetaOptimizer):
            return self.opt.episode()
        return so.first_order_episode(self.inner, self.opt)

    def meta_update(self, pairs: Sequence[Tuple[Tensor, Tensor, Tensor, Tensor]], modulate: bool = True) -> float:
        """One outer step from ``(x_support, y_support, x_query, y_query)`` pairs: first-order
        gradient of the mean query loss after ``num_steps`` inner steps from theta, times UM
        when ``modulate``; Adam on theta, the BatchNorm parameters and the meta-parameters.
        The model's fast weights are left as they were. Returns the mean query loss."""
        if not pairs:
            raise ValueError("meta_update needs at least one (support, query) pair")
        theta_grads = [torch.zeros_like(t) for t in self.theta]
        shared_grads = [torch.zeros_like(p) for p in self.shared]
        for m in self.meta:
            m.grad = None
        for p in self.model.parameters():
            p.grad = None
        losses = []
        for xs, ys, xq, yq in pairs:
            with self._episode() as ep:                       # phi restored on exit
                self._load_theta()
                self._adapt(xs, ys)                            # phi' = U^K(theta, R_t)
                for p in self.model.parameters():
                    p.grad = None
                val = F.cross_entropy(self.model(xq), yq)      # L(phi', R_v)
                val.backward()
                if isinstance(self.opt, so.MetaOptimizer):
                    self.opt.meta_backward()
                else:
                    ep.record_outer_gradients()
                for acc, p in zip(shared_grads, self.shared):
                    if p.grad is not None:
                        acc.add_(p.grad)
                        p.grad = None
            for acc, p in zip(theta_grads, self.inner):       # episode hands back the outer grads
                if p.grad is not None:
                    acc.add_(p.grad)
                p.grad = None
            losses.append(float(val.detach()))
        loss = float(np.mean(losses))
        w = update_modulation(loss, self.um_lambda) if modulate else 1.0
        self.um.append(w)
        scale = w / len(pairs)
        for t, g in zip(self.theta, theta_grads):
            t.grad = g.mul_(scale)
        for p, g in zip(self.shared, shared_grads):
            p.grad = g.mul_(scale)
        for m in self.meta:
            if m.grad is not None:
                m.grad.mul_(scale)
                if self.kind == "cmaml":   # tie: one scalar rate per tensor (OSAKA per_param_step_size)
                    m.grad.fill_(float(m.grad.sum()))
        self.outer.step()
        self.outer.zero_grad(set_to_none=True)
        self.opt.zero_grad(set_to_none=True)
        return loss

    # -- pre-training (MAML on Omniglot) --------------------------------------------------
    def pretrain_step(self, tasks: Sequence[Tuple[Tensor, Tensor, Tensor, Tensor]]) -> float:
        """One MAML meta-batch of the pre-training phase (OSAKA ``train_iter``; no UM)."""
        loss = self.meta_update(tasks, modulate=False)
        self.um.pop()
        self._load_theta()
        return loss

    def evaluate_tasks(self, tasks: Sequence[Tuple[Tensor, Tensor, Tensor, Tensor]]) -> float:
        """Mean query accuracy after adapting from theta on each support set (theta unchanged)."""
        accs = []
        for xs, ys, xq, yq in tasks:
            self._load_theta()
            self._adapt(xs, ys)
            accs.append(_loss_acc(self.model, xq, yq)[1])
        self._load_theta()
        return float(np.mean(accs))

    # -- the stream --------------------------------------------------------------------
    def _consume_buffer(self) -> None:
        buf = self.buffer if len(self.buffer) > 1 else self.buffer * 2
        half = int(math.ceil(len(buf) / 2))
        pairs = [(xs, ys, xq, yq) for (xs, ys), (xq, yq) in zip(buf[:half], buf[half:])]
        self.meta_update(pairs, modulate=True)
        self.buffer = []

    def observe(self, x: Tensor, y: Tensor) -> Dict[str, Any]:
        """Predict the batch with phi, then learn from it (one C-MAML + UM + PAP step)."""
        t, self.t = self.t, self.t + 1
        loss_before, acc = _loss_acc(self.model, x, y)
        if not self.started:                 # phi <- U(theta, B); OSAKA's first step
            self.started = True
            self._load_theta()
            self._adapt(x, y)
            self.buffer.append((x, y))
            return {"accuracy": acc, "loss": loss_before, "tbd": False}
        if self.last_tbd:
            self._load_theta()               # a new task: restart from theta
        self._adapt(x, y)                    # PAP: otherwise keep adapting phi
        loss_after, _ = _loss_acc(self.model, x, y)
        tbd = detect_task_boundary(loss_before, loss_after, self.tbd_threshold)
        if (tbd and self.buffer) or len(self.buffer) > self.max_buffer:
            self._consume_buffer()
        else:
            self.buffer.append((x, y))
        if tbd:
            self.detected.append(t)
        self.last_tbd = tbd
        return {"accuracy": acc, "loss": loss_before, "tbd": tbd}

    def sync_phi(self) -> None:
        """Set the fast weights to theta (e.g. after pre-training)."""
        self._load_theta()

    def rates(self) -> Optional[Dict[str, float]]:
        """``"cmaml"``: the learned scalar rate of every inner tensor."""
        if self.kind != "cmaml":
            return None
        names = [n for n, _ in inner_parameters(self.model)]
        return {n: float(m.detach().flatten()[0]) for n, m in zip(names, self.meta)}

    def sparsity(self) -> Optional[Dict[str, Any]]:
        """Gradient sparsity of the masked / rectified rules (None otherwise)."""
        if self.kind not in ("sparse_cmaml", "sparse_relu_cmaml"):
            return None
        s = self.opt.sparsity()
        return {"overall": s["overall"], "per_parameter": dict(s["per_parameter"])}


class FineTuneLearner:
    """Fine-tuning baseline of OSAKA (``fine_tuning.yaml``: no inner adaptation, no meta-learning at
    stream time): predict each batch with theta, then one Adam step on its loss."""

    def __init__(self, model: nn.Module, lr: float = 1e-3) -> None:
        self.model = model
        self.opt = torch.optim.Adam(model.parameters(), lr=lr)
        self.detected: List[int] = []

    def observe(self, x: Tensor, y: Tensor) -> Dict[str, Any]:
        self.opt.zero_grad(set_to_none=True)
        logits = self.model(x)
        loss = F.cross_entropy(logits, y)
        acc = float((logits.detach().argmax(1) == y).float().mean())
        loss.backward()
        self.opt.step()
        return {"accuracy": acc, "loss": float(loss.detach()), "tbd": False}

    def sparsity(self) -> None:
        return None

    def rates(self) -> None:
        return None


def sample_pretrain_tasks(pools: Tuple[Tensor, Tensor], n_tasks: int, n_way: int, n_shots: int,
                          n_query: int, generator: torch.Generator) -> List[Tuple[Tensor, Tensor, Tensor, Tensor]]:
    """OSAKA ``MetaDataset``: ``n_tasks`` tasks of ``n_way`` random classes, ``n_shots`` support
    images from the support pool and ``n_query`` query images from the query pool per class
    (with replacement)."""
    support, query = pools
    tasks = []
    for _ in range(n_tasks):
        classes = torch.randperm(support.shape[0], generator=generator)[:n_way]
        xs, ys = sample_task_batch(support, classes, n_shots, generator)
        xq, yq = sample_task_batch(query, classes, n_query, generator)
        tasks.append((xs, ys, xq, yq))
    return tasks
