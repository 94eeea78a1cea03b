"""Memory bandwidth of the CUDA kernels (csrc/gated_cuda.cu) and of the Triton path, against a
device-to-device copy of the same bytes and torch._fused_sgd_ on the same parameters.

    python benchmarks/bench_cuda_bandwidth.py [--repeats N] [--sets resnet12,large] [--cpu]

GB/s counts the bytes an op must move (each operand read once, each written operand written
once) over its time from CUDA events; a sample times --calls back-to-back calls, the methods of
a row are timed interleaved (round-robin, N rounds), and median and best (min time) are printed.
"copy" is dst.copy_(src) moving the same bytes; "x copy" is the op's GB/s over the copy's (target
>= 0.85); "x fused_sgd" is the op's time over torch._fused_sgd_'s with the same momentum (target
<= 1.4 for the masked step, which moves 4/3 of SGD's bytes). Without a GPU it says so and exits;
--cpu runs the same table on the CPU kernels (a check of this script, not of the CUDA kernels).
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
from dataclasses import dataclass
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import torch

Shapes = List[Tuple[int, ...]]


def resnet12() -> Shapes:
    """4 residual blocks (64-160-320-640): 3 conv3x3 + BN each, 1x1 shortcut conv + BN; 5-way head
    (as benchmarks/bench_elementwise.py): 12.4 M parameters in 50 tensors."""
    shapes: Shapes = []
    channels = 3
    for width in (64, 160, 320, 640):
        for conv_in in (channels, width, width):
            shapes += [(width, conv_in, 3, 3), (width,), (width,)]
        shapes += [(width, channels, 1, 1), (width,), (width,)]
        channels = width
    return shapes + [(5, 640), (5,)]


def large() -> Shapes:
    """2**28 parameters (1 GiB of float32) in 4 tensors, one of odd size."""
    return [(1 << 26,), (1 << 26,), (1 << 26,), ((1 << 26) - 3,)]


PARAMETER_SETS: Dict[str, Callable[[], Shapes]] = {"resnet12": resnet12, "large": large}


@dataclass
class Variant:
    name: str
    op: str  # "step" (gated_sgd_step_) or "meta_grad" (meta_grad_accumulate_)
    kind: str
    momentum: float = 0.0
    trace: bool = False


VARIANTS = [
    Variant("masked step", "step", "step"),
    Variant("masked + momentum", "step", "step", momentum=0.9),
    Variant("masked + momentum + trace", "step", "step", momentum=0.9, trace=True),
    Variant("relu gate", "step", "relu"),
    Variant("linear gate + momentum", "step", "linear", momentum=0.9),
    Variant("meta_grad_accumulate_ (relu)", "meta_grad", "relu"),
]


class Timer:
    """Seconds per call of fn, one sample = `calls` back-to-back calls (CUDA events or wall clock)."""

    def __init__(self, device: str, calls: int):
        self.device, self.calls = device, calls

    def sample(self, fn: Callable[[], None]) -> float:
        if self.device == "cuda":
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            for _ in range(self.calls):
                fn()
            end.record()
            end.synchronize()
            return start.elapsed_time(end) * 1e-3 / self.calls
        begin = time.perf_counter()
        for _ in range(self.calls):
            fn()
        return (time.perf_counter() - begin) / self.calls


def bytes_moved(variant: Variant, numel: int, p_size: int, m_size: int) -> int:
    if variant.op == "meta_grad":  # meta_grads read + written, outer grads, traces, metas read
        return numel * (2 * m_size + p_size + 2 * m_size)
    per = 3 * p_size + m_size  # p read + written, g read, m read
    if variant.momentum:
        per += 2 * p_size
    if variant.trace:
        per += 2 * m_size
    return numel * per


def make_inputs(shapes: Shapes, p_dtype, m_dtype, device):
    def make(dtype):
        return [torch.randn(s, device=device, dtype=torch.float32).to(dtype) for s in shapes]

    return dict(p=make(p_dtype), g=make(p_dtype), m=make(m_dtype), b=make(p_dtype), t=make(m_dtype),
                mg=make(m_dtype))


def native_call(variant: Variant, x) -> Callable[[], None]:
    op = torch.ops.sparse_optim
    if variant.op == "meta_grad":
        return lambda: op.meta_grad_accumulate_(x["mg"], x["g"], x["t"], x["m"], variant.kind, 1e-9, False)
    bufs = x["b"] if variant.momentum else []
    fresh = [False] * len(x["p"]) if variant.momentum else []
    traces = x["t"] if variant.trace else []
    return lambda: op.gated_sgd_step_(x["p"], x["g"], x["m"], bufs, traces, fresh, variant.kind, 1e-9, 0.0,
                                      variant.momentum, 0.0, False, False, 1.0)


def triton_call(variant: Variant, x) -> Callable[[], None]:
    from sparse_optim.ops import triton_ops

    if variant.op == "meta_grad":
        return lambda: triton_ops.meta_grad_accumulate_(x["mg"], x["g"], x["t"], x["m"], kind=variant.kind,
                                                        scale=1e-9, straight_through=False)
    bufs = x["b"] if variant.momentum else [None] * len(x["p"])
    traces = x["t"] if variant.trace else None
    return lambda: triton_ops.gated_sgd_step_(x["p"], x["g"], x["m"], bufs, traces, kind=variant.kind, scale=1e-9,
                                              momentum=variant.momentum)


def fused_sgd_call(variant: Variant, x) -> Optional[Callable[[], None]]:
    if variant.op != "step" or not hasattr(torch, "_fused_sgd_"):
        return None
    bufs = x["b"] if variant.momentum else []
    return lambda: torch._fused_sgd_(x["p"], x["g"], bufs, weight_decay=0.0, momentum=variant.momentum, lr=1e-9,
                                     dampening=0.0, nesterov=False, maximize=False, is_first_step=False)


def copy_call(nbytes: int, device: str) -> Callable[[], None]:
    half = max(nbytes // 2 // 4, 1)  # a copy reads and writes: half the bytes each way
    src = torch.randn(half, device=device)
    dst = torch.empty_like(src)
    return lambda: dst.copy_(src)


def measure(methods: Dict[str, Callable[[], None]], timer: Timer, repeats: int) -> Dict[str, List[float]]:
    for fn in methods.values():  # warm-up (Triton compiles here)
        fn()
        fn()
    if timer.device == "cuda":
        torch.cuda.synchronize()
    samples: Dict[str, List[float]] = {name: [] for name in methods}
    for _ in range(repeats):
        for name, fn in methods.items():
            samples[name].append(timer.sample(fn))
    return samples


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeats", type=int, default=15, help="interleaved rounds per row")
    parser.add_argument("--calls", type=int, default=0, help="calls per sample (default: 20 small set, 3 large)")
    parser.add_argument("--sets", default="resnet12,large")
    parser.add_argument("--cpu", action="store_true", help="time the CPU kernels instead (checks this script)")
    parser.add_argument("--no-triton", action="store_true")
    args = parser.parse_args(argv)

    device = "cpu" if args.cpu else "cuda"
    if device == "cuda" and not torch.cuda.is_available():
        print("no CUDA device: this benchmark times the CUDA kernels, nothing measured "
              "(--cpu runs it on the CPU kernels; benchmarks/bench_elementwise.py is the CPU benchmark)")
        return 0
    from sparse_optim.ops import native, triton_ops

    if not native.supports(device):
        print(f"the native {device} kernels are not built here: native rows skipped")
    use_native = native.supports(device)
    use_triton = device == "cuda" and not args.no_triton and triton_ops.available("cuda")
    if device == "cuda":
        props = torch.cuda.get_device_properties(0)
        print(f"# {props.name}, {props.multi_processor_count} SMs, torch {torch.__version__}, CUDA {torch.version.cuda}")
    else:
        print(f"# CPU check of the script ({torch.get_num_threads()} threads): the native CPU kernels, "
              "NOT the CUDA kernels; the CPU numbers say nothing about the GPU targets")
    dtype_pairs = [(torch.float32, torch.float32), (torch.bfloat16, torch.float32)]
    header = f"{'set':9} {'params':5} {'variant':29} {'method':10} {'GB/s med':>9} {'GB/s best':>9} {'x copy':>7} {'x fused_sgd':>11}"
    for set_name in args.sets.split(","):
        shapes = PARAMETER_SETS[set_name]()
        if device == "cpu" and set_name == "large":
            shapes = [(s[0] // 64,) for s in shapes]  # keep the CPU check short
        numel = sum(torch.Size(s).numel() for s in shapes)
        calls = args.calls or (20 if numel < (1 << 26) else 3)
        timer = Timer(device, calls)
        print(f"\n## {set_name}: {len(shapes)} tensors, {numel / 1e6:.1f} M parameters, {calls} calls per sample, "
              f"{args.repeats} interleaved rounds")
        print(header)
        for p_dtype, m_dtype in dtype_pairs:
            x = make_inputs(shapes, p_dtype, m_dtype, device)
            p_size, m_size = p_dtype.itemsize, m_dtype.itemsize
            for variant in VARIANTS:
                nbytes = bytes_moved(variant, numel, p_size, m_size)
                methods: Dict[str, Callable[[], None]] = {"copy": copy_call(nbytes, device)}
                if use_native:
                    methods["native"] = native_call(variant, x)
                if use_triton:
                    methods["triton"] = triton_call(variant, x)
                fused = fused_sgd_call(variant, x)
                if fused is not None:
                    methods["fused_sgd"] = fused
                samples = measure(methods, timer, args.repeats)
                median = {k: statistics.median(v) for k, v in samples.items()}
                copy_gbs = nbytes / median["copy"] / 1e9
                for name, times in samples.items():
                    if name == "fused_sgd":
                        sgd_bytes = numel * (3 * p_size + (2 * p_size if variant.momentum else 0))
                        gbs, best = sgd_bytes / median[name] / 1e9, sgd_bytes / min(times) / 1e9
                        ratio_copy, ratio_sgd = "", ""
                    else:
                        gbs, best = nbytes / median[name] / 1e9, nbytes / min(times) / 1e9
                        ratio_copy = "" if name == "copy" else f"{gbs / copy_gbs:.2f}"
                        ratio_sgd = (f"{median[name] / median['fused_sgd']:.2f}"
                                     if "fused_sgd" in median and name != "copy" else "")
                    pname = str(p_dtype).replace("torch.", "").replace("float32", "fp32").replace("bfloat16", "bf16")
                    print(f"{set_name:9} {pname:5} {variant.name:29} {name:10} {gbs:9.0f} {best:9.0f} {ratio_copy:>7} "
                          f"{ratio_sgd:>11}", flush=True)
            del x
            if device == "cuda":
                torch.cuda.empty_cache()
    return 0


if __name__ == "__main__":
    sys.exit(main())
