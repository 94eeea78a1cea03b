"""KFO synthetic binary classification (Arnold et al., Table 1 first row, appendix A.1.1).

Faithful protocol (``--setting isotropic``, the default):

* task boundary ``w ~ N(0, I_100)``; every task has 1,000 points ``x ~ N(0, I_100)`` labelled
  ``sign(w^T x)`` (as {0, 1} targets of the binary cross-entropy);
* the 1,000 points are split into ``--adapt-points`` (default 500) adaptation points and the
  rest (500) held-out points; the inner (adaptation) loss is BCE on the adaptation points,
  the outer (MAML) loss is BCE of the adapted model on the held-out points;
* 1-step MAML, second order (the outer gradient differentiates through the inner gradient);
* 30,000 iterations of plain SGD (no momentum), meta-batch 1 (one task per meta-gradient);
* models and learning rates of appendix A.1.1 (meta / adaptation):
  ``lr_maml``      LR w/ MAML             0.01 / 0.5
  ``linnet_maml``  LR + 3x64 LinNet       1.9  / 1.9
  ``lr_klin``      LR w/ KLin             3.33 / 3.33   (KroneckerSGD, L 1x1, R 100x100: 10,001 params)
  ``lr_kfc``       LR w/ KFC              3.9  / 3.9    (depth 2, ReLU between: 20,002 params)
  no biases (neither in the meta-optimizers, as the paper says, nor in the models, whose
  task boundaries pass through the origin; this also matches the 10,001 / 20,002 counts);
* accuracy: post-adaptation accuracy on the held-out points of fresh test tasks
  (``--test-tasks`` per evaluation, the same tasks at every evaluation), mean +- std over seeds.

If a paper learning rate diverges (non-finite loss or parameters, checked every 100
iterations, for any seed), the run restarts with both learning rates multiplied by the next
factor of ``--lr-backoff``; every attempt is recorded in the JSON.

One-step ceiling (the analysis of the design notes). From a task-independent start the
adapted weights are ``theta - alpha U(g)`` with ``g`` the mean gradient of the N adaptation
points; at the origin ``g = -(1/2N) sum_i s_i x_i`` with ``s_i = sign(w^T x_i)``. Its component
along ``w`` has mean ``sqrt(2/pi)`` per point, the ``d - 1`` orthogonal components are unit
noise, so the cosine between ``g`` and ``w`` concentrates at ``1 / sqrt(1 + pi d / (2N))`` and
the held-out accuracy of a linear classifier with that angle is
``1 - arccos(1 / sqrt(1 + pi d / (2N))) / pi``: 83.7% at N = 500, d = 100. By rotational
symmetry of the task distribution no fixed linear preconditioner can do better. The script
prints this bound and a Monte-Carlo check (``sum_i s_i x_i`` on the same test tasks).

Second experiment (``--setting anisotropic``): inputs seen through a fixed ill-conditioned
linear map shared by all tasks, ``x = M z`` with ``z ~ N(0, I)``, ``M = Q diag(sqrt(lambda))``,
``Q`` a random rotation (fixed by ``--cov-seed``) and ``lambda`` log-spaced over
``--condition`` (default 1000, normalised to mean 1); labels ``sign(w~^T z)`` with
``w~ ~ N(0, I)``, i.e. the boundaries are isotropic in the unmixed coordinates. A plain
gradient step returns ``M^T M g~ = diag(lambda) g~`` in whitened coordinates (about 66% for
one step at condition 1000); the preconditioner ``(M M^T)^{-1}`` (dense, because of ``Q``)
restores the isotropic ceiling (83.7%). ``--inner-steps`` > 1 runs several adaptation steps
(the meta-optimizers then also adapt their factors in the inner loop, KFO Algorithm 1,
``--no-adapt-factors`` to switch off).

    python examples/kfo_synthetic.py --iterations 30000 --seeds 0 1 2 3 4 --out results/kfo/isotropic
    python examples/kfo_synthetic.py --setting anisotropic --iterations 5000 --out results/kfo/anisotropic

Seeds are run together (``torch.func.vmap`` over the seed dimension, each seed with its own
initialisation and task stream, the same streams for every method).
"""
from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

import torch
import torch.nn.functional as F
from torch.func import vmap
from tqdm import tqdm

