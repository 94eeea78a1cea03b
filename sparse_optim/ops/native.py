"""The native kernels of ``csrc/`` (``torch.ops.sparse_optim.*``) behind the reference signatures.

The extension is compiled on first use (:func:`available`) into torch's extension cache or
``$SPARSE_OPTIM_BUILD_DIR``; ``SPARSE_OPTIM_NO_BUILD=1`` disables it. If it cannot be built,
:func:`available` is False, one warning says why, and :mod:`sparse_optim.ops` runs the
reference ops, which give the same results. Importing this module never builds or raises.

Inputs without a kernel (dtype combinations, see ``csrc/dispatch.h``; lists spanning devices)
raise ``NotImplementedError`` before anything is written; the dispatchers of
:mod:`sparse_optim.functional` then regroup them or run the reference ops.
"""
from __future__ import annotations

import logging
import os
import threading
import warnings
from typing import Dict, List, Optional

import torch

from .._validation import MOVED_PARAMETER
from . import build, kronecker, reference

Tensor = torch.Tensor

_EMPTY: List[Tensor] = []
_NO_FLAGS: List[bool] = []
_lock = threading.Lock()
_loaded: Optional[bool] = None
_with_cuda = False


def _ops_already_registered() -> bool:
    return hasattr(torch.ops.sparse_optim, "gated_sgd_step_")


def _register_fakes() -> None:
    """Shape-only implementations, so the ops trace under torch.compile / FakeTensor (once per
    process; ops registered elsewhere may have them already)."""
    try:
        _register_fake_kernels()
    except RuntimeError as error:
        if "already" not in str(error):
            raise


def _register_fake_kernels() -> None:

    @torch.library.register_fake("sparse_optim::gated_sgd_step_")
    def _gated_sgd_step_fake(params, grads, metas, momentum_buffers, traces, fresh_buffers, kind, scale,
                             weight_decay, momentum, dampening, nesterov, maximize, trace_decay) -> None:
        _check_one_device(params, grads, metas, momentum_buffers, traces)

    @torch.library.register_fake("sparse_optim::meta_grad_accumulate_")
    def _meta_grad_accumulate_fake(meta_grads, outer_grads, traces, metas, kind, scale, straight_through) -> None:
        _check_one_device(meta_grads, outer_grads, traces, metas)

    @torch.library.register_fake("sparse_optim::all_finite")
    def _all_finite_fake(tensors):
        return torch.empty((), dtype=torch.bool)

    @torch.library.register_fake("sparse_optim::kronecker_update_")
    def _kronecker_update_fake(params, directions, lefts, rights, biases, scales, variant, depth, lr, eps) -> None:
        return None


def _check_one_device(*lists) -> None:
    """The fake kernels also run for real tensors on the ``meta`` device, which the dispatcher
    prefers over the others: a list mixing them (state created before ``model.to_empty()``) would
    otherwise do nothing, silently."""
    devices = {str(t.device) for lst in lists for t in lst}
    if len(devices) > 1:
        raise ValueError(f"tensors on different devices {sorted(devices)}: {MOVED_PARAMETER}")


def _cpu_only_reason() -> Optional[str]:
    """Why the CUDA kernels cannot be built while the CPU ones can (e.g. pip-installed torch on
    a GPU machine has no nvcc), or None."""
    cuda_reason = build.missing_prerequisite(cuda=True)
    if cuda_reason is not None and build.missing_prerequisite(cuda=False) is None:
        return cuda_reason
    return None


def _load() -> Optional[str]:
    """Build and load the extension (unless its ops are registered already, e.g. by an
    ahead-of-time build); returns why it is unavailable, or None."""
    global _with_cuda
    if not _ops_already_registered():
        cuda = torch.cuda.is_available()
        try:
            if cuda:
                why = _cpu_only_reason()
                if why is not None:
                    warnings.warn(f"sparse_optim: CUDA kernels not built ({why}); the CPU kernels are, and CUDA "
                                  "tensors use the reference ops (the same results, unfused)", RuntimeWarning,
                                  stacklevel=3)
                    cuda = False
            reason = build.missing_prerequisite(cuda)
            prebuilt = build.prebuilt_library(cuda) if reason is not None else None
            if prebuilt is not None:  # an ahead-of-time build for this configuration, no compiler here
                torch.ops.load_library(str(prebuilt))
            elif reason is not None:
                return reason
            else:
                logging.getLogger(__name__).info("loading the native kernels (compiled on first use, a minute or two)")
                build.build_and_load(cuda)
        except Exception as error:  # any build or load failure leaves the reference path
            last_line = (str(error).strip().splitlines() or [""])[-1]
            return f"building the extension failed: {type(error).__name__}: {last_line}"
    _with_cuda = torch._C._dispatch_has_kernel_for_dispatch_key("sparse_optim::gated_sgd_step_", "CUDA")
    _register_fakes()
    return None


