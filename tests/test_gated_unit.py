"""Unit tests of the elementwise gated optimizers (MaskedSGD, RectifiedLRSGD, LookaheadLRSGD,
MetaSGD; the registry in conftest.py) against the papers' formulas.

Every expected value is computed here by hand (sparse-MAML Eq. 4, sparse-ReLU-MAML, La-MAML
Eq. 7-8, Meta-SGD Eq. 1, torch.optim.SGD semantics for the direction), with the test's own gate
math (conftest.py), never with the library's helpers.
"""
import itertools
import math

import pytest
import torch

from sparse_optim import LookaheadLRSGD, MaskedSGD, MetaSGD, RectifiedLRSGD

from conftest import OPTIMIZERS, frozen, infos, step_size

GATED = infos(elementwise=True)
RATES_CLASSES = infos(elementwise=True, where=lambda i: i.rates_start_at_lr)

DT = torch.float64


def _leaf(t):
    return t.detach().clone().requires_grad_(True)


def _set_meta(opt, values):
    with torch.no_grad():
        for t, v in zip(opt.meta_parameters(), values):
            t.copy_(v)


def _close(a, b, **kw):
    torch.testing.assert_close(a.detach(), b.detach(), rtol=kw.get("rtol", 1e-12), atol=kw.get("atol", 1e-12))


def _direction(g, p, buf, *, wd=0.0, momentum=0.0, dampening=0.0, nesterov=False, maximize=False):
    """torch.optim.SGD's direction, written out (float64)."""
    d = -g if maximize else g
    d = d + wd * p
    if momentum == 0:
        return d, None
    buf = d.clone() if buf is None else momentum * buf + (1 - dampening) * d
    return (d + momentum * buf if nesterov else buf), buf


def _step_gate(m):
    return (m >= 0).to(m.dtype)


def _relu(m):
    return torch.where(m > 0, m, torch.zeros_like(m))


def _meta_values(info):
    return MASK if info.gate == "step" else RATES


MASK = torch.tensor([[-1.0, 0.0, 2.0, -0.0], [0.3, -1e-6, 1e-6, -5.0], [4.0, -2.0, 0.0, 1.0]], dtype=DT)
RATES = torch.tensor([[-1.0, 0.0, 0.2, 0.05], [0.3, -1e-6, 1e-6, -5.0], [0.01, -2.0, 0.0, 1.0]], dtype=DT)


def _make(info, p, lr, **kw):
    return info.make([p], lr=lr, open_gates=True, **kw)


# ----------------------------------------------------------------------------- one step
@pytest.mark.parametrize("info", GATED)
def test_one_step_matches_paper_formula(info):
    torch.manual_seed(0)
    p0 = torch.randn(3, 4, dtype=DT)
    g = torch.randn(3, 4, dtype=DT)
    lr = 0.37
    meta = _meta_values(info)
    p = _leaf(p0)
    opt = _make(info, p, lr)
    _set_meta(opt, [meta])
    p.grad = g.clone()
    opt.step()
    expected = p0 - step_size(info.gate, meta, lr) * g
    _close(p, expected)
    # frozen coordinates did not move at all
    still = frozen(info.gate, meta)
    assert still.any()
    assert torch.equal(p.detach()[still], p0[still])
    # meta-parameters are not touched by a plain step
    assert torch.equal(opt.meta_parameters()[0].detach(), meta)


def test_masked_gate_is_inclusive_at_zero_and_for_negative_zero():
    p = _leaf(torch.zeros(3, dtype=DT))
    opt = MaskedSGD([p], lr=1.0, mask_init="constant")
    _set_meta(opt, [torch.tensor([0.0, -0.0, -1e-30], dtype=DT)])
    p.grad = torch.ones(3, dtype=DT)
    opt.step()
    assert p.detach().tolist() == [-1.0, -1.0, 0.0]


@pytest.mark.parametrize("info", GATED)
@pytest.mark.parametrize("maximize", [False, True])
def test_weight_decay_and_maximize(info, maximize):
    torch.manual_seed(1)
    p0 = torch.randn(3, 4, dtype=DT)
    g = torch.randn(3, 4, dtype=DT)
    lr, wd = 0.2, 0.05
    meta = _meta_values(info)
    p = _leaf(p0)
    opt = _make(info, p, lr, weight_decay=wd, maximize=maximize)
    _set_meta(opt, [meta])
    p.grad = g.clone()
    opt.step()
    d = (-g if maximize else g) + wd * p0
    _close(p, p0 - step_size(info.gate, meta, lr) * d)


