"""Second-order MAML meta-iterations: the library's differentiable paths against the peers.

Same model, data and inner-loop length; one meta-iteration = K differentiable inner steps per
task + the outer backward (to theta, and to the masks for the sparse-MAML rows). Interleaved
within one process (every repeat runs every row once), medians and minima:

* peers, plain MAML (no masks): a hand-written ``torch.autograd.grad(create_graph=True)`` loop,
  ``higher.innerloop_ctx`` with ``torch.optim.SGD``, ``torchopt.MetaSGD`` (if installed:
  ``pip install torchopt``; reported as missing otherwise);
* sparse-MAML, hand-written: the same loop with the update written inline
  (``p - lr * ST(1[m >= 0]) * g``);
* ours: ``sparse_optim.functional.masked_sgd`` in that loop, ``higher`` with ``MaskedSGD``,
  ``torch.func.vmap`` over the tasks with ``masked_sgd``.

Ratios are to torchopt's ``MetaSGD`` (the issue-14 target: ours <= 1.0x) and to the
hand-written sparse-MAML loop.

    python benchmarks/bench_differentiable.py --repeats 15
"""
from __future__ import annotations

import argparse
import platform
import statistics
import time

import higher
import torch
import torch.nn.functional as F
from torch.func import functional_call, grad, vmap

import sparse_optim as so
from sparse_optim.functional.gated import masked_sgd


class STStep(torch.autograd.Function):
    @staticmethod
    def forward(ctx, m):
        return (m >= 0).to(m.dtype)

    @staticmethod
    def backward(ctx, g):
        return g


def make_model(width: int) -> torch.nn.Module:
    return torch.nn.Sequential(
        torch.nn.Conv2d(1, width, 3, padding=1), torch.nn.BatchNorm2d(width, track_running_stats=False),
        torch.nn.ReLU(), torch.nn.MaxPool2d(2),
        torch.nn.Conv2d(width, width, 3, padding=1), torch.nn.BatchNorm2d(width, track_running_stats=False),
        torch.nn.ReLU(), torch.nn.MaxPool2d(2), torch.nn.Flatten(), torch.nn.Linear(width * 49, 5))


def interleaved(rows, repeats: int, reset):
    """{name: [seconds]}: every repeat runs every row once (one warm-up round first)."""
    times = {name: [] for name, _ in rows}
    for r in range(repeats + 1):
        for name, fn in rows:
            t = time.perf_counter(); fn(); elapsed = time.perf_counter() - t
            reset()
            if r:
                times[name].append(elapsed)
    return times


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=5)
    ap.add_argument("--width", type=int, default=32)
    ap.add_argument("--tasks", type=int, default=4)
    ap.add_argument("--repeats", type=int, default=15)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    model = make_model(args.width)
    names = [n for n, _ in model.named_parameters()]
    opt = so.MaskedSGD(model.parameters(), lr=0.1)
    masks = opt.meta_parameters()
    xs = torch.randn(args.tasks, 25, 1, 28, 28)
    ys = torch.randint(0, 5, (args.tasks, 25))
    K = args.steps

    def loss_at(params, x, y):
        return F.cross_entropy(functional_call(model, dict(zip(names, params)), (x,)), y)

    def hand_written_sgd():
        for t in range(args.tasks):
            params = list(model.parameters())
            for _ in range(K):
                gs = torch.autograd.grad(loss_at(params, xs[t], ys[t]), params, create_graph=True)
                params = [p - 0.1 * g for p, g in zip(params, gs)]
            loss_at(params, xs[t], ys[t]).backward()

    plain_sgd = torch.optim.SGD(model.parameters(), lr=0.1)

    def higher_sgd():
        for t in range(args.tasks):
            with higher.innerloop_ctx(model, plain_sgd, copy_initial_weights=False) as (fm, diffopt):
                for _ in range(K):
                    diffopt.step(F.cross_entropy(fm(xs[t]), ys[t]))
                F.cross_entropy(fm(xs[t]), ys[t]).backward()

    try:
        import torchopt
    except ImportError as error:
        torchopt, missing = None, f"not installed ({error})"

    def torchopt_metasgd():
        inner = torchopt.MetaSGD(model, lr=0.1)
        state = torchopt.extract_state_dict(model)
        for t in range(args.tasks):
            for _ in range(K):
                inner.step(F.cross_entropy(model(xs[t]), ys[t]))
            F.cross_entropy(model(xs[t]), ys[t]).backward()
            torchopt.recover_state_dict(model, state)

    def hand_written():
        for t in range(args.tasks):
            params = list(model.parameters())
            for _ in range(K):
                gs = torch.autograd.grad(loss_at(params, xs[t], ys[t]), params, create_graph=True)
                params = [p - 0.1 * STStep.apply(m) * g for p, g, m in zip(params, gs, masks)]
            loss_at(params, xs[t], ys[t]).backward()

    def functional():
        for t in range(args.tasks):
            params = list(model.parameters())
            for _ in range(K):
                gs = torch.autograd.grad(loss_at(params, xs[t], ys[t]), params, create_graph=True)
                params = masked_sgd(params, gs, masks, lr=0.1)
            loss_at(params, xs[t], ys[t]).backward()

    def with_higher():
        for t in range(args.tasks):
            with higher.innerloop_ctx(model, opt, copy_initial_weights=False) as (fm, diffopt):
                for _ in range(K):
                    diffopt.step(F.cross_entropy(fm(xs[t]), ys[t]))
                F.cross_entropy(fm(xs[t]), ys[t]).backward()

    pdict = {n: p for n, p in model.named_parameters()}
    mdict = dict(zip(names, masks))

    def task_loss(p, x, y):
        return F.cross_entropy(functional_call(model, p, (x,)), y)

    def adapt(p, m, x, y):
        for _ in range(K):
            p = masked_sgd(p, grad(task_loss)(p, x, y), m, lr=0.1)
        return task_loss(p, x, y)

    def vmapped():
        vmap(adapt, in_dims=(None, None, 0, 0))(pdict, mdict, xs, ys).sum().backward()

    peer = "torchopt.MetaSGD (peer, SGD)"
    rows = [("hand-written loop (peer, SGD)", hand_written_sgd), ("higher + torch.optim.SGD (peer)", higher_sgd)]
    if torchopt is not None:
        rows.append((peer, torchopt_metasgd))
    rows += [("hand-written loop, inline mask", hand_written), ("ours: functional.masked_sgd", functional),
             ("ours: higher + MaskedSGD", with_higher), ("ours: torch.func.vmap over tasks", vmapped)]

    def reset():
        model.zero_grad(); opt.zero_meta_grad()

    times = interleaved(rows, args.repeats, reset)
    print(f"# {platform.processor() or platform.machine()}, torch {torch.__version__}, threads={args.threads}, "
          f"K={K}, tasks={args.tasks}, width={args.width}, repeats={args.repeats} (interleaved)")
    if torchopt is None:
        print(f"# torchopt: {missing}")
    base = statistics.median(times[peer]) if peer in times else None
    masked = statistics.median(times["hand-written loop, inline mask"])
    print(f"{'path':<34} {'median ms':>10} {'min ms':>8} {'/torchopt':>10} {'/hand mask':>11}")
    for name, _ in rows:
        med, mn = statistics.median(times[name]), min(times[name])
        vs_peer = f"{med / base:>10.2f}" if base else f"{'n/a':>10}"
        print(f"{name:<34} {med * 1e3:>10.1f} {mn * 1e3:>8.1f} {vs_peer} {med / masked:>11.2f}")


if __name__ == "__main__":
    main()
