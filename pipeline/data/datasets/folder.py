"""``folder:PATH``: class-per-subfolder images read with PIL.

``PATH/{class}/*.png|jpg|...`` (split 80/20 by seed), or ``PATH/train/{class}/...`` and
``PATH/test/{class}/...``. Greyscale if every image is, else RGB; all images must share a size
unless ``--image-size`` resizes them. An empty split, an unreadable image or more than
``MAX_CLASSES`` class folders is an error naming the folder or file.
"""

from __future__ import annotations

from collections.abc import Iterator
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np

from reldrop.pipeline.data.datasets._registry import (
    BuildOptions,
    DatasetSource,
    Sample,
    fit_image,
    register_dataset,
    split_indices,
)
from reldrop.pipeline.data.datasets.arrays import MAX_CLASSES

__all__: list[str] = []

_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm"}


def _scan(root: Path) -> list[tuple[Path, str]]:
    return [
        (f, d.name)
        for d in sorted(p for p in root.iterdir() if p.is_dir())
        for f in sorted(d.rglob("*"))
        if f.suffix.lower() in _SUFFIXES
    ]


def _open(f: Path, where: str) -> Any:
    """``PIL.Image.open(f)``; an unreadable or oversized image is one error naming the file."""
    from PIL import Image

    try:
        return Image.open(f)
    except (OSError, Image.DecompressionBombError) as err:
        raise ValueError(f"{where}: {str(f)!r} is not a readable image ({err})") from err


def _check_plan(plan: dict[str, list[tuple[Path, str]]], root: Path, where: str) -> None:
    for split, items in plan.items():
        if not items:
            raise ValueError(
                f"{where}: split {split!r} has no images (expected {root}/[{split}/]CLASS/*.png)"
            )
    classes = {c for items in plan.values() for _, c in items}
    if len(classes) > MAX_CLASSES:
        raise ValueError(f"{where}: {len(classes)} class folders; at most {MAX_CLASSES}")


@register_dataset("folder", takes_path=True)
def folder(arg: str | None, options: BuildOptions) -> DatasetSource:
    root = Path(arg or "")
    where = f"folder:{arg}"
    if not root.is_dir():
        raise ValueError(f"{where}: directory does not exist")
    if (root / "train").is_dir() and (root / "test").is_dir():
        files = {s: _scan(root / s) for s in ("train", "test")}
        plan = {s: items[: options.limit] for s, items in files.items()}
    else:
        items = _scan(root)
        train, test = split_indices(len(items), seed=options.seed, limit=options.limit)
        plan = {"train": [items[i] for i in train], "test": [items[i] for i in test]}
    _check_plan(plan, root, where)
    class_names = tuple(sorted({c for items in plan.values() for _, c in items}))
    index = {c: i for i, c in enumerate(class_names)}

    def is_grey(f: Path) -> bool:
        with _open(f, where) as img:
            return img.mode in ("L", "1", "I", "I;16")

    grey = all(is_grey(f) for items in plan.values() for f, _ in items)
    size: list[tuple[int, ...]] = []

    def make(split: str) -> Iterator[Sample]:
        for n, (f, cls) in enumerate(plan[split]):
            with _open(f, where) as img:
                array = np.asarray(img.convert("L" if grey else "RGB"), dtype=np.uint8)
            array = fit_image(array, options.image_size)
            if not size:
                size.append(array.shape)
            elif array.shape != size[0]:
                raise ValueError(
                    f"{where}: {f} is {array.shape[:2]}, others {size[0][:2]}; "
                    "pass --image-size to resize"
                )
            image = array[None] if grey else array.transpose(2, 0, 1)
            yield {"key": f"{split}-{n:06d}", "image": image, "label": index[cls]}

    return DatasetSource(
        name=f"folder:{root.name}",
        num_classes=len(class_names),
        class_names=class_names,
        splits={split: partial(make, split) for split in plan},
        sizes={split: len(items) for split, items in plan.items()},
    )
