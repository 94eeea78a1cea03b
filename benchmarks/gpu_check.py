"""One-shot device check of the sparse_optim native kernels (and the Triton path on CUDA):

    python benchmarks/gpu_check.py [cpu|cuda] [--big]

Adapted from ../shared/device/gpu_check.py to the current ops (gate kinds as strings,
``native.available()`` / ``native.supports(device)``, ``triton_ops``). Each section prints
PASS / FAIL / SKIP / INFO and nothing aborts the run; the exit code is 1 if any section failed.
Sections that need a GPU print SKIP on the CPU.
"""
import sys
import traceback
import warnings

import torch

warnings.simplefilter("ignore")
from sparse_optim.ops import kronecker, native, reference, triton_ops  # noqa: E402

dev = sys.argv[1] if len(sys.argv) > 1 and not sys.argv[1].startswith("-") else "cuda"
BIG = "--big" in sys.argv
if dev == "cuda" and not torch.cuda.is_available():
    print("no CUDA device here: run `python benchmarks/gpu_check.py cpu` for the CPU kernels")
    sys.exit(0)
if not native.available():
    print("FAIL the native extension is not available (see the warning above)")
    sys.exit(1)
print("device", dev, "native kernels:", native.supports(dev), "torch", torch.__version__)
if dev == "cuda":
    print(torch.cuda.get_device_name(), "capability", torch.cuda.get_device_capability(),
          "triton:", triton_ops.available("cuda"))
gen = torch.Generator().manual_seed(0)
TOL = {torch.float32: (1e-5, 1e-6), torch.float64: (1e-12, 1e-12), torch.float16: (2e-3, 4e-3),
       torch.bfloat16: (2e-2, 3e-2)}
CHUNK = 1 << 16
failures = []


def rnd(shape, dtype, d=dev):
    return torch.randn(shape, generator=gen).to(device=d, dtype=dtype)


def section(name):
    def wrap(f):
        try:
            f()
        except Exception:
            failures.append(name)
            print("FAIL", name)
            traceback.print_exc(limit=4)
        return f
    return wrap


def check(ok, what):
    if not ok:
        raise AssertionError(what)


class NoFallback:  # the native wrapper must not fall back to the reference
    def __getattr__(self, name):
        raise AssertionError("fell back to reference." + name)


def both_step(params, grads, metas, bufs, traces, impl=native, **kw):
    ref = [None if x is None else [None if t is None else t.clone() for t in x]
           for x in (params, grads, metas, bufs, traces)]
    reference.gated_sgd_step_(*ref, **kw)
    saved, native.reference = native.reference, NoFallback()
    try:
        impl.gated_sgd_step_(params, grads, metas, bufs, traces, **kw)
    finally:
        native.reference = saved
    return (params, bufs, traces), (ref[0], ref[3], ref[4])


def close(a_list, e_list, dtype, what):
    for i, (a, e) in enumerate(zip(a_list, e_list)):
        rtol, atol = TOL[dtype]
        torch.testing.assert_close(a, e, rtol=rtol, atol=atol, msg=lambda m: f"{what}[{i}] {m}")


def sync():
    if dev == "cuda":
        torch.cuda.synchronize()