from sparse_optim.functional.kronecker import adapted_factors, init_factors, kronecker_transform

Tensor = torch.Tensor
DIM = 100

METHODS: Dict[str, Dict[str, Any]] = {
    "lr_maml": dict(label="LR w/ MAML", model="lr", depth=0, meta_lr=0.01, adapt_lr=0.5, paper=(51.38, 3.91)),
    "linnet_maml": dict(label="LR + LinNet w/ MAML", model="linnet", depth=0, meta_lr=1.9, adapt_lr=1.9,
                        paper=(95.77, 0.41)),
    "lr_klin": dict(label="LR w/ KLin", model="lr", depth=1, meta_lr=3.33, adapt_lr=3.33, paper=(99.00, 0.08)),
    "lr_kfc": dict(label="LR w/ KFC", model="lr", depth=2, meta_lr=3.9, adapt_lr=3.9, paper=(98.98, 0.10)),
}
LINNET_HIDDEN = (64, 64, 64)


def one_step_ceiling(n: int, d: int = DIM) -> float:
    """Held-out accuracy of one gradient step from a task-independent start (design notes)."""
    return 1.0 - math.acos(1.0 / math.sqrt(1.0 + math.pi * d / (2.0 * n))) / math.pi


# ----------------------------------------------------------------------------- tasks
class TaskStream:
    """Tasks of one seed: ``(x [T, P, d], y [T, P])`` with P = points per task."""

    def __init__(self, setting: str, points: int, mixing: Optional[Tensor]) -> None:
        self.setting, self.points, self.mixing = setting, points, mixing

    def sample(self, n: int, gen: torch.Generator):
        w = torch.randn(n, DIM, generator=gen)
        z = torch.randn(n, self.points, DIM, generator=gen)
        y = (torch.einsum("tpd,td->tp", z, w) > 0).float()
        x = z if self.mixing is None else z @ self.mixing.T
        return x, y, w


def make_mixing(setting: str, condition: float, cov_seed: int) -> Optional[Tensor]:
    if setting == "isotropic":
        return None
    g = torch.Generator().manual_seed(cov_seed)
    q, r = torch.linalg.qr(torch.randn(DIM, DIM, generator=g))
    q = q * torch.sign(torch.diagonal(r))
    lam = torch.logspace(0.0, -math.log10(condition), DIM)
    lam = lam / lam.mean()
    return q @ torch.diag(lam.sqrt())


# ----------------------------------------------------------------------------- models
# Every tensor carries a leading seed dimension S: the seeds are independent problems whose
# losses are summed, so one autograd call returns every seed's own (meta-)gradient.
def init_model(kind: str, gen: torch.Generator) -> Dict[str, Tensor]:
    """nn.Linear default initialisation U(-1/sqrt(fan_in), 1/sqrt(fan_in)), no biases."""
    sizes = [DIM, 1] if kind == "lr" else [DIM, *LINNET_HIDDEN, 1]
    params = {}
    for i, (a, b) in enumerate(zip(sizes[:-1], sizes[1:])):
        bound = 1.0 / math.sqrt(a)
        params[f"w{i}"] = (torch.rand(b, a, generator=gen) * 2 - 1) * bound
    return params


def effective_weight(params: Dict[str, Tensor]) -> Tensor:
    """``W_last ... W_1 W_0`` ([S, 1, d]): the linear network collapsed to its logistic-regression
    weight. Evaluating the network as ``x W_eff^T`` is the same function of every ``W_i`` as the
    layer-by-layer forward (hence the same gradients and second-order terms), only cheaper."""
    w = params["w0"]
    for i in range(1, len(params)):
        w = params[f"w{i}"] @ w
    return w


def forward(params: Dict[str, Tensor], x: Tensor) -> Tensor:
    """Logits [S, P] of x [S, P, d]."""
    return (x @ effective_weight(params).transpose(1, 2)).squeeze(-1)


def make_factors(shapes: Dict[str, torch.Size], depth: int) -> Dict[str, Dict[str, Tensor]]:
    """Identity Kronecker factors (KFO A.1), no bias, per parameter (shapes without seed dim)."""
    if depth == 0:
        return {}
    return {k: init_factors(s, depth=depth) for k, s in shapes.items()}


