"""Multi-tensor Kronecker-factored updates ``p -= lr * U(d)`` (reference op, pure PyTorch).

``U`` is that of :func:`sparse_optim.functional.kronecker.kronecker_transform`, the executable
specification: KLin (KFO Eq. 2 / 5) ``L G R + b``, KFC (Eq. 6-7) with ReLU between Kronecker
layers, the low-rank Cholesky form (appendix A.2.3, Eq. 8) ``C (C^T g) + b`` and gradient
normalisation (appendix A.1.2) ``c * ||d|| * U_core(d / ||d||)``. This op evaluates it for many
parameters at once:

* Parameters whose matrix views ``(B, n, m)`` (and factor shapes, dtype, device) agree form a
  group. Their directions are stacked into one buffer in the factors' precision (a lone
  parameter's direction is read in place), and each Kronecker layer is two batched GEMMs
  (``torch.bmm``) whose batch runs over the group.
* The B matrices of a convolution share their factors, so they merge into a GEMM dimension. In
  the *row frame* a parameter's buffer holds its matrices as ``(n, B, m)``: ``L H`` is the GEMM
  ``(n x n)(n x B*m)`` and ``H R`` the GEMM ``(n*B x m)(m x m)``. The *column frame* holds the
  transposes, ``(m, B, n)``, and computes ``R^T H^T`` then ``H^T L^T``.
* The column frame serves matrices ``n x m`` with ``m < n``, such as a thin 1600 x 5 weight: there
  the row frame's GEMM outputs would have a handful of columns, which MKL's sgemm runs at
  5-15 GFLOP/s, against 30-50 GFLOP/s for the transposed problem (2 cores; see
  ``benchmarks/bench_kronecker.py``). With ``n <= m`` the row frame is the faster one, also for
  convolutions (64 x 64 x 3 x 3: about 2x).
* The normalisation divides the buffer by each parameter's ``||d||`` and multiplies the result
  by ``c * ||d||``; the bias is the initial value of the last GEMM's output
  (``baddbmm_``). Each parameter is written once, ``p += -lr * U`` with ``U`` in the factors'
  precision, so bfloat16 / float16 parameters with float32 factors are rounded once.
"""
from __future__ import annotations

import math
from typing import Dict, Hashable, List, Mapping, Sequence, Tuple

import torch

from ..functional.kronecker import VARIANTS, from_matrix, matrix_shape, to_matrix

Tensor = torch.Tensor
Factors = Mapping[str, Tensor]

# permutations of a (B, n, m) matrix view into a frame's layout, and back
_ROW_FRAME, _ROW_FRAME_INVERSE = (1, 0, 2), (1, 0, 2)  # (n, B, m)
_COLUMN_FRAME, _COLUMN_FRAME_INVERSE = (2, 0, 1), (1, 2, 0)  # (m, B, n)


def kronecker_update_(
    params: Sequence[Tensor],
    directions: Sequence[Tensor],
    factors_list: Sequence[Factors],
    *,
    lr: float,
    variant: str = "kronecker",
    depth: int = 1,
    eps: float = 1e-12,
) -> None:
    """In place, for every i: ``params[i] -= lr * U(directions[i])`` with factors ``factors_list[i]``.

    ``factors_list[i]`` holds the meta-parameters of :func:`~sparse_optim.functional.kronecker.init_factors`
    (``L{k}``, ``R{k}`` or ``C{k}`` for k < depth, optional ``bias`` and ``scale``). ``U`` is
    computed in the factors' dtype; the result equals ``kronecker_transform`` per parameter up to
    floating-point rounding. Records no autograd graph.
    """
    check_arguments(params, directions, factors_list, variant, depth)
    with torch.no_grad():
        targets: List[Tensor] = []
        updates: List[Tensor] = []
        for members in _groups(params, factors_list, variant, depth).values():
            group_params = [params[i] for i in members]
            frame = _KroneckerFrame(group_params[0].shape) if variant == "kronecker" else _CholeskyFrame()
            updates += _group_updates(frame, [directions[i] for i in members], [factors_list[i] for i in members],
                                      [p.shape for p in group_params], depth, eps)
            targets += group_params
        if targets:
            torch._foreach_add_(targets, updates, alpha=-lr)


