"""Cross-domain few-shot test sets of sparse-MAML Table 4: tieredImageNet, CUB-200-2011 and
Stanford Cars, as per-class tensors (:class:`~sparse_optim.data.FewShotSplits`).

None of them can be downloaded here; each loader reads the layouts these datasets are usually
distributed in.

tieredImageNet (Ren et al. 2018; 351 / 97 / 160 classes, 84x84), ``layout=``

* ``"pickle"`` -- the authors' release: ``root/{split}_images_png.pkl`` (a pickled list of
  PNG-encoded uint8 byte arrays) and ``root/{split}_labels.pkl`` (a dict with
  ``label_specific`` (int per image) and ``label_specific_str`` (class names));
* ``"npz"`` -- the decompressed copy used by MetaOptNet / FEAT: ``root/{split}_images.npz``
  (key ``images``, uint8 ``[n, 84, 84, 3]``) with the same ``{split}_labels.pkl``;
* ``"folders"`` -- ``root/{train,val,test}/<wnid>/*.jpg``.

CUB-200-2011 (Wah et al. 2011): ``root/CUB_200_2011/images/<NNN.Name>/*.jpg`` (the official
tarball; ``root/images/...`` also works). Split of Hilliard et al. (2018), the one of the
torchmeta / sparse-MAML split files: class id ``NNN`` odd -> train (100), ``NNN % 4 == 2`` ->
val (50), ``NNN % 4 == 0`` -> test (50).

Stanford Cars (Krause et al. 2013), ``layout=``

* ``"devkit"`` -- the official files (torchvision's ``StanfordCars`` layout, optionally under
  ``root/stanford_cars``): ``devkit/cars_meta.mat``, ``devkit/cars_train_annos.mat``,
  ``cars_train/*.jpg``, ``cars_test/*.jpg`` and ``cars_test_annos_withlabels.mat``;
* ``"folders"`` -- ``root/[train|test]/<class name>/*.jpg`` (one folder per class name, the
  usual image-folder conversion; train and test images are merged).

Split: the 98 / 49 / 49 class lists of :mod:`sparse_optim.data._cars_splits`.

Images are converted to RGB and resized (Lanczos) to ``image_size`` x ``image_size`` (84).
"""
from __future__ import annotations

import io
import os
import pickle
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence, Tuple, Union

import numpy as np
import torch
from torch import Tensor

from ._cars_splits import CARS_TEST_CLASSES, CARS_TRAIN_CLASSES, CARS_VAL_CLASSES
from .fewshot import FewShotSplits
from .mini_imagenet import _load_rgb, _read_folders

__all__ = ["load_tiered_imagenet", "load_cub", "load_cars", "cub_split", "CARS_TRAIN_CLASSES",
           "CARS_VAL_CLASSES", "CARS_TEST_CLASSES"]

_SPLITS = ("train", "val", "test")
PathLike = Union[str, os.PathLike]


def _check(image_size, max_per_class, splits, dtype) -> Tuple[str, ...]:
    if isinstance(image_size, bool) or not isinstance(image_size, int) or image_size < 1:
        raise ValueError(f"image_size must be a positive int, got {image_size!r}")
    if max_per_class is not None and (isinstance(max_per_class, bool) or not isinstance(max_per_class, int)
                                      or max_per_class < 1):
        raise ValueError(f"max_per_class must be None or a positive int, got {max_per_class!r}")
    splits = (splits,) if isinstance(splits, str) else tuple(splits)
    if not splits or any(s not in _SPLITS for s in splits):
        raise ValueError(f"splits must be a non-empty subset of {_SPLITS}, got {splits}")
    if dtype not in (torch.float32, torch.float64, torch.float16, torch.bfloat16, torch.uint8):
        raise ValueError(f"dtype must be a floating dtype or torch.uint8, got {dtype}")
    return splits


def _finish(x: Tensor, dtype: torch.dtype) -> Tensor:
    return x if dtype == torch.uint8 else x.to(dtype).div_(255.0)


def _from_files(files: List[Path], image_size: int, max_per_class: Optional[int], dtype, pool) -> Tensor:
    files = files[:max_per_class] if max_per_class is not None else files
    load = lambda f: _load_rgb(f, image_size)  # noqa: E731
    imgs = list(pool.map(load, files)) if pool is not None else [load(f) for f in files]
    return _finish(torch.stack(imgs), dtype)


def _splits_from_files(listing: Dict[str, Dict[str, List[Path]]], image_size, max_per_class, dtype, num_workers,
                       info) -> FewShotSplits:
    pool = ThreadPoolExecutor(num_workers) if num_workers > 0 else None
    try:
        out = {s: [_from_files(files, image_size, max_per_class, dtype, pool) for files in listing.get(s, {}).values()]
               for s in _SPLITS}
    finally:
        if pool is not None:
            pool.shutdown()
    return FewShotSplits(out["train"], out["val"], out["test"],
                         class_names={s: list(listing.get(s, {})) for s in _SPLITS}, info=info)


