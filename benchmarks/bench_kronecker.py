"""Kronecker-factored updates on CPU: the batched op (native and reference) against per-layer matmuls.

    python benchmarks/bench_kronecker.py [--threads N] [--repeats R] [--out FILE]

Every method performs the KLin update of KFO Eq. 5, ``p -= lr * vec^-1((R^T (x) L) vec(G))``, for
every tensor of a parameter set (float32, factors = identity + noise):

- "batched op, native / reference": ``kronecker_update_`` of :mod:`sparse_optim.ops.native` (the C++
  op) or of :mod:`sparse_optim.ops.kronecker` (the pure-PyTorch reference op): grouped, stacked,
  batched GEMMs, the column frame for n x m with m < n;
- "two matmuls per layer": ``L @ G @ R`` per parameter in Python, on the matrix view (a convolution
  is a batch of HW x C matrices), then ``p -= lr * U`` (the pre-batching KroneckerSGD step);
- "materialised kron": ``torch.kron(R^T, L) @ vec(G)``, built once outside the timing, where the
  (nm)^2 matrices of a set fit in --kron-limit-mib.

Methods are timed round-robin after a warm-up (helpers of bench_elementwise.py); a sample is the
mean over a batch of calls lasting about --sample-ms. GFLOP/s count the 2 n m (n + m) flops per
n x m matrix of ``L G R`` for every method (the materialised product does nm / (n + m) times
more), from the min time.
"""
from __future__ import annotations

import argparse
import datetime
import os
import statistics
import sys
from typing import Callable, Dict, List, Sequence, Tuple

import torch

from bench_elementwise import convnet4, machine_description, time_round_robin
from sparse_optim.functional.kronecker import from_matrix, matrix_shape, to_matrix
from sparse_optim.ops import kronecker as reference_op, native

Shapes = List[Tuple[int, ...]]
LR = 1e-3

PARAMETER_SETS: Dict[str, Shapes] = {
    "ConvNet-4 (all 18 tensors)": convnet4(),
    "thin 5x1600": [(5, 1600)],
    "thin 1600x5": [(1600, 5)],
    "thin 10x4096": [(10, 4096)],
    "thin 4096x10": [(4096, 10)],
    "thin 1x100": [(1, 100)],
    "thin 100x1": [(100, 1)],
    "square 256": [(256, 256)],
    "square 1024": [(1024, 1024)],
}


class Workload:
    """Parameters, directions and KLin factors (identity + noise) of one parameter set."""

    def __init__(self, shapes: Shapes) -> None:
        gen = torch.Generator().manual_seed(0)
        self.params = [torch.randn(s, generator=gen) for s in shapes]
        self.directions = [torch.randn(s, generator=gen) for s in shapes]
        self.factors = []
        for s in shapes:
            _, n, m = matrix_shape(s)
            self.factors.append({"L0": torch.eye(n) + 0.01 * torch.randn(n, n, generator=gen),
                                 "R0": torch.eye(m) + 0.01 * torch.randn(m, m, generator=gen)})
        self.flops = sum(b * 2 * n * m * (n + m) for b, n, m in map(matrix_shape, shapes))
        self.kron_bytes = sum((n * m) ** 2 * 4 for _, n, m in map(matrix_shape, shapes))

    def batched(self, module) -> Callable[[], None]:
        return lambda: module.kronecker_update_(self.params, self.directions, self.factors, lr=LR)

    def per_layer_matmuls(self) -> Callable[[], None]:
        def step() -> None:
            with torch.no_grad():
                for p, d, f in zip(self.params, self.directions, self.factors):
                    p.sub_(from_matrix(f["L0"] @ to_matrix(d) @ f["R0"], p.shape), alpha=LR)

        return step

    def materialised_kron(self) -> Callable[[], None]:
        krons = [torch.kron(f["R0"].T.contiguous(), f["L0"]) for f in self.factors]

        def step() -> None:
            with torch.no_grad():
                for p, d, k in zip(self.params, self.directions, krons):
                    g = to_matrix(d)  # (B, n, m); vec stacks columns: vec(G) = G^T flattened
                    u = (g.transpose(1, 2).reshape(g.shape[0], -1) @ k.T).view(g.shape[0], g.shape[2], g.shape[1])
                    p.sub_(from_matrix(u.transpose(1, 2), p.shape), alpha=LR)

        return step


