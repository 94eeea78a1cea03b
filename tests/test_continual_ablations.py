"""La-MAML's ablations and task-aware learning against the algorithms' definitions.

Each learner is compared with a hand-written glance: a two-layer MLP written out as matrix
products, fast weights ``phi_{j+1} = phi_j - relu(alpha) * g_j`` (La-MAML Eq. 7; ``g_j`` detached
for first order, kept in the graph for second order), the meta-loss averaged over the inner steps
or taken at the last one, both gradients clipped to norm ``c``, then

* La-MAML (Eq. 8, asynchronous): ``alpha -= eta g_alpha``, ``theta -= relu(alpha_new) g_theta``;
* Sync-La-MAML (Sec. 5.3): ``alpha -= eta g_alpha``, ``theta -= beta g_theta`` (scalar rate);
* La-ER (Sec. 5.3, the official ``eralg4 --learn_lr``): ``alpha -= eta g_alpha``,
  ``theta -= relu(alpha_new) g_ER`` with ``g_ER = grad L(theta, b_m)`` clipped.
"""
import pytest
import torch
import torch.nn.functional as F
from torch import nn

import sparse_optim as so
from sparse_optim.continual import LaERLearner, LaMAMLLearner, MultiHeadLoss, ReplayLearner, ReservoirBuffer

ALPHA0, ETA, BETA, CLIP = 0.15, 0.3, 0.1, 0.5


def _net(seed=0, out=3):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(6, 8), nn.ReLU(), nn.Linear(8, out)).double()


def _forward(w, x):
    return F.relu(x @ w[0].T + w[1]) @ w[2].T + w[3]


def _batches(n=3, batch=6, classes=3, seed=1):
    g = torch.Generator().manual_seed(seed)
    return [(torch.randn(batch, 6, generator=g, dtype=torch.float64), torch.randint(0, classes, (batch,), generator=g))
            for _ in range(n)]


def _clipped(grads, c):
    norm = torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g) for g in grads]))
    coef = torch.clamp(c / (norm + 1e-6), max=1.0)
    return [g * coef for g in grads]


def _hand_glance(theta, rates, x, y, chunk, meta_loss, second_order, clamp=None):
    """(g_theta, g_alpha) of one glance; the meta-batch is the incoming batch (no replay)."""
    W = [t.clone().requires_grad_(True) for t in theta]
    A = [a.clone().requires_grad_(True) for a in rates]
    chunks = list(zip(x.split(chunk), y.split(chunk)))
    k = len(chunks)
    fast, total = W, 0.0
    for i, (xi, yi) in enumerate(chunks):
        g = torch.autograd.grad(F.cross_entropy(_forward(fast, xi), yi), fast, create_graph=second_order)
        if not second_order:
            g = [gi.detach() for gi in g]
        if clamp is not None:   # the official CIFAR code's element-wise clamp of the inner gradients
            g = [gi.clamp(-clamp, clamp) for gi in g]
        fast = [w - F.relu(a) * gi for w, a, gi in zip(fast, A, g)]
        if meta_loss == "all":
            total = total + F.cross_entropy(_forward(fast, x), y) / k
        elif i == k - 1:
            total = F.cross_entropy(_forward(fast, x), y)
    grads = torch.autograd.grad(total, W + A)
    return [g.detach() for g in grads[:4]], [g.detach() for g in grads[4:]]


def _hand_run(method, batches, glances, chunk, meta_loss, second_order=False, clamp=None):
    model = _net()
    theta = [p.detach().clone() for p in model.parameters()]
    rates = [torch.full_like(t, ALPHA0) for t in theta]
    for x, y in batches:
        for _ in range(glances):
            g_theta, g_alpha = _hand_glance(theta, rates, x, y, chunk, meta_loss, second_order, clamp)
            g_theta, g_alpha = _clipped(g_theta, CLIP), _clipped(g_alpha, CLIP)
            rates = [a - ETA * g for a, g in zip(rates, g_alpha)]
            if method == "lamaml":
                theta = [t - F.relu(a) * g for t, a, g in zip(theta, rates, g_theta)]
            elif method == "sync":
                theta = [t - BETA * g for t, g in zip(theta, g_theta)]
            else:  # laer
                W = [t.clone().requires_grad_(True) for t in theta]
                g_er = _clipped(list(torch.autograd.grad(F.cross_entropy(_forward(W, x), y), W)), CLIP)
                theta = [t - F.relu(a) * g for t, a, g in zip(theta, rates, g_er)]
    return theta, rates