@section("A chunk tables: many tensors, > 320 chunks, sizes 0/1/chunk-1/chunk/chunk+1")
def _():
    sizes = [0, 1, CHUNK - 1, CHUNK, CHUNK + 1, 7, 3 * CHUNK + 1] * 5 + [320 * CHUNK + 3, 5, 641 * CHUNK - 1]
    sizes += [(i * 37) % 300 for i in range(1300)]  # more tensors than one 32 KB kernel argument holds
    if dev == "cpu":
        sizes = [s if s < 10 ** 6 else 10 ** 6 + 3 for s in sizes]
    for pd, md in [(torch.float32, torch.float32), (torch.bfloat16, torch.float32), (torch.float16, torch.float16),
                   (torch.float64, torch.float64)]:
        for kind, momentum, with_trace in [("relu", 0.0, False), ("step", 0.9, True), ("linear", 0.9, False)]:
            P = [rnd((s,), pd) for s in sizes]
            G = [rnd((s,), pd) for s in sizes]
            M = [rnd((s,), md) for s in sizes]
            B = ([None if i % 3 == 0 else rnd((s,), pd) for i, s in enumerate(sizes)] if momentum
                 else [None] * len(sizes))
            T = [rnd((s,), md) for s in sizes] if with_trace else None
            (p, b, t), (rp, rb, rt) = both_step(P, G, M, B, T, kind=kind, scale=0.3, weight_decay=0.01,
                                                momentum=momentum, dampening=0.0, nesterov=bool(momentum),
                                                trace_decay=0.5)
            close(p, rp, pd, f"params {pd} {kind}")
            if momentum:
                close(b, rb, pd, "bufs")
            if with_trace:
                close(t, rt, pd, "traces")
    print("PASS A")


@section("B layouts: storage offset 1 (misaligned half), transposed, channels_last, expanded grad")
def _():
    base = rnd((4097,), torch.float16)
    first = base[0].clone()
    p = base[1:].view(64, 64)                                   # 2-byte misaligned start
    g = rnd((64, 64), torch.float16).t()                         # permuted
    m = rnd((64, 64), torch.float32)
    w = rnd((32, 16, 3, 3), torch.float32).to(memory_format=torch.channels_last)
    gw = rnd((1, 16, 3, 3), torch.float32).expand(32, 16, 3, 3)  # stride 0
    mw = rnd((32, 16, 3, 3), torch.float32)
    (pp, _, _), (rp, _, _) = both_step([p], [g], [m.half()], [None], None, kind="step", scale=0.1)
    close(pp, rp, torch.float16, "fp16 offset view")
    (pp, _, _), (rp, _, _) = both_step([w], [gw], [mw], [None], None, kind="relu", scale=0.1, momentum=0.9)
    close(pp, rp, torch.float32, "channels_last + expanded grad")
    bb = rnd((CHUNK + 9,), torch.bfloat16)
    before = bb[0].clone()
    view = bb[1:]                                                # bf16 misaligned, > one chunk
    (pp, _, _), (rp, _, _) = both_step([view], [rnd(view.shape, torch.bfloat16)], [rnd(view.shape, torch.float32)],
                                       [None], None, kind="linear", scale=0.1)
    close(pp, rp, torch.bfloat16, "bf16 offset view")
    check(torch.equal(base[0], first) and torch.equal(bb[0], before), "an element before a view was written")
    print("PASS B")


@section("C aliasing: meta_grads is metas (online hypergradient step)")
def _():
    m = [rnd((1000,), torch.float32), rnd((33, 17), torch.float32)[:, ::2], rnd((CHUNK + 3,), torch.float32)]
    mr = [x.clone() for x in m]
    g = [rnd(x.shape, torch.bfloat16) for x in m]
    t = [rnd(x.shape, torch.float32) for x in m]
    reference.meta_grad_accumulate_(mr, g, t, mr, kind="relu", scale=0.5, straight_through=False)
    native.meta_grad_accumulate_(m, g, t, m, kind="relu", scale=0.5, straight_through=False)
    close(m, mr, torch.float32, "aliased metas")
    print("PASS C")


@section("D one list on two devices: NotImplementedError (the dispatcher regroups), no RuntimeError")
def _():
    if dev != "cuda":
        print("SKIP D (cuda only)")
        return
    other = "cuda:1" if torch.cuda.device_count() > 1 else "cpu"
    P = [rnd((10,), torch.float32), rnd((10,), torch.float32, other)]
    try:
        native.gated_sgd_step_(P, [x.clone() for x in P], [x.clone() for x in P], [None, None], None, kind="step",
                               scale=0.1)
        print("PASS D (no error)")
    except NotImplementedError:
        print("PASS D (NotImplementedError: regrouped by the dispatcher)")


