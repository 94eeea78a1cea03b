"""The CUDA kernels on a real GPU (skipped without one): the native ops of csrc/gated_cuda.cu and
the Triton ops against the reference ops, on inputs the CPU tests cannot reach -- several
kernel-argument tables and many chunks per launch, sizes around the chunk and vector widths,
>= 2**31 elements, misaligned half-precision views, side streams, CUDA graphs, torch.compile,
and KroneckerSGD on CUDA against the CPU."""
from __future__ import annotations

from typing import List
from unittest import mock

import pytest
import torch
import torch.nn.functional as F

import sparse_optim as so
from sparse_optim import ops
from sparse_optim.ops import reference

from conftest import GATE_KINDS, cases

pytestmark = [pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device"),
              pytest.mark.filterwarnings("ignore::RuntimeWarning")]

CHUNK = 1 << 16  # elements per block of the CUDA kernels
DTYPE_PAIRS = [(torch.float32, torch.float32), (torch.bfloat16, torch.float32), (torch.float16, torch.float32),
               (torch.bfloat16, torch.bfloat16), (torch.float16, torch.float16), (torch.float64, torch.float64)]
PAIR_IDS = ["f32", "bf16-f32", "f16-f32", "bf16", "f16", "f64"]
# (momentum, dampening, nesterov, weight_decay, maximize, fresh buffers)
MOMENTUM_VARIANTS = {
    "plain": (0.0, 0.0, False, 0.0, False, False),
    "wd-maximize": (0.0, 0.0, False, 0.01, True, False),
    "momentum": (0.9, 0.0, False, 0.0, False, False),
    "momentum-fresh": (0.9, 0.0, False, 0.0, False, True),
    "nesterov": (0.9, 0.0, True, 0.01, False, False),
    "dampening-wd": (0.5, 0.1, False, 0.01, True, False),
}
TOLERANCES = {torch.float64: dict(rtol=1e-12, atol=1e-12), torch.float32: dict(rtol=1e-5, atol=1e-6),
              torch.float16: dict(rtol=2e-3, atol=4e-3), torch.bfloat16: dict(rtol=2e-2, atol=3e-2)}


@pytest.fixture(scope="module")
def native():
    from sparse_optim.ops import native as module

    if not module.supports("cuda"):
        pytest.skip("the native CUDA kernels are not built (nvcc missing?)")
    return module


@pytest.fixture(autouse=True)
def _synchronized():
    yield
    torch.cuda.synchronize()


class _NoFallback:
    def __getattr__(self, name):
        raise AssertionError(f"native.{name} fell back to the reference ops")


def randn(n, dtype, gen, device="cuda"):
    return torch.randn(n, generator=gen, dtype=torch.float32).to(device=device, dtype=dtype)


def clone_list(tensors):
    return None if tensors is None else [None if t is None else t.clone() for t in tensors]


def assert_lists_close(actual, expected, dtype, what):
    assert len(actual) == len(expected), what
    for i, (a, e) in enumerate(zip(actual, expected)):
        torch.testing.assert_close(a, e, **TOLERANCES[dtype], msg=lambda m: f"{what}[{i}] ({a.numel()}): {m}")


def step_inputs(sizes, dtypes, variant, with_traces, seed=0, make=None):
    p_dtype, m_dtype = dtypes
    momentum, _, _, _, _, fresh = MOMENTUM_VARIANTS[variant]
    gen = torch.Generator().manual_seed(seed)
    make = make or randn
    params = [make(n, p_dtype, gen) for n in sizes]
    grads = [make(n, p_dtype, gen) for n in sizes]
    metas = [make(n, m_dtype, gen) for n in sizes]
    for m in metas:  # exact zeros, where 1[m >= 0] and 1[m > 0] differ
        m[::7] = 0
    buffers = [None if (fresh or not momentum) else make(n, p_dtype, gen) for n in sizes]
    traces = [make(n, m_dtype, gen) for n in sizes] if with_traces else None
    return params, grads, metas, buffers, traces


def hyper(kind, variant, with_traces):
    momentum, dampening, nesterov, weight_decay, maximize, _ = MOMENTUM_VARIANTS[variant]
    return dict(kind=kind, scale=0.3, weight_decay=weight_decay, momentum=momentum, dampening=dampening,
                nesterov=nesterov, maximize=maximize, trace_decay=0.5 if with_traces else 1.0)


