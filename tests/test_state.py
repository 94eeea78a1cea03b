"""Optimizer state: state_dict / load_state_dict of every optimizer of the registry (conftest.py):
meta-parameters (identity kept), momentum buffers, online traces, bit-identical continuation,
layout errors; and checkpoint / resume: saving model + optimizer + meta-optimizer (+ replay
buffer) mid-run and resuming gives bit-identical results to an uninterrupted run."""
import copy
import io

import pytest
import torch
import torch.nn.functional as F

import sparse_optim as so
from sparse_optim.continual import ReservoirBuffer

from conftest import BY_NAME, cases, gate_derivative, infos

# noise is drawn from the global generator in step(): two runs cannot share a trajectory
DETERMINISTIC = dict(stochastic=False)


def _model(seed):
    torch.manual_seed(seed)
    return torch.nn.Sequential(torch.nn.Linear(4, 5), torch.nn.Tanh(), torch.nn.Linear(5, 2))


def _data(seed, n=8):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, 4, generator=g), torch.randn(n, 2, generator=g)


def _loss(model, seed):
    x, y = _data(seed)
    return ((model(x) - y) ** 2).mean()


def _make(case, model, seed):
    torch.manual_seed(seed)  # a different seed gives different initial meta-parameters
    return case.make(model.parameters(), lr=0.1, meta_lr=0.1 if case.online else 0.3)


def _random_init(case) -> bool:
    """Whether two seeds give different initial meta-parameters."""
    return case.info.gate == "step" or case.kwargs.get("rate_init") == "uniform" \
        or case.kwargs.get("variant") == "cholesky"


def _train_steps(model, opt, seeds):
    for s in seeds:
        opt.zero_grad()
        _loss(model, s).backward()
        opt.step()


def _episodes(model, opt, seeds):
    for s in seeds:
        opt.zero_grad()
        with opt.episode():
            for k in range(2):
                opt.zero_grad()
                _loss(model, 100 * s + k).backward()
                opt.step()
            opt.zero_grad()
            _loss(model, 100 * s + 50).backward()
            opt.meta_backward()
        opt.meta_step()


def _snapshot(model, opt):
    return (
        [p.detach().clone() for p in model.parameters()],
        [m.detach().clone() for m in opt.meta_parameters()],
        {i: {k: v.clone() for k, v in opt.state[p].items() if torch.is_tensor(v)}
         for i, p in enumerate(model.parameters()) if p in opt.state},
        [{k: v for k, v in g.items() if k != "params"} for g in opt.param_groups],
    )


def _assert_same(a, b):
    pa, ma, sa, ga = a
    pb, mb, sb, gb = b
    assert all(torch.equal(x, y) for x, y in zip(pa, pb))
    assert all(torch.equal(x, y) for x, y in zip(ma, mb))
    assert sa.keys() == sb.keys()
    for i in sa:
        assert sa[i].keys() == sb[i].keys()
        assert all(torch.equal(sa[i][k], sb[i][k]) for k in sa[i])
    assert ga == gb


def _roundtrip(sd):
    buf = io.BytesIO()
    torch.save(sd, buf)
    buf.seek(0)
    return torch.load(buf)


@pytest.mark.parametrize("case", cases(**DETERMINISTIC))
def test_reloaded_optimizer_continues_bit_identically(case):
    model_a = _model(0)
    opt_a = _make(case, model_a, 1)
    online = case.online
    if online:
        _train_steps(model_a, opt_a, [1, 2, 3])
    else:
        _train_steps(model_a, opt_a, [1, 2])
        _episodes(model_a, opt_a, [3, 4])
    sd = _roundtrip(opt_a.state_dict())
    model_b = _model(7)
    model_b.load_state_dict(copy.deepcopy(model_a.state_dict()))
    opt_b = _make(case, model_b, 8)
    assert not all(torch.equal(x, y) for x, y in zip(opt_a.meta_parameters(), opt_b.meta_parameters())) \
        or not _random_init(case)
    opt_b.load_state_dict(sd)
    for model, opt in ((model_a, opt_a), (model_b, opt_b)):
        if online:
            _train_steps(model, opt, [4, 5, 6, 7])
        else:
            _train_steps(model, opt, [5])
            _episodes(model, opt, [6, 7, 8])
            _train_steps(model, opt, [9])
    _assert_same(_snapshot(model_a, opt_a), _snapshot(model_b, opt_b))
    if online:  # the masks / rates did move after reload
        assert any(not torch.equal(m, s) for m, s in zip(opt_b.meta_parameters(), [
            sd["meta_state"][i]["meta"][k] for i in range(4) for k in sd["meta_state"][i]["meta"]]))


