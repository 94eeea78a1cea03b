"""Continual-learning learners (sparse_optim.continual.learners) and smoke runs of the
examples examples/continual_mnist.py and examples/sparse_cmaml.py."""
import importlib.util
import json
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call

import sparse_optim as so
from sparse_optim.continual import ReservoirBuffer
from sparse_optim.continual.learners import LaMAMLLearner, ReplayLearner

ROOT = Path(__file__).resolve().parents[1]


def _load(name):
    spec = importlib.util.spec_from_file_location(f"_example_{name}", ROOT / "examples" / f"{name}.py")
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod
    spec.loader.exec_module(mod)
    return mod


def _net(seed=0):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(6, 5), nn.ReLU(), nn.Linear(5, 3)).double()


def _data(n=4, seed=1):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, 6, generator=g, dtype=torch.float64), torch.randint(0, 3, (n,), generator=g)


def _reference_lamaml(model, alpha, x, y, mx, my, eta, meta_loss="all", rectify=True):
    """La-MAML's official first-order glance written with fast weights (inner grads detached)."""
    names = [n for n, _ in model.named_parameters()]
    theta = {n: p.detach().clone().requires_grad_(True) for n, p in model.named_parameters()}
    alphas = {n: a.detach().clone().requires_grad_(True) for n, a in zip(names, alpha)}
    fast, losses = dict(theta), []
    for i in range(x.shape[0]):
        loss = F.cross_entropy(functional_call(model, fast, (x[i:i + 1],)), y[i:i + 1])
        grads = torch.autograd.grad(loss, list(fast.values()))
        gate = (lambda a: F.relu(a)) if rectify else (lambda a: a)
        fast = {n: fast[n] - g.detach() * gate(alphas[n]) for n, g in zip(names, grads)}
        if meta_loss == "all" or i == x.shape[0] - 1:
            losses.append(F.cross_entropy(functional_call(model, fast, (mx,)), my))
    meta = sum(losses) / len(losses)
    meta.backward()
    new_alpha = {n: alphas[n].detach() - eta * alphas[n].grad for n in names}
    new_theta = {n: theta[n].detach() - theta[n].grad * F.relu(new_alpha[n]) for n in names}
    return new_theta, new_alpha


# ------------------------------------------------------------------------- learners
@pytest.mark.parametrize("meta_loss", ["all", "last"])
def test_lamaml_glance_matches_official_first_order_update(meta_loss):
    model = _net()
    opt = so.LookaheadLRSGD(model.named_parameters(), lr=0.2, rate_lr=0.3)
    with torch.no_grad():   # non-uniform rates, a few of them dead
        for t in opt.meta_parameters():
            t.uniform_(-0.05, 0.3)
    alpha = [t.detach().clone() for t in opt.meta_parameters()]
    x, y = _data()
    ref_theta, ref_alpha = _reference_lamaml(model, alpha, x, y, x, y, 0.3, meta_loss)
    learner = LaMAMLLearner(model, opt, None, glances=1, meta_loss=meta_loss, clip_grad_norm=None, shuffle=False)
    learner.observe(x, y, 0)
    for (n, p), a in zip(model.named_parameters(), opt.meta_parameters()):
        torch.testing.assert_close(a.detach(), ref_alpha[n])
        torch.testing.assert_close(p.detach(), ref_theta[n])
        assert p.grad is None and a.grad is None


def test_cmaml_outer_sgd_keeps_rates_and_uses_beta():
    model = _net()
    opt = so.LookaheadLRSGD(model.named_parameters(), lr=0.1, rate_lr=0.0)
    outer = torch.optim.SGD(model.parameters(), lr=0.05)
    x, y = _data()
    theta0 = [p.detach().clone() for p in model.parameters()]
    # theta-gradient of the first-order glance = mean meta-gradient at the fast weights
    ref_model = _net()
    alpha = [t.detach().clone() for t in opt.meta_parameters()]
    ref_theta, _ = _reference_lamaml(ref_model, alpha, x, y, x, y, eta=0.0)
    # with eta = 0 the reference theta is theta - alpha * g; C-MAML uses beta instead of alpha
    learner = LaMAMLLearner(model, opt, None, outer_optimizer=outer, glances=1, clip_grad_norm=None, shuffle=False)
    learner.observe(x, y)
    for (n, p), p0, a in zip(model.named_parameters(), theta0, opt.meta_parameters()):
        torch.testing.assert_close(a.detach(), torch.full_like(a, 0.1))
        g = (p0 - ref_theta[n]) / 0.1
        torch.testing.assert_close(p.detach(), p0 - 0.05 * g)


