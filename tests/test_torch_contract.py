"""The torch.optim contract as user code relies on it (issue 13): copies, consumed gradients,
torch.optim's flags, and backends that cannot run."""
import copy
import io
import pickle

import pytest
import torch

import sparse_optim as so
from conftest import OPTIMIZERS, native_available

pytestmark = pytest.mark.ops


def _model(seed=0):
    torch.manual_seed(seed)
    return torch.nn.Sequential(torch.nn.Linear(4, 5), torch.nn.Tanh(), torch.nn.Linear(5, 2))


def _loss(model, seed):
    g = torch.Generator().manual_seed(seed)
    x, y = torch.randn(8, 4, generator=g), torch.randn(8, 2, generator=g)
    return ((model(x) - y) ** 2).mean()


def _meta_iteration(model, opt, seed):
    with opt.episode():
        for k in range(2):
            opt.zero_grad()
            _loss(model, seed + k).backward()
            opt.step()
        opt.zero_grad()
        _loss(model, seed + 7).backward()
        opt.meta_backward()
    opt.meta_step(update_params=True)
    opt.zero_grad()


def _copy_by_pickle(obj):
    buffer = io.BytesIO()
    torch.save(obj, buffer)
    buffer.seek(0)
    return torch.load(buffer, weights_only=False)


@pytest.mark.parametrize("copier", [copy.deepcopy, _copy_by_pickle, lambda o: pickle.loads(pickle.dumps(o))],
                         ids=["deepcopy", "torch.save", "pickle"])
@pytest.mark.parametrize("info", OPTIMIZERS, ids=lambda i: i.name)
def test_copies_keep_every_attribute_and_continue_bit_identically(info, copier):
    """Used to 'succeed' and then raise AttributeError ('_meta' / '_names') on first use."""
    model = _model()
    opt = info.make(model.named_parameters(), nonfinite="raise")
    if info.name == "stochastic":
        pytest.skip("draws its noise from the global generator: two copies cannot agree bit for bit")
    _meta_iteration(model, opt, 1)
    model2, opt2 = copier((model, opt))
    assert opt2.nonfinite == "raise" and opt2.backend == opt.backend
    assert [n for n, _ in opt2.named_meta_parameters()] == [n for n, _ in opt.named_meta_parameters()]
    params2 = list(model2.parameters())
    assert all(any(p is q for q in params2) for g in opt2.param_groups for p in g["params"])
    for seed in (10, 20):
        _meta_iteration(model, opt, seed)
        _meta_iteration(model2, opt2, seed)
    for a, b in zip(model.parameters(), model2.parameters()):
        assert torch.equal(a, b)
    for a, b in zip(opt.meta_parameters(), opt2.meta_parameters()):
        assert torch.equal(a, b)


def test_copy_inside_an_episode_is_refused():
    model = _model()
    opt = so.MaskedSGD(model.parameters())
    with opt.episode(), pytest.raises(RuntimeError, match="episode"):
        copy.deepcopy(opt)


@pytest.mark.parametrize("info", [i for i in OPTIMIZERS if i.name != "stochastic"], ids=lambda i: i.name)
def test_meta_step_with_update_params_consumes_theta_gradient(info):
    """The La-MAML loop without zero_grad applied the sum of all earlier outer gradients."""
    model = _model()
    opt = info.make(model.parameters())
    with opt.episode():
        opt.zero_grad()
        _loss(model, 0).backward()
        opt.step()
        opt.zero_grad()
        _loss(model, 1).backward()
        opt.meta_backward()
    assert all(p.grad is not None for p in model.parameters())
    opt.meta_step(update_params=True)
    assert all(p.grad is None for p in model.parameters())


def test_foreach_false_is_the_reference_path_and_fused_true_the_kernels():
    model = _model()
    for info in OPTIMIZERS:
        assert info.make(model.parameters(), foreach=False).backend == "reference"
        assert info.make(model.parameters(), foreach=True).backend is None
        assert info.make(model.parameters(), fused=False).backend is None
    if native_available():
        opt = so.MaskedSGD(model.parameters(), fused=True)
        assert opt.backend == "native"
        with so.ops.use_backend("reference"):  # fused=True is not overridden by the process default
            assert so.ops.backend(torch.device("cpu"), opt.backend) == "cpu"
    with pytest.raises(ValueError, match="foreach"):
        so.MaskedSGD(model.parameters(), backend="cpu", foreach=False)
    with pytest.raises(TypeError, match="fused"):
        so.MaskedSGD(model.parameters(), fused="yes")


def test_fused_step_equals_reference_step():
    if not native_available():
        pytest.skip("native extension not available")
    m1, m2 = _model(), _model()
    o1 = so.MetaSGD(m1.parameters(), fused=True)
    o2 = so.MetaSGD(m2.parameters(), foreach=False)
    for opt, model in ((o1, m1), (o2, m2)):
        _loss(model, 3).backward()
        opt.step()
    for a, b in zip(m1.parameters(), m2.parameters()):
        torch.testing.assert_close(a, b)


def test_tensor_lr_must_have_one_element():
    with pytest.raises(ValueError, match="Tensor lr must be 1-element"):
        so.MaskedSGD(_model().parameters(), lr=torch.tensor([0.1, 0.2]))


def test_a_backend_that_cannot_run_is_refused_at_construction():
    """backend='cuda' used to be accepted on a CPU-only machine (ops.backend() then said 'cuda')."""
    from sparse_optim.ops import native

    if not (native_available() and native.supports("cuda")):
        with pytest.raises(RuntimeError, match="cuda"):
            so.MaskedSGD(_model().parameters(), backend="cuda")
    if not native_available():
        with pytest.raises(RuntimeError, match="native"):
            so.MaskedSGD(_model().parameters(), backend="cpu")


