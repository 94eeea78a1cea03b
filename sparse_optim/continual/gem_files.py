"""The GEM / MER / La-MAML on-disk task-stream format.

GEM's ``data/mnist_rotations.py`` / ``mnist_permutations.py`` (and the MER and La-MAML code that
reads their output) write ``torch.save([tasks_train, tasks_test], path)``; each task is
``[descriptor, x, y]`` with ``x`` an ``(n, 784)`` float tensor in ``[0, 1]`` and ``y`` an ``(n,)``
integer tensor. The descriptor is the rotation angle (a number) for rotations and the pixel
permutation (a ``(784,)`` integer tensor) for permutations. :func:`load_gem_file` turns such a
file into the :class:`~sparse_optim.continual.Task` list the learners and examples consume, so
runs can use the exact files of the papers' code.
"""
from __future__ import annotations

import numbers
import pickle
from pathlib import Path
from typing import List, Sequence, Union

import torch
from torch import Tensor

from .streams import Task

__all__ = ["load_gem_file", "save_gem_file"]

PathLike = Union[str, Path]


def save_gem_file(tasks: Sequence[Task], path: PathLike) -> None:
    """Write ``tasks`` as GEM does: ``[tasks_train, tasks_test]``, task = ``[descriptor, x (n, D), y (n,)]``."""
    def descriptor(t: Task):
        if t.angle is not None:
            return float(t.angle)
        if t.permutation is not None:
            return t.permutation.long()
        return float(t.task_id)

    def rows(x: Tensor, y: Tensor, t: Task):
        return [descriptor(t), x.reshape(x.shape[0], -1).float().contiguous(), y.long()]

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save([[rows(t.x_train, t.y_train, t) for t in tasks], [rows(t.x_test, t.y_test, t) for t in tasks]], path)


def _check_task(path: Path, split: str, index: int, entry) -> None:
    if not isinstance(entry, (list, tuple)) or len(entry) != 3:
        raise ValueError(f"{path}: {split} task {index} is not [descriptor, x, y]")
    x, y = entry[1], entry[2]
    if not isinstance(x, Tensor) or x.dim() != 2 or not x.is_floating_point():
        raise ValueError(f"{path}: {split} task {index}: x must be a float (n, D) tensor, got "
                         f"{type(x).__name__} {tuple(getattr(x, 'shape', ()))}")
    if not isinstance(y, Tensor) or y.shape != (x.shape[0],) or y.is_floating_point():
        raise ValueError(f"{path}: {split} task {index}: y must be an integer ({x.shape[0]},) tensor, got "
                         f"{tuple(getattr(y, 'shape', ()))}")


def load_gem_file(path: PathLike, *, trusted: bool = False) -> List[Task]:
    """Read a GEM-format stream file into tasks (``kind`` "rotation", "permutation" or "gem").

    Args:
        path: the ``.pt`` file (e.g. GEM's ``mnist_rotations.pt``).
        trusted: unpickle arbitrary objects (``torch.load(weights_only=False)``); needed only for
            files whose descriptors are NumPy scalars. Only for files you trust.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"GEM-format file not found: {path}")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=not trusted)
    except pickle.UnpicklingError as err:
        raise ValueError(f"{path}: cannot be read with weights_only=True ({err}); if you trust the file, pass "
                         "trusted=True") from err
    if not (isinstance(obj, (list, tuple)) and len(obj) == 2 and len(obj[0]) == len(obj[1]) and len(obj[0]) > 0):
        raise ValueError(f"{path}: expected [tasks_train, tasks_test], two non-empty lists of equal length")
    tasks = []
    for i, (train, test) in enumerate(zip(*obj)):
        _check_task(path, "train", i, train)
        _check_task(path, "test", i, test)
        if train[1].shape[1] != test[1].shape[1]:
            raise ValueError(f"{path}: task {i}: train and test inputs differ in width")
        desc = train[0]
        angle = permutation = None
        if isinstance(desc, numbers.Real) or (isinstance(desc, Tensor) and desc.numel() == 1):
            kind, angle = "rotation", float(desc)
        elif isinstance(desc, Tensor) and desc.shape == (train[1].shape[1],) and not desc.is_floating_point():
            kind, permutation = "permutation", desc.long()
        else:
            kind = "gem"
        tasks.append(Task(task_id=i, x_train=train[1].float(), y_train=train[2].long(), x_test=test[1].float(),
                          y_test=test[2].long(), kind=kind, angle=angle, permutation=permutation))
    return tasks
