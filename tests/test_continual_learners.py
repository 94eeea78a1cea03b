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
