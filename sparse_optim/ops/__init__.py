"""Backend selection for the multi-tensor ops: the one place a backend is chosen.

``reference`` is the pure-PyTorch specification (:mod:`sparse_optim.ops.reference`,
:mod:`sparse_optim.ops.kronecker`); ``cpu`` and ``cuda`` are the native kernels of ``csrc/``
(:mod:`sparse_optim.ops.native`) when they can be loaded; ``triton`` (:mod:`.triton_ops`) is the
fused path for CUDA tensors when the native CUDA kernels are not built (no nvcc). The environment variable
``SPARSE_OPTIM_BACKEND`` (``reference``/``cpu``/``cuda``/``auto``; read at import), :func:`set_backend` /
:func:`use_backend`, or an optimizer's ``backend=`` argument forces one; ``auto`` (default) uses
native kernels where available. The dispatchers of :mod:`sparse_optim.functional` call
:func:`implementation` once per (device, dtype) group.
"""
from __future__ import annotations

import os
from contextlib import contextmanager
from typing import Iterator, Optional

import torch

from . import kronecker, reference, triton_ops

BACKENDS = ("auto", "reference", "cpu", "cuda", "triton")
_forced: Optional[str] = None
_native_module = None
_environment = os.environ.get("SPARSE_OPTIM_BACKEND", "auto").lower()  # read once, at import


def _requested() -> str:
    name = _forced or _environment
    if name not in BACKENDS:
        raise ValueError(f"SPARSE_OPTIM_BACKEND must be one of {BACKENDS}, got {name!r}")
    return name


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


def backend(device: Optional[torch.device] = None, requested: Optional[str] = None) -> str:
    """The backend used for tensors on ``device`` (default: CPU); ``requested`` (an optimizer's
    ``backend=``) overrides the process-wide choice."""
    device = torch.device("cpu") if device is None else torch.device(device)
    name = requested or _requested()
    if name == "reference":
        return "reference"
    native = _native()
    if name == "native":  # an optimizer's fused=True: the kernels for this device, or an error
        if native is None or not native.supports(device.type):
            raise RuntimeError(f"fused=True: no native kernels for {device.type} tensors")
        return device.type
    if name in ("cpu", "cuda"):
        if native is None:
            raise RuntimeError(f"backend {name!r} was forced but the native extension is not available")
        return name
    if name == "triton":
        if not triton_ops.available(device.type):
            raise RuntimeError(f"backend 'triton' was forced but Triton cannot run {device.type} tensors here")
        return "triton"
    if native is not None and native.supports(device.type):
        return device.type
    if device.type == "cuda" and triton_ops.available("cuda"):  # a GPU without the nvcc-built kernels
        return "triton"
    return "reference"


_chosen: dict = {}


def implementation(device: torch.device, requested: Optional[str] = None):
    """The module whose ops run tensors on ``device``: :mod:`.reference` or :mod:`.native`.

    Native ops raise ``NotImplementedError`` (writing nothing) for inputs they have no kernel
    for; the dispatchers then regroup or use the reference ops. The choice is remembered per
    (device type, request, forced backend)."""
    key = (device.type, requested, _forced)
    impl = _chosen.get(key)
    if impl is None:
        name = backend(device, requested)
        impl = _chosen[key] = {"reference": reference, "triton": triton_ops}.get(name) or _native()
    return impl


def all_finite(tensors, requested: Optional[str] = None) -> torch.Tensor:
    """0-d bool tensor on the first tensor's device: whether every element of ``tensors`` is
    finite. One multi-tensor pass per device (the native op on CPU), no host synchronisation;
    under ``torch.compile`` the reference expression, which inductor fuses."""
    tensors = [t for t in tensors if t is not None]
    if not tensors:
        return torch.ones((), dtype=torch.bool)
    device = tensors[0].device
    compiling = torch.compiler.is_compiling()
    if all(t.device == device for t in tensors):
        return (reference if compiling else implementation(device, requested)).all_finite(tensors)
    by_device: dict = {}
    for t in tensors:
        by_device.setdefault(t.device, []).append(t)
    flags = [(reference if compiling else implementation(d, requested)).all_finite(group).to(device)
             for d, group in by_device.items()]
    return torch.stack(flags).all()
