"""KroneckerSGD and the Kronecker functional rules against the KFO formulas."""
from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings, strategies as st

import sparse_optim as so
from sparse_optim.functional.kronecker import from_matrix, init_factors, kronecker_transform, matrix_shape, to_matrix


def vec(m):  # column-major vectorisation, as in vec(LGR) = (R^T kron L) vec(G)
    return m.transpose(-1, -2).reshape(-1)


def test_klin_is_the_kronecker_product():
    torch.manual_seed(0)
    G = torch.randn(3, 4, dtype=torch.float64)
    L, R = torch.randn(3, 3, dtype=torch.float64), torch.randn(4, 4, dtype=torch.float64)
    u = kronecker_transform(G, {"L0": L, "R0": R})
    torch.testing.assert_close(vec(u), torch.kron(R.T.contiguous(), L) @ vec(G))


@given(shape=st.lists(st.integers(1, 4), min_size=0, max_size=4))
@settings(max_examples=30, deadline=None)
def test_matrix_view_round_trip(shape):
    t = torch.randn(shape)
    b, n, m = matrix_shape(shape)
    mat = to_matrix(t)
    assert mat.shape == (b, n, m)
    torch.testing.assert_close(from_matrix(mat, shape), t)


def test_conv_view_shares_factors_across_filters():
    """KFO A.1.2: N x C x H x W -> N matrices HW x C, i.e. m = C, n = HW."""
    w = torch.randn(5, 3, 2, 2)
    assert matrix_shape(w.shape) == (5, 4, 3)
    mat = to_matrix(w)
    torch.testing.assert_close(mat[2], w[2].reshape(3, 4).T)
    f = init_factors(w.shape)
    assert f["L0"].shape == (4, 4) and f["R0"].shape == (3, 3)


def test_vector_view_matches_paper_parameter_count():
    """KFO A.1.1: KLin for a 100-d logistic regression has 10,001 parameters (m = 100, n = 1)."""
    f = init_factors((100,))
    assert sum(v.numel() for v in f.values()) == 10_001
    f2 = init_factors((100,), depth=2)
    assert sum(v.numel() for v in f2.values()) == 20_002  # KFC with one hidden layer


def test_kfc_cholesky_normalize_formulas():
    torch.manual_seed(1)
    g = torch.randn(3, 4, dtype=torch.float64)
    f = {k: torch.randn(*(v.shape), dtype=torch.float64) for k, v in init_factors((3, 4), depth=2).items()}
    want = f["L1"] @ torch.relu(f["L0"] @ g @ f["R0"]) @ f["R1"]
    torch.testing.assert_close(kronecker_transform(g, f, depth=2), want)
    c = torch.randn(12, 2, dtype=torch.float64)
    torch.testing.assert_close(kronecker_transform(g, {"C0": c}, variant="cholesky"),
                               (c @ c.T @ g.reshape(-1)).reshape(3, 4))
    fs = {"L0": f["L0"], "R0": f["R0"], "bias": torch.randn(3, 4, dtype=torch.float64),
          "scale": torch.tensor(0.7, dtype=torch.float64)}
    n = g.norm()
    want = 0.7 * n * (f["L0"] @ (g / n) @ f["R0"] + fs["bias"])
    torch.testing.assert_close(kronecker_transform(g, fs), want)


def make_model(seed=0):
    torch.manual_seed(seed)
    return torch.nn.Sequential(torch.nn.Conv2d(1, 3, 3), torch.nn.Flatten(), torch.nn.Linear(3 * 4 * 4, 2))


