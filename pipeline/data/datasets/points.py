"""``points``: synthetic point clouds of five surfaces, N points x 3, float32.

Sphere, cube, cylinder, cone and torus surfaces sampled uniformly by area, then a random
rotation, an isotropic scale in [0.7, 1.3] and Gaussian noise (sigma 0.01).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

import numpy as np

from reldrop.pipeline.data.datasets._registry import (
    BuildOptions,
    DatasetSource,
    Sample,
    register_dataset,
    split_indices,
)

__all__ = ["SHAPES", "random_rotation", "sample_surface"]

SHAPES = ("sphere", "cube", "cylinder", "cone", "torus")
_PER_CLASS = 500


def _sphere(rng: np.random.Generator, n: int) -> np.ndarray:
    v = rng.normal(size=(n, 3))
    return v / np.linalg.norm(v, axis=1, keepdims=True)


def _cube(rng: np.random.Generator, n: int) -> np.ndarray:
    p = rng.uniform(-1, 1, size=(n, 3))
    axis = rng.integers(3, size=n)
    p[np.arange(n), axis] = rng.choice([-1.0, 1.0], size=n)
    return p


def _cylinder(rng: np.random.Generator, n: int) -> np.ndarray:
    theta = rng.uniform(0, 2 * np.pi, n)
    cap = rng.random(n) < 1 / 3  # caps: 2*pi of 6*pi total area (r = 1, h = 2)
    r = np.where(cap, np.sqrt(rng.random(n)), 1.0)
    z = np.where(cap, rng.choice([-1.0, 1.0], size=n), rng.uniform(-1, 1, n))
    return np.stack([r * np.cos(theta), r * np.sin(theta), z], axis=1)


def _cone(rng: np.random.Generator, n: int) -> np.ndarray:
    theta = rng.uniform(0, 2 * np.pi, n)
    slant = np.sqrt(5.0)  # r = 1, h = 2
    base = rng.random(n) < 1 / (1 + slant)
    r = np.sqrt(rng.random(n))
    z = np.where(base, -1.0, 1 - 2 * r)
    return np.stack([r * np.cos(theta), r * np.sin(theta), z], axis=1)


def _torus(rng: np.random.Generator, n: int, big: float = 1.0, small: float = 0.35) -> np.ndarray:
    out: list[np.ndarray] = []
    while sum(len(o) for o in out) < n:
        theta, phi = rng.uniform(0, 2 * np.pi, (2, 2 * n))
        keep = rng.random(2 * n) < (big + small * np.cos(phi)) / (big + small)
        ring = big + small * np.cos(phi[keep])
        t = theta[keep]
        out.append(np.stack([ring * np.cos(t), ring * np.sin(t), small * np.sin(phi[keep])], 1))
    return np.concatenate(out)[:n]


_SAMPLERS: dict[str, Callable[[np.random.Generator, int], np.ndarray]] = {
    "sphere": _sphere, "cube": _cube, "cylinder": _cylinder, "cone": _cone, "torus": _torus,
}


def random_rotation(rng: np.random.Generator) -> np.ndarray:
    """A uniformly random 3x3 rotation (QR of a Gaussian matrix, det +1)."""
    q, r = np.linalg.qr(rng.normal(size=(3, 3)))
    q = q * np.sign(np.diag(r))
    if np.linalg.det(q) < 0:
        q[:, 0] = -q[:, 0]
    return q


def sample_surface(shape: str, rng: np.random.Generator, n: int) -> np.ndarray:
    """``n`` points on ``shape`` (one of :data:`SHAPES`), rotated, scaled, noised; float32."""
    if shape not in _SAMPLERS:
        raise ValueError(f"shape {shape!r}; allowed: {list(SHAPES)}")
    points = _SAMPLERS[shape](rng, n) @ random_rotation(rng).T
    points = points * rng.uniform(0.7, 1.3) + rng.normal(scale=0.01, size=points.shape)
    return points.astype(np.float32)


@register_dataset("points")
def points(arg: str | None, options: BuildOptions) -> DatasetSource:
    """2500 clouds (500 per shape), 80/20 train/test; ``--num-points`` sets N."""
    total = _PER_CLASS * len(SHAPES)
    train, test = split_indices(total, seed=options.seed, limit=options.limit)

    def make(split: str, indices: np.ndarray) -> Iterator[Sample]:
        for i in indices:
            rng = np.random.default_rng([options.seed, int(i)])
            label = int(i) % len(SHAPES)
            cloud = sample_surface(SHAPES[label], rng, options.num_points)
            yield {"key": f"{split}-{int(i):05d}", "points": cloud, "label": label}

    return DatasetSource(
        name="points",
        num_classes=len(SHAPES),
        class_names=SHAPES,
        splits={"train": lambda: make("train", train), "test": lambda: make("test", test)},
        sizes={"train": len(train), "test": len(test)},
    )
