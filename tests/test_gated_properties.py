"""Property tests (hypothesis) of the gated optimizers: random shapes (0-d and zero-size
included), dtypes (float32, float64, bfloat16 params with float32 meta-parameters) and
hyperparameters, for every elementwise gated optimizer of the registry (conftest.py) with each of
its straight-through settings. The library's step is compared with the functional reference
(``sparse_optim.functional.gated``: masked_sgd, rectified_sgd, lookahead_sgd, meta_sgd) and with
the test's own float64 math."""

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from sparse_optim import MaskedSGD

from conftest import case_list, frozen, gate_derivative, step_size

SETTINGS = settings(max_examples=40, deadline=None)

shapes = st.lists(st.integers(0, 4), min_size=0, max_size=3).map(tuple)
dtypes = st.sampled_from([torch.float32, torch.float64, torch.bfloat16])
classes = st.sampled_from(case_list(elementwise=True, descs=["default", "true-relu", "straight-through"]))
online_classes = st.sampled_from(case_list(elementwise=True, descs=["default"], where=lambda i: i.supports_online))


@st.composite
def hparams(draw):
    momentum = draw(st.sampled_from([0.0, 0.0, 0.5, 0.9]))
    nesterov = momentum > 0 and draw(st.booleans())
    dampening = 0.0 if nesterov or momentum == 0 else draw(st.sampled_from([0.0, 0.25]))
    return dict(
        lr=draw(st.sampled_from([0.0, 0.01, 0.1, 0.5, 1.0])),
        weight_decay=draw(st.sampled_from([0.0, 0.0, 0.01, 0.1])),
        momentum=momentum, dampening=dampening, nesterov=nesterov,
        maximize=draw(st.booleans()),
    )


def _make(case, params, hp):
    """The optimizer and its functional rule ``(params, dirs, metas, lr) -> new params``."""
    def rule(ps, ds, ms, lr):
        return case.info.rule(ps, ds, ms, lr=lr, straight_through=case.straight_through)
    return case.make(params, open_gates=True, **hp), rule


def _tol(dtype):
    return {torch.float64: 1e-10, torch.float32: 1e-5, torch.bfloat16: 2e-2}[dtype]


def _own_direction(g, p, buf, hp):
    d = (-g if hp["maximize"] else g) + hp["weight_decay"] * p
    if hp["momentum"] == 0:
        return d, None
    buf = d.clone() if buf is None else hp["momentum"] * buf + (1 - hp["dampening"]) * d
    return (d + hp["momentum"] * buf if hp["nesterov"] else buf), buf


def _own_gate(case, m, lr):
    return step_size(case.info.gate, m.double(), lr)


def _random_meta(case, shape, gen):
    m = torch.randn(shape, generator=gen, dtype=torch.float64) * (1.0 if case.info.gate == "step" else 0.3)
    if m.numel():
        m.view(-1)[0] = 0.0  # the threshold itself
    return m


@SETTINGS
@given(case=classes, shape_list=st.lists(shapes, min_size=1, max_size=3), dtype=dtypes, hp=hparams(),
       steps=st.integers(1, 3), seed=st.integers(0, 2 ** 31 - 1))
