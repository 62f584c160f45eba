"""``viviano-synthetic``: a two-class shortcut task after Viviano et al. 2019 ("Saliency is a
possible red herring when diagnosing poor generalization", arXiv 1910.00199, synthetic task).

Each 28 x 28 grey image holds noise (mean 40, std ``NOISE_STD`` grey levels), the **true
evidence** (a 7 x 7 shape anywhere in the central 16 x 16: a hollow square for class 0,
a cross for class 1, ``SHAPE_CONTRAST`` grey levels above the background) and a small bright
**distractor** (a 3 x 3 white square near the top edge: left half for class 0, right half for
class 1). The mask marks the shape (its 9 x 9 box), never the distractor.

Splits: ``train`` and ``val`` (in distribution: the distractor agrees with the label; ``val``
is for model selection), ``test`` (in distribution, held out) and ``test-ood`` (out of
distribution: the distractor sits on the *other* class's side, so a model that reads it is
always wrong). A model that uses the shape scores ~1 on both; one that uses the distractor
scores ~1 in distribution and ~0 out of it.

The contrast is chosen so the shape is learnable but harder than the distractor: measured
with the small CNN (857 training images, 8 epochs, SGD lr 0.05), training on the masked
shape alone reached 0.91 test accuracy at contrast 140 but stayed at chance (0.50) at 45 and
90, while the unregularized model reached 1.00 in distribution and 0.00 out of it.
"""

from __future__ import annotations

from collections.abc import Iterator
from functools import partial

import numpy as np

from reldrop.pipeline.data.datasets._registry import (
    BuildOptions,
    DatasetSource,
    Sample,
    register_dataset,
)

__all__ = ["NOISE_STD", "SHAPE_CONTRAST", "SIZES", "draw_sample", "shape_pattern"]

#: samples per split (before ``--limit``, which scales them down proportionally)
SIZES: dict[str, int] = {"train": 2000, "val": 500, "test": 500, "test-ood": 500}
NOISE_STD = 25.0
SHAPE_CONTRAST = 140.0
_SIDE = 28
_SHAPE = 7


def shape_pattern(label: int) -> np.ndarray:
    """The 7 x 7 bool pattern of a class: hollow square (0) or cross (1)."""
    p = np.zeros((_SHAPE, _SHAPE), dtype=bool)
    if label == 0:
        p[0, :] = p[-1, :] = p[:, 0] = p[:, -1] = True
    else:
        p[_SHAPE // 2, :] = p[:, _SHAPE // 2] = True
    return p


def draw_sample(label: int, rng: np.random.Generator, *, flipped: bool) -> tuple[np.ndarray, np.ndarray]:
    """``(image uint8 28 x 28, mask uint8 28 x 28)`` of class ``label``; ``flipped`` puts the
    distractor on the other class's side."""
    image = rng.normal(40.0, NOISE_STD, size=(_SIDE, _SIDE))
    top, left = (int(v) for v in rng.integers(6, 6 + 16 - _SHAPE + 1, size=2))
    region = (slice(top, top + _SHAPE), slice(left, left + _SHAPE))
    image[region] += SHAPE_CONTRAST * shape_pattern(label)
    mask = np.zeros((_SIDE, _SIDE), dtype=np.uint8)
    mask[top - 1 : top + _SHAPE + 1, left - 1 : left + _SHAPE + 1] = 1
    side = (1 - label) if flipped else label
    row = int(rng.integers(0, 3))
    col = int(rng.integers(1, 10)) + (14 if side == 1 else 0)
    image[row : row + 3, col : col + 3] = 255.0
    return np.clip(np.rint(image), 0, 255).astype(np.uint8), mask


def _split(split: str, n: int, seed: int, stream: int) -> Iterator[Sample]:
    rng = np.random.default_rng([seed, 0x51A7, stream])
    labels = rng.permutation(np.arange(n) % 2)
    for i, label in enumerate(labels):
        image, mask = draw_sample(int(label), rng, flipped=split == "test-ood")
        yield {"key": f"{split}-{i:05d}", "image": image[None], "label": int(label), "mask": mask}


@register_dataset("viviano-synthetic")
def viviano_synthetic(arg: str | None, options: BuildOptions) -> DatasetSource:
    """Viviano-style shortcut task: ``train``, ``val``, ``test`` (distractor agrees with the
    label) and ``test-ood`` (distractor flipped: the out-of-distribution split)."""
    if options.image_size not in (None, _SIDE):
        raise ValueError(f"viviano-synthetic: image_size must be {_SIDE}; got {options.image_size}")
    total = sum(SIZES.values())
    scale = 1.0 if options.limit is None else min(1.0, options.limit / total)
    sizes = {s: max(1, int(round(n * scale))) for s, n in SIZES.items()}
    return DatasetSource(
        name="viviano-synthetic",
        num_classes=2,
        class_names=("square", "cross"),
        splits={s: partial(_split, s, n, options.seed, k) for k, (s, n) in enumerate(sizes.items())},
        sizes=sizes,
    )
