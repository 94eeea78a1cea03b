"""First-order meta-gradients of the gated optimizers against an explicitly unrolled inner loop.

The reference builds phi_{k+1} = phi_k - scale * gate(xi) * d_k.detach() from a leaf theta with
the test's own straight-through functions (conftest.py), and differentiates the outer loss with
autograd (sparse-MAML Eq. 5 / supplement Eq. 9-10, La-MAML Eq. 7, Meta-SGD Eq. 1). Also: episode
bookkeeping, meta_step, a full sparse-La-MAML / La-MAML step (supplement Algorithm 1, La-MAML
Eq. 8) by hand, and the online (hypergradient) mode.
"""
import pytest
import torch

from sparse_optim import LookaheadLRSGD, MaskedSGD

from conftest import autograd_gate, cases, gate_derivative, infos, step_size

DT = torch.float64


def _close(a, b, tol=1e-10):
    torch.testing.assert_close(a.detach(), b.detach(), rtol=tol, atol=tol)


def _set_meta(opt, values):
    with torch.no_grad():
        for t, v in zip(opt.meta_parameters(), values):
            t.copy_(v)


def _loss(params, batch):
    w, b = params
    x, y = batch
    return ((torch.tanh(x @ w.t() + b) - y) ** 2).sum(-1).mean()


def _batch(gen, n=5):
    return torch.randn(n, 4, generator=gen, dtype=DT), torch.randn(n, 3, generator=gen, dtype=DT)


def _direction(g, p, buf, hp):
    d = -g if hp.get("maximize") else g
    d = d + hp.get("weight_decay", 0.0) * p
    mom = hp.get("momentum", 0.0)
    if mom == 0:
        return d, None
    buf = d.clone() if buf is None else mom * buf + (1 - hp.get("dampening", 0.0)) * d
    return (d + mom * buf if hp.get("nesterov") else buf), buf


def _unrolled(theta0, meta0, inner_batches, outer_batch, gate, scale, hp):
    """Autograd through phi_K with detached inner directions; returns (dL/dxi, dL/dtheta)."""
    theta = [t.clone().requires_grad_(True) for t in theta0]
    meta = [m.clone().requires_grad_(True) for m in meta0]
    phi, bufs = list(theta), [None] * len(theta)
    for batch in inner_batches:
        detached = [x.detach().requires_grad_(True) for x in phi]
        grads = torch.autograd.grad(_loss(detached, batch), detached)
        new = []
        for i, (x, g, m) in enumerate(zip(phi, grads, meta)):
            d, bufs[i] = _direction(g, x.detach(), bufs[i], hp)
            new.append(x - scale * gate(m) * d.detach())
        phi = new
    out = _loss(phi, outer_batch)
    grads = torch.autograd.grad(out, meta + theta)
    return list(grads[: len(meta)]), list(grads[len(meta):])


# every elementwise gated optimizer, with each straight-through setting it has (registry variants)
VARIANTS = cases(elementwise=True, descs=["default", "true-relu", "straight-through"])
HPARAMS = {
    "plain": dict(),
    "momentum-dampening": dict(momentum=0.7, dampening=0.2),
    "nesterov-wd": dict(momentum=0.5, nesterov=True, weight_decay=0.05),
    "wd-maximize": dict(weight_decay=0.1, maximize=True),
}


def _setup(case, hp, lr=0.3, seed=0):
    """The optimizer of `case` with random meta-parameters, and the reference's gate and scale."""
    info = case.info
    gate = autograd_gate(info.gate, case.straight_through)
    gen = torch.Generator().manual_seed(seed)
    theta0 = [torch.randn(3, 4, generator=gen, dtype=DT), torch.randn(3, generator=gen, dtype=DT)]
    if info.gate == "step":
        meta0 = [torch.randn(3, 4, generator=gen, dtype=DT), torch.randn(3, generator=gen, dtype=DT)]
    else:  # rates around lr, some negative and some exactly zero
        meta0 = [lr * torch.randn(3, 4, generator=gen, dtype=DT), lr * torch.randn(3, generator=gen, dtype=DT)]
        meta0[0][0, :2] = 0.0
    params = [t.clone().requires_grad_(True) for t in theta0]
    opt = case.make(params, lr=lr, open_gates=True, **hp)
    _set_meta(opt, meta0)
    return opt, params, theta0, meta0, gate, (lr if info.lr_scaled else 1.0), gen