def available() -> bool:
    """Whether the native ops can be used (builds the extension on the first call)."""
    global _loaded
    if _loaded is None:
        with _lock:
            if _loaded is None:
                if os.environ.get("SPARSE_OPTIM_NO_BUILD") == "1":
                    _loaded = False
                else:
                    reason = _load()
                    if reason is not None:
                        warnings.warn(
                            f"sparse_optim: native kernels unavailable ({reason}); using the pure-PyTorch "
                            "reference ops (sparse_optim.ops.reference): the same results for float32 / float64 "
                            "(bit for bit); bfloat16 / float16 parameters may differ in the last bit.",
                            RuntimeWarning,
                            stacklevel=2,
                        )
                    _loaded = reason is None
    return _loaded


def supports(device_type: str) -> bool:
    """Whether the native ops have kernels for tensors on ``device_type`` ('cpu', 'cuda', ...)."""
    if not available():
        return False
    return device_type == "cpu" or (device_type == "cuda" and _with_cuda)


def gated_sgd_step_(
    params: List[Tensor],
    grads: List[Tensor],
    metas: List[Tensor],
    momentum_buffers: List[Optional[Tensor]],
    traces: Optional[List[Tensor]],
    *,
    kind: str,
    scale: float,
    weight_decay: float = 0.0,
    momentum: float = 0.0,
    dampening: float = 0.0,
    nesterov: bool = False,
    maximize: bool = False,
    trace_decay: float = 1.0,
) -> None:
    """:func:`sparse_optim.ops.reference.gated_sgd_step_` in one kernel call; None entries of
    ``momentum_buffers`` are created (filled in the list) when ``momentum != 0``."""
    if not params:
        return
    if momentum == 0:
        torch.ops.sparse_optim.gated_sgd_step_(
            params, grads, metas, _EMPTY, traces or _EMPTY, _NO_FLAGS, kind, scale, weight_decay, momentum,
            dampening, nesterov, maximize, trace_decay,
        )
        return
    fresh = [b is None for b in momentum_buffers]
    buffers = [torch.empty_like(g) if b is None else b for b, g in zip(momentum_buffers, grads)]  # written, not read
    torch.ops.sparse_optim.gated_sgd_step_(
        params, grads, metas, buffers, traces or _EMPTY, fresh, kind, scale, weight_decay, momentum,
        dampening, nesterov, maximize, trace_decay,
    )
    momentum_buffers[:] = buffers


def meta_grad_accumulate_(
    meta_grads: List[Tensor],
    outer_grads: List[Tensor],
    traces: List[Tensor],
    metas: List[Tensor],
    *,
    kind: str,
    scale: float,
    straight_through: bool,
) -> None:
    """:func:`sparse_optim.ops.reference.meta_grad_accumulate_` in one kernel call."""
    if meta_grads:
        torch.ops.sparse_optim.meta_grad_accumulate_(meta_grads, outer_grads, traces, metas, kind, scale,
                                                     straight_through)


def all_finite(tensors: List[Tensor]) -> Tensor:
    """:func:`sparse_optim.ops.reference.all_finite` in one pass (CPU tensors; ``csrc/finite_cpu.cpp``);
    other devices run the reference op."""
    if tensors and tensors[0].device.type == "cpu":
        return torch.ops.sparse_optim.all_finite(tensors)
    return reference.all_finite(tensors)


def kronecker_update_(
    params: List[Tensor],
    directions: List[Tensor],
    factors_list: List[Dict[str, Tensor]],
    *,
    lr: float,
    variant: str = "kronecker",
    depth: int = 1,
    eps: float = 1e-12,
) -> None:
    """:func:`sparse_optim.ops.kronecker.kronecker_update_` as one C++ op (``csrc/kronecker_ops.cpp``).

    Lists where only some parameters have a bias or a scale run on the reference op."""
    kronecker.check_variant(variant, depth)
    if len(factors_list) != len(params):
        raise ValueError(f"kronecker_update_: {len(params)} params but {len(factors_list)} factor dicts")
    if not params:
        return
    bias, scale = "bias" in factors_list[0], "scale" in factors_list[0]
    if any(("bias" in f) != bias or ("scale" in f) != scale for f in factors_list):
        kronecker.kronecker_update_(params, directions, factors_list, lr=lr, variant=variant, depth=depth, eps=eps)
        return
    left_names = [f"{'L' if variant == 'kronecker' else 'C'}{k}" for k in range(depth)]
    right_names = [f"R{k}" for k in range(depth)] if variant == "kronecker" else []
    try:
        lefts = [f[name] for f in factors_list for name in left_names]
        rights = [f[name] for f in factors_list for name in right_names]
    except KeyError as missing:
        raise ValueError(f"kronecker_update_: factors lack {missing} ({variant}, depth {depth})") from None
    biases = [f["bias"] for f in factors_list] if bias else []
    scales = [f["scale"] for f in factors_list] if scale else []
    torch.ops.sparse_optim.kronecker_update_(params, directions, lefts, rights, biases, scales, variant, depth, lr, eps)
