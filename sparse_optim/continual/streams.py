"""MNIST continual-learning task streams (GEM / MER / La-MAML protocol).

* **MNIST Rotations** (GEM): task ``t`` of ``T`` rotates every digit by one
  common angle drawn uniformly from the ``t``-th of ``T`` equal bins of
  ``[0, 180]`` degrees, ``angle_t ~ U[180 t / T, 180 (t+1) / T)``.
  Rotation is counter-clockwise about the image centre with nearest-neighbour
  resampling and zero fill (torchvision's ``rotate``, which reproduces GEM's
  ``PIL.Image.rotate``).
* **MNIST Permutations**: task ``t`` applies one fixed random pixel
  permutation ``p_t`` of the 784 pixels to every digit: ``x_t = x[p_t]``
  (every task, including the first, is permuted, as in GEM).
* **Many Permutations** (MER): the same with 100 tasks of 200 samples.

Each task holds ``samples_per_task`` training digits drawn without
replacement from the training images (independently per task) and
``test_per_task`` test digits (all test images by default, as in GEM), all
flattened to ``[N, 784]`` floats in ``[0, 1]``. Training is single-pass over
each task in mini-batches of 10 (:func:`iterate_task_batches`).

All randomness comes from one :class:`torch.Generator` seeded with ``seed``;
per task the draws are, in order: transform parameter, train subset, test
subset.
"""
from __future__ import annotations

import numbers
from dataclasses import dataclass
from typing import Any, Iterator, List, Optional, Sequence, Tuple

import torch
from torch import Tensor

__all__ = [
    "Task",
    "mnist_rotations",
    "mnist_permutations",
    "mnist_many_permutations",
    "iterate_task_batches",
    "iterate_stream",
    "rotate_images",
]


@dataclass(eq=False)
class Task:
    """One task of a continual-learning stream.

    Attributes:
        task_id: 0-based position in the stream.
        x_train, y_train: ``[N, D]`` float32 inputs in ``[0, 1]``, ``[N]`` int64 labels.
        x_test, y_test: held-out data transformed the same way.
        kind: ``"rotation"``, ``"permutation"``, ``"classes"`` (class split) or ``"gem"``.
        angle: rotation angle in degrees (counter-clockwise), rotation tasks.
        permutation: ``[D]`` int64 pixel order (``x_task = x_flat[:, permutation]``),
            permutation tasks.
        train_index, test_index: indices of the source images used.
        x_val, y_val: held-out validation data (image streams), or None.
        classes: the source dataset's classes in this task (class-split streams), or None.
    """

    task_id: int
    x_train: Tensor
    y_train: Tensor
    x_test: Tensor
    y_test: Tensor
    kind: str
    angle: Optional[float] = None
    permutation: Optional[Tensor] = None
    train_index: Optional[Tensor] = None
    test_index: Optional[Tensor] = None
    x_val: Optional[Tensor] = None
    y_val: Optional[Tensor] = None
    classes: Optional[List[int]] = None

    def __repr__(self) -> str:
        detail = f"angle={self.angle:g}" if self.angle is not None else f"kind={self.kind!r}"
        return (f"Task(task_id={self.task_id}, {detail}, train={self.num_train}x{tuple(self.x_train.shape[1:])}, "
                f"test={self.num_test})")

    @property
    def num_train(self) -> int:
        return int(self.x_train.shape[0])

    @property
    def num_test(self) -> int:
        return int(self.x_test.shape[0])


