"""Overhead of the differentiable (second-order) paths against a hand-written loop.

Same model, data and inner-loop length; one meta-iteration = K differentiable inner steps
+ outer backward to theta and the masks. Compared, within one process:

* hand-written ``torch.autograd.grad(create_graph=True)`` loop with the sparse-MAML update
  written inline (``p - lr * ST(1[m >= 0]) * g``)
* ``sparse_optim.functional.masked_sgd`` in the same loop
* ``higher.innerloop_ctx`` with ``MaskedSGD``
* ``torch.func.vmap`` over the meta-batch with ``masked_sgd`` (vs a Python loop over tasks)

Prints median / min times and ratios to the hand-written loop.

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


def timeit(fn, repeats: int):
    fn()
    times = []
    for _ in range(repeats):
        t = time.perf_counter(); fn(); times.append(time.perf_counter() - t)
    return statistics.median(times), min(times)


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

    rows = [("hand-written autograd.grad loop", hand_written), ("functional.masked_sgd", functional),
            ("higher + MaskedSGD", with_higher),
            ("torch.func.vmap over tasks", vmapped)]
    print(f"# {platform.processor() or platform.machine()}, torch {torch.__version__}, threads={args.threads}, "
          f"K={K}, tasks={args.tasks}, width={args.width}")
    print(f"{'path':<34} {'median ms':>10} {'min ms':>8} {'ratio':>6}")
    base = None
    for name, fn in rows:
        med, mn = timeit(fn, args.repeats)
        model.zero_grad(); opt.zero_meta_grad()
        base = base or med
        print(f"{name:<34} {med * 1e3:>10.1f} {mn * 1e3:>8.1f} {med / base:>6.2f}")


if __name__ == "__main__":
    main()