def _library_run(method, batches, glances, chunk, meta_loss, backend=None, **kw):
    model = _net()
    opt = so.LookaheadLRSGD(model.named_parameters(), lr=ALPHA0, rate_lr=ETA, backend=backend)
    common = dict(glances=glances, inner_batch_size=chunk, clip_grad_norm=CLIP, shuffle=False, **kw)
    if method == "laer":
        learner = LaERLearner(model, opt, None, meta_loss=meta_loss, **common)
    else:
        outer = torch.optim.SGD(model.parameters(), lr=BETA) if method == "sync" else None
        learner = LaMAMLLearner(model, opt, None, outer_optimizer=outer, meta_loss=meta_loss, **common)
    for t, (x, y) in enumerate(batches):
        learner.observe(x, y, t)
    return [p.detach() for p in model.parameters()], [m.detach() for m in opt.meta_parameters()], learner


@pytest.mark.parametrize("fast", [None, False], ids=["fast", "episode"])
@pytest.mark.parametrize("clamp", [None, 0.05], ids=["no-clamp", "clamp"])
@pytest.mark.parametrize("backend", ["reference", None], ids=["reference", "native"])
@pytest.mark.parametrize("meta_loss", ["all", "last"])
@pytest.mark.parametrize("method", ["lamaml", "sync", "laer"])
def test_first_order_learners_follow_their_definitions(method, meta_loss, backend, clamp, fast):
    batches = _batches()
    theta, rates = _hand_run(method, batches, glances=2, chunk=2, meta_loss=meta_loss, clamp=clamp)
    got_theta, got_rates, learner = _library_run(method, batches, glances=2, chunk=2, meta_loss=meta_loss,
                                                 backend=backend, inner_grad_clamp=clamp, fast=fast)
    assert learner.fast is (fast is None)
    for a, b in zip(got_theta + got_rates, theta + rates):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)
    if clamp is not None:   # the clamp is active on this data
        free, _ = _hand_run(method, batches, glances=2, chunk=2, meta_loss=meta_loss)
        assert any(not torch.allclose(a, b) for a, b in zip(theta, free))


@pytest.mark.parametrize("clamp", [None, 0.05], ids=["no-clamp", "clamp"])
@pytest.mark.parametrize("meta_loss", ["all", "last"])
@pytest.mark.parametrize("method", ["lamaml", "sync"])
def test_second_order_learner_differentiates_through_the_inner_updates(method, meta_loss, clamp):
    batches = _batches()
    theta, rates = _hand_run(method, batches, glances=2, chunk=2, meta_loss=meta_loss, second_order=True, clamp=clamp)
    got_theta, got_rates, learner = _library_run(method, batches, glances=2, chunk=2, meta_loss=meta_loss,
                                                 second_order=True, inner_grad_clamp=clamp)
    assert not learner.fast
    for a, b in zip(got_theta + got_rates, theta + rates):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)
    first_theta, _ = _hand_run(method, batches, glances=2, chunk=2, meta_loss=meta_loss, clamp=clamp)
    assert any(not torch.allclose(a, b) for a, b in zip(got_theta, first_theta))  # second order is not first order


def test_second_order_and_la_er_refuse_what_they_cannot_do():
    model = _net()
    with pytest.raises(ValueError, match="second_order=True needs a gated"):
        LaMAMLLearner(model, torch.optim.SGD(model.parameters(), lr=0.1),
                      outer_optimizer=torch.optim.SGD(model.parameters(), lr=0.1), second_order=True)
    with pytest.raises(ValueError, match="momentum"):
        LaMAMLLearner(model, so.LookaheadLRSGD(model.named_parameters(), momentum=0.9), second_order=True)
    with pytest.raises(TypeError, match="outer_optimizer"):
        LaERLearner(model, so.LookaheadLRSGD(model.named_parameters()),
                    outer_optimizer=torch.optim.SGD(model.parameters(), lr=0.1))
    with pytest.raises(TypeError, match="learned rates"):
        LaERLearner(model, torch.optim.SGD(model.parameters(), lr=0.1))


