"""Sample schema and the bytes it has inside a WebDataset tar shard; no pickle anywhere.

A decoded sample is a dict::

    {"key": str, "url": str, "label": int,
     "image": uint8 (C, H, W)      # or "points": float32 (N, C)
     "mask": uint8 (H, W) | (N,)}  # optional, 1 = region of interest

Inside a tar, entries ``{key}.{ext}`` as webdataset names them. reldrop writes ``png`` (uint8
image, 1 or 3 channels) or ``npy`` (uint8 CHW image, or float32 (N, C) point cloud),
``points.npy``, ``cls`` (label as text), optional ``mask.png`` / ``mask.npy``; keys contain no
``.``. It reads those and what other tools write: ``jpg``/``jpeg``/``png``/``webp`` images,
``cls`` or ``json`` labels (``DecodeOptions`` says which members to use).

Decoding (which members, batched image decoding, validation) is
:mod:`reldrop.pipeline.data.decode`.
"""

from __future__ import annotations

import io
import math
from collections.abc import Mapping
from typing import Any

import numpy as np

__all__ = ["PICKLE_EXTENSIONS", "SampleError", "encode_sample", "missing", "validate_key"]

#: extensions whose decoding could run code (pickle, torch.load); always refused
PICKLE_EXTENSIONS = frozenset({"pyd", "pickle", "pkl", "pth", "pt", "ckpt", "joblib", "pyc"})
_POINTS_KEY = "points.npy"


class SampleError(ValueError):
    """A sample that cannot be decoded or breaks the schema; names shard URL and key."""

    def __init__(self, url: str, key: str, problem: str) -> None:
        super().__init__(f"shard {url!r}, sample {key!r}: {problem}")
        self.url = url
        self.key = key
        self.problem = problem

    def __reduce__(self) -> tuple[Any, tuple[str, str, str]]:  # travels back from Ray tasks
        return type(self), (self.url, self.key, self.problem)


def validate_key(key: object) -> str:
    """Return ``key`` if it is a usable WebDataset sample key, else raise ``ValueError``."""
    if not isinstance(key, str) or not key:
        raise ValueError(f"sample key must be a non-empty string; got {key!r}")
    if "." in key or key.startswith("__") or "\\" in key:
        raise ValueError(
            f"sample key {key!r} must not contain '.' or '\\' nor start with '__' "
            "(WebDataset splits the key from the extension at the first '.')"
        )
    return key


def _npy_bytes(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, np.ascontiguousarray(array), allow_pickle=False)
    return buffer.getvalue()


def _png_bytes(array: np.ndarray) -> bytes:
    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(array)).save(buffer, format="PNG", compress_level=1)
    return buffer.getvalue()


def encode_sample(sample: Mapping[str, Any]) -> dict[str, bytes | str]:
    """Tar entries (extension -> bytes, plus ``__key__`` -> str) for a decoded ``sample``.

    Images with 1 or 3 channels become ``png``, others ``npy``; point clouds ``points.npy``;
    masks with values 0/1 ``mask.png`` (images) or ``mask.npy`` (points).
    """
    key = validate_key(sample.get("key"))
    label = sample.get("label")
    if isinstance(label, bool) or not isinstance(label, int | np.integer) or label < 0:
        raise ValueError(f"sample {key!r}: label must be an int >= 0; got {label!r}")
    out: dict[str, bytes | str] = {"__key__": key, "cls": str(int(label)).encode()}
    image, points = sample.get("image"), sample.get("points")
    if (image is None) == (points is None):
        raise ValueError(f"sample {key!r}: give exactly one of 'image' or 'points'")
    if image is not None:
        image = np.asarray(image)
        if image.dtype != np.uint8 or image.ndim != 3:
            raise ValueError(
                f"sample {key!r}: image must be uint8 (C, H, W); got {image.dtype} {image.shape}"
            )
        if image.shape[0] == 1:
            out["png"] = _png_bytes(image[0])
        elif image.shape[0] == 3:
            out["png"] = _png_bytes(image.transpose(1, 2, 0))
        else:
            out["npy"] = _npy_bytes(image)
        spatial: tuple[int, ...] = image.shape[1:]
    else:
        points = np.asarray(points)
        if points.dtype != np.float32 or points.ndim != 2:
            raise ValueError(
                f"sample {key!r}: points must be float32 (N, C); got {points.dtype} {points.shape}"
            )
        out[_POINTS_KEY] = _npy_bytes(points)
        spatial = points.shape[:1]
    mask = sample.get("mask")
    if mask is not None:
        mask = np.asarray(mask)
        if mask.dtype != np.uint8 or mask.shape != spatial or (mask.size and mask.max() > 1):
            raise ValueError(
                f"sample {key!r}: mask must be uint8 0/1 of shape {spatial}; "
                f"got {mask.dtype} {mask.shape}"
            )
        if image is not None:
            out["mask.png"] = _png_bytes(mask)
        else:
            out["mask.npy"] = _npy_bytes(mask)
    return out


def missing(value: object) -> bool:
    """Whether a member's value is absent (``None``, or NaN as Ray fills missing columns)."""
    return value is None or (isinstance(value, float) and math.isnan(value))

