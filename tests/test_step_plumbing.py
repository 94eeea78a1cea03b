"""The step's cached plumbing: hooks, plans re-validated when groups change, mixed groups."""
import pytest
import torch
from torch.optim import optimizer as torch_optimizer

import sparse_optim as so
from sparse_optim.functional import gated as spec

pytestmark = pytest.mark.ops


def _param(*shape, dtype=torch.float32, seed=0):
    g = torch.Generator().manual_seed(seed)
    p = torch.nn.Parameter(torch.randn(*shape, generator=g, dtype=dtype))
    p.grad = torch.randn(*shape, generator=g, dtype=dtype)
    return p


def test_step_hooks_run_like_torch_optim():
    p = _param(3)
    opt = so.MaskedSGD([p], init_sparsity=0.0)
    calls = []
    opt.register_step_pre_hook(lambda o, a, k: calls.append("pre"))
    opt.register_step_post_hook(lambda o, a, k: calls.append("post"))
    handle = torch_optimizer.register_optimizer_step_post_hook(lambda o, a, k: calls.append("global"))
    try:
        opt.step()
    finally:
        handle.remove()
    assert calls == ["pre", "post", "global"]


def test_changed_hyperparameters_are_validated_and_used():
    p = _param(4)
    opt = so.MetaSGD([p], lr=0.1)
    opt.step()
    opt.param_groups[0]["momentum"] = 0.5
    before = p.detach().clone()
    opt.step()  # the cached plan notices the new value: momentum buffer created
    assert "momentum_buffer" in opt.state[p]
    torch.testing.assert_close(p.detach(), before - opt._meta[p]["rates"].detach() * p.grad)
    opt.param_groups[0]["weight_decay"] = -1.0
    with pytest.raises(ValueError, match="weight_decay"):
        opt.step()
    torch.testing.assert_close(p.detach(), before - opt._meta[p]["rates"].detach() * p.grad)


def test_added_and_replaced_parameters_are_stepped():
    a, b = _param(3, seed=1), _param(2, seed=2)
    opt = so.RectifiedLRSGD([a], lr=0.1)
    opt.step()
    opt.add_param_group({"params": [b]})
    before = b.detach().clone()
    opt.step()
    torch.testing.assert_close(b.detach(), before - 0.1 * b.grad)


@pytest.mark.parametrize("make", [lambda ps: so.MaskedSGD(ps, lr=0.1, init_sparsity=0.3),
                                  lambda ps: so.LookaheadLRSGD(ps, lr=0.1, momentum=0.9)])
def test_a_group_spanning_dtypes_steps_each_tensor_like_the_spec(make):
    """float32 and float64 parameters in one group: grouped by dtype, each exactly as the spec."""
    ps = [_param(3, 2, seed=3), _param(4, dtype=torch.float64, seed=4), _param(5, seed=5)]
    opt = make(ps)
    want = []
    for p in ps:
        m = next(iter(opt._meta[p].values())).detach()
        want.append(spec.gated_update(p.detach(), p.grad, m, kind=opt.gate, scale=opt.gate.scale(0.1)))
    opt.step()
    for p, w in zip(ps, want):
        assert p.dtype == w.dtype
        torch.testing.assert_close(p.detach(), w)