def test_step_matches_functional_reference_and_own_math(case, shape_list, dtype, hp, steps, seed):
    gen = torch.Generator().manual_seed(seed)
    init = [torch.randn(s, generator=gen, dtype=torch.float64).to(dtype) for s in shape_list]
    params = [t.clone().requires_grad_(True) for t in init]
    opt, functional = _make(case, params, hp)
    metas = [_random_meta(case, s, gen) for s in shape_list]
    with torch.no_grad():
        for t, v in zip(opt.meta_parameters(), metas):
            t.copy_(v)
    meta_dtype = torch.float32 if dtype == torch.bfloat16 else dtype
    for t in opt.meta_parameters():
        assert t.dtype == meta_dtype and t.is_leaf and t.requires_grad
    metas = [t.detach().clone() for t in opt.meta_parameters()]  # as stored (rounded to meta dtype)

    own = [t.double() for t in init]
    own_bufs = [None] * len(init)
    for _ in range(steps):
        grads = [torch.randn(s, generator=gen, dtype=torch.float64).to(dtype) for s in shape_list]
        before = [p.detach().clone() for p in params]
        bufs = [opt.state[p].get("momentum_buffer") for p in params] if hp["momentum"] else [None] * len(params)
        bufs = [None if b is None else b.clone() for b in bufs]
        for p, g in zip(params, grads):
            p.grad = g.clone()
        opt.step()
        # functional reference, fed with the same-precision SGD direction
        dirs = []
        for i, (g, b0, b) in enumerate(zip(grads, before, bufs)):
            d, _ = _own_direction(g.double(), b0.double(), None if b is None else b.double(), hp)
            dirs.append(d)
        ref = functional([b.double() for b in before], dirs, [m.double() for m in metas], hp["lr"])
        # own float64 math, independent trajectory from the initial values
        for i, g in enumerate(grads):
            d, own_bufs[i] = _own_direction(g.double(), own[i], own_bufs[i], hp)
            own[i] = own[i] - _own_gate(case, metas[i].double(), hp["lr"]) * d
        for p, r in zip(params, ref):
            assert p.dtype == dtype and p.shape == r.shape
            tol = _tol(dtype) * (1 + r.abs().max().item() if r.numel() else 1)
            torch.testing.assert_close(p.detach().double(), r.detach(), rtol=0, atol=tol)
        if dtype != torch.bfloat16:  # bf16 rounding compounds over steps; checked step-wise above
            for p, o in zip(params, own):
                torch.testing.assert_close(p.detach().double(), o, rtol=_tol(dtype), atol=_tol(dtype))
    for t, m in zip(opt.meta_parameters(), metas):
        assert torch.equal(t.detach(), m)  # plain steps never touch meta-parameters


@SETTINGS
@given(case=classes, shape_list=st.lists(shapes, min_size=1, max_size=3), dtype=dtypes,
       lr=st.sampled_from([0.01, 0.3]), k=st.integers(1, 3), seed=st.integers(0, 2 ** 31 - 1))
def test_first_order_meta_grad_formula(case, shape_list, dtype, lr, k, seed):
    """dL/dxi = -scale * g_out * sum_k g_k * gate'(xi); theta-grad = g_out; float32 for bf16."""
    gen = torch.Generator().manual_seed(seed)
    params = [torch.randn(s, generator=gen, dtype=torch.float64).to(dtype).requires_grad_(True) for s in shape_list]
    theta0 = [p.detach().clone() for p in params]
    opt, _ = _make(case, params, dict(lr=lr))
    metas = [_random_meta(case, s, gen) for s in shape_list]
    with torch.no_grad():
        for t, v in zip(opt.meta_parameters(), metas):
            t.copy_(v)
    metas = [t.detach().double() for t in opt.meta_parameters()]
    gsum = [torch.zeros(s, dtype=torch.float64) for s in shape_list]
    with opt.episode():
        for _ in range(k):
            for i, p in enumerate(params):
                g = torch.randn(p.shape, generator=gen, dtype=torch.float64).to(dtype)
                p.grad = g
                gsum[i] += g.double()
            opt.step()
        outs = [torch.randn(p.shape, generator=gen, dtype=torch.float64).to(dtype) for p in params]
        for p, g in zip(params, outs):
            p.grad = g.clone()
        opt.meta_backward()
    scale = lr if case.info.lr_scaled else 1.0
    meta_dtype = torch.float32 if dtype == torch.bfloat16 else dtype
    for t, m, go, gs in zip(opt.meta_parameters(), metas, outs, gsum):
        expected = -scale * go.double() * gs * gate_derivative(case.info.gate, m, case.straight_through)
        assert t.grad.dtype == meta_dtype
        tol = 1e-10 if dtype == torch.float64 else 1e-5
        torch.testing.assert_close(t.grad.double(), expected, rtol=tol, atol=tol)
    for p, t0, go in zip(params, theta0, outs):
        assert torch.equal(p.detach(), t0)
        assert p.grad.dtype == dtype
        assert torch.equal(p.grad, go)


@SETTINGS
@given(case=online_classes, shape_list=st.lists(shapes, min_size=1, max_size=3),
       dtype=dtypes, seed=st.integers(0, 2 ** 31 - 1))
