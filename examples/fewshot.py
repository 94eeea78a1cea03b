"""Few-shot image classification: the sparse-MAML family and the KFO meta-optimizers, with the
papers' protocols as named presets (``--list-presets``; one command per table / figure).

    python examples/fewshot.py --list-presets
    python examples/fewshot.py --preset sparse-maml-table1-1shot --data-root DATA
    python examples/fewshot.py --preset offline-digits-sparse-family          # no download needed

Protocol of every run (sparse-MAML supplement B.1.1, KFO A.1): meta-train for ``iterations``
meta-batches; every ``val_every`` iterations evaluate on ``val_episodes`` tasks of the validation
classes (the same tasks each time, the test protocol: ``test_steps`` inner steps); keep the best
(``ensemble`` > 1: the k best) checkpoints; at the end test the best once on ``test_episodes``
tasks of the test classes (mean and 95% CI = 1.96 s / sqrt(n) over tasks), the ensemble of the
k best (softmax probabilities averaged over the members), and each ``cross_domain`` target.

Methods. First order (episodes that snapshot and restore theta, sparse-MAML Sec. 3):

* ``fomaml`` first-order MAML (``torch.optim.SGD`` in :func:`sparse_optim.first_order_episode`);
  ``anil`` the same on the head only; ``boil`` the same on everything but the head (BOIL);
* ``sparse-maml`` :class:`sparse_optim.MaskedSGD` (Eq. 4-5); ``sparse-relu-maml``
  :class:`sparse_optim.RectifiedLRSGD`; ``sparse-maml-plus`` :class:`sparse_optim.StochasticMaskedSGD`
  (supplement Eq. 11);
* ``exp-maml`` learning rates ``exp(m)`` (sparse-MAML Sec. 3.3): :class:`sparse_optim.MetaSGD` whose
  rates are set to ``exp(m)`` before each task; its first-order rate gradient is chained to ``m``
  (``dL/dm = exp(m) dL/dalpha``), as the official code's ``--meta_exp`` (first order);
* ``two-phase`` (Table S4): FOMAML for ``phase_iterations``, then masks (MaskedSGD) with theta fixed.

Second order (``torch.func.functional_call``, the library's functional rules): ``maml``;
``meta-sgd`` (rates of either sign, :func:`sparse_optim.functional.meta_sgd`); ``meta-curvature``
(KLin without inner adaptation of the factors); ``klin`` (KLin, factors adapted in the inner loop,
KFO Table 1); ``kfc`` (``kfc_depth`` Kronecker layers, KFO Algorithm 1 / Eq. 4); ``cfc`` (low-rank
Cholesky, ``KroneckerSGD(variant="cholesky")``'s rule, KFO A.2.3 Eq. 8, rank ``cfc_rank``);
``prune`` (MAML, then weights with ``|w| < prune_threshold`` zeroed after adaptation, KFO Table
A1); ``upper-bound`` (no meta-learning: a fresh model trained on each test task's support set,
KFO Table 2).

Official sparse-MAML choices used by the sparse presets (``mask_init="official"``,
``mask_grad="official"``): mask logits Kaiming-uniform (``nn.init.kaiming_uniform_``, bound
sqrt(6 / fan_in); U(-0.5, 0.5) for vectors), mean-centred, plus a shift that freezes the fraction
``init_sparsity`` (``init_shift`` sets the official absolute shift instead); the official mask
``0.5 (sign(m) + 1)`` has half our straight-through gradient, so the step-gate meta-gradients are
halved (this changes nothing under Adam, and matters for sparse-MAML+'s SGD + Nesterov); the
rectified rates keep the identity backward of the official ``ReluStraightThrough``.

Outputs under ``--out`` (default ``results/fewshot/<preset>``): ``runs/<run>.json`` per run,
``summary.json`` and the plots over every run in ``runs/`` (re-running a subset of methods adds
to it, nothing stale is left), ``checkpoints/<run>.pt`` (``--resume``).
"""
from __future__ import annotations

import argparse
import copy
import itertools
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

sys.path.insert(0, str(Path(__file__).resolve().parent))
import fewshot_presets  # noqa: E402

import sparse_optim as so  # noqa: E402
from sparse_optim.data import Episode, FewShotSampler  # noqa: E402
from sparse_optim.distributed import all_reduce_gradients  # noqa: E402
from sparse_optim.functional import adapted_factors, meta_sgd  # noqa: E402
from sparse_optim.functional.kronecker import init_factors, kronecker_sgd  # noqa: E402
from sparse_optim.models import SCNN, ConvNet, ConvNet4, LinearNet, ResNet12, count_parameters  # noqa: E402

FIRST_ORDER = ("fomaml", "anil", "boil", "sparse-maml", "sparse-relu-maml", "sparse-maml-plus", "exp-maml",
               "two-phase")
SECOND_ORDER = ("maml", "meta-sgd", "meta-curvature", "klin", "kfc", "cfc", "prune")
METHODS = FIRST_ORDER + SECOND_ORDER + ("upper-bound",)
SPARSE_FAMILY = ("fomaml", "anil", "sparse-maml", "sparse-relu-maml", "sparse-maml-plus")   # the former default
KFO_FAMILY = ("maml", "meta-sgd", "meta-curvature", "kfc")
MASKED = ("sparse-maml", "sparse-maml-plus", "two-phase")
LABELS = {"fomaml": "FOMAML", "anil": "ANIL", "boil": "BOIL", "sparse-maml": "sparse-MAML",
          "sparse-relu-maml": "sparse-ReLU-MAML", "sparse-maml-plus": "sparse-MAML+", "exp-maml": "exp-MAML",
          "two-phase": "two-phase (MAML, then masks)", "maml": "MAML", "meta-sgd": "Meta-SGD",
          "meta-curvature": "Meta-Curvature", "klin": "KLin", "kfc": "KFC", "cfc": "CFC", "prune": "PRUNE",
          "upper-bound": "upper bound"}
# inner learning rate defaults without a preset: supplement Table S2 (1-shot / 5-shot), alpha = 0.1, KFO A.1.2
INNER_LR = {"sparse-maml": (0.25, 0.25), "sparse-relu-maml": (0.25, 0.1), "sparse-maml-plus": (0.1, 0.1),
            "two-phase": (0.25, 0.25)}
DATASETS = ("mnist-offline", "synthetic", "kfo-synthetic", "omniglot", "cifar-fs", "mini-imagenet",
            "tiered-imagenet", "cub", "cars")
MODELS = ("convnet4", "scnn", "convnet", "resnet12", "lr", "linnet")

#: Every field of a run's configuration, with the values used when neither a preset nor a flag sets it.
DEFAULTS: Dict[str, Any] = dict(
    dataset="mnist-offline", image_size=None, normalize="none", ways=5, shots=1, queries=5, test_queries=None,
    meta_batch=2, iterations=200, model="convnet4", hidden=64, num_layers=4, max_pool=True, global_pool=False,
    resnet_size="small", resnet_channels=None, linnet_hidden=[64, 64, 64], bias=True, model_init="kaiming",
    transductive_bn=True, inner_bn=True, method="sparse-maml", inner_lr=None, inner_steps=None, test_steps=None,
    meta_lr=None, meta_param_lr=None, outer_optimizer="default", clamp_outer=None, init_sparsity=0.5,
    init_shift=None, mask_init="library", mask_grad="library", rate_init="constant", noise_dim=64, kfc_depth=4,
    kfc_normalize=None, cfc_rank=1, cfc_depth=1, prune_threshold=None, phase_iterations=None,
    upper_bound_steps=1000, omniglot_train=1100, omniglot_val=100, val_every=50, val_episodes=30, test_episodes=200, ensemble=1, cross_domain=[],
    seed=0,
)


