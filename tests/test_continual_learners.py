"""LaMAMLLearner with a plain torch.optim inner optimizer (C-MAML): the same updates as the
former meta-optimizer configuration ``LookaheadLRSGD(lr=alpha, rate_lr=0)`` (constant rates
alpha > 0, relu(alpha) = alpha, i.e. plain SGD), and argument checks."""
import pytest
import torch
from torch import nn

import sparse_optim as so
from sparse_optim.continual import ReservoirBuffer
from sparse_optim.continual.learners import LaMAMLLearner


def _net(seed=0):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(6, 8), nn.ReLU(), nn.Linear(8, 3)).double()


def _stream(n_batches=4, batch=5, seed=1):
    g = torch.Generator().manual_seed(seed)
    return [(torch.randn(batch, 6, generator=g, dtype=torch.float64), torch.randint(0, 3, (batch,), generator=g))
            for _ in range(n_batches)]


def _cmaml(plain: bool, alpha=0.1, beta=0.05, **kw):
    model = _net()
    if plain:
        opt = torch.optim.SGD(model.parameters(), lr=alpha)
    else:   # the former configuration: rates alpha that never move
        opt = so.LookaheadLRSGD(model.named_parameters(), lr=alpha, rate_lr=0.0)
    outer = torch.optim.SGD(model.parameters(), lr=beta)
    learner = LaMAMLLearner(model, opt, ReservoirBuffer(20, seed=0), outer_optimizer=outer,
                            generator=torch.Generator().manual_seed(7), **kw)
    return model, learner


@pytest.mark.parametrize("kw", [dict(glances=2, replay_batch_size=3),
                                dict(glances=1, meta_loss="last", inner_batch_size=2, clip_grad_norm=None)])
