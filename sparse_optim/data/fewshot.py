"""Generic N-way K-shot episode sampling over per-class image tensors.

A labelled dataset is represented as a sequence (or mapping) of per-class
tensors ``images_by_class[c]`` of shape ``[n_c, C, H, W]`` (any trailing shape
is accepted, as long as it is the same for every class).  :class:`FewShotSampler`
draws episodes (tasks) from it: ``ways`` classes are picked uniformly without
replacement, in random order, and relabelled ``0 .. ways-1``; for each class
``shots + queries`` distinct examples are drawn, the first ``shots`` forming
the support (inner-loop / training) set and the remaining ``queries`` the query
(outer-loop / validation) set.

The loaders in :mod:`sparse_optim.data` return :class:`FewShotSplits`, which
holds the meta-train / meta-validation / meta-test class lists.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Dict, Hashable, List, Mapping, NamedTuple, Optional, Sequence, Tuple, Union

import torch
from torch import Tensor

__all__ = [
    "Episode",
    "FewShotSampler",
    "FewShotSplits",
    "augment_with_rotations",
    "split_classes",
    "uint8_to_float",
]

ImagesByClass = Union[Sequence[Tensor], Mapping[Hashable, Tensor]]


class Episode(NamedTuple):
    """One few-shot task (or a stacked batch of tasks, with a leading task dim).

    Shapes for a single episode: ``support_x [ways*shots, *item_shape]``,
    ``support_y [ways*shots]`` (int64 in ``0..ways-1``), ``query_x
    [ways*queries, *item_shape]``, ``query_y [ways*queries]``.  Examples are
    ordered class-major (all examples of label 0, then label 1, ...).
    """

    support_x: Tensor
    support_y: Tensor
    query_x: Tensor
    query_y: Tensor

    def to(self, *args: Any, **kwargs: Any) -> "Episode":
        """Move/cast the inputs like :meth:`Tensor.to`; labels are only moved."""
        dev = _device_from_to_args(*args, **kwargs)
        return Episode(
            self.support_x.to(*args, **kwargs),
            self.support_y.to(dev) if dev is not None else self.support_y,
            self.query_x.to(*args, **kwargs),
            self.query_y.to(dev) if dev is not None else self.query_y,
        )


def _device_from_to_args(*args: Any, **kwargs: Any) -> Optional[torch.device]:
    if "device" in kwargs:
        return torch.device(kwargs["device"])
    for a in args:
        if isinstance(a, (str, torch.device)):
            return torch.device(a)
        if isinstance(a, Tensor):
            return a.device
    return None


def _check_int(name: str, value: Any, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(f"{name} must be an int, got {type(value).__name__} ({value!r})")
    if value < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {value}")
    return value


def _as_class_list(images_by_class: ImagesByClass, arg_name: str = "images_by_class") -> Tuple[List[Tensor], List[Hashable]]:
    """Normalise a sequence/mapping of per-class tensors into (tensors, keys)."""
    if isinstance(images_by_class, Tensor):
        raise ValueError(
            f"{arg_name} must be a sequence or mapping of per-class tensors, not a single Tensor "
            "(use list(tensor) if its first dim indexes classes)"
        )
    if isinstance(images_by_class, Mapping):
        keys: List[Hashable] = list(images_by_class.keys())
        tensors = [images_by_class[k] for k in keys]
    elif isinstance(images_by_class, Sequence) and not isinstance(images_by_class, (str, bytes)):
        tensors = list(images_by_class)
        keys = list(range(len(tensors)))
    else:
        raise ValueError(
            f"{arg_name} must be a sequence or mapping of per-class tensors, got {type(images_by_class).__name__}"
        )
    for k, t in zip(keys, tensors):
        if not isinstance(t, Tensor):
            raise ValueError(f"{arg_name}[{k!r}] must be a Tensor, got {type(t).__name__}")
        if t.dim() < 1:
            raise ValueError(f"{arg_name}[{k!r}] must have a leading example dimension, got a 0-d tensor")
    return tensors, keys


class FewShotSampler:
    """Samples N-way K-shot episodes from per-class tensors.

    Args:
        images_by_class: sequence of tensors ``[n_i, C, H, W]`` (class ``i``) or
            a mapping ``class_key -> tensor``.  All tensors must share their
            trailing shape, dtype and device.
        ways: number of classes per episode (N).
        shots: support examples per class (K), >= 1.
        queries: query examples per class, >= 0.
        seed: seed for a private CPU :class:`torch.Generator` (deterministic
            episode stream).  Mutually exclusive with ``generator``.
        generator: an existing CPU generator to draw from.  If neither ``seed``
            nor ``generator`` is given, a generator seeded from torch's global
            RNG is created.
        transform: optional callable applied to the stacked ``support_x`` and
            ``query_x`` of every episode (e.g. :func:`uint8_to_float`).

    Every class needs at least ``shots + queries`` examples; otherwise a
    ``ValueError`` naming the class is raised.
    """

    def __init__(
        self,
        images_by_class: ImagesByClass,
        ways: int,
        shots: int,
        queries: int,
        seed: Optional[int] = None,
        generator: Optional[torch.Generator] = None,
        transform: Optional[Callable[[Tensor], Tensor]] = None,
    ) -> None:
        tensors, keys = _as_class_list(images_by_class)
        self.ways = _check_int("ways", ways, 1)
        self.shots = _check_int("shots", shots, 1)
        self.queries = _check_int("queries", queries, 0)
        if len(tensors) == 0:
            raise ValueError("images_by_class is empty")
        if ways > len(tensors):
            raise ValueError(f"ways={ways} exceeds the number of classes ({len(tensors)})")
        item_shape = tensors[0].shape[1:]
        for k, t in zip(keys, tensors):
            if t.shape[1:] != item_shape:
                raise ValueError(
                    f"images_by_class[{k!r}] has item shape {tuple(t.shape[1:])}, expected {tuple(item_shape)} "
                    "(all classes must share their trailing shape)"
                )
            if t.dtype != tensors[0].dtype or t.device != tensors[0].device:
                raise ValueError(f"images_by_class[{k!r}] differs in dtype/device from the first class")
            if t.shape[0] < shots + queries:
                raise ValueError(
                    f"images_by_class[{k!r}] has {t.shape[0]} examples, fewer than shots + queries = "
                    f"{shots + queries}"
                )
        if seed is not None and generator is not None:
            raise ValueError("pass either seed or generator, not both")
        if generator is None:
            if seed is None:
                seed = int(torch.randint(0, 2**62, (1,)).item())
            generator = torch.Generator().manual_seed(_check_int("seed", seed, 0))
        elif not isinstance(generator, torch.Generator):
            raise ValueError(f"generator must be a torch.Generator, got {type(generator).__name__}")
        elif generator.device.type != "cpu":
            raise ValueError(f"generator must be a CPU generator, got device {generator.device}")
        if transform is not None and not callable(transform):
            raise ValueError("transform must be callable or None")
        self.images_by_class = tensors
        self.class_keys = keys
        self.item_shape = tuple(item_shape)
        self.generator = generator
        self.transform = transform
        self.last_classes: Optional[List[Hashable]] = None

    @property
    def num_classes(self) -> int:
        """Number of classes available to sample from."""
        return len(self.images_by_class)

    def sample_classes(self) -> List[int]:
        """Draw ``ways`` distinct class indices in random order."""
        return torch.randperm(self.num_classes, generator=self.generator)[: self.ways].tolist()

    def episode_from_classes(self, classes: Sequence[int]) -> Episode:
        """Build an episode whose label ``j`` is the class index ``classes[j]``."""
        if len(classes) != self.ways:
            raise ValueError(f"classes must have length ways={self.ways}, got {len(classes)}")
        if len(set(classes)) != len(classes):
            raise ValueError(f"classes must be distinct, got {list(classes)}")
        sx, qx = [], []
        k = self.shots + self.queries
        for c in classes:
            if not 0 <= c < self.num_classes:
                raise ValueError(f"class index {c} out of range [0, {self.num_classes})")
            data = self.images_by_class[c]
            idx = torch.randperm(data.shape[0], generator=self.generator)[:k].to(data.device)
            chosen = data.index_select(0, idx)
            sx.append(chosen[: self.shots])
            qx.append(chosen[self.shots :])
        device = self.images_by_class[0].device
        labels = torch.arange(self.ways, device=device)
        support_x = torch.cat(sx, 0)
        query_x = torch.cat(qx, 0)
        if self.transform is not None:
            support_x = self.transform(support_x)
            query_x = self.transform(query_x)
        self.last_classes = [self.class_keys[c] for c in classes]
        return Episode(
            support_x,
            labels.repeat_interleave(self.shots),
            query_x,
            labels.repeat_interleave(self.queries),
        )

    def sample(self) -> Episode:
        """Sample one episode; ``self.last_classes`` records its class keys."""
        return self.episode_from_classes(self.sample_classes())

    def sample_batch(self, n: int, stack: bool = True) -> Union[Episode, List[Episode]]:
        """Sample ``n`` independent episodes.

        With ``stack=True`` (default) returns one :class:`Episode` whose tensors
        have a leading task dimension of size ``n`` (e.g. ``support_x`` is
        ``[n, ways*shots, C, H, W]``); otherwise a list of episodes.
        """
        _check_int("n", n, 1)
        episodes = [self.sample() for _ in range(n)]
        if not stack:
            return episodes
        return Episode(*(torch.stack(parts, 0) for parts in zip(*episodes)))

    def __iter__(self):
        """Infinite stream of episodes."""
        while True:
            yield self.sample()

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(num_classes={self.num_classes}, ways={self.ways}, shots={self.shots}, "
            f"queries={self.queries}, item_shape={self.item_shape})"
        )


def augment_with_rotations(
    images_by_class: ImagesByClass, rotations: Sequence[int] = (0, 90, 180, 270)
) -> Union[List[Tensor], Dict[Tuple[Hashable, int], Tensor]]:
    """Omniglot protocol (Santoro et al. 2016; Finn et al. 2017): each class rotated
    by each angle in ``rotations`` (degrees, multiples of 90, counter-clockwise over
    the last two dims) becomes a separate class.

    A sequence input gives a list ordered class-major
    (``[c0@r0, c0@r1, ..., c1@r0, ...]``, so ``len = n_classes * len(rotations)``);
    a mapping input gives a dict keyed by ``(class_key, angle)``.
    """
    tensors, keys = _as_class_list(images_by_class)
    rotations = list(rotations)
    if len(rotations) == 0:
        raise ValueError("rotations must be non-empty")
    ks = []
    for r in rotations:
        if isinstance(r, bool) or not isinstance(r, int) or r % 90 != 0:
            raise ValueError(f"rotations must be integer multiples of 90 degrees, got {r!r}")
        ks.append((r // 90) % 4)
    if len(set(ks)) != len(ks):
        raise ValueError(f"rotations contains duplicate angles (mod 360): {rotations}")
    for k, t in zip(keys, tensors):
        if t.dim() < 3:
            raise ValueError(f"images_by_class[{k!r}] must be [n, ..., H, W] with at least 3 dims, got {tuple(t.shape)}")
    out = [(key, r, torch.rot90(t, q, dims=(-2, -1)) if q else t) for key, t in zip(keys, tensors) for r, q in zip(rotations, ks)]
    if isinstance(images_by_class, Mapping):
        return {(key, r): t for key, r, t in out}
    return [t for _, _, t in out]


@dataclass
class FewShotSplits:
    """Meta-train / meta-validation / meta-test class lists of a few-shot dataset.

    ``train``, ``val`` and ``test`` are lists of per-class tensors usable by
    :class:`FewShotSampler`; ``class_names[split]`` gives a name per class
    (same order).  ``info`` holds free-form provenance notes.  ``splits["train"]``
    is equivalent to ``splits.train``.
    """

    train: List[Tensor]
    val: List[Tensor]
    test: List[Tensor]
    class_names: Dict[str, List[str]] = field(default_factory=dict)
    info: Dict[str, Any] = field(default_factory=dict)

    def __getitem__(self, split: str) -> List[Tensor]:
        if split not in ("train", "val", "test"):
            raise ValueError(f"split must be 'train', 'val' or 'test', got {split!r}")
        return getattr(self, split)

    def sampler(self, split: str, ways: int, shots: int, queries: int, **kwargs: Any) -> FewShotSampler:
        """Convenience: a :class:`FewShotSampler` over one split."""
        return FewShotSampler(self[split], ways, shots, queries, **kwargs)

    def __repr__(self) -> str:
        def desc(ts: List[Tensor]) -> str:
            if not ts:
                return "0 classes"
            return f"{len(ts)} classes x ~{ts[0].shape[0]} of {tuple(ts[0].shape[1:])}"

        return f"FewShotSplits(train={desc(self.train)}, val={desc(self.val)}, test={desc(self.test)})"


def split_classes(
    images_by_class: Sequence[Tensor], num_train: int, num_val: int, seed: Optional[int] = 0
) -> Tuple[List[int], List[int], List[int]]:
    """Partition class indices into (train, val, test) index lists.

    Classes are shuffled with a CPU generator seeded by ``seed`` (``None`` keeps
    the given order); the first ``num_train`` go to train, the next ``num_val``
    to val and the rest to test.
    """
    n = len(images_by_class)
    _check_int("num_train", num_train, 0)
    _check_int("num_val", num_val, 0)
    if num_train + num_val > n:
        raise ValueError(f"num_train + num_val = {num_train + num_val} exceeds the number of classes ({n})")
    if seed is None:
        order = list(range(n))
    else:
        g = torch.Generator().manual_seed(_check_int("seed", seed, 0))
        order = torch.randperm(n, generator=g).tolist()
    return order[:num_train], order[num_train : num_train + num_val], order[num_train + num_val :]


def uint8_to_float(x: Tensor) -> Tensor:
    """Convert a uint8 image tensor to float32 in [0, 1] (other dtypes pass through)."""
    return x.float().div_(255.0) if x.dtype == torch.uint8 else x
