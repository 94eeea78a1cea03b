"""torch.compile (inductor, CPU): every optimizer's step (registry, conftest.py) traces without
graph breaks and matches eager."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from conftest import BY_NAME, OPTIMIZERS, Case, case_list

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


# ---------------------------------------------------------------- meta-parameters adapting online
ONLINE_CASES = [pytest.param(c, id=c.id) for c in case_list(online=True)
                if c.variant.desc in ("online", "adapt")]


def _online_run(model, opt, step_fn, batches):
    for x, y in batches:
        opt.zero_grad()
        F.cross_entropy(model(x), y).backward()
        step_fn()
    return [p.detach().clone() for p in model.parameters()] + [m.detach().clone() for m in opt.meta_parameters()]


def _batches(n, poison=None):
    g = torch.Generator().manual_seed(2)
    out = [(torch.randn(16, 8, generator=g), torch.randint(0, 4, (16,), generator=g)) for _ in range(n)]
    if poison is not None:
        x, y = out[poison]
        out[poison] = (torch.full_like(x, float("nan")), y)
    return out


@pytest.mark.parametrize("case", ONLINE_CASES)
def test_online_and_adapted_factor_steps_compile_fullgraph_and_skip_like_eager(case):
    """Online masks / rates and KFO Eq. 4 factor adaptation: the non-finite check and the
    hypergradient compile without graph breaks; a NaN step is skipped as in eager."""
    torch._dynamo.reset()
    batches = _batches(5, poison=2)
    model, opt = _setup(case)
    eager = _online_run(model, opt, opt.step, batches)
    assert opt.skipped_updates == 1

    model, opt = _setup(case)
    compiled = _online_run(model, opt, torch.compile(opt.step, fullgraph=True, backend="inductor"), batches)
    assert opt.skipped_updates == 1
    for a, b in zip(compiled, eager):
        assert torch.isfinite(a).all()
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


def test_compiled_raise_policy_raises_and_leaves_the_parameters_unchanged():
    torch._dynamo.reset()
    case = Case(BY_NAME["masked"], BY_NAME["masked"].variant("online"))
    model, opt = _setup(case)
    opt.nonfinite = "raise"
    step = torch.compile(opt.step, fullgraph=True, backend="inductor")
    (x, y), (bad, _) = _batches(2, poison=1)
    F.cross_entropy(model(x), y).backward(); step()
    before = [t.detach().clone() for t in list(model.parameters()) + opt.meta_parameters()]
    opt.zero_grad(); F.cross_entropy(model(bad), y).backward()
    with pytest.raises(RuntimeError, match="non-finite"):
        step()
    for a, b in zip(list(model.parameters()) + opt.meta_parameters(), before):
        torch.testing.assert_close(a.detach(), b, rtol=0, atol=0)


def test_adapted_factors_compile_inside_an_episode():
    """KFO Eq. 4 inside an episode (fast factor copies): fullgraph, equal to eager."""
    torch._dynamo.reset()
    case = Case(BY_NAME["kronecker"], BY_NAME["kronecker"].variant("adapt"))
    g = torch.Generator().manual_seed(1)
    x, y = torch.randn(32, 8, generator=g), torch.randint(0, 4, (32,), generator=g)
    model, opt = _setup(case)
    eager = _episode(model, opt, opt.step, x, y)
    model, opt = _setup(case)
    compiled = _episode(model, opt, torch.compile(opt.step, fullgraph=True, backend="inductor"), x, y)
    for a, b in zip(compiled, eager):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
