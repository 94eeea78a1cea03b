"""Optimizer overhead in a full first-order meta-iteration.

ConvNet-4 (64 filters, transductive BatchNorm), 5-way 5-shot with 15 queries per class,
5 inner steps, meta-batch of 2 tasks, Adam outer optimizer. The same loop is timed with

* ``torch.optim.SGD`` inside ``higher``-free first-order MAML (theta snapshot/restore by hand),
* ``MaskedSGD`` / ``RectifiedLRSGD`` / ``LookaheadLRSGD`` / ``KroneckerSGD`` episodes
  (masking, traces, first-order meta-gradients),

interleaved in rounds so that machine noise hits all variants alike. Prints median and min
seconds per meta-iteration and the overhead over the SGD loop.

    python benchmarks/bench_meta_iteration.py --rounds 5 --image-size 84
"""
from __future__ import annotations

import argparse
import platform
import statistics
import time

import torch
import torch.nn.functional as F

import sparse_optim as so
import sparse_optim.ops
from sparse_optim.models import ConvNet4

WAYS, SHOTS, QUERIES, STEPS, TASKS = 5, 5, 15, 5, 2


def make_tasks(size: int, gen: torch.Generator):
    def draw(n):
        return torch.randn(WAYS * n, 3, size, size, generator=gen), torch.arange(WAYS).repeat_interleave(n)
    return [(draw(SHOTS), draw(QUERIES)) for _ in range(TASKS)]


def sgd_meta_iteration(model, tasks, meta_opt, lr):
    inner = torch.optim.SGD(model.parameters(), lr=lr)
    theta = [p.detach().clone() for p in model.parameters()]
    outer = [torch.zeros_like(p) for p in theta]
    for (xs, ys), (xq, yq) in tasks:
        for _ in range(STEPS):
            inner.zero_grad(); F.cross_entropy(model(xs), ys).backward(); inner.step()
        inner.zero_grad(); F.cross_entropy(model(xq), yq).backward()
        with torch.no_grad():
            for acc, p, t in zip(outer, model.parameters(), theta):
                acc.add_(p.grad); p.copy_(t)
    for p, g in zip(model.parameters(), outer):
        p.grad = g
    meta_opt.step(); meta_opt.zero_grad()


def ours_meta_iteration(model, tasks, meta_opt, opt):
    for (xs, ys), (xq, yq) in tasks:
        with opt.episode():
            for _ in range(STEPS):
                opt.zero_grad(); F.cross_entropy(model(xs), ys).backward(); opt.step()
            opt.zero_grad(); F.cross_entropy(model(xq), yq).backward(); opt.meta_backward()
    meta_opt.step(); meta_opt.zero_grad(); opt.zero_meta_grad()


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--image-size", type=int, default=84)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    gen = torch.Generator().manual_seed(0)
    tasks = make_tasks(args.image_size, gen)
    variants = {}

    def add(name, make_opt):
        torch.manual_seed(0)
        model = ConvNet4(in_channels=3, num_classes=WAYS, image_size=args.image_size)
        if make_opt is None:
            meta_opt = torch.optim.Adam(model.parameters(), lr=1e-3)
            variants[name] = lambda: sgd_meta_iteration(model, tasks, meta_opt, 0.1)
        else:
            opt = make_opt(model.parameters())
            meta_opt = torch.optim.Adam(list(model.parameters()) + opt.meta_parameters(), lr=1e-3)
            variants[name] = lambda: ours_meta_iteration(model, tasks, meta_opt, opt)

    add("torch.optim.SGD (FOMAML)", None)
    add("MaskedSGD", lambda ps: so.MaskedSGD(ps, lr=0.1))
    add("RectifiedLRSGD", lambda ps: so.RectifiedLRSGD(ps, lr=0.1))
    add("LookaheadLRSGD", lambda ps: so.LookaheadLRSGD(ps, lr=0.1))
    add("KroneckerSGD (KLin)", lambda ps: so.KroneckerSGD(ps, lr=0.1))
    times = {name: [] for name in variants}
    for fn in variants.values():
        fn()  # warm-up
    for _ in range(args.rounds):
        for name, fn in variants.items():
            t = time.perf_counter(); fn(); times[name].append(time.perf_counter() - t)
    print(f"# {platform.machine()}, torch {torch.__version__}, threads={args.threads}, backend={so.ops.backend()}, "
          f"ConvNet-4 {args.image_size}x{args.image_size}, {WAYS}-way {SHOTS}-shot, {QUERIES} queries, "
          f"{STEPS} inner steps, {TASKS} tasks/iteration, {args.rounds} rounds")
    base = statistics.median(times["torch.optim.SGD (FOMAML)"])
    print(f"{'inner optimizer':<26} {'median s':>9} {'min s':>7} {'overhead':>9}")
    for name, ts in times.items():
        med = statistics.median(ts)
        print(f"{name:<26} {med:>9.3f} {min(ts):>7.3f} {100 * (med / base - 1):>8.1f}%")


if __name__ == "__main__":
    main()
