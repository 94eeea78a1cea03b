"""Fused elementwise ops in Triton: CUDA tensors get fused updates without nvcc.

PyTorch's CUDA wheels ship Triton, so a GPU machine whose torch came from pip (no CUDA toolkit)
still runs one fused pass per tensor instead of the reference ops' several. The math is that of
:mod:`sparse_optim.ops.reference` (the specification); the gates are the built-in kinds of
:mod:`sparse_optim.functional.gates` (``step``, ``relu``, ``linear``). Inputs without a kernel
(other gates, non-contiguous or mismatched tensors, other dtypes) raise ``NotImplementedError``
before anything is written, and the dispatchers use the reference ops. Correctness is tested on
the CPU with Triton's interpreter (``TRITON_INTERPRET=1``).
"""
from __future__ import annotations

import os
from typing import List, Optional

import torch

from . import kronecker, reference

Tensor = torch.Tensor
GATE_CODES = {"step": 0, "relu": 1, "linear": 2}
_BLOCK = 1024
_DTYPES = (torch.float32, torch.float16, torch.bfloat16)  # float64: Triton passes float scalars as float32

try:  # Triton is optional: torch's CUDA wheels ship it, CPU-only installs may not
    import triton
    import triton.language as tl
except ImportError:  # pragma: no cover - depends on the installation
    triton = None


def available(device_type: str = "cuda") -> bool:
    """Whether these ops can run tensors on ``device_type`` (CUDA with Triton; any device
    under ``TRITON_INTERPRET=1``, for tests)."""
    if triton is None:
        return False
    if os.environ.get("TRITON_INTERPRET") == "1":
        return True
    return device_type == "cuda" and torch.cuda.is_available()


if triton is not None:

    @triton.jit
    def _gate(m, KIND: tl.constexpr):
        if KIND == 0:
            return tl.where(m >= 0, 1.0, 0.0)
        elif KIND == 1:
            return tl.maximum(m, 0.0)
        else:
            return m

    @triton.jit
    def _gated_step_kernel(p_ptr, g_ptr, m_ptr, buf_ptr, tr_ptr, n, scale, weight_decay, momentum, dampening,
                           trace_decay, KIND: tl.constexpr, MOMENTUM: tl.constexpr, FRESH: tl.constexpr,
                           NESTEROV: tl.constexpr, MAXIMIZE: tl.constexpr, DECAY: tl.constexpr,
                           TRACE: tl.constexpr, BLOCK: tl.constexpr):
        offsets = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
        inside = offsets < n
        p_raw = tl.load(p_ptr + offsets, mask=inside)
        p = p_raw.to(tl.float32)  # float32 arithmetic throughout (half inputs: rounded once on store)
        d = tl.load(g_ptr + offsets, mask=inside).to(tl.float32)
        if MAXIMIZE:
            d = -d
        if DECAY:
            d = d + weight_decay * p
        if MOMENTUM:
            if FRESH:
                buf = d
            else:
                buf_raw = tl.load(buf_ptr + offsets, mask=inside)
                buf = buf_raw.to(tl.float32) * momentum + (1 - dampening) * d
            tl.store(buf_ptr + offsets, buf.to(buf_ptr.dtype.element_ty), mask=inside)
            if NESTEROV:
                d = d + momentum * buf
            else:
                d = buf
        m = tl.load(m_ptr + offsets, mask=inside).to(tl.float32)
        new = p - scale * _gate(m, KIND) * d
        tl.store(p_ptr + offsets, new.to(p_raw.dtype), mask=inside)
        if TRACE:
            t = tl.load(tr_ptr + offsets, mask=inside)
            tl.store(tr_ptr + offsets, (trace_decay * t.to(tl.float32) + d).to(t.dtype), mask=inside)

    @triton.jit
    def _meta_grad_kernel(mg_ptr, g_ptr, tr_ptr, m_ptr, n, scale, KIND: tl.constexpr, GATED: tl.constexpr,
                          BLOCK: tl.constexpr):
        offsets = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
        inside = offsets < n
        mg_raw = tl.load(mg_ptr + offsets, mask=inside)
        prod = (tl.load(g_ptr + offsets, mask=inside).to(tl.float32)
                * tl.load(tr_ptr + offsets, mask=inside).to(tl.float32))
        if GATED:  # true derivative: relu' = 1[m > 0]; step and linear are handled as identity
            m = tl.load(m_ptr + offsets, mask=inside).to(tl.float32)
            prod = prod * tl.where(m > 0, 1.0, 0.0)
        tl.store(mg_ptr + offsets, (mg_raw.to(tl.float32) - scale * prod).to(mg_raw.dtype), mask=inside)


def _check(op: str, kind: str, *lists: List[Optional[Tensor]]) -> None:
    """NotImplementedError (nothing written yet) for inputs without a kernel."""
    if kind not in GATE_CODES:
        raise NotImplementedError(f"{op}: no Triton kernel for gate kind {kind!r}")
    for tensors in zip(*lists):
        present = [t for t in tensors if t is not None]
        first = present[0]
        if any(t.shape != first.shape or t.device != first.device or not t.is_contiguous()
               or t.dtype not in _DTYPES for t in present):
            raise NotImplementedError(f"{op}: Triton kernels need contiguous float tensors of one shape and device")


def _grid(n: int):
    return (triton.cdiv(n, _BLOCK),)


def gated_sgd_step_(params, grads, metas, momentum_buffers, traces, *, kind: str, scale: float,
                    weight_decay: float = 0.0, momentum: float = 0.0, dampening: float = 0.0,
                    nesterov: bool = False, maximize: bool = False, trace_decay: float = 1.0) -> None:
    """:func:`sparse_optim.ops.reference.gated_sgd_step_`, one fused launch per tensor."""
    if not params:
        return
    buffers = list(momentum_buffers) if momentum else [None] * len(params)
    _check("gated_sgd_step_", kind, params, grads, metas, [b for b in buffers],
           traces if traces is not None else [None] * len(params))
    for i, (p, g, m) in enumerate(zip(params, grads, metas)):
        fresh = momentum != 0 and buffers[i] is None
        if fresh:
            buffers[i] = torch.empty_like(g)
        buf = buffers[i] if momentum else p
        trace = traces[i] if traces is not None else p
        n = p.numel()
        if n:
            _gated_step_kernel[_grid(n)](
                p, g, m, buf, trace, n, float(scale), float(weight_decay), float(momentum), float(dampening),
                float(trace_decay), KIND=GATE_CODES[kind], MOMENTUM=momentum != 0, FRESH=fresh, NESTEROV=nesterov,
                MAXIMIZE=maximize, DECAY=weight_decay != 0, TRACE=traces is not None, BLOCK=_BLOCK)
    if momentum:
        momentum_buffers[:] = buffers


def meta_grad_accumulate_(meta_grads, outer_grads, traces, metas, *, kind: str, scale: float,
                          straight_through: bool) -> None:
    """:func:`sparse_optim.ops.reference.meta_grad_accumulate_`, one fused launch per tensor."""
    if not meta_grads:
        return
    _check("meta_grad_accumulate_", kind, meta_grads, outer_grads, traces, metas)
    gated = kind == "relu" and not straight_through
    for mg, g, t, m in zip(meta_grads, outer_grads, traces, metas):
        n = mg.numel()
        if n:
            _meta_grad_kernel[_grid(n)](mg, g, t, m, n, float(scale), KIND=GATE_CODES[kind], GATED=gated,
                                        BLOCK=_BLOCK)


all_finite = reference.all_finite
kronecker_update_ = kronecker.kronecker_update_
