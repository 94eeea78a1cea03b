"""Hostile inputs at every public entry point: each call either works and matches the reference
math, or raises a clear error and changes nothing."""
from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings, strategies as st

import sparse_optim as so
from sparse_optim.functional.gated import lookahead_sgd, masked_sgd, rectified_sgd
from sparse_optim.functional.kronecker import kronecker_sgd

CLASSES = {
    "masked": (so.MaskedSGD, "mask_lr"),
    "rectified": (so.RectifiedLRSGD, "rate_lr"),
    "lookahead": (so.LookaheadLRSGD, "rate_lr"),
    "kronecker": (so.KroneckerSGD, "factor_lr"),
    "stochastic": (so.StochasticMaskedSGD, "mask_lr"),
}
WEIRD = [float("nan"), float("inf"), -float("inf"), -1.0, -1e-12, 0.0, 1e-30, 1.0, 1e30]
shapes = st.lists(st.integers(0, 4), min_size=0, max_size=4)
layouts = st.sampled_from(["contiguous", "transposed", "channels_last", "sliced"])


def _param(shape, layout, dtype=torch.float32):
    t = torch.randn(shape, dtype=dtype)
    if layout == "transposed" and t.dim() >= 2:
        swapped = list(shape)
        swapped[0], swapped[-1] = swapped[-1], swapped[0]
        t = torch.randn(swapped, dtype=dtype).transpose(0, -1)  # non-contiguous view of `shape`
    elif layout == "channels_last" and t.dim() == 4:
        t = t.to(memory_format=torch.channels_last)
    elif layout == "sliced" and t.dim() >= 1:
        t = torch.randn([2 * shape[0]] + list(shape[1:]), dtype=dtype)[::2]
    assert list(t.shape) == list(shape)
    return torch.nn.Parameter(t)


def _snapshot(opt, params):
    return [p.detach().clone() for p in params] + [m.detach().clone() for m in opt.meta_parameters()]


def _unchanged(opt, params, snap):
    now = _snapshot(opt, params)
    return all(torch.equal(a, b) or (a.isnan().any() and torch.equal(a.isnan(), b.isnan())) for a, b in zip(now, snap))


@given(name=st.sampled_from(sorted(CLASSES)), key=st.sampled_from(["lr", "meta", "weight_decay", "momentum"]),
       value=st.sampled_from(WEIRD))
@settings(max_examples=60, deadline=None)
def test_constructor_hyperparameters(name, key, value):
    cls, meta_name = CLASSES[name]
    key = meta_name if key == "meta" else key
    params = [torch.nn.Parameter(torch.randn(3, 2))]
    kwargs = {key: value}
    if key == "momentum" and name != "stochastic":
        kwargs["dampening"] = 0.0
    if not math.isfinite(value) or value < 0:
        with pytest.raises(ValueError, match=key):
            cls(params, **kwargs)
    else:
        opt = cls(params, **kwargs)
        assert opt.param_groups[0][key] == value


@given(name=st.sampled_from(sorted(CLASSES)), shape=shapes, layout=layouts)
@settings(max_examples=80, deadline=None)
def test_step_on_odd_shapes_and_layouts_matches_contiguous(name, shape, layout):
    cls, _ = CLASSES[name]
    torch.manual_seed(0)
    p = _param(shape, layout)
    kw = dict(noise_dim=3) if name == "stochastic" else {}
    opt = cls([p], **kw)
    q = torch.nn.Parameter(p.detach().contiguous().clone())
    ref = cls([q], **kw)
    ref.load_state_dict(opt.state_dict())
    g = torch.randn(shape)
    p.grad, q.grad = g.clone(), g.clone().contiguous()
    torch.manual_seed(1); opt.step()
    torch.manual_seed(1); ref.step()
    torch.testing.assert_close(p.detach().contiguous(), q.detach())


@given(name=st.sampled_from(sorted(CLASSES)), bad=st.sampled_from([float("nan"), float("inf")]),
       where=st.sampled_from(["meta_backward", "meta_step", "online"]))
@settings(max_examples=40, deadline=None)
def test_non_finite_gradients_never_poison_meta_parameters(name, bad, where):
    cls, _ = CLASSES[name]
    torch.manual_seed(0)
    p = torch.nn.Parameter(torch.randn(4, 3))
    kw = dict(noise_dim=3) if name == "stochastic" else {}
    if where == "online":
        if name in ("stochastic", "lookahead"):
            return
        kw.update(adapt_factors=True) if name == "kronecker" else kw.update(online=True)
    opt = cls([p], **kw)
    if where == "online":
        p.grad = torch.randn(4, 3); opt.step()
        snap = [m.detach().clone() for m in opt.meta_parameters()]
        p.grad = torch.full((4, 3), bad)
        with pytest.warns(RuntimeWarning, match="non-finite"):
            opt.step()
    elif where == "meta_backward":
        snap = [m.detach().clone() for m in opt.meta_parameters()]
        with opt.episode():
            p.grad = torch.randn(4, 3); opt.step()
            p.grad = torch.randn(4, 3); p.grad[0, 0] = bad
            with pytest.warns(RuntimeWarning, match="non-finite"):
                opt.meta_backward()
        opt.meta_step()
    else:
        snap = [m.detach().clone() for m in opt.meta_parameters()]
        for m in opt.meta_parameters():
            m.grad = torch.full_like(m, bad)
        with pytest.warns(RuntimeWarning, match="non-finite"):
            opt.meta_step()
    assert all(torch.equal(a.detach(), b) for a, b in zip(opt.meta_parameters(), snap))
    assert opt.skipped_updates == 1


@pytest.mark.parametrize("name", sorted(CLASSES))
def test_structural_errors(name):
    cls, _ = CLASSES[name]
    with pytest.raises(ValueError, match="empty parameter list"):
        cls([])
    p = torch.nn.Parameter(torch.randn(3))
    with pytest.raises(ValueError, match="more than one parameter group"):
        cls([{"params": [p]}, {"params": [p]}])
    with pytest.raises(TypeError, match="complex"):
        cls([torch.nn.Parameter(torch.randn(3, dtype=torch.complex64))])
    with pytest.raises(ValueError, match="nonfinite"):
        cls([p], nonfinite="ignore")
    opt = cls([p])
    p.grad = torch.randn(3).to_sparse()
    snap = _snapshot(opt, [p])
    with pytest.raises(RuntimeError, match="sparse"):
        opt.step()
    assert _unchanged(opt, [p], snap)
    p.grad = torch.randn(3)
    opt.param_groups[0]["lr"] = float("nan")
    with pytest.raises(ValueError, match="lr"):
        opt.step()
    assert _unchanged(opt, [p], snap)


def test_functional_api_rejects_mismatches():
    p, g = [torch.randn(2, 3)], [torch.randn(2, 3)]
    for fn, name in ((masked_sgd, "mask_logits"), (rectified_sgd, "rates"), (lookahead_sgd, "rates")):
        with pytest.raises(ValueError, match=name):
            fn(p, g, [torch.randn(3, 2)])
        with pytest.raises(ValueError, match="gradient"):
            fn(p, [torch.randn(3)], [torch.randn(2, 3)])
        with pytest.raises(ValueError, match="same length"):
            fn(p + p, g, [torch.randn(2, 3)])
    with pytest.raises(ValueError, match="gradient"):
        kronecker_sgd(p, [torch.randn(3)], [{"L0": torch.eye(2), "R0": torch.eye(3)}])
