"""The step's cached plumbing: hooks, plans re-validated when groups change, mixed groups
(the optimizers of the registry, conftest.py)."""
import pytest
import torch
from torch.optim import optimizer as torch_optimizer

from sparse_optim.functional import gated as spec

from conftest import cases, infos, step_size


def _param(*shape, dtype=torch.float32, seed=0):
    g = torch.Generator().manual_seed(seed)
    p = torch.nn.Parameter(torch.randn(*shape, generator=g, dtype=dtype))
    p.grad = torch.randn(*shape, generator=g, dtype=dtype)
    return p


@pytest.mark.parametrize("info", infos())
def test_step_hooks_run_like_torch_optim(info):
    p = _param(3)
    opt = info.make([p], open_gates=True)
    calls = []
    opt.register_step_pre_hook(lambda o, a, k: calls.append("pre"))
    opt.register_step_post_hook(lambda o, a, k: calls.append("post"))
    handle = torch_optimizer.register_optimizer_step_post_hook(lambda o, a, k: calls.append("global"))
    try:
        opt.step()
    finally:
        handle.remove()
    assert calls == ["pre", "post", "global"]


@pytest.mark.parametrize("info", infos(elementwise=True))
def test_changed_hyperparameters_are_validated_and_used(info):
    p = _param(4)
    opt = info.make([p], lr=0.1)
    opt.step()
    opt.param_groups[0]["momentum"] = 0.5
    before = p.detach().clone()
    opt.step()  # the cached plan notices the new value: momentum buffer created
    assert "momentum_buffer" in opt.state[p]
    step = step_size(info.gate, opt._meta[p][info.meta_key].detach(), 0.1)
    torch.testing.assert_close(p.detach(), before - step * p.grad)
    opt.param_groups[0]["weight_decay"] = -1.0
    with pytest.raises(ValueError, match="weight_decay"):
        opt.step()
    torch.testing.assert_close(p.detach(), before - step * p.grad)


@pytest.mark.parametrize("info", infos(elementwise=True))
def test_added_and_replaced_parameters_are_stepped(info):
    a, b = _param(3, seed=1), _param(2, seed=2)
    opt = info.make([a], lr=0.1, open_gates=True)
    opt.step()
    opt.add_param_group({"params": [b]})
    before = b.detach().clone()
    opt.step()
    torch.testing.assert_close(b.detach(), before - 0.1 * b.grad)


@pytest.mark.parametrize("case", cases(elementwise=True, descs=["default", "momentum"]))
def test_a_group_spanning_dtypes_steps_each_tensor_like_the_spec(case):
    """float32 and float64 parameters in one group: grouped by dtype, each exactly as the spec
    (the first step: a fresh momentum buffer is the gradient)."""
    ps = [_param(3, 2, seed=3), _param(4, dtype=torch.float64, seed=4), _param(5, seed=5)]
    opt = case.make(ps, lr=0.1, init_sparsity=0.3) if case.info.gate == "step" else case.make(ps, lr=0.1)
    want = []
    for p in ps:
        m = next(iter(opt._meta[p].values())).detach()
        want.append(spec.gated_update(p.detach(), p.grad, m, kind=opt.gate, scale=opt.gate.scale(0.1)))
    opt.step()
    for p, w in zip(ps, want):
        assert p.dtype == w.dtype
        torch.testing.assert_close(p.detach(), w)


@pytest.mark.parametrize("case", cases(family="gated", descs=["momentum", "uniform-init", "default"]))
def test_channels_last_parameters_get_channels_last_state_and_the_same_update(case):
    """Meta-parameters, traces and momentum buffers take the parameter's memory format (no
    contiguous() copies per step), and the update equals the contiguous one."""
    def run(channels_last):
        torch.manual_seed(0)
        w = torch.randn(4, 3, 5, 5)
        if channels_last:
            w = w.contiguous(memory_format=torch.channels_last)
        w = torch.nn.Parameter(w)
        opt = case.make([w])
        with opt.episode():
            for k in range(2):
                w.grad = torch.randn(4, 3, 5, 5, generator=torch.Generator().manual_seed(k)).to(
                    memory_format=torch.channels_last if channels_last else torch.contiguous_format)
                opt.step()
            state = [t for t in opt.meta_parameters()] + [v for v in opt.state[w].values() if torch.is_tensor(v)]
            stepped = w.detach().clone()
        return stepped, state
    flat, flat_state = run(False)
    cl, cl_state = run(True)
    torch.testing.assert_close(cl, flat, rtol=0, atol=0)
    for t in cl_state:
        if t.dim() == 4:
            assert t.is_contiguous(memory_format=torch.channels_last), t.stride()