def _per_seed_loss(logits: Tensor, y: Tensor) -> Tensor:
    return F.binary_cross_entropy_with_logits(logits, y, reduction="none").mean(1)


# ----------------------------------------------------------------------------- inner loop
def adapt(params, factors, x, y, *, lr: float, depth: int, steps: int, adapt_factors: bool, create_graph: bool):
    """``steps`` adaptation steps on (x, y) [S, N, d] / [S, N]; second order with ``create_graph``.

    MAML: ``theta <- theta - lr * g``. KLin / KFC: ``theta <- theta - lr * U_xi(g)`` with
    :func:`sparse_optim.functional.kronecker.kronecker_transform` (KFO Eq. 5 / 7) vmapped over
    seeds; with ``adapt_factors`` the factors first take the hypergradient step of KFO
    Algorithm 1 / Eq. 4 (``xi <- xi - lr * dL(theta_t)/dxi`` through the previous update,
    :func:`sparse_optim.functional.adapted_factors` with the vmapped transform) from the
    second step on (a no-op for one step).
    """
    transform = vmap(lambda d, f: kronecker_transform(d, f, depth=depth))
    names = list(params)
    prev = None
    for _ in range(steps):
        loss = _per_seed_loss(forward(params, x), y).sum()
        g = dict(zip(names, torch.autograd.grad(loss, [params[k] for k in names], create_graph=create_graph)))
        if depth == 0:
            params = {k: params[k] - lr * g[k] for k in names}
            continue
        if adapt_factors and prev is not None:   # KFO Eq. 4, every seed at once through the vmapped U
            factors = {k: adapted_factors(factors[k], prev[k], g[k], lr=lr, factor_lr=lr, depth=depth,
                                          create_graph=create_graph, transform=transform) for k in names}
        params = {k: params[k] - lr * transform(g[k], factors[k]) for k in names}
        prev = g
    return params


def accuracy(params, x, y) -> Tensor:
    """Per-seed accuracy [S]."""
    return ((forward(params, x) > 0).float() == y).float().mean(1)


def _leaves(tree):
    if isinstance(tree, dict):
        return [t for v in tree.values() for t in _leaves(v)]
    return [tree]


def meta_gradient(method, params, factors, x, y, *, lr, n_adapt, steps, adapt_factors):
    """Second-order 1-step (or ``steps``-step) MAML loss of every seed and its gradients."""
    adapted = adapt(params, factors, x[:, :n_adapt], y[:, :n_adapt], lr=lr, depth=method["depth"], steps=steps,
                    adapt_factors=adapt_factors, create_graph=True)
    logits = forward(adapted, x[:, n_adapt:])
    loss = _per_seed_loss(logits, y[:, n_adapt:])
    leaves = _leaves(params) + _leaves(factors)
    grads = torch.autograd.grad(loss.sum(), leaves)
    acc = ((logits.detach() > 0).float() == y[:, n_adapt:]).float().mean(1)
    return grads, loss.detach(), acc


def evaluate(method, params, factors, x, y, *, lr, n_adapt, steps, adapt_factors):
    """pre / post-adaptation held-out accuracy [S, T] of tasks x [S, T, P, d]."""
    s, t = x.shape[:2]
    rep = lambda v: v.detach().repeat_interleave(t, 0).requires_grad_(True)  # noqa: E731
    p = {k: rep(v) for k, v in params.items()}
    f = {k: {n: rep(v) for n, v in fk.items()} for k, fk in factors.items()}
    xf, yf = x.reshape(s * t, *x.shape[2:]), y.reshape(s * t, -1)
    adapted = adapt(p, f, xf[:, :n_adapt], yf[:, :n_adapt], lr=lr, depth=method["depth"], steps=steps,
                    adapt_factors=adapt_factors, create_graph=False)
    with torch.no_grad():
        pre = accuracy(p, xf[:, n_adapt:], yf[:, n_adapt:])
        post = accuracy(adapted, xf[:, n_adapt:], yf[:, n_adapt:])
    return pre.reshape(s, t), post.reshape(s, t)


# ----------------------------------------------------------------------------- training
def _stack(dicts: List[Dict[str, Any]]) -> Dict[str, Any]:
    out = {}
    for k, v in dicts[0].items():
        out[k] = _stack([d[k] for d in dicts]) if isinstance(v, dict) else torch.stack([d[k] for d in dicts])
    return out