# ============================================================================ configuration
def resolve(cfg: Dict[str, Any]) -> Dict[str, Any]:
    """Fill the method-dependent defaults of a run configuration."""
    cfg = dict(DEFAULTS, **cfg)
    m = cfg["method"]
    if m not in METHODS:
        raise SystemExit(f"unknown method {m!r}; choose from {METHODS}")
    first = m in FIRST_ORDER
    if cfg["inner_lr"] is None:
        lr = INNER_LR.get(m, 0.1 if first else 0.5)
        cfg["inner_lr"] = lr[0 if cfg["shots"] == 1 else 1] if isinstance(lr, tuple) else lr
    if cfg["inner_steps"] is None:
        cfg["inner_steps"] = 5 if first else 4
    ts = cfg["test_steps"]
    cfg["test_steps"] = (cfg["inner_steps"] if ts == "same" else
                         (2 * cfg["inner_steps"] if first else cfg["inner_steps"]) if ts is None else int(ts))
    if cfg["meta_lr"] is None:
        cfg["meta_lr"] = 1e-3 if first else 3e-3
    if cfg["meta_param_lr"] is None:
        cfg["meta_param_lr"] = 0.0075 if first else cfg["meta_lr"]
    if cfg["test_queries"] is None:
        cfg["test_queries"] = cfg["queries"]
    if cfg["kfc_normalize"] is None:
        cfg["kfc_normalize"] = m == "kfc"
    if m == "two-phase" and cfg["phase_iterations"] is None:
        cfg["phase_iterations"] = cfg["iterations"]
    if m == "prune" and cfg["prune_threshold"] is None:
        raise SystemExit("method prune needs --prune-threshold")
    cfg["cross_domain"] = [list(t) for t in cfg["cross_domain"]]
    return cfg


def run_name(cfg: Dict[str, Any]) -> str:
    model = cfg["model"]
    if model in ("convnet4", "scnn", "convnet"):
        model += (f"L{cfg['num_layers']}" if model == "convnet" else "") + f"h{cfg['hidden']}"
    elif model == "linnet":
        model += "x".join(str(h) for h in cfg["linnet_hidden"])
    elif model == "resnet12":
        model += cfg["resnet_size"] if cfg["resnet_channels"] is None else "c" + "x".join(map(str, cfg["resnet_channels"]))
    tags = [cfg["method"], model, f"{cfg['ways']}w{cfg['shots']}s", f"lr{cfg['inner_lr']:g}",
            f"K{cfg['inner_steps']}-{cfg['test_steps']}"]
    if cfg["method"] in MASKED:
        tags.append(f"sp{cfg['init_sparsity']:g}")
    if cfg["method"] == "cfc":
        tags.append(f"r{cfg['cfc_rank']}")
    if not cfg["bias"]:
        tags.append("nobias")
    if not cfg["transductive_bn"]:
        tags.append("ntbn")
    return "_".join(tags + [f"s{cfg['seed']}"])


# ============================================================================ data
_DATA_CACHE: Dict[Tuple, Dict[str, Any]] = {}
_SUBDIRS = {"omniglot": ["omniglot"], "cifar-fs": ["cifar-fs", "cifar100"], "mini-imagenet": ["mini-imagenet", "miniImageNet"],
            "tiered-imagenet": ["tiered-imagenet", "tieredImageNet"], "cub": ["cub", "CUB"],
            "cars": ["cars", "stanford-cars"]}


def dataset_root(name: str, data_root: Optional[str]) -> Path:
    """``DATA/<dataset folder>`` if it exists (several datasets under one ``--data-root``), else ``DATA``."""
    if data_root is None:
        raise SystemExit(f"--dataset {name} needs --data-root")
    root = Path(data_root)
    for sub in _SUBDIRS.get(name, []):
        if (root / sub).is_dir():
            return root / sub
    return root


def load_data(name: str, data_root: Optional[str], image_size: Optional[int] = None,
              test_only: bool = False, omniglot_split: Tuple[int, int] = (1100, 100)) -> Dict[str, Any]:
    """``{train, val, test}`` per-class uint8 / float tensors, channels, image size and provenance."""
    key = (name, data_root, image_size, test_only, tuple(omniglot_split))
    if key in _DATA_CACHE:
        return _DATA_CACHE[key]
    if name == "mnist-offline":
        s = so.data.load_mnist_fewshot_offline(seed=0)
        # 10 digits cannot give three class-disjoint 5-way splits: validation = the first 250 images of
        # every meta-test digit, test = the other 250 (disjoint images, shared classes).
        out = dict(train=s.train, val=[t[:250] for t in s.test], test=[t[250:] for t in s.test], channels=1, size=28,
                   info=dict(s.info, validation="images 0-249 of the meta-test digits; test: images 250-499"))
    elif name == "synthetic":
        c = so.data.synthetic_fewshot(num_classes=24, samples_per_class=20, image_size=image_size or 28, seed=0)
        out = dict(train=c[:12], val=c[12:18], test=c[18:], channels=1, size=image_size or 28,
                   info={"dataset": "synthetic", "substitute": True})
    elif name == "kfo-synthetic":
        out = dict(train=None, val=None, test=None, channels=1, size=100, info={"dataset": "kfo-synthetic", "dim": 100})
    else:
        root = dataset_root(name, data_root)
        splits = ("test",) if test_only else ("train", "val", "test")
        if name == "omniglot":
            s = so.data.load_omniglot(root, download=True, image_size=image_size or 28, dtype=torch.uint8,
                                      num_train=omniglot_split[0], num_val=omniglot_split[1])
            channels, size = 1, image_size or 28
        elif name == "cifar-fs":
            s = so.data.load_cifar_fs(root, download=True, dtype=torch.uint8)
            channels, size = 3, 32
            if image_size not in (None, 32):
                resize = lambda ts: [F.interpolate(t.float(), size=image_size, mode="bilinear").round().clamp(0, 255)  # noqa
                                     .to(torch.uint8) for t in ts]
                s.train, s.val, s.test, size = resize(s.train), resize(s.val), resize(s.test), image_size
        elif name == "mini-imagenet":
            s = so.data.load_mini_imagenet(root, image_size=image_size or 84, dtype=torch.uint8, num_workers=4,
                                           splits=splits)
            channels, size = 3, image_size or 84
        elif name == "tiered-imagenet":
            s = so.data.load_tiered_imagenet(root, image_size=image_size or 84, dtype=torch.uint8, splits=splits,
                                             num_workers=4)
            channels, size = 3, image_size or 84
        elif name == "cub":
            s = so.data.load_cub(root, image_size=image_size or 84, dtype=torch.uint8, splits=splits, num_workers=4)
            channels, size = 3, image_size or 84
        elif name == "cars":
            s = so.data.load_cars(root, image_size=image_size or 84, dtype=torch.uint8, splits=splits, num_workers=4)
            channels, size = 3, image_size or 84
        else:
            raise SystemExit(f"unknown dataset {name!r}")
        if not test_only and not s.val:
            raise SystemExit(f"{name}: no validation classes found (model selection needs them)")
        out = dict(train=s.train, val=s.val, test=s.test, channels=channels, size=size, info=dict(s.info, dataset=name))
    _DATA_CACHE[key] = out
    return out


