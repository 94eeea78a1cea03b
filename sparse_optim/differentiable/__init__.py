"""Differentiable inner loops: ``higher`` integration (optional dependency).

``import sparse_optim`` registers the optimizers with ``higher`` when it is installed, so
``higher.innerloop_ctx(model, MaskedSGD(model.parameters()))`` works unchanged. Without
``higher`` the stateful optimizers and :mod:`sparse_optim.functional` work as usual.
"""
from __future__ import annotations


def register_higher() -> bool:
    """Register with ``higher`` if it is importable; returns whether it was."""
    try:
        from .higher_optim import register
    except ImportError:
        return False
    register()
    return True