def _case(name):
    """One case of VARIANTS by id."""
    return next(p.values[0] for p in VARIANTS if p.id == name)


def _run_episode(opt, params, inner_batches, outer_batch):
    with opt.episode():
        for batch in inner_batches:
            opt.zero_grad()
            _loss(params, batch).backward()
            opt.step()
        opt.zero_grad()
        _loss(params, outer_batch).backward()
        opt.meta_backward()


@pytest.mark.parametrize("hp_name", list(HPARAMS))
@pytest.mark.parametrize("variant", VARIANTS)
def test_meta_backward_equals_unrolled_autograd(variant, hp_name):
    hp = HPARAMS[hp_name]
    opt, params, theta0, meta0, gate, scale, gen = _setup(variant, hp)
    if hp.get("momentum"):  # a pre-existing buffer must not leak into the episode
        for p in params:
            p.grad = torch.randn(p.shape, generator=gen, dtype=DT)
        opt.step()
        theta0 = [p.detach().clone() for p in params]
        bufs_before = [opt.state[p]["momentum_buffer"].clone() for p in params]
    inner = [_batch(gen) for _ in range(3)]
    outer = _batch(gen)
    opt.zero_grad()
    _run_episode(opt, params, inner, outer)
    gm, gtheta = _unrolled(theta0, meta0, inner, outer, gate, scale, hp)
    for m, ref in zip(opt.meta_parameters(), gm):
        _close(m.grad, ref)
    for p, ref, t0 in zip(params, gtheta, theta0):
        assert torch.equal(p.detach(), t0)  # theta restored
        _close(p.grad, ref)  # first-order theta-gradient = g_out (supplement Eq. 9)
    if hp.get("momentum"):
        for p, b in zip(params, bufs_before):
            assert torch.equal(opt.state[p]["momentum_buffer"], b)
    # sanity: the reference is not trivially zero
    assert sum(g.abs().sum().item() for g in gm) > 1e-3


@pytest.mark.parametrize("info", infos(elementwise=True))
def test_meta_grad_closed_form(info):
    """sparse-MAML Eq. 5: dL/dm = -lr * g_out * sum_k g_k (one parameter, K=2, quadratic loss);
    for rates dL/dalpha = -g_out * sum_k g_k * gate'(alpha) (La-MAML Eq. 7, Meta-SGD)."""
    theta0 = torch.tensor([1.0, -2.0, 0.5], dtype=DT)
    p = theta0.clone().requires_grad_(True)
    opt = info.make([p], lr=0.1, open_gates=True)
    m0 = torch.tensor([0.3, -0.3, 0.0], dtype=DT)
    _set_meta(opt, [m0])
    a = torch.tensor([1.0, 2.0, 3.0], dtype=DT)
    c = torch.tensor([0.5, 0.5, -1.0], dtype=DT)
    with opt.episode():
        g_sum, phi = torch.zeros(3, dtype=DT), theta0.clone()
        for _ in range(2):
            opt.zero_grad()
            (0.5 * a * p ** 2).sum().backward()
            g = a * phi
            g_sum += g
            phi = phi - step_size(info.gate, m0, 0.1) * g
            opt.step()
        _close(p, phi)
        opt.zero_grad()
        ((p - c) ** 2).sum().backward()
        g_out = 2 * (phi - c)
        opt.meta_backward()
    scale = 0.1 if info.lr_scaled else 1.0
    expected = -scale * g_out * g_sum * gate_derivative(info.gate, m0, info.straight_through)
    _close(opt.meta_parameters()[0].grad, expected)
    if info.gate == "step":
        _close(opt.meta_parameters()[0].grad, -0.1 * g_out * g_sum)
    _close(p.grad, g_out)