def test_cmaml_plain_sgd_matches_lookahead_with_frozen_rates(kw):
    old_model, old = _cmaml(plain=False, **kw)
    new_model, new = _cmaml(plain=True, **kw)
    theta0 = [p.detach().clone() for p in new_model.parameters()]
    for t, (x, y) in enumerate(_stream()):
        a = old.observe(x, y, t // 2)
        b = new.observe(x, y, t // 2)
        torch.testing.assert_close(b["meta_loss"], a["meta_loss"])
        for p, q in zip(new_model.parameters(), old_model.parameters()):
            torch.testing.assert_close(p.detach(), q.detach())
            assert p.grad is None
    assert len(new.buffer) == len(old.buffer) == 20
    assert any(not torch.equal(p.detach(), p0) for p, p0 in zip(new_model.parameters(), theta0))


def test_plain_inner_sgd_momentum_does_not_leak_across_glances():
    """first_order_episode stashes and restores the inner optimizer's momentum buffers."""
    model = _net()
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    learner = LaMAMLLearner(model, opt, None, outer_optimizer=torch.optim.SGD(model.parameters(), lr=0.05),
                            glances=2, shuffle=False)
    x, y = _stream(1)[0]
    learner.observe(x, y)
    assert all("momentum_buffer" not in opt.state[p] for p in model.parameters())


def test_plain_optimizer_needs_outer_optimizer():
    model = _net()
    with pytest.raises(TypeError, match="outer_optimizer"):
        LaMAMLLearner(model, torch.optim.SGD(model.parameters(), lr=0.1))
    with pytest.raises(TypeError, match="optimizer must be"):
        LaMAMLLearner(model, object(), outer_optimizer=torch.optim.SGD(model.parameters(), lr=0.1))


# ------------------------------------------------------------- the fast glance (continual/fast_glance.py)
def _method(name, model, backend):
    named = list(model.named_parameters())
    if name == "lamaml":
        return so.LookaheadLRSGD(named, lr=0.15, rate_lr=0.3, backend=backend), None
    if name == "sparse_lamaml":
        return so.MaskedSGD(named, lr=0.15, mask_lr=1.7, mask_init="constant", mask_init_value=0.15,
                            backend=backend), None
    if name == "rectified":
        return so.RectifiedLRSGD(named, lr=0.15, rate_lr=0.3, backend=backend), None
    if name == "sync":  # learned rates in the inner loop, outer SGD on theta
        return so.LookaheadLRSGD(named, lr=0.15, rate_lr=0.3, backend=backend), torch.optim.SGD(model.parameters(), lr=0.1)
    if name == "two_groups":
        return so.MetaSGD([{"params": [named[0][1], named[1][1]], "lr": 0.1},
                           {"params": [named[2][1], named[3][1]], "lr": 0.05}], rate_lr=0.2, backend=backend), None
    if name == "cmaml":
        return torch.optim.SGD(model.parameters(), lr=0.1), torch.optim.SGD(model.parameters(), lr=0.1)
    raise AssertionError(name)


def _run(name, fast, backend, kw, poison=None):
    model = _net()
    opt, outer = _method(name, model, backend)
    learner = LaMAMLLearner(model, opt, ReservoirBuffer(12, seed=0), outer_optimizer=outer,
                            generator=torch.Generator().manual_seed(7), fast=fast, **kw)
    assert learner.fast is fast
    losses = []
    for t, (x, y) in enumerate(_stream(n_batches=5)):
        if t == poison:
            x = x.clone(); x[0, 0] = float("nan")
        losses.append(learner.observe(x, y, t // 2)["meta_loss"])
    metas = opt.meta_parameters() if hasattr(opt, "meta_parameters") else []
    return [p.detach() for p in list(model.parameters()) + metas], losses, opt


@pytest.mark.parametrize("backend", ["reference", None], ids=["reference", "native"])
@pytest.mark.parametrize("kw", [dict(glances=3, replay_batch_size=4),
                                dict(glances=2, meta_loss="last", inner_batch_size=2, clip_grad_norm=None)],
                         ids=["all", "last"])
@pytest.mark.parametrize("name", ["lamaml", "sparse_lamaml", "rectified", "sync", "two_groups", "cmaml"])
def test_fast_glance_computes_what_the_episode_path_does(name, kw, backend):
    """Bit for bit the theta, meta-parameters and meta-losses of the per-step episode path."""
    episode, episode_losses, _ = _run(name, False, backend, kw)
    fast, fast_losses, _ = _run(name, True, backend, kw)
    assert fast_losses == episode_losses
    for a, b in zip(fast, episode):
        assert torch.equal(a, b)


def test_fast_glance_is_chosen_automatically_only_where_it_applies():
    model = _net()
    assert LaMAMLLearner(model, so.LookaheadLRSGD(model.named_parameters())).fast
    model = _net()
    plain = LaMAMLLearner(model, torch.optim.SGD(model.parameters(), lr=0.1),
                          outer_optimizer=torch.optim.SGD(model.parameters(), lr=0.1))
    assert plain.fast
    refused = [
        (lambda m: so.LookaheadLRSGD(m.named_parameters(), momentum=0.5), None, "momentum"),
        (lambda m: so.MaskedSGD(m.named_parameters(), weight_decay=0.1), None, "weight decay"),
        (lambda m: so.StochasticMaskedSGD(m.named_parameters()), None, "generates its gates"),
        (lambda m: so.KroneckerSGD(m.parameters()), None, "neither a gated"),
        (lambda m: torch.optim.SGD(m.parameters(), lr=0.1, momentum=0.9), "outer", "momentum"),
    ]
    for make, outer, message in refused:
        model = _net()
        opt = make(model)
        outer_opt = torch.optim.SGD(model.parameters(), lr=0.1) if outer else None
        assert not LaMAMLLearner(model, opt, outer_optimizer=outer_opt).fast
        with pytest.raises(ValueError, match=message):
            LaMAMLLearner(model, opt, outer_optimizer=outer_opt, fast=True)
    frozen = _net()
    frozen[0].bias.requires_grad_(False)
    with pytest.raises(ValueError, match="do not require gradients"):
        LaMAMLLearner(frozen, so.LookaheadLRSGD(frozen.named_parameters()), fast=True)


def test_fast_glance_skips_a_non_finite_meta_update_and_restores_theta():
    kw = dict(glances=1, replay_batch_size=0)
    with pytest.warns(RuntimeWarning, match="non-finite"):
        params, _, opt = _run("lamaml", True, None, kw, poison=2)
    assert opt.skipped_updates >= 1
    assert all(torch.isfinite(p).all() for p in params)


@pytest.mark.parametrize("model_kind", ["batchnorm", "partial"])
def test_fast_glance_matches_with_buffers_and_parameters_outside_the_optimizer(model_kind):
    """BatchNorm statistics move as on the episode path; parameters the optimizer does not own stay."""
    def run(fast):
        torch.manual_seed(0)
        model = nn.Sequential(nn.Linear(6, 8), nn.BatchNorm1d(8), nn.ReLU(), nn.Linear(8, 3)).double()
        named = list(model.named_parameters())
        opt = so.LookaheadLRSGD(named if model_kind == "batchnorm" else named[2:], lr=0.1, rate_lr=0.2)
        learner = LaMAMLLearner(model, opt, ReservoirBuffer(8, seed=0), glances=2, fast=fast, inner_batch_size=2,
                                generator=torch.Generator().manual_seed(3))
        for t, (x, y) in enumerate(_stream(n_batches=3, batch=6)):
            learner.observe(x, y, t)
        return [t.detach() for t in list(model.state_dict().values()) + opt.meta_parameters()]
    for a, b in zip(run(True), run(False)):
        assert torch.equal(a, b)


def test_fast_glance_follows_hyperparameters_changed_after_construction():
    """Momentum switched on later: the automatic learner falls back to the episode path (same
    numbers as a learner built that way); a learner with fast=True refuses."""
    def run(fast, late_momentum):
        model = _net()
        opt = so.LookaheadLRSGD(model.named_parameters(), lr=0.1, rate_lr=0.2)
        learner = LaMAMLLearner(model, opt, ReservoirBuffer(8, seed=0), glances=2, fast=fast,
                                generator=torch.Generator().manual_seed(3))
        if late_momentum:
            opt.param_groups[0]["momentum"] = 0.5
        for t, (x, y) in enumerate(_stream(n_batches=2)):
            learner.observe(x, y, t)
        return [p.detach() for p in list(model.parameters()) + opt.meta_parameters()]
    for a, b in zip(run(None, True), run(False, True)):
        assert torch.equal(a, b)
    with pytest.raises(ValueError, match="changed after the learner was built"):
        run(True, True)