def data(seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(6, 1, 6, 6, generator=g), torch.randint(0, 2, (6,), generator=g)


def test_identity_init_first_steps_equal_sgd():
    x, y = data()
    a, b = make_model(), make_model()
    opt = so.KroneckerSGD(a.parameters(), lr=0.1, momentum=0.9, weight_decay=1e-3)
    ref = torch.optim.SGD(b.parameters(), lr=0.1, momentum=0.9, weight_decay=1e-3)
    for _ in range(3):
        for m, o in ((a, opt), (b, ref)):
            o.zero_grad(); F.cross_entropy(m(x), y).backward(); o.step()
    for p, q in zip(a.parameters(), b.parameters()):
        torch.testing.assert_close(p, q)


def unrolled_first_order(model, factors, x, y, lr, steps, variant="kronecker", depth=1):
    """Explicit unrolled loop with detached inner gradients; factors are leaves."""
    params = [p.detach().clone().requires_grad_() for p in model.parameters()]
    names = [n for n, _ in model.named_parameters()]
    cur = params
    for _ in range(steps):
        loss = F.cross_entropy(torch.func.functional_call(model, dict(zip(names, cur)), (x,)), y)
        grads = [g.detach() for g in torch.autograd.grad(loss, cur)]
        cur = [p - lr * kronecker_transform(g, f, variant=variant, depth=depth) for p, g, f in zip(cur, grads, factors)]
    out = F.cross_entropy(torch.func.functional_call(model, dict(zip(names, cur)), (x,)), 1 - y)
    return torch.autograd.grad(out, params + [t for f in factors for t in f.values()])


@pytest.mark.parametrize("kw", [dict(), dict(depth=2), dict(variant="cholesky", rank=3), dict(bias=True, normalize=True)])
def test_first_order_meta_grad_equals_unrolled_detached_loop(kw):
    x, y = data(1)
    model = make_model(1)
    opt = so.KroneckerSGD(model.parameters(), lr=0.2, **kw)
    with torch.no_grad():  # move away from the identity
        for m in opt.meta_parameters():
            m.add_(0.05 * torch.randn_like(m))
    factors = [{k: v.detach().clone().requires_grad_() for k, v in opt._meta[p].items()} for p in model.parameters()]
    want = unrolled_first_order(model, factors, x, y, 0.2, 3, kw.get("variant", "kronecker"), kw.get("depth", 1))
    with opt.episode():
        for _ in range(3):
            opt.zero_grad(); F.cross_entropy(model(x), y).backward(); opt.step()
        opt.zero_grad(); F.cross_entropy(model(x), 1 - y).backward(); opt.meta_backward()
    got = [p.grad for p in model.parameters()] + opt.meta_parameters()
    got = got[:len(list(model.parameters()))] + [m.grad for m in opt.meta_parameters()]
    for a, b in zip(got, want):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6)


def test_adapt_factors_hypergradient_step():
    """KFO Eq. 4: xi_1 = xi_0 - a * dL(theta_1)/dxi with theta_1 = theta_0 - lr U_xi(g_0)."""
    x, y = data(2)
    model = make_model(2)
    opt = so.KroneckerSGD(model.parameters(), lr=0.2, adapt_factors=True, factor_inner_lr=0.05)
    p0 = [p.detach().clone().requires_grad_() for p in model.parameters()]
    names = [n for n, _ in model.named_parameters()]
    xi = [{k: v.detach().clone().requires_grad_() for k, v in opt._meta[p].items()} for p in model.parameters()]
    loss0 = F.cross_entropy(torch.func.functional_call(model, dict(zip(names, p0)), (x,)), y)
    g0 = torch.autograd.grad(loss0, p0)
    theta1 = [p.detach() - 0.2 * kronecker_transform(g, f) for p, g, f in zip(p0, g0, xi)]
    loss1 = F.cross_entropy(torch.func.functional_call(model, dict(zip(names, theta1)), (x,)), y)
    hyper = torch.autograd.grad(loss1, [t for f in xi for t in f.values()])
    want = [t.detach() - 0.05 * h for t, h in zip([t for f in xi for t in f.values()], hyper)]
    for _ in range(2):
        opt.zero_grad(); F.cross_entropy(model(x), y).backward(); opt.step()
    # outside an episode the meta-parameters themselves adapt (online)
    for a, b in zip(opt.meta_parameters(), want):
        torch.testing.assert_close(a.detach(), b, rtol=1e-4, atol=1e-6)


def test_adapting_episode_keeps_meta_parameters_and_restores_theta():
    x, y = data(3)
    model = make_model(3)
    opt = so.KroneckerSGD(model.parameters(), adapt_factors=True)
    before = [m.detach().clone() for m in opt.meta_parameters()]
    theta = [p.detach().clone() for p in model.parameters()]
    with opt.episode():
        for _ in range(3):
            opt.zero_grad(); F.cross_entropy(model(x), y).backward(); opt.step()
        opt.zero_grad(); F.cross_entropy(model(x), y).backward(); opt.meta_backward()
    for a, b in zip(opt.meta_parameters(), before):
        assert torch.equal(a.detach(), b)
    for a, b in zip(model.parameters(), theta):
        assert torch.equal(a.detach(), b)
    assert any(m.grad is not None and m.grad.abs().sum() > 0 for m in opt.meta_parameters())
    opt.meta_step()
    assert any(not torch.equal(a.detach(), b) for a, b in zip(opt.meta_parameters(), before))
    assert all(m.grad is None for m in opt.meta_parameters())