@pytest.mark.parametrize("variant", cases(elementwise=True, descs=["default"]))
def test_several_episodes_accumulate_meta_batch(variant):
    opt, params, theta0, meta0, gate, scale, gen = _setup(variant, {}, seed=3)
    stash = [torch.randn(p.shape, generator=gen, dtype=DT) for p in params]
    for p, s in zip(params, stash):
        p.grad = s.clone()
    total_m = [torch.zeros_like(m) for m in meta0]
    total_t = [s.clone() for s in stash]
    for _ in range(3):
        inner, outer = [_batch(gen) for _ in range(2)], _batch(gen)
        _run_episode(opt, params, inner, outer)
        gm, gt = _unrolled(theta0, meta0, inner, outer, gate, scale, {})
        total_m = [a + b for a, b in zip(total_m, gm)]
        total_t = [a + b for a, b in zip(total_t, gt)]
        for p, t0 in zip(params, theta0):
            assert torch.equal(p.detach(), t0)
    for m, ref in zip(opt.meta_parameters(), total_m):
        _close(m.grad, ref)
    for p, ref in zip(params, total_t):
        _close(p.grad, ref)


def test_episode_restores_theta_and_grads_on_exception():
    opt, params, theta0, _, _, _, gen = _setup(_case("masked-default"), dict(momentum=0.9))
    for p in params:
        p.grad = torch.ones_like(p)
    opt.step()
    theta1 = [p.detach().clone() for p in params]
    bufs = [opt.state[p]["momentum_buffer"].clone() for p in params]
    stash = [torch.randn(p.shape, generator=gen, dtype=DT) for p in params]
    for p, s in zip(params, stash):
        p.grad = s.clone()
    with pytest.raises(KeyError, match="boom"):
        with opt.episode():
            for p in params:
                p.grad = torch.ones_like(p)
            opt.step()
            opt.step()
            assert not torch.equal(params[0].detach(), theta1[0])
            raise KeyError("boom")
    assert not opt.in_episode
    for p, t, s, b in zip(params, theta1, stash, bufs):
        assert torch.equal(p.detach(), t)
        assert torch.equal(p.grad, s)
        assert torch.equal(opt.state[p]["momentum_buffer"], b)
    assert all(m.grad is None for m in opt.meta_parameters())
    with opt.episode():  # usable again
        pass


def test_param_grads_after_episode_are_stash_plus_outer_grads_and_none_stays_none():
    opt, params, theta0, meta0, gate, scale, gen = _setup(_case("masked-default"), {})
    w, b = params
    w.grad = torch.full_like(w, 2.0)  # b has no stashed grad
    inner, outer = [_batch(gen)], _batch(gen)
    _run_episode(opt, params, inner, outer)
    _, gt = _unrolled(theta0, meta0, inner, outer, gate, scale, {})
    _close(w.grad, 2.0 + gt[0])
    _close(b.grad, gt[1])
    # an episode with no meta_backward hands back the stash untouched (None included)
    opt.zero_grad()
    w.grad = torch.ones_like(w)
    with opt.episode():
        w.grad = torch.ones_like(w)
        b.grad = torch.ones_like(b)
        opt.step()
    assert torch.equal(w.grad, torch.ones_like(w)) and b.grad is None


def test_param_without_inner_gradient_gets_no_meta_gradient_but_gets_theta_gradient():
    a = torch.randn(3, dtype=DT, requires_grad=True)
    b = torch.randn(3, dtype=DT, requires_grad=True)
    opt = MaskedSGD([a, b], lr=0.1, mask_init="constant")
    with opt.episode():
        opt.zero_grad()
        (a ** 2).sum().backward()  # b not used in the inner loss
        opt.step()
        opt.zero_grad()
        (a.sum() + (3 * b).sum()).backward()
        opt.meta_backward()
    ma, mb = opt.meta_parameters()
    _close(ma.grad, -0.1 * torch.ones(3, dtype=DT) * 2 * a.detach())
    assert mb.grad is None or torch.equal(mb.grad, torch.zeros(3, dtype=DT))
    _close(b.grad, torch.full((3,), 3.0, dtype=DT))