@pytest.mark.parametrize("case", cases(elementwise=True, online=True, descs=["online"]))
def test_round_trip_restores_values_and_keeps_identity(case):
    model = _model(0)
    opt = _make(case, model, 1)
    outer = torch.optim.Adam(opt.meta_parameters(), lr=0.01)
    _train_steps(model, opt, [1, 2])
    metas = opt.meta_parameters()
    saved = _snapshot(model, opt)
    # like torch.optim, state_dict() references the live momentum buffers: deep-copy to keep it
    sd = copy.deepcopy(opt.state_dict())
    saved_traces = [sd["meta_state"][i]["trace"].clone() for i in range(4)]
    # meta-parameters in the state_dict are copies, not views
    live = opt.state_dict()
    with torch.no_grad():
        for m in metas:
            m.add_(1.0)
    assert all(not torch.equal(m.detach(), s) for m, s in zip(metas, saved[1]))
    assert all(torch.equal(live["meta_state"][i]["meta"][case.info.meta_key], s) for i, s in enumerate(saved[1]))
    _train_steps(model, opt, [3])  # changes momentum buffers and traces
    opt.load_state_dict(sd)
    after = opt.meta_parameters()
    assert all(a is b for a, b in zip(after, metas))  # same tensor objects
    assert all(torch.equal(m.detach(), s) for m, s in zip(after, saved[1]))
    for i, p in enumerate(model.parameters()):
        assert torch.equal(opt.state[p]["momentum_buffer"], saved[2][i]["momentum_buffer"])
    sd2 = opt.state_dict()
    for i in range(4):
        assert torch.equal(sd2["meta_state"][i]["trace"], saved_traces[i])
    # the outer optimizer still drives the optimizer's meta-parameters
    for m in after:
        m.grad = torch.ones_like(m)
    before = [m.detach().clone() for m in after]
    outer.step()
    assert all(not torch.equal(m.detach(), b) for m, b in zip(opt.meta_parameters(), before))


@pytest.mark.parametrize("info", infos(elementwise=True, online=True))
def test_online_trace_restored_gives_same_hypergradient_step(info):
    p = torch.zeros(3, requires_grad=True)
    opt = info.make([p], lr=0.5, meta_lr=1.0, open_gates=True, online=True)
    m0 = opt.meta_parameters()[0].detach().clone()
    p.grad = torch.tensor([1.0, 2.0, 3.0])
    opt.step()
    sd = opt.state_dict()
    q = p.detach().clone().requires_grad_(True)
    fresh = info.make([q], lr=0.5, meta_lr=1.0, open_gates=True, online=True)
    with torch.no_grad():
        fresh.meta_parameters()[0].add_(1.0)  # the values must come from the state_dict
    fresh.load_state_dict(sd)
    for t, o in ((p, opt), (q, fresh)):
        t.grad = torch.tensor([1.0, -1.0, 0.5])
        o.step()
    scale = 0.5 if info.lr_scaled else 1.0
    hyper = 1.0 * scale * torch.tensor([1.0, -1.0, 0.5]) * torch.tensor([1.0, 2.0, 3.0])
    expected = m0 + hyper * gate_derivative(info.gate, m0, info.straight_through)
    if info.gate == "step":
        assert torch.equal(m0, torch.zeros(3))
    assert torch.allclose(fresh.meta_parameters()[0].detach(), expected)
    assert torch.equal(fresh.meta_parameters()[0], opt.meta_parameters()[0])
    assert torch.equal(p, q)


@pytest.mark.parametrize("case", cases(online=False, descs=["dampening-wd"]))
def test_state_dict_in_episode_raises(case):
    model = _model(0)
    opt = _make(case, model, 1)
    sd = opt.state_dict()
    with opt.episode():
        with pytest.raises(RuntimeError, match="episode"):
            opt.state_dict()
        with pytest.raises(RuntimeError, match="episode"):
            opt.load_state_dict(sd)


def _other_kind(info):
    """An optimizer whose meta-parameters have other names than ``info``'s (RectifiedLRSGD for
    MaskedSGD)."""
    if info.name == "masked":
        return BY_NAME["rectified"]
    return next(o for o in BY_NAME.values() if not set(o.meta_keys) & set(info.meta_keys) and not o.stochastic)


