"""Checkpoint / resume: saving model + optimizer + meta-optimizer (+ replay buffer) mid-run and
resuming gives bit-identical results to an uninterrupted run."""
from __future__ import annotations

import io

import torch
import torch.nn.functional as F

import sparse_optim as so
from sparse_optim.continual import ReservoirBuffer


def _roundtrip(obj):
    buf = io.BytesIO()
    torch.save(obj, buf)
    buf.seek(0)
    return torch.load(buf, weights_only=False)


# ------------------------------------------------------------------------ few-shot
def _fewshot_objects():
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(6, 8), torch.nn.ReLU(), torch.nn.Linear(8, 3))
    opt = so.MaskedSGD(model.parameters(), lr=0.3, momentum=0.5)
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


def test_fewshot_resume_is_bit_identical():
    model, opt, meta_opt = _fewshot_objects()
    gen = torch.Generator().manual_seed(1)
    for _ in range(3):
        _fewshot_iteration(model, opt, meta_opt, gen)
    ckpt = _roundtrip({"model": model.state_dict(), "opt": opt.state_dict(), "meta_opt": meta_opt.state_dict(),
                       "gen": gen.get_state()})
    for _ in range(3):
        _fewshot_iteration(model, opt, meta_opt, gen)

    model2, opt2, meta_opt2 = _fewshot_objects()
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
def _continual_objects():
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(6, 8), torch.nn.ReLU(), torch.nn.Linear(8, 3))
    opt = so.LookaheadLRSGD(model.parameters(), lr=0.1, rate_lr=0.3)
    return model, opt, ReservoirBuffer(capacity=8, seed=3)


def _observe(model, opt, buffer, x, y):
    """One La-MAML step (Algorithm 1): inner steps on the incoming samples, meta-loss on
    batch + replay, asynchronous meta-update, then reservoir update."""
    replay = buffer.sample(5) if len(buffer) else None
    with opt.episode():
        for k in range(len(x)):
            opt.zero_grad(); F.cross_entropy(model(x[k:k + 1]), y[k:k + 1]).backward(); opt.step()
        xm, ym = (x, y) if replay is None else (torch.cat([x, replay[0]]), torch.cat([y, replay[1]]))
        opt.zero_grad(); F.cross_entropy(model(xm), ym).backward(); opt.meta_backward()
    opt.meta_step(); opt.zero_grad()
    buffer.add(x, y)


def test_continual_resume_with_replay_is_bit_identical():
    gen = torch.Generator().manual_seed(4)
    stream = [(torch.randn(4, 6, generator=gen), torch.randint(0, 3, (4,), generator=gen)) for _ in range(10)]
    model, opt, buffer = _continual_objects()
    for x, y in stream[:5]:
        _observe(model, opt, buffer, x, y)
    ckpt = _roundtrip({"model": model.state_dict(), "opt": opt.state_dict(), "buffer": buffer.state_dict()})
    for x, y in stream[5:]:
        _observe(model, opt, buffer, x, y)

    model2, opt2, buffer2 = _continual_objects()
    model2.load_state_dict(ckpt["model"]); opt2.load_state_dict(ckpt["opt"]); buffer2.load_state_dict(ckpt["buffer"])
    for x, y in stream[5:]:
        _observe(model2, opt2, buffer2, x, y)
    for a, b in zip(list(model.parameters()) + opt.meta_parameters(), list(model2.parameters()) + opt2.meta_parameters()):
        assert torch.equal(a, b)
    assert all(torch.equal(a, b) for a, b in zip(buffer.tensors, buffer2.tensors))


def test_online_traces_survive_a_checkpoint():
    torch.manual_seed(0)
    w = torch.nn.Parameter(torch.randn(5))
    opt = so.RectifiedLRSGD([w], online=True, rate_lr=0.1)
    gen = torch.Generator().manual_seed(5)
    grads = [torch.randn(5, generator=gen) for _ in range(6)]
    for g in grads[:3]:
        w.grad = g.clone(); opt.step()
    ckpt = _roundtrip(opt.state_dict())
    w2 = torch.nn.Parameter(w.detach().clone())
    opt2 = so.RectifiedLRSGD([w2], online=True, rate_lr=0.1)
    opt2.load_state_dict(ckpt)
    for g in grads[3:]:
        w.grad = g.clone(); opt.step()
        w2.grad = g.clone(); opt2.step()
    assert torch.equal(w, w2) and torch.equal(opt.meta_parameters()[0], opt2.meta_parameters()[0])
