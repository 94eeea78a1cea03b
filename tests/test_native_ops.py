"""The native kernels (csrc/) against the reference ops, their executable specification; the
backend choice (process-wide, and the optimizers' ``backend=`` argument, like torch.optim's
foreach / fused flags)."""
from __future__ import annotations

import os
import platform
import subprocess
import sys
import textwrap
from typing import Dict, List, Optional
from unittest import mock

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

import sparse_optim
from sparse_optim import functional, ops
from sparse_optim.ops import native, reference

from conftest import GATE_KINDS, cases, infos

needs_native = pytest.mark.skipif(not native.available(), reason="native extension not available")
needs_cuda = pytest.mark.skipif(
    not (torch.cuda.is_available() and native.supports("cuda")), reason="needs a GPU and the CUDA kernels"
)

# (parameter dtype, meta-parameter / trace dtype) pairs with kernels
DTYPE_PAIRS = [
    (torch.float32, torch.float32),
    (torch.float64, torch.float64),
    (torch.bfloat16, torch.float32),
    (torch.float16, torch.float32),
    (torch.bfloat16, torch.bfloat16),
    (torch.float16, torch.float16),
]
SHAPES = [(), (0,), (1,), (7,), (3, 0), (5, 4), (2, 3, 4), (33, 17), (1, 130)]
LAYOUTS = ["contiguous", "transposed", "strided"]


# float32 / float64 kernels round exactly like the reference's torch ops where those use FMA
BIT_EXACT_CPU = (platform.machine() in ("x86_64", "AMD64")
                 and torch.backends.cpu.get_cpu_capability() in ("AVX2", "AVX512"))


def tolerances(dtype: torch.dtype, exact: bool = False) -> Dict[str, float]:
    """Bit-exact where `exact`; else reference and kernels round at different points (for bfloat16
    / float16 the reference rounds after every op, the kernels once from float32)."""
    if exact:
        return dict(rtol=0.0, atol=0.0)
    return {
        torch.float64: dict(rtol=1e-12, atol=1e-12),
        torch.float32: dict(rtol=1e-5, atol=1e-6),
        torch.float16: dict(rtol=2e-3, atol=4e-3),
        torch.bfloat16: dict(rtol=2e-2, atol=3e-2),
    }[dtype]


def make(shape, dtype, layout: str, gen: torch.Generator, device="cpu") -> torch.Tensor:
    """A tensor of `shape` in the given memory layout: contiguous, dense but permuted, or strided."""
    def randn(size):
        return torch.randn(size, generator=gen, dtype=torch.float64).to(device=device, dtype=dtype)

    if layout == "transposed" and len(shape) >= 2:
        return randn(tuple(reversed(shape))).permute(*reversed(range(len(shape))))
    if layout == "strided" and len(shape) >= 1:
        return randn((2 * shape[0],) + tuple(shape[1:]))[::2]
    return randn(shape)


