"""Differentiable inner loops: gradcheck, straight-through definitions, path equivalences
(``higher``, ``differentiable=True``, first-order episodes, torch.func) for the optimizers of the
registry (conftest.py)."""
from __future__ import annotations


import higher
import pytest
import torch
import torch.nn.functional as F
from torch.autograd import gradcheck, gradgradcheck
from torch.func import functional_call, grad, vmap

import sparse_optim as so
from sparse_optim.functional.gated import lookahead_sgd, masked_sgd, meta_sgd, rectified_sgd
from sparse_optim.functional.kronecker import init_factors, kronecker_sgd

from conftest import BY_NAME, GATE_KINDS, cases, infos, step_size

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")


@pytest.fixture(autouse=True)
def _float64():
    """gradcheck needs float64; restore the default for the rest of the suite."""
    previous = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    yield
    torch.set_default_dtype(previous)


def tiny_problem(seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(6, 3, generator=g)
    y = torch.randn(6, 2, generator=g)
    w1 = torch.randn(4, 3, generator=g) * 0.5
    w2 = torch.randn(2, 4, generator=g) * 0.5
    return x, y, [w1, w2]


def forward(params, x):
    return torch.tanh(x @ params[0].T) @ params[1].T


def unroll(update, params, metas, x, y, steps=2, create_graph=True):
    for _ in range(steps):
        loss = F.mse_loss(forward(params, x), y)
        grads = torch.autograd.grad(loss, params, create_graph=create_graph)
        if not create_graph:
            grads = [g.detach() for g in grads]
        params = update(params, grads, metas)
    return F.mse_loss(forward(params, x), 0.5 * y)


# ------------------------------------------------------------------ gradcheck / gradgradcheck
def _check(fn, inputs):
    assert gradcheck(fn, inputs, eps=1e-6, atol=1e-5)
    assert gradgradcheck(fn, inputs, eps=1e-6, atol=1e-4)


def test_masked_gradcheck_theta():
    x, y, ws = tiny_problem()
    masks = [torch.randn_like(w) for w in ws]  # true derivative in theta: masks are piecewise constant
    fn = lambda w1, w2: unroll(lambda p, g, m: masked_sgd(p, g, m, lr=0.3), [w1, w2], masks, x, y)
    _check(fn, tuple(w.requires_grad_() for w in ws))


@pytest.mark.parametrize("info", infos(elementwise=True, where=lambda i: i.gate != "step"))
def test_rates_gradcheck_theta_and_rates(info):
    """True derivatives: rectified_sgd(straight_through=False), lookahead_sgd (La-MAML), meta_sgd."""
    def rule(p, g, m):
        return info.rule(p, g, m, lr=1.0, straight_through=False)
    x, y, ws = tiny_problem(1)
    rates = [torch.rand_like(w) * 0.3 + 0.05 for w in ws]  # away from the kink at 0
    rates[0][0, 0] = -0.2  # a dead rate: true derivative 0 there
    fn = lambda w1, w2, r1, r2: unroll(rule, [w1, w2], [r1, r2], x, y)
    _check(fn, tuple(t.requires_grad_() for t in ws + rates))


@pytest.mark.parametrize("kw", [dict(), dict(depth=2), dict(bias=True, normalize=True),
                                dict(variant="cholesky", rank=2), dict(variant="cholesky", rank=2, depth=2)])
def test_kronecker_gradcheck(kw):
    x, y, ws = tiny_problem(2)
    torch.manual_seed(0)
    factors = [init_factors(w.shape, dtype=torch.float64, **kw) for w in ws]
    for f in factors:  # move away from the identity so every term matters
        for k, v in f.items():
            f[k] = v + 0.1 * torch.randn_like(v)
    keys = list(factors[0])
    flat = [f[k] for f in factors for k in keys]

    def fn(w1, w2, *fl):
        fs = [dict(zip(keys, fl[:len(keys)])), dict(zip(keys, fl[len(keys):]))]
        upd = lambda p, g, m: kronecker_sgd(p, g, m, lr=0.2, variant=kw.get("variant", "kronecker"),
                                            depth=kw.get("depth", 1))
        return unroll(upd, [w1, w2], fs, x, y)

    _check(fn, tuple(t.requires_grad_() for t in ws + flat))


# ---------------------------------------------------------- straight-through by definition
def _st_definition_step(m):
    return (m >= 0).to(m.dtype).detach() + m - m.detach()


def _st_definition_relu(m):
    return m.clamp_min(0).detach() + m - m.detach()


ST_DEFINITIONS = {"step": _st_definition_step, "relu": _st_definition_relu, "linear": lambda m: m}
# the library's rule of each gate with straight-through estimation (identity derivative)
ST_RULES = {"step": lambda p, g, m: masked_sgd(p, g, m, lr=0.3),
            "relu": lambda p, g, m: rectified_sgd(p, g, m, straight_through=True),
            "linear": lambda p, g, m: meta_sgd(p, g, m)}


@pytest.mark.parametrize("kind", GATE_KINDS)
def test_straight_through_matches_definition(kind):
    x, y, ws = tiny_problem(3)
    metas = [torch.randn_like(w).requires_grad_() for w in ws]
    theta = [w.clone().requires_grad_() for w in ws]
    lib = ST_RULES[kind]
    gate = ST_DEFINITIONS[kind]
    scale = 0.3 if kind == "step" else 1.0
    ref = lambda p, g, m: [pi - scale * gate(mi) * gi for pi, gi, mi in zip(p, g, m)]
    got = torch.autograd.grad(unroll(lib, theta, metas, x, y), theta + metas)
    want = torch.autograd.grad(unroll(ref, theta, metas, x, y), theta + metas)
    for a, b in zip(got, want):
        torch.testing.assert_close(a, b)
    assert any(g.abs().sum() > 0 for g in got[2:])


# ------------------------------------------------------------------- path equivalences
def make_model(seed=0):
    torch.manual_seed(seed)
    return torch.nn.Sequential(torch.nn.Linear(3, 5), torch.nn.Tanh(), torch.nn.Linear(5, 2))


def task(seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(8, 3, generator=g), torch.randn(8, 2, generator=g)


class _Maker:
    """``make_opt(params, **kw)`` for a registry case at lr=0.2."""

    def __init__(self, case):
        self.case = case

    def __call__(self, params, **kw):
        return self.case.make(params, lr=0.2, **kw)


# every variant that is not online (online=True is refused with differentiable=True), without
# noise (sparse-MAML+ draws new noise in each run; see test_stochastic_masks_in_higher_reach_generator)
SECOND_ORDER = [pytest.param(_Maker(p.values[0]), id=p.id) for p in cases(stochastic=False, online=False)]
# weight decay makes the direction depend on theta explicitly (not only through detached
# gradients), so it is compared on the exact second-order paths only
FIRST_ORDER = [pytest.param(_Maker(p.values[0]), id=p.id)
               for p in cases(stochastic=False, online=False, variants=lambda v: not v.theta_explicit)]


@pytest.mark.parametrize("make_opt", SECOND_ORDER)
def test_higher_equals_differentiable_flag(make_opt):
    x, y = task()
    model = make_model()
    inner = make_opt(model.parameters())
    with higher.innerloop_ctx(model, inner, copy_initial_weights=False) as (fm, diffopt):
        for _ in range(3):
            diffopt.step(F.mse_loss(fm(x), y))
        F.mse_loss(fm(x), 0.5 * y).backward()
    want = [p.grad.clone() for p in model.parameters()] + [m.grad.clone() for m in inner.meta_parameters()]

    model2 = make_model()
    params = [p.clone() for p in model2.parameters()]  # non-leaf copies stepped in place
    opt = make_opt(params, differentiable=True)
    sd = inner.state_dict()
    for g in sd["param_groups"]:
        g["differentiable"] = True
    opt.load_state_dict(sd)  # same meta-parameters
    for m in opt.meta_parameters():
        m.grad = None
    names = [n for n, _ in model2.named_parameters()]
    for _ in range(3):
        # forward through clones: the in-place step must not overwrite tensors saved for backward
        loss = F.mse_loss(functional_call(model2, {n: p.clone() for n, p in zip(names, params)}, (x,)), y)
        gs = torch.autograd.grad(loss, params, create_graph=True)
        for p, g in zip(params, gs):
            p.grad = g
        opt.step()
    out = F.mse_loss(functional_call(model2, dict(zip(names, params)), (x,)), 0.5 * y)
    got = torch.autograd.grad(out, list(model2.parameters()) + opt.meta_parameters())
    for a, b in zip(got, want):
        torch.testing.assert_close(a, b)


@pytest.mark.parametrize("make_opt", FIRST_ORDER)
def test_detached_differentiable_equals_first_order_episode(make_opt):
    x, y = task(1)
    model = make_model(1)
    opt = make_opt(model.parameters())
    with opt.episode():
        for _ in range(3):
            opt.zero_grad(); F.mse_loss(model(x), y).backward(); opt.step()
        opt.zero_grad(); F.mse_loss(model(x), 0.5 * y).backward(); opt.meta_backward()
    want_theta = [p.grad.clone() for p in model.parameters()]
    want_meta = [m.grad.clone() for m in opt.meta_parameters()]

    model2 = make_model(1)
    inner = make_opt(model2.parameters())
    inner.load_state_dict(opt.state_dict())
    inner.zero_meta_grad()
    with higher.innerloop_ctx(model2, inner, copy_initial_weights=False, track_higher_grads=True) as (fm, diffopt):
        for _ in range(3):
            diffopt.step(F.mse_loss(fm(x), y), grad_callback=lambda gs: [g.detach() for g in gs])
        F.mse_loss(fm(x), 0.5 * y).backward()
    # first order: d phi_K / d theta = I, so theta's gradient is the outer gradient
    for a, b in zip([p.grad for p in model2.parameters()], want_theta):
        torch.testing.assert_close(a, b)
    for a, b in zip([m.grad for m in inner.meta_parameters()], want_meta):
        torch.testing.assert_close(a, b)


def test_stochastic_masks_in_higher_reach_generator():
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Conv2d(1, 2, 3), torch.nn.Flatten(), torch.nn.Linear(8, 2))
    x, y = torch.randn(4, 1, 4, 4), torch.randn(4, 2)
    inner = so.StochasticMaskedSGD(model.named_parameters(), noise_dim=7)
    with higher.innerloop_ctx(model, inner, copy_initial_weights=False) as (fm, diffopt):
        for _ in range(2):
            diffopt.step(F.mse_loss(fm(x), y))
        F.mse_loss(fm(x), 0 * y).backward()
    grads = {n: m.grad for n, m in inner.named_meta_parameters()}
    for key in ("0.weight.A", "0.weight.b", "0.weight.mu", "0.weight.sigma", "2.weight.mask_logits"):
        assert grads[key] is not None and grads[key].abs().sum() > 0, key


def test_higher_override_lr_is_differentiable():
    x, y = task(2)
    model = make_model(2)
    lr = torch.tensor(0.1, requires_grad=True)
    inner = so.MaskedSGD(model.parameters(), mask_init="constant")
    with higher.innerloop_ctx(model, inner, copy_initial_weights=False, override={"lr": [lr]}) as (fm, diffopt):
        for _ in range(2):
            diffopt.step(F.mse_loss(fm(x), y))
        loss = F.mse_loss(fm(x), y)
    (glr,) = torch.autograd.grad(loss, lr)
    # all masks open: compare with finite differences of plain SGD in lr
    def plain(lr_value):
        m = make_model(2)
        opt = torch.optim.SGD(m.parameters(), lr=lr_value)
        for _ in range(2):
            opt.zero_grad(); F.mse_loss(m(x), y).backward(); opt.step()
        return F.mse_loss(m(x), y).item()
    fd = (plain(0.1 + 1e-6) - plain(0.1 - 1e-6)) / 2e-6
    assert abs(glr.item() - fd) < 1e-5


# ------------------------------------------------------------------------ torch.func / vmap
@pytest.mark.parametrize("info", infos(elementwise=True))
def test_vmap_over_tasks_matches_loop(info):
    def rule(p, g, m, lr):
        return info.rule(p, g, m, lr=lr)
    model = make_model(3)
    params = {n: p.detach() for n, p in model.named_parameters()}
    masks = {n: torch.randn_like(p) for n, p in params.items()}
    xs = torch.randn(4, 8, 3)
    ys = torch.randn(4, 8, 2)

    def loss_fn(p, x, y):
        return F.mse_loss(functional_call(model, p, (x,)), y)

    def adapt(x, y):
        p = params
        for _ in range(2):
            p = rule(p, grad(loss_fn)(p, x, y), masks, lr=0.3)
        return loss_fn(p, x, 0.5 * y)

    batched = vmap(adapt)(xs, ys)
    looped = torch.stack([adapt(xs[i], ys[i]) for i in range(4)])
    torch.testing.assert_close(batched, looped)
    # and meta-gradients through the vmapped adaptation
    def meta_loss(m):
        def adapt_m(x, y):
            p = params
            for _ in range(2):
                p = rule(p, grad(loss_fn)(p, x, y), m, lr=0.3)
            return loss_fn(p, x, 0.5 * y)
        return vmap(adapt_m)(xs, ys).mean()
    g = grad(meta_loss)(masks)
    assert all(torch.isfinite(v).all() for v in g.values()) and any(v.abs().sum() > 0 for v in g.values())


@pytest.mark.parametrize("info", infos(elementwise=True))
def test_functional_dict_and_list_agree(info):
    torch.manual_seed(0)
    ps = [torch.randn(3, 2), torch.randn(4)]
    gs = [torch.randn_like(p) for p in ps]
    ms = [torch.randn_like(p) for p in ps]
    as_list = info.rule(ps, gs, ms, lr=0.5)
    as_dict = info.rule(dict(a=ps[0], b=ps[1]), dict(a=gs[0], b=gs[1]), dict(a=ms[0], b=ms[1]), lr=0.5)
    torch.testing.assert_close(as_list[0], as_dict["a"])
    torch.testing.assert_close(as_dict["b"], as_list[1])
    torch.testing.assert_close(as_list[1], ps[1] - step_size(info.gate, ms[1], 0.5) * gs[1])
    if info.gate == "step":
        torch.testing.assert_close(as_list[1], ps[1] - 0.5 * (ms[1] >= 0) * gs[1])
    with pytest.raises(ValueError, match=info.meta_key):
        info.rule([ps[0]], [gs[0]], [torch.randn(2, 3)], lr=0.5)


# ------------------------------------------------------------------------------- memory
@pytest.mark.parametrize("make_opt", SECOND_ORDER)
def test_first_order_path_keeps_no_graph(make_opt):
    x, y = task(4)
    model = make_model(4)
    opt = make_opt(model.parameters())
    saved = []
    with opt.episode():
        for _ in range(3):
            opt.zero_grad(); F.mse_loss(model(x), y).backward()
            with torch.autograd.graph.saved_tensors_hooks(lambda t: saved.append(1) or t, lambda t: t):
                opt.step()
            assert all(p.grad_fn is None for p in model.parameters())
        opt.zero_grad(); F.mse_loss(model(x), y).backward()
        opt.meta_backward()
    for trace in opt._trace.tensors():
        tensors = trace if isinstance(trace, torch.Tensor) else [d for d, _ in trace]
        assert not any(t.requires_grad for t in ([tensors] if isinstance(tensors, torch.Tensor) else tensors))
    assert saved == []  # no autograd graph was built by the inner steps


def test_functional_package_exports_the_rules():
    import sparse_optim.functional as fn

    assert fn.masked_sgd is masked_sgd and fn.kronecker_sgd is kronecker_sgd
    assert fn.rectified_sgd is rectified_sgd and fn.lookahead_sgd is lookahead_sgd and fn.meta_sgd is meta_sgd
    assert set(fn.__all__) >= {"masked_sgd", "rectified_sgd", "lookahead_sgd", "meta_sgd", "kronecker_sgd"}
    assert {info.functional for info in BY_NAME.values() if info.elementwise} == {
        masked_sgd, rectified_sgd, lookahead_sgd, meta_sgd}