def test_online_trace_and_state_keep_meta_precision(case, shape_list, dtype, seed):
    gen = torch.Generator().manual_seed(seed)
    params = [torch.randn(s, generator=gen, dtype=torch.float64).to(dtype).requires_grad_(True) for s in shape_list]
    opt, _ = _make(case, params, dict(lr=0.1, momentum=0.5))
    for g in opt.param_groups:
        g["online"] = True
    for _ in range(2):
        for p in params:
            p.grad = torch.randn(p.shape, generator=gen, dtype=torch.float64).to(dtype)
        opt.step()
    meta_dtype = torch.float32 if dtype == torch.bfloat16 else dtype
    sd = opt.state_dict()
    for i, p in enumerate(params):
        entry = sd["meta_state"][i]
        for t in entry["meta"].values():
            assert t.dtype == meta_dtype and t.shape == p.shape
        assert entry["trace"].dtype == meta_dtype and entry["trace"].shape == p.shape
        assert opt.state[p]["momentum_buffer"].dtype == dtype
    for t in opt.meta_parameters():
        assert t.dtype == meta_dtype and bool(torch.isfinite(t).all())


@SETTINGS
@given(shape_list=st.lists(shapes, min_size=1, max_size=4), dtype=dtypes,
       sparsity=st.floats(0.0, 1.0), seed=st.integers(0, 2 ** 31 - 1))
def test_default_kaiming_init_any_shape(shape_list, dtype, sparsity, seed):
    """Construction with the default initialisation works for every shape (0-d, zero-size)."""
    torch.manual_seed(seed)
    params = [torch.zeros(s, dtype=dtype, requires_grad=True) for s in shape_list]
    opt = MaskedSGD(params, init_sparsity=sparsity)
    for p, m in zip(params, opt.meta_parameters()):
        assert m.shape == p.shape and bool(torch.isfinite(m).all())
    s = opt.sparsity()
    assert 0.0 <= s["overall"] <= 1.0
    for p in params:
        p.grad = torch.ones_like(p)
    opt.step()
    if sparsity == 0.0:
        assert s["overall"] == 0.0
    if sparsity == 1.0 and sum(p.numel() for p in params):
        assert s["overall"] == 1.0


@SETTINGS
@given(case=classes, shape_list=st.lists(shapes, min_size=1, max_size=4), seed=st.integers(0, 2 ** 31 - 1))
def test_sparsity_matches_own_count(case, shape_list, seed):
    gen = torch.Generator().manual_seed(seed)
    params = [torch.zeros(s, requires_grad=True) for s in shape_list]
    opt, _ = _make(case, params, dict(lr=0.1))
    metas = [_random_meta(case, s, gen) for s in shape_list]
    with torch.no_grad():
        for t, v in zip(opt.meta_parameters(), metas):
            t.copy_(v)
    counts = [int(frozen(case.info.gate, m).sum()) for m in metas]
    total = sum(m.numel() for m in metas)
    s = opt.sparsity()
    assert s["overall"] == pytest.approx(sum(counts) / total if total else 0.0)
    for i, (f, m) in enumerate(zip(counts, metas)):
        assert s["per_parameter"][f"param{i}"] == pytest.approx(f / m.numel() if m.numel() else 0.0)


@SETTINGS
@given(seed=st.integers(0, 2 ** 31 - 1), lr=st.sampled_from([0.05, 0.5]))
def test_mixed_dtype_group(seed, lr):
    """float32, float64 and bfloat16 parameters in one group (the per-tensor path)."""
    gen = torch.Generator().manual_seed(seed)
    dts = [torch.float32, torch.float64, torch.bfloat16]
    init = [torch.randn(3, 2, generator=gen, dtype=torch.float64).to(dt) for dt in dts]
    params = [t.clone().requires_grad_(True) for t in init]
    opt = MaskedSGD(params, lr=lr, mask_init="constant")
    metas = [torch.randn(3, 2, generator=gen, dtype=torch.float64) for _ in dts]
    with torch.no_grad():
        for t, v in zip(opt.meta_parameters(), metas):
            t.copy_(v)
    grads = [torch.randn(3, 2, generator=gen, dtype=torch.float64).to(dt) for dt in dts]
    for p, g in zip(params, grads):
        p.grad = g.clone()
    opt.step()
    for p, t0, m, g, dt in zip(params, init, metas, grads, dts):
        expected = t0.double() - lr * (m >= 0).double() * g.double()
        tol = _tol(dt) * 2
        torch.testing.assert_close(p.detach().double(), expected, rtol=tol, atol=tol)
        assert p.dtype == dt