@pytest.mark.parametrize("info", GATED)
@pytest.mark.parametrize("dampening,nesterov", [(0.0, False), (0.3, False), (0.0, True)])
def test_momentum_first_and_later_steps(info, dampening, nesterov):
    torch.manual_seed(2)
    p0 = torch.randn(3, 4, dtype=DT)
    lr, mom, wd = 0.1, 0.8, 0.01
    meta = _meta_values(info)
    p = _leaf(p0)
    opt = _make(info, p, lr, momentum=mom, dampening=dampening, nesterov=nesterov, weight_decay=wd)
    _set_meta(opt, [meta])
    ref, buf = p0.clone(), None
    scale = step_size(info.gate, meta, lr)
    for k in range(4):
        g = torch.randn(3, 4, dtype=DT)
        p.grad = g.clone()
        opt.step()
        d, buf = _direction(g, ref, buf, wd=wd, momentum=mom, dampening=dampening, nesterov=nesterov)
        if k == 0:  # first step: buffer = direction, no dampening (torch.optim.SGD)
            _close(buf, g + wd * p0)
        ref = ref - scale * d
        _close(p, ref)
        # the buffer keeps accumulating for frozen coordinates too: the mask gates the update only
        _close(opt.state[p]["momentum_buffer"], buf)


_FLAGS = [
    dict(momentum=mo, dampening=da, nesterov=ne, weight_decay=wd, maximize=mx)
    for mo, da, ne, wd, mx in itertools.product([0.0, 0.9], [0.0, 0.5], [False, True], [0.0, 0.01], [False, True])
    if not (ne and (mo == 0 or da != 0))
]


@pytest.mark.parametrize("flags", _FLAGS, ids=lambda f: "-".join(f"{k}={v}" for k, v in f.items()))
@pytest.mark.parametrize("info", GATED)
def test_all_open_gates_equal_torch_sgd_exactly(info, flags, backend):
    """All masks >= 0 (MaskedSGD) / all rates = lr: bit-identical to torch.optim.SGD, on the
    reference ops and the native kernels (the ``backend`` fixture)."""
    torch.manual_seed(3)
    shapes = [(17, 33), (33,), ()]
    init = [torch.randn(s) for s in shapes]
    mine = [_leaf(t) for t in init]
    theirs = [_leaf(t) for t in init]
    lr = 0.05
    opt = info.make(mine, lr=lr, open_gates=True, **flags)
    ref = torch.optim.SGD(theirs, lr=lr, **flags)
    for _ in range(5):
        for a, b in zip(mine, theirs):
            g = torch.randn(a.shape)
            a.grad, b.grad = g.clone(), g.clone()
        opt.step()
        ref.step()
        for a, b in zip(mine, theirs):
            assert torch.equal(a, b)
            if flags["momentum"]:
                assert torch.equal(opt.state[a]["momentum_buffer"], ref.state[b]["momentum_buffer"])


@pytest.mark.parametrize("info", GATED)
def test_grads_none_are_skipped(info):
    a, b = _leaf(torch.randn(3, dtype=DT)), _leaf(torch.randn(2, dtype=DT))
    a0, b0 = a.detach().clone(), b.detach().clone()
    opt = info.make([a, b], lr=0.5, open_gates=True, momentum=0.9)
    a.grad = torch.ones(3, dtype=DT)
    opt.step()
    assert torch.equal(b.detach(), b0)
    assert "momentum_buffer" not in opt.state.get(b, {})
    _close(a, a0 - 0.5)
    # no gradient anywhere: nothing happens, no error
    opt.zero_grad()
    opt.step()
    _close(a, a0 - 0.5)


@pytest.mark.parametrize("info", GATED)
def test_closure_returns_loss_and_its_gradient_is_used(info):
    torch.manual_seed(4)
    p = _leaf(torch.randn(5, dtype=DT))
    p0 = p.detach().clone()
    opt = _make(info, p, 0.1)
    calls = []

    def closure():
        opt.zero_grad()
        loss = (p ** 2).sum()
        loss.backward()
        calls.append(1)
        return loss

    with torch.no_grad():  # closure must still be able to build a graph
        loss = opt.step(closure)
    assert len(calls) == 1
    assert torch.is_tensor(loss) and loss.item() == pytest.approx((p0 ** 2).sum().item())
    _close(p, p0 - 0.1 * 2 * p0)