def check_step(native, inputs, kw, dtypes):
    """Runs the native CUDA op (no fallback allowed) and the reference op on copies; compares."""
    params, grads, metas, buffers, traces = inputs
    ref = [clone_list(x) for x in inputs]
    reference.gated_sgd_step_(*ref, **kw)
    with mock.patch.object(native, "reference", _NoFallback()):
        native.gated_sgd_step_(params, grads, metas, buffers, traces, **kw)
    p_dtype, m_dtype = dtypes
    assert_lists_close(params, ref[0], p_dtype, "params")
    if kw["momentum"]:
        assert_lists_close(buffers, ref[3], p_dtype, "momentum_buffers")
    if traces is not None:
        assert_lists_close(traces, ref[4], p_dtype, "traces")


# ------------------------------------------------------------------- tables, chunks and sizes
def boundary_sizes() -> List[int]:
    """Around the chunk (and so the table) boundaries, and every remainder of the 4- and
    8-element vector groups."""
    around = [CHUNK + d for d in (-9, -8, -5, -4, -3, -1, 0, 1, 2, 3, 4, 5, 7, 8, 9)]
    return [1, 2, 3, 4, 5, 7, 8, 9, 15, 16, 17, 511, 512, 513, 4095, 4096, 4097] + around + [2 * CHUNK - 1, 2 * CHUNK + 3]


@pytest.mark.parametrize("dtypes", DTYPE_PAIRS, ids=PAIR_IDS)
@pytest.mark.parametrize("variant", ["plain", "momentum", "momentum-fresh"])
@pytest.mark.parametrize("with_traces", [False, True], ids=["", "trace"])
def test_many_tensors_and_chunks_span_several_tables(native, dtypes, variant, with_traces):
    """More tensors than one kernel argument holds (4 KB: ~70, 32 KB: ~600) and more chunks than
    the former 320-block table, with empty tensors in between and one tensor of > 320 chunks."""
    sizes = [(i * 37) % 300 for i in range(1400)] + [321 * CHUNK + 3, 5, 3 * CHUNK + 1, 0, CHUNK]
    inputs = step_inputs(sizes, dtypes, variant, with_traces, seed=1)
    check_step(native, inputs, hyper("relu", variant, with_traces), dtypes)


@pytest.mark.parametrize("dtypes", DTYPE_PAIRS, ids=PAIR_IDS)
@pytest.mark.parametrize("kind", GATE_KINDS)
@pytest.mark.parametrize("variant", list(MOMENTUM_VARIANTS))
@pytest.mark.parametrize("with_traces", [False, True], ids=["", "trace"])
def test_every_gate_and_momentum_variant_around_chunk_boundaries(native, dtypes, kind, variant, with_traces):
    inputs = step_inputs(boundary_sizes(), dtypes, variant, with_traces, seed=2)
    check_step(native, inputs, hyper(kind, variant, with_traces), dtypes)


def misaligned(n, dtype, gen, device="cuda"):
    """A view starting one element into its storage: misaligned for 8- and 16-byte accesses."""
    return randn(n + 1, dtype, gen, device)[1:]


@pytest.mark.parametrize("dtypes", DTYPE_PAIRS[:5], ids=PAIR_IDS[:5])
@pytest.mark.parametrize("which", ["all", "grads-only", "metas-only"])
def test_misaligned_views_take_the_scalar_path(native, dtypes, which):
    """``buf[1:]`` slices of half / bfloat16 (and float) storage: the kernel may not use vector
    accesses there, and must not write the element before the view."""
    sizes = [CHUNK + 5, 1000, 3, CHUNK - 1]
    gen = torch.Generator().manual_seed(3)
    aligned_or_not = {"all": (misaligned, misaligned), "grads-only": (randn, misaligned),
                      "metas-only": (randn, randn)}[which]
    params, grads, metas, buffers, traces = step_inputs(sizes, dtypes, "momentum", True, seed=3,
                                                        make=aligned_or_not[0])
    if which == "grads-only":
        grads = [misaligned(n, dtypes[0], gen) for n in sizes]
    if which == "metas-only":
        metas = [misaligned(n, dtypes[1], gen) for n in sizes]
    guards = [(t._base, t._base[0].clone()) for t in params + grads + metas + buffers + traces if t._base is not None]
    assert guards
    check_step(native, (params, grads, metas, buffers, traces), hyper("step", "nesterov", True), dtypes)
    for base, first in guards:
        assert torch.equal(base[0], first), "the element before a view was written"