def count_meta_parameters(factors) -> int:
    """Meta-optimizer parameters of one seed (factors carry a leading seed dim)."""
    return sum(t[0].numel() for t in _leaves(factors))


def evaluate_seeds(method, params, factors, streams, seeds, n_tasks, chunk=25, **kw):
    """Mean pre / post accuracy over ``n_tasks`` fixed test tasks per seed -> ([S], [S])."""
    gens = [torch.Generator().manual_seed(1_000_003 + s) for s in seeds]
    pre, post = [], []
    for start in range(0, n_tasks, chunk):
        n = min(chunk, n_tasks - start)
        xs, ys = zip(*[streams[i].sample(n, g)[:2] for i, g in enumerate(gens)])
        a, b = evaluate(method, params, factors, torch.stack(xs), torch.stack(ys), **kw)
        pre.append(a)
        post.append(b)
    return torch.cat(pre, 1).mean(1), torch.cat(post, 1).mean(1)


def run_method(name: str, args, streams, seeds: List[int], lr_scale: float):
    method = METHODS[name]
    meta_lr, adapt_lr = args.lr_override.get(name, (method["meta_lr"], method["adapt_lr"]))
    meta_lr, adapt_lr = meta_lr * lr_scale, adapt_lr * lr_scale
    kw = dict(lr=adapt_lr, n_adapt=args.adapt_points, steps=args.inner_steps, adapt_factors=args.adapt_factors)
    params = _stack([init_model(method["model"], torch.Generator().manual_seed(s)) for s in seeds])
    factors = _stack([make_factors({k: v.shape[1:] for k, v in params.items()}, method["depth"])
                      for _ in seeds]) if method["depth"] else {}
    for t in _leaves(params) + _leaves(factors):
        t.requires_grad_(True)
    leaves = _leaves(params) + _leaves(factors)
    task_gens = [torch.Generator().manual_seed(7919 * (s + 1)) for s in seeds]
    curve = []
    train_acc = torch.zeros(len(seeds))
    train_loss = torch.zeros(len(seeds))
    since = 0
    start = time.perf_counter()
    train_seconds = 0.0
    diverged_at = None
    chunk = 50
    bx = by = None
    bar = tqdm(range(args.iterations), desc=f"{name} x{lr_scale:g}", leave=False, disable=args.no_progress,
               mininterval=2.0)
    for it in bar:
        t0 = time.perf_counter()
        j = it % chunk
        if j == 0:
            xs, ys = zip(*[streams[i].sample(chunk, g)[:2] for i, g in enumerate(task_gens)])
            bx, by = torch.stack(xs, 1), torch.stack(ys, 1)  # [chunk, S, P, d]
        grads, loss, acc = meta_gradient(method, params, factors, bx[j], by[j], **kw)
        with torch.no_grad():
            for t, g in zip(leaves, grads):
                t.sub_(meta_lr * g)     # plain SGD, no momentum, meta-batch 1 (KFO A.1.1)
        train_acc += acc
        train_loss += loss
        since += 1
        train_seconds += time.perf_counter() - t0
        if (it + 1) % 100 == 0 or it + 1 == args.iterations:
            if not (all(bool(torch.isfinite(t).all()) for t in leaves) and bool(torch.isfinite(train_loss).all())):
                diverged_at = it + 1
                break
        if (it + 1) % args.eval_every == 0 or it + 1 == args.iterations:
            pre, post = evaluate_seeds(method, params, factors, streams, seeds, args.test_tasks, **kw)
            curve.append(dict(iteration=it + 1, test_pre=pre.tolist(), test_post=post.tolist(),
                              train_post=(train_acc / since).tolist(), train_loss=(train_loss / since).tolist()))
            bar.set_postfix(test=f"{post.mean():.3f}")
            train_acc.zero_()
            train_loss.zero_()
            since = 0
    bar.close()
    seconds = time.perf_counter() - start
    done = diverged_at or args.iterations
    out = dict(method=name, label=method["label"], meta_lr=meta_lr, adapt_lr=adapt_lr, lr_scale=lr_scale,
               iterations_run=done, seconds=seconds, train_ms_per_iteration_all_seeds=1000 * train_seconds / done,
               diverged_at=diverged_at, curve=curve, meta_optimizer_parameters=count_meta_parameters(factors),
               model_parameters=sum(v[0].numel() for v in params.values()))
    if diverged_at is None and curve:
        final = torch.tensor(curve[-1]["test_post"])
        out.update(final_test_post_per_seed=final.tolist(), final_test_post_mean=final.mean().item(),
                   final_test_post_std=final.std().item() if len(seeds) > 1 else 0.0,
                   final_test_pre_mean=float(torch.tensor(curve[-1]["test_pre"]).mean()))
    return out


