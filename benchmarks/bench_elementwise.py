"""Elementwise optimizer steps on CPU: torch.optim.SGD vs the gated steps (reference and native).

    python benchmarks/bench_elementwise.py [--threads N] [--repeats R] [--out FILE]

For each parameter set, every method is timed round-robin (so load from other processes hits
all methods alike) after a warmup; a sample is the mean over a batch of calls sized to last
about --sample-ms. Effective GB/s counts the minimal traffic of the update (float32: SGD reads
p, g and writes p = 12 B/element; a gated step adds the meta-parameter, 16 B; with a trace
24 B), and "x triad" divides it by the bandwidth of a triad a = b + s*c (torch.add(out=))
over a flat array of the same size, measured in the same process.
"""
from __future__ import annotations

import argparse
import datetime
import os
import platform
import statistics
import subprocess
import sys
import time
from typing import Callable, Dict, List, Sequence, Tuple

import torch

from sparse_optim import LookaheadLRSGD, MaskedSGD, MetaSGD, RectifiedLRSGD
from sparse_optim.ops import native, reference

Shapes = List[Tuple[int, ...]]
LR = 0.1


def convnet4() -> Shapes:
    """4 x (conv3x3 64 filters + bias, BN) on 84x84x3 input, linear head 1600 -> 5."""
    shapes: Shapes = []
    channels = 3
    for _ in range(4):
        shapes += [(64, channels, 3, 3), (64,), (64,), (64,)]
        channels = 64
    return shapes + [(5, 1600), (5,)]


def resnet12() -> Shapes:
    """4 residual blocks (64-160-320-640): 3 conv3x3 + BN each, 1x1 shortcut conv + BN; 5-way head."""
    shapes: Shapes = []
    channels = 3
    for width in (64, 160, 320, 640):
        for conv_in in (channels, width, width):
            shapes += [(width, conv_in, 3, 3), (width,), (width,)]
        shapes += [(width, channels, 1, 1), (width,), (width,)]
        channels = width
    return shapes + [(5, 640), (5,)]


def lamaml_mlp() -> Shapes:
    return [(100, 784), (100,), (100, 100), (100,), (10, 100), (10,)]


PARAMETER_SETS: Dict[str, Callable[[], Shapes]] = {
    "ConvNet-4": convnet4,
    "ResNet-12": resnet12,
    "MLP 784-100-100-10": lamaml_mlp,
    "4096x4096": lambda: [(4096, 4096)],
}


class Workload:
    """Parameters with gradients, mask logits / rates and traces of one parameter set."""

    def __init__(self, shapes: Shapes) -> None:
        gen = torch.Generator().manual_seed(0)
        self.params = [torch.randn(s, generator=gen).requires_grad_() for s in shapes]
        for p in self.params:
            p.grad = torch.randn(p.shape, generator=gen) * 1e-3
        self.grads = [p.grad for p in self.params]
        self.masks = [torch.randn(s, generator=gen) for s in shapes]
        self.rates = [torch.rand(s, generator=gen) * 0.15 - 0.05 for s in shapes]  # some clipped at 0
        self.traces = [torch.zeros(s) for s in shapes]
        self.numel = sum(p.numel() for p in self.params)

    def sgd(self, **flags) -> Callable[[], None]:
        opt = torch.optim.SGD(self.params, lr=LR, **flags)
        return opt.step

    def paper_snippet(self) -> Callable[[], None]:
        def step() -> None:
            with torch.no_grad():
                for p, m in zip(self.params, self.masks):
                    p.sub_(LR * 0.5 * (torch.sign(m) + 1) * p.grad)

        return step

    def gated(self, impl, kind: str, metas: Sequence[torch.Tensor], trace: bool) -> Callable[[], None]:
        scale = LR if kind == "step" else 1.0
        traces = self.traces if trace else None
        n = len(self.params)

        def step() -> None:
            impl.gated_sgd_step_(self.params, self.grads, metas, [None] * n, traces, kind=kind, scale=scale)

        return step

    def optimizer_step(self, cls) -> Callable[[], None]:
        """``opt.step()`` as a user calls it (native kernels: the default backend)."""
        return cls(self.params, lr=LR).step


def methods(w: Workload) -> Dict[str, Tuple[Callable[[], None], int]]:
    """name -> (step, bytes per element of minimal traffic)."""
    table = {
        "SGD for-loop": (w.sgd(foreach=False), 12),
        "SGD foreach": (w.sgd(foreach=True), 12),
        "SGD fused": (w.sgd(fused=True), 12),
        "paper snippet (per tensor)": (w.paper_snippet(), 16),
        "[op] masked, reference": (w.gated(reference, "step", w.masks, False), 16),
        "[op] masked, reference + trace": (w.gated(reference, "step", w.masks, True), 24),
    }
    if native.available():
        table.update({
            "[kernel] masked": (w.gated(native, "step", w.masks, False), 16),
            "[kernel] masked + trace": (w.gated(native, "step", w.masks, True), 24),
            "[kernel] rectified": (w.gated(native, "relu", w.masks, False), 16),
            "[kernel] clipped-rate": (w.gated(native, "relu", w.rates, False), 16),
            "[kernel] clipped-rate + trace": (w.gated(native, "relu", w.rates, True), 24),
            "[kernel] linear (Meta-SGD)": (w.gated(native, "linear", w.rates, False), 16),
        })
    for cls in (MaskedSGD, RectifiedLRSGD, LookaheadLRSGD, MetaSGD):
        table[f"{cls.__name__}.step()"] = (w.optimizer_step(cls), 16)
    return table


