"""The non-finite gradient policy of the meta-optimizers (``nonfinite=`` argument)."""
from __future__ import annotations

import warnings
from typing import Callable, Dict, List, Optional

import torch

from .. import ops
from .._validation import check_choice

POLICIES = ("skip", "raise", "propagate")
Tensor = torch.Tensor


class NonFinitePolicy:
    """``'skip'`` an update whose gradients are not all finite (warn, count it in ``skipped``),
    ``'raise'`` ``FloatingPointError``, or ``'propagate'`` (no check).

    The check is one multi-tensor pass (:func:`sparse_optim.ops.all_finite`). Under
    ``torch.compile`` a Python branch on it cannot be traced, so :meth:`guarded` runs the update
    and then puts every tensor it wrote back where the check failed (``torch.where``); skips are
    counted in a tensor and no warning is issued, and ``'raise'`` raises ``RuntimeError`` from the
    compiled step after the tensors were put back.
    """

    def __init__(self, policy: str) -> None:
        self.policy = check_choice("nonfinite", policy, POLICIES)
        self._skipped = 0
        self._compiled_skips: Dict[torch.device, Tensor] = {}

    @property
    def skipped(self) -> int:
        return self._skipped + sum(int(c) for c in self._compiled_skips.values())

    def all_finite(self, tensors: List[Optional[Tensor]], backend: Optional[str] = None) -> bool:
        if self.policy == "propagate":
            return True
        tensors = [t for t in tensors if t is not None and t.numel() > 0]
        return not tensors or bool(ops.all_finite(tensors, backend))

    def reject(self, where: str) -> None:
        """Apply the policy to an update that was not made."""
        message = f"{where}: non-finite gradients; nothing was updated"
        if self.policy == "raise":
            raise FloatingPointError(message)
        self._skipped += 1
        warnings.warn(message + " (skipped)", RuntimeWarning, stacklevel=3)

    def guarded(self, checked: List[Optional[Tensor]], written: Callable[[], List[Optional[Tensor]]],
                update: Callable[[], None], where: str, backend: Optional[str] = None) -> None:
        """Run ``update`` if every tensor of ``checked`` is finite, else apply the policy.

        ``written()`` lists the state ``update`` writes, position for position before and after it
        (None where a tensor does not exist yet). Under compile, a skipped update puts each back
        to its value before (zeros for one the update created)."""
        if self.policy == "propagate":
            update()
            return
        if not torch.compiler.is_compiling():
            if self.all_finite(checked, backend):
                update()
            else:
                self.reject(where)
            return
        checked = [t for t in checked if t is not None and t.numel() > 0]
        if not checked:
            update()
            return
        ok = ops.all_finite(checked, backend)
        with torch.no_grad():
            before = [None if t is None else t.clone() for t in written()]
        update()
        after = written()
        if len(after) != len(before):
            raise RuntimeError(f"{where}: written() changed length ({len(before)} -> {len(after)})")
        with torch.no_grad():
            for t, old in zip(after, before):
                if t is not None:
                    t.copy_(torch.where(ok, t, torch.zeros_like(t) if old is None else old))
        if self.policy == "raise":
            torch._assert_async(ok, f"{where}: non-finite gradients; nothing was updated")
            return
        count = self._compiled_skips.get(ok.device)
        if count is None:
            count = self._compiled_skips[ok.device] = torch.zeros((), dtype=torch.long, device=ok.device)
        count.add_(ok.logical_not().long())