_IMAGENET_MEAN = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
_IMAGENET_STD = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)


def make_transform(cfg: Dict[str, Any]):
    def transform(x: Tensor) -> Tensor:
        x = so.data.uint8_to_float(x)
        if cfg["normalize"] == "imagenet" and x.dim() == 4 and x.shape[1] == 3:
            x = (x - _IMAGENET_MEAN) / _IMAGENET_STD
        return x
    return transform


class BinaryTaskSampler:
    """KFO synthetic binary tasks (A.1.1): ``w ~ N(0, I_d)``, points ``x ~ N(0, I_d)`` labelled
    ``1[w^T x > 0]``; ``support`` adaptation points and ``query`` held-out points per task."""

    def __init__(self, dim: int, support: int, query: int, seed: int) -> None:
        self.dim, self.support, self.query = dim, support, query
        self.generator = torch.Generator().manual_seed(seed)

    def sample(self) -> Episode:
        w = torch.randn(self.dim, generator=self.generator)
        x = torch.randn(self.support + self.query, self.dim, generator=self.generator)
        y = (x @ w > 0).long()
        s = self.support
        return Episode(x[:s], y[:s], x[s:], y[s:])


def make_sampler(classes, cfg: Dict[str, Any], seed: int, queries: Optional[int] = None):
    q = cfg["queries"] if queries is None else queries
    if cfg["dataset"] == "kfo-synthetic":
        return BinaryTaskSampler(100, cfg["shots"], q, seed)
    return FewShotSampler(classes, cfg["ways"], cfg["shots"], q, seed=seed, transform=make_transform(cfg))


# ============================================================================ models
def build_model(cfg: Dict[str, Any], channels: int, size: int) -> nn.Module:
    kind, ways = cfg["model"], cfg["ways"]
    track = not cfg["transductive_bn"]
    conv_init = cfg["model_init"] if cfg["model_init"] in ("kaiming", "default") else "default"
    common = dict(in_channels=channels, num_classes=ways, hidden=cfg["hidden"], image_size=size,
                  max_pool=cfg["max_pool"], global_avg_pool=cfg["global_pool"], bn_track_running_stats=track,
                  bias=cfg["bias"], init=conv_init)
    if kind == "convnet4":
        return ConvNet4(**common)
    if kind == "scnn":
        return SCNN(**common)
    if kind == "convnet":   # KFO Fig. 3: n blocks, the FC input size of the 4-block net
        spatial4 = size
        if cfg["max_pool"]:
            for _ in range(4):
                spatial4 //= 2
        return ConvNet(num_blocks=cfg["num_layers"], fc_spatial=None if cfg["global_pool"] else spatial4, **common)
    if kind == "resnet12":
        ch = cfg["resnet_channels"] or cfg["resnet_size"]
        return ResNet12(channels, ways, channels=ch, bn_track_running_stats=track,
                        init="xavier" if cfg["model_init"] in ("xavier", "kaiming") else "default")
    features = 100 if cfg["dataset"] == "kfo-synthetic" else channels * size * size
    if kind == "lr":
        return LinearNet(features, ways, (), bias=cfg["bias"])
    if kind == "linnet":
        return LinearNet(features, ways, tuple(cfg["linnet_hidden"]), bias=cfg["bias"])
    raise SystemExit(f"unknown model {kind!r}")


def is_norm(name: str) -> bool:
    return ".norm." in name or ".bn" in name or ".downsample.1." in name


def inner_named(model: nn.Module, cfg: Dict[str, Any], method: str) -> List[Tuple[str, Tensor]]:
    """Parameters adapted in the inner loop: ANIL the head, BOIL all but the head; BatchNorm
    excluded with ``inner_bn=False`` (official ``--no_bn_in_inner_loop``)."""
    named = list(model.named_parameters())
    if not cfg["inner_bn"]:
        named = [(n, p) for n, p in named if not is_norm(n)]
    if method == "anil":
        named = [(n, p) for n, p in named if n.startswith("head.")]
    elif method == "boil":
        named = [(n, p) for n, p in named if not n.startswith("head.")]
    return named


def official_mask_init_(opt, cfg: Dict[str, Any]) -> None:
    """Official sparse-MAML mask logits (models.GradientMask): ``kaiming_uniform_`` for weights
    (``mask_init="official"``; U(-0.5, 0.5) for vectors, and for all with ``"official-uniform"``),
    minus the mean, plus a shift: ``init_shift`` if given, else the one freezing ``init_sparsity``
    of the coordinates (b (1 - 2 s) for a centred U(-b, b)). Generated sparse-MAML+ logits keep
    the library's initialisation."""
    s = cfg["init_sparsity"]
    with torch.no_grad():
        for name, m in opt.named_meta_parameters():
            if not name.endswith(".mask_logits"):
                continue
            if m.dim() > 1 and cfg["mask_init"] == "official":
                nn.init.kaiming_uniform_(m)
                bound = math.sqrt(6.0 / (m[0].numel()))
            else:
                m.uniform_(-0.5, 0.5)
                bound = 0.5
            m.sub_(m.mean())
            m.add_(cfg["init_shift"] if cfg["init_shift"] is not None else bound * (1 - 2 * s))


def _snapshot_buffers(model: nn.Module):
    return [b.detach().clone() for b in model.buffers()]


def _restore_buffers(model: nn.Module, saved) -> None:
    with torch.no_grad():
        for b, v in zip(model.buffers(), saved):
            b.copy_(v)