@section("E side stream + CUDA graph capture")
def _():
    if dev != "cuda":
        print("SKIP E (cuda only)")
        return
    s = torch.cuda.Stream()
    s.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(s):
        P = [torch.randn(5_000_000, device=dev)]
        G = [torch.randn_like(P[0])]
        M = [torch.randn_like(P[0])]
        want = P[0] - 0.1 * (M[0] >= 0).float() * G[0]
        native.gated_sgd_step_(P, G, M, [None], None, kind="step", scale=0.1)
        ok = torch.allclose(P[0], want)
    s.synchronize()
    check(ok, "side stream result")
    P = [torch.zeros(1_000_000, device=dev)]
    G = [torch.ones_like(P[0])]
    M = [torch.ones_like(P[0])]
    torch.cuda.synchronize()
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        torch.ops.sparse_optim.gated_sgd_step_(P, G, M, [], [], [], "step", 1.0, 0.0, 0.0, 0.0, False, False, 1.0)
    for _ in range(3):
        graph.replay()
    torch.cuda.synchronize()
    check(bool(torch.all(P[0] == -3)), f"graph replay: {P[0][:3]}")
    print("PASS E")


@section("F >= 2**31 elements (int64 indexing)")
def _():
    if not (BIG and dev == "cuda"):
        print("SKIP F (pass --big on cuda)")
        return
    n = 2 ** 31 + 5
    p = torch.zeros(n, device=dev)
    g = torch.ones(n, device=dev)
    m = torch.ones(n, device=dev)
    torch.ops.sparse_optim.gated_sgd_step_([p], [g], [m], [], [], [], "step", 1.0, 0.0, 0.0, 0.0, False, False, 1.0)
    bad = int((p != -1).sum())
    check(bad == 0, f"{bad} wrong, tail {p[-6:].tolist()}")
    del p, g, m
    torch.cuda.empty_cache()
    print("PASS F")


@section("G bandwidth (GB/s) against a device copy and torch._fused_sgd_")
def _():
    if dev != "cuda":
        print("SKIP G (cuda only; benchmarks/bench_cuda_bandwidth.py has the full table)")
        return
    n = 1 << 28

    def bench(fn, nbytes, reps=10):
        fn()
        torch.cuda.synchronize()
        a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        a.record()
        for _ in range(reps):
            fn()
        b.record()
        torch.cuda.synchronize()
        return nbytes * reps / (a.elapsed_time(b) * 1e-3) / 1e9

    src, dst = torch.randn(n, device=dev), torch.empty(n, device=dev)
    copy = bench(lambda: dst.copy_(src), n * 8)
    del src, dst
    print(f"INFO copy_ fp32: {copy:.0f} GB/s")
    for pd, md, mom, tr in [(torch.float32, torch.float32, 0.0, False), (torch.float32, torch.float32, 0.9, True),
                            (torch.bfloat16, torch.float32, 0.0, False), (torch.bfloat16, torch.float32, 0.9, True)]:
        P, G, B = (torch.randn(n, device=dev, dtype=pd) for _ in range(3))
        M, T = (torch.randn(n, device=dev, dtype=md) for _ in range(2))
        e, f = pd.itemsize, md.itemsize
        nbytes = n * (3 * e + f + (2 * e if mom else 0) + (2 * f if tr else 0))
        gbs = bench(lambda: native.gated_sgd_step_([P], [G], [M], [B] if mom else [None], [T] if tr else None,
                                                   kind="step", scale=1e-9, momentum=mom), nbytes)
        line = f"gated_step {pd} meta {md} momentum={mom} trace={tr}: {gbs:.0f} GB/s ({gbs / copy:.2f} x copy)"
        if triton_ops.available("cuda"):
            tgbs = bench(lambda: triton_ops.gated_sgd_step_([P], [G], [M], [B] if mom else [None],
                                                            [T] if tr else None, kind="step", scale=1e-9,
                                                            momentum=mom), nbytes)
            line += f"; triton {tgbs:.0f} GB/s ({tgbs / copy:.2f} x copy)"
        print("INFO", line)
        del P, G, B, M, T
    P, G, B = (torch.randn(n, device=dev) for _ in range(3))
    sgd = bench(lambda: torch._fused_sgd_([P], [G], [B], weight_decay=0., momentum=0.9, lr=1e-9, dampening=0.,
                                          nesterov=False, maximize=False, is_first_step=False), n * 4 * 5)
    print(f"INFO torch._fused_sgd_ momentum fp32: {sgd:.0f} GB/s ({sgd / copy:.2f} x copy)")
    del P, G, B
    torch.cuda.empty_cache()
    print("PASS G (numbers above)")


