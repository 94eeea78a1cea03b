"""The optimizers' ``backend=`` argument (like torch.optim's foreach / fused flags)."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

import sparse_optim as so
from sparse_optim.ops import reference

CLASSES = [so.MaskedSGD, so.RectifiedLRSGD, so.LookaheadLRSGD, so.KroneckerSGD, so.StochasticMaskedSGD]


def _run(cls, backend):
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(5, 6), torch.nn.Tanh(), torch.nn.Linear(6, 2))
    kw = dict(noise_dim=3) if cls is so.StochasticMaskedSGD else {}
    opt = cls(model.parameters(), backend=backend, **kw)
    x, y = torch.randn(8, 5), torch.randint(0, 2, (8,))
    with opt.episode():
        for _ in range(2):
            opt.zero_grad(); F.cross_entropy(model(x), y).backward(); opt.step()
        opt.zero_grad(); F.cross_entropy(model(x), 1 - y).backward(); opt.meta_backward()
    opt.meta_step(update_params=True)
    return [p.detach() for p in model.parameters()] + [m.detach() for m in opt.meta_parameters()]


@pytest.mark.parametrize("cls", CLASSES)
def test_forced_reference_backend_is_used_and_agrees(cls, monkeypatch):
    calls = []
    for name in ("gated_sgd_step_", "meta_grad_accumulate_"):
        original = getattr(reference, name)
        monkeypatch.setattr(reference, name, lambda *a, _o=original, _n=name, **k: (calls.append(_n), _o(*a, **k))[1])
    forced = _run(cls, "reference")
    if cls is not so.KroneckerSGD:
        assert "gated_sgd_step_" in calls and "meta_grad_accumulate_" in calls
    monkeypatch.undo()
    default = _run(cls, None)
    for a, b in zip(forced, default):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


def test_bad_backend_name():
    with pytest.raises(ValueError, match="backend"):
        so.MaskedSGD([torch.nn.Parameter(torch.randn(2))], backend="gpu")