def _factor_names(variant: str, depth: int) -> List[str]:
    """The factor names every parameter needs (besides the optional ``bias`` and ``scale``)."""
    kinds = ("L", "R") if variant == "kronecker" else ("C",)
    return [f"{kind}{k}" for k in range(depth) for kind in kinds]


def check_variant(variant: str, depth: int) -> None:
    """ValueError unless ``variant`` is one of VARIANTS and ``depth`` a positive integer."""
    if variant not in VARIANTS:
        raise ValueError(f"variant must be one of {VARIANTS}, got {variant!r}")
    if isinstance(depth, bool) or not isinstance(depth, int) or depth < 1:
        raise ValueError(f"depth must be a positive integer, got {depth!r}")


def check_arguments(
    params: Sequence[Tensor], directions: Sequence[Tensor], factors_list: Sequence[Factors], variant: str, depth: int
) -> None:
    """ValueError naming the first inconsistency between parameters, directions and factors."""
    check_variant(variant, depth)
    if not len(params) == len(directions) == len(factors_list):
        raise ValueError(f"params, directions and factors_list must have the same length, got "
                         f"{len(params)}, {len(directions)}, {len(factors_list)}")
    names = _factor_names(variant, depth)
    for i, (p, d, factors) in enumerate(zip(params, directions, factors_list)):
        if d.shape != p.shape:
            raise ValueError(f"directions[{i}] has shape {tuple(d.shape)}, expected the parameter's {tuple(p.shape)}")
        missing = [name for name in names if name not in factors]
        if missing:
            raise ValueError(f"factors_list[{i}] lacks {missing} ({variant}, depth {depth})")
        for name, want in _expected_shapes(p.shape, factors, names):
            got = tuple(factors[name].shape)
            if got != want:
                raise ValueError(f"factors_list[{i}][{name!r}] has shape {got}, expected {want} for a parameter "
                                 f"of shape {tuple(p.shape)}")


def _expected_shapes(shape: torch.Size, factors: Factors, names: List[str]) -> List[Tuple[str, Tuple]]:
    """(name, expected shape) of every factor; a Cholesky factor is (numel, rank) for any rank."""
    _, n, m = matrix_shape(shape)
    numel = math.prod(shape)
    side = {"L": (n, n), "R": (m, m)}

    def cholesky(t: Tensor) -> Tuple:
        return (numel, t.shape[1]) if t.dim() == 2 else (numel, "rank")

    out = [(name, side[name[0]] if name[0] in side else cholesky(factors[name])) for name in names]
    if "bias" in factors:
        out.append(("bias", tuple(shape)))
    if "scale" in factors:
        out.append(("scale", ()))
    return out


def _groups(params: Sequence[Tensor], factors_list: Sequence[Factors], variant: str,
            depth: int) -> Dict[Hashable, List[int]]:
    """Indices of the parameters that can share batched GEMMs, by group."""
    groups: Dict[Hashable, List[int]] = {}
    for i, (p, factors) in enumerate(zip(params, factors_list)):
        first = factors["L0" if variant == "kronecker" else "C0"]
        if variant == "kronecker":
            shape_key = matrix_shape(p.shape)
        else:  # the Cholesky rule acts on the flattened parameter
            shape_key = (p.numel(),) + tuple(factors[f"C{k}"].shape[1] for k in range(depth))
        key = (shape_key, first.dtype, first.device, "bias" in factors, "scale" in factors)
        groups.setdefault(key, []).append(i)
    return groups


def _stack_copy(tensors: Sequence[Tensor], dtype: torch.dtype) -> Tensor:
    """A new buffer holding ``tensors`` (same shape, any layout) along dim 0, in ``dtype``."""
    return torch.stack(tensors).to(dtype)


def _load(views: Sequence[Tensor], dtype: torch.dtype) -> Tensor:
    """A group's directions along dim 0, in ``dtype``: a lone parameter's view is used as it is
    (the GEMMs read any strides), several are stacked. Read only."""
    return views[0].unsqueeze(0).to(dtype) if len(views) == 1 else _stack_copy(views, dtype)


def _stack_factors(tensors: Sequence[Tensor]) -> Tensor:
    return tensors[0].unsqueeze(0) if len(tensors) == 1 else torch.stack(tensors)


