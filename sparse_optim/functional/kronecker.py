"""Kronecker-factored (and low-rank Cholesky) meta-optimizer update rules (pure, differentiable).

KFO (Arnold et al., "When MAML can adapt fast and how to assist when it cannot"):

* KLin, Eq. 2 / 5: ``U(g) = vec(L G R) + b`` with ``A = R^T (x) L``; L, R start at identity.
* KFC, Eq. 6-7: ``U(g) = vec(L_h s(... s(L_1 G R_1) ...) R_h)``, ReLU ``s`` between layers.
* Gradient normalisation, appendix A.1.2: ``U(g) = c * ||g|| * U_core(g / ||g||)`` with a
  learnable scale ``c`` (initialised to 1).
* Low-rank Cholesky, appendix A.2.3, Eq. 8: ``A = C C^T``, ``U(g) = C (C^T g) + b`` with
  ``C`` of shape (numel, rank), Glorot-normal initialised; layers chained with ReLU (CFC).

The parameter update is ``p <- p - lr * U(d)`` with ``d`` the SGD direction.

Matrix view of a parameter (KFO appendix A.1.2): a weight ``(out, in)`` is one ``n x m`` =
``out x in`` matrix; a convolution ``N x C x H x W`` is a batch of N matrices ``HW x C``
sharing the factors (``n = HW, m = C``); vectors (biases) of size k are ``1 x k`` (so
``L`` is 1x1 and ``R`` is k x k, as in KFO A.1.1: m = 100, n = 1 -> 10,001 parameters);
scalars are ``1 x 1``.
"""
from __future__ import annotations

import math
from typing import Dict, List, Mapping, Sequence, Tuple

import torch

Tensor = torch.Tensor
VARIANTS = ("kronecker", "cholesky")


def matrix_shape(shape: Sequence[int]) -> Tuple[int, int, int]:
    """(batch, n, m) of the matrix view of a tensor of ``shape``."""
    shape = tuple(shape)
    if len(shape) == 0:
        return 1, 1, 1
    if len(shape) == 1:
        return 1, 1, shape[0]
    if len(shape) == 2:
        return 1, shape[0], shape[1]
    return shape[0], math.prod(shape[2:]), shape[1]


def to_matrix(t: Tensor) -> Tensor:
    b, n, m = matrix_shape(t.shape)
    if t.dim() <= 2:
        return t.reshape(b, n, m)
    return t.reshape(b, m, n).transpose(1, 2)


def from_matrix(mat: Tensor, shape: Sequence[int]) -> Tensor:
    shape = tuple(shape)
    if len(shape) <= 2:
        return mat.reshape(shape)
    return mat.transpose(1, 2).reshape(shape)


def factor_names(variant: str, depth: int, bias: bool, normalize: bool) -> List[str]:
    names = [f"{k}{i}" for i in range(depth) for k in (("L", "R") if variant == "kronecker" else ("C",))]
    return names + (["bias"] if bias else []) + (["scale"] if normalize else [])


def init_factors(
    shape: Sequence[int],
    *,
    variant: str = "kronecker",
    depth: int = 1,
    rank: int = 1,
    bias: bool = False,
    normalize: bool = False,
    init_gain: float = 1.0,
    dtype: torch.dtype = torch.float32,
    device: torch.device | str | None = None,
) -> Dict[str, Tensor]:
    """Meta-parameters of one parameter: identity Kronecker factors (KFO A.1), Glorot-normal
    Cholesky factors (A.2.3), zero bias, unit scale."""
    _, n, m = matrix_shape(shape)
    numel = math.prod(shape)
    kw = dict(dtype=dtype, device=device)
    out: Dict[str, Tensor] = {}
    for i in range(depth):
        if variant == "kronecker":
            out[f"L{i}"] = torch.eye(n, **kw)
            out[f"R{i}"] = torch.eye(m, **kw)
        else:
            std = init_gain * math.sqrt(2.0 / (numel + rank))
            out[f"C{i}"] = torch.randn(numel, rank, **kw) * std
    if bias:
        out["bias"] = torch.zeros(tuple(shape), **kw)
    if normalize:
        out["scale"] = torch.ones((), **kw)
    return out


def kronecker_transform(
    direction: Tensor,
    factors: Mapping[str, Tensor],
    *,
    variant: str = "kronecker",
    depth: int = 1,
    eps: float = 1e-12,
) -> Tensor:
    """``U(d)`` of the module docstring, same shape as ``d``, in the factors' precision."""
    first = factors["L0"] if variant == "kronecker" else factors["C0"]
    d = direction.to(first.dtype)
    norm = None
    if "scale" in factors:
        norm = d.norm().clamp_min(eps)
        d = d / norm
    if variant == "kronecker":
        h = to_matrix(d)
        for i in range(depth):
            if i > 0:
                h = torch.relu(h)
            h = factors[f"L{i}"] @ h @ factors[f"R{i}"]
        u = from_matrix(h, d.shape)
    elif variant == "cholesky":
        h = d.reshape(-1, 1)
        for i in range(depth):
            if i > 0:
                h = torch.relu(h)
            c = factors[f"C{i}"]
            h = c @ (c.transpose(0, 1) @ h)
        u = h.reshape(d.shape)
    else:
        raise ValueError(f"variant must be one of {VARIANTS}, got {variant!r}")
    if "bias" in factors:
        u = u + factors["bias"]
    if norm is not None:
        u = factors["scale"] * norm * u
    return u