@pytest.mark.parametrize("info", infos())
def test_zero_grad_leaves_meta_grads_alone(info):
    p = _leaf(torch.randn(3))
    opt = info.make([p])
    m = opt.meta_parameters()[0]
    p.grad = torch.ones(3)
    m.grad = torch.full_like(m, 2.0)
    opt.zero_grad()
    assert p.grad is None
    assert torch.equal(m.grad, torch.full_like(m, 2.0))
    p.grad = torch.ones(3)
    opt.zero_grad(set_to_none=False)
    assert torch.equal(p.grad, torch.zeros(3))
    opt.zero_meta_grad()
    assert m.grad is None


@pytest.mark.parametrize("info", GATED)
def test_add_param_group_with_per_group_hyperparameters_matches_sgd(info, backend):
    torch.manual_seed(5)
    a0, b0 = torch.randn(4, 3), torch.randn(6)
    a, b = _leaf(a0), _leaf(b0)
    ra, rb = _leaf(a0), _leaf(b0)
    opt = info.make([a], lr=0.1, open_gates=True, momentum=0.5)
    opt.add_param_group({"params": [b], "lr": 0.7, "momentum": 0.0, "weight_decay": 0.1})
    ref = torch.optim.SGD([ra], lr=0.1, momentum=0.5)
    ref.add_param_group({"params": [rb], "lr": 0.7, "momentum": 0.0, "weight_decay": 0.1})
    assert len(opt.meta_parameters()) == 2
    if info.rates_start_at_lr:  # rates of the new group start at that group's lr
        assert torch.equal(opt.meta_parameters()[1].detach(), torch.full((6,), 0.7))
    for _ in range(3):
        g1, g2 = torch.randn(4, 3), torch.randn(6)
        a.grad, ra.grad, b.grad, rb.grad = g1.clone(), g1.clone(), g2.clone(), g2.clone()
        opt.step()
        ref.step()
    assert torch.equal(a, ra) and torch.equal(b, rb)
    assert opt.param_groups[1]["lr"] == 0.7 and opt.param_groups[1]["momentum"] == 0.0


def test_add_param_group_with_its_own_mask_init_freezes_that_group():
    a, b = _leaf(torch.randn(3)), _leaf(torch.randn(3))
    opt = MaskedSGD([a], lr=1.0, mask_init="constant")
    opt.add_param_group({"params": [b], "mask_init_value": -1.0})
    b0 = b.detach().clone()
    a.grad, b.grad = torch.ones(3), torch.ones(3)
    opt.step()
    assert torch.equal(b.detach(), b0)
    assert opt.sparsity()["per_parameter"] == {"param0": 0.0, "param1": 1.0}


@pytest.mark.parametrize("info", GATED)
def test_named_parameters_give_meta_names(info):
    kind = info.meta_key
    cls = info.cls
    model = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.Linear(4, 2))
    opt = cls(model.named_parameters())
    names = [n for n, _ in opt.named_meta_parameters()]
    assert names == [f"{n}.{kind}" for n, _ in model.named_parameters()]
    for (n, p), (mn, m) in zip(model.named_parameters(), opt.named_meta_parameters()):
        assert m.shape == p.shape and m.is_leaf and m.requires_grad and m.dtype == p.dtype
    other = torch.nn.Linear(2, 1)
    opt.add_param_group({"params": [("head.weight", other.weight), ("head.bias", other.bias)], "lr": 0.3})
    names = [n for n, _ in opt.named_meta_parameters()]
    assert names[-2:] == [f"head.weight.{kind}", f"head.bias.{kind}"]
    assert opt.meta_parameters() == [t for _, t in opt.named_meta_parameters()]
    # unnamed parameters are numbered across groups
    opt2 = cls([torch.zeros(2, requires_grad=True)])
    opt2.add_param_group({"params": [torch.zeros(3, requires_grad=True)]})
    assert [n for n, _ in opt2.named_meta_parameters()] == [f"param0.{kind}", f"param1.{kind}"]


