"""``npz:PATH``: images from a NumPy ``.npz`` file (loaded with ``allow_pickle=False``).

Arrays: ``x`` uint8 (N, H, W), (N, C, H, W) or (N, H, W, C) with C in {1, 3}; ``y`` integer
labels (N,) or (N, 1) (squeezed), each in [0, number of classes); optional ``mask`` (N, H, W)
0/1; optional ``class_names`` (unicode array; else the classes are 0 .. max label). With
``x_test``/``y_test`` (and ``mask_test``) those form the test split, otherwise 20% of ``x``.
Everything is checked before a sample is written: float labels, unequal lengths, empty splits,
mis-shaped masks and pickled arrays are each an error naming the file and the array.
"""

from __future__ import annotations

import zipfile
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

__all__ = ["MAX_CLASSES", "to_nchw"]

#: Most classes a dataset may have (a stray label of 10**12 must not size a 10**12-name table).
MAX_CLASSES = 100_000


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


def _load(path: Path, where: str) -> dict[str, np.ndarray]:
    """Every array of the ``.npz`` at ``path``; pickled (object) arrays are refused, never loaded."""
    try:
        data = np.load(path, allow_pickle=False)
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as err:
        raise ValueError(
            f"{where}: not a readable .npz file ({err}); write it with numpy.savez"
        ) from err
    if not isinstance(data, np.lib.npyio.NpzFile):
        raise ValueError(f"{where}: holds a single array (.npy); expected an .npz with 'x' and 'y'")
    arrays: dict[str, np.ndarray] = {}
    with data:
        for name in data.files:
            try:
                arrays[name] = data[name]
            except ValueError as err:  # object arrays need pickle
                raise ValueError(
                    f"{where}: array {name!r} holds pickled Python objects, which reldrop never "
                    "loads (allow_pickle=False); save it with a numeric or string dtype"
                ) from err
            except (OSError, EOFError, zipfile.BadZipFile) as err:
                raise ValueError(f"{where}: array {name!r} cannot be read ({err})") from err
    return arrays


def _labels(arrays: dict[str, np.ndarray], name: str, n: int, images: str, where: str) -> np.ndarray:
    """Integer class labels ``(N,)``; a ``(N, 1)`` column (as Keras saves labels) is squeezed."""
    y = arrays[name]
    if y.ndim == 2 and y.shape[1] == 1:
        y = y[:, 0]
    if y.ndim != 1:
        raise ValueError(f"{where}: array {name!r} has shape {y.shape}; expected (N,) or (N, 1) labels")
    if y.dtype.kind not in "iu":
        raise ValueError(
            f"{where}: array {name!r} has dtype {y.dtype}; expected integer class labels "
            "(labels are never rounded; cast whole-number labels with y.astype(numpy.int64))"
        )
    if len(y) != n:
        raise ValueError(
            f"{where}: array {name!r} has {len(y)} labels but {images!r} has {n} images; "
            "they must pair one to one"
        )
    if len(y) and int(y.min()) < 0:
        i = int(np.argmin(y))
        raise ValueError(f"{where}: array {name!r}[{i}] is {int(y[i])}; labels must be >= 0")
    if len(y) and int(y.max()) >= MAX_CLASSES:
        i = int(np.argmax(y))
        raise ValueError(
            f"{where}: array {name!r}[{i}] is {int(y[i])}; labels must be class indices below "
            f"{MAX_CLASSES} (at most {MAX_CLASSES} classes)"
        )
    return y.astype(np.int64)


def _images(arrays: dict[str, np.ndarray], name: str, split: str, where: str) -> np.ndarray:
    x = to_nchw(arrays[name], what=f"{where}: array {name!r}")
    if len(x) == 0:
        raise ValueError(f"{where}: array {name!r} is empty, so split {split!r} would have no samples")
    return x


def _mask(arrays: dict[str, np.ndarray], name: str, x: np.ndarray, where: str) -> np.ndarray | None:
    """Optional 0/1 masks ``(N, H, W)``, one per image of ``x``."""
    if name not in arrays:
        return None
    mask = arrays[name]
    expected = (len(x), *x.shape[2:])
    if mask.shape != expected or mask.dtype.kind not in "biuf":
        raise ValueError(
            f"{where}: array {name!r} is {mask.dtype} {mask.shape}; expected numeric {expected}, "
            "one 0/1 mask per image"
        )
    return mask


def _class_names(arrays: dict[str, np.ndarray], labels: list[np.ndarray], where: str) -> tuple[str, ...]:
    """``class_names`` if given (every label must index it), else ``0 .. max label``."""
    top = max(int(y.max()) for y in labels)
    if "class_names" not in arrays:
        return tuple(str(c) for c in range(top + 1))
    names = arrays["class_names"]
    if names.ndim != 1 or names.dtype.kind != "U" or not 1 <= len(names) <= MAX_CLASSES:
        raise ValueError(
            f"{where}: array 'class_names' is {names.dtype} {names.shape}; expected 1 to "
            f"{MAX_CLASSES} unicode strings"
        )
    if top >= len(names):
        raise ValueError(
            f"{where}: label {top} has no entry in array 'class_names' ({len(names)} names); "
            f"labels must lie in [0, {len(names)})"
        )
    return tuple(str(n) for n in names)


def _check_names(arrays: dict[str, np.ndarray], where: str) -> None:
    for needed in ("x", "y"):
        if needed not in arrays:
            raise ValueError(f"{where}: missing array {needed!r}; has {sorted(arrays)}")
    test = [name for name in ("x_test", "y_test") if name in arrays]
    if len(test) == 1 or ("mask_test" in arrays and not test):
        raise ValueError(f"{where}: has {test or ['mask_test']} alone; give x_test and y_test together")
    if test and ("mask" in arrays) != ("mask_test" in arrays):
        raise ValueError(f"{where}: give masks for both splits ('mask' and 'mask_test') or neither")


@register_dataset("npz", takes_path=True)
def npz(arg: str | None, options: BuildOptions) -> DatasetSource:
    path = Path(arg or "")
    where = f"npz:{arg}"
    if not path.is_file():
        raise ValueError(f"{where}: file does not exist")
    arrays = _load(path, where)
    _check_names(arrays, where)
    x = _images(arrays, "x", "train", where)
    y = _labels(arrays, "y", len(x), "x", where)
    mask = _mask(arrays, "mask", x, where)
    if "x_test" in arrays:
        x_test = _images(arrays, "x_test", "test", where)
        y_test = _labels(arrays, "y_test", len(x_test), "x_test", where)
        mask_test = _mask(arrays, "mask_test", x_test, where)
        train = np.arange(len(y) if options.limit is None else min(len(y), options.limit))
        test = np.arange(len(y_test) if options.limit is None else min(len(y_test), options.limit))
        plan = {"train": (x, y, mask, train), "test": (x_test, y_test, mask_test, test)}
    else:
        train, test = split_indices(len(y), seed=options.seed, limit=options.limit)
        plan = {"train": (x, y, mask, train), "test": (x, y, mask, test)}
    class_names = _class_names(arrays, [p[1] for p in plan.values()], where)

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
        num_classes=len(class_names),
        class_names=class_names,
        splits={split: partial(make, split) for split in plan},
        sizes={split: len(p[3]) for split, p in plan.items()},
    )