# ============================================================================ first-order family
class FirstOrderLearner:
    """First-order inner loops in an episode (theta snapshotted and restored): FOMAML / ANIL /
    BOIL with ``torch.optim.SGD`` in :func:`sparse_optim.first_order_episode`, the gated methods
    with the meta-optimizer's ``episode()`` / ``meta_backward()`` (first-order meta-gradients)."""

    def __init__(self, method: str, model: nn.Module, cfg: Dict[str, Any]) -> None:
        self.method, self.model, self.cfg = method, model, cfg
        lr = cfg["inner_lr"]
        named = inner_named(model, cfg, method)
        self.inner_params = [p for _, p in named]
        self.plain = method in ("fomaml", "anil", "boil")
        self.exp_logits: List[Tensor] = []
        self.grad_scale = 1.0
        if self.plain:
            self.opt = torch.optim.SGD(self.inner_params, lr=lr)
        elif method == "sparse-maml":
            self.opt = so.MaskedSGD(named, lr=lr, init_sparsity=cfg["init_sparsity"])
        elif method == "sparse-relu-maml":
            self.opt = so.RectifiedLRSGD(named, lr=lr, rate_init=cfg["rate_init"])
        elif method == "sparse-maml-plus":
            self.opt = so.StochasticMaskedSGD(named, lr=lr, init_sparsity=cfg["init_sparsity"],
                                              noise_dim=cfg["noise_dim"])
        elif method == "exp-maml":
            self.opt = so.MetaSGD(named, lr=lr)
            self.exp_logits = [torch.full_like(r, math.log(lr)).requires_grad_(True) for r in self.opt.meta_parameters()]
        else:
            raise ValueError(method)
        if method in ("sparse-maml", "sparse-maml-plus"):
            if cfg["mask_init"].startswith("official"):
                official_mask_init_(self.opt, cfg)
            if cfg["mask_grad"] == "official":
                self.grad_scale = 0.5    # d/dm 0.5 (sign(m) + 1) with identity backward
        self.meta_params: List[Tensor] = [] if self.plain else (self.exp_logits or self.opt.meta_parameters())
        optimizer = cfg["outer_optimizer"]
        if optimizer == "default":
            optimizer = "sgd-nesterov" if method == "sparse-maml-plus" else "adam"
        groups = [{"params": list(model.parameters()), "lr": cfg["meta_lr"]}]
        if self.meta_params:
            groups.append({"params": self.meta_params, "lr": cfg["meta_param_lr"]})
        self.outer_name = optimizer
        self.outer = (torch.optim.Adam(groups) if optimizer == "adam" else
                      torch.optim.SGD(groups, momentum=0.9, nesterov=True) if optimizer == "sgd-nesterov" else
                      torch.optim.SGD(groups))

    def _forward_support(self, x: Tensor) -> Tensor:
        if not self.cfg["transductive_bn"]:
            self.model.train()   # non-transductive BN: the inner loop updates the running statistics
        return self.model(x)

    def _forward_query(self, x: Tensor) -> Tensor:
        if not self.cfg["transductive_bn"]:
            self.model.eval()    # ... and the queries are normalised with them
            try:
                return self.model(x)
            finally:
                self.model.train()
        return self.model(x)

    def _inner(self, x: Tensor, y: Tensor, steps: int) -> None:
        for _ in range(steps):
            loss = F.cross_entropy(self._forward_support(x), y)
            grads = torch.autograd.grad(loss, self.inner_params)
            for p, g in zip(self.inner_params, grads):
                p.grad = g
            self.opt.step()
        for p in self.inner_params:
            p.grad = None

    def _episode(self):
        if self.exp_logits:
            with torch.no_grad():
                for r, m in zip(self.opt.meta_parameters(), self.exp_logits):
                    r.copy_(m.exp())
        return so.first_order_episode(self.inner_params, self.opt) if self.plain else self.opt.episode()

    def train_step(self, episodes, steps: int) -> Tuple[float, float]:
        self.outer.zero_grad(set_to_none=True)
        losses, accs = [], []
        for ep in episodes:
            with self._episode() as episode:
                self._inner(ep.support_x, ep.support_y, steps)
                logits = self._forward_query(ep.query_x)
                loss = F.cross_entropy(logits, ep.query_y)
                loss.backward()             # outer gradient at the adapted weights (summed over tasks)
                if self.plain:
                    episode.record_outer_gradients()   # first-order theta-gradient (sparse-MAML Eq. 9)
                else:
                    self.opt.meta_backward()           # first-order meta-gradients (Eq. 5 / 9 / 10)
            if self.exp_logits:   # chain rule to the exp-MAML logits: dL/dm = exp(m) dL/dalpha
                for r, m in zip(self.opt.meta_parameters(), self.exp_logits):
                    if r.grad is not None:
                        g = r.grad * m.detach().exp()
                        m.grad = g if m.grad is None else m.grad + g
                        r.grad = None
            losses.append(loss.item())
            accs.append((logits.argmax(1) == ep.query_y).float().mean().item())
        self._finish_grads()
        self.outer.step()
        return float(np.mean(losses)), float(np.mean(accs))

    def _finish_grads(self) -> None:
        if self.grad_scale != 1.0:
            for t in self.meta_params:
                if t.grad is not None:
                    t.grad.mul_(self.grad_scale)
        if dist.is_initialized():   # --distributed: tasks split across ranks, average the gradients
            all_reduce_gradients(list(self.model.parameters()) + self.meta_params)
        if self.cfg["clamp_outer"]:
            c = float(self.cfg["clamp_outer"])
            for p in self.model.parameters():
                if p.grad is not None:
                    p.grad.clamp_(-c, c)

    def predict(self, ep, steps: int) -> Tuple[Tensor, Tensor]:
        """(pre-adaptation, post-adaptation) query logits; theta restored afterwards."""
        with self._episode():
            with torch.no_grad():
                pre = self._forward_query(ep.query_x)
            self._inner(ep.support_x, ep.support_y, steps)
            with torch.no_grad():
                post = self._forward_query(ep.query_x)
        return pre, post

    def sparsity(self) -> Optional[Dict[str, Any]]:
        return None if self.plain or self.exp_logits else self.opt.sparsity()

    def meta_parameter_count(self) -> int:
        return sum(t.numel() for t in self.meta_params)

    def state_dict(self) -> Dict[str, Any]:
        sd = {"model": self.model.state_dict(), "outer": self.outer.state_dict(), "inner": self.opt.state_dict()}
        if self.exp_logits:
            sd["exp_logits"] = [t.detach().clone() for t in self.exp_logits]
        return sd

    def load_state_dict(self, sd: Dict[str, Any]) -> None:
        self.model.load_state_dict(sd["model"])
        self.opt.load_state_dict(sd["inner"])
        self.outer.load_state_dict(sd["outer"])
        with torch.no_grad():
            for t, v in zip(self.exp_logits, sd.get("exp_logits", [])):
                t.copy_(v)

    def on_iteration(self, it: int) -> None:
        pass


class TwoPhaseLearner:
    """sparse-MAML Table S4: FOMAML for ``phase_iterations`` (theta), then sparse-MAML masks
    (MaskedSGD, starting sparsity ``init_sparsity``) with theta frozen (its outer lr set to 0)."""

    def __init__(self, model: nn.Module, cfg: Dict[str, Any]) -> None:
        self.cfg, self.model = cfg, model
        self.phase1 = FirstOrderLearner("fomaml", model, cfg)
        self.phase2 = FirstOrderLearner("sparse-maml", model, cfg)
        self.phase2.outer.param_groups[0]["lr"] = 0.0     # theta fixed in phase 2
        self.active = self.phase1
        self.outer_name = self.phase1.outer_name

    def on_iteration(self, it: int) -> None:
        self.active = self.phase1 if it < self.cfg["phase_iterations"] else self.phase2

    def train_step(self, episodes, steps):
        return self.active.train_step(episodes, steps)

    def predict(self, ep, steps):
        return self.active.predict(ep, steps)

    def sparsity(self):
        return self.phase2.sparsity()

    def meta_parameter_count(self) -> int:
        return self.phase2.meta_parameter_count()

    def state_dict(self):
        return {"phase1": self.phase1.state_dict(), "phase2": self.phase2.state_dict(),
                "phase": int(self.active is self.phase2)}

    def load_state_dict(self, sd):
        self.phase1.load_state_dict(sd["phase1"])
        self.phase2.load_state_dict(sd["phase2"])
        self.active = self.phase2 if sd.get("phase") else self.phase1


