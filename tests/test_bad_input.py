"""Bad and hostile input at every public entry point of the optimizers of the registry
(conftest.py): each call either works and matches the reference math, or raises a clear error
that names the argument and changes nothing."""
from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings, strategies as st

from sparse_optim import LookaheadLRSGD, MaskedSGD, RectifiedLRSGD
from sparse_optim.functional.kronecker import kronecker_sgd

from conftest import OPTIMIZERS, infos

ALL = infos(elementwise=True)
BAD_VALUES = [-0.1, float("nan"), float("inf"), float("-inf")]


def _p(*shape, **kw):
    return torch.randn(*shape, **kw).requires_grad_(True)


def _snapshot(params, opt):
    return [p.detach().clone() for p in params], [m.detach().clone() for m in opt.meta_parameters()]


def _unchanged(before, params, opt):
    ps, ms = before
    assert all(torch.equal(a, p.detach()) for a, p in zip(ps, params))
    assert all(torch.equal(a, m.detach()) for a, m in zip(ms, opt.meta_parameters()))


@pytest.mark.parametrize("info", ALL)
@pytest.mark.parametrize("key", ["lr", "meta_lr", "weight_decay", "momentum", "dampening"])
@pytest.mark.parametrize("value", BAD_VALUES)
def test_bad_hyperparameters_in_constructor(info, key, value):
    name = info.meta_lr if key == "meta_lr" else key
    with pytest.raises(ValueError, match=name):
        info.cls([_p(3)], **{name: value})


@pytest.mark.parametrize("info", ALL)
@pytest.mark.parametrize("key", ["lr", "meta_lr", "weight_decay", "momentum"])
def test_bad_hyperparameters_in_add_param_group(info, key):
    name = info.meta_lr if key == "meta_lr" else key
    opt = info.cls([_p(3)])
    with pytest.raises(ValueError, match=name):
        opt.add_param_group({"params": [_p(2)], name: float("nan")})
    assert len(opt.param_groups) == 1 and len(opt.meta_parameters()) == 1


@pytest.mark.parametrize("info", ALL)
def test_hyperparameter_of_wrong_type(info):
    with pytest.raises(TypeError, match="lr"):
        info.cls([_p(3)], lr="0.1")
    with pytest.raises(TypeError, match="momentum"):
        info.cls([_p(3)], momentum=None)


@pytest.mark.parametrize("value", [-0.01, 1.01, float("nan"), float("inf")])
def test_init_sparsity_outside_unit_interval(value):
    with pytest.raises(ValueError, match="init_sparsity"):
        MaskedSGD([_p(3)], init_sparsity=value)
    opt = MaskedSGD([_p(3)])
    with pytest.raises(ValueError, match="init_sparsity"):
        opt.add_param_group({"params": [_p(2)], "init_sparsity": value})
    assert len(opt.param_groups) == 1


def test_init_sparsity_bounds_are_accepted():
    MaskedSGD([_p(3)], init_sparsity=0.0)
    MaskedSGD([_p(3)], init_sparsity=1.0)


@pytest.mark.parametrize("info", ALL)
def test_nesterov_requires_momentum_and_zero_dampening(info):
    with pytest.raises(ValueError, match="nesterov"):
        info.cls([_p(3)], nesterov=True)
    with pytest.raises(ValueError, match="nesterov"):
        info.cls([_p(3)], nesterov=True, momentum=0.9, dampening=0.1)
    info.cls([_p(3)], nesterov=True, momentum=0.9)


def test_unknown_init_choices_and_bad_init_values():
    with pytest.raises(ValueError, match="mask_init"):
        MaskedSGD([_p(3)], mask_init="xavier")
    with pytest.raises(ValueError, match="mask_init_value"):
        MaskedSGD([_p(3)], mask_init="constant", mask_init_value=float("nan"))
    with pytest.raises(ValueError, match="rate_init"):
        RectifiedLRSGD([_p(3)], rate_init="kaiming")
    with pytest.raises(ValueError, match="rate_init"):
        LookaheadLRSGD([_p(3)], rate_init="normal")
    with pytest.raises(ValueError, match="rate_init_range"):
        RectifiedLRSGD([_p(3)], rate_init="uniform", rate_init_range=(0.2, 0.1))
    with pytest.raises(ValueError, match="rate_init_range"):
        RectifiedLRSGD([_p(3)], rate_init="uniform", rate_init_range=(-0.1, 0.1))
    with pytest.raises(ValueError, match="online_decay"):
        MaskedSGD([_p(3)], online=True, online_decay=1.5)