@pytest.mark.parametrize("dtypes", DTYPE_PAIRS, ids=PAIR_IDS)
@pytest.mark.parametrize("kind", GATE_KINDS)
@pytest.mark.parametrize("straight_through", [False, True], ids=["true-derivative", "straight-through"])
@pytest.mark.parametrize("aliased", [False, True], ids=["", "meta-grads-are-metas"])
def test_meta_grad_accumulate_matches_reference(native, dtypes, kind, straight_through, aliased):
    g_dtype, m_dtype = dtypes
    sizes = boundary_sizes() + [(i * 13) % 100 for i in range(800)]
    gen = torch.Generator().manual_seed(4)
    metas = [randn(n, m_dtype, gen) for n in sizes]
    for m in metas:
        m[::5] = 0
    meta_grads = metas if aliased else [randn(n, m_dtype, gen) for n in sizes]
    outer = [randn(n, g_dtype, gen) for n in sizes[:-3]] + [misaligned(n, g_dtype, gen) for n in sizes[-3:]]
    traces = [randn(n, m_dtype, gen) for n in sizes]
    expected = clone_list(meta_grads)
    reference.meta_grad_accumulate_(expected, outer, traces, expected if aliased else metas, kind=kind, scale=0.3,
                                    straight_through=straight_through)
    with mock.patch.object(native, "reference", _NoFallback()):
        native.meta_grad_accumulate_(meta_grads, outer, traces, metas, kind=kind, scale=0.3,
                                     straight_through=straight_through)
    assert_lists_close(meta_grads, expected, m_dtype, "meta_grads")


def test_strided_and_channels_last_operands(native):
    """Layouts FlatOperands hands to the kernel as they are (channels_last) or as contiguous
    copies that are written back (a transposed parameter, a stride-0 gradient)."""
    gen = torch.Generator().manual_seed(5)
    w = randn(32 * 16 * 9, torch.float32, gen).view(32, 16, 3, 3).to(memory_format=torch.channels_last)
    gw = randn(16 * 9, torch.float32, gen).view(1, 16, 3, 3).expand(32, 16, 3, 3)
    mw = randn(32 * 16 * 9, torch.float32, gen).view(32, 16, 3, 3).to(memory_format=torch.channels_last)
    check_step(native, ([w], [gw], [mw], [None], None), hyper("relu", "momentum-fresh", False),
               (torch.float32, torch.float32))
    t = randn(64 * 96, torch.float16, gen).view(96, 64).t()
    gt = randn(64 * 96, torch.float16, gen).view(64, 96)
    mt = randn(64 * 96, torch.float32, gen).view(64, 96)
    check_step(native, ([t], [gt], [mt], [None], None), hyper("step", "plain", False), (torch.float16, torch.float32))


# ------------------------------------------------------------------------ >= 2**31 elements
def _free_bytes() -> int:
    return torch.cuda.mem_get_info()[0] if torch.cuda.is_available() else 0


@pytest.mark.skipif(_free_bytes() < 16 * 2**30, reason="needs 16 GiB of free GPU memory")
def test_tensor_of_more_than_2_pow_31_elements(native):
    """int64 indexing: 2**31 + 7 float16 elements (3 x 4 GiB); the last elements are the ones a
    32-bit index would miss or wrap onto the first."""
    n = 2**31 + 7
    p = torch.zeros(n, device="cuda", dtype=torch.float16)
    g = torch.ones_like(p)
    m = torch.ones_like(p)
    native.gated_sgd_step_([p], [g], [m], [None], None, kind="step", scale=1.0)
    assert int((p != -1).sum()) == 0, p[-10:]
    native.meta_grad_accumulate_([p], [g], [m], [m], kind="step", scale=1.0, straight_through=True)
    assert int((p != -2).sum()) == 0, p[-10:]
    del p, g, m
    torch.cuda.empty_cache()