def _resize_array(arr: np.ndarray, image_size: int) -> Tensor:
    """HWC uint8 array -> CHW uint8 tensor of image_size x image_size."""
    from PIL import Image

    im = Image.fromarray(arr).convert("RGB")
    if im.size != (image_size, image_size):
        im = im.resize((image_size, image_size), resample=Image.LANCZOS)
    return torch.from_numpy(np.asarray(im, dtype=np.uint8).copy()).permute(2, 0, 1)


def _unpickle(path: Path):
    with open(path, "rb") as f:
        try:
            return pickle.load(f)
        except UnicodeDecodeError:  # python2 pickles of the original release
            f.seek(0)
            return pickle.load(f, encoding="latin1")


# ------------------------------------------------------------------------------------------ tiered
def _tiered_layout(root: Path) -> str:
    if any((root / f"{s}_images_png.pkl").is_file() for s in _SPLITS):
        return "pickle"
    if any((root / f"{s}_images.npz").is_file() for s in _SPLITS):
        return "npz"
    if any((root / s).is_dir() for s in _SPLITS):
        return "folders"
    raise FileNotFoundError(f"no tieredImageNet data in {root}: expected {{split}}_images_png.pkl, "
                            "{split}_images.npz (+ {split}_labels.pkl) or {train,val,test}/<wnid>/")


def load_tiered_imagenet(root: PathLike, image_size: int = 84, max_per_class: Optional[int] = None,
                         splits: Sequence[str] = _SPLITS, layout: str = "auto", dtype: torch.dtype = torch.float32,
                         num_workers: int = 0) -> FewShotSplits:
    """Load tieredImageNet (see the module docstring for the layouts).

    Classes of a split are ordered by their ``label_specific`` id (pickle / npz) or wnid
    (folders); ``max_per_class`` keeps the first images of each class in file order; splits not
    in ``splits`` come back empty. About 779k images: load only the splits you need (Table 4
    uses ``splits=("test",)``, 206k images, 4.4 GB as uint8).
    """
    splits = _check(image_size, max_per_class, splits, dtype)
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"tieredImageNet root {root} does not exist")
    if layout == "auto":
        layout = _tiered_layout(root)
    if layout not in ("pickle", "npz", "folders"):
        raise ValueError(f"layout must be 'auto', 'pickle', 'npz' or 'folders', got {layout!r}")
    info = {"dataset": "tiered_imagenet", "layout": layout, "image_size": image_size}
    if layout == "folders":
        listing = {}
        for s in splits:
            if not (root / s).is_dir():
                raise FileNotFoundError(f"{root / s} not found")
            listing[s] = _read_folders(root / s)
        return _splits_from_files(listing, image_size, max_per_class, dtype, num_workers, info)
    out: Dict[str, Tuple[List[Tensor], List[str]]] = {s: ([], []) for s in _SPLITS}
    for s in splits:
        labels_path = root / f"{s}_labels.pkl"
        if not labels_path.is_file():
            raise FileNotFoundError(f"{labels_path} not found")
        meta = _unpickle(labels_path)
        labels = np.asarray(meta["label_specific"], dtype=np.int64)
        names = list(meta.get("label_specific_str", [str(i) for i in range(int(labels.max()) + 1)]))
        if layout == "pickle":
            path = root / f"{s}_images_png.pkl"
            if not path.is_file():
                raise FileNotFoundError(f"{path} not found")
            encoded = _unpickle(path)

            def decode(i: int) -> Tensor:
                from PIL import Image

                with Image.open(io.BytesIO(np.asarray(encoded[i], dtype=np.uint8).tobytes())) as im:
                    return _resize_array(np.asarray(im.convert("RGB")), image_size)
            count = len(encoded)
        else:
            path = root / f"{s}_images.npz"
            if not path.is_file():
                raise FileNotFoundError(f"{path} not found")
            images = np.load(path)["images"]

            def decode(i: int) -> Tensor:
                return _resize_array(images[i], image_size)
            count = images.shape[0]
        if count != labels.shape[0]:
            raise RuntimeError(f"{path}: {count} images but {labels.shape[0]} labels in {labels_path}")
        classes, class_names = [], []
        for c in sorted(set(labels.tolist())):
            idx = np.nonzero(labels == c)[0]
            if max_per_class is not None:
                idx = idx[:max_per_class]
            classes.append(_finish(torch.stack([decode(int(i)) for i in idx]), dtype))
            class_names.append(str(names[c]) if c < len(names) else str(c))
        out[s] = (classes, class_names)
    return FewShotSplits(out["train"][0], out["val"][0], out["test"][0],
                         class_names={s: out[s][1] for s in _SPLITS}, info=info)