@pytest.mark.parametrize("info", ALL)
@pytest.mark.parametrize("dtype", [torch.complex64, torch.complex128])
def test_complex_params_raise_type_error(info, dtype):
    with pytest.raises(TypeError, match="complex"):
        info.cls([torch.zeros(3, dtype=dtype, requires_grad=True)])
    model = torch.nn.Linear(2, 2)
    opt = info.cls(model.named_parameters())
    with pytest.raises(TypeError, match="head.weight.*complex"):
        opt.add_param_group({"params": [("head.weight", torch.zeros(3, dtype=dtype, requires_grad=True))]})
    assert len(opt.param_groups) == 1 and len(opt.meta_parameters()) == 2


@pytest.mark.parametrize("info", ALL)
@pytest.mark.parametrize("dtype", [torch.int64, torch.int32, torch.bool])
def test_integer_params_raise_type_error(info, dtype):
    with pytest.raises(TypeError, match="floating point"):
        info.cls([torch.zeros(3, dtype=dtype)])


def test_error_names_the_parameter():
    good = torch.nn.Linear(2, 2)
    bad = torch.zeros(3, dtype=torch.int64)
    with pytest.raises(TypeError, match="encoder.scale"):
        MaskedSGD([("weight", good.weight), ("encoder.scale", bad)])


def _multi_group(cls, **kw):
    a, b, c = _p(3, 2), _p(4), _p(2, 2)
    opt = cls([a], lr=0.1, momentum=0.9, **kw)
    opt.add_param_group({"params": [b, c], "lr": 0.2})
    return opt, [a, b, c]


@pytest.mark.parametrize("info", ALL)
def test_sparse_grad_in_second_group_changes_nothing(info):
    opt, params = _multi_group(info.cls)
    a, b, c = params
    for p in params:  # build momentum state first
        p.grad = torch.ones_like(p)
    opt.step()
    before = _snapshot(params, opt)
    bufs = [opt.state[p]["momentum_buffer"].clone() for p in params]
    a.grad = torch.ones_like(a)
    b.grad = torch.ones_like(b)
    c.grad = torch.eye(2).to_sparse()
    with pytest.raises(RuntimeError, match="sparse"):
        opt.step()
    _unchanged(before, params, opt)
    assert all(torch.equal(opt.state[p]["momentum_buffer"], buf) for p, buf in zip(params, bufs))
    # nor with a meta-step that updates the parameters (La-MAML Eq. 8 path)
    for m in opt.meta_parameters():
        m.grad = torch.ones_like(m)
    with pytest.raises(RuntimeError, match="sparse"):
        opt.meta_step(update_params=True)
    _unchanged(before, params, opt)
    assert all(torch.equal(m.grad, torch.ones_like(m)) for m in opt.meta_parameters())


def test_sparse_grad_error_names_parameter_and_meta_backward_changes_nothing():
    emb = torch.nn.Embedding(5, 3, sparse=True)
    lin = torch.nn.Linear(3, 1)
    opt = MaskedSGD([("lin.weight", lin.weight), ("lin.bias", lin.bias), ("emb.weight", emb.weight)])
    lin(emb(torch.tensor([1, 2]))).sum().backward()
    before = _snapshot([lin.weight, lin.bias, emb.weight], opt)
    with pytest.raises(RuntimeError, match="emb.weight"):
        opt.step()
    _unchanged(before, [lin.weight, lin.bias, emb.weight], opt)
    opt.zero_grad()
    with opt.episode():
        lin.weight.grad = torch.ones_like(lin.weight)
        opt.step()
        lin(emb(torch.tensor([1, 2]))).sum().backward()
        with pytest.raises(RuntimeError, match="sparse"):
            opt.meta_backward()
        assert all(m.grad is None for m in opt.meta_parameters())


