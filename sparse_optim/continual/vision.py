"""Image task streams: La-MAML's task-incremental CIFAR-100 / TinyImageNet-200 and class-incremental
Split-CIFAR-10 (sparse-MAML supplement Table S7).

* **CIFAR-100** (La-MAML Sec. 5.2, App. F): the 100 classes in a random order (seeded), 20 tasks of
  5 classes; 10 % of every class's training images held out for validation (the official
  ``--validation 0.1``), the test set for testing.
* **TinyImageNet-200**: 40 tasks of 5 classes; its validation set (50 images per class) split per
  class into *val* and *test* halves (La-MAML App. F: the test labels are not released).
* **Split-CIFAR-10** (supplement B.4): 5 tasks of 2 classes, class-incremental (one head).

Labels are re-indexed in class order, so task ``t`` of ``c``-class tasks holds the global labels
``t c .. t c + c - 1`` (:class:`~sparse_optim.continual.MultiHeadLoss` reads its head from them).
Images stay ``uint8`` ``[N, 3, H, W]`` (TinyImageNet's 100,000 images are 1.2 GB so, 4.9 GB as
floats); the networks normalise them (:class:`~sparse_optim.models.LaMAMLConvNet`).

Loaders read the datasets' own on-disk formats: the ``cifar-10-batches-py`` / ``cifar-100-python``
pickles (``download=True`` fetches them through torchvision, which checks their MD5 sums) and the
``tiny-imagenet-200`` folder (``train/<wnid>/images/*.JPEG``, ``val/images`` +
``val/val_annotations.txt``, ``wnids.txt``).
"""
from __future__ import annotations

import pickle
from pathlib import Path
from typing import List, NamedTuple, Optional, Sequence, Tuple, Union

import numpy as np
import torch
from torch import Tensor

from .streams import Task

__all__ = ["ImageSplits", "load_cifar", "load_tiny_imagenet", "class_split_tasks", "augment_batch",
           "CIFAR10_STATS", "CIFAR100_STATS", "IMAGENET_STATS"]

PathLike = Union[str, Path]
# per-channel (mean, std) of the official La-MAML transforms (dataloaders/idataset.py)
CIFAR10_STATS = ((0.4914, 0.4822, 0.4465), (0.2023, 0.1994, 0.2010))
CIFAR100_STATS = ((0.5071, 0.4867, 0.4408), (0.2675, 0.2565, 0.2761))
IMAGENET_STATS = ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))


class ImageSplits(NamedTuple):
    """uint8 ``[N, 3, H, W]`` images and int64 labels; ``x_val`` / ``y_val`` may be None."""
    x_train: Tensor
    y_train: Tensor
    x_test: Tensor
    y_test: Tensor
    x_val: Optional[Tensor] = None
    y_val: Optional[Tensor] = None


def _unpickle(path: Path) -> dict:
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found (pass download=True, or point data_root at the folder that "
                                f"holds {path.parent.name}/)")
    with open(path, "rb") as f:
        return pickle.load(f, encoding="latin1")


def load_cifar(root: PathLike, classes: int = 100, download: bool = False) -> ImageSplits:
    """CIFAR-10 / CIFAR-100 from their python pickles under ``root`` (``cifar-10-batches-py`` /
    ``cifar-100-python``, fine labels)."""
    if classes not in (10, 100):
        raise ValueError(f"classes must be 10 or 100, got {classes!r}")
    root = Path(root).expanduser()
    if download:
        from torchvision import datasets

        (datasets.CIFAR10 if classes == 10 else datasets.CIFAR100)(str(root), train=True, download=True)
    if classes == 10:
        folder = root / "cifar-10-batches-py"
        train = [_unpickle(folder / f"data_batch_{i}") for i in range(1, 6)]
        test = [_unpickle(folder / "test_batch")]
        key = "labels"
    else:
        folder = root / "cifar-100-python"
        train, test, key = [_unpickle(folder / "train")], [_unpickle(folder / "test")], "fine_labels"

    def stack(parts):
        x = np.concatenate([np.asarray(p["data"], dtype=np.uint8) for p in parts]).reshape(-1, 3, 32, 32)
        y = np.concatenate([np.asarray(p[key], dtype=np.int64) for p in parts])
        return torch.from_numpy(x.copy()), torch.from_numpy(y)

    return ImageSplits(*stack(train), *stack(test))


