"""Decode a sample's tar members into the schema of :mod:`reldrop.pipeline.data.codecs`.

:class:`DecodeOptions` names the members that hold image and label (webdataset's extensions;
defaults :data:`IMAGE_KEYS`, :data:`LABEL_KEYS`) and an optional fixed image size.
:func:`decode_samples` decodes a batch (the encoded images of a batch through
``torchvision.io``, JPEGs in one ``decode_jpeg`` call), :func:`decode_sample` one sample; both
validate label range, dtype, rank and shape and refuse pickle-type members. Rows of
``ray.data.read_webdataset(..., decoder=None)`` decode with :func:`decode_row`; values already
decoded by Ray's default decoder (``cls`` as int, images as HW/HWC arrays) are accepted too.
"""

from __future__ import annotations

import io
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from reldrop.pipeline.data.codecs import PICKLE_EXTENSIONS, SampleError
from reldrop.pipeline.data.codecs import missing as _missing

__all__ = [
    "IMAGE_KEYS",
    "LABEL_KEYS",
    "DecodeOptions",
    "decode_images",
    "decode_row",
    "decode_sample",
    "decode_samples",
    "read_label",
]

_POINTS_KEY = "points.npy"
#: image members looked for, in this order, unless ``DecodeOptions.image_key`` names others
IMAGE_KEYS = (_POINTS_KEY, "jpg", "jpeg", "png", "webp", "npy")
#: label members looked for, in this order
LABEL_KEYS = ("cls", "json")
_FORMATS = frozenset({"jpg", "jpeg", "png", "webp", "npy"})
_MASK_KEYS = ("mask.png", "mask.npy")


# ---- which members hold what --------------------------------------------------------------


@dataclass(frozen=True, kw_only=True)
class DecodeOptions:
    """Which tar members hold a sample's image and label (webdataset's extension names), and
    an optional fixed image size.

    ``image_key``: one extension or alternatives separated by ``;`` (``"jpg;png"``), the first
    present wins; default :data:`IMAGE_KEYS`. Encoded images (``jpg``/``jpeg``/``png``/
    ``webp``) are decoded with ``torchvision.io``; ``npy`` holds a uint8 (C, H, W) image or a
    float32 (N, C) point cloud. ``label_key``: ``cls`` (an integer as text), ``json`` (an
    integer, or an object's ``"label"`` field) or ``json:FIELD``; default ``cls``, else
    ``json``. ``image_size``: resize the shorter side to this many pixels (antialiased), then
    crop the centre square; masks follow with nearest-neighbour resizing.
    """

    image_key: str | None = None
    label_key: str | None = None
    image_size: int | None = None

    def __post_init__(self) -> None:
        for key in self.image_keys:
            if key.rsplit(".", 1)[-1] not in _FORMATS:
                raise ValueError(
                    f"image_key {self.image_key!r}: {key!r} is not an image member; the "
                    f"extension must be one of {sorted(_FORMATS)}"
                )
        for key in self.label_keys:
            ext = key.split(":", 1)[0].rsplit(".", 1)[-1]
            if ext not in ("cls", "json") or (":" in key and ext != "json"):
                raise ValueError(
                    f"label_key {self.label_key!r}: {key!r} is not a label member; allowed: "
                    "'cls', 'json' or 'json:FIELD' (webdataset's names)"
                )
        if self.image_size is not None and (
            isinstance(self.image_size, bool) or not isinstance(self.image_size, int)
            or self.image_size < 1
        ):
            raise ValueError(f"image_size={self.image_size!r}; expected an integer >= 1 or None")

    @property
    def image_keys(self) -> tuple[str, ...]:
        return _alternatives(self.image_key) or IMAGE_KEYS

    @property
    def label_keys(self) -> tuple[str, ...]:
        return _alternatives(self.label_key) or LABEL_KEYS