# ============================================================================ second-order family
class SecondOrderLearner:
    """Second-order inner loops with ``functional_call`` (MAML, Meta-SGD, Kronecker / Cholesky
    meta-optimizers, PRUNE)."""

    def __init__(self, method: str, model: nn.Module, cfg: Dict[str, Any]) -> None:
        self.method, self.model, self.cfg, self.lr = method, model, cfg, cfg["inner_lr"]
        self.params = dict(model.named_parameters())
        self.inner = [n for n, _ in inner_named(model, cfg, method)]
        self.meta: Dict[str, Any] = {}
        self.variant, self.depth = "kronecker", 1
        if method == "meta-sgd":   # rates alpha_0 = inner lr, as sparse_optim.MetaSGD initialises them
            self.meta = {n: torch.full_like(self.params[n], self.lr).requires_grad_(True) for n in self.inner}
        elif method in ("meta-curvature", "klin", "kfc", "cfc"):
            self.depth = cfg["kfc_depth"] if method == "kfc" else (cfg["cfc_depth"] if method == "cfc" else 1)
            self.variant = "cholesky" if method == "cfc" else "kronecker"
            self.meta = {n: {k: v.requires_grad_(True) for k, v in init_factors(
                self.params[n].shape, variant=self.variant, depth=self.depth, rank=cfg["cfc_rank"],
                normalize=cfg["kfc_normalize"]).items()} for n in self.inner}
        self.adapt_factors = method in ("klin", "kfc", "cfc")
        self.meta_leaves = _leaves(self.meta)
        self.outer_name = cfg["outer_optimizer"] if cfg["outer_optimizer"] != "default" else "adam"
        groups = [{"params": list(self.params.values()), "lr": cfg["meta_lr"]}]
        if self.meta_leaves:
            groups.append({"params": self.meta_leaves, "lr": cfg["meta_param_lr"]})
        self.outer = (torch.optim.Adam(groups) if self.outer_name == "adam" else
                      torch.optim.SGD(groups, momentum=0.9, nesterov=True) if self.outer_name == "sgd-nesterov"
                      else torch.optim.SGD(groups))

    def adapt(self, x: Tensor, y: Tensor, steps: int, create_graph: bool) -> Dict[str, Tensor]:
        fast = dict(self.params)
        names = self.inner
        factors = self.meta if self.variant and self.meta and self.method != "meta-sgd" else None
        prev: Optional[Dict[str, Tensor]] = None
        with torch.enable_grad():
            for _ in range(steps):
                loss = F.cross_entropy(functional_call(self.model, fast, (x,)), y)
                g = dict(zip(names, torch.autograd.grad(loss, [fast[n] for n in names], create_graph=create_graph)))
                if self.adapt_factors and prev is not None:
                    # KFO Algorithm 1 / Eq. 4: the factors of the previous update step on
                    # dL(theta_k)/dxi = -lr J_xi U_xi(g_{k-1})^T g_k before this update.
                    factors = {n: adapted_factors(factors[n], prev[n], g[n], lr=self.lr, factor_lr=self.lr,
                                                  variant=self.variant, depth=self.depth, create_graph=create_graph)
                               for n in names}
                if self.method in ("maml", "prune"):
                    new = {n: fast[n] - self.lr * g[n] for n in names}
                elif self.method == "meta-sgd":
                    new = meta_sgd({n: fast[n] for n in names}, g, self.meta)
                else:
                    new = kronecker_sgd({n: fast[n] for n in names}, g, factors, lr=self.lr, variant=self.variant,
                                        depth=self.depth)
                fast = dict(fast, **new)
                prev = g
        return fast

    def _prune(self, fast: Dict[str, Tensor]) -> Dict[str, Tensor]:
        """KFO Table A1 PRUNE: weights (conv / linear, not BatchNorm or biases) with |w| < threshold -> 0."""
        t = self.cfg["prune_threshold"]
        return {n: (v * (v.abs() >= t)) if (v.dim() > 1) else v for n, v in fast.items()}

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
        if self.cfg["clamp_outer"]:
            c = float(self.cfg["clamp_outer"])
            for p in self.params.values():
                if p.grad is not None:
                    p.grad.clamp_(-c, c)
        self.outer.step()
        return float(np.mean(losses)), float(np.mean(accs))

    def predict(self, ep, steps: int) -> Tuple[Tensor, Tensor]:
        with torch.no_grad():
            pre = self.model(ep.query_x)
        fast = self.adapt(ep.support_x, ep.support_y, steps, create_graph=False)
        if self.method == "prune":
            fast = self._prune(fast)
        with torch.no_grad():
            post = functional_call(self.model, {k: v.detach() for k, v in fast.items()}, (ep.query_x,))
        return pre, post

    def pruned_parameter_count(self) -> Optional[int]:
        if self.method != "prune":
            return None
        t = self.cfg["prune_threshold"]
        return int(sum(int((p.abs() >= t).sum()) if p.dim() > 1 else p.numel() for p in self.params.values()))

    def sparsity(self):
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

    def on_iteration(self, it: int) -> None:
        pass


class UpperBoundLearner:
    """KFO Table 2 'upper bound': no meta-learning; for every task a freshly initialised model is
    trained on the support set to convergence (Adam 1e-3, full batch, up to ``upper_bound_steps``
    steps or training loss < 1e-3) and tested on the queries."""

    def __init__(self, model_fn, cfg: Dict[str, Any]) -> None:
        self.model_fn, self.cfg, self.outer_name = model_fn, cfg, "none"
        self.model = model_fn()

    def predict(self, ep, steps: int) -> Tuple[Tensor, Tensor]:
        model = self.model_fn()
        opt = torch.optim.Adam(model.parameters(), lr=1e-3)
        with torch.no_grad():
            pre = model(ep.query_x)
        for _ in range(self.cfg["upper_bound_steps"]):
            loss = F.cross_entropy(model(ep.support_x), ep.support_y)
            if loss.item() < 1e-3:
                break
            opt.zero_grad()
            loss.backward()
            opt.step()
        with torch.no_grad():
            post = model(ep.query_x)
        return pre, post

    def sparsity(self):
        return None

    def meta_parameter_count(self) -> int:
        return 0


def _leaves(tree) -> List[Tensor]:
    if isinstance(tree, dict):
        return [t for v in tree.values() for t in _leaves(v)]
    return [tree]


def make_learner(cfg: Dict[str, Any], model_fn):
    m = cfg["method"]
    if m == "upper-bound":
        return UpperBoundLearner(model_fn, cfg)
    model = model_fn()
    if m == "two-phase":
        return TwoPhaseLearner(model, cfg)
    return (FirstOrderLearner if m in FIRST_ORDER else SecondOrderLearner)(m, model, cfg)


# ============================================================================ evaluation
def ci95(values: Sequence[float]) -> float:
    v = np.asarray(values, dtype=np.float64)
    return float(1.96 * v.std(ddof=1) / math.sqrt(len(v))) if len(v) > 1 else 0.0


def episode_probs(learner, classes, cfg, n: int, steps: int, seed: int, desc: str = "",
                  progress: bool = False) -> Tuple[List[float], List[Tensor], List[Tensor]]:
    """Pre-adaptation accuracies, post-adaptation query probabilities and labels of n tasks."""
    model = getattr(learner, "model", None)
    saved = _snapshot_buffers(model) if model is not None else []
    sampler = make_sampler(classes, cfg, seed=seed, queries=cfg["test_queries"])
    pre, probs, labels = [], [], []
    for _ in tqdm(range(n), desc=desc, leave=False, disable=not progress, mininterval=2.0):
        ep = sampler.sample()
        a, b = learner.predict(ep, steps)
        pre.append((a.argmax(1) == ep.query_y).float().mean().item())
        probs.append(b.detach().softmax(1))
        labels.append(ep.query_y)
    if model is not None:
        _restore_buffers(model, saved)   # evaluation leaves no trace (non-transductive BN statistics)
    return pre, probs, labels


def accuracies(probs: List[Tensor], labels: List[Tensor]) -> List[float]:
    return [(p.argmax(1) == y).float().mean().item() for p, y in zip(probs, labels)]