@pytest.mark.parametrize("info", ALL)
@pytest.mark.parametrize("key", ["lr", "weight_decay", "momentum"])
@pytest.mark.parametrize("value", [float("nan"), float("inf"), -1.0])
def test_bad_group_hyperparameter_set_after_construction_step(info, key, value):
    opt, params = _multi_group(info.cls)
    for p in params:
        p.grad = torch.ones_like(p)
    before = _snapshot(params, opt)
    opt.param_groups[1][key] = value
    with pytest.raises(ValueError, match=key):
        opt.step()
    _unchanged(before, params, opt)


@pytest.mark.parametrize("info", ALL)
@pytest.mark.parametrize("update_params", [False, True])
@pytest.mark.parametrize("value", [float("nan"), float("inf"), -1.0])
def test_bad_meta_lr_set_after_construction_meta_step(info, update_params, value):
    """A non-finite / negative meta learning rate must not silently corrupt the meta-parameters."""
    opt, params = _multi_group(info.cls)
    name = info.meta_lr
    for p in params:
        p.grad = torch.ones_like(p)
    for m in opt.meta_parameters():
        m.grad = torch.ones_like(m)
    before = _snapshot(params, opt)
    opt.param_groups[1][name] = value
    with pytest.raises(ValueError, match=name):
        opt.meta_step(update_params=update_params)
    _unchanged(before, params, opt)


@pytest.mark.parametrize("info", ALL)
def test_bad_lr_set_after_construction_meta_step_with_params(info):
    opt, params = _multi_group(info.cls)
    for p in params:
        p.grad = torch.ones_like(p)
    for m in opt.meta_parameters():
        m.grad = torch.ones_like(m)
    before = _snapshot(params, opt)
    opt.param_groups[0]["lr"] = float("nan")
    with pytest.raises(ValueError, match="lr"):
        opt.meta_step(update_params=True)
    _unchanged(before, params, opt)


@pytest.mark.parametrize("info", ALL)
@pytest.mark.parametrize("where", ["meta_grad", "param_grad"])
def test_non_finite_gradient_in_meta_step_changes_nothing(info, where):
    """Default policy 'skip': a warning, counted in skipped_updates; 'raise': FloatingPointError."""
    for policy in ("skip", "raise"):
        a, b, c = _p(3, 2), _p(4), _p(2, 2)
        opt = info.cls([a], lr=0.1, nonfinite=policy)
        opt.add_param_group({"params": [b, c], "lr": 0.2})
        params = [a, b, c]
        for p in params:
            p.grad = torch.ones_like(p)
        ms = opt.meta_parameters()
        for m in ms:
            m.grad = torch.ones_like(m)
        if where == "meta_grad":
            ms[2].grad[0] = float("nan")
        else:
            c.grad[0, 0] = float("inf")
        before = _snapshot(params, opt)
        if policy == "skip":
            with pytest.warns(RuntimeWarning, match="non-finite"):
                opt.meta_step(update_params=True)
            assert opt.skipped_updates == 1
        else:
            with pytest.raises(FloatingPointError, match="non-finite"):
                opt.meta_step(update_params=True)
        _unchanged(before, params, opt)


@pytest.mark.parametrize("info", ALL)
def test_non_finite_outer_gradient_in_meta_backward_changes_nothing(info):
    p, q = _p(3), _p(2)
    opt = info.cls([p, q], lr=0.1)
    before = _snapshot([p, q], opt)
    with opt.episode():
        p.grad, q.grad = torch.ones(3), torch.ones(2)
        opt.step()
        p.grad, q.grad = torch.ones(3), torch.tensor([1.0, float("nan")])
        with pytest.warns(RuntimeWarning, match="non-finite"):
            opt.meta_backward()
    assert all(m.grad is None for m in opt.meta_parameters())
    assert p.grad is None and q.grad is None  # no outer gradient was recorded
    _unchanged(before, [p, q], opt)


