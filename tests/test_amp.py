"""Mixed precision: GradScaler compatibility, skipped overflow steps, low-precision parameters,
for every optimizer of the registry (conftest.py)."""
from __future__ import annotations


import pytest
import torch
import torch.nn.functional as F

from conftest import infos


class _Maker:
    def __init__(self, info):
        self.info = info

    def __call__(self, params):
        return self.info.make(params, lr=0.2)


CLASSES = [pytest.param(_Maker(p.values[0]), id=p.id) for p in infos()]


def _model():
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(5, 7), torch.nn.Tanh(), torch.nn.Linear(7, 3))


def _data(seed=1):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(12, 5, generator=g), torch.randint(0, 3, (12,), generator=g)


def _episode(model, opt, x, y, scaler=None, poison_step=None, poison_outer=False):
    with opt.episode():
        for k in range(3):
            opt.zero_grad()
            loss = F.cross_entropy(model(x), y) * (float("inf") if k == poison_step else 1.0)
            if scaler is None:
                loss.backward(); opt.step()
            else:
                scaler.scale(loss).backward(); scaler.step(opt); scaler.update()
        opt.zero_grad()
        outer = F.cross_entropy(model(x), (y + 1) % 3) * (float("inf") if poison_outer else 1.0)
        if scaler is None:
            outer.backward()
        else:
            scaler.scale(outer).backward(); scaler.unscale_(opt)
        opt.meta_backward()
        if scaler is not None:
            scaler.update()


def _scaler():
    # growth disabled so the scale stays a power of two: scaling is then exact
    return torch.amp.GradScaler("cpu", init_scale=2.0 ** 8, growth_interval=10 ** 9)


@pytest.mark.parametrize("make", CLASSES)
def test_grad_scaler_gives_the_unscaled_result(make):
    x, y = _data()
    plain, scaled = _model(), _model()
    opt_plain, opt_scaled = make(plain.parameters()), make(scaled.parameters())
    opt_scaled.load_state_dict(opt_plain.state_dict())
    _episode(plain, opt_plain, x, y)
    _episode(scaled, opt_scaled, x, y, scaler=_scaler())
    for a, b in zip(list(plain.parameters()) + opt_plain.meta_parameters(),
                    list(scaled.parameters()) + opt_scaled.meta_parameters()):
        torch.testing.assert_close(a.grad, b.grad, rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("make", CLASSES)
def test_overflowing_inner_step_is_skipped_by_the_scaler(make):
    x, y = _data()
    model = _model()
    opt = make(model.parameters())
    scaler = _scaler()
    with opt.episode():
        opt.zero_grad(); scaler.scale(F.cross_entropy(model(x), y) * float("inf")).backward()
        before = [p.detach().clone() for p in model.parameters()]
        scaler.step(opt); scaler.update()
        assert all(torch.equal(a, b) for a, b in zip(before, model.parameters()))
        assert opt._trace.tensors() == []  # nothing recorded either
        assert scaler.get_scale() < 2.0 ** 8  # the scaler backed off


@pytest.mark.parametrize("make", CLASSES)
def test_overflowing_outer_gradient_cannot_poison_meta_parameters(make):
    x, y = _data()
    model = _model()
    opt = make(model.parameters())
    meta_before = [m.detach().clone() for m in opt.meta_parameters()]
    theta_before = [p.detach().clone() for p in model.parameters()]
    with pytest.warns(RuntimeWarning, match="non-finite"):
        _episode(model, opt, x, y, scaler=_scaler(), poison_outer=True)
    assert opt.skipped_updates == 1
    assert all(m.grad is None for m in opt.meta_parameters())
    assert all(p.grad is None for p in model.parameters())  # no theta contribution either
    opt.meta_step()
    for a, b in zip(opt.meta_parameters(), meta_before):
        assert torch.equal(a.detach(), b)
    for a, b in zip(model.parameters(), theta_before):
        assert torch.equal(a.detach(), b)


@pytest.mark.parametrize("info", infos())
def test_nan_inner_gradient_without_scaler_is_rejected_at_meta_backward(info):
    x, y = _data()
    model = _model()
    opt = info.make(model.parameters(), nonfinite="raise")
    with pytest.raises(FloatingPointError, match="non-finite"):
        _episode(model, opt, x, y, poison_step=1)
    assert all(m.grad is None for m in opt.meta_parameters())


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("make", CLASSES)
def test_low_precision_parameters_with_float32_meta_state(make, dtype):
    x, y = _data()
    model = _model().to(dtype)
    opt = make(model.parameters())
    assert all(m.dtype == torch.float32 for m in opt.meta_parameters())
    with opt.episode():
        for _ in range(2):
            opt.zero_grad(); F.cross_entropy(model(x.to(dtype)).float(), y).backward(); opt.step()
        for t in opt._trace.tensors():
            assert t.dtype == torch.float32
        opt.zero_grad(); F.cross_entropy(model(x.to(dtype)).float(), (y + 1) % 3).backward(); opt.meta_backward()
    assert all(m.grad.dtype == torch.float32 and torch.isfinite(m.grad).all() for m in opt.meta_parameters())
    assert all(p.dtype == dtype for p in model.parameters())


@pytest.mark.parametrize("info", infos())
def test_autocast_inner_loop_runs(info):
    x, y = _data()
    model = _model()
    opt = info.make(model.parameters())
    scaler = _scaler()
    with opt.episode():
        for _ in range(2):
            opt.zero_grad()
            with torch.autocast("cpu", dtype=torch.bfloat16):
                loss = F.cross_entropy(model(x), y)
            scaler.scale(loss).backward(); scaler.step(opt); scaler.update()
        opt.zero_grad()
        with torch.autocast("cpu", dtype=torch.bfloat16):
            outer = F.cross_entropy(model(x), (y + 1) % 3)
        scaler.scale(outer).backward(); scaler.unscale_(opt)
        opt.meta_backward(); scaler.update()
    assert all(m.grad is not None and torch.isfinite(m.grad).all() for m in opt.meta_parameters())