@section("H kronecker_update_ on the device vs the Python reference op")
def _():
    from sparse_optim.functional.kronecker import matrix_shape

    shapes = [(64, 32, 3, 3), (1600, 5), (5, 1600), (128,), (64, 32, 3, 3)]
    for variant in ("kronecker", "cholesky"):
        P = [rnd(s, torch.bfloat16) for s in shapes]
        D = [rnd(s, torch.bfloat16) for s in shapes]
        F = []
        for s in shapes:
            numel = torch.Size(s).numel()
            if variant == "kronecker":
                _, r, c = matrix_shape(s)
                F.append({"L0": rnd((r, r), torch.float32), "R0": rnd((c, c), torch.float32),
                          "L1": rnd((r, r), torch.float32), "R1": rnd((c, c), torch.float32),
                          "bias": rnd(s, torch.float32), "scale": rnd((), torch.float32)})
            else:
                F.append({"C0": rnd((numel, 4), torch.float32), "C1": rnd((numel, 4), torch.float32),
                          "bias": rnd(s, torch.float32), "scale": rnd((), torch.float32)})
        R = [p.clone() for p in P]
        kronecker.kronecker_update_(R, D, F, lr=0.01, variant=variant, depth=2)
        native.kronecker_update_(P, D, F, lr=0.01, variant=variant, depth=2)
        close(P, R, torch.bfloat16, variant)
    print("PASS H")


@section("I Triton ops on the device vs the reference ops")
def _():
    if not (dev == "cuda" and triton_ops.available("cuda")):
        print("SKIP I (needs CUDA and Triton)")
        return
    sizes = [1, 1023, 1024, 1025, CHUNK + 3]
    for pd, md in [(torch.float32, torch.float32), (torch.bfloat16, torch.float32)]:
        for kind, momentum, with_trace in [("step", 0.0, False), ("relu", 0.9, True), ("linear", 0.9, False)]:
            P = [rnd((s,), pd) for s in sizes]
            G = [rnd((s,), pd) for s in sizes]
            M = [rnd((s,), md) for s in sizes]
            B = [rnd((s,), pd) if momentum else None for s in sizes]
            T = [rnd((s,), md) for s in sizes] if with_trace else None
            (p, b, t), (rp, rb, rt) = both_step(P, G, M, B, T, impl=triton_ops, kind=kind, scale=0.3,
                                                momentum=momentum, trace_decay=0.5)
            close(p, rp, pd, f"triton params {pd} {kind}")
            if momentum:
                close(b, rb, pd, "triton bufs")
            if with_trace:
                close(t, rt, pd, "triton traces")
    mg, g, t, m = ([rnd((s,), torch.float32) for s in sizes] for _ in range(4))
    expected = [x.clone() for x in mg]
    reference.meta_grad_accumulate_(expected, g, t, m, kind="relu", scale=0.3, straight_through=False)
    triton_ops.meta_grad_accumulate_(mg, g, t, m, kind="relu", scale=0.3, straight_through=False)
    close(mg, expected, torch.float32, "triton meta_grad")
    print("PASS I")


sync()
print("SUMMARY:", "all sections passed or skipped" if not failures else f"FAILED: {failures}")
sys.exit(1 if failures else 0)