def triad(numel: int) -> Callable[[], None]:
    a, b, c = torch.empty(numel), torch.randn(numel), torch.randn(numel)
    return lambda: torch.add(b, c, alpha=0.5, out=a)


def calls_per_sample(step: Callable[[], None], sample_ms: float) -> int:
    start = time.perf_counter()
    step()
    elapsed = time.perf_counter() - start
    return max(1, int(sample_ms / 1e3 / max(elapsed, 1e-7)))


def time_round_robin(steps: Dict[str, Callable[[], None]], repeats: int, warmup: int, sample_ms: float):
    """Per-call seconds of each step: list of `repeats` samples, taken round-robin."""
    for step in steps.values():
        for _ in range(warmup):
            step()
    batch = {name: calls_per_sample(step, sample_ms) for name, step in steps.items()}
    samples: Dict[str, List[float]] = {name: [] for name in steps}
    for _ in range(repeats):
        for name, step in steps.items():
            start = time.perf_counter()
            for _ in range(batch[name]):
                step()
            samples[name].append((time.perf_counter() - start) / batch[name])
    return samples


def machine_description(threads: int) -> List[str]:
    try:
        model = next(line.split(":", 1)[1].strip() for line in subprocess.run(
            ["lscpu"], capture_output=True, text=True).stdout.splitlines() if line.startswith("Model name"))
    except (OSError, StopIteration):
        model = platform.processor() or "unknown"
    return [
        f"cpu: {model}; nproc: {os.cpu_count()}; torch threads: {threads}",
        f"torch {torch.__version__}; python {platform.python_version()}; {platform.platform()}",
        f"native backend: {'built' if native.available() else 'unavailable (reference only)'}",
        f"load average at start: {' '.join(f'{x:.2f}' for x in os.getloadavg())}",
    ]


def format_set(name: str, w: Workload, samples, bytes_per_element, triad_samples) -> List[str]:
    triad_gbs = 12 * w.numel / min(triad_samples) / 1e9
    med = {method: statistics.median(times) for method, times in samples.items()}
    best = {method: min(times) for method, times in samples.items()}
    lines = [
        f"\n{name}: {w.numel:,} parameters in {len(w.params)} tensors; "
        f"triad {triad_gbs:.1f} GB/s (min {min(triad_samples) * 1e6:.1f} us)",
        f"{'':<30}{'time per step':>20}{'min time':>17}{'/ SGD fused':>16}{'/ SGD foreach':>16}",
        f"{'method':<30}{'median us':>10}{'min us':>10}{'GB/s':>8}{'x triad':>9}"
        f"{'median':>8}{'min':>8}{'median':>8}{'min':>8}",
    ]
    for method in samples:
        gbs = bytes_per_element[method] * w.numel / best[method] / 1e9
        lines.append(
            f"{method:<30}{med[method] * 1e6:>10.1f}{best[method] * 1e6:>10.1f}{gbs:>8.1f}{gbs / triad_gbs:>9.2f}"
            f"{med[method] / med['SGD fused']:>8.2f}{best[method] / best['SGD fused']:>8.2f}"
            f"{med[method] / med['SGD foreach']:>8.2f}{best[method] / best['SGD foreach']:>8.2f}"
        )
    return lines


def main(argv: Sequence[str] = ()) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--threads", type=int, default=os.cpu_count())
    parser.add_argument("--repeats", type=int, default=25)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--sample-ms", type=float, default=20.0)
    parser.add_argument("--sets", nargs="*", default=list(PARAMETER_SETS), choices=list(PARAMETER_SETS))
    parser.add_argument("--out", help="also write the report to this file")
    args = parser.parse_args(argv or None)

    torch.set_num_threads(args.threads)
    lines = [
        f"command: python {' '.join(sys.argv)}",
        f"date: {datetime.datetime.now().isoformat(timespec='seconds')}",
        *machine_description(args.threads),
        f"float32 on CPU; times per optimizer step; median and min over {args.repeats} round-robin samples.",
        "GB/s from min time and minimal traffic; rectified and clipped-rate steps are the same kernel "
        "(relu gate) on different meta-parameters.",
        "[kernel] / [op] rows call the multi-tensor op directly (no optimizer); <Class>.step() rows are what "
        "a user's opt.step() costs.",
    ]
    print("\n".join(lines), flush=True)
    for name in args.sets:
        w = Workload(PARAMETER_SETS[name]())
        table = methods(w)
        steps = {method: step for method, (step, _) in table.items()}
        steps["triad"] = triad(w.numel)
        samples = time_round_robin(steps, args.repeats, args.warmup, args.sample_ms)
        triad_samples = samples.pop("triad")
        block = format_set(name, w, samples, {m: b for m, (_, b) in table.items()}, triad_samples)
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