# --------------------------------------------------------------------------- #
# validation helpers
# --------------------------------------------------------------------------- #
def _check_int(value: Any, name: str, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{name} must be an int, got {type(value).__name__}")
    if value < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {value}")
    return int(value)


def _to_unit_float(images: Any, name: str) -> Tensor:
    """``[N, H, W]`` (or ``[N, 1, H, W]``) uint8 / float in [0,1] -> float32 ``[N, H, W]``."""
    if not isinstance(images, Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(images).__name__}")
    if images.dim() == 4 and images.shape[1] == 1:
        images = images[:, 0]
    if images.dim() != 3:
        raise ValueError(f"{name} must have shape [N, H, W], got {tuple(images.shape)}")
    if images.dtype == torch.uint8:
        return images.to(torch.float32) / 255.0
    if not images.is_floating_point():
        raise TypeError(f"{name} must be uint8 or floating point, got {images.dtype}")
    out = images.to(torch.float32)
    if out.numel() and (out.min() < 0 or out.max() > 1):
        raise ValueError(
            f"floating-point {name} must lie in [0, 1] (pass uint8 for 0..255 pixels)"
        )
    return out


def _check_labels(labels: Any, n: int, name: str) -> Tensor:
    if not isinstance(labels, Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(labels).__name__}")
    if labels.dim() != 1 or labels.shape[0] != n:
        raise ValueError(f"{name} must have shape [{n}], got {tuple(labels.shape)}")
    if labels.is_floating_point() or labels.is_complex() or labels.dtype == torch.bool:
        raise TypeError(f"{name} must have an integer dtype, got {labels.dtype}")
    return labels.to(torch.int64)


def _prepare(
    train_images: Tensor,
    train_labels: Tensor,
    test_images: Tensor,
    test_labels: Tensor,
    num_tasks: int,
    samples_per_task: int,
    test_per_task: Optional[int],
) -> Tuple[Tensor, Tensor, Tensor, Tensor, int, int, int]:
    xtr = _to_unit_float(train_images, "train_images")
    xte = _to_unit_float(test_images, "test_images")
    if xtr.shape[1:] != xte.shape[1:]:
        raise ValueError(
            f"train_images and test_images differ in image size: "
            f"{tuple(xtr.shape[1:])} vs {tuple(xte.shape[1:])}"
        )
    ytr = _check_labels(train_labels, xtr.shape[0], "train_labels")
    yte = _check_labels(test_labels, xte.shape[0], "test_labels")
    num_tasks = _check_int(num_tasks, "num_tasks", 1)
    samples_per_task = _check_int(samples_per_task, "samples_per_task", 1)
    if samples_per_task > xtr.shape[0]:
        raise ValueError(
            f"samples_per_task={samples_per_task} exceeds the {xtr.shape[0]} training images"
        )
    if test_per_task is None:
        test_per_task = xte.shape[0]
    test_per_task = _check_int(test_per_task, "test_per_task", 1)
    if test_per_task > xte.shape[0]:
        raise ValueError(
            f"test_per_task={test_per_task} exceeds the {xte.shape[0]} test images"
        )
    return xtr, ytr, xte, yte, num_tasks, samples_per_task, test_per_task


def _subset(n_total: int, n: int, g: torch.Generator) -> Tensor:
    if n == n_total:
        return torch.arange(n_total)
    return torch.randperm(n_total, generator=g)[:n]


# --------------------------------------------------------------------------- #
# transforms
# --------------------------------------------------------------------------- #
def rotate_images(images: Tensor, angle: float, interpolation: str = "nearest") -> Tensor:
    """Rotate ``[N, H, W]`` images counter-clockwise by ``angle`` degrees about the centre.

    Pixels from outside the image are 0. Uses ``torchvision.transforms.functional.rotate``
    (same convention as ``PIL.Image.rotate`` used by GEM's data generator).
    """
    try:
        from torchvision.transforms import InterpolationMode
        from torchvision.transforms.functional import rotate
    except ImportError as e:  # pragma: no cover - depends on environment
        raise ImportError(
            "rotate_images / mnist_rotations need torchvision (pip install torchvision)"
        ) from e
    modes = {"nearest": InterpolationMode.NEAREST, "bilinear": InterpolationMode.BILINEAR}
    if interpolation not in modes:
        raise ValueError(f"interpolation must be one of {sorted(modes)}, got {interpolation!r}")
    if images.dim() != 3:
        raise ValueError(f"images must have shape [N, H, W], got {tuple(images.shape)}")
    out = rotate(images.unsqueeze(1), float(angle), interpolation=modes[interpolation], fill=0.0)
    return out.squeeze(1)


# --------------------------------------------------------------------------- #
# streams
# --------------------------------------------------------------------------- #
def mnist_rotations(
    train_images: Tensor,
    train_labels: Tensor,
    test_images: Tensor,
    test_labels: Tensor,
    num_tasks: int = 20,
    samples_per_task: int = 1000,
    test_per_task: Optional[int] = None,
    seed: int = 0,
    *,
    max_angle: float = 180.0,
    interpolation: str = "nearest",
) -> List[Task]:
    """MNIST Rotations stream: task ``t`` rotates by ``U[max_angle t/T, max_angle (t+1)/T)`` deg.

    Args:
        train_images, test_images: ``[N, 28, 28]`` uint8 (0..255) or float in [0, 1].
        train_labels, test_labels: ``[N]`` integer labels.
        num_tasks: number of tasks ``T`` (20 in GEM / La-MAML).
        samples_per_task: training digits per task (1000), drawn without replacement.
        test_per_task: test digits per task; ``None`` = every test image (GEM).
            Note memory: ``T * test_per_task * 784 * 4`` bytes.
        seed: seed for angles and subsets.
        max_angle: upper end of the angle range (degrees).
        interpolation: ``"nearest"`` (GEM) or ``"bilinear"``.
    """
    xtr, ytr, xte, yte, T, n_tr, n_te = _prepare(
        train_images, train_labels, test_images, test_labels,
        num_tasks, samples_per_task, test_per_task,
    )
    if not isinstance(max_angle, numbers.Real) or isinstance(max_angle, bool):
        raise TypeError(f"max_angle must be a real number, got {type(max_angle).__name__}")
    if not 0 < max_angle <= 360:
        raise ValueError(f"max_angle must be in (0, 360], got {max_angle}")
    g = torch.Generator().manual_seed(_check_int(seed, "seed", 0))
    tasks = []
    for t in range(T):
        lo = max_angle * t / T
        hi = max_angle * (t + 1) / T
        u = float(torch.rand((), generator=g, dtype=torch.float64))
        angle = lo + u * (hi - lo)
        tr_idx = _subset(xtr.shape[0], n_tr, g)
        te_idx = _subset(xte.shape[0], n_te, g)
        tasks.append(
            Task(
                task_id=t,
                x_train=rotate_images(xtr[tr_idx], angle, interpolation).reshape(n_tr, -1),
                y_train=ytr[tr_idx].clone(),
                x_test=rotate_images(xte[te_idx], angle, interpolation).reshape(n_te, -1),
                y_test=yte[te_idx].clone(),
                kind="rotation",
                angle=angle,
                train_index=tr_idx,
                test_index=te_idx,
            )
        )
    return tasks


def mnist_permutations(
    train_images: Tensor,
    train_labels: Tensor,
    test_images: Tensor,
    test_labels: Tensor,
    num_tasks: int = 20,
    samples_per_task: int = 1000,
    test_per_task: Optional[int] = None,
    seed: int = 0,
) -> List[Task]:
    """MNIST Permutations stream: task ``t`` shows ``x_flat[:, p_t]`` for a fixed random ``p_t``.

    Arguments as in :func:`mnist_rotations`. GEM / La-MAML: 20 tasks x 1000 samples.
    """
    xtr, ytr, xte, yte, T, n_tr, n_te = _prepare(
        train_images, train_labels, test_images, test_labels,
        num_tasks, samples_per_task, test_per_task,
    )
    D = xtr.shape[1] * xtr.shape[2]
    g = torch.Generator().manual_seed(_check_int(seed, "seed", 0))
    tasks = []
    for t in range(T):
        perm = torch.randperm(D, generator=g)
        tr_idx = _subset(xtr.shape[0], n_tr, g)
        te_idx = _subset(xte.shape[0], n_te, g)
        tasks.append(
            Task(
                task_id=t,
                x_train=xtr[tr_idx].reshape(n_tr, D)[:, perm],
                y_train=ytr[tr_idx].clone(),
                x_test=xte[te_idx].reshape(n_te, D)[:, perm],
                y_test=yte[te_idx].clone(),
                kind="permutation",
                permutation=perm,
                train_index=tr_idx,
                test_index=te_idx,
            )
        )
    return tasks


def mnist_many_permutations(
    train_images: Tensor,
    train_labels: Tensor,
    test_images: Tensor,
    test_labels: Tensor,
    num_tasks: int = 100,
    samples_per_task: int = 200,
    test_per_task: Optional[int] = None,
    seed: int = 0,
) -> List[Task]:
    """MER's Many Permutations: :func:`mnist_permutations` with 100 tasks x 200 samples.

    With ``test_per_task=None`` every task holds the whole (permuted) test set;
    for full MNIST that is ``100 * 10000 * 784 * 4`` bytes (~3 GB), so consider
    passing ``test_per_task``.
    """
    return mnist_permutations(
        train_images, train_labels, test_images, test_labels,
        num_tasks=num_tasks, samples_per_task=samples_per_task,
        test_per_task=test_per_task, seed=seed,
    )


# --------------------------------------------------------------------------- #
# iteration
# --------------------------------------------------------------------------- #
def iterate_task_batches(
    task: Task,
    batch_size: int = 10,
    *,
    shuffle: bool = False,
    generator: Optional[torch.Generator] = None,
    drop_last: bool = False,
) -> Iterator[Tuple[Tensor, Tensor]]:
    """Single pass over ``task``'s training data in mini-batches ``(x, y)``.

    The stream protocol (GEM / MER / La-MAML single-pass setting) uses
    ``batch_size=10`` and the stored order (already a random subset). With
    ``shuffle=True`` the order is permuted with ``generator``.
    """
    if not isinstance(task, Task):
        raise TypeError(f"task must be a Task, got {type(task).__name__}")
    batch_size = _check_int(batch_size, "batch_size", 1)
    n = task.num_train
    order = torch.randperm(n, generator=generator) if shuffle else None
    stop = n - n % batch_size if drop_last else n
    for start in range(0, stop, batch_size):
        end = min(start + batch_size, n)
        if order is None:
            yield task.x_train[start:end], task.y_train[start:end]
        else:
            idx = order[start:end]
            yield task.x_train[idx], task.y_train[idx]


def iterate_stream(
    tasks: Sequence[Task], batch_size: int = 10
) -> Iterator[Tuple[int, Tensor, Tensor]]:
    """Whole stream, task after task, as ``(task_id, x, y)`` mini-batches (single pass)."""
    for task in tasks:
        for x, y in iterate_task_batches(task, batch_size):
            yield task.task_id, x, y
