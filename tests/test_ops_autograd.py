"""The list-level differentiable op equals the functional specification, in value, gradient and
second-order gradient, on every backend and for every registered gate."""
from __future__ import annotations

import pytest
import torch
from torch.autograd import gradcheck, gradgradcheck

from sparse_optim import ops
from sparse_optim.functional import gated as spec
from sparse_optim.functional.gates import get_gate
from sparse_optim.ops.autograd import gated_sgd_update

from conftest import GATE_KINDS

# (gate kind, scale, straight-through): every gate of the registry, both settings where they differ
CASES = [("step", 0.3, True), ("relu", 1.0, True), ("relu", 1.0, False), ("linear", 1.0, True)]
assert {k for k, _, _ in CASES} == set(GATE_KINDS)


def gated_update(p, d, m, *, kind, scale, straight_through=True):
    return gated_sgd_update([p], [d], [m], get_gate(kind), scale, straight_through)[0]


def _inputs(seed=0, dtype=torch.float64, shape=(3, 4)):
    g = torch.Generator().manual_seed(seed)
    p = torch.randn(shape, generator=g, dtype=dtype)
    d = torch.randn(shape, generator=g, dtype=dtype)
    m = torch.randn(shape, generator=g, dtype=dtype)
    m[m.abs() < 0.05] = 0.5  # away from the rectifier's kink for finite differences
    return p, d, m


@pytest.mark.parametrize("kind,scale,st", CASES)
def test_value_and_gradients_match_the_specification(backend, kind, scale, st):
    p, d, m = (t.requires_grad_() for t in _inputs(1))
    out = gated_update(p, d, m, kind=kind, scale=scale, straight_through=st)
    want = spec.gated_update(p, d, m, kind=kind, scale=scale, straight_through=st)
    torch.testing.assert_close(out, want)
    w = torch.randn_like(out)
    # first and second order (through a loss that is quadratic in the output)
    got = torch.autograd.grad(((out * w) ** 2).sum(), (p, d, m), create_graph=True)
    exp = torch.autograd.grad(((want * w) ** 2).sum(), (p, d, m), create_graph=True)
    for a, b in zip(got, exp):
        torch.testing.assert_close(a, b)
    got2 = torch.autograd.grad(sum(g.sum() for g in got), (p, d, m), allow_unused=True)
    exp2 = torch.autograd.grad(sum(g.sum() for g in exp), (p, d, m), allow_unused=True)
    for a, b in zip(got2, exp2):
        if a is None or b is None:
            assert (a is None or not a.any()) and (b is None or not b.any())
        else:
            torch.testing.assert_close(a, b)


def test_gradcheck_and_gradgradcheck_where_the_derivative_is_true(backend):
    """The true derivative exists in p and d for every gate, and in m for the plain rectifier and
    the linear gate (Meta-SGD)."""
    p, d, m = (t.requires_grad_() for t in _inputs(2))
    assert gradcheck(lambda p, d, m: gated_update(p, d, m, kind="relu", scale=1.0, straight_through=False),
                     (p, d, m))
    assert gradgradcheck(lambda p, d, m: gated_update(p, d, m, kind="relu", scale=1.0, straight_through=False),
                         (p, d, m))
    assert gradcheck(lambda p, d, m: gated_update(p, d, m, kind="linear", scale=1.0), (p, d, m))
    assert gradgradcheck(lambda p, d, m: gated_update(p, d, m, kind="linear", scale=1.0), (p, d, m))
    mask = m.detach()
    assert gradcheck(lambda p, d: gated_update(p, d, mask, kind="step", scale=0.3), (p, d))
    assert gradgradcheck(lambda p, d: gated_update(p, d, mask, kind="step", scale=0.3), (p, d))