# ------------------------------------------------------------------------- streams and graphs
def test_side_stream_orders_with_its_inputs(native):
    """The kernels run on the current stream: inputs produced on a side stream are read after
    they are written, and results are right once the side stream is synchronised."""
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        p = [torch.randn(5_000_003, device="cuda"), torch.randn(77, device="cuda")]
        g = [torch.randn_like(x) for x in p]
        m = [torch.randn_like(x) for x in p]
        expected = [x - 0.1 * (y >= 0).float() * z for x, y, z in zip(p, m, g)]
        native.gated_sgd_step_(p, g, m, [None, None], None, kind="step", scale=0.1)
    side.synchronize()
    for a, e in zip(p, expected):
        torch.testing.assert_close(a, e)


def test_cuda_graph_replays_the_raw_op(native):
    p = [torch.zeros(1_000_003, device="cuda"), torch.zeros(3, device="cuda")]
    g = [torch.ones_like(x) for x in p]
    m = [torch.ones_like(x) for x in p]
    torch.cuda.synchronize()
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        torch.ops.sparse_optim.gated_sgd_step_(p, g, m, [], [], [], "step", 1.0, 0.0, 0.0, 0.0, False, False, 1.0)
    for _ in range(3):
        graph.replay()
    torch.cuda.synchronize()
    assert all(bool((x == -3).all()) for x in p)


def _model(device):
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(12, 32), torch.nn.Tanh(), torch.nn.Linear(32, 5)).to(device)


@pytest.mark.parametrize("backend", ["cuda", "triton"])
def test_cuda_graph_captures_optimizer_step(backend):
    """``opt.step()`` of a MaskedSGD with momentum captured once (after warm-up steps created
    the momentum buffers, as for torch.optim.SGD) and replayed matches eager steps."""
    from sparse_optim.ops import native, triton_ops

    if backend == "cuda" and not native.supports("cuda"):
        pytest.skip("the native CUDA kernels are not built")
    if backend == "triton" and not triton_ops.available("cuda"):
        pytest.skip("Triton not available")
    x, y = torch.randn(64, 12, device="cuda"), torch.randint(0, 5, (64,), device="cuda")

    def setup():
        model = _model("cuda")
        opt = so.MaskedSGD(model.parameters(), lr=0.1, momentum=0.9, backend=backend)
        for _ in range(2):
            opt.zero_grad(set_to_none=False)
            F.cross_entropy(model(x), y).backward()
            opt.step()
        return model, opt

    model, opt = setup()
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):  # warm-up on a side stream, as torch.cuda.graphs asks
        for _ in range(2):
            opt.step()
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        opt.step()
    for _ in range(3):
        graph.replay()

    eager_model, eager_opt = setup()
    for _ in range(2 + 3):
        eager_opt.step()  # the same gradients, unchanged
    torch.cuda.synchronize()
    for a, e in zip(model.parameters(), eager_model.parameters()):
        torch.testing.assert_close(a, e, rtol=1e-5, atol=1e-6)


# --------------------------------------------------------------------- optimizers on CUDA
def _episodes(model, opt, step, device, episodes=2, inner=3):
    gen = torch.Generator().manual_seed(1)
    xs = torch.randn(episodes, 2, 16, 12, generator=gen).to(device)
    ys = torch.randint(0, 5, (episodes, 2, 16), generator=gen).to(device)
    for e in range(episodes):
        with opt.episode():
            for _ in range(inner):
                opt.zero_grad()
                F.cross_entropy(model(xs[e, 0]), ys[e, 0]).backward()
                step()
            opt.zero_grad()
            F.cross_entropy(model(xs[e, 1]), ys[e, 1]).backward()
            opt.meta_backward()
        opt.meta_step()
    return [p.detach().cpu() for p in model.parameters()] + [m.detach().cpu() for m in opt.meta_parameters()]


@pytest.mark.parametrize("case", cases(family="kronecker", descs=("default", "momentum", "depth2-normalize",
                                                                  "bias-nesterov", "cholesky")))
