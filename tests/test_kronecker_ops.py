"""The batched Kronecker update op (reference and native) against the per-parameter specification,
:func:`sparse_optim.functional.kronecker.kronecker_transform`."""
from __future__ import annotations

from typing import Dict, List
from unittest import mock

import pytest
import torch

import sparse_optim.optim.kronecker as kronecker_optim
from sparse_optim.functional.kronecker import kronecker_sgd_
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

import sparse_optim as so
from sparse_optim import ops
from sparse_optim.functional.kronecker import init_factors, kronecker_transform
from sparse_optim.ops import kronecker as reference_op, native

needs_native = pytest.mark.skipif(not native.available(), reason="native extension not available")
IMPLEMENTATIONS = [
    pytest.param(reference_op, id="reference"),
    pytest.param(native, id="native", marks=needs_native),
]

# linear (square, wide, thin), convolutions (n < m, n > m, 1-d), vectors, scalars, empty
SHAPES = [(3, 5), (6, 6), (2, 40), (40, 2), (1, 9), (9, 1), (4, 3, 2, 2), (2, 5, 1, 3), (3, 2, 3, 3), (4, 3, 5),
          (7,), (1,), (), (0,)]
# (parameter dtype, factor dtype) pairs: factors of low-precision parameters are float32 (meta_dtype)
DTYPES = [(torch.float32, torch.float32), (torch.float64, torch.float64), (torch.bfloat16, torch.float32),
          (torch.float16, torch.float32)]
LAYOUTS = ["contiguous", "transposed", "strided"]


def tolerances(dtype: torch.dtype) -> Dict[str, float]:
    """Both sides compute in the factors' precision and round once into the parameter's: they differ
    by summation order, and in bfloat16 / float16 by one unit in the last place where the two
    roundings fall on either side of a tie."""
    return {
        torch.float64: dict(rtol=1e-10, atol=1e-10),
        torch.float32: dict(rtol=1e-5, atol=1e-5),
        torch.float16: dict(rtol=2e-3, atol=2e-3),
        torch.bfloat16: dict(rtol=1.6e-2, atol=1.6e-2),
    }[dtype]


def make(shape, dtype, layout: str, gen: torch.Generator) -> torch.Tensor:
    """A tensor of `shape` in the given memory layout: contiguous, dense but permuted, or strided."""
    def randn(size):
        return torch.randn(size, generator=gen, dtype=torch.float64).to(dtype)

    if layout == "transposed" and len(shape) >= 2:
        return randn(tuple(reversed(shape))).permute(*reversed(range(len(shape))))
    if layout == "strided" and len(shape) >= 1:
        return randn((2 * shape[0],) + tuple(shape[1:]))[::2]
    return randn(shape)


def random_factors(shape, case, dtype, gen: torch.Generator) -> Dict[str, torch.Tensor]:
    """init_factors moved away from the identity / Glorot start, with a scale of either sign."""
    factors = init_factors(shape, variant=case["variant"], depth=case["depth"], rank=case["rank"], bias=case["bias"],
                           normalize=case["normalize"], dtype=dtype)
    return {k: v + 0.3 * torch.randn(v.shape, generator=gen, dtype=torch.float64).to(dtype)
            for k, v in factors.items()}


cases = st.fixed_dictionaries(
    {
        "shapes": st.lists(st.sampled_from(SHAPES), min_size=1, max_size=6),
        "repeat": st.integers(1, 3),  # several parameters of one shape
        "variant": st.sampled_from(["kronecker", "cholesky"]),
        "depth": st.integers(1, 3),
        "rank": st.integers(1, 3),
        "bias": st.booleans(),
        "normalize": st.booleans(),
        "dtypes": st.sampled_from(DTYPES),
        "param_layout": st.sampled_from(LAYOUTS),
        "direction_layout": st.sampled_from(LAYOUTS),
        "lr": st.sampled_from([0.5, 0.01]),
        "seed": st.integers(0, 2**31 - 1),
    }
)


def inputs(case):
    p_dtype, f_dtype = case["dtypes"]
    gen = torch.Generator().manual_seed(case["seed"])
    shapes = case["shapes"] * case["repeat"]
    params = [make(s, p_dtype, case["param_layout"], gen) for s in shapes]
    directions = [make(s, p_dtype, case["direction_layout"], gen) for s in shapes]
    factors = [random_factors(s, case, f_dtype, gen) for s in shapes]
    return params, directions, factors


def spec(params, directions, factors, case) -> List[torch.Tensor]:
    """``p - lr * U(d)`` per parameter, computed in the factors' precision and rounded once."""
    out = []
    for p, d, f in zip(params, directions, factors):
        u = kronecker_transform(d, f, variant=case["variant"], depth=case["depth"])
        out.append((p.to(u.dtype) - case["lr"] * u).to(p.dtype))
    return out


def run(impl, params, directions, factors, case) -> None:
    impl.kronecker_update_(params, directions, factors, lr=case["lr"], variant=case["variant"], depth=case["depth"])