def test_mixed_precision_and_bad_input():
    p = torch.randn(4, 3).to(torch.bfloat16).requires_grad_()
    d = torch.randn(4, 3).to(torch.bfloat16)
    m = torch.randn(4, 3, requires_grad=True)
    out = gated_update(p, d, m, kind="step", scale=0.5)
    assert out.dtype == torch.bfloat16
    want = (p.detach().float() - 0.5 * (m.detach() >= 0) * d.float()).to(torch.bfloat16)
    torch.testing.assert_close(out.detach(), want)
    out.float().sum().backward()
    assert m.grad.dtype == torch.float32 and p.grad.dtype == torch.bfloat16
    with pytest.raises(ValueError, match="shape"):
        spec_free = __import__("sparse_optim").functional.gated_sgd
        spec_free([p], [d], [torch.randn(3, 4)], gate="step", lr=0.5)
    with pytest.raises(ValueError, match="gate kind"):
        __import__("sparse_optim").functional.gated_sgd([p], [d], [m], gate="sigmoid", lr=0.5)


def test_tensor_scale_is_differentiable():
    """A tensor learning rate (a higher override) gets its gradient: gradcheck in (p, d, m, lr)."""
    p, d, m = (t.requires_grad_() for t in _inputs(3))
    lr = torch.tensor(0.3, dtype=torch.float64, requires_grad=True)
    assert gradcheck(lambda p, d, lr: gated_update(p, d, m.detach(), kind="step", scale=lr), (p, d, lr))
    assert gradgradcheck(lambda p, d, lr: gated_update(p, d, m.detach(), kind="step", scale=lr), (p, d, lr))
    out = gated_update(p, d, m, kind="step", scale=lr)
    torch.testing.assert_close(out, spec.gated_update(p, d, m, kind="step", scale=lr))


@pytest.mark.parametrize("kind", GATE_KINDS)
def test_list_of_tensors_matches_per_tensor_spec_and_launches_once(kind, backend, monkeypatch):
    """A whole list (mixed shapes and dtypes) in one forward: equal to the spec per tensor, with
    one native call per (device, dtype) group."""
    gen = torch.Generator().manual_seed(4)
    shapes = [(3, 4), (5,), (), (2, 3, 2)]
    dtypes = [torch.float64, torch.float64, torch.float32, torch.float32]
    ps = [torch.randn(s, generator=gen, dtype=t).requires_grad_() for s, t in zip(shapes, dtypes)]
    ds = [torch.randn(s, generator=gen, dtype=t).requires_grad_() for s, t in zip(shapes, dtypes)]
    ms = [torch.randn(s, generator=gen, dtype=t).requires_grad_() for s, t in zip(shapes, dtypes)]
    calls = []
    if ops.backend() != "reference":
        native = ops.implementation(torch.device("cpu"))
        real = native.gated_sgd_step_
        monkeypatch.setattr(native, "gated_sgd_step_", lambda *a, **k: (calls.append(len(a[0])), real(*a, **k)))
    out = gated_sgd_update(ps, ds, ms, get_gate(kind), 0.7, True)
    want = [spec.gated_update(p, d, m, kind=kind, scale=0.7) for p, d, m in zip(ps, ds, ms)]
    for a, b in zip(out, want):
        torch.testing.assert_close(a, b)
    ga = torch.autograd.grad(sum((o ** 2).sum() for o in out), ps + ds + ms)
    gb = torch.autograd.grad(sum((o ** 2).sum() for o in want), ps + ds + ms)
    for a, b in zip(ga, gb):
        torch.testing.assert_close(a, b)
    if ops.backend() != "reference":
        assert calls == [4, 2, 2], calls  # one try over the mixed list (raises, writes nothing), then per group
        calls.clear()
        gated_sgd_update(ps[:2], ds[:2], ms[:2], get_gate(kind), 0.7, True)
        assert calls == [2]  # a homogeneous list: one kernel call


def test_vmap_and_grad_transforms_use_the_formula():
    from torch.func import grad, vmap

    p, d, m = _inputs(5, dtype=torch.float32, shape=(4, 3, 2))
    out = vmap(lambda p, d, m: gated_update(p, d, m, kind="relu", scale=1.0))(p, d, m)
    torch.testing.assert_close(out, p - m.clamp_min(0) * d)
    gm = grad(lambda m: gated_update(p[0], d[0], m, kind="relu", scale=1.0, straight_through=False).sum())(m[0])
    torch.testing.assert_close(gm, -d[0] * (m[0] > 0))