# ------------------------------------------------------------------------ initialisation
@pytest.mark.parametrize("sparsity", [0.0, 0.1, 0.5, 0.85, 1.0])
def test_kaiming_init_sparsity_fraction(sparsity):
    torch.manual_seed(6)
    w = torch.zeros(200, 100, requires_grad=True)
    b = torch.zeros(5000, requires_grad=True)
    opt = MaskedSGD([w, b], init_sparsity=sparsity)
    for m, fan_in in zip(opt.meta_parameters(), [100, 5000]):
        n = m.numel()
        frac = (m < 0).float().mean().item()
        tol = 5 * math.sqrt(sparsity * (1 - sparsity) / n) + 1e-12
        assert abs(frac - sparsity) <= tol, (frac, sparsity)
        # Kaiming-uniform width 2/sqrt(fan_in), shifted so that P(m < 0) = init_sparsity
        bound = 1 / math.sqrt(fan_in)
        lo, hi = -bound - bound * (2 * sparsity - 1), bound - bound * (2 * sparsity - 1)
        assert m.min().item() >= lo - 1e-6 and m.max().item() <= hi + 1e-6
        assert m.max().item() - m.min().item() > bound  # not degenerate
    s = opt.sparsity()
    assert abs(s["overall"] - sparsity) <= 5 * math.sqrt(sparsity * (1 - sparsity) / 25000) + 1e-12


def test_constant_mask_init():
    p = torch.zeros(3, 2, requires_grad=True)
    opt = MaskedSGD([p], mask_init="constant", mask_init_value=-0.25)
    assert torch.equal(opt.meta_parameters()[0].detach(), torch.full((3, 2), -0.25))
    assert opt.sparsity()["overall"] == 1.0


def test_rate_inits():
    torch.manual_seed(7)
    p = torch.zeros(4000, requires_grad=True)
    r = RectifiedLRSGD([p], lr=0.3).meta_parameters()[0]
    assert torch.equal(r.detach(), torch.full((4000,), 0.3))
    r = RectifiedLRSGD([p], rate_init="uniform", rate_init_range=(0.005, 0.1)).meta_parameters()[0]
    assert r.min().item() >= 0.005 and r.max().item() <= 0.1
    assert abs(r.mean().item() - 0.0525) < 0.003  # uniform, not constant
    assert r.max().item() - r.min().item() > 0.09
    la = LookaheadLRSGD([p]).meta_parameters()[0]  # La-MAML default alpha_0 = 0.15
    assert torch.equal(la.detach(), torch.full((4000,), 0.15))
    la = LookaheadLRSGD([p], rate_init="uniform", rate_init_range=(0.2, 0.4)).meta_parameters()[0]
    assert la.min().item() >= 0.2 and la.max().item() <= 0.4
    ms = MetaSGD([p]).meta_parameters()[0]  # Meta-SGD: alpha_0 = lr (default 0.1)
    assert torch.equal(ms.detach(), torch.full((4000,), 0.1))


@pytest.mark.parametrize("info", RATES_CLASSES)
def test_rates_start_at_lr(info):
    p = torch.zeros(5, 2, requires_grad=True)
    opt = info.make([p], lr=0.3)
    assert torch.equal(opt.meta_parameters()[0].detach(), torch.full((5, 2), 0.3))
    assert opt.sparsity()["overall"] == 0.0
    default = info.cls([p]).meta_parameters()[0]
    assert torch.equal(default.detach(), torch.full((5, 2), float(info.cls([p]).defaults["lr"])))


def test_meta_dtype_follows_parameter_and_is_float32_for_low_precision():
    for dt, mdt in [(torch.float32, torch.float32), (torch.float64, torch.float64),
                    (torch.bfloat16, torch.float32), (torch.float16, torch.float32)]:
        for info in OPTIMIZERS:
            if not info.elementwise:
                continue
            m = info.make([torch.zeros(3, 4, dtype=dt, requires_grad=True)]).meta_parameters()[0]
            assert m.dtype == mdt and m.shape == (3, 4)