def test_sparse_lamaml_masks_theta_update_with_new_mask():
    model = _net()
    opt = so.MaskedSGD(model.named_parameters(), lr=0.1, mask_lr=0.5, mask_init="constant", mask_init_value=1e-4)
    x, y = _data()
    theta0 = [p.detach().clone() for p in model.parameters()]
    LaMAMLLearner(model, opt, None, glances=1, clip_grad_norm=None, shuffle=False).observe(x, y)
    frozen_any = False
    for p, p0, m in zip(model.parameters(), theta0, opt.meta_parameters()):
        frozen = m.detach() < 0
        frozen_any |= bool(frozen.any())
        assert torch.equal(p.detach()[frozen], p0[frozen])          # 1[m_new >= 0] gates theta
        assert not torch.equal(p.detach()[~frozen], p0[~frozen])
    assert frozen_any


def test_lamaml_replay_and_buffer_protocol():
    model = _net()
    opt = so.LookaheadLRSGD(model.named_parameters(), lr=0.1, rate_lr=0.1)
    sizes = []

    def loss_fn(logits, y):
        sizes.append(len(y))
        return F.cross_entropy(logits, y)

    buf = ReservoirBuffer(50, seed=0)
    learner = LaMAMLLearner(model, opt, buf, glances=2, replay_batch_size=3, loss_fn=loss_fn)
    x, y = _data(4)
    learner.observe(x, y, 0)
    # glance 1: empty buffer -> meta-batch = incoming (4); the batch enters the buffer after glance 1
    assert sizes[:8] == [1, 4, 1, 4, 1, 4, 1, 4]
    assert sizes[8:] == [1, 7] * 4
    assert len(buf) == 4 and buf.tensors[2].tolist() == [0] * 4
    with pytest.raises(ValueError):
        learner.observe(x, y[:3])
    with pytest.raises(TypeError):
        LaMAMLLearner(model, torch.optim.SGD(model.parameters(), lr=0.1))


def test_replay_learner_online_is_clipped_sgd_and_er_replays():
    model, ref = _net(), _net()
    x, y = _data(5)
    ReplayLearner(model, torch.optim.SGD(model.parameters(), lr=0.1), None, glances=2, clip_grad_norm=None).observe(x, y)
    ropt = torch.optim.SGD(ref.parameters(), lr=0.1)
    for _ in range(2):
        ropt.zero_grad()
        F.cross_entropy(ref(x), y).backward()
        ropt.step()
    for p, q in zip(model.parameters(), ref.parameters()):
        torch.testing.assert_close(p, q)
    sizes = []
    buf = ReservoirBuffer(3, seed=0)
    er = ReplayLearner(model, torch.optim.SGD(model.parameters(), lr=0.1), buf, replay_batch_size=2, glances=1,
                       loss_fn=lambda lg, t: sizes.append(len(t)) or F.cross_entropy(lg, t))
    er.observe(x, y, 1)
    er.observe(x, y, 2)
    assert sizes == [5, 7] and len(buf) == 3 and buf.num_seen == 10


# ------------------------------------------------------------------------- example smoke runs
def test_continual_mnist_smoke_all_methods(tmp_path):
    mod = _load("continual_mnist")
    # 2 tasks x 60 samples (6 incoming batches per task), the papers' hyperparameters
    res = mod.main(["--benchmark", "rotations", "--tasks", "2", "--samples-per-task", "60", "--test-per-task", "200",
                    "--seeds", "0", "--out", str(tmp_path), "--no-progress", "--methods", *mod.METHODS])
    data = json.loads((tmp_path / "continual_rotations.json").read_text())
    assert set(data) >= {"config", "summary", "runs", "paper"}
    assert set(data["runs"]) == set(mod.METHODS)
    for method, runs in data["runs"].items():
        r = runs[0]
        assert set(r) >= {"R", "RA", "BTI", "train_time_s", "task_times_s", "sparsity_per_task", "hparams"}
        assert len(r["R"]) == 2 and all(len(row) == 2 for row in r["R"])
        assert len(r["task_times_s"]) == 2
        assert r["R"][0][0] > 0.2, f"{method} did not learn the first task: {r['R'][0][0]}"  # chance = 0.1
        learns_gates = method in ("lamaml", "sparse_lamaml", "rectified", "sync", "laer")
        assert (r["sparsity_per_task"] is not None) == learns_gates
        if learns_gates:
            sp = r["sparsity_per_task"][-1]["per_parameter"]
            assert set(sp) == {f"layers.{i}.{k}" for i in range(3) for k in ("weight", "bias")}
    for name in ("sparsity_rotations.png", "ra_rotations.png"):
        assert (tmp_path / name).stat().st_size > 1000
    assert res["summary"]["er"]["RA_mean"] == data["summary"]["er"]["RA_mean"]