def _normalize(h: Tensor, factors: Sequence[Factors], eps: float) -> Tuple[Tensor, Tensor]:
    """KFO A.1.2: each parameter's slice of ``h`` divided by its norm ``max(||d||, eps)``, and
    ``c * max(||d||, eps)``, shaped to multiply the result."""
    norms = torch.linalg.vector_norm(h.flatten(1), dim=1).clamp_min(eps)
    shape = (-1,) + (1,) * (h.dim() - 1)
    scales = _stack_factors([f["scale"] for f in factors]).to(h.dtype)
    return h / norms.view(shape), (scales * norms).view(shape)


def _gemm(x: Tensor, y: Tensor, initial: Tensor | None) -> Tensor:
    """``x @ y`` batched, or ``initial + x @ y`` written into ``initial``."""
    if initial is None:
        return torch.bmm(x, y)
    return initial.view(x.shape[0], x.shape[1], y.shape[2]).baddbmm_(x, y)


class _KroneckerFrame:
    """A group's (B, n, m) matrix views in the row frame, (n, B, m), or the column frame, (m, B, n)."""

    first_factor = "L0"

    def __init__(self, shape: torch.Size) -> None:
        _, n, m = matrix_shape(shape)
        self.row = n <= m
        self.order, self.inverse = (_ROW_FRAME, _ROW_FRAME_INVERSE) if self.row else (_COLUMN_FRAME,
                                                                                      _COLUMN_FRAME_INVERSE)

    def load(self, t: Tensor) -> Tensor:
        return to_matrix(t).permute(self.order)

    def unload(self, u: Tensor, shape: torch.Size) -> Tensor:
        return from_matrix(u.permute(self.inverse), shape)

    def layer(self, h: Tensor, factors: Sequence[Factors], k: int, bias: Tensor | None) -> Tensor:
        """``L_k H R_k`` (+ b), KFO Eq. 5: row frame ``(L H) R``, column frame ``(R^T H^T) L^T``;
        ``h`` of shape (P, a, B, c), each product one GEMM per parameter."""
        left = _stack_factors([f[f"L{k}"] for f in factors])
        right = _stack_factors([f[f"R{k}"] for f in factors])
        first, second = (left, right) if self.row else (right.mT, left.mT)
        p, a, b, c = h.shape
        half = torch.bmm(first, h.reshape(p, a, b * c))  # a view where h's strides allow: BLAS reads them
        return _gemm(half.view(p, a * b, c), second, bias).view(p, a, b, c)


class _CholeskyFrame:
    """A group's flattened directions as row vectors g, (1, numel)."""

    first_factor = "C0"

    def load(self, t: Tensor) -> Tensor:
        return t.reshape(1, -1)

    def unload(self, u: Tensor, shape: torch.Size) -> Tensor:
        return u.view(shape)

    def layer(self, h: Tensor, factors: Sequence[Factors], k: int, bias: Tensor | None) -> Tensor:
        """``C_k (C_k^T g)`` (+ b), KFO Eq. 8, as ``(g C) C^T``: both GEMVs have one output row."""
        c = _stack_factors([f[f"C{k}"] for f in factors])
        return _gemm(torch.bmm(h, c), c.mT, bias)


def _group_updates(frame, directions: List[Tensor], factors: List[Factors], shapes: List[torch.Size], depth: int,
                   eps: float) -> List[Tensor]:
    """``U(d)`` of one group (KFO Eq. 5 / 7 / 8 and A.1.2), as views of one buffer in the given shapes:
    load, normalise, layers with ReLU between them, the bias added by the last GEMM, the scale."""
    dtype = factors[0][frame.first_factor].dtype
    h = _load([frame.load(d) for d in directions], dtype)
    coef = None
    if "scale" in factors[0]:
        h, coef = _normalize(h, factors, eps)
    for k in range(depth):
        if k > 0:
            h = h.relu_()
        bias = None
        if k == depth - 1 and "bias" in factors[0]:
            bias = _stack_copy([frame.load(f["bias"]) for f in factors], dtype)
        h = frame.layer(h, factors, k, bias)
    if coef is not None:
        h = h.mul_(coef)
    return [frame.unload(u, shape) for u, shape in zip(h, shapes)]
