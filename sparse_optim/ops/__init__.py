"""Backend selection for the multi-tensor ops.

``reference`` is the pure-PyTorch specification (:mod:`sparse_optim.ops.reference`,
:mod:`sparse_optim.ops.kronecker`); ``cpu``
and ``cuda`` are the native kernels of ``csrc/`` when they can be loaded. The environment
variable ``SPARSE_OPTIM_BACKEND`` (``reference``/``cpu``/``cuda``/``auto``) or
:func:`set_backend` forces one; ``auto`` (default) uses native kernels where available.
"""
from __future__ import annotations

import os
from contextlib import contextmanager
from typing import Iterator, List, Optional

import torch

from . import kronecker, reference

BACKENDS = ("auto", "reference", "cpu", "cuda")
_forced: Optional[str] = None


def _requested() -> str:
    name = _forced or os.environ.get("SPARSE_OPTIM_BACKEND", "auto").lower()
    if name not in BACKENDS:
        raise ValueError(f"SPARSE_OPTIM_BACKEND must be one of {BACKENDS}, got {name!r}")
    return name


_native_module = None


def _native():
    """The loaded native module, or None (the build is attempted once)."""
    global _native_module
    if _native_module is None:
        from . import native  # compiled on first use

        _native_module = native if native.available() else False
    return _native_module or None


def set_backend(name: Optional[str]) -> None:
    """Force a backend for this process (None restores the environment / auto choice)."""
    global _forced
    if name is not None and name not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS} or None, got {name!r}")
    _forced = name


@contextmanager
def use_backend(name: str) -> Iterator[None]:
    """Context manager form of :func:`set_backend`."""
    global _forced
    previous = _forced
    set_backend(name)
    try:
        yield
    finally:
        _forced = previous


def backend(device: Optional[torch.device] = None) -> str:
    """The backend the ops use for tensors on ``device`` (default: CPU)."""
    device = torch.device("cpu") if device is None else torch.device(device)
    name = _requested()
    if name == "reference":
        return "reference"
    native = _native()
    if name in ("cpu", "cuda"):
        if native is None:
            raise RuntimeError(f"backend {name!r} was forced but the native extension is not available")
        return name
    if native is not None and native.supports(device.type):
        return device.type
    return "reference"


def _impl(tensors: List[torch.Tensor]):
    if not tensors:
        return reference
    return reference if backend(tensors[0].device) == "reference" else _native()


def gated_sgd_step_(params, grads, metas, momentum_buffers, traces, **kw) -> None:
    _impl(params).gated_sgd_step_(params, grads, metas, momentum_buffers, traces, **kw)


def meta_grad_accumulate_(meta_grads, outer_grads, traces, metas, **kw) -> None:
    _impl(meta_grads).meta_grad_accumulate_(meta_grads, outer_grads, traces, metas, **kw)


def kronecker_update_(params, directions, factors_list, **kw) -> None:
    impl = _impl(params)
    (kronecker if impl is reference else impl).kronecker_update_(params, directions, factors_list, **kw)