def _rng_state(sampler) -> Dict[str, Any]:
    return {"torch": torch.get_rng_state(), "sampler": sampler.generator.get_state(),
            "numpy": np.random.get_state(), "python": random.getstate()}


def _set_rng_state(state: Dict[str, Any], sampler) -> None:
    torch.set_rng_state(state["torch"])
    sampler.generator.set_state(state["sampler"])
    np.random.set_state(state["numpy"])
    random.setstate(state["python"])


VAL_SEED, TEST_SEED = 4242, 123_456


# ============================================================================ one run
def run_one(cfg: Dict[str, Any], opts, out: Path) -> Dict[str, Any]:
    name, method, steps, test_steps = cfg["name"], cfg["method"], cfg["inner_steps"], cfg["test_steps"]
    data = load_data(cfg["dataset"], opts.data_root, cfg["image_size"],
                     omniglot_split=(cfg["omniglot_train"], cfg["omniglot_val"]))
    progress = not opts.no_progress
    torch.manual_seed(cfg["seed"])
    model_fn = lambda: build_model(cfg, data["channels"], data["size"])  # noqa: E731
    learner = make_learner(cfg, model_fn)
    rank = dist.get_rank() if dist.is_initialized() else 0
    history: Dict[str, Any] = {"val": [], "sparsity": [], "train": []}
    best: List[Dict[str, Any]] = []          # the ensemble's k best checkpoints, best first
    start_it, train_seconds = 0, 0.0
    iterations = 0 if method == "upper-bound" else cfg["iterations"] + (cfg["phase_iterations"] or 0) * (
        method == "two-phase")
    ckpt = out / "checkpoints" / f"{name}.pt"
    sampler = make_sampler(data["train"], cfg, seed=cfg["seed"] + 1000 * rank)
    if opts.resume and ckpt.exists():
        state = torch.load(ckpt, weights_only=False)
        learner.load_state_dict(state["learner"])
        _set_rng_state(state["rng"], sampler)
        start_it, history, train_seconds, best = (state["iteration"], state["history"], state["train_seconds"],
                                                  state["best"])
        print(f"[{name}] resumed from {ckpt} at iteration {start_it}")

    def log_sparsity(it: int) -> None:
        sp = learner.sparsity()
        if sp is not None:
            history["sparsity"].append({"iteration": it, "overall": sp["overall"], "per_parameter": sp["per_parameter"]})

    def validate(it: int) -> float:
        _, probs, labels = episode_probs(learner, data["val"], cfg, cfg["val_episodes"], test_steps, VAL_SEED)
        acc = float(np.mean(accuracies(probs, labels)))
        history["val"].append({"iteration": it, "accuracy": acc})
        if len(best) < cfg["ensemble"] or acc > best[-1]["accuracy"]:
            best.append({"iteration": it, "accuracy": acc, "state": copy.deepcopy(learner.state_dict())})
            best.sort(key=lambda b: (-b["accuracy"], b["iteration"]))
            del best[cfg["ensemble"]:]
        return acc

    if start_it == 0 and iterations:
        log_sparsity(0)
    bar = tqdm(range(start_it, iterations), desc=name, leave=False, disable=not progress or rank != 0,
               initial=start_it, total=iterations, mininterval=2.0)
    window: List[float] = []
    log_every = max(1, min(cfg["val_every"], opts.log_every))
    for it in bar:
        learner.on_iteration(it)
        t0 = time.perf_counter()
        loss, acc = learner.train_step([sampler.sample() for _ in range(cfg["meta_batch"])], steps)
        train_seconds += time.perf_counter() - t0
        window.append(acc)
        done = it + 1
        if done % log_every == 0 or done == iterations:
            log_sparsity(done)
            history["train"].append({"iteration": done, "query_accuracy": float(np.mean(window)), "loss": loss})
            window = []
        phase2 = method != "two-phase" or done > cfg["phase_iterations"]   # Table S4: select among mask models
        if phase2 and (done % cfg["val_every"] == 0 or done == iterations):
            v = validate(done)
            bar.set_postfix(val=f"{v:.3f}", best=f"{best[0]['accuracy']:.3f}")
        if rank == 0 and opts.checkpoint_every and (done % opts.checkpoint_every == 0 or done == iterations):
            ckpt.parent.mkdir(parents=True, exist_ok=True)
            torch.save({"iteration": done, "learner": learner.state_dict(), "rng": _rng_state(sampler),
                        "history": history, "train_seconds": train_seconds, "best": best, "config": cfg}, ckpt)
    bar.close()
    final_sp = learner.sparsity()
    result = dict(cfg, label=LABELS[method], dataset_info=data["info"], outer_optimizer=learner.outer_name,
                  model_parameters=count_parameters(learner.model), meta_optimizer_parameters=learner.meta_parameter_count(),
                  train_seconds=train_seconds, seconds_per_iteration=train_seconds / max(iterations, 1),
                  resumed_at=start_it or None, iterations_run=iterations - start_it)
    # ---- test the best-validation checkpoint once
    if best:
        learner.load_state_dict(best[0]["state"])
        if hasattr(learner, "on_iteration"):
            learner.on_iteration(iterations)
    result.update(best_iteration=best[0]["iteration"] if best else None,
                  best_val_accuracy=best[0]["accuracy"] if best else None,
                  final_sparsity=None if final_sp is None else {"overall": final_sp["overall"],
                                                                "per_parameter": final_sp["per_parameter"]})
    sp_best = learner.sparsity()
    result["best_sparsity"] = None if sp_best is None else {"overall": sp_best["overall"],
                                                            "per_parameter": sp_best["per_parameter"]}
    pre, probs, labels = episode_probs(learner, data["test"], cfg, cfg["test_episodes"], test_steps, TEST_SEED,
                                       desc=f"{name} test", progress=progress)
    post = accuracies(probs, labels)
    result.update(test_accuracy=float(np.mean(post)), test_ci95=ci95(post), test_pre_accuracy=float(np.mean(pre)),
                  test_pre_ci95=ci95(pre), test_episodes=len(post), test_post_per_episode=post,
                  test_pre_per_episode=pre)
    if isinstance(learner, SecondOrderLearner) and learner.method == "prune":
        result["pruned_parameters"] = learner.pruned_parameter_count()
    # ---- checkpoint ensemble (sparse-MAML Table S1): softmax probabilities averaged over the k best
    if cfg["ensemble"] > 1 and len(best) > 1:
        members = [probs]
        for b in best[1:]:
            learner.load_state_dict(b["state"])
            members.append(episode_probs(learner, data["test"], cfg, cfg["test_episodes"], test_steps, TEST_SEED)[1])
        ens = accuracies([torch.stack(ps).mean(0) for ps in zip(*members)], labels)
        result.update(ensemble_members=[b["iteration"] for b in best], ensemble_accuracy=float(np.mean(ens)),
                      ensemble_ci95=ci95(ens))
        learner.load_state_dict(best[0]["state"])
    # ---- cross-domain targets (sparse-MAML Table 4) with their own K_test (Table S2)
    result["cross_domain_results"] = {}
    for target, k_test in cfg["cross_domain"]:
        tdata = load_data(target, opts.data_root, cfg["image_size"], test_only=True)
        _, tprobs, tlabels = episode_probs(learner, tdata["test"], cfg, cfg["test_episodes"], int(k_test), TEST_SEED,
                                           desc=f"{name} {target}", progress=progress)
        acc = accuracies(tprobs, tlabels)
        result["cross_domain_results"][target] = {"accuracy": float(np.mean(acc)), "ci95": ci95(acc),
                                                  "test_steps": int(k_test), "episodes": len(acc)}
    result["history"] = history
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