def with_exact_zeros(m: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """Meta-parameters with some exact zeros, where 1[m >= 0] and 1[m > 0] differ."""
    if m.numel():
        zero = torch.rand(m.shape, generator=gen) < 0.2
        m[zero.to(m.device)] = 0
    return m


def clone_list(tensors: Optional[List[Optional[torch.Tensor]]]):
    return None if tensors is None else [None if t is None else t.clone() for t in tensors]


def assert_lists_close(actual, expected, dtype, what, exact=False):
    assert len(actual) == len(expected), what
    for i, (a, e) in enumerate(zip(actual, expected)):
        assert a is not None and e is not None, f"{what}[{i}]"
        assert a.dtype == e.dtype and a.shape == e.shape, f"{what}[{i}]"
        torch.testing.assert_close(a, e, **tolerances(dtype, exact), msg=lambda m: f"{what}[{i}]: {m}")


def bit_exact(dtypes) -> bool:
    """Whether CPU kernels must reproduce the reference exactly for these (param, meta) dtypes."""
    p_dtype, m_dtype = dtypes
    return BIT_EXACT_CPU and p_dtype == m_dtype and p_dtype in (torch.float32, torch.float64)


step_cases = st.fixed_dictionaries(
    {
        "dtypes": st.sampled_from(DTYPE_PAIRS),
        "shapes": st.lists(st.sampled_from(SHAPES), min_size=1, max_size=4),
        "layouts": st.lists(st.sampled_from(LAYOUTS), min_size=5, max_size=5),
        "kind": st.sampled_from(GATE_KINDS),
        "scale": st.sampled_from([0.1, 1.0, 0.37]),
        "weight_decay": st.sampled_from([0.0, 0.01]),
        "momentum": st.sampled_from([0.0, 0.9]),
        "dampening": st.sampled_from([0.0, 0.1]),
        "nesterov": st.booleans(),
        "maximize": st.booleans(),
        "trace_decay": st.sampled_from([1.0, 0.5, 0.0]),
        "with_traces": st.booleans(),
        "fresh_buffers": st.lists(st.booleans(), min_size=4, max_size=4),
        "seed": st.integers(0, 2**31 - 1),
    }
)


def step_inputs(case, device="cpu"):
    p_dtype, m_dtype = case["dtypes"]
    gen = torch.Generator().manual_seed(case["seed"])
    lay = dict(zip(["params", "grads", "metas", "buffers", "traces"], case["layouts"]))
    shapes = case["shapes"]
    params = [make(s, p_dtype, lay["params"], gen, device) for s in shapes]
    grads = [make(s, p_dtype, lay["grads"], gen, device) for s in shapes]
    metas = [with_exact_zeros(make(s, m_dtype, lay["metas"], gen, device), gen) for s in shapes]
    buffers = [None if fresh else make(s, p_dtype, lay["buffers"], gen, device)
               for s, fresh in zip(shapes, case["fresh_buffers"])]
    traces = [make(s, m_dtype, lay["traces"], gen, device) for s in shapes] if case["with_traces"] else None
    hyper = {k: case[k] for k in ("kind", "scale", "weight_decay", "momentum", "dampening", "nesterov", "maximize",
                                  "trace_decay")}
    return params, grads, metas, buffers, traces, hyper


class _NoFallback:
    def __getattr__(self, name):
        raise AssertionError(f"native.{name} fell back to the reference ops")


def kernels_only():
    """Within the block, the native wrappers may not fall back to the reference ops."""
    return mock.patch.object(native, "reference", _NoFallback())


def run_both(case, device="cpu"):
    params, grads, metas, buffers, traces, hyper = step_inputs(case, device)
    ref = [clone_list(x) for x in (params, grads, metas, buffers, traces)]
    reference.gated_sgd_step_(*ref, **hyper)
    with kernels_only():
        native.gated_sgd_step_(params, grads, metas, buffers, traces, **hyper)
    return (params, buffers, traces), (ref[0], ref[3], ref[4])


@needs_native
@settings(max_examples=300, deadline=None)
@given(step_cases)
def test_gated_sgd_step_matches_reference(case):
    (params, buffers, traces), (ref_params, ref_buffers, ref_traces) = run_both(case)
    p_dtype, _ = case["dtypes"]
    exact = bit_exact(case["dtypes"])
    assert_lists_close(params, ref_params, p_dtype, "params", exact)
    if case["momentum"]:
        assert_lists_close(buffers, ref_buffers, p_dtype, "momentum_buffers", exact)
    else:
        assert [b is None for b in buffers] == case["fresh_buffers"][: len(buffers)]
    if traces is not None:  # the reference rounds d to the parameter dtype before accumulating it
        assert_lists_close(traces, ref_traces, p_dtype, "traces", exact)


meta_grad_cases = st.fixed_dictionaries(
    {
        "dtypes": st.sampled_from(DTYPE_PAIRS),
        "shapes": st.lists(st.sampled_from(SHAPES), min_size=1, max_size=4),
        "layouts": st.lists(st.sampled_from(LAYOUTS), min_size=4, max_size=4),
        "kind": st.sampled_from(GATE_KINDS),
        "straight_through": st.booleans(),
        "scale": st.sampled_from([0.1, -0.5, 1.0]),
        "alias_meta_grads": st.booleans(),
        "seed": st.integers(0, 2**31 - 1),
    }
)


@needs_native
@settings(max_examples=200, deadline=None)
@given(meta_grad_cases)
def test_meta_grad_accumulate_matches_reference(case):
    g_dtype, m_dtype = case["dtypes"]
    gen = torch.Generator().manual_seed(case["seed"])
    lay = case["layouts"]
    shapes = case["shapes"]
    metas = [with_exact_zeros(make(s, m_dtype, lay[3], gen), gen) for s in shapes]
    # online hypergradient steps pass the meta-parameters themselves as meta_grads
    meta_grads = metas if case["alias_meta_grads"] else [make(s, m_dtype, lay[0], gen) for s in shapes]
    outer = [make(s, g_dtype, lay[1], gen) for s in shapes]
    traces = [make(s, m_dtype, lay[2], gen) for s in shapes]
    hyper = {k: case[k] for k in ("kind", "scale", "straight_through")}

    ref_metas = clone_list(metas)
    ref_meta_grads = ref_metas if case["alias_meta_grads"] else clone_list(meta_grads)
    reference.meta_grad_accumulate_(ref_meta_grads, clone_list(outer), clone_list(traces), ref_metas, **hyper)
    with kernels_only():
        native.meta_grad_accumulate_(meta_grads, outer, traces, metas, **hyper)
    exact = bit_exact(case["dtypes"])
    assert_lists_close(meta_grads, ref_meta_grads, m_dtype, "meta_grads", exact)
    assert_lists_close(metas, ref_metas, m_dtype, "metas", exact)


@needs_native
def test_large_tensors_split_over_threads_match_reference():
    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        case = dict(dtypes=(torch.float32, torch.float32), shapes=[(100_003,), (257, 513), (3,)],
                    layouts=["contiguous"] * 5, kind="relu", scale=0.5, weight_decay=0.01, momentum=0.9,
                    dampening=0.1, nesterov=False, maximize=True, trace_decay=0.5, with_traces=True,
                    fresh_buffers=[True, False, True, False], seed=3)
        (params, buffers, traces), (ref_params, ref_buffers, ref_traces) = run_both(case)
        exact = bit_exact(case["dtypes"])
        assert_lists_close(params, ref_params, torch.float32, "params", exact)
        assert_lists_close(buffers, ref_buffers, torch.float32, "momentum_buffers", exact)
        assert_lists_close(traces, ref_traces, torch.float32, "traces", exact)
    finally:
        torch.set_num_threads(threads)


@needs_native
def test_unsupported_dtype_pair_falls_back_to_reference():
    """The kernel refuses (NotImplementedError, nothing written); the dispatcher then runs the
    reference op."""
    params, grads = [torch.randn(5)], [torch.randn(5)]
    metas = [torch.randn(5, dtype=torch.float64)]  # float32 params with float64 metas: no kernel
    expected, before = clone_list(params), clone_list(params)
    reference.gated_sgd_step_(expected, clone_list(grads), clone_list(metas), [None], None, kind="step", scale=0.1)
    if native.available():
        with pytest.raises(NotImplementedError):
            native.gated_sgd_step_(params, grads, metas, [None], None, kind="step", scale=0.1)
        assert torch.equal(params[0], before[0])
    functional.gated_sgd_(params, grads, metas, [None], None, gate="step", lr=0.1)
    assert torch.equal(params[0], expected[0])


def test_unknown_gate_kind_raises_on_every_backend():
    args = ([torch.zeros(2)], [torch.ones(2)], [torch.zeros(2)], [None], None)
    with pytest.raises(ValueError, match="gate kind"):
        reference.gated_sgd_step_(*args, kind="sigmoid", scale=0.1)
    with pytest.raises(ValueError, match="gate kind"):
        reference.meta_grad_accumulate_([torch.zeros(2)], [torch.ones(2)], [torch.ones(2)], [torch.zeros(2)],
                                        kind="sigmoid", scale=0.1, straight_through=True)
    with pytest.raises(ValueError, match="gate kind"):
        functional.gated_sgd_(*args, gate="sigmoid", lr=0.1)
    if native.available():
        with pytest.raises(ValueError, match="gate kind"):
            native.gated_sgd_step_(*args, kind="sigmoid", scale=0.1)
        with pytest.raises(ValueError, match="gate kind"):
            native.meta_grad_accumulate_([torch.zeros(2)], [torch.ones(2)], [torch.ones(2)], [torch.zeros(2)],
                                         kind="sigmoid", scale=0.1, straight_through=True)


def test_mixed_device_or_dtype_group_is_split_not_refused():
    """One list spanning two dtypes runs as two groups (each on its own backend), equal to the
    reference per tensor."""
    gen = torch.Generator().manual_seed(3)
    params = [torch.randn(4, generator=gen), torch.randn(3, generator=gen, dtype=torch.float64)]
    grads = [torch.randn_like(p) for p in params]
    metas = [torch.randn_like(p) for p in params]
    buffers = [None, None]
    expected = clone_list(params)
    ref_buffers = [None, None]
    reference.gated_sgd_step_(expected, clone_list(grads), clone_list(metas), ref_buffers, None, kind="relu",
                              scale=1.0, momentum=0.9)
    functional.gated_sgd_(params, grads, metas, buffers, None, gate="relu", lr=0.1, momentum=0.9)
    for a, b in zip(params + buffers, expected + ref_buffers):
        assert a.dtype == b.dtype
        torch.testing.assert_close(a, b)


@needs_native
def test_momentum_buffers_created_in_callers_list():
    params, grads, metas = [torch.randn(4, 3)], [torch.randn(3, 4).t()], [torch.randn(4, 3)]
    buffers: List[Optional[torch.Tensor]] = [None]
    with kernels_only():
        native.gated_sgd_step_(params, grads, metas, buffers, None, kind="step", scale=0.1, momentum=0.9)
    assert torch.equal(buffers[0], grads[0])  # a fresh buffer is the first direction
    assert buffers[0] is not grads[0]


@needs_native
def test_written_tensors_get_new_versions():
    p, g, m, t = (torch.randn(6) for _ in range(4))
    before = p._version, t._version, m._version
    native.gated_sgd_step_([p], [g], [m], [None], [t], kind="relu", scale=1.0)
    assert p._version > before[0] and t._version > before[1] and m._version == before[2]


@needs_native
def test_unknown_gate_kind_is_rejected():
    with pytest.raises(ValueError, match="kind"):
        native.gated_sgd_step_([torch.zeros(2)], [torch.zeros(2)], [torch.zeros(2)], [None], None,
                               kind="sigmoid", scale=1.0)


def opcheck_step_args(momentum: float, with_traces: bool):
    gen = torch.Generator().manual_seed(0)
    shapes = [(3, 4), (5,)]
    params = [torch.randn(s, generator=gen) for s in shapes]
    grads = [torch.randn(s, generator=gen) for s in shapes]
    metas = [torch.randn(s, generator=gen) for s in shapes]
    buffers = [torch.zeros(s) for s in shapes] if momentum else []
    fresh = [True, False] if momentum else []
    traces = [torch.zeros(s) for s in shapes] if with_traces else []
    return (params, grads, metas, buffers, traces, fresh, "relu", 0.5, 0.01, momentum, 0.0, False, False, 1.0)


@needs_native
@pytest.mark.parametrize("momentum,with_traces", [(0.0, False), (0.9, True)])
def test_opcheck_gated_sgd_step(momentum, with_traces):
    # All default sub-tests (schema mutation annotations, autograd registration, fake tensor,
    # AOT dispatch) apply: the op is in-place and returns nothing.
    torch.library.opcheck(torch.ops.sparse_optim.gated_sgd_step_.default, opcheck_step_args(momentum, with_traces))


@needs_native
@pytest.mark.parametrize("gated", [False, True])
def test_opcheck_meta_grad_accumulate(gated):
    gen = torch.Generator().manual_seed(1)
    lists = [[torch.randn(s, generator=gen) for s in [(2, 3), (4,)]] for _ in range(4)]
    torch.library.opcheck(torch.ops.sparse_optim.meta_grad_accumulate_.default, (*lists, "relu", 0.3, not gated))


@needs_native
def test_backend_reports_native_cpu_unless_forced():
    with ops.use_backend("auto"):
        assert ops.backend() == "cpu"
        with ops.use_backend("reference"):
            assert ops.backend() == "reference"
        assert ops.backend() == "cpu"


def tiny_model():
    return torch.nn.Sequential(torch.nn.Linear(6, 8), torch.nn.Tanh(), torch.nn.Linear(8, 3))


def run_meta_learning(opt_factory, backend: str, episodes: int = 3, inner_steps: int = 3):
    """Parameters, meta-parameters and in-episode traces after first-order meta-learning."""
    torch.manual_seed(0)
    model = tiny_model()
    opt = opt_factory(model)
    xs, ys = torch.randn(episodes, 2, 10, 6), torch.randint(0, 3, (episodes, 2, 10))
    loss_fn = torch.nn.functional.cross_entropy
    traces = []
    with ops.use_backend(backend):
        for e in range(episodes):
            with opt.episode():
                for _ in range(inner_steps):
                    opt.zero_grad()
                    loss_fn(model(xs[e, 0]), ys[e, 0]).backward()
                    opt.step()
                opt.zero_grad()
                loss_fn(model(xs[e, 1]), ys[e, 1]).backward()
                opt.meta_backward()
                traces.append({n: opt._trace[p].clone() for n, p in model.named_parameters()})
            opt.meta_step()
    return dict(model.named_parameters()), dict(opt.named_meta_parameters()), traces


def run_online(opt_factory, backend: str, steps: int = 5):
    torch.manual_seed(0)
    model = tiny_model()
    opt = opt_factory(model)
    x, y = torch.randn(steps, 10, 6), torch.randint(0, 3, (steps, 10))
    with ops.use_backend(backend):
        for k in range(steps):
            opt.zero_grad()
            torch.nn.functional.cross_entropy(model(x[k]), y[k]).backward()
            opt.step()
    return dict(model.named_parameters()), dict(opt.named_meta_parameters()), []


@needs_native
@pytest.mark.parametrize("case", cases(family="gated"))
def test_optimizers_agree_on_both_backends(case):
    """Every gated optimizer and variant of the registry: first-order meta-learning (or online
    adaptation) on the native kernels and on the reference ops."""
    run = run_online if case.online else run_meta_learning

    def factory(model):
        return case.make(model.named_parameters(), lr=0.1, meta_lr=0.5 if case.online else 0.05)

    native_result, reference_result = run(factory, "cpu"), run(factory, "reference")
    tol = tolerances(torch.float32, exact=BIT_EXACT_CPU)
    for native_part, reference_part in zip(native_result, reference_result):
        if isinstance(native_part, list):  # traces per episode
            for a, b in zip(native_part, reference_part):
                for key in a:
                    torch.testing.assert_close(a[key], b[key], **tol)
            continue
        assert native_part.keys() == reference_part.keys()
        for key in native_part:
            torch.testing.assert_close(native_part[key], reference_part[key], **tol, msg=key)


@needs_cuda
@settings(max_examples=100, deadline=None)
@given(step_cases)
def test_cuda_gated_sgd_step_matches_reference(case):
    (params, buffers, traces), (ref_params, ref_buffers, ref_traces) = run_both(case, device="cuda")
    p_dtype, _ = case["dtypes"]
    assert_lists_close(params, ref_params, p_dtype, "params")
    if case["momentum"]:
        assert_lists_close(buffers, ref_buffers, p_dtype, "momentum_buffers")
    if traces is not None:
        assert_lists_close(traces, ref_traces, p_dtype, "traces")


@needs_cuda
@pytest.mark.parametrize("kind", GATE_KINDS)
def test_cuda_meta_grad_accumulate_matches_reference(kind):
    gen = torch.Generator().manual_seed(2)
    lists = [[torch.randn(s, generator=gen).cuda() for s in [(300_000,), (7, 9), (0,)]] for _ in range(4)]
    expected = [clone_list(lst) for lst in lists]
    reference.meta_grad_accumulate_(*expected, kind=kind, scale=0.3, straight_through=False)
    with kernels_only():
        native.meta_grad_accumulate_(*lists, kind=kind, scale=0.3, straight_through=False)
    assert_lists_close(lists[0], expected[0], torch.float32, "meta_grads")


# ------------------------------------------------------------- the optimizers' backend= flag
def _run_with_backend_flag(info, backend):
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(5, 6), torch.nn.Tanh(), torch.nn.Linear(6, 2))
    opt = info.make(model.parameters(), backend=backend)
    x, y = torch.randn(8, 5), torch.randint(0, 2, (8,))
    with opt.episode():
        for _ in range(2):
            opt.zero_grad(); F.cross_entropy(model(x), y).backward(); opt.step()
        opt.zero_grad(); F.cross_entropy(model(x), 1 - y).backward(); opt.meta_backward()
    opt.meta_step(update_params=True)
    return [p.detach() for p in model.parameters()] + [m.detach() for m in opt.meta_parameters()]