@pytest.mark.parametrize("impl", IMPLEMENTATIONS)
@given(case=cases)
@settings(max_examples=60, deadline=None)
def test_batched_update_equals_per_parameter_spec(impl, case):
    params, directions, factors = inputs(case)
    want = spec(params, directions, factors, case)
    gaps = [(p._base, p._base[1::2].clone()) for p in params if p._base is not None and case["param_layout"] == "strided"]
    run(impl, params, directions, factors, case)
    for i, (got, expected) in enumerate(zip(params, want)):
        assert got.dtype == expected.dtype and got.shape == expected.shape
        torch.testing.assert_close(got, expected, **tolerances(got.dtype), msg=lambda m: f"params[{i}]: {m}")
    for base, gap in gaps:  # strided parameters: the op writes through the views, not between them
        assert torch.equal(base[1::2], gap)


@needs_native
@given(case=cases)
@settings(max_examples=40, deadline=None)
def test_native_op_matches_reference_op(case):
    params, directions, factors = inputs(case)
    expected = [p.clone() for p in params]
    run(reference_op, expected, directions, factors, case)
    no_fallback = mock.patch.object(reference_op, "kronecker_update_", side_effect=AssertionError("fell back"))
    with no_fallback:
        run(native, params, directions, factors, case)
    for got, want in zip(params, expected):
        torch.testing.assert_close(got, want, **tolerances(got.dtype))


@pytest.mark.parametrize("impl", IMPLEMENTATIONS)
def test_directions_and_factors_are_not_written(impl):
    case = dict(variant="kronecker", depth=2, rank=1, bias=True, normalize=True, lr=0.3)
    gen = torch.Generator().manual_seed(0)
    shapes = [(4, 3, 2, 2), (4, 3, 2, 2), (5,)]
    params = [torch.randn(s, generator=gen) for s in shapes]
    directions = [torch.randn(s, generator=gen) for s in shapes]
    factors = [random_factors(s, case, torch.float32, gen) for s in shapes]
    frozen = [d.clone() for d in directions], [{k: v.clone() for k, v in f.items()} for f in factors]
    run(impl, params, directions, factors, case)
    for d, d0 in zip(directions, frozen[0]):
        assert torch.equal(d, d0)
    for f, f0 in zip(factors, frozen[1]):
        assert all(torch.equal(f[k], f0[k]) for k in f)


@pytest.mark.parametrize("impl", IMPLEMENTATIONS)
def test_mixed_bias_presence_and_empty_lists(impl):
    gen = torch.Generator().manual_seed(1)
    params = [torch.randn(3, 4, generator=gen), torch.randn(3, 4, generator=gen)]
    directions = [torch.randn(3, 4, generator=gen) for _ in params]
    factors = [init_factors((3, 4), bias=True), init_factors((3, 4))]
    factors[0]["bias"].add_(1.0)
    want = [p - 0.1 * (d + b) for p, d, b in zip(params, directions, [factors[0]["bias"], 0])]
    impl.kronecker_update_(params, directions, factors, lr=0.1)
    for got, expected in zip(params, want):
        torch.testing.assert_close(got, expected)
    impl.kronecker_update_([], [], [], lr=0.1)


@pytest.mark.parametrize("impl", IMPLEMENTATIONS)
def test_parameters_of_several_dtypes_in_one_call(impl):
    """float32 and bfloat16 parameters of one shape (float32 factors) share a group; float64 ones
    (float64 factors) form their own."""
    case = dict(variant="kronecker", depth=1, rank=1, bias=True, normalize=False, lr=0.4)
    gen = torch.Generator().manual_seed(2)
    dtypes = [(torch.float32, torch.float32), (torch.bfloat16, torch.float32), (torch.float64, torch.float64)]
    params = [make((3, 2, 2, 2), p_dtype, "contiguous", gen) for p_dtype, _ in dtypes]
    directions = [make((3, 2, 2, 2), p_dtype, "transposed", gen) for p_dtype, _ in dtypes]
    factors = [random_factors((3, 2, 2, 2), case, f_dtype, gen) for _, f_dtype in dtypes]
    want = spec(params, directions, factors, case)
    run(impl, params, directions, factors, case)
    for got, expected in zip(params, want):
        torch.testing.assert_close(got, expected, **tolerances(got.dtype))


def bad_calls():
    p, d = torch.zeros(3, 4), torch.zeros(3, 4)
    good = init_factors((3, 4))
    return [
        (dict(params=[p], directions=[d, d], factors_list=[good]), "same length|directions"),
        (dict(params=[p], directions=[d], factors_list=[]), "same length|factor dicts"),
        (dict(params=[p], directions=[torch.zeros(4, 3)], factors_list=[good]), "shape"),
        (dict(params=[p], directions=[d], factors_list=[{"L0": good["L0"]}]), "R0"),
        (dict(params=[p], directions=[d], factors_list=[{"L0": torch.eye(4), "R0": good["R0"]}]), "shape"),
        (dict(params=[p], directions=[d], factors_list=[good], variant="svd"), "variant"),
        (dict(params=[p], directions=[d], factors_list=[good], depth=0), "depth"),
        (dict(params=[p], directions=[d], factors_list=[{**good, "bias": torch.zeros(4)}]), "bias"),
        (dict(params=[p], directions=[d], factors_list=[{"C0": torch.zeros(11, 2)}], variant="cholesky"), "shape"),
    ]


