"""``digits``: scikit-learn's 1797 8x8 handwritten digits (``load_digits``) scaled to uint8."""

from __future__ import annotations

from collections.abc import Iterator

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

__all__: list[str] = []


@register_dataset("digits")
def digits(arg: str | None, options: BuildOptions) -> DatasetSource:
    """8x8 digits (0..16 scaled to 0..255), 80/20 train/test, ``--image-size`` resizes."""
    from sklearn.datasets import load_digits

    bunch = load_digits()
    images = np.clip(np.rint(bunch.images * (255.0 / 16.0)), 0, 255).astype(np.uint8)
    labels = np.asarray(bunch.target, dtype=np.int64)
    train, test = split_indices(len(labels), seed=options.seed, limit=options.limit)

    def make(split: str, indices: np.ndarray) -> Iterator[Sample]:
        for i in indices:
            image = fit_image(images[i], options.image_size)
            yield {
                "key": f"{split}-{int(i):05d}",
                "image": image[None],
                "label": int(labels[i]),
                "mask": digit_mask(image, threshold=32, dilate=0),
            }

    return DatasetSource(
        name="digits",
        num_classes=10,
        class_names=tuple(str(d) for d in range(10)),
        splits={"train": lambda: make("train", train), "test": lambda: make("test", test)},
        sizes={"train": len(train), "test": len(test)},
    )