def _bad_state_dicts(info):
    """(name, builder) where builder returns a state_dict incompatible with an ``info`` optimizer
    on ``_model``."""
    def group_sizes():
        a = _model(0)
        opt = info.make([{"params": list(a.parameters())[:2]}, {"params": list(a.parameters())[2:]}])
        return opt.state_dict()

    def shapes():
        other = torch.nn.Sequential(torch.nn.Linear(4, 6), torch.nn.Tanh(), torch.nn.Linear(6, 2))
        return info.make(other.parameters()).state_dict()

    def missing_meta():
        sd = info.make(_model(0).parameters()).state_dict()
        del sd["meta_state"]
        return sd

    def plain_sgd():
        return torch.optim.SGD(_model(0).parameters(), lr=0.1).state_dict()

    def other_kind():
        return _other_kind(info).make(_model(0).parameters()).state_dict()

    def bad_hparam():
        sd = info.make(_model(0).parameters()).state_dict()
        sd["param_groups"][0]["lr"] = float("nan")
        return sd

    def fewer_meta():
        sd = info.make(_model(0).parameters()).state_dict()
        del sd["meta_state"][3]
        return sd

    return {"group_sizes": group_sizes, "shapes": shapes, "missing_meta_state": missing_meta,
            "plain_sgd": plain_sgd, "other_kind": other_kind, "bad_hparam": bad_hparam,
            "fewer_meta": fewer_meta}


BAD_CASES = ["group_sizes", "shapes", "missing_meta_state", "plain_sgd", "other_kind", "bad_hparam", "fewer_meta"]


@pytest.mark.parametrize("case", BAD_CASES)
@pytest.mark.parametrize("info", infos())
def test_mismatched_state_dict_raises_and_changes_nothing(info, case):
    model = _model(0)
    opt = info.make(model.parameters(), lr=0.1, momentum=0.9)
    _train_steps(model, opt, [1, 2])
    before = _snapshot(model, opt)
    metas = opt.meta_parameters()
    sd = _bad_state_dicts(info)[case]()
    with pytest.raises(ValueError):
        opt.load_state_dict(sd)
    _assert_same(before, _snapshot(model, opt))
    assert all(a is b for a, b in zip(metas, opt.meta_parameters()))
    _train_steps(model, opt, [3])  # still usable


# ------------------------------------------------------------------ checkpoint / resume
def _roundtrip_objects(obj):
    buf = io.BytesIO()
    torch.save(obj, buf)
    buf.seek(0)
    return torch.load(buf, weights_only=False)


# ------------------------------------------------------------------------ few-shot
def _fewshot_objects(info):
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(6, 8), torch.nn.ReLU(), torch.nn.Linear(8, 3))
    opt = info.make(model.parameters(), lr=0.3, momentum=0.5)
    meta_opt = torch.optim.Adam(list(model.parameters()) + opt.meta_parameters(), lr=1e-2)
    return model, opt, meta_opt


def _fewshot_iteration(model, opt, meta_opt, gen):
    for _ in range(2):
        x = torch.randn(10, 6, generator=gen)
        y = torch.randint(0, 3, (10,), generator=gen)
        with opt.episode():
            for _ in range(3):
                opt.zero_grad(); F.cross_entropy(model(x[:5]), y[:5]).backward(); opt.step()
            opt.zero_grad(); F.cross_entropy(model(x[5:]), y[5:]).backward(); opt.meta_backward()
    meta_opt.step(); meta_opt.zero_grad(); opt.zero_meta_grad()


@pytest.mark.parametrize("info", infos(**DETERMINISTIC))
def test_fewshot_resume_is_bit_identical(info):
    model, opt, meta_opt = _fewshot_objects(info)
    gen = torch.Generator().manual_seed(1)
    for _ in range(3):
        _fewshot_iteration(model, opt, meta_opt, gen)
    ckpt = _roundtrip_objects({"model": model.state_dict(), "opt": opt.state_dict(),
                               "meta_opt": meta_opt.state_dict(), "gen": gen.get_state()})
    for _ in range(3):
        _fewshot_iteration(model, opt, meta_opt, gen)

    model2, opt2, meta_opt2 = _fewshot_objects(info)
    with torch.no_grad():  # make sure the resume does not depend on the fresh init
        for p in list(model2.parameters()) + opt2.meta_parameters():
            p.add_(1.0)
    model2.load_state_dict(ckpt["model"])
    opt2.load_state_dict(ckpt["opt"])
    meta_opt2.load_state_dict(ckpt["meta_opt"])
    gen2 = torch.Generator()
    gen2.set_state(ckpt["gen"])
    for _ in range(3):
        _fewshot_iteration(model2, opt2, meta_opt2, gen2)
    for a, b in zip(list(model.parameters()) + opt.meta_parameters(), list(model2.parameters()) + opt2.meta_parameters()):
        assert torch.equal(a, b)