@pytest.mark.parametrize("impl", IMPLEMENTATIONS)
@pytest.mark.parametrize("index", range(len(bad_calls())))
def test_clear_errors_and_nothing_written(impl, index):
    kwargs, match = bad_calls()[index]
    before = kwargs["params"][0].clone()
    with pytest.raises(ValueError, match=match):
        impl.kronecker_update_(lr=0.1, **kwargs)
    assert torch.equal(kwargs["params"][0], before)


def opcheck_args(variant: str, p_dtype: torch.dtype, with_bias: bool, with_scale: bool, requires_grad: bool):
    gen = torch.Generator().manual_seed(0)
    shapes = [(4, 3, 2, 2), (4, 3, 2, 2), (2, 7), (5,)]
    params = [torch.randn(s, generator=gen).to(p_dtype) for s in shapes]
    directions = [torch.randn(s, generator=gen).to(p_dtype) for s in shapes]
    case = dict(variant=variant, depth=2, rank=2, bias=with_bias, normalize=with_scale)
    factors = [{k: v.requires_grad_(requires_grad) for k, v in random_factors(s, case, torch.float32, gen).items()}
               for s in shapes]
    lefts = [f[f"{'L' if variant == 'kronecker' else 'C'}{k}"] for f in factors for k in range(2)]
    rights = [f[f"R{k}"] for f in factors for k in range(2)] if variant == "kronecker" else []
    biases = [f["bias"] for f in factors] if with_bias else []
    scales = [f["scale"] for f in factors] if with_scale else []
    return (params, directions, lefts, rights, biases, scales, variant, 2, 0.3, 1e-12)


@needs_native
@pytest.mark.parametrize("variant,p_dtype,with_bias,with_scale,requires_grad", [
    ("kronecker", torch.float32, True, True, False),
    ("kronecker", torch.bfloat16, False, False, True),
    ("cholesky", torch.float32, True, False, True),
])
def test_opcheck_kronecker_update(variant, p_dtype, with_bias, with_scale, requires_grad):
    # schema mutation annotations, autograd registration, fake tensor, AOT dispatch
    args = opcheck_args(variant, p_dtype, with_bias, with_scale, requires_grad)
    torch.library.opcheck(torch.ops.sparse_optim.kronecker_update_.default, args)


@pytest.mark.parametrize("backend,module", [("reference", reference_op), pytest.param("cpu", native, marks=needs_native)])
def test_dispatch_follows_the_backend(backend, module):
    p, d = [torch.zeros(2, 3)], [torch.ones(2, 3)]
    with ops.use_backend(backend), mock.patch.object(module, "kronecker_update_") as called:
        kronecker_sgd_(p, d, [init_factors((2, 3))], lr=0.1)
    called.assert_called_once()


def tiny_model():
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Conv2d(2, 3, 3), torch.nn.Flatten(), torch.nn.Linear(3 * 4 * 4, 2))


@pytest.mark.parametrize("kw", [dict(), dict(depth=2, bias=True, normalize=True), dict(variant="cholesky", rank=2)])
def test_optimizer_step_is_one_batched_call_matching_the_spec(kw):
    model = tiny_model()
    opt = so.KroneckerSGD(model.parameters(), lr=0.2, momentum=0.5, **kw)
    with torch.no_grad():
        for m in opt.meta_parameters():
            m.add_(0.1 * torch.randn_like(m))
    x, y = torch.randn(4, 2, 6, 6), torch.tensor([0, 1, 1, 0])
    F.cross_entropy(model(x), y).backward()
    want = [p.detach() - 0.2 * kronecker_transform(p.grad, opt._meta[p], variant=kw.get("variant", "kronecker"),
                                                   depth=kw.get("depth", 1)).detach()
            for p in model.parameters()]
    with mock.patch.object(kronecker_optim, "kronecker_sgd_", wraps=kronecker_sgd_) as batched:
        opt.step()
    batched.assert_called_once()
    for p, expected in zip(model.parameters(), want):
        torch.testing.assert_close(p.detach(), expected)


def test_differentiable_step_keeps_the_per_parameter_path():
    """differentiable=True builds the graph per parameter; the batched op records none."""
    model = tiny_model()
    params = [p.clone() for p in model.parameters()]  # non-leaf copies stepped in place
    opt = so.KroneckerSGD(params, lr=0.2, differentiable=True)
    for p in params:
        p.grad = torch.randn(p.shape)
    with mock.patch.object(kronecker_optim, "kronecker_sgd_") as batched:
        opt.step()
    batched.assert_not_called()
    assert all(p.grad_fn is not None for p in params)
    grads = torch.autograd.grad(sum(p.sum() for p in params), opt.meta_parameters(), allow_unused=True)
    assert any(g is not None for g in grads)