def methods(w: Workload, kron_limit_bytes: int) -> Dict[str, Callable[[], None]]:
    table: Dict[str, Callable[[], None]] = {}
    if native.available():
        table["batched op, native"] = w.batched(native)
    table["batched op, reference"] = w.batched(reference_op)
    table["two matmuls per layer"] = w.per_layer_matmuls()
    if w.kron_bytes <= kron_limit_bytes:
        table["materialised kron"] = w.materialised_kron()
    return table


def check_agreement(w: Workload, table: Dict[str, Callable[[], None]]) -> None:
    """Every method computes the same update (from identical starting parameters)."""
    start = [p.clone() for p in w.params]
    results = {}
    for name, step in table.items():
        for p, s in zip(w.params, start):
            p.copy_(s)
        step()
        results[name] = [p.clone() for p in w.params]
    baseline = results["two matmuls per layer"]
    for name, got in results.items():
        for a, b in zip(got, baseline):
            torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5, msg=lambda m: f"{name}: {m}")
    for p, s in zip(w.params, start):
        p.copy_(s)


def format_set(name: str, w: Workload, samples: Dict[str, List[float]]) -> List[str]:
    med = {method: statistics.median(times) for method, times in samples.items()}
    best = {method: min(times) for method, times in samples.items()}
    base_med, base_min = med["two matmuls per layer"], best["two matmuls per layer"]
    lines = [
        f"\n{name}: {sum(p.numel() for p in w.params):,} parameters in {len(w.params)} tensors, "
        f"{w.flops / 1e6:.2f} MFLOP per update",
        f"{'':<26}{'time per update':>20}{'':>9}{'speed-up vs':>18}",
        f"{'method':<26}{'median us':>10}{'min us':>10}{'GFLOP/s':>9}{'2 matmuls':>18}",
        f"{'':<55}{'median':>9}{'min':>9}",
    ]
    for method in samples:
        lines.append(
            f"{method:<26}{med[method] * 1e6:>10.1f}{best[method] * 1e6:>10.1f}{w.flops / best[method] / 1e9:>9.1f}"
            f"{base_med / med[method]:>9.2f}{base_min / best[method]:>9.2f}"
        )
    return lines


def pin_threads(threads: int) -> None:
    """``threads`` intra-op threads, bound to the first ``threads`` CPUs this process may use."""
    torch.set_num_threads(threads)
    if hasattr(os, "sched_setaffinity"):
        cpus = sorted(os.sched_getaffinity(0))[:threads]
        os.sched_setaffinity(0, cpus)


def main(argv: Sequence[str] = ()) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--threads", type=int, default=os.cpu_count())
    parser.add_argument("--repeats", type=int, default=25)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--sample-ms", type=float, default=50.0)
    parser.add_argument("--kron-limit-mib", type=int, default=1024)
    parser.add_argument("--sets", nargs="*", default=list(PARAMETER_SETS), choices=list(PARAMETER_SETS))
    parser.add_argument("--out", help="also write the report to this file")
    args = parser.parse_args(argv or None)

    pin_threads(args.threads)
    lines = [
        f"command: python {' '.join(sys.argv)}",
        f"date: {datetime.datetime.now().isoformat(timespec='seconds')}",
        *machine_description(args.threads),
        f"float32 on CPU, KLin (depth 1, no bias / normalisation); times per update of the whole set; "
        f"median and min over {args.repeats} round-robin samples; GFLOP/s from min time.",
    ]
    print("\n".join(lines), flush=True)
    for name in args.sets:
        w = Workload(PARAMETER_SETS[name])
        table = methods(w, args.kron_limit_mib << 20)
        check_agreement(w, table)
        samples = time_round_robin(table, args.repeats, args.warmup, args.sample_ms)
        block = format_set(name, w, samples)
        print("\n".join(block), flush=True)
        lines += block
    lines.append(f"\nload average at end: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    print(lines[-1])
    if args.out:
        os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
        with open(args.out, "w") as f:
            f.write("\n".join(lines) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