def test_episode_misuse_raises():
    p = torch.randn(3, requires_grad=True)
    opt = MaskedSGD([p])
    with pytest.raises(RuntimeError, match="episode"):
        opt.meta_backward()
    with opt.episode():
        with pytest.raises(RuntimeError, match="nested"):
            with opt.episode():
                pass
        assert opt.in_episode
        with pytest.raises(RuntimeError, match="no inner step"):
            p.grad = torch.ones(3)
            opt.meta_backward()
        with pytest.raises(RuntimeError, match="meta_step"):
            opt.meta_step()
    assert not opt.in_episode
    assert opt.meta_parameters()[0].grad is None


# ------------------------------------------------------------ full algorithm steps by hand
def _lin_grad(w, x, y):
    """Gradient of mean 0.5 * (x @ w - y)^2, written out."""
    r = x @ w - y
    return (r[:, None] * x).mean(0)


def _lin_loss(w, x, y):
    return (0.5 * (x @ w - y) ** 2).mean()


def _algorithm_data(seed):
    gen = torch.Generator().manual_seed(seed)
    xs = torch.randn(3, 1, 5, generator=gen, dtype=DT)  # |B| = 3 inner steps, one example each
    ys = torch.randn(3, 1, generator=gen, dtype=DT)
    xr = torch.randn(2, 5, generator=gen, dtype=DT)  # replay sample R
    yr = torch.randn(2, generator=gen, dtype=DT)
    x_all = torch.cat([xs.reshape(3, 5), xr])
    y_all = torch.cat([ys.reshape(3), yr])
    theta = torch.randn(5, generator=gen, dtype=DT)
    return xs, ys, x_all, y_all, theta


def _library_step(opt, p, xs, ys, x_all, y_all):
    with opt.episode():
        for x, y in zip(xs, ys):
            opt.zero_grad()
            _lin_loss(p, x, y).backward()
            opt.step()
        opt.zero_grad()
        _lin_loss(p, x_all, y_all).backward()
        opt.meta_backward()
    opt.meta_step(update_params=True)


def test_full_sparse_la_maml_step_by_hand():
    """Supplement Algorithm 1 (trace = sum of the gradients used by the inner steps, Eq. 5)."""
    xs, ys, x_all, y_all, theta = _algorithm_data(0)
    a0, gamma = 0.2, 3.0
    m = torch.tensor([0.02, -0.02, 0.5, -0.5, 0.0], dtype=DT)
    phi, g_in = theta.clone(), torch.zeros(5, dtype=DT)
    for x, y in zip(xs, ys):
        g = _lin_grad(phi, x, y)
        g_in = g_in + g
        phi = phi - a0 * (m >= 0).to(DT) * g
    g_meta = _lin_grad(phi, x_all, y_all)
    m_new = m + gamma * a0 * g_meta * g_in
    theta_new = theta - a0 * (m_new >= 0).to(DT) * g_meta
    assert ((m_new >= 0) != (m >= 0)).any(), "test data should flip at least one mask"

    p = theta.clone().requires_grad_(True)
    opt = MaskedSGD([p], lr=a0, mask_lr=gamma, mask_init="constant")
    _set_meta(opt, [m])
    _library_step(opt, p, xs, ys, x_all, y_all)
    _close(opt.meta_parameters()[0], m_new)
    _close(p, theta_new)
    assert opt.meta_parameters()[0].grad is None