def _read_rgb(path: Path, size: int) -> np.ndarray:
    from PIL import Image

    with Image.open(path) as im:
        im = im.convert("RGB")
        if im.size != (size, size):
            im = im.resize((size, size))
        return np.asarray(im, dtype=np.uint8).transpose(2, 0, 1)


def load_tiny_imagenet(root: PathLike, val_fraction: float = 0.5, seed: int = 0) -> ImageSplits:
    """TinyImageNet-200 from ``root`` (the ``tiny-imagenet-200`` folder or its parent): the train
    images, and the labelled validation images split per class into val (``val_fraction``) and
    test (La-MAML App. F)."""
    root = Path(root).expanduser()
    if not (root / "wnids.txt").is_file() and (root / "tiny-imagenet-200" / "wnids.txt").is_file():
        root = root / "tiny-imagenet-200"
    if not (root / "wnids.txt").is_file():
        raise FileNotFoundError(f"{root}/wnids.txt not found: expected the tiny-imagenet-200 folder "
                                "(http://cs231n.stanford.edu/tiny-imagenet-200.zip, unzipped)")
    wnids = [w.strip() for w in (root / "wnids.txt").read_text().split() if w.strip()]
    index = {w: i for i, w in enumerate(wnids)}
    xs, ys = [], []
    for w in wnids:
        files = sorted((root / "train" / w / "images").glob("*.JPEG"))
        if not files:
            raise FileNotFoundError(f"no training images in {root / 'train' / w / 'images'}")
        xs += [_read_rgb(f, 64) for f in files]
        ys += [index[w]] * len(files)
    annotations = root / "val" / "val_annotations.txt"
    if not annotations.is_file():
        raise FileNotFoundError(f"{annotations} not found")
    vx, vy = [], []
    for line in annotations.read_text().splitlines():
        parts = line.split("\t")
        if len(parts) >= 2 and parts[1] in index:
            vx.append(_read_rgb(root / "val" / "images" / parts[0], 64))
            vy.append(index[parts[1]])
    vy_t = torch.tensor(vy, dtype=torch.long)
    val_idx, test_idx = _per_class_split(vy_t, val_fraction, torch.Generator().manual_seed(seed))
    vx_t = torch.from_numpy(np.stack(vx))
    return ImageSplits(torch.from_numpy(np.stack(xs)), torch.tensor(ys, dtype=torch.long),
                       vx_t[test_idx], vy_t[test_idx], vx_t[val_idx], vy_t[val_idx])


def _per_class_split(y: Tensor, fraction: float, g: torch.Generator) -> Tuple[Tensor, Tensor]:
    """(first, rest) indices: ``int(n_c * fraction)`` random items of every class c go first."""
    if not 0.0 <= fraction < 1.0:
        raise ValueError(f"the held-out fraction must lie in [0, 1), got {fraction!r}")
    first, rest = [], []
    for c in torch.unique(y).tolist():
        idx = torch.nonzero(y == c).flatten()
        idx = idx[torch.randperm(idx.numel(), generator=g)]
        n = int(idx.numel() * fraction)
        first.append(idx[:n])
        rest.append(idx[n:])
    return torch.cat(first).sort().values, torch.cat(rest).sort().values


