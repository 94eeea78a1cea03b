"""Continual-learning accuracy matrix and summary metrics (GEM conventions).

``R[i, j]`` is the test accuracy on task ``j`` measured right after the model
finished learning task ``i`` (0-based, ``T`` tasks). Following Lopez-Paz &
Ranzato (2017), with tasks learnt in order ``0 .. T-1``:

* retained accuracy (RA, GEM's ACC):  ``RA  = 1/T     sum_{j=0}^{T-1} R[T-1, j]``
* backward transfer (BWT, La-MAML's BTI):
  ``BWT = 1/(T-1) sum_{j=0}^{T-2} (R[T-1, j] - R[j, j])``
  -- negative values mean forgetting (the final accuracy on an old task is
  lower than right after it was learnt); La-MAML's tables report it this way.
* forward transfer (FWT): ``FWT = 1/(T-1) sum_{j=1}^{T-1} (R[j-1, j] - b[j])``
  with ``b[j]`` the accuracy of the model at (random) initialisation on task
  ``j``.

Accuracies may be fractions or percentages; metrics come out in the same
units.
"""
from __future__ import annotations

import math
import numbers
from typing import Any, Dict, Optional, Sequence

import numpy as np

__all__ = [
    "AccuracyMatrix",
    "retained_accuracy",
    "backward_transfer",
    "forward_transfer",
]


def _as_square_matrix(R: Any, name: str = "R") -> np.ndarray:
    if hasattr(R, "detach") and hasattr(R, "cpu"):  # torch.Tensor
        R = R.detach().cpu().double().numpy()
    try:
        M = np.asarray(R, dtype=np.float64)
    except (TypeError, ValueError) as e:
        raise TypeError(f"{name} must be a real 2-D array-like, got {type(R).__name__}") from e
    if M.ndim != 2 or M.shape[0] != M.shape[1] or M.shape[0] == 0:
        raise ValueError(f"{name} must be a non-empty square [T, T] matrix, got shape {M.shape}")
    return M


def _require_finite(values: np.ndarray, name: str, what: str) -> None:
    if not np.all(np.isfinite(values)):
        raise ValueError(f"{name} has missing (NaN) or non-finite entries needed for {what}")


def retained_accuracy(R: Any, after_task: Optional[int] = None) -> float:
    """RA: mean accuracy over tasks after learning task ``after_task``.

    With ``after_task=None`` (default) this is GEM's ACC, the mean of the last
    row ``R[T-1, :]``. With ``after_task=i`` it is the mean of ``R[i, :i+1]``,
    the accuracy over the tasks seen so far.
    """
    M = _as_square_matrix(R)
    T = M.shape[0]
    if after_task is None:
        row = M[T - 1]
    else:
        if isinstance(after_task, bool) or not isinstance(after_task, numbers.Integral):
            raise TypeError(f"after_task must be an int or None, got {type(after_task).__name__}")
        if not 0 <= after_task < T:
            raise ValueError(f"after_task must be in [0, {T - 1}], got {after_task}")
        row = M[after_task, : after_task + 1]
    _require_finite(row, "R", "retained_accuracy")
    return float(row.mean())


def backward_transfer(R: Any) -> float:
    """BWT / BTI: ``1/(T-1) sum_{j<T-1} (R[T-1, j] - R[j, j])`` (needs ``T >= 2``).

    Negative = forgetting (GEM sign convention, as reported by La-MAML).
    """
    M = _as_square_matrix(R)
    T = M.shape[0]
    if T < 2:
        raise ValueError(f"backward_transfer needs at least 2 tasks, R has T={T}")
    final = M[T - 1, : T - 1]
    diag = np.diag(M)[: T - 1]
    _require_finite(np.concatenate([final, diag]), "R", "backward_transfer")
    return float((final - diag).mean())


def forward_transfer(R: Any, baseline: Any) -> float:
    """FWT: ``1/(T-1) sum_{j>=1} (R[j-1, j] - baseline[j])`` (needs ``T >= 2``).

    ``baseline[j]`` is the accuracy on task ``j`` of the freshly initialised
    model (GEM's ``b_j``); ``baseline[0]`` is unused.
    """
    M = _as_square_matrix(R)
    T = M.shape[0]
    if T < 2:
        raise ValueError(f"forward_transfer needs at least 2 tasks, R has T={T}")
    if hasattr(baseline, "detach") and hasattr(baseline, "cpu"):
        baseline = baseline.detach().cpu().double().numpy()
    try:
        b = np.asarray(baseline, dtype=np.float64)
    except (TypeError, ValueError) as e:
        raise TypeError(f"baseline must be a real 1-D array-like, got {type(baseline).__name__}") from e
    if b.shape != (T,):
        raise ValueError(f"baseline must have shape ({T},), got {b.shape}")
    before = np.array([M[j - 1, j] for j in range(1, T)])
    _require_finite(before, "R", "forward_transfer")
    _require_finite(b[1:], "baseline", "forward_transfer")
    return float((before - b[1:]).mean())