@pytest.mark.parametrize("straight_through", [False, True])
def test_full_la_maml_step_by_hand(straight_through):
    """La-MAML Eq. 7 (first order) then Eq. 8 with the new, clipped rates."""
    xs, ys, x_all, y_all, theta = _algorithm_data(1)
    eta = 2.0
    alpha = torch.tensor([0.05, 0.01, -0.1, 0.0, 0.2], dtype=DT)
    phi, g_traj = theta.clone(), torch.zeros(5, dtype=DT)
    for x, y in zip(xs, ys):
        g = _lin_grad(phi, x, y)
        g_traj = g_traj + g
        phi = phi - alpha.clamp_min(0) * g
    g_meta = _lin_grad(phi, x_all, y_all)
    g_alpha = g_meta * (-g_traj)
    if not straight_through:
        g_alpha = g_alpha * (alpha > 0).to(DT)
    alpha_new = alpha - eta * g_alpha
    theta_new = theta - alpha_new.clamp_min(0) * g_meta

    p = theta.clone().requires_grad_(True)
    opt = LookaheadLRSGD([p], lr=0.1, rate_lr=eta, straight_through=straight_through)
    _set_meta(opt, [alpha])
    with opt.episode():
        for x, y in zip(xs, ys):
            opt.zero_grad()
            _lin_loss(p, x, y).backward()
            opt.step()
        opt.zero_grad()
        _lin_loss(p, x_all, y_all).backward()
        opt.meta_backward()
    opt.meta_step()  # La-MAML default: update_params=True
    _close(opt.meta_parameters()[0], alpha_new)
    _close(p, theta_new)
    if not straight_through:  # dead rates stay dead under the official derivative
        assert opt.meta_parameters()[0][2].item() == -0.1 and opt.meta_parameters()[0][3].item() == 0.0


# ------------------------------------------------------------------------------- online
def test_online_masked_first_steps_by_hand():
    """Hypergradient of L(theta_t) w.r.t. m through theta_t = theta_{t-1} - lr*1[m>=0]*d_{t-1}
    (straight-through): dL/dm = -lr * g_t * d_{t-1}; m <- m - mask_lr * dL/dm, then the step
    uses the new mask."""
    lr, mlr = 0.5, 2.0
    theta0 = torch.tensor([1.0, 2.0, 3.0, 4.0], dtype=DT)
    m0 = torch.tensor([0.1, -0.1, 0.2, -0.2], dtype=DT)
    g1 = torch.tensor([1.0, 1.0, -1.0, 0.5], dtype=DT)
    g2 = torch.tensor([-0.2, 0.3, 0.5, 0.1], dtype=DT)
    g3 = torch.tensor([0.4, -0.5, 0.1, 1.0], dtype=DT)
    p = theta0.clone().requires_grad_(True)
    opt = MaskedSGD([p], lr=lr, mask_lr=mlr, mask_init="constant", online=True)
    _set_meta(opt, [m0])
    m = opt.meta_parameters()[0]

    p.grad = g1.clone()
    opt.step()  # no trace yet: mask unchanged
    theta1 = theta0 - lr * (m0 >= 0).to(DT) * g1
    _close(m, m0)
    _close(p, theta1)

    p.grad = g2.clone()
    opt.step()
    m1 = m0 + mlr * lr * g2 * g1  # [-0.1, 0.2, -0.3, -0.15]
    theta2 = theta1 - lr * (m1 >= 0).to(DT) * g2
    _close(m, m1)
    _close(p, theta2)
    assert ((m1 >= 0) != (m0 >= 0)).any()

    p.grad = g3.clone()
    opt.step()  # online_decay=0: only the previous direction
    m2 = m1 + mlr * lr * g3 * g2
    _close(m, m2)
    _close(p, theta2 - lr * (m2 >= 0).to(DT) * g3)
    assert m.grad is None


def test_online_decay_and_momentum_trace():
    lr, mlr, mom, decay = 0.1, 1.0, 0.5, 0.5
    gs = [torch.tensor(v, dtype=DT) for v in ([1.0, -1.0], [0.5, 2.0], [-1.0, 1.0], [2.0, 0.5])]
    p = torch.zeros(2, dtype=DT, requires_grad=True)
    opt = MaskedSGD([p], lr=lr, mask_lr=mlr, mask_init="constant", mask_init_value=0.037,
                    momentum=mom, online=True, online_decay=decay)
    m, theta, trace, buf = torch.full((2,), 0.037, dtype=DT), torch.zeros(2, dtype=DT), None, None
    for g in gs:
        if trace is not None:
            m = m + mlr * lr * g * trace
        buf = g.clone() if buf is None else mom * buf + g
        theta = theta - lr * (m >= 0).to(DT) * buf
        trace = buf.clone() if trace is None else decay * trace + buf
        p.grad = g.clone()
        opt.step()
        assert m.abs().min() > 1e-3  # no ties at the gate's threshold
        _close(opt.meta_parameters()[0], m)
        _close(p, theta)


