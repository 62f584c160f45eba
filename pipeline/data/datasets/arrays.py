"""``npz:PATH``: images from a NumPy ``.npz`` file (loaded with ``allow_pickle=False``).

Arrays: ``x`` uint8 (N, H, W), (N, C, H, W) or (N, H, W, C) with C in {1, 3}; ``y`` integer
labels; optional ``mask`` (N, H, W) 0/1; optional ``class_names`` (unicode array). With
``x_test``/``y_test`` (and ``mask_test``) those form the test split, otherwise 20% of ``x``.
"""

from __future__ import annotations

from collections.abc import Iterator
from functools import partial
from pathlib import Path

import numpy as np

from reldrop.pipeline.data.datasets._registry import (
    BuildOptions,
    DatasetSource,
    Sample,
    fit_image,
    register_dataset,
    split_indices,
)

__all__ = ["to_nchw"]


def to_nchw(x: np.ndarray, *, what: str = "x") -> np.ndarray:
    """uint8 (N, H, W) / (N, C, H, W) / (N, H, W, C) -> (N, C, H, W); C must be 1 or 3."""
    if x.dtype != np.uint8:
        raise ValueError(f"{what}: dtype {x.dtype}; expected uint8")
    if x.ndim == 3:
        return x[:, None]
    if x.ndim == 4 and x.shape[1] in (1, 3):
        return x
    if x.ndim == 4 and x.shape[3] in (1, 3):
        return x.transpose(0, 3, 1, 2)
    raise ValueError(f"{what}: shape {x.shape}; expected (N,H,W), (N,C,H,W) or (N,H,W,C), C in 1/3")


def _resize(image: np.ndarray, size: int | None) -> np.ndarray:
    """(C, H, W) -> (C, size, size)."""
    if size is None:
        return image
    hwc = fit_image(image.transpose(1, 2, 0) if image.shape[0] == 3 else image[0], size)
    return hwc.transpose(2, 0, 1) if hwc.ndim == 3 else hwc[None]


@register_dataset("npz", takes_path=True)
def npz(arg: str | None, options: BuildOptions) -> DatasetSource:
    path = Path(arg or "")
    if not path.is_file():
        raise ValueError(f"npz:{arg}: file does not exist")
    with np.load(path, allow_pickle=False) as data:
        arrays = {k: data[k] for k in data.files}
    for needed in ("x", "y"):
        if needed not in arrays:
            raise ValueError(f"npz:{arg}: missing array {needed!r}; has {sorted(arrays)}")
    x, y = to_nchw(arrays["x"]), np.asarray(arrays["y"]).astype(np.int64)
    if len(y) != len(x):
        raise ValueError(f"npz:{arg}: {len(x)} images but {len(y)} labels")
    mask = arrays.get("mask")
    if "x_test" in arrays:
        x_test, y_test = to_nchw(arrays["x_test"], what="x_test"), arrays["y_test"].astype(np.int64)
        mask_test = arrays.get("mask_test")
        train = np.arange(len(y) if options.limit is None else min(len(y), options.limit))
        test = np.arange(len(y_test) if options.limit is None else min(len(y_test), options.limit))
        plan = {"train": (x, y, mask, train), "test": (x_test, y_test, mask_test, test)}
    else:
        train, test = split_indices(len(y), seed=options.seed, limit=options.limit)
        plan = {"train": (x, y, mask, train), "test": (x, y, mask, test)}
    all_labels = np.concatenate([p[1] for p in plan.values()])
    names = arrays.get("class_names")
    num_classes = len(names) if names is not None else int(all_labels.max()) + 1
    if all_labels.min() < 0 or all_labels.max() >= num_classes:
        raise ValueError(f"npz:{arg}: labels must lie in [0, {num_classes})")
    class_names = tuple(str(n) for n in names) if names is not None else tuple(
        str(c) for c in range(num_classes)
    )

    def make(split: str) -> Iterator[Sample]:
        xs, ys, masks, indices = plan[split]
        for i in indices:
            sample: Sample = {
                "key": f"{split}-{int(i):06d}",
                "image": _resize(xs[i], options.image_size),
                "label": int(ys[i]),
            }
            if masks is not None:
                m = (np.asarray(masks[i]) > 0).astype(np.uint8)
                sample["mask"] = _resize(m[None], options.image_size)[0]
            yield sample

    return DatasetSource(
        name=f"npz:{path.name}",
        num_classes=num_classes,
        class_names=class_names,
        splits={split: partial(make, split) for split in plan},
        sizes={split: len(p[3]) for split, p in plan.items()},
    )