def class_split_tasks(data: ImageSplits, classes_per_task: int, *, num_tasks: Optional[int] = None,
                      validation: float = 0.1, class_order: Union[str, Sequence[int]] = "random",
                      seed: int = 0, samples_per_task: Optional[int] = None) -> List[Task]:
    """Disjoint class-split tasks (task ``t`` = classes ``order[t c : (t + 1) c]``, relabelled ``t c + j``).

    Args:
        data: the dataset's splits; when it has no validation split, ``validation`` of every
            class's training images is held out (official ``--validation``).
        classes_per_task: ``c``.
        num_tasks: the first ``num_tasks`` tasks (default: all ``n_classes // c``).
        class_order: ``"random"`` (seeded permutation, the official ``--class_order random``),
            ``"fixed"`` (0, 1, ...) or an explicit order.
        samples_per_task: keep at most this many (random) training images per task.
    """
    g = torch.Generator().manual_seed(seed)
    n_classes = int(data.y_train.max()) + 1
    if isinstance(class_order, str):
        if class_order not in ("random", "fixed"):
            raise ValueError(f"class_order must be 'random', 'fixed' or a sequence, got {class_order!r}")
        order = torch.randperm(n_classes, generator=g) if class_order == "random" else torch.arange(n_classes)
    else:
        order = torch.as_tensor(list(class_order), dtype=torch.long)
        if sorted(order.tolist()) != list(range(n_classes)):
            raise ValueError(f"class_order must be a permutation of 0..{n_classes - 1}")
    total = n_classes // classes_per_task
    num_tasks = total if num_tasks is None else num_tasks
    if not 1 <= num_tasks <= total:
        raise ValueError(f"num_tasks must lie in [1, {total}] for {n_classes} classes in tasks of {classes_per_task}")
    x_tr, y_tr, x_val, y_val = data.x_train, data.y_train, data.x_val, data.y_val
    if x_val is None and validation > 0:
        val_idx, tr_idx = _per_class_split(y_tr, validation, g)
        x_val, y_val, x_tr, y_tr = x_tr[val_idx], y_tr[val_idx], x_tr[tr_idx], y_tr[tr_idx]
    relabel = torch.empty(n_classes, dtype=torch.long)
    relabel[order] = torch.arange(n_classes)

    def select(x, y, classes):
        if x is None:
            return None, None
        keep = torch.isin(y, classes)
        return x[keep], relabel[y[keep]]

    tasks = []
    for t in range(num_tasks):
        classes = order[t * classes_per_task:(t + 1) * classes_per_task]
        xt, yt = select(x_tr, y_tr, classes)
        perm = torch.randperm(xt.shape[0], generator=g)   # the stream order within the task
        if samples_per_task is not None:
            perm = perm[:samples_per_task]
        xe, ye = select(data.x_test, data.y_test, classes)
        xv, yv = select(x_val, y_val, classes)
        tasks.append(Task(task_id=t, x_train=xt[perm], y_train=yt[perm], x_test=xe, y_test=ye, kind="classes",
                          x_val=xv, y_val=yv, classes=classes.tolist()))
    return tasks


def augment_batch(x: Tensor, generator: torch.Generator, *, pad: int = 4, flip: bool = True,
                  brightness: float = 0.0) -> Tensor:
    """The official La-MAML train transforms on a uint8 ``[N, 3, H, W]`` batch: random crop after
    zero padding by ``pad``, random horizontal flip, brightness jitter by a factor in
    ``[1 - brightness, 1 + brightness]`` (CIFAR: 63 / 255)."""
    n, _, h, w = x.shape
    out = x
    if pad:
        padded = torch.nn.functional.pad(x, (pad, pad, pad, pad))
        dy = torch.randint(0, 2 * pad + 1, (n,), generator=generator)
        dx = torch.randint(0, 2 * pad + 1, (n,), generator=generator)
        out = torch.stack([padded[i, :, dy[i]:dy[i] + h, dx[i]:dx[i] + w] for i in range(n)])
    if flip:
        mirrored = torch.rand(n, generator=generator) < 0.5
        out = torch.where(mirrored[:, None, None, None], out.flip(-1), out)
    if brightness:
        factor = 1 + (torch.rand(n, generator=generator) * 2 - 1) * brightness
        out = (out.float() * factor[:, None, None, None]).clamp_(0, 255).round_().to(x.dtype)
    return out