class AccuracyMatrix:
    """Accumulates ``R[i, j]`` = accuracy on task ``j`` after learning task ``i``.

    Unrecorded entries are NaN. Typical use: after finishing task ``i``,
    evaluate on every task ``j`` and call ``update(i, j, acc)`` (or
    :meth:`update_row`).
    """

    def __init__(self, num_tasks: int) -> None:
        if isinstance(num_tasks, bool) or not isinstance(num_tasks, numbers.Integral):
            raise TypeError(f"num_tasks must be an int, got {type(num_tasks).__name__}")
        if num_tasks < 1:
            raise ValueError(f"num_tasks must be >= 1, got {num_tasks}")
        self._num_tasks = int(num_tasks)
        self._R = np.full((self._num_tasks, self._num_tasks), np.nan, dtype=np.float64)

    @property
    def num_tasks(self) -> int:
        return self._num_tasks

    @property
    def matrix(self) -> np.ndarray:
        """Copy of the ``[T, T]`` float64 matrix (NaN where not recorded)."""
        return self._R.copy()

    def _check_index(self, value: Any, name: str) -> int:
        if isinstance(value, bool) or not isinstance(value, numbers.Integral):
            raise TypeError(f"{name} must be an int, got {type(value).__name__}")
        if not 0 <= value < self._num_tasks:
            raise ValueError(f"{name} must be in [0, {self._num_tasks - 1}], got {value}")
        return int(value)

    @staticmethod
    def _check_acc(acc: Any, name: str = "acc") -> float:
        if hasattr(acc, "item") and callable(acc.item):
            try:
                acc = acc.item()
            except (ValueError, RuntimeError) as e:
                raise TypeError(f"{name} must be a scalar, got a multi-element value") from e
        if isinstance(acc, bool) or not isinstance(acc, numbers.Real):
            raise TypeError(f"{name} must be a real number, got {type(acc).__name__}")
        acc = float(acc)
        if not math.isfinite(acc):
            raise ValueError(f"{name} must be finite, got {acc}")
        if not 0.0 <= acc <= 1.0:
            raise ValueError(f"{name} must be a fraction in [0, 1] (not a percentage), got {acc}")
        return acc

    def update(self, i: int, j: int, acc: float) -> None:
        """Record the accuracy on task ``j`` after learning task ``i``."""
        i = self._check_index(i, "i")
        j = self._check_index(j, "j")
        self._R[i, j] = self._check_acc(acc)

    def update_row(self, i: int, accs: Sequence[float]) -> None:
        """Record ``R[i, :len(accs)] = accs`` (evaluation on tasks ``0..len-1``)."""
        i = self._check_index(i, "i")
        accs = list(accs)
        if len(accs) > self._num_tasks:
            raise ValueError(
                f"accs has {len(accs)} entries, more than num_tasks={self._num_tasks}"
            )
        values = [self._check_acc(a, f"accs[{k}]") for k, a in enumerate(accs)]
        self._R[i, : len(values)] = values

    def retained_accuracy(self, after_task: Optional[int] = None) -> float:
        return retained_accuracy(self._R, after_task)

    def backward_transfer(self) -> float:
        return backward_transfer(self._R)

    def forward_transfer(self, baseline: Any) -> float:
        return forward_transfer(self._R, baseline)

    def to_dict(self, baseline: Any = None) -> Dict[str, Any]:
        """JSON-serialisable summary: matrix (``None`` for unrecorded), RA, BWT, FWT.

        Metrics that cannot be computed yet (missing entries, one task, no
        baseline for FWT) are ``None``.
        """

        def _try(fn, *args):
            try:
                return fn(*args)
            except ValueError:
                return None

        return {
            "num_tasks": self._num_tasks,
            "matrix": [
                [None if math.isnan(v) else float(v) for v in row] for row in self._R.tolist()
            ],
            "retained_accuracy": _try(retained_accuracy, self._R),
            "backward_transfer": _try(backward_transfer, self._R),
            "forward_transfer": None
            if baseline is None
            else _try(forward_transfer, self._R, baseline),
        }

    @classmethod
    def from_dict(cls, d: Dict[str, Any]) -> "AccuracyMatrix":
        """Inverse of :meth:`to_dict` (only ``num_tasks`` and ``matrix`` are used)."""
        if not isinstance(d, dict) or "num_tasks" not in d or "matrix" not in d:
            raise ValueError("d must be a dict with keys 'num_tasks' and 'matrix'")
        out = cls(d["num_tasks"])
        M = np.array(
            [[np.nan if v is None else v for v in row] for row in d["matrix"]], dtype=np.float64
        )
        if M.shape != out._R.shape:
            raise ValueError(f"d['matrix'] has shape {M.shape}, expected {out._R.shape}")
        out._R[...] = M
        return out

    def __repr__(self) -> str:
        return f"{type(self).__name__}(num_tasks={self._num_tasks})"