def test_kronecker_sgd_on_cuda_matches_cpu(case):
    results = []
    for device in ("cpu", "cuda"):
        model = _model(device)
        opt = case.make(model.parameters(), lr=0.1, meta_lr=0.05)
        results.append(_episodes(model, opt, opt.step, device))
    for a, e in zip(results[1], results[0]):
        torch.testing.assert_close(a, e, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("case", cases(names=("masked", "kronecker"), descs=("momentum",)))
def test_compiled_step_on_cuda_matches_eager(case):
    torch._dynamo.reset()
    results = []
    for compiled in (False, True):
        model = _model("cuda")
        opt = case.make(model.parameters(), lr=0.1, meta_lr=0.05)
        step = torch.compile(opt.step, fullgraph=True) if compiled else opt.step
        results.append(_episodes(model, opt, step, "cuda"))
    for a, e in zip(results[1], results[0]):
        torch.testing.assert_close(a, e, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("backend", ["cuda", "triton"])
@pytest.mark.parametrize("case", cases(family="gated", stochastic=False, descs=("default", "nesterov", "online")))
def test_gated_optimizers_on_cuda_backends_match_reference(case, backend):
    from sparse_optim.ops import native, triton_ops

    if backend == "cuda" and not native.supports("cuda"):
        pytest.skip("the native CUDA kernels are not built")
    if backend == "triton" and not triton_ops.available("cuda"):
        pytest.skip("Triton not available")
    results = []
    for chosen in (backend, "reference"):
        model = _model("cuda")
        opt = case.make(model.parameters(), lr=0.1, meta_lr=0.05, backend=chosen)
        if case.online:
            gen = torch.Generator().manual_seed(2)
            for _ in range(4):
                opt.zero_grad()
                x = torch.randn(16, 12, generator=gen).cuda()
                F.cross_entropy(model(x), torch.arange(16, device="cuda") % 5).backward()
                opt.step()
            results.append([p.detach() for p in model.parameters()] + [m.detach() for m in opt.meta_parameters()])
        else:
            results.append(_episodes(model, opt, opt.step, "cuda"))
    for a, e in zip(*results):
        torch.testing.assert_close(a, e, rtol=1e-5, atol=1e-6)


# --------------------------------------------------------------------------- Triton on CUDA
# each (kind, variant, dtype) is a Triton specialisation compiled on first use: a sample of them
@pytest.mark.parametrize("dtypes", DTYPE_PAIRS[:2], ids=PAIR_IDS[:2])
@pytest.mark.parametrize("kind", GATE_KINDS)
@pytest.mark.parametrize("variant", ["plain", "wd-maximize", "momentum-fresh", "nesterov", "dampening-wd"])
def test_triton_step_on_cuda_matches_reference(dtypes, kind, variant):
    from sparse_optim.ops import triton_ops

    if not triton_ops.available("cuda"):
        pytest.skip("Triton not available")
    with_traces = variant in ("momentum-fresh", "dampening-wd")
    inputs = step_inputs([1, 1023, 1024, 1025, CHUNK + 3, 3 * CHUNK], dtypes, variant, with_traces, seed=6)
    kw = hyper(kind, variant, with_traces)
    ref = [clone_list(x) for x in inputs]
    reference.gated_sgd_step_(*ref, **kw)
    triton_ops.gated_sgd_step_(*inputs, **kw)
    p_dtype = dtypes[0]
    assert_lists_close(inputs[0], ref[0], p_dtype, "params")
    if kw["momentum"]:
        assert_lists_close(inputs[3], ref[3], p_dtype, "momentum_buffers")
    if with_traces:
        assert_lists_close(inputs[4], ref[4], p_dtype, "traces")


@pytest.mark.parametrize("kind", GATE_KINDS)
@pytest.mark.parametrize("straight_through", [False, True])
def test_triton_meta_grad_on_cuda_matches_reference(kind, straight_through):
    from sparse_optim.ops import triton_ops

    if not triton_ops.available("cuda"):
        pytest.skip("Triton not available")
    gen = torch.Generator().manual_seed(7)
    sizes = [1, 1023, 1025, CHUNK + 3]
    lists = [[randn(n, torch.float32, gen) for n in sizes] for _ in range(4)]
    expected = clone_list(lists[0])
    reference.meta_grad_accumulate_(expected, *lists[1:], kind=kind, scale=0.3, straight_through=straight_through)
    triton_ops.meta_grad_accumulate_(*lists, kind=kind, scale=0.3, straight_through=straight_through)
    assert_lists_close(lists[0], expected, torch.float32, "meta_grads")


def test_backend_choice_on_cuda():
    from sparse_optim.ops import native, triton_ops

    chosen = ops.backend(torch.device("cuda"))
    if native.supports("cuda"):
        assert chosen == "cuda"
    elif triton_ops.available("cuda"):
        assert chosen == "triton"
    else:
        assert chosen == "reference"
