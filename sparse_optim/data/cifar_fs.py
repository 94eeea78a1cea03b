"""CIFAR-FS (Bertinetto et al. 2019): CIFAR-100 split by class into 64/16/20.

The split lists below are the published CIFAR-FS split (``splits/bertinetto``
of the R2D2 code release), written out by class name.  They were checked
against an independent public copy of that split (the CIFAR-FS split files
shipped with the ``torchmeta`` library); they agree.
"""

from __future__ import annotations

import os
import pickle
from pathlib import Path
from typing import Any, Dict, List, Tuple, Union

import numpy as np
import torch
from torch import Tensor

from .fewshot import FewShotSplits

__all__ = [
    "load_cifar_fs",
    "read_cifar100",
    "CIFAR_FS_TRAIN_CLASSES",
    "CIFAR_FS_VAL_CLASSES",
    "CIFAR_FS_TEST_CLASSES",
]

#: 64 meta-training classes (published split).
CIFAR_FS_TRAIN_CLASSES: Tuple[str, ...] = (
    "apple", "aquarium_fish", "bear", "bee", "bottle", "bowl", "boy", "bridge",
    "bus", "can", "castle", "caterpillar", "chair", "clock", "cloud", "cockroach",
    "couch", "cup", "dinosaur", "dolphin", "elephant", "forest", "girl", "hamster",
    "house", "kangaroo", "keyboard", "lawn_mower", "lion", "lizard", "lobster", "mountain",
    "mouse", "mushroom", "oak_tree", "orange", "orchid", "palm_tree", "pear", "pine_tree",
    "plate", "porcupine", "possum", "rabbit", "raccoon", "ray", "road", "seal",
    "shrew", "skunk", "skyscraper", "snake", "spider", "squirrel", "streetcar", "sunflower",
    "tank", "tiger", "train", "trout", "tulip", "turtle", "willow_tree", "wolf",
)  # fmt: skip

#: 16 meta-validation classes (published split).
CIFAR_FS_VAL_CLASSES: Tuple[str, ...] = (
    "beaver", "beetle", "butterfly", "camel", "cattle", "crab", "crocodile", "flatfish",
    "lamp", "maple_tree", "motorcycle", "otter", "sea", "shark", "television", "tractor",
)  # fmt: skip

#: 20 meta-test classes (published split).
CIFAR_FS_TEST_CLASSES: Tuple[str, ...] = (
    "baby", "bed", "bicycle", "chimpanzee", "fox", "leopard", "man", "pickup_truck",
    "plain", "poppy", "rocket", "rose", "snail", "sweet_pepper", "table", "telephone",
    "wardrobe", "whale", "woman", "worm",
)  # fmt: skip

_FOLDER = "cifar-100-python"


def _get(d: Dict[Any, Any], key: str) -> Any:
    """Field access tolerant of python2-era pickles with bytes keys."""
    if key in d:
        return d[key]
    bkey = key.encode()
    if bkey in d:
        return d[bkey]
    raise KeyError(key)


def _unpickle(path: Path) -> Dict[Any, Any]:
    with open(path, "rb") as f:
        return pickle.load(f, encoding="latin1")


def read_cifar100(root: Union[str, os.PathLike]) -> Tuple[np.ndarray, np.ndarray, List[str]]:
    """Read ``root/cifar-100-python/{train,test,meta}`` (the official python pickles).

    Returns ``(images uint8 [N,3,32,32], fine_labels int64 [N], fine_label_names)``
    with the train file's examples first, then the test file's.
    """
    base = Path(root) / _FOLDER
    xs, ys = [], []
    for name in ("train", "test"):
        entry = _unpickle(base / name)
        data = np.asarray(_get(entry, "data"), dtype=np.uint8)
        labels = np.asarray(_get(entry, "fine_labels"), dtype=np.int64)
        if data.ndim != 2 or data.shape[1] != 3 * 32 * 32 or data.shape[0] != labels.shape[0]:
            raise RuntimeError(f"{base / name}: unexpected data shape {data.shape} / labels {labels.shape}")
        xs.append(data.reshape(-1, 3, 32, 32))
        ys.append(labels)
    names = [n.decode() if isinstance(n, bytes) else str(n) for n in _get(_unpickle(base / "meta"), "fine_label_names")]
    return np.concatenate(xs), np.concatenate(ys), names


def load_cifar_fs(
    root: Union[str, os.PathLike],
    download: bool = True,
    dtype: torch.dtype = torch.float32,
) -> FewShotSplits:
    """Load CIFAR-FS: CIFAR-100 train+test merged (600 images per class) and
    split by class name into :data:`CIFAR_FS_TRAIN_CLASSES` (64),
    :data:`CIFAR_FS_VAL_CLASSES` (16) and :data:`CIFAR_FS_TEST_CLASSES` (20).

    Each class is a tensor ``[600, 3, 32, 32]`` in [0, 1] (``dtype=torch.uint8``
    keeps raw 0..255 values; 60,000 images take ~0.74 GB as float32).  Classes
    within a split follow the order of the lists above; within a class, the
    CIFAR-100 train examples come first, then the test examples, in file order.

    The pickles are read directly (no md5 check); ``torchvision.datasets.CIFAR100``
    is only used to download (and verify) them when ``download=True`` and they
    are missing.

    Raises:
        FileNotFoundError: files are missing and ``download=False``.
        RuntimeError: the files lack a class name of the split.
    """
    if dtype not in (torch.float32, torch.float64, torch.float16, torch.bfloat16, torch.uint8):
        raise ValueError(f"dtype must be a floating dtype or torch.uint8, got {dtype}")
    base = Path(root) / _FOLDER
    if not all((base / n).is_file() for n in ("train", "test", "meta")):
        if not download:
            raise FileNotFoundError(f"CIFAR-100 python files not found in {base}; pass download=True")
        from torchvision.datasets import CIFAR100

        CIFAR100(str(root), train=True, download=True)
    images, labels, names = read_cifar100(root)
    index = {n: i for i, n in enumerate(names)}
    missing = [n for n in CIFAR_FS_TRAIN_CLASSES + CIFAR_FS_VAL_CLASSES + CIFAR_FS_TEST_CLASSES if n not in index]
    if missing:
        raise RuntimeError(f"CIFAR-100 meta file in {base} lacks CIFAR-FS classes: {missing}")

    def per_class(class_names: Tuple[str, ...]) -> List[Tensor]:
        out = []
        for n in class_names:
            x = torch.from_numpy(images[labels == index[n]].copy())
            out.append(x if dtype == torch.uint8 else x.to(dtype).div_(255.0))
        return out

    return FewShotSplits(
        per_class(CIFAR_FS_TRAIN_CLASSES),
        per_class(CIFAR_FS_VAL_CLASSES),
        per_class(CIFAR_FS_TEST_CLASSES),
        class_names={
            "train": list(CIFAR_FS_TRAIN_CLASSES),
            "val": list(CIFAR_FS_VAL_CLASSES),
            "test": list(CIFAR_FS_TEST_CLASSES),
        },
        info={"dataset": "cifar_fs", "split": "bertinetto2019"},
    )