def test_episode_restores_module_buffers_when_asked():
    """BatchNorm running statistics moved across an adaptation episode (0 -> 4 batches tracked)."""
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.BatchNorm1d(3), torch.nn.Linear(3, 2))
    opt = so.MaskedSGD(model.parameters())
    before = {k: v.clone() for k, v in model.state_dict().items()}

    def adapt(**kw):
        with opt.episode(**kw):
            for k in range(4):
                opt.zero_grad()
                _loss(model, k).backward()
                opt.step()

    adapt(buffers=model)
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k]), k
    adapt()  # the documented default: buffers are left as adaptation moved them
    assert int(model[1].num_batches_tracked) == 4
    with pytest.raises(TypeError, match="buffers"):
        with opt.episode(buffers=[torch.zeros(1)]):
            pass


def test_first_order_episode_restores_buffers_too():
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.BatchNorm1d(3), torch.nn.Linear(3, 2))
    sgd = torch.optim.SGD(model.parameters(), lr=0.1)
    mean = model[1].running_mean.clone()
    with so.first_order_episode(model.parameters(), sgd, buffers=model):
        _loss(model, 0).backward()
        sgd.step()
    assert torch.equal(model[1].running_mean, mean)


def test_default_masks_and_the_exact_sgd_setting():
    """The drop-in line freezes about half the coordinates by default (the paper's init);
    mask_init='constant', mask_init_value=0.0 is torch.optim.SGD exactly."""
    m1, m2 = _model(), _model()
    default = so.MaskedSGD(m1.parameters(), lr=0.1)
    assert 0.3 < default.sparsity()["overall"] < 0.7
    exact = so.MaskedSGD(m1.parameters(), lr=0.1, mask_init="constant", mask_init_value=0.0)
    sgd = torch.optim.SGD(m2.parameters(), lr=0.1)
    for opt, model in ((exact, m1), (sgd, m2)):
        _loss(model, 5).backward()
        opt.step()
    for a, b in zip(m1.parameters(), m2.parameters()):
        assert torch.equal(a, b)


def test_higher_without_tracked_grads_warns_that_masks_learn_nothing():
    higher = pytest.importorskip("higher")
    model = _model()
    opt = so.MaskedSGD(model.parameters())
    with pytest.warns(UserWarning, match="meta_backward"):
        with higher.innerloop_ctx(model, opt, copy_initial_weights=False, track_higher_grads=False) as (f, d):
            d.step(_loss(f, 0))
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with higher.innerloop_ctx(model, opt, copy_initial_weights=False) as (f, d):
            d.step(_loss(f, 0))


def test_load_state_dict_matches_parameters_by_name():
    """Same-shape parameters given in another order used to load with swapped masks, silently."""
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(3, 3), torch.nn.Linear(3, 3))
    named = list(model.named_parameters())
    opt = so.MaskedSGD(named, lr=0.1, momentum=0.9)
    for p in model.parameters():
        p.grad = torch.randn_like(p)
    opt.step()
    sd = opt.state_dict()
    reordered = so.MaskedSGD(list(reversed(named)), lr=0.1, momentum=0.9)
    reordered.load_state_dict(sd)
    for name, p in named:
        torch.testing.assert_close(reordered._meta[p]["mask_logits"], opt._meta[p]["mask_logits"])
        torch.testing.assert_close(reordered.state[p]["momentum_buffer"], opt.state[p]["momentum_buffer"])
    other = torch.nn.Linear(3, 3)
    renamed = so.MaskedSGD([("x.weight", other.weight), ("x.bias", other.bias)] + named[2:], lr=0.1)
    with pytest.raises(ValueError, match="names parameters"):
        renamed.load_state_dict(sd)


def test_shape_mismatch_names_both_sides():
    torch.manual_seed(0)
    a = torch.nn.Linear(3, 2)
    b = torch.nn.Linear(2, 3)
    sd = so.MaskedSGD([("w", a.weight)]).state_dict()
    with pytest.raises(ValueError, match=r"param0 \(saved as w\).*\(2, 3\).*\(3, 2\)"):
        so.MaskedSGD([b.weight]).load_state_dict(sd)  # matched by position: no names on this side


@pytest.mark.parametrize("cls", [so.RectifiedLRSGD, so.LookaheadLRSGD, so.MetaSGD])
def test_an_lr_schedule_on_learned_rates_is_refused(cls):
    """StepLR used to lower group['lr'] to 1e-4 while the rates stayed at 0.1, silently."""
    model = _model()
    opt = cls(model.parameters(), lr=0.1)
    sched = torch.optim.lr_scheduler.StepLR(opt, step_size=1, gamma=0.1)
    _loss(model, 0).backward()
    opt.step()
    sched.step()
    before = [p.detach().clone() for p in model.parameters()]
    with pytest.raises(ValueError, match="rate_lr"):
        opt.step()
    assert all(torch.equal(a, p) for a, p in zip(before, model.parameters()))


def test_an_lr_schedule_on_masked_sgd_scales_the_step():
    model = _model()
    opt = so.MaskedSGD(model.parameters(), lr=0.1, mask_init="constant")
    sched = torch.optim.lr_scheduler.StepLR(opt, step_size=1, gamma=0.1)
    sched.step()
    _loss(model, 0).backward()
    before = [p.detach().clone() for p in model.parameters()]
    opt.step()
    for a, p in zip(before, model.parameters()):
        torch.testing.assert_close(p.detach(), a - 0.01 * p.grad)