# ------------------------------------------------------------------------------------------ CUB
def cub_split(class_folder: str) -> str:
    """Hilliard et al. (2018) split of a CUB class folder ``NNN.Name``: odd id -> train,
    id % 4 == 2 -> val, id % 4 == 0 -> test."""
    try:
        cid = int(class_folder.split(".", 1)[0])
    except ValueError:
        raise ValueError(f"CUB class folder must look like 'NNN.Name', got {class_folder!r}") from None
    return "train" if cid % 2 == 1 else ("val" if cid % 4 == 2 else "test")


def load_cub(root: PathLike, image_size: int = 84, max_per_class: Optional[int] = None,
             splits: Sequence[str] = _SPLITS, dtype: torch.dtype = torch.float32, num_workers: int = 0) -> FewShotSplits:
    """Load CUB-200-2011 from ``root/CUB_200_2011/images`` (or ``root/images``) with the
    Hilliard et al. class split (:func:`cub_split`); classes sorted by folder name."""
    splits = _check(image_size, max_per_class, splits, dtype)
    root = Path(root)
    images = next((d for d in (root / "CUB_200_2011" / "images", root / "images") if d.is_dir()), None)
    if images is None:
        raise FileNotFoundError(f"no CUB images in {root}: expected CUB_200_2011/images/<NNN.Name>/*.jpg")
    listing: Dict[str, Dict[str, List[Path]]] = {s: {} for s in _SPLITS}
    for name, files in _read_folders(images).items():
        s = cub_split(name)
        if s in splits:
            listing[s][name] = files
    return _splits_from_files(listing, image_size, max_per_class, dtype, num_workers,
                              {"dataset": "cub", "split": "hilliard2018", "image_size": image_size})


# ------------------------------------------------------------------------------------------ Cars
def _mat_annotations(path: Path, with_class: bool) -> List[Tuple[str, int]]:
    from scipy.io import loadmat

    ann = loadmat(str(path), squeeze_me=True, struct_as_record=False)["annotations"]
    ann = np.atleast_1d(ann)
    return [(str(a.fname), int(a.__dict__["class"]) if with_class else -1) for a in ann]


def _cars_devkit_listing(base: Path) -> Dict[str, List[Path]]:
    from scipy.io import loadmat

    meta = loadmat(str(base / "devkit" / "cars_meta.mat"), squeeze_me=True)["class_names"]
    names = [str(n) for n in np.atleast_1d(meta)]
    by_class: Dict[str, List[Path]] = {}
    for folder, ann_path in (("cars_train", base / "devkit" / "cars_train_annos.mat"),
                             ("cars_test", base / "cars_test_annos_withlabels.mat")):
        if not ann_path.is_file():
            raise FileNotFoundError(f"{ann_path} not found")
        for fname, cls in _mat_annotations(ann_path, True):
            by_class.setdefault(names[cls - 1], []).append(base / folder / fname)
    return by_class


def load_cars(root: PathLike, image_size: int = 84, max_per_class: Optional[int] = None,
              splits: Sequence[str] = _SPLITS, layout: str = "auto", dtype: torch.dtype = torch.float32,
              num_workers: int = 0) -> FewShotSplits:
    """Load Stanford Cars (see the module docstring) split by :data:`CARS_TRAIN_CLASSES` /
    :data:`CARS_VAL_CLASSES` / :data:`CARS_TEST_CLASSES` (classes in list order)."""
    splits = _check(image_size, max_per_class, splits, dtype)
    root = Path(root)
    base = root / "stanford_cars" if (root / "stanford_cars" / "devkit").is_dir() else root
    if layout == "auto":
        layout = "devkit" if (base / "devkit" / "cars_meta.mat").is_file() else "folders"
    if layout == "devkit":
        by_class = _cars_devkit_listing(base)
    elif layout == "folders":
        by_class = {}
        tops = [d for d in (root / "train", root / "test") if d.is_dir()] or [root]
        for top in tops:
            for name, files in _read_folders(top).items():
                by_class.setdefault(name, []).extend(files)
        if not by_class:
            raise FileNotFoundError(f"no Stanford Cars data in {root}: expected devkit/ + cars_train/ or "
                                    "[train|test]/<class name>/*.jpg")
    else:
        raise ValueError(f"layout must be 'auto', 'devkit' or 'folders', got {layout!r}")
    lists = {"train": CARS_TRAIN_CLASSES, "val": CARS_VAL_CLASSES, "test": CARS_TEST_CLASSES}
    listing: Dict[str, Dict[str, List[Path]]] = {s: {} for s in _SPLITS}
    for s in splits:
        missing = [n for n in lists[s] if n not in by_class]
        if missing:
            raise RuntimeError(f"Stanford Cars in {root} lacks {len(missing)} {s} classes, e.g. {missing[0]!r}")
        listing[s] = {n: sorted(by_class[n]) for n in lists[s]}
    return _splits_from_files(listing, image_size, max_per_class, dtype, num_workers,
                              {"dataset": "cars", "layout": layout, "image_size": image_size})