def _alternatives(text: str | None) -> tuple[str, ...]:
    if text is None:
        return ()
    keys = tuple(k.strip().lstrip(".").lower() for k in text.replace(",", ";").split(";"))
    if not all(keys):
        raise ValueError(f"member key {text!r}: expected extensions separated by ';'")
    return keys


# ---- decoding -------------------------------------------------------------------------------


@dataclass
class _Parsed:
    """One sample between parsing its members and finishing its arrays."""

    key: str
    label: int = 0
    name: str = "image"  # or "points"
    data: np.ndarray | None = None
    encoded: tuple[str, bytes] | None = None  # (ext, bytes) awaiting the batch decoder
    mask: tuple[str, Any] | None = None  # (ext, value)
    error: SampleError | None = None


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


def _chw(array: np.ndarray) -> np.ndarray:
    """An already decoded HW / HWC array (Ray's default decoder) as (C, H, W)."""
    return array[None] if array.ndim == 2 else array.transpose(2, 0, 1) if array.ndim == 3 else array


def _label(entries: Mapping[str, Any], keys: tuple[str, ...], url: str, key: str,
           num_classes: int | None) -> int:
    found = next(((k, entries[k.split(":", 1)[0]]) for k in keys
                  if not _missing(entries.get(k.split(":", 1)[0]))), None)
    if found is None:
        raise SampleError(url, key, f"missing label (no {' or '.join(f'.{k}' for k in keys)} entry)")
    name, value = found
    try:
        if isinstance(value, bytes | bytearray | memoryview):
            value = bytes(value).decode("utf-8")
        if name.split(":", 1)[0].endswith("json") and isinstance(value, str):
            value = json.loads(value)
            if isinstance(value, dict):
                field_name = name.split(":", 1)[1] if ":" in name else "label"
                value = value.get(field_name)
        if isinstance(value, str):
            label = int(value.strip())
        elif isinstance(value, int | np.integer) and not isinstance(value, bool):
            label = int(value)
        else:
            raise TypeError(type(value).__name__)
    except (ValueError, TypeError, UnicodeDecodeError) as err:
        raise SampleError(url, key, f"label {value!r} (.{name}) is not an integer") from err
    if label < 0 or (num_classes is not None and label >= num_classes):
        bound = f"[0, {num_classes})" if num_classes is not None else ">= 0"
        raise SampleError(url, key, f"label {label} is outside the classes {bound}")
    return label


def read_label(raw: Mapping[str, Any], options: DecodeOptions, *, url: str, key: str,
               num_classes: int | None = None) -> int:
    """A sample's label from its members (no image is decoded); :class:`SampleError` if it
    has none or it is not an integer in range."""
    entries = {k.lstrip(".").lower(): v for k, v in raw.items() if not k.startswith("__")}
    return _label(entries, options.label_keys, url, key, num_classes)


def _parse(raw: Mapping[str, Any], url: str, key: str, num_classes: int | None,
           options: DecodeOptions) -> _Parsed:
    entries = {k.lstrip(".").lower(): v for k, v in raw.items() if not k.startswith("__")}
    for ext, value in entries.items():
        if ext.rsplit(".", 1)[-1] in PICKLE_EXTENSIONS and not _missing(value):
            raise SampleError(url, key, f"entry '.{ext}' is a pickle-type format; refused")
    out = _Parsed(key=key, label=_label(entries, options.label_keys, url, key, num_classes))
    image_key = next((k for k in options.image_keys if not _missing(entries.get(k))), None)
    if image_key is None:
        expected = ", ".join(f"'.{k}'" for k in options.image_keys)
        raise SampleError(url, key, f"no data entry (image); expected one of {expected}")
    value, ext = entries[image_key], image_key.rsplit(".", 1)[-1]
    if ext == "npy":
        out.data = _load_npy(value, "image", url, key)
        points = image_key == _POINTS_KEY or (out.data.dtype == np.float32 and out.data.ndim == 2)
        out.name = "points" if points else "image"
    elif isinstance(value, np.ndarray):
        out.data = _chw(value)
    elif isinstance(value, bytes | bytearray | memoryview):
        out.encoded = (ext, bytes(value))
    else:
        raise SampleError(url, key, f"image: expected bytes, got {type(value).__name__}")
    mask_key = next((e for e in _MASK_KEYS if not _missing(entries.get(e))), None)
    if mask_key is not None:
        out.mask = (mask_key, entries[mask_key])
    return out