def test_sparsity_values():
    a, b = torch.zeros(2, 3, requires_grad=True), torch.zeros(4, requires_grad=True)
    opt = MaskedSGD([a, b], mask_init="constant")
    _set_meta(opt, [torch.tensor([[-1.0, 0.0, 1.0], [-0.1, -2.0, 3.0]]), torch.tensor([0.0, 0.0, -1.0, 5.0])])
    s = opt.sparsity()
    assert s["per_parameter"] == {"param0": pytest.approx(3 / 6), "param1": pytest.approx(1 / 4)}
    assert s["overall"] == pytest.approx(4 / 10)
    r = RectifiedLRSGD([a, b])
    _set_meta(r, [torch.tensor([[-1.0, 0.0, 1.0], [-0.1, -2.0, 3.0]]), torch.tensor([0.0, 0.0, -1.0, 5.0])])
    s = r.sparsity()  # a rate of exactly 0 is frozen too
    assert s["per_parameter"] == {"param0": pytest.approx(4 / 6), "param1": pytest.approx(3 / 4)}
    assert s["overall"] == pytest.approx(7 / 10)
    assert RectifiedLRSGD([a, b], lr=0.1).sparsity()["overall"] == 0.0


# fraction frozen of [[-1, 0, 1], [-0.1, -2, 3]] and [0, 0, -1, 5]: 1[m < 0], rate <= 0, rate == 0
_SPARSITY = {"step": (3 / 6, 1 / 4), "relu": (4 / 6, 3 / 4), "linear": (1 / 6, 2 / 4)}


@pytest.mark.parametrize("info", GATED)
def test_sparsity_counts_frozen_coordinates_of_the_gate(info):
    a, b = torch.zeros(2, 3, requires_grad=True), torch.zeros(4, requires_grad=True)
    opt = info.make([a, b], lr=0.1, open_gates=True)
    assert opt.sparsity()["overall"] == 0.0
    _set_meta(opt, [torch.tensor([[-1.0, 0.0, 1.0], [-0.1, -2.0, 3.0]]), torch.tensor([0.0, 0.0, -1.0, 5.0])])
    fa, fb = _SPARSITY[info.gate]
    s = opt.sparsity()
    assert s["per_parameter"] == {"param0": pytest.approx(fa), "param1": pytest.approx(fb)}
    assert s["overall"] == pytest.approx((6 * fa + 4 * fb) / 10)


# ----------------------------------------------------------------------------- meta_step
@pytest.mark.parametrize("info", GATED)
def test_meta_step_is_sgd_on_meta_parameters_with_per_group_lr(info):
    cls, lr_name = info.cls, info.meta_lr
    torch.manual_seed(8)
    a, b = _leaf(torch.randn(3, dtype=DT)), _leaf(torch.randn(2, dtype=DT))
    a0, b0 = a.detach().clone(), b.detach().clone()
    opt = cls([a], **{lr_name: 0.25})
    opt.add_param_group({"params": [b], lr_name: 0.5})
    ma, mb = opt.meta_parameters()
    va, vb = ma.detach().clone(), mb.detach().clone()
    ga, gb = torch.randn(3, dtype=DT), torch.randn(2, dtype=DT)
    ma.grad, mb.grad = ga.clone(), gb.clone()
    opt.meta_step(update_params=False)
    _close(ma, va - 0.25 * ga)
    _close(mb, vb - 0.5 * gb)
    assert ma.grad is None and mb.grad is None
    assert torch.equal(a.detach(), a0) and torch.equal(b.detach(), b0)
    assert opt.meta_parameters()[0] is ma  # updated in place


@pytest.mark.parametrize("info", infos(where=lambda i: not i.update_params_default))
def test_meta_step_default_does_not_touch_params(info):
    p = _leaf(torch.randn(3))
    p0 = p.detach().clone()
    opt = info.make([p])
    p.grad = torch.ones(3)
    for m in opt.meta_parameters():
        m.grad = torch.ones_like(m)
    opt.meta_step()
    assert torch.equal(p.detach(), p0)


