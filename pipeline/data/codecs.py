"""Sample schema and the bytes it has inside a WebDataset tar shard; no pickle anywhere.

A decoded sample is a dict::

    {"key": str, "url": str, "label": int,
     "image": uint8 (C, H, W)      # or "points": float32 (N, C)
     "mask": uint8 (H, W) | (N,)}  # optional, 1 = region of interest

Inside a tar, entries ``{key}.{ext}``: ``png`` (uint8 image, 1 or 3 channels) or ``npy``
(uint8 CHW image, or float32 (N, C) point cloud), ``points.npy``, ``cls`` (label as text),
optional ``mask.png`` / ``mask.npy``. Keys contain no ``.`` (WebDataset splits at the first).

Ray Data reads the same shards through :mod:`reldrop.pipeline.data.read` (one verifying read
task per shard, stacked blocks); rows of ``ray.data.read_webdataset(..., decoder=None)``
(``{"__key__": str, "__url__": str, "cls": bytes, "png" | "npy" | "points.npy": bytes,
"mask.png" | "mask.npy": bytes | None}``, absent optional entries ``None``/NaN) still decode
with :func:`decode_row`. Values already decoded by Ray's default decoder (``cls`` as int,
images as HW/HWC arrays) are accepted too, but raw bytes keep every check (and the pickle
refusal) in this module.
"""

from __future__ import annotations

import io
import math
from collections.abc import Mapping
from typing import Any

import numpy as np

__all__ = [
    "PICKLE_EXTENSIONS",
    "SampleError",
    "decode_row",
    "decode_sample",
    "encode_sample",
    "validate_key",
]

#: extensions whose decoding could run code (pickle, torch.load); always refused
PICKLE_EXTENSIONS = frozenset({"pyd", "pickle", "pkl", "pth", "pt", "ckpt", "joblib", "pyc"})
_IMAGE_EXTS = ("png", "npy")
_MASK_EXTS = ("mask.png", "mask.npy")
_POINTS_EXT = "points.npy"


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
        out[_POINTS_EXT] = _npy_bytes(points)
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


def _missing(value: object) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value))


def _load_npy(value: object, what: str, url: str, key: str) -> np.ndarray:
    if isinstance(value, np.ndarray):
        return value
    if not isinstance(value, bytes | bytearray | memoryview):
        raise SampleError(url, key, f"{what}: expected bytes, got {type(value).__name__}")
    try:
        array = np.load(io.BytesIO(bytes(value)), allow_pickle=False)
    except Exception as err:  # numpy raises ValueError/OSError/EOFError on bad bytes
        raise SampleError(url, key, f"{what}: cannot decode .npy ({err})") from err
    if not isinstance(array, np.ndarray):
        raise SampleError(url, key, f"{what}: .npy did not hold a single array")
    return array


def _load_png(value: object, what: str, url: str, key: str) -> np.ndarray:
    if isinstance(value, np.ndarray):  # Ray's default decoder: HW or HWC
        array = value
    else:
        if not isinstance(value, bytes | bytearray | memoryview):
            raise SampleError(url, key, f"{what}: expected bytes, got {type(value).__name__}")
        from PIL import Image

        try:
            with Image.open(io.BytesIO(bytes(value))) as img:
                if img.mode not in ("L", "RGB"):
                    raise SampleError(
                        url, key, f"{what}: PNG mode {img.mode!r}; expected 'L' or 'RGB' (uint8)"
                    )
                array = np.asarray(img)
        except SampleError:
            raise
        except Exception as err:  # PIL raises many types on corrupt data
            raise SampleError(url, key, f"{what}: cannot decode PNG ({err})") from err
    if array.dtype != np.uint8:
        raise SampleError(url, key, f"{what}: PNG dtype {array.dtype}; expected uint8")
    return array