def test_cmaml_examples_use_plain_sgd():
    learner, opt = _load("continual_mnist").make_learner("cmaml", dict(alpha=0.03, beta=0.1, glances=1),
                                                         _net(), 10, 0)
    assert opt is None and type(learner.optimizer) is torch.optim.SGD
    assert learner.optimizer.param_groups[0]["lr"] == 0.03 and learner.outer_optimizer.param_groups[0]["lr"] == 0.1
    cm = _load("sparse_cmaml").ContinualMAML(_net(), "cmaml", alpha=0.3)
    assert type(cm.opt) is torch.optim.SGD and cm.sparsity() is None


def test_continual_mnist_many_permutations_structure(tmp_path):
    mod = _load("continual_mnist")
    mod.main(["--benchmark", "many", "--tasks", "3", "--samples-per-task", "20", "--test-per-task", "100",
              "--methods", "online", "sparse_lamaml", "--set", "sparse_lamaml.glances=1", "--seeds", "0", "1",
              "--out", str(tmp_path), "--tag", "t", "--no-progress"])
    data = json.loads((tmp_path / "continual_many_t.json").read_text())
    assert data["config"]["memories"] == 500 and data["config"]["tasks"] == 3
    assert [r["seed"] for r in data["runs"]["online"]] == [0, 1]
    assert len(data["runs"]["sparse_lamaml"][0]["sparsity_per_task"]) == 3
    assert data["summary"]["online"]["RA_std"] >= 0
    assert (tmp_path / "ra_many_t.png").exists() and (tmp_path / "sparsity_many_t.png").exists()


def test_sparse_cmaml_smoke(tmp_path):
    mod = _load("sparse_cmaml")
    res = mod.main(["--p", "0.9", "--seeds", "0", "--steps", "120", "--methods", *mod.METHODS,
                    "--sparsity-every", "40", "--out", str(tmp_path), "--no-progress"])
    data = json.loads((tmp_path / "sparse_cmaml_offline_p0.9.json").read_text())
    summ = data["results"]["0.9"]["summary"]
    assert set(summ) == set(mod.METHODS)
    for m, s in summ.items():
        assert s["cumulative_accuracy_mean"] > 0.15, m          # chance = 0.1
        assert set(s["per_source_mean"]) == set(mod.SOURCES)
    run = data["results"]["0.9"]["runs"]["sparse_cmaml"][0]
    assert len(run["sparsity_trace"]) == 3 and 0 < run["final_sparsity"]["overall"] < 1
    assert data["results"]["0.9"]["runs"]["cmaml"][0]["final_sparsity"] is None     # plain SGD: no gates
    assert (tmp_path / "sparse_cmaml_offline_p0.9.png").stat().st_size > 1000
    assert res["files"][0].endswith("sparse_cmaml_offline_p0.9.json")


def test_continual_mnist_multi_pass_width_and_gem_file(tmp_path):
    """--epochs E passes over every task (sparsity per epoch), --hidden sets the width, and a
    GEM-format file is the stream itself."""
    from sparse_optim.continual import mnist_rotations, save_gem_file
    from sparse_optim.data.mnist import load_mnist_offline

    mod = _load("continual_mnist")
    mod.main(["--tasks", "2", "--samples-per-task", "20", "--test-per-task", "50", "--methods", "sparse_lamaml", "er",
              "--set", "sparse_lamaml.glances=1", "er.glances=1", "--epochs", "3", "--hidden", "16", "--seeds", "0",
              "--out", str(tmp_path), "--tag", "mp", "--no-progress"])
    data = json.loads((tmp_path / "continual_rotations_mp.json").read_text())
    assert data["config"]["epochs"] == 3 and data["config"]["hidden"] == 16
    per_epoch = data["runs"]["sparse_lamaml"][0]["sparsity_per_epoch"]
    assert [(e["task"], e["epoch"]) for e in per_epoch] == [(t, e) for t in range(2) for e in range(3)]
    assert data["runs"]["er"][0]["sparsity_per_epoch"] is None
    assert (tmp_path / "sparsity_epochs_rotations_mp.png").stat().st_size > 1000
    shapes = mod.make_model(16).layers[0].weight.shape
    assert tuple(shapes) == (16, 784)

    tasks = mnist_rotations(*load_mnist_offline(test_fraction=0.2, seed=0), num_tasks=2, samples_per_task=30,
                            test_per_task=40, seed=5)
    path = tmp_path / "mnist_rotations.pt"
    save_gem_file(tasks, path)
    mod.main(["--gem-file", str(path), "--methods", "cmaml", "--set", "cmaml.glances=1", "--seeds", "0",
              "--out", str(tmp_path), "--tag", "gem", "--no-progress"])
    data = json.loads((tmp_path / "continual_rotations_gem.json").read_text())
    assert data["config"]["tasks"] == 2 and data["config"]["samples_per_task"] == 30
    assert data["config"]["test_per_task"] == 40 and "GEM-format" in data["config"]["data"]