def kronecker_update(
    param: Tensor, direction: Tensor, factors: Mapping[str, Tensor], *, lr: float, variant: str = "kronecker",
    depth: int = 1,
) -> Tensor:
    """``p - lr * U(d)`` (KFO Eq. 3 with the update of Eq. 5 / 7 / 8)."""
    u = kronecker_transform(direction, factors, variant=variant, depth=depth)
    return param - (lr * u).to(param.dtype)


def kronecker_sgd(
    params: Sequence[Tensor] | Mapping[str, Tensor],
    grads: Sequence[Tensor] | Mapping[str, Tensor],
    factors: Sequence[Mapping[str, Tensor]] | Mapping[str, Mapping[str, Tensor]],
    *,
    lr: float = 0.5,
    variant: str = "kronecker",
    depth: int = 1,
):
    """Functional KroneckerSGD step on lists or dicts of tensors; returns new tensors.

    Differentiable w.r.t. params, grads (second order) and every factor.
    """
    def one(p, g, f):
        if g.shape != p.shape:
            raise ValueError(f"gradient of shape {tuple(g.shape)} does not match parameter shape {tuple(p.shape)}")
        return kronecker_update(p, g, f, lr=lr, variant=variant, depth=depth)

    if isinstance(params, Mapping):
        return {k: one(params[k], grads[k], factors[k]) for k in params}
    if not (len(params) == len(grads) == len(factors)):
        raise ValueError(f"params, grads and factors must have the same length, got {len(params)}, {len(grads)}, {len(factors)}")
    return [one(p, g, f) for p, g, f in zip(params, grads, factors)]


def adapted_factors(
    factors: Mapping[str, Tensor],
    previous_direction: Tensor,
    grad: Tensor,
    *,
    lr,
    factor_lr: float,
    variant: str = "kronecker",
    depth: int = 1,
    create_graph: bool = False,
    transform=None,
) -> Dict[str, Tensor]:
    """KFO Eq. 4 (Algorithm 1): the factors' inner hypergradient step before update t+1,

        xi <- xi - factor_lr * dL(theta_{t+1})/dxi,   dL(theta_{t+1})/dxi = -lr * J_xi U_xi(d_t)^T g_{t+1},

    with ``d_t`` the direction of the previous update (made with ``factors``) and ``grad`` =
    ``g_{t+1}`` (signed as the update uses it). Returns new tensors ``factors[k] - factor_lr * h_k``;
    with ``create_graph`` the hypergradients ``h_k`` are differentiable too (second order), else
    they are constants. ``transform(d, factors)``
    replaces :func:`kronecker_transform` (e.g. a ``vmap``-ed one over a batch of tasks).
    """
    if transform is None:
        def transform(d, f):
            return kronecker_transform(d, f, variant=variant, depth=depth)
    if not create_graph:  # torch.func.grad: also traces under torch.compile (autograd.grad does not)
        direction, outer = previous_direction.detach(), grad.detach()
        free = {k: v.detach() for k, v in factors.items() if v.is_floating_point()}

        def surrogate(trainable):
            u = transform(direction, {**factors, **trainable})
            return -lr * (u * outer.to(u.dtype)).sum()

        hyper = torch.func.grad(surrogate)(free)
        return {**factors, **{k: factors[k] - factor_lr * h for k, h in hyper.items()}}
    with torch.enable_grad():
        # fresh views: the hypergradient is the partial derivative through U only, even where
        # ``grad`` itself depends on the factors (a second-order inner loop)
        leaves = ({k: (v.view_as(v) if v.requires_grad else v) for k, v in factors.items()} if create_graph
                  else {k: v.detach().requires_grad_(True) for k, v in factors.items()})
        keys = [k for k, v in leaves.items() if v.requires_grad]
        u = transform(previous_direction, leaves)
        surrogate = -lr * (u * grad.to(u.dtype)).sum()
        hyper = torch.autograd.grad(surrogate, [leaves[k] for k in keys], create_graph=create_graph,
                                    allow_unused=True)
    new = dict(factors)
    for k, h in zip(keys, hyper):
        if h is not None:
            new[k] = factors[k] - factor_lr * h
    return new


def kronecker_sgd_(
    params: List[Tensor],
    directions: List[Tensor],
    factors_list: List[Mapping[str, Tensor]],
    *,
    lr: float,
    variant: str = "kronecker",
    depth: int = 1,
    backend: str | None = None,
) -> None:
    """In place: ``params[i] -= lr * U(directions[i])`` with one batched op
    (:mod:`sparse_optim.ops.kronecker`), on the backend :func:`sparse_optim.ops.implementation`
    chooses. No graph is recorded."""
    from .. import ops

    if not params:
        return
    impl = ops.implementation(params[0].device, backend)
    op = ops.kronecker if impl is ops.reference else impl
    op.kronecker_update_(params, directions, factors_list, lr=lr, variant=variant, depth=depth)