def plot_validation(results, path: Path) -> bool:
    runs = [r for r in results if r["history"]["val"]]
    if not runs:
        return False
    plt = _plt()
    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    for r in runs:
        v = r["history"]["val"]
        ax.plot([e["iteration"] for e in v], [e["accuracy"] for e in v], marker=".", label=r["name"])
        if r.get("best_iteration"):
            ax.plot([r["best_iteration"]], [r["best_val_accuracy"]], "k*", ms=8)
    ax.set_xlabel("meta-iteration")
    ax.set_ylabel("validation accuracy (* = selected)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=6)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return True


def plot_sparsity(results, path: Path) -> bool:
    runs = [r for r in results if r["history"]["sparsity"]]
    if not runs:
        return False
    plt = _plt()
    fig, axes = plt.subplots(1, len(runs), figsize=(4.2 * len(runs), 3.6), squeeze=False)
    for ax, r in zip(axes[0], runs):
        hist = r["history"]["sparsity"]
        its = [h["iteration"] for h in hist]
        names = [n for n in hist[0]["per_parameter"] if n.endswith("conv.weight") or n.endswith("conv1.weight")
                 or n == "head.weight"]
        for i, n in enumerate(names):
            label = "output" if n == "head.weight" else n.replace(".weight", "")
            ax.plot(its, [100 * h["per_parameter"][n] for h in hist], label=label)
        ax.plot(its, [100 * h["overall"] for h in hist], "k--", lw=1, label="all parameters")
        ax.set_title(r["name"], fontsize=7)
        ax.set_xlabel("meta-iteration")
        ax.set_ylabel("gradient sparsity (%)")
        ax.set_ylim(0, 100)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=6)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return True


SWEEP_KEYS = ("inner_steps", "inner_lr", "init_sparsity", "hidden", "num_layers", "cfc_rank")


def plot_sweep(results, path: Path) -> bool:
    """Test accuracy (and sparsity) against every swept configuration field (Fig. 1-3 style)."""
    swept = [k for k in SWEEP_KEYS if len({json.dumps(r[k]) for r in results}) > 1]
    if not swept:
        return False
    plt = _plt()
    fig, axes = plt.subplots(2, len(swept), figsize=(4.8 * len(swept), 6.4), squeeze=False)
    for col, key in enumerate(swept):
        groups: Dict[str, List] = {}
        for r in results:
            others = ",".join(f"{k}={r[k]}" for k in swept if k != key)
            groups.setdefault(f"{LABELS[r['method']]} {others}".strip(), []).append(r)
        for lab, rs in groups.items():
            xs = sorted({r[key] for r in rs})
            if len(xs) < 2:
                continue
            acc = [np.mean([r["test_accuracy"] for r in rs if r[key] == x]) * 100 for x in xs]
            err = [np.std([r["test_accuracy"] for r in rs if r[key] == x]) * 100 for x in xs]
            axes[0][col].errorbar(xs, acc, yerr=err, marker="o", capsize=3, label=lab)
            sps = [[r["best_sparsity"]["overall"] for r in rs if r[key] == x and r.get("best_sparsity")] for x in xs]
            if all(sps):
                axes[1][col].plot(xs, [100 * np.mean(s) for s in sps], marker="o", label=lab)
        for row, ylabel in enumerate(("test accuracy (%), mean +- std over seeds", "gradient sparsity (%)")):
            ax = axes[row][col]
            ax.set_xlabel(key.replace("_", " "))
            ax.set_ylabel(ylabel)
            if key in ("inner_lr", "hidden"):
                ax.set_xscale("log")
            ax.grid(alpha=0.3)
            if ax.get_legend_handles_labels()[0]:
                ax.legend(fontsize=6)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


# ============================================================================ CLI
#: flags that override one configuration field for every run (dest, type, help)
FIELD_FLAGS = [
    ("dataset", str, "dataset (offline: mnist-offline, synthetic, kfo-synthetic)"),
    ("image_size", int, "resize images (default: the dataset's)"), ("normalize", str, "none | imagenet"),
    ("ways", int, "N ways"), ("shots", int, "K shots"), ("queries", int, "query examples per class"),
    ("test_queries", int, "query examples per class at validation / test"), ("meta_batch", int, "tasks per meta-iteration"),
    ("iterations", int, "meta-iterations"), ("hidden", int, "conv filters"), ("num_layers", int, "blocks of model convnet"),
    ("resnet_size", str, "small | large"), ("resnet_channels", int, "4 ResNet-12 widths (e.g. for smoke tests)"),
    ("linnet_hidden", int, "hidden widths of model linnet"), ("model_init", str, "kaiming | default | xavier"),
    ("outer_optimizer", str, "default | adam | sgd | sgd-nesterov"), ("meta_lr", float, "outer lr of theta"),
    ("meta_param_lr", float, "outer lr of masks / rates / factors"), ("clamp_outer", float, "clamp theta gradients"),
    ("init_shift", float, "official absolute mask-logit shift"), ("mask_init", str, "library | official | official-uniform"),
    ("mask_grad", str, "library | official (half the step-gate gradient)"), ("noise_dim", int, "sparse-MAML+ E"),
    ("kfc_depth", int, "KFC layers"), ("cfc_rank", int, "CFC rank"), ("cfc_depth", int, "CFC layers"),
    ("prune_threshold", float, "PRUNE threshold"), ("phase_iterations", int, "two-phase: phase-1 iterations"),
    ("upper_bound_steps", int, "upper bound: max training steps per task"),
    ("omniglot_train", int, "Omniglot meta-train characters (1100, Finn et al.)"),
    ("omniglot_val", int, "Omniglot validation characters (100)"), ("val_every", int, "validation interval"),
    ("val_episodes", int, "validation tasks"), ("test_episodes", int, "test tasks"),
    ("ensemble", int, "test an ensemble of the k best checkpoints"),
]
LIST_FLAGS = {"resnet_channels", "linnet_hidden"}
GRID_FLAGS = ("inner_lr", "inner_steps", "init_sparsity")


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--preset", default=None, help="a named table / figure protocol (--list-presets)")
    p.add_argument("--list-presets", action="store_true")
    p.add_argument("--data-root", default=None, help="folder of the dataset(s) (or of their sub-folders)")
    p.add_argument("--methods", nargs="+", choices=METHODS, default=None,
                   help="methods to run (with --preset: a filter of its runs)")
    p.add_argument("--models", nargs="+", choices=MODELS, default=None)
    p.add_argument("--inner-lr", type=float, nargs="+", default=None, help="inner learning rate(s): a grid")
    p.add_argument("--inner-steps", type=int, nargs="+", default=None, help="inner steps K_train: a grid")
    p.add_argument("--test-steps", nargs="+", default=None,
                   help="K_test: one value, one per --inner-steps value, or 'same' (K_test = K_train)")
    p.add_argument("--init-sparsity", type=float, nargs="+", default=None, help="starting sparsity: a grid")
    p.add_argument("--seeds", type=int, nargs="+", default=None)
    for dest, typ, help_ in FIELD_FLAGS:
        kw = dict(nargs="+") if dest in LIST_FLAGS else {}
        p.add_argument("--" + dest.replace("_", "-"), dest=dest, type=typ, default=None, help=help_, **kw)
    p.add_argument("--no-bias", dest="bias", action="store_false", default=None)
    p.add_argument("--non-transductive-bn", dest="transductive_bn", action="store_false", default=None)
    p.add_argument("--no-inner-bn", dest="inner_bn", action="store_false", default=None)
    p.add_argument("--cross-domain", nargs="+", default=None, metavar="DATASET=K_TEST")
    p.add_argument("--log-every", type=int, default=10, help="sparsity / training-accuracy logging interval")
    p.add_argument("--checkpoint-every", type=int, default=50)
    p.add_argument("--resume", action="store_true")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--distributed", action="store_true",
                   help="task-parallel meta-training across torchrun processes (first-order methods)")
    p.add_argument("--no-progress", action="store_true")
    p.add_argument("--out", type=Path, default=None, help="default results/fewshot/<preset or 'custom'>")
    args = p.parse_args(argv)
    if args.out is None:
        args.out = Path("results/fewshot") / (args.preset or "custom")
    return args