def _read_mode(channels: int | None) -> Any:
    from torchvision.io import ImageReadMode  # torchvision is heavy

    return {1: ImageReadMode.GRAY, 3: ImageReadMode.RGB}.get(channels or 0, ImageReadMode.UNCHANGED)


def _decode_one(ext: str, data: bytes, mode: Any) -> np.ndarray:
    import torch
    from torchvision.io import decode_image

    tensor = torch.frombuffer(bytearray(data), dtype=torch.uint8)
    return decode_image(tensor, mode=mode).numpy()


def decode_images(items: Sequence[tuple[str, bytes]], *, channels: int | None = None
                  ) -> list[np.ndarray | Exception]:
    """Decode encoded images (``(ext, bytes)``) to uint8 (C, H, W) with ``torchvision.io``:
    the JPEGs of a batch in one ``decode_jpeg`` call, the rest one by one; converted to gray
    (``channels=1``) or RGB (``3``); an item that fails is returned as its exception."""
    import torch
    from torchvision.io import decode_jpeg

    mode = _read_mode(channels)
    out: list[np.ndarray | Exception | None] = [None] * len(items)
    jpegs = [i for i, (ext, _) in enumerate(items) if ext in ("jpg", "jpeg")]
    if len(jpegs) > 1:
        try:
            tensors = [torch.frombuffer(bytearray(items[i][1]), dtype=torch.uint8) for i in jpegs]
            for i, image in zip(jpegs, decode_jpeg(tensors, mode=mode)):
                out[i] = image.numpy()
        except RuntimeError:
            pass  # one bad image fails the batch call: decode one by one to name it
    for i, (ext, data) in enumerate(items):
        if out[i] is None:
            try:
                out[i] = _decode_one(ext, data, mode)
            except RuntimeError as err:
                out[i] = err
    return [x if x is not None else RuntimeError("not decoded") for x in out]


def _fit(array: np.ndarray, size: int, *, nearest: bool = False) -> np.ndarray:
    """Resize the shorter side of a (C, H, W) array to ``size``, then crop the centre square."""
    import torch
    from torchvision.transforms.v2 import InterpolationMode
    from torchvision.transforms.v2 import functional as F

    if array.shape[-2:] == (size, size):
        return array
    mode = InterpolationMode.NEAREST if nearest else InterpolationMode.BILINEAR
    t = F.resize(torch.from_numpy(np.ascontiguousarray(array)), [size], interpolation=mode,
                 antialias=not nearest)
    return F.center_crop(t, [size, size]).numpy()


def _finish(p: _Parsed, url: str, expected_shape: tuple[int, ...] | None,
            options: DecodeOptions) -> dict[str, Any]:
    data = p.data
    assert data is not None
    dtype, rank = (np.uint8, 3) if p.name == "image" else (np.float32, 2)
    if data.dtype != dtype or data.ndim != rank:
        layout = "(C, H, W)" if p.name == "image" else "(N, C)"
        raise SampleError(
            url, p.key, f"{p.name} is {data.dtype} {data.shape}; expected {np.dtype(dtype)} {layout}"
        )
    if p.name == "image" and options.image_size is not None:
        data = _fit(data, options.image_size)
    if expected_shape is not None and tuple(data.shape) != tuple(expected_shape):
        raise SampleError(
            url, p.key, f"{p.name} shape {tuple(data.shape)}; expected {tuple(expected_shape)}"
        )
    sample: dict[str, Any] = {"key": p.key, "url": url, "label": p.label,
                              p.name: np.ascontiguousarray(data)}
    if p.mask is not None:
        sample["mask"] = _mask(p, url, data.shape[1:] if p.name == "image" else data.shape[:1],
                               options)
    return sample


