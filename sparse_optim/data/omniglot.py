"""Omniglot (Lake et al. 2015) as per-class tensors with the MAML split.

On-disk layout (the one ``torchvision.datasets.Omniglot`` downloads and extracts)::

    root/omniglot-py/images_background/<alphabet>/<character>/*.png   (964 characters)
    root/omniglot-py/images_evaluation/<alphabet>/<character>/*.png    (659 characters)

Both folders are merged into 1623 character classes of 20 drawings each.  The
extracted folders are read directly (torchvision's own integrity check needs the
original ``.zip`` files next to them, which many copies of the dataset lack);
``torchvision`` is only used to download when a folder is missing.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import List, Optional, Sequence, Tuple, Union

import torch
from torch import Tensor

from .fewshot import FewShotSplits, augment_with_rotations, split_classes

__all__ = ["load_omniglot", "OMNIGLOT_SUBSETS"]

OMNIGLOT_SUBSETS = ("images_background", "images_evaluation")
_IMAGE_EXTS = (".png",)


def _sorted_dirs(path: Path) -> List[str]:
    return sorted(p.name for p in path.iterdir() if p.is_dir())


def _load_gray(path: Path, image_size: int) -> Tensor:
    from PIL import Image
    import numpy as np

    with Image.open(path) as im:
        im = im.convert("L")
        if im.size != (image_size, image_size):
            im = im.resize((image_size, image_size), resample=Image.LANCZOS)
        arr = np.asarray(im, dtype=np.uint8).copy()
    return torch.from_numpy(arr)


def list_omniglot_characters(root: Union[str, os.PathLike]) -> List[Tuple[str, List[Path]]]:
    """List ``(class_name, sorted_png_paths)`` for every character, in a fixed order.

    Order: ``images_background`` then ``images_evaluation``; alphabets and
    characters sorted by name.  ``class_name`` is ``"<subset>/<alphabet>/<character>"``.
    """
    base = Path(root) / "omniglot-py"
    out: List[Tuple[str, List[Path]]] = []
    for subset in OMNIGLOT_SUBSETS:
        sdir = base / subset
        for alphabet in _sorted_dirs(sdir):
            for character in _sorted_dirs(sdir / alphabet):
                cdir = sdir / alphabet / character
                files = sorted(p for p in cdir.iterdir() if p.suffix.lower() in _IMAGE_EXTS)
                if files:
                    out.append((f"{subset}/{alphabet}/{character}", files))
    return out


def load_omniglot(
    root: Union[str, os.PathLike],
    download: bool = True,
    image_size: int = 28,
    num_train: int = 1100,
    num_val: int = 100,
    seed: Optional[int] = 1,
    rotate_train: bool = True,
    rotate_eval: bool = False,
    rotations: Sequence[int] = (0, 90, 180, 270),
    invert: bool = True,
    dtype: torch.dtype = torch.float32,
) -> FewShotSplits:
    """Load Omniglot as per-class tensors ``[20, 1, image_size, image_size]``.

    Preprocessing follows Finn et al. (2017): 105x105 drawings resized with a
    Lanczos filter to ``image_size`` (28) and scaled to [0, 1]; with
    ``invert=True`` (MAML's ``1 - image``) strokes are 1 and background 0.
    ``dtype=torch.uint8`` keeps 0..255 values (use ``uint8_to_float`` as the
    sampler transform) to save memory.

    Split: all 1623 characters are listed in a fixed order (see
    :func:`list_omniglot_characters`), shuffled with a torch generator seeded by
    ``seed`` (``None``: keep alphabetical order), then the first ``num_train``
    are meta-train, the next ``num_val`` meta-validation and the rest (423 by
    default) meta-test.  The defaults reproduce the *sizes* of Finn et al.'s code
    (``num_train=1200`` there includes the 100 validation characters, i.e.
    1100/100/423; the KFO paper's "1,200 / 100 / 423" only adds up to 1623 when
    read this way).  Pass ``num_train=1200`` for a 1200/100/323 split.  The exact
    character assignment differs from Finn et al.'s (theirs depends on
    ``os.listdir`` order and Python's ``random``), so it is reproducible here but
    not identical.

    Rotations: with ``rotate_train`` each meta-train character rotated by each
    angle in ``rotations`` is an additional class (4 x num_train classes), as in
    Santoro et al. 2016 / Finn et al. 2017.  ``rotate_eval`` does the same for val
    and test.  ``class_names`` entries of rotated classes end in ``"@<angle>"``.

    Args:
        root: directory containing (or to receive) ``omniglot-py``.
        download: fetch a missing subset via ``torchvision.datasets.Omniglot``.

    Raises:
        FileNotFoundError: a subset folder is missing and ``download=False``.
        ValueError: bad arguments (e.g. ``num_train + num_val`` > #characters).
    """
    if isinstance(image_size, bool) or not isinstance(image_size, int) or image_size < 1:
        raise ValueError(f"image_size must be a positive int, got {image_size!r}")
    for name, v in (("num_train", num_train), ("num_val", num_val)):
        if isinstance(v, bool) or not isinstance(v, int) or v < 0:
            raise ValueError(f"{name} must be a non-negative int, got {v!r}")
    if dtype not in (torch.float32, torch.float64, torch.float16, torch.bfloat16, torch.uint8):
        raise ValueError(f"dtype must be a floating dtype or torch.uint8, got {dtype}")
    base = Path(root) / "omniglot-py"
    for subset in OMNIGLOT_SUBSETS:
        if not (base / subset).is_dir():
            if not download:
                raise FileNotFoundError(
                    f"Omniglot folder {base / subset} not found; pass download=True or extract "
                    f"{subset}.zip there"
                )
            from torchvision.datasets import Omniglot

            Omniglot(str(root), background=(subset == "images_background"), download=True)
    characters = list_omniglot_characters(root)
    if num_train + num_val > len(characters):
        raise ValueError(
            f"num_train + num_val = {num_train + num_val} exceeds the {len(characters)} characters found in {base}"
        )

    classes: List[Tensor] = []
    for _, files in characters:
        imgs = torch.stack([_load_gray(f, image_size) for f in files]).unsqueeze(1)  # [n,1,H,W] uint8
        if invert:
            imgs = 255 - imgs
        classes.append(imgs if dtype == torch.uint8 else imgs.to(dtype).div_(255.0))
    names = [n for n, _ in characters]

    tr, va, te = split_classes(classes, num_train, num_val, seed=seed)

    def gather(idx: List[int], rotate: bool) -> Tuple[List[Tensor], List[str]]:
        ts = [classes[i] for i in idx]
        ns = [names[i] for i in idx]
        if not rotate:
            return ts, ns
        rot = list(rotations)
        return augment_with_rotations(ts, rot), [f"{n}@{r}" for n in ns for r in rot]  # type: ignore[return-value]

    (train, train_n), (val, val_n), (test, test_n) = (
        gather(tr, rotate_train),
        gather(va, rotate_eval),
        gather(te, rotate_eval),
    )
    return FewShotSplits(
        train,
        val,
        test,
        class_names={"train": train_n, "val": val_n, "test": test_n},
        info={
            "dataset": "omniglot",
            "num_characters": len(characters),
            "split_seed": seed,
            "rotations": list(rotations),
            "rotate_train": rotate_train,
            "rotate_eval": rotate_eval,
            "invert": invert,
        },
    )