@pytest.mark.parametrize("info", infos())
def test_forced_reference_backend_is_used_and_agrees(info, monkeypatch):
    calls = []
    for name in ("gated_sgd_step_", "meta_grad_accumulate_"):
        original = getattr(reference, name)
        monkeypatch.setattr(reference, name, lambda *a, _o=original, _n=name, **k: (calls.append(_n), _o(*a, **k))[1])
    forced = _run_with_backend_flag(info, "reference")
    if info.gated:
        assert "gated_sgd_step_" in calls and "meta_grad_accumulate_" in calls
    monkeypatch.undo()
    default = _run_with_backend_flag(info, None)
    for a, b in zip(forced, default):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


def test_bad_backend_name():
    with pytest.raises(ValueError, match="backend"):
        sparse_optim.MaskedSGD([torch.nn.Parameter(torch.randn(2))], backend="gpu")


def run_python(code: str, **env) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True,
                          env={**os.environ, **env}, cwd=os.path.dirname(os.path.dirname(__file__)))


FALLBACK_SCRIPT = """
    import warnings
    import torch
    from sparse_optim import functional, ops
    from sparse_optim.ops import native
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        print(native.available(), native.available(), ops.backend())
        p = [torch.ones(3)]
        functional.gated_sgd_(p, [torch.ones(3)], [torch.zeros(3)], [None], None, gate="step", lr=0.5)
        print(p[0].tolist())
    print(sum("native kernels unavailable" in str(w.message) for w in caught))
"""