def test_lookahead_meta_step_uses_the_new_rates_la_maml_eq8():
    """alpha <- alpha - eta * g_alpha, then theta <- theta - max(0, alpha_new) * grad."""
    p0 = torch.tensor([1.0, 2.0, 3.0, 4.0, 5.0], dtype=DT)
    p = _leaf(p0)
    opt = LookaheadLRSGD([p], lr=0.1, rate_lr=0.5)
    alpha0 = torch.tensor([0.1, 0.1, -0.1, 0.3, 0.0], dtype=DT)
    g_alpha = torch.tensor([0.4, -0.2, -0.4, 0.0, 1.0], dtype=DT)
    grad = torch.tensor([1.0, -1.0, 2.0, 0.5, 3.0], dtype=DT)
    _set_meta(opt, [alpha0])
    opt.meta_parameters()[0].grad = g_alpha.clone()
    p.grad = grad.clone()
    opt.meta_step()  # update_params=True by default
    alpha1 = alpha0 - 0.5 * g_alpha  # [-0.1, 0.2, 0.1, 0.3, -0.5]
    _close(opt.meta_parameters()[0], alpha1)
    _close(p, p0 - _relu(alpha1) * grad)
    # old rates would have given a different theta: coordinate 0 frozen now, 2 open now
    assert p[0].item() == 1.0 and p[2].item() == pytest.approx(3.0 - 0.1 * 2.0)
    assert opt.meta_parameters()[0].grad is None


def test_masked_meta_step_update_params_is_sparse_la_maml_theta_update():
    """Supplement Algorithm 1: m <- m - gamma * dL/dm; theta <- theta - lr * 1[m_new >= 0] * grad."""
    p0 = torch.tensor([1.0, 2.0, 3.0, 4.0], dtype=DT)
    p = _leaf(p0)
    opt = MaskedSGD([p], lr=0.2, mask_lr=0.1, mask_init="constant")
    m0 = torch.tensor([0.01, -0.01, 0.5, -0.5], dtype=DT)
    gm = torch.tensor([1.0, -1.0, 0.0, 0.0], dtype=DT)
    grad = torch.tensor([1.0, 1.0, 1.0, 1.0], dtype=DT)
    _set_meta(opt, [m0])
    opt.meta_parameters()[0].grad = gm.clone()
    p.grad = grad.clone()
    opt.meta_step(update_params=True)
    m1 = m0 - 0.1 * gm  # [-0.09, 0.09, 0.5, -0.5]
    _close(opt.meta_parameters()[0], m1)
    _close(p, p0 - 0.2 * _step_gate(m1) * grad)
    assert p.detach().tolist() == [1.0, pytest.approx(1.8), pytest.approx(2.8), 4.0]


@pytest.mark.parametrize("info", RATES_CLASSES)
def test_rates_meta_step_update_params(info):
    """rates <- rates - rate_lr * g; theta <- theta - gate(rates_new) * grad (a negative Meta-SGD
    rate ascends, a non-positive rectified rate freezes)."""
    p0 = torch.tensor([1.0, 2.0, 3.0], dtype=DT)
    p = _leaf(p0)
    opt = info.make([p], lr=0.1, meta_lr=1.0)
    opt.meta_parameters()[0].grad = torch.tensor([0.2, -0.1, 0.0], dtype=DT)
    p.grad = torch.tensor([1.0, 1.0, -1.0], dtype=DT)
    opt.meta_step(update_params=True)
    r1 = torch.tensor([-0.1, 0.2, 0.1], dtype=DT)
    _close(opt.meta_parameters()[0], r1)
    _close(p, p0 - step_size(info.gate, r1, 0.1) * torch.tensor([1.0, 1.0, -1.0], dtype=DT))
    if info.gate == "relu":
        _close(p, p0 - _relu(r1) * torch.tensor([1.0, 1.0, -1.0], dtype=DT))


def test_meta_parameters_work_with_an_outer_optimizer():
    p = _leaf(torch.randn(3))
    opt = MaskedSGD([p], mask_init="constant", mask_init_value=0.5)
    outer = torch.optim.SGD(opt.meta_parameters(), lr=0.1)
    opt.meta_parameters()[0].grad = torch.ones(3)
    outer.step()
    assert torch.allclose(opt.meta_parameters()[0].detach(), torch.full((3,), 0.4))


@pytest.mark.parametrize("info", infos())
def test_every_optimizers_meta_parameters_work_with_an_outer_optimizer(info):
    p = _leaf(torch.randn(3))
    opt = info.make([p])
    before = [m.detach().clone() for m in opt.meta_parameters()]
    outer = torch.optim.SGD(opt.meta_parameters(), lr=0.1)
    for m in opt.meta_parameters():
        m.grad = torch.ones_like(m)
    outer.step()
    for m, b in zip(opt.meta_parameters(), before):
        assert torch.allclose(m.detach(), b - 0.1)
