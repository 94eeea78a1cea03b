"""miniImageNet (Vinyals et al. 2016) with the Ravi & Larochelle (2017) split,
loaded from a user-provided directory (it cannot be downloaded automatically).

Two layouts are supported:

* ``csv`` (the widely used release)::

      root/images/<filename>.jpg
      root/train.csv  root/val.csv  root/test.csv     # header "filename,label"

  where ``label`` is the ImageNet wnid (e.g. ``n01532829``).
* ``folders``::

      root/train/<wnid>/*.jpg   root/val/<wnid>/*.jpg   root/test/<wnid>/*.jpg

The standard split has 64 / 16 / 20 classes of 600 images each.
"""

from __future__ import annotations

import csv
import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple, Union

import torch
from torch import Tensor

from .fewshot import FewShotSplits

__all__ = ["load_mini_imagenet", "list_mini_imagenet"]

_SPLITS = ("train", "val", "test")
_IMAGE_EXTS = (".jpg", ".jpeg", ".png", ".bmp")


def _load_rgb(path: Path, image_size: int) -> Tensor:
    from PIL import Image
    import numpy as np

    with Image.open(path) as im:
        im = im.convert("RGB")
        if im.size != (image_size, image_size):
            im = im.resize((image_size, image_size), resample=Image.LANCZOS)
        arr = np.asarray(im, dtype=np.uint8).copy()
    return torch.from_numpy(arr).permute(2, 0, 1)  # [3,H,W] uint8


def _detect_layout(root: Path) -> str:
    if any((root / f"{s}.csv").is_file() for s in _SPLITS):
        return "csv"
    if any((root / s).is_dir() for s in _SPLITS):
        return "folders"
    raise FileNotFoundError(
        f"no miniImageNet data in {root}: expected {{train,val,test}}.csv + images/ or {{train,val,test}}/<wnid>/"
    )


def _read_csv(path: Path, image_dir: Path) -> Dict[str, List[Path]]:
    by_label: Dict[str, List[Path]] = {}
    with open(path, newline="") as f:
        reader = csv.reader(f)
        header = next(reader, None)
        if header is None or [h.strip().lower() for h in header[:2]] != ["filename", "label"]:
            raise RuntimeError(f"{path}: expected header 'filename,label', got {header}")
        for row in reader:
            if not row or not row[0].strip():
                continue
            if len(row) < 2:
                raise RuntimeError(f"{path}: malformed row {row}")
            by_label.setdefault(row[1].strip(), []).append(image_dir / row[0].strip())
    return by_label


def _read_folders(split_dir: Path) -> Dict[str, List[Path]]:
    out: Dict[str, List[Path]] = {}
    for cdir in sorted(p for p in split_dir.iterdir() if p.is_dir()):
        files = sorted(p for p in cdir.iterdir() if p.suffix.lower() in _IMAGE_EXTS)
        if files:
            out[cdir.name] = files
    return out


def list_mini_imagenet(
    root: Union[str, os.PathLike], split: str, layout: str = "auto"
) -> Dict[str, List[Path]]:
    """Map ``wnid -> image paths`` of one split (classes sorted by wnid; images in
    csv order for the csv layout, sorted by file name for the folder layout)."""
    root = Path(root)
    if split not in _SPLITS:
        raise ValueError(f"split must be one of {_SPLITS}, got {split!r}")
    if layout not in ("auto", "csv", "folders"):
        raise ValueError(f"layout must be 'auto', 'csv' or 'folders', got {layout!r}")
    if layout == "auto":
        layout = _detect_layout(root)
    if layout == "csv":
        path = root / f"{split}.csv"
        if not path.is_file():
            raise FileNotFoundError(f"{path} not found")
        by_label = _read_csv(path, root / "images")
    else:
        sdir = root / split
        if not sdir.is_dir():
            raise FileNotFoundError(f"{sdir} not found")
        by_label = _read_folders(sdir)
    return {k: by_label[k] for k in sorted(by_label)}


def load_mini_imagenet(
    root: Union[str, os.PathLike],
    image_size: int = 84,
    max_per_class: Optional[int] = None,
    splits: Sequence[str] = _SPLITS,
    layout: str = "auto",
    dtype: torch.dtype = torch.float32,
    num_workers: int = 0,
) -> FewShotSplits:
    """Eagerly load miniImageNet into per-class tensors ``[n, 3, image_size, image_size]``.

    Images are converted to RGB and resized with a Lanczos filter when they are
    not already ``image_size`` square; values are in [0, 1] (or raw 0..255 with
    ``dtype=torch.uint8``; use ``uint8_to_float`` as the sampler transform).

    Memory: the full dataset (60,000 images at 84x84) takes about 5.1 GB as
    float32 and 1.3 GB as uint8.  ``max_per_class`` keeps only the first ``n``
    images of every class (csv order / sorted file names); ``splits`` loads only
    the named splits (the others are returned as empty lists).

    Args:
        root: dataset directory in the ``csv`` or ``folders`` layout (module doc).
        layout: ``"auto"`` (csv if ``train.csv`` exists, else folders), ``"csv"``
            or ``"folders"``.
        num_workers: threads used to decode images (0: in the calling thread).
    """
    if isinstance(image_size, bool) or not isinstance(image_size, int) or image_size < 1:
        raise ValueError(f"image_size must be a positive int, got {image_size!r}")
    if max_per_class is not None and (
        isinstance(max_per_class, bool) or not isinstance(max_per_class, int) or max_per_class < 1
    ):
        raise ValueError(f"max_per_class must be None or a positive int, got {max_per_class!r}")
    if isinstance(splits, str):
        splits = (splits,)
    bad = [s for s in splits if s not in _SPLITS]
    if bad or not splits:
        raise ValueError(f"splits must be a non-empty subset of {_SPLITS}, got {tuple(splits)}")
    if dtype not in (torch.float32, torch.float64, torch.float16, torch.bfloat16, torch.uint8):
        raise ValueError(f"dtype must be a floating dtype or torch.uint8, got {dtype}")
    if isinstance(num_workers, bool) or not isinstance(num_workers, int) or num_workers < 0:
        raise ValueError(f"num_workers must be a non-negative int, got {num_workers!r}")
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"miniImageNet root {root} does not exist")
    if layout == "auto":
        layout = _detect_layout(root)

    def load_class(files: List[Path], pool: Optional[ThreadPoolExecutor]) -> Tensor:
        files = files[:max_per_class] if max_per_class is not None else files
        missing = [f for f in files if not f.is_file()]
        if missing:
            raise FileNotFoundError(f"missing image file(s), e.g. {missing[0]}")
        load = lambda f: _load_rgb(f, image_size)  # noqa: E731
        imgs = list(pool.map(load, files)) if pool is not None else [load(f) for f in files]
        x = torch.stack(imgs)
        return x if dtype == torch.uint8 else x.to(dtype).div_(255.0)

    result: Dict[str, Tuple[List[Tensor], List[str]]] = {s: ([], []) for s in _SPLITS}
    pool = ThreadPoolExecutor(num_workers) if num_workers > 0 else None
    try:
        for s in splits:
            listing = list_mini_imagenet(root, s, layout)
            result[s] = ([load_class(files, pool) for files in listing.values()], list(listing))
    finally:
        if pool is not None:
            pool.shutdown()
    return FewShotSplits(
        result["train"][0],
        result["val"][0],
        result["test"][0],
        class_names={s: result[s][1] for s in _SPLITS},
        info={"dataset": "mini_imagenet", "layout": layout, "image_size": image_size, "max_per_class": max_per_class},
    )