def make_configs(args) -> List[Dict[str, Any]]:
    if args.preset:
        preset = fewshot_presets.get_preset(args.preset)
        base, runs, seeds = preset.base, [dict(r) for r in preset.runs], preset.seeds
        if args.methods:
            runs = [r for r in runs if r["method"] in args.methods]
            if not runs:
                raise SystemExit(f"preset {args.preset} has no run of methods {args.methods}")
    else:
        base, seeds = {}, [0]
        runs = [{"method": m, "model": mo} for mo in (args.models or ["convnet4"])
                for m in (args.methods or list(SPARSE_FAMILY))]
    if args.preset and args.models:
        runs = [dict(r, model=mo) for r in runs for mo in args.models]
    seeds = args.seeds or seeds
    overrides = {dest: getattr(args, dest) for dest, _, _ in FIELD_FLAGS if getattr(args, dest) is not None}
    for dest in ("bias", "transductive_bn", "inner_bn"):
        if getattr(args, dest) is not None:
            overrides[dest] = getattr(args, dest)
    if args.cross_domain is not None:
        overrides["cross_domain"] = [(t.split("=")[0], int(t.split("=")[1])) for t in args.cross_domain]
    grids = {k: getattr(args, k) for k in GRID_FLAGS if getattr(args, k) is not None}
    test_steps = args.test_steps
    if test_steps is not None and len(test_steps) not in (1, len(args.inner_steps or [None])):
        raise SystemExit("--test-steps takes one value or one per --inner-steps value")
    configs = []
    for run in runs:
        keys = list(grids)
        for combo in itertools.product(*(grids[k] for k in keys)) if keys else [()]:
            for seed in seeds:
                cfg = dict(base, **run)
                cfg.update(overrides)
                cfg.update(dict(zip(keys, combo)), seed=seed)
                if test_steps is not None:
                    k_idx = args.inner_steps.index(cfg["inner_steps"]) if len(test_steps) > 1 else 0
                    v = test_steps[k_idx]
                    cfg["test_steps"] = v if v == "same" else int(v)
                cfg = resolve(cfg)
                cfg["name"] = run_name(cfg)
                cfg["preset"] = args.preset or "custom"
                configs.append(cfg)
    names = [c["name"] for c in configs]
    dup = {n for n in names if names.count(n) > 1}
    if dup:
        raise SystemExit(f"two runs share a name: {sorted(dup)}")
    return configs


def list_presets() -> str:
    lines = []
    for name, p in fewshot_presets.PRESETS.items():
        methods = sorted({r["method"] for r in p.runs}, key=METHODS.index)
        lines.append(f"{name}\n    {p.description}\n    datasets: {', '.join(p.datasets)}; {len(p.runs)} runs x "
                     f"{len(p.seeds)} seeds; methods: {', '.join(methods)}")
    return "\n".join(lines)


def print_table(results) -> None:
    print(f"\n{'run':<58} {'test acc (95% CI)':>17} {'pre':>5} {'best it':>7} {'sparsity':>8} {'ens.':>6} {'s/it':>6}")
    for r in results:
        sp = r.get("best_sparsity")
        sp_text = "-" if sp is None else f"{100 * sp['overall']:.1f}%"
        ens = f"{100 * r['ensemble_accuracy']:.1f}" if r.get("ensemble_accuracy") is not None else "-"
        print(f"{r['name']:<58} {100 * r['test_accuracy']:>7.2f} +- {100 * r['test_ci95']:<5.2f} "
              f"{100 * r['test_pre_accuracy']:>5.1f} {str(r.get('best_iteration')):>7} "
              f"{sp_text:>8} "
              f"{ens:>6} {r['seconds_per_iteration']:>6.2f}")
        for t, v in r.get("cross_domain_results", {}).items():
            print(f"    {t:<54} {100 * v['accuracy']:>7.2f} +- {100 * v['ci95']:<5.2f} (K_test {v['test_steps']})")


def main(argv: Optional[Sequence[str]] = None) -> Dict[str, Any]:
    args = parse_args(argv)
    if args.list_presets:
        text = list_presets()
        print(text)
        return {"presets": list(fewshot_presets.PRESETS)}
    torch.set_num_threads(args.threads)
    if args.distributed:
        dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo")
    try:
        return _main(args)
    finally:
        if args.distributed:
            dist.destroy_process_group()


def _main(args) -> Dict[str, Any]:
    configs = make_configs(args)
    if args.distributed and any(c["method"] not in FIRST_ORDER for c in configs):
        raise SystemExit("--distributed supports the first-order methods: " + ", ".join(FIRST_ORDER))
    args.out.mkdir(parents=True, exist_ok=True)
    results = []
    for cfg in configs:
        done = args.out / "runs" / f"{cfg['name']}.json"
        if args.resume and done.exists():
            prev = json.loads(done.read_text())
            if prev.get("iterations") == cfg["iterations"]:
                print(f"[{cfg['name']}] finished earlier, loaded {done}")
                results.append(prev)
                continue
        results.append(run_one(cfg, args, args.out))
    if dist.is_initialized() and dist.get_rank() != 0:
        return {"runs": results}
    # summary and plots over every run of this output folder (earlier invocations included)
    names = {r["name"] for r in results}
    earlier = [json.loads(p.read_text()) for p in sorted((args.out / "runs").glob("*.json")) if p.stem not in names]
    every = results + earlier
    print_table(results)
    strip = ("test_post_per_episode", "test_pre_per_episode")
    summary = {"preset": args.preset or "custom", "data_root": args.data_root,
               "this_invocation": [r["name"] for r in results],
               "runs": [{k: v for k, v in r.items() if k not in strip} for r in every]}
    plots = {}
    for key, fn in (("validation", plot_validation), ("sparsity", plot_sparsity), ("sweep", plot_sweep)):
        path = args.out / f"{key}.png"
        if fn(every, path):
            plots[key] = path.name
        elif path.exists():
            path.unlink()   # no stale plot of an earlier run set
    summary["plots"] = plots
    (args.out / "summary.json").write_text(json.dumps(summary, indent=1))
    print(f"wrote {args.out / 'summary.json'}" + (f" and {', '.join(plots.values())}" if plots else ""))
    return summary


if __name__ == "__main__":
    main(sys.argv[1:])