def monte_carlo_references(args, streams, seeds) -> Dict[str, float]:
    """One plain gradient step from the origin (sum_i s_i x_i) and, for the anisotropic setting,
    the same step preconditioned by the true (M M^T)^{-1}, on the test tasks of seed 0."""
    gen = torch.Generator().manual_seed(1_000_003 + seeds[0])
    x, y, _ = streams[0].sample(args.test_tasks, gen)
    n = args.adapt_points
    s = 2 * y[:, :n] - 1
    g = torch.einsum("tn,tnd->td", s, x[:, :n]) / n

    def acc(v):
        return ((torch.einsum("tpd,td->tp", x[:, n:], v) > 0).float() == y[:, n:]).float().mean().item()

    refs = {"plain_step_from_origin": acc(g)}
    mixing = streams[0].mixing
    if mixing is not None:
        refs["true_preconditioner_step_from_origin"] = acc(g @ torch.linalg.inv(mixing @ mixing.T))
    return refs


# ----------------------------------------------------------------------------- output
def plot(results: Dict[str, Any], path: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    for r in results["methods"]:
        if not r["curve"]:
            continue
        its = [c["iteration"] for c in r["curve"]]
        post = torch.tensor([c["test_post"] for c in r["curve"]])
        m, sd = post.mean(1), (post.std(1) if post.shape[1] > 1 else torch.zeros_like(post.mean(1)))
        label = f"{r['label']} ({r['meta_lr']:g}/{r['adapt_lr']:g})"
        line, = ax.plot(its, m, label=label)
        ax.fill_between(its, m - sd, m + sd, color=line.get_color(), alpha=0.2)
    ceiling = results["analysis"]["one_step_ceiling"]
    ax.axhline(ceiling, color="k", ls="--", lw=1, label=f"one-step ceiling {ceiling:.1%}")
    if "plain_step_from_origin" in results["analysis"] and results["config"]["setting"] == "anisotropic":
        v = results["analysis"]["plain_step_from_origin"]
        ax.axhline(v, color="grey", ls=":", lw=1, label=f"plain step from origin {v:.1%}")
    ax.set_xlabel("iteration")
    ax.set_ylabel("post-adaptation test accuracy")
    cfg = results["config"]
    title = f"KFO synthetic ({cfg['setting']}"
    if cfg["setting"] == "anisotropic":
        title += f", condition {cfg['condition']:g}"
    ax.set_title(title + f", {cfg['inner_steps']} step(s), {len(cfg['seeds'])} seeds)")
    ax.set_ylim(0.4, 1.0)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--setting", choices=["isotropic", "anisotropic"], default="isotropic")
    p.add_argument("--methods", nargs="+", choices=list(METHODS), default=list(METHODS))
    p.add_argument("--iterations", type=int, default=30_000, help="meta-iterations (paper: 30,000)")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    p.add_argument("--points", type=int, default=1000, help="points per task (paper: 1,000)")
    p.add_argument("--adapt-points", type=int, default=500, help="adaptation points; the rest are held out")
    p.add_argument("--inner-steps", type=int, default=1, help="adaptation steps (paper: 1)")
    p.add_argument("--no-adapt-factors", dest="adapt_factors", action="store_false",
                   help="do not adapt the meta-optimizer factors in the inner loop (matters for >1 step)")
    p.add_argument("--condition", type=float, default=1000.0, help="anisotropic: condition number of M M^T")
    p.add_argument("--cov-seed", type=int, default=0, help="anisotropic: seed of the rotation Q")
    p.add_argument("--test-tasks", type=int, default=100, help="test tasks per seed and evaluation")
    p.add_argument("--eval-every", type=int, default=500)
    p.add_argument("--lr-backoff", type=float, nargs="+", default=[1.0, 0.5, 0.25, 0.1, 0.03, 0.01],
                   help="learning-rate multipliers tried in order when a run diverges")
    p.add_argument("--lr", action="append", default=[], metavar="METHOD=META,ADAPT",
                   help="override a method's (meta, adaptation) learning rates, e.g. lr_klin=1.0,1.0")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--no-progress", action="store_true")
    p.add_argument("--out", type=Path, default=Path("results/kfo/synthetic"),
                   help="output prefix: writes <out>.json and <out>.png")
    args = p.parse_args(argv)
    if not 0 < args.adapt_points < args.points:
        p.error("--adapt-points must be between 1 and --points - 1")
    args.lr_override = {}
    for item in args.lr:
        name, _, vals = item.partition("=")
        if name not in METHODS:
            p.error(f"--lr: unknown method {name!r}")
        meta, adapt_ = (float(v) for v in vals.split(","))
        args.lr_override[name] = (meta, adapt_)
    return args


def main(argv: Optional[Sequence[str]] = None) -> Dict[str, Any]:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    mixing = make_mixing(args.setting, args.condition, args.cov_seed)
    streams = [TaskStream(args.setting, args.points, mixing) for _ in args.seeds]
    n = args.adapt_points
    analysis = {"one_step_ceiling": one_step_ceiling(n), "adapt_points": n, "held_out_points": args.points - n,
                "dim": DIM}
    analysis.update(monte_carlo_references(args, streams, args.seeds))
    print(f"one-step ceiling 1 - arccos(1/sqrt(1 + pi d/(2N)))/pi at N={n}, d={DIM}: "
          f"{analysis['one_step_ceiling']:.2%}; plain step from the origin (Monte Carlo): "
          f"{analysis['plain_step_from_origin']:.2%}"
          + (f"; true preconditioner: {analysis['true_preconditioner_step_from_origin']:.2%}"
             if "true_preconditioner_step_from_origin" in analysis else ""))
    results: Dict[str, Any] = {"config": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()
                                          if k not in ("lr", "lr_override")},
                               "lr_overrides": args.lr_override, "analysis": analysis, "methods": [],
                               "attempts": []}
    for name in args.methods:
        for scale in args.lr_backoff:
            r = run_method(name, args, streams, list(args.seeds), scale)
            results["attempts"].append({k: r[k] for k in ("method", "meta_lr", "adapt_lr", "diverged_at",
                                                          "iterations_run", "seconds")})
            if r["diverged_at"] is None:
                break
            print(f"{name}: meta/adapt lr {r['meta_lr']:g}/{r['adapt_lr']:g} diverged at iteration "
                  f"{r['diverged_at']}; retrying with smaller learning rates")
        results["methods"].append(r)
    print_table(results)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    json_path, png_path = args.out.with_suffix(".json"), args.out.with_suffix(".png")
    json_path.write_text(json.dumps(results, indent=1))
    plot(results, png_path)
    print(f"wrote {json_path} and {png_path}")
    return results


def print_table(results: Dict[str, Any]) -> None:
    iso = results["config"]["setting"] == "isotropic"
    print(f"\n{'method':<22} {'lr meta/adapt':>14} {'post-adapt acc':>18} {'pre':>7} "
          f"{'paper':>16} {'ceiling':>8} {'ms/it':>7}")
    for r in results["methods"]:
        paper = METHODS[r["method"]]["paper"]
        if r["diverged_at"] is not None:
            acc = f"diverged@{r['diverged_at']}"
            pre = "-"
        else:
            acc = f"{100 * r['final_test_post_mean']:.2f} +- {100 * r['final_test_post_std']:.2f}"
            pre = f"{100 * r['final_test_pre_mean']:.1f}"
        print(f"{r['label']:<22} {r['meta_lr']:>6g}/{r['adapt_lr']:<7g} {acc:>18} {pre:>7} "
              f"{(f'{paper[0]:.2f} +- {paper[1]:.2f}' if iso else '-'):>16} "
              f"{100 * results['analysis']['one_step_ceiling']:>7.2f} {r['train_ms_per_iteration_all_seeds']:>7.1f}")


if __name__ == "__main__":
    main(sys.argv[1:])
