"""Argument checks shared by every front end: clear errors that name the argument."""
from __future__ import annotations

import math
from typing import Any, Iterable

import torch


MOVED_PARAMETER = ("a parameter moved after the optimizer created its state (e.g. model.to_empty() / .to() with "
                   "swapped module parameters); create the optimizer after moving the model")


def check_rate(name: str, value: Any, *, allow_zero: bool = True) -> float:
    """A finite, non-negative real number (a learning rate, weight decay, ...)."""
    if type(value) is float and 0.0 < value < math.inf:  # fast path, checked on every step
        return value
    if isinstance(value, torch.Tensor):
        if value.numel() != 1:
            raise ValueError(f"Tensor {name} must be 1-element, got a tensor of shape {tuple(value.shape)}")
        value = value.item()
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{name} must be a real number, got {type(value).__name__}")
    if not math.isfinite(value):
        raise ValueError(f"{name} must be finite, got {value}")
    if value < 0 or (value == 0 and not allow_zero):
        bound = ">= 0" if allow_zero else "> 0"
        raise ValueError(f"{name} must be {bound}, got {value}")
    return float(value)


def check_real(name: str, value: Any) -> float:
    """A finite real number (any sign)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{name} must be a real number, got {type(value).__name__}")
    if not math.isfinite(value):
        raise ValueError(f"{name} must be finite, got {value}")
    return float(value)


def check_fraction(name: str, value: Any, *, closed_right: bool = True) -> float:
    value = check_rate(name, value)
    if value > 1 or (value == 1 and not closed_right):
        raise ValueError(f"{name} must lie in [0, 1{']' if closed_right else ')'}, got {value}")
    return value


def check_choice(name: str, value: Any, choices: Iterable[str]) -> str:
    choices = tuple(choices)
    if value not in choices:
        raise ValueError(f"{name} must be one of {choices}, got {value!r}")
    return value


def check_param(param: torch.Tensor, name: str) -> None:
    if not isinstance(param, torch.Tensor):
        raise TypeError(f"parameter {name} must be a torch.Tensor, got {type(param).__name__}")
    if param.is_complex():
        raise TypeError(f"parameter {name} is complex ({param.dtype}); complex parameters are not supported")
    if not param.is_floating_point():
        raise TypeError(f"parameter {name} must be floating point, got {param.dtype}")
    if param.is_sparse:
        raise TypeError(f"parameter {name} is sparse; sparse parameters are not supported")


def check_grad(param: torch.Tensor, name: str) -> None:
    grad = param.grad
    if grad is None or (grad.layout is torch.strided and grad.dtype is param.dtype and grad.shape == param.shape):
        return  # fast path, checked for every parameter on every step
    if grad.is_sparse:
        raise RuntimeError(
            f"gradient of parameter {name} is sparse; sparse gradients are not supported "
            "(use a dense embedding or torch.optim.SparseAdam)"
        )
    if grad.is_complex():
        raise TypeError(f"gradient of parameter {name} is complex; complex gradients are not supported")
    if grad.shape != param.shape:
        raise ValueError(
            f"gradient of parameter {name} has shape {tuple(grad.shape)}, expected {tuple(param.shape)}"
        )


def meta_dtype(param: torch.Tensor) -> torch.dtype:
    """Meta-parameters and traces of low-precision parameters are kept in float32."""
    return torch.float32 if param.dtype in (torch.float16, torch.bfloat16) else param.dtype
