"""The fused differentiable op equals the functional specification, in value, gradient and
second-order gradient, on every backend."""
from __future__ import annotations

import pytest
import torch
from torch.autograd import gradcheck, gradgradcheck

from sparse_optim import ops
from sparse_optim.functional import gated as spec
from sparse_optim.ops.autograd import gated_update

CASES = [("step", 0.3, True), ("relu", 1.0, True), ("relu", 1.0, False)]
BACKENDS = ["reference", "auto"]


def _inputs(seed=0, dtype=torch.float64, shape=(3, 4)):
    g = torch.Generator().manual_seed(seed)
    p = torch.randn(shape, generator=g, dtype=dtype)
    d = torch.randn(shape, generator=g, dtype=dtype)
    m = torch.randn(shape, generator=g, dtype=dtype)
    m[m.abs() < 0.05] = 0.5  # away from the rectifier's kink for finite differences
    return p, d, m


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("kind,scale,st", CASES)
def test_value_and_gradients_match_the_specification(backend, kind, scale, st):
    p, d, m = (t.requires_grad_() for t in _inputs(1))
    with ops.use_backend(backend):
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


@pytest.mark.parametrize("backend", BACKENDS)
def test_gradcheck_and_gradgradcheck_where_the_derivative_is_true(backend):
    """The true derivative exists in p and d for every gate, and in m for the plain rectifier."""
    p, d, m = (t.requires_grad_() for t in _inputs(2))
    with ops.use_backend(backend):
        assert gradcheck(lambda p, d, m: gated_update(p, d, m, kind="relu", scale=1.0, straight_through=False),
                         (p, d, m))
        assert gradgradcheck(lambda p, d, m: gated_update(p, d, m, kind="relu", scale=1.0, straight_through=False),
                             (p, d, m))
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
        gated_update(p, d, torch.randn(3, 4), kind="step", scale=0.5)
    with pytest.raises(TypeError, match="scale"):
        gated_update(p, d, m, kind="step", scale=torch.tensor(0.5))