def test_add_param_group_validates_init_choices():
    """Per-group init options must be checked like the constructor's (not silently ignored)."""
    opt = MaskedSGD([_p(3)])
    with pytest.raises(ValueError, match="mask_init"):
        opt.add_param_group({"params": [_p(2)], "mask_init": "xavier"})
    with pytest.raises(ValueError, match="mask_init_value"):
        opt.add_param_group({"params": [_p(2)], "mask_init": "constant", "mask_init_value": float("nan")})
    assert len(opt.param_groups) == 1 and len(opt.meta_parameters()) == 1
    r = RectifiedLRSGD([_p(3)])
    with pytest.raises(ValueError, match="rate_init"):
        r.add_param_group({"params": [_p(2)], "rate_init": "normal"})
    assert len(r.param_groups) == 1


def test_malformed_init_arguments_name_the_argument():
    with pytest.raises(TypeError, match="mask_init_value"):
        MaskedSGD([_p(3)], mask_init="constant", mask_init_value="0.5")
    with pytest.raises(ValueError, match="rate_init_range"):
        RectifiedLRSGD([_p(3)], rate_init="uniform", rate_init_range=(0.1,))


# ---------------------------------------------------------------- hostile input, every optimizer
WEIRD = [float("nan"), float("inf"), -float("inf"), -1.0, -1e-12, 0.0, 1e-30, 1.0, 1e30]
shapes = st.lists(st.integers(0, 4), min_size=0, max_size=4)
layouts = st.sampled_from(["contiguous", "transposed", "channels_last", "sliced"])


def _param(shape, layout, dtype=torch.float32):
    t = torch.randn(shape, dtype=dtype)
    if layout == "transposed" and t.dim() >= 2:
        swapped = list(shape)
        swapped[0], swapped[-1] = swapped[-1], swapped[0]
        t = torch.randn(swapped, dtype=dtype).transpose(0, -1)  # non-contiguous view of `shape`
    elif layout == "channels_last" and t.dim() == 4:
        t = t.to(memory_format=torch.channels_last)
    elif layout == "sliced" and t.dim() >= 1:
        t = torch.randn([2 * shape[0]] + list(shape[1:]), dtype=dtype)[::2]
    assert list(t.shape) == list(shape)
    return torch.nn.Parameter(t)


def _state_of(opt, params):
    return [p.detach().clone() for p in params] + [m.detach().clone() for m in opt.meta_parameters()]


def _same_state(opt, params, snap):
    now = _state_of(opt, params)
    return all(torch.equal(a, b) or (a.isnan().any() and torch.equal(a.isnan(), b.isnan())) for a, b in zip(now, snap))


@given(info=st.sampled_from(OPTIMIZERS), key=st.sampled_from(["lr", "meta", "weight_decay", "momentum"]),
       value=st.sampled_from(WEIRD))
@settings(max_examples=60, deadline=None)
def test_constructor_hyperparameters(info, key, value):
    key = info.meta_lr if key == "meta" else key
    params = [torch.nn.Parameter(torch.randn(3, 2))]
    kwargs = {key: value}
    if key == "momentum" and not info.stochastic:
        kwargs["dampening"] = 0.0
    if not math.isfinite(value) or value < 0:
        with pytest.raises(ValueError, match=key):
            info.make(params, **kwargs)
    else:
        opt = info.make(params, **kwargs)
        assert opt.param_groups[0][key] == value


@given(info=st.sampled_from(OPTIMIZERS), shape=shapes, layout=layouts)
@settings(max_examples=80, deadline=None)
def test_step_on_odd_shapes_and_layouts_matches_contiguous(info, shape, layout):
    torch.manual_seed(0)
    p = _param(shape, layout)
    opt = info.make([p])
    q = torch.nn.Parameter(p.detach().contiguous().clone())
    ref = info.make([q])
    ref.load_state_dict(opt.state_dict())
    g = torch.randn(shape)
    p.grad, q.grad = g.clone(), g.clone().contiguous()
    torch.manual_seed(1); opt.step()
    torch.manual_seed(1); ref.step()
    torch.testing.assert_close(p.detach().contiguous(), q.detach())


@given(info=st.sampled_from(OPTIMIZERS), bad=st.sampled_from([float("nan"), float("inf")]),
       where=st.sampled_from(["meta_backward", "meta_step", "online"]))