# ---------------------------------------------------------------------- continual
def _continual_objects(info):
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(6, 8), torch.nn.ReLU(), torch.nn.Linear(8, 3))
    opt = info.make(model.parameters(), lr=0.1, meta_lr=0.3)
    return model, opt, ReservoirBuffer(capacity=8, seed=3)


def _observe(model, opt, buffer, x, y):
    """One La-MAML step (Algorithm 1): inner steps on the incoming samples, meta-loss on
    batch + replay, asynchronous meta-update (Eq. 8: the parameters too), then reservoir update."""
    replay = buffer.sample(5) if len(buffer) else None
    with opt.episode():
        for k in range(len(x)):
            opt.zero_grad(); F.cross_entropy(model(x[k:k + 1]), y[k:k + 1]).backward(); opt.step()
        xm, ym = (x, y) if replay is None else (torch.cat([x, replay[0]]), torch.cat([y, replay[1]]))
        opt.zero_grad(); F.cross_entropy(model(xm), ym).backward(); opt.meta_backward()
    opt.meta_step(update_params=True); opt.zero_grad()
    buffer.add(x, y)


@pytest.mark.parametrize("info", infos(elementwise=True))
def test_continual_resume_with_replay_is_bit_identical(info):
    """La-MAML (LookaheadLRSGD; update_params=True is its default) and the same loop for the
    other elementwise optimizers."""
    gen = torch.Generator().manual_seed(4)
    stream = [(torch.randn(4, 6, generator=gen), torch.randint(0, 3, (4,), generator=gen)) for _ in range(10)]
    model, opt, buffer = _continual_objects(info)
    for x, y in stream[:5]:
        _observe(model, opt, buffer, x, y)
    ckpt = _roundtrip_objects({"model": model.state_dict(), "opt": opt.state_dict(), "buffer": buffer.state_dict()})
    for x, y in stream[5:]:
        _observe(model, opt, buffer, x, y)

    model2, opt2, buffer2 = _continual_objects(info)
    model2.load_state_dict(ckpt["model"]); opt2.load_state_dict(ckpt["opt"]); buffer2.load_state_dict(ckpt["buffer"])
    for x, y in stream[5:]:
        _observe(model2, opt2, buffer2, x, y)
    for a, b in zip(list(model.parameters()) + opt.meta_parameters(), list(model2.parameters()) + opt2.meta_parameters()):
        assert torch.equal(a, b)
    assert all(torch.equal(a, b) for a, b in zip(buffer.tensors, buffer2.tensors))


@pytest.mark.parametrize("info", infos(online=True))
def test_online_traces_survive_a_checkpoint(info):
    torch.manual_seed(0)
    w = torch.nn.Parameter(torch.randn(5))
    opt = info.make([w], meta_lr=0.1, **info.online_kwargs)
    gen = torch.Generator().manual_seed(5)
    grads = [torch.randn(5, generator=gen) for _ in range(6)]
    for g in grads[:3]:
        w.grad = g.clone(); opt.step()
    ckpt = _roundtrip_objects(opt.state_dict())
    w2 = torch.nn.Parameter(w.detach().clone())
    opt2 = info.make([w2], meta_lr=0.1, **info.online_kwargs)
    opt2.load_state_dict(ckpt)
    for g in grads[3:]:
        w.grad = g.clone(); opt.step()
        w2.grad = g.clone(); opt2.step()
    assert torch.equal(w, w2) and torch.equal(opt.meta_parameters()[0], opt2.meta_parameters()[0])


def test_state_dict_of_another_class_with_the_same_meta_keys_is_refused():
    """MetaSGD and RectifiedLRSGD both keep ``rates`` of the parameter's shape: loading one's
    state into the other used to succeed silently with the other update rule's rates."""
    torch.manual_seed(0)
    model = torch.nn.Linear(3, 2)
    source = so.MetaSGD(model.parameters(), lr=0.1)
    target = so.RectifiedLRSGD(model.parameters(), lr=0.2)
    before = [m.detach().clone() for m in target.meta_parameters()]
    with pytest.raises(ValueError, match="MetaSGD.*RectifiedLRSGD"):
        target.load_state_dict(source.state_dict())
    assert all(torch.equal(a, m) for a, m in zip(before, target.meta_parameters()))
