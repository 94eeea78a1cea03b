"""The non-finite gradient policy of the meta-optimizers (``nonfinite=`` argument)."""
from __future__ import annotations

import warnings
from typing import Dict, List, Optional

import torch

from .._validation import check_choice

POLICIES = ("skip", "raise", "propagate")
Tensor = torch.Tensor


class NonFinitePolicy:
    """``'skip'`` an update whose gradients are not all finite (warn, count it in ``skipped``),
    ``'raise'`` ``FloatingPointError``, or ``'propagate'`` (no check)."""

    def __init__(self, policy: str) -> None:
        self.policy = check_choice("nonfinite", policy, POLICIES)
        self.skipped = 0

    def all_finite(self, tensors: List[Optional[Tensor]]) -> bool:
        tensors = [t for t in tensors if t is not None and t.numel() > 0]
        if self.policy == "propagate" or not tensors:
            return True
        by_group: Dict[tuple, List[Tensor]] = {}
        for t in tensors:
            by_group.setdefault((t.device, t.dtype), []).append(t)
        return all(bool(torch.stack(torch._foreach_norm(ts, float("inf"))).isfinite().all())
                   for ts in by_group.values())

    def reject(self, where: str) -> None:
        """Apply the policy to an update that was not made."""
        message = f"{where}: non-finite gradients; nothing was updated"
        if self.policy == "raise":
            raise FloatingPointError(message)
        self.skipped += 1
        warnings.warn(message + " (skipped)", RuntimeWarning, stacklevel=3)
