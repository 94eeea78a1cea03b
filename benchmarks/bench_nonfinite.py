"""Cost of the non-finite gradient check, as users meet it in ``meta_backward()``.

Interleaved within one process (every repeat runs every row once), medians and minima, one
thread, La-MAML's MLP 784-100-100-10 (6 tensors, 89,610 parameters):

* ``meta_backward()`` of ``LookaheadLRSGD`` inside an episode after one inner step (what users
  call; it includes the check over the outer gradients and the traces);
* ``[op]`` rows: the check alone -- ``sparse_optim.ops.all_finite`` (native on CPU), the
  reference expression, and the ``torch._foreach_norm(inf)`` expression the library used before.

    python benchmarks/bench_nonfinite.py --repeats 2000 --out benchmarks/results/nonfinite.txt
"""
from __future__ import annotations

import argparse
import platform
import statistics
import sys
import time

import torch

import sparse_optim as so
from sparse_optim import ops
from sparse_optim.models import MLP
from sparse_optim.ops import reference


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--repeats", type=int, default=2000)
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    torch.set_num_threads(1)
    torch.manual_seed(0)
    model = MLP((784, 100, 100, 10))
    opt = so.LookaheadLRSGD(model.named_parameters(), lr=0.15, rate_lr=0.3)
    x, y = torch.rand(20, 784), torch.randint(0, 10, (20,))
    tensors = [torch.randn_like(p) for p in model.parameters()] * 2  # outer gradients + traces

    ep = opt.episode()
    ep.__enter__()
    torch.nn.functional.cross_entropy(model(x), y).backward()
    opt.step()
    torch.nn.functional.cross_entropy(model(x), y).backward()

    def meta_backward():
        opt.meta_backward()

    rows = [
        ("LookaheadLRSGD.meta_backward()", meta_backward),
        ("[op] ops.all_finite (native)", lambda: bool(ops.all_finite(tensors))),
        ("[op] reference.all_finite", lambda: bool(reference.all_finite(tensors))),
        ("[op] before: stack(_foreach_norm(inf)).isfinite().all()",
         lambda: bool(torch.stack(torch._foreach_norm(tensors, float("inf"))).isfinite().all())),
    ]
    times = {name: [] for name, _ in rows}
    for r in range(args.repeats + 50):
        for name, fn in rows:
            t = time.perf_counter(); fn(); elapsed = time.perf_counter() - t
            if r >= 50:
                times[name].append(elapsed)
    ep.__exit__(None, None, None)
    lines = [f"Command: python {' '.join(sys.argv)}",
             f"# {platform.processor() or platform.machine()}, torch {torch.__version__}, 1 thread, "
             f"backend {ops.backend()}, repeats {args.repeats} (interleaved)",
             f"{'row':<58} {'median us':>10} {'min us':>8}"]
    for name, _ in rows:
        lines.append(f"{name:<58} {statistics.median(times[name]) * 1e6:>10.1f} {min(times[name]) * 1e6:>8.1f}")
    print("\n".join(lines))
    if args.out:
        with open(args.out, "w") as f:
            f.write("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