def test_no_build_switch_uses_reference_silently():
    result = run_python(FALLBACK_SCRIPT, SPARSE_OPTIM_NO_BUILD="1")
    assert result.returncode == 0, result.stderr
    assert result.stdout.split("\n")[:3] == ["False False reference", "[0.5, 0.5, 0.5]", "0"]


def test_missing_compiler_warns_once_and_uses_reference():
    result = run_python(FALLBACK_SCRIPT, CXX="/nonexistent/c++")
    assert result.returncode == 0, result.stderr
    assert result.stdout.split("\n")[:3] == ["False False reference", "[0.5, 0.5, 0.5]", "1"]


# ------------------------------------------------------------------ the non-finite check
finite_cases = st.fixed_dictionaries(dict(
    sizes=st.lists(st.sampled_from([0, 1, 7, 16, 17, 33, 70_000, 140_000]), min_size=1, max_size=4),
    dtype=st.sampled_from([torch.float32, torch.float64, torch.bfloat16, torch.float16]),
    bad=st.lists(st.tuples(st.integers(0, 3), st.floats(0, 1), st.sampled_from([float("nan"), float("inf"),
                                                                                  -float("inf"), 3e38])),
                 max_size=2),
    transposed=st.booleans(),
))


@settings(max_examples=150, deadline=None)
@given(finite_cases)
def test_all_finite_matches_elementwise_isfinite(case):
    """ops.all_finite (the native single pass, the reference x*0 sums) against torch.isfinite,
    with values near the dtype's maximum (a plain sum would overflow there)."""
    g = torch.Generator().manual_seed(len(case["sizes"]))
    tensors = [torch.randn(n, generator=g).to(case["dtype"]) * 1e4 for n in case["sizes"]]
    for which, where, value in case["bad"]:
        t = tensors[which % len(tensors)]
        if t.numel():
            t[int(where * (t.numel() - 1))] = value
    if case["transposed"] and tensors[0].numel() >= 16:
        tensors[0] = tensors[0][:16].view(4, 4).t()  # non-contiguous
    expected = all(bool(torch.isfinite(t).all()) for t in tensors)
    assert bool(reference.all_finite(tensors)) is expected
    assert bool(ops.all_finite(tensors)) is expected
    if native.available():
        with kernels_only():
            assert bool(native.all_finite(tensors)) is expected


@needs_native
def test_nonfinite_check_is_one_native_call_not_a_norm_per_tensor():
    """meta_backward's check is the single multi-tensor op (was torch._foreach_norm: 16x slower)."""
    model = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.Linear(8, 2))
    opt = sparse_optim.MaskedSGD(model.parameters(), backend="cpu")  # also in the reference-backend pass
    with opt.episode():
        model(torch.randn(3, 4)).sum().backward(); opt.step()
        with mock.patch.object(torch, "_foreach_norm", side_effect=AssertionError("norm used")), \
                mock.patch.object(torch.ops.sparse_optim, "all_finite", wraps=torch.ops.sparse_optim.all_finite) as op:
            opt.meta_backward()
        assert op.call_count == 1