# ----------------------------------------------------------------------------- task-aware heads
def test_multi_head_loss_scores_each_sample_with_its_own_head():
    loss = MultiHeadLoss(classes_per_task=2)
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(5, 6, generator=g, dtype=torch.float64, requires_grad=True)
    t = torch.tensor([0, 2, 1, 2, 0])
    y = torch.tensor([1, 4, 2, 5, 0])
    expected = torch.stack([F.cross_entropy(logits[i, 2 * t[i]:2 * t[i] + 2][None], (y[i] - 2 * t[i])[None])
                            for i in range(5)]).mean()
    torch.testing.assert_close(loss(logits, y, t), expected)
    (grad,) = torch.autograd.grad(loss(logits, y, t), logits)
    for i in range(5):   # no gradient reaches other tasks' heads
        outside = [c for c in range(6) if c // 2 != t[i]]
        assert torch.all(grad[i, outside] == 0)
    pred = loss.predict(logits.detach(), t)
    assert all(pred[i] // 2 == t[i] for i in range(5))
    with pytest.raises(ValueError, match="belong to their task's head"):
        loss(logits, torch.tensor([1, 4, 2, 5, 3]), t)
    with pytest.raises(ValueError, match=r"task_ids must lie in \[0, 3\)"):
        loss(logits, y, torch.tensor([0, 2, 1, 3, 0]))
    with pytest.raises(ValueError, match="T \\* 4"):
        MultiHeadLoss(4)(logits, y, t)


def _task_aware_stream():
    g = torch.Generator().manual_seed(3)
    out = []
    for task in range(3):
        for _ in range(2):
            out.append((torch.randn(6, 6, generator=g, dtype=torch.float64),
                        task * 2 + torch.randint(0, 2, (6,), generator=g), task))
    return out


@pytest.mark.parametrize("backend", ["reference", None], ids=["reference", "native"])
def test_task_aware_la_maml_fast_and_episode_paths_agree(backend):
    def run(fast):
        model = _net(out=6)
        opt = so.LookaheadLRSGD(model.named_parameters(), lr=0.1, rate_lr=0.2, backend=backend)
        learner = LaMAMLLearner(model, opt, ReservoirBuffer(10, seed=0), loss_fn=MultiHeadLoss(2), glances=2,
                                inner_batch_size=2, fast=fast, generator=torch.Generator().manual_seed(1))
        for x, y, t in _task_aware_stream():
            learner.observe(x, y, t)
        return [p.detach() for p in list(model.parameters()) + opt.meta_parameters()], learner
    fast, learner = run(True)
    episode, _ = run(False)
    for a, b in zip(fast, episode):
        assert torch.equal(a, b)
    assert set(learner.buffer.sample(10)[2].tolist()) <= {0, 1, 2}


def test_task_aware_replay_scores_replayed_items_with_their_heads():
    """ER with one replayed item from task 0 while on task 1: its loss is its own head's."""
    model = _net(out=4)
    seen = []

    class Recording(MultiHeadLoss):
        def __call__(self, logits, y, t):
            seen.append(t.clone())
            return super().__call__(logits, y, t)

    learner = ReplayLearner(model, torch.optim.SGD(model.parameters(), lr=0.1), ReservoirBuffer(4, seed=0),
                            replay_batch_size=2, loss_fn=Recording(2))
    x = torch.randn(2, 6, dtype=torch.float64)
    learner.observe(x, torch.tensor([0, 1]), 0)
    learner.observe(x, torch.tensor([2, 3]), 1)
    assert seen[-1].tolist() == [0, 0, 1, 1]
    with pytest.raises(ValueError, match="task_id is required"):
        learner.observe(x, torch.tensor([2, 3]))
