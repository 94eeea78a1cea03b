"""state_dict / load_state_dict of the gated optimizers: meta-parameters (identity kept),
momentum buffers, online traces, bit-identical continuation, and layout errors."""
import copy
import io

import pytest
import torch

from sparse_optim import LookaheadLRSGD, MaskedSGD, RectifiedLRSGD


def _model(seed):
    torch.manual_seed(seed)
    return torch.nn.Sequential(torch.nn.Linear(4, 5), torch.nn.Tanh(), torch.nn.Linear(5, 2))


def _data(seed, n=8):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, 4, generator=g), torch.randn(n, 2, generator=g)


def _loss(model, seed):
    x, y = _data(seed)
    return ((model(x) - y) ** 2).mean()


CONFIGS = {
    "masked-momentum": (MaskedSGD, dict(lr=0.1, mask_lr=0.5, momentum=0.9, weight_decay=0.01)),
    "masked-online": (MaskedSGD, dict(lr=0.1, mask_lr=0.5, online=True, online_decay=0.5, momentum=0.5)),
    "rectified-online": (RectifiedLRSGD, dict(lr=0.1, rate_lr=0.1, rate_init="uniform", online=True)),
    "rectified-nesterov": (RectifiedLRSGD, dict(lr=0.1, momentum=0.5, nesterov=True)),
    "lookahead": (LookaheadLRSGD, dict(lr=0.1, rate_lr=0.3, rate_init="uniform", momentum=0.3)),
}


def _make(name, model, seed):
    cls, kw = CONFIGS[name]
    torch.manual_seed(seed)  # a different seed gives different initial meta-parameters
    opt = cls(model.parameters(), **kw)
    return opt


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


@pytest.mark.parametrize("name", list(CONFIGS))
def test_reloaded_optimizer_continues_bit_identically(name):
    model_a = _model(0)
    opt_a = _make(name, model_a, 1)
    online = CONFIGS[name][1].get("online", False)
    if online:
        _train_steps(model_a, opt_a, [1, 2, 3])
    else:
        _train_steps(model_a, opt_a, [1, 2])
        _episodes(model_a, opt_a, [3, 4])
    sd = _roundtrip(opt_a.state_dict())
    model_b = _model(7)
    model_b.load_state_dict(copy.deepcopy(model_a.state_dict()))
    opt_b = _make(name, model_b, 8)
    assert not all(torch.equal(x, y) for x, y in zip(opt_a.meta_parameters(), opt_b.meta_parameters())) \
        or CONFIGS[name][1].get("rate_init", "constant") == "constant"
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


def test_round_trip_restores_values_and_keeps_identity():
    model = _model(0)
    opt = _make("masked-online", model, 1)
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
    assert all(torch.equal(live["meta_state"][i]["meta"]["mask_logits"], s) for i, s in enumerate(saved[1]))
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


def test_online_trace_restored_gives_same_hypergradient_step():
    p = torch.zeros(3, requires_grad=True)
    opt = MaskedSGD([p], lr=0.5, mask_lr=1.0, mask_init="constant", online=True)
    p.grad = torch.tensor([1.0, 2.0, 3.0])
    opt.step()
    sd = opt.state_dict()
    q = p.detach().clone().requires_grad_(True)
    fresh = MaskedSGD([q], lr=0.5, mask_lr=1.0, mask_init="constant", online=True)
    fresh.load_state_dict(sd)
    for t, o in ((p, opt), (q, fresh)):
        t.grad = torch.tensor([1.0, -1.0, 0.5])
        o.step()
    expected = 1.0 * 0.5 * torch.tensor([1.0, -1.0, 0.5]) * torch.tensor([1.0, 2.0, 3.0])
    assert torch.allclose(fresh.meta_parameters()[0].detach(), expected)
    assert torch.equal(fresh.meta_parameters()[0], opt.meta_parameters()[0])
    assert torch.equal(p, q)


def test_state_dict_in_episode_raises():
    model = _model(0)
    opt = _make("masked-momentum", model, 1)
    sd = opt.state_dict()
    with opt.episode():
        with pytest.raises(RuntimeError, match="episode"):
            opt.state_dict()
        with pytest.raises(RuntimeError, match="episode"):
            opt.load_state_dict(sd)


def _bad_state_dicts():
    """(name, builder) where builder returns a state_dict incompatible with the 'target' optimizer."""
    def group_sizes():
        a = _model(0)
        opt = MaskedSGD([{"params": list(a.parameters())[:2]}, {"params": list(a.parameters())[2:]}])
        return opt.state_dict()

    def shapes():
        other = torch.nn.Sequential(torch.nn.Linear(4, 6), torch.nn.Tanh(), torch.nn.Linear(6, 2))
        return MaskedSGD(other.parameters()).state_dict()

    def missing_meta():
        sd = MaskedSGD(_model(0).parameters()).state_dict()
        del sd["meta_state"]
        return sd

    def plain_sgd():
        return torch.optim.SGD(_model(0).parameters(), lr=0.1).state_dict()

    def other_kind():
        return RectifiedLRSGD(_model(0).parameters()).state_dict()

    def bad_hparam():
        sd = MaskedSGD(_model(0).parameters()).state_dict()
        sd["param_groups"][0]["lr"] = float("nan")
        return sd

    def fewer_meta():
        sd = MaskedSGD(_model(0).parameters()).state_dict()
        del sd["meta_state"][3]
        return sd

    return {"group_sizes": group_sizes, "shapes": shapes, "missing_meta_state": missing_meta,
            "plain_sgd": plain_sgd, "other_kind": other_kind, "bad_hparam": bad_hparam,
            "fewer_meta": fewer_meta}


@pytest.mark.parametrize("case", list(_bad_state_dicts()))
def test_mismatched_state_dict_raises_and_changes_nothing(case):
    model = _model(0)
    opt = MaskedSGD(model.parameters(), lr=0.1, momentum=0.9)
    _train_steps(model, opt, [1, 2])
    before = _snapshot(model, opt)
    metas = opt.meta_parameters()
    sd = _bad_state_dicts()[case]()
    with pytest.raises(ValueError):
        opt.load_state_dict(sd)
    _assert_same(before, _snapshot(model, opt))
    assert all(a is b for a, b in zip(metas, opt.meta_parameters()))
    _train_steps(model, opt, [3])  # still usable