@pytest.mark.parametrize("case", cases(elementwise=True, online=False, where=lambda i: i.supports_online and not i.lr_scaled,
                                       descs=["default", "true-relu"]))
def test_online_rates_by_hand(case):
    info, st = case.info, case.straight_through
    rlr = 0.5
    theta0 = torch.tensor([1.0, 2.0, 3.0], dtype=DT)
    r0 = torch.tensor([0.1, 0.0, -0.05 if info.gate == "linear" else 0.05], dtype=DT)
    g1 = torch.tensor([1.0, 1.0, -1.0], dtype=DT)
    g2 = torch.tensor([-0.4, 0.3, -0.2], dtype=DT)
    p = theta0.clone().requires_grad_(True)
    opt = case.make([p], lr=0.1, meta_lr=rlr, online=True)
    _set_meta(opt, [r0])
    p.grad = g1.clone()
    opt.step()
    theta1 = theta0 - step_size(info.gate, r0, 0.1) * g1
    _close(p, theta1)
    p.grad = g2.clone()
    opt.step()
    hyper = g2 * g1 * gate_derivative(info.gate, r0, st)
    if info.gate == "relu":
        torch.testing.assert_close(hyper, g2 * g1 if st else g2 * g1 * (r0 > 0).to(DT))
    r1 = r0 + rlr * hyper
    _close(opt.meta_parameters()[0], r1)
    _close(p, theta1 - step_size(info.gate, r1, 0.1) * g2)


@pytest.mark.parametrize("info", infos(elementwise=True, online=True))
def test_online_maximize_ascends_the_objective(info):
    lr, mlr = 0.5, 1.0
    p = torch.zeros(2, dtype=DT, requires_grad=True)
    opt = info.make([p], lr=lr, meta_lr=mlr, open_gates=True, maximize=True, online=True)
    m0 = opt.meta_parameters()[0].detach().clone()  # mask logits 0 / rates lr
    g1, g2 = torch.tensor([1.0, 2.0], dtype=DT), torch.tensor([0.5, -1.0], dtype=DT)
    p.grad = g1.clone()
    opt.step()
    p.grad = g2.clone()
    opt.step()
    # theta_1 = theta_0 + scale * gate * g1 (d1 = -g1); dL/dm = scale * g2 * g1 * gate'; ascent: m += mlr * dL/dm
    scale = lr if info.lr_scaled else 1.0
    _close(opt.meta_parameters()[0], m0 + mlr * scale * g2 * g1 * gate_derivative(info.gate, m0, info.straight_through))
    if info.gate == "step":
        _close(opt.meta_parameters()[0], mlr * lr * g2 * g1)


@pytest.mark.parametrize("info", infos(elementwise=True, online=True))
def test_online_masks_change_in_plain_training_and_episode_raises(info):
    torch.manual_seed(0)
    model = torch.nn.Linear(4, 1)
    opt = info.make(model.parameters(), lr=0.1, meta_lr=0.5, online=True)
    before = [m.detach().clone() for m in opt.meta_parameters()]
    x, y = torch.randn(32, 4), torch.randn(32, 1)
    for _ in range(5):
        opt.zero_grad()
        ((model(x) - y) ** 2).mean().backward()
        opt.step()
    assert any(not torch.equal(a, b.detach()) for a, b in zip(before, opt.meta_parameters()))
    with pytest.raises(RuntimeError, match="online"):
        with opt.episode():
            pass
    offline = info.make([torch.zeros(2, requires_grad=True)])
    offline.add_param_group({"params": [torch.zeros(2, requires_grad=True)], "online": True})
    with pytest.raises(RuntimeError, match="online"):
        with offline.episode():
            pass