def _mask(p: _Parsed, url: str, spatial: tuple[int, ...], options: DecodeOptions) -> np.ndarray:
    assert p.mask is not None
    ext, value = p.mask
    if ext == "mask.npy" or isinstance(value, np.ndarray):
        mask = _load_npy(value, "mask", url, p.key)
    else:
        if not isinstance(value, bytes | bytearray | memoryview):
            raise SampleError(url, p.key, f"mask: expected bytes, got {type(value).__name__}")
        decoded = decode_images([("png", bytes(value))], channels=1)[0]
        if isinstance(decoded, Exception):
            raise SampleError(url, p.key, f"mask: cannot decode PNG ({decoded})")
        mask = decoded[0]
    if p.name == "image" and options.image_size is not None and mask.ndim == 2:
        mask = _fit(mask[None], options.image_size, nearest=True)[0]
    if mask.dtype != np.uint8 or tuple(mask.shape) != tuple(spatial):
        raise SampleError(
            url, p.key, f"mask is {mask.dtype} {mask.shape}; expected uint8 {tuple(spatial)}"
        )
    return np.ascontiguousarray(mask)


def decode_samples(
    samples: Sequence[tuple[str, Mapping[str, Any]]],
    *,
    url: str,
    num_classes: int | None,
    expected_shape: tuple[int, ...] | None = None,
    options: DecodeOptions | None = None,
) -> list[dict[str, Any] | SampleError]:
    """Decode and validate a batch of samples (``(key, {ext: bytes})``) into the schema; a
    sample that fails becomes its :class:`SampleError` (naming ``url`` and key).

    Encoded images are decoded together (:func:`decode_images`); with ``expected_shape`` they
    are converted to its channel count (1: gray, 3: RGB), without it they must have 1 or 3.
    """
    options = options or DecodeOptions()
    channels = expected_shape[0] if expected_shape and len(expected_shape) == 3 else None
    parsed: list[_Parsed] = []
    for key, raw in samples:
        try:
            parsed.append(_parse(raw, url, key, num_classes, options))
        except SampleError as err:
            parsed.append(_Parsed(key=key, error=err))
    pending = [p for p in parsed if p.error is None and p.encoded is not None]
    decoded = decode_images([p.encoded for p in pending if p.encoded], channels=channels)
    for p, image in zip(pending, decoded):
        assert p.encoded is not None
        if isinstance(image, Exception):
            what = str(image).split(",")[-1].strip() or type(image).__name__
            p.error = SampleError(url, p.key, f"image: cannot decode {p.encoded[0].upper()} ({what})")
        elif channels is None and image.shape[0] not in (1, 3):
            p.error = SampleError(url, p.key, f"image has {image.shape[0]} channels; "
                                              "expected 1 (gray) or 3 (RGB)")
        else:
            p.data = image
    out: list[dict[str, Any] | SampleError] = []
    for p in parsed:
        if p.error is not None:
            out.append(p.error)
            continue
        try:
            out.append(_finish(p, url, expected_shape, options))
        except SampleError as err:
            out.append(err)
    return out


def decode_sample(
    raw: Mapping[str, Any],
    *,
    url: str,
    key: str,
    num_classes: int | None,
    expected_shape: tuple[int, ...] | None = None,
    options: DecodeOptions | None = None,
) -> dict[str, Any]:
    """Decode and validate one sample's tar entries (extension -> bytes/str) into the schema.

    ``raw`` may also carry ``__key__``/``__url__`` and values already decoded by Ray's default
    decoder. Raises :class:`SampleError` naming ``url`` and ``key``.
    """
    result = decode_samples([(key, raw)], url=url, num_classes=num_classes,
                            expected_shape=expected_shape, options=options)[0]
    if isinstance(result, SampleError):
        raise result
    return result


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