def _label(value: object, url: str, key: str, num_classes: int | None) -> int:
    if _missing(value):
        raise SampleError(url, key, "missing label (no '.cls' entry)")
    try:
        if isinstance(value, bytes | bytearray | memoryview):
            value = bytes(value).decode("utf-8")
        if isinstance(value, str):
            label = int(value.strip())
        elif isinstance(value, int | np.integer) and not isinstance(value, bool):
            label = int(value)
        else:
            raise TypeError(type(value).__name__)
    except (ValueError, TypeError, UnicodeDecodeError) as err:
        raise SampleError(url, key, f"label {value!r} is not an integer") from err
    if label < 0 or (num_classes is not None and label >= num_classes):
        bound = f"[0, {num_classes})" if num_classes is not None else ">= 0"
        raise SampleError(url, key, f"label {label} is outside the classes {bound}")
    return label


def decode_sample(
    raw: Mapping[str, Any],
    *,
    url: str,
    key: str,
    num_classes: int | None,
    expected_shape: tuple[int, ...] | None = None,
) -> dict[str, Any]:
    """Decode and validate one sample's tar entries (extension -> bytes/str) into the schema.

    ``raw`` may also carry ``__key__``/``__url__`` and values already decoded by Ray's default
    decoder. Raises :class:`SampleError` naming ``url`` and ``key``.
    """
    entries = {k.lstrip(".").lower(): v for k, v in raw.items() if not k.startswith("__")}
    for ext, value in entries.items():
        if ext.rsplit(".", 1)[-1] in PICKLE_EXTENSIONS and not _missing(value):
            raise SampleError(url, key, f"entry '.{ext}' is a pickle-type format; refused")
    sample: dict[str, Any] = {"key": key, "url": url}
    sample["label"] = _label(entries.get("cls"), url, key, num_classes)
    if not _missing(entries.get(_POINTS_EXT)):
        data = _load_npy(entries[_POINTS_EXT], "points", url, key)
        name = "points"
    elif not _missing(entries.get("png")):
        data = _load_png(entries["png"], "image", url, key)
        data = data[None] if data.ndim == 2 else data.transpose(2, 0, 1) if data.ndim == 3 else data
        name = "image"
    elif not _missing(entries.get("npy")):
        data = _load_npy(entries["npy"], "image", url, key)
        name = "points" if data.dtype == np.float32 and data.ndim == 2 else "image"
    else:
        raise SampleError(url, key, "no data entry; expected '.png', '.npy' or '.points.npy'")
    dtype, rank = (np.uint8, 3) if name == "image" else (np.float32, 2)
    if data.dtype != dtype or data.ndim != rank:
        layout = "(C, H, W)" if name == "image" else "(N, C)"
        raise SampleError(
            url, key, f"{name} is {data.dtype} {data.shape}; expected {np.dtype(dtype)} {layout}"
        )
    if expected_shape is not None and tuple(data.shape) != tuple(expected_shape):
        raise SampleError(
            url, key, f"{name} shape {tuple(data.shape)}; expected {tuple(expected_shape)}"
        )
    sample[name] = np.ascontiguousarray(data)
    spatial = data.shape[1:] if name == "image" else data.shape[:1]
    mask_ext = next((e for e in _MASK_EXTS if not _missing(entries.get(e))), None)
    if mask_ext is not None:
        loader = _load_png if mask_ext == "mask.png" else _load_npy
        mask = loader(entries[mask_ext], "mask", url, key)
        if mask.dtype != np.uint8 or tuple(mask.shape) != tuple(spatial):
            raise SampleError(
                url, key, f"mask is {mask.dtype} {mask.shape}; expected uint8 {tuple(spatial)}"
            )
        sample["mask"] = np.ascontiguousarray(mask)
    return sample


def decode_row(
    row: Mapping[str, Any],
    *,
    num_classes: int | None,
    expected_shape: tuple[int, ...] | None = None,
) -> dict[str, Any]:
    """Decode a row of ``ray.data.read_webdataset`` (or a webdataset sample dict)."""
    key = row.get("__key__")
    url = row.get("__url__")
    key = str(key) if not _missing(key) else "<no key>"
    url = str(url) if not _missing(url) else "<unknown shard>"
    return decode_sample(
        row, url=url, key=key, num_classes=num_classes, expected_shape=expected_shape
    )
