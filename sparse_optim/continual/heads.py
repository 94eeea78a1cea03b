"""Task-aware (multi-headed) losses for continual learning.

La-MAML Sec. 5.2 / appendix F (CIFAR-100, TinyImageNet): one output layer of ``T * c`` units, a
``c``-way head per task; task ``t`` owns the columns ``[t c, (t + 1) c)`` and its labels are the
global class indices ``t c .. t c + c - 1`` (the official code's ``compute_offsets``). Every sample,
replayed ones included, is scored by its own task's head (the official ``take_multitask_loss``).

A loss with ``uses_task_ids = True`` is called as ``loss_fn(logits, y, task_ids)`` by the learners of
:mod:`sparse_optim.continual.learners`; plain ``loss_fn(logits, y)`` callables are single-headed.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ["MultiHeadLoss", "uses_task_ids"]


def uses_task_ids(loss_fn) -> bool:
    """Whether ``loss_fn`` takes ``(logits, y, task_ids)`` (a task-aware loss)."""
    return bool(getattr(loss_fn, "uses_task_ids", False))


class MultiHeadLoss:
    """Cross-entropy of each sample over its own task's ``classes_per_task`` logits (mean over samples).

    Args:
        classes_per_task: ``c``, the width of every head (La-MAML: 5).
    """

    uses_task_ids = True

    def __init__(self, classes_per_task: int) -> None:
        if isinstance(classes_per_task, bool) or not isinstance(classes_per_task, int) or classes_per_task < 1:
            raise ValueError(f"classes_per_task must be an int >= 1, got {classes_per_task!r}")
        self.classes_per_task = classes_per_task

    def __repr__(self) -> str:
        return f"MultiHeadLoss(classes_per_task={self.classes_per_task})"

    def head_logits(self, logits: Tensor, task_ids: Tensor) -> Tensor:
        """``[N, c]``: row ``i`` is ``logits[i, t_i c : (t_i + 1) c]``."""
        c = self.classes_per_task
        if logits.dim() != 2 or logits.shape[1] % c:
            raise ValueError(f"logits must be [N, T * {c}] (T heads of {c}), got {tuple(logits.shape)}")
        if not isinstance(task_ids, Tensor) or task_ids.shape != (logits.shape[0],):
            raise ValueError(f"task_ids must be a [N] tensor, N = {logits.shape[0]}")
        heads = logits.shape[1] // c
        t = task_ids.to(device=logits.device, dtype=torch.long)
        if t.numel() and (int(t.min()) < 0 or int(t.max()) >= heads):
            raise ValueError(f"task_ids must lie in [0, {heads}) for {heads} heads (a task id of -1 means the "
                             "stream gave none: pass task_id to observe()), got "
                             f"[{int(t.min())}, {int(t.max())}]")
        return logits.view(logits.shape[0], heads, c)[torch.arange(logits.shape[0], device=logits.device), t]

    def __call__(self, logits: Tensor, y: Tensor, task_ids: Tensor) -> Tensor:
        head = self.head_logits(logits, task_ids)
        local = y.to(head.device) - task_ids.to(head.device, torch.long) * self.classes_per_task
        if local.numel() and (int(local.min()) < 0 or int(local.max()) >= self.classes_per_task):
            raise ValueError(f"labels y must belong to their task's head: t * {self.classes_per_task} <= y < "
                             f"(t + 1) * {self.classes_per_task}")
        return F.cross_entropy(head, local)

    def predict(self, logits: Tensor, task_ids: Tensor) -> Tensor:
        """Global class predicted by each sample's own head (task-aware evaluation)."""
        return self.head_logits(logits, task_ids).argmax(1) + task_ids.to(logits.device, torch.long) * self.classes_per_task