def test_state_dict_round_trip_continues_bit_identically():
    x, y = data(4)
    a = make_model(4)
    opt = so.KroneckerSGD(a.parameters(), depth=2, momentum=0.9, adapt_factors=True)
    for _ in range(2):
        opt.zero_grad(); F.cross_entropy(a(x), y).backward(); opt.step()
    b = copy.deepcopy(a)
    opt_b = so.KroneckerSGD(b.parameters(), depth=2, momentum=0.9, adapt_factors=True)
    opt_b.load_state_dict(opt.state_dict())
    for _ in range(3):
        for m, o in ((a, opt), (b, opt_b)):
            o.zero_grad(); F.cross_entropy(m(x), y).backward(); o.step()
    for p, q in zip(list(a.parameters()) + opt.meta_parameters(), list(b.parameters()) + opt_b.meta_parameters()):
        assert torch.equal(p, q)


def test_bad_arguments():
    p = [torch.nn.Parameter(torch.randn(3))]
    with pytest.raises(ValueError, match="variant"):
        so.KroneckerSGD(p, variant="svd")
    with pytest.raises(ValueError, match="depth"):
        so.KroneckerSGD(p, depth=0)
    with pytest.raises(ValueError, match="rank"):
        so.KroneckerSGD(p, variant="cholesky", rank=-1)
    with pytest.raises(ValueError, match="factor_lr"):
        so.KroneckerSGD(p, factor_lr=float("nan"))
    opt = so.KroneckerSGD(p)
    sd = opt.state_dict()
    other = so.KroneckerSGD([torch.nn.Parameter(torch.randn(4))])
    with pytest.raises(ValueError, match="shape"):
        other.load_state_dict(sd)


def test_bfloat16_params_keep_float32_factors():
    w = torch.nn.Parameter(torch.randn(4, 3).to(torch.bfloat16))
    opt = so.KroneckerSGD([w], lr=0.1)
    assert all(m.dtype == torch.float32 for m in opt.meta_parameters())
    w.grad = torch.ones_like(w)
    before = w.detach().clone()
    opt.step()
    torch.testing.assert_close(w.detach().float(), (before.float() - 0.1).to(torch.bfloat16).float())


# ------------------------------------------------------------------- sparse-MAML+
def test_stochastic_masks_chain_rule():
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Conv2d(1, 2, 3), torch.nn.Flatten(), torch.nn.Linear(8, 2))
    x, y = torch.randn(5, 1, 4, 4), torch.randint(0, 2, (5,))
    opt = so.StochasticMaskedSGD(model.named_parameters(), lr=0.3, noise_dim=6)
    names = [n for n, _ in opt.named_meta_parameters()]
    assert names[:4] == ["0.weight.A", "0.weight.b", "0.weight.mu", "0.weight.sigma"]
    assert "2.weight.mask_logits" in names
    conv = model[0].weight
    with opt.episode():
        traces = torch.zeros_like(conv)
        for _ in range(2):
            opt.zero_grad(); F.cross_entropy(model(x), y).backward()
            traces += conv.grad
            opt.step()
        z, m = opt._sampled[conv]
        opt.zero_grad(); F.cross_entropy(model(x), 1 - y).backward()
        g_out = conv.grad.clone()
        opt.meta_backward()
    meta = opt._meta[conv]
    dm = -0.3 * g_out * traces  # MaskedSGD straight-through logit gradient
    h = z * meta["sigma"].detach() + meta["mu"].detach()
    torch.testing.assert_close(meta["b"].grad, dm)
    torch.testing.assert_close(meta["A"].grad, dm.reshape(-1, 1) @ h.reshape(1, -1))
    torch.testing.assert_close(meta["mu"].grad, meta["A"].detach().T @ dm.reshape(-1))
    torch.testing.assert_close(meta["sigma"].grad, (meta["A"].detach().T @ dm.reshape(-1)) * z)
    # the mask actually used was 1[m >= 0] of Eq. 11's logits
    torch.testing.assert_close(m, (meta["A"].detach() @ h).reshape(conv.shape) + meta["b"].detach())
    assert 0.0 <= opt.sparsity()["overall"] <= 1.0
    with pytest.raises(ValueError, match="noise_dim"):
        so.StochasticMaskedSGD(model.parameters(), noise_dim=0)