@settings(max_examples=40, deadline=None)
def test_non_finite_gradients_never_poison_meta_parameters(info, bad, where):
    torch.manual_seed(0)
    p = torch.nn.Parameter(torch.randn(4, 3))
    kw = {}
    if where == "online":
        if not info.supports_online:
            return
        kw.update(info.online_kwargs)
    opt = info.make([p], **kw)
    if where == "online":
        p.grad = torch.randn(4, 3); opt.step()
        snap = [m.detach().clone() for m in opt.meta_parameters()]
        p.grad = torch.full((4, 3), bad)
        with pytest.warns(RuntimeWarning, match="non-finite"):
            opt.step()
    elif where == "meta_backward":
        snap = [m.detach().clone() for m in opt.meta_parameters()]
        with opt.episode():
            p.grad = torch.randn(4, 3); opt.step()
            p.grad = torch.randn(4, 3); p.grad[0, 0] = bad
            with pytest.warns(RuntimeWarning, match="non-finite"):
                opt.meta_backward()
        opt.meta_step()
    else:
        snap = [m.detach().clone() for m in opt.meta_parameters()]
        for m in opt.meta_parameters():
            m.grad = torch.full_like(m, bad)
        with pytest.warns(RuntimeWarning, match="non-finite"):
            opt.meta_step()
    assert all(torch.equal(a.detach(), b) for a, b in zip(opt.meta_parameters(), snap))
    assert opt.skipped_updates == 1


@pytest.mark.parametrize("info", infos())
def test_structural_errors(info):
    cls = info.cls
    with pytest.raises(ValueError, match="empty parameter list"):
        cls([])
    p = torch.nn.Parameter(torch.randn(3))
    with pytest.raises(ValueError, match="more than one parameter group"):
        cls([{"params": [p]}, {"params": [p]}])
    with pytest.raises(TypeError, match="complex"):
        cls([torch.nn.Parameter(torch.randn(3, dtype=torch.complex64))])
    with pytest.raises(ValueError, match="nonfinite"):
        cls([p], nonfinite="ignore")
    opt = info.make([p])
    p.grad = torch.randn(3).to_sparse()
    snap = _state_of(opt, [p])
    with pytest.raises(RuntimeError, match="sparse"):
        opt.step()
    assert _same_state(opt, [p], snap)
    p.grad = torch.randn(3)
    opt.param_groups[0]["lr"] = float("nan")
    with pytest.raises(ValueError, match="lr"):
        opt.step()
    assert _same_state(opt, [p], snap)


def test_functional_api_rejects_mismatches():
    p, g = [torch.randn(2, 3)], [torch.randn(2, 3)]
    rules = [(info.rule, info.meta_key) for info in OPTIMIZERS if info.elementwise]
    assert len(rules) == 4  # masked_sgd, rectified_sgd, lookahead_sgd, meta_sgd
    for fn, name in rules:
        with pytest.raises(ValueError, match=name):
            fn(p, g, [torch.randn(3, 2)], lr=0.1)
        with pytest.raises(ValueError, match="gradient"):
            fn(p, [torch.randn(3)], [torch.randn(2, 3)], lr=0.1)
        with pytest.raises(ValueError, match="same length"):
            fn(p + p, g, [torch.randn(2, 3)], lr=0.1)
    with pytest.raises(ValueError, match="gradient"):
        kronecker_sgd(p, [torch.randn(3)], [{"L0": torch.eye(2), "R0": torch.eye(3)}])


@pytest.mark.parametrize("info", infos())
def test_a_parameter_listed_twice_is_refused(info):
    """Tied weights listed twice would race in the kernels (and torch only warns)."""
    w = torch.nn.Parameter(torch.randn(3, 3))
    with pytest.raises(ValueError, match="more than once"):
        info.make([w, w])


def test_dispatchers_refuse_a_tensor_twice_in_the_list_they_write():
    from sparse_optim import functional as F
    p, g, m = torch.zeros(4), torch.ones(4), torch.zeros(4)
    with pytest.raises(ValueError, match="more than once"):
        F.gated_sgd_([p, p], [g, g], [m, m], [None, None], None, gate="step", lr=0.1)
    assert torch.equal(p, torch.zeros(4))
