"""torch.compile (inductor, CPU): every optimizer's step (registry, conftest.py) traces without
graph breaks and matches eager."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from conftest import OPTIMIZERS, Case

pytestmark = pytest.mark.filterwarnings("ignore")

# one variant per optimizer (compiling is the slow part): momentum 0.9 (nesterov) for MaskedSGD,
# KFC (depth 2) for KroneckerSGD, momentum for the others
_VARIANT = {"masked": "nesterov", "kronecker": "depth2-normalize"}
COMPILED = [pytest.param(c, id=c.id) for c in (Case(i, i.variant(_VARIANT.get(i.name, "momentum"))) for i in OPTIMIZERS)]


def _setup(case):
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.ReLU(), torch.nn.Linear(16, 4))
    return model, case.make(model.parameters())


def _episode(model, opt, step_fn, x, y):
    with opt.episode():
        for _ in range(3):
            opt.zero_grad(); F.cross_entropy(model(x), y).backward(); step_fn()
        opt.zero_grad(); F.cross_entropy(model(x), 1 - y.clamp(max=1)).backward(); opt.meta_backward()
    return [p.grad.clone() for p in model.parameters()] + [m.grad.clone() for m in opt.meta_parameters()]


@pytest.mark.parametrize("case", COMPILED)
def test_compiled_step_matches_eager_without_graph_breaks(case):
    torch._dynamo.reset()
    g = torch.Generator().manual_seed(1)
    x, y = torch.randn(32, 8, generator=g), torch.randint(0, 4, (32,), generator=g)
    model, opt = _setup(case)
    eager = _episode(model, opt, opt.step, x, y)

    probe_model, probe = _setup(case)  # explain() runs the step: use a throwaway copy
    F.cross_entropy(probe_model(x), y).backward()
    explanation = torch._dynamo.explain(probe.step)()
    assert explanation.graph_count == 1 and explanation.graph_break_count == 0, explanation.break_reasons

    model, opt = _setup(case)
    compiled_step = torch.compile(opt.step, fullgraph=True, backend="inductor")
    compiled = _episode(model, opt, compiled_step, x, y)
    for a, b in zip(compiled, eager):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
