"""Write and read WebDataset tar shards at any fsspec URL.

Writing: :class:`ShardWriter` (``webdataset.TarWriter`` over an fsspec file, rotating every
``shard_size`` samples into ``{split}-{000000}.tar``, hashing as it writes) and
:func:`write_shards` (all splits; returns the :class:`Manifest` unwritten) and
:func:`write_dataset` (the same, then ``manifest.parquet`` last).

Reading: :func:`iter_samples` plans from the manifest, splits shards across torch
``DataLoader`` workers / nodes with webdataset's splitters (a worker without a shard simply
yields nothing), streams each shard through webdataset's tar iterators and decodes with
:func:`reldrop.pipeline.data.codecs.decode_sample`. Bad data raises an error naming shard URL and key, or
with ``on_error="skip"`` is skipped, counted in a :class:`SkipReport` and logged.
"""

from __future__ import annotations

import hashlib
import io
import logging
import random
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

import webdataset as wds
from torch.utils.data import IterableDataset
from webdataset.tariterators import group_by_keys, tar_file_expander

from reldrop.pipeline.data.codecs import SampleError, decode_sample, encode_sample
from reldrop.pipeline.data.fs import absolute_url, join_url, resolve
from reldrop.pipeline.data.manifest import (
    ChecksumError,
    Manifest,
    ShardInfo,
    read_manifest,
    shard_name,
    verify_shard,
    write_manifest,
)

__all__ = [
    "OnError",
    "ShardDataset",
    "ShardError",
    "ShardWriter",
    "SkipReport",
    "Skipped",
    "iter_samples",
    "write_dataset",
    "write_shards",
]

log = logging.getLogger(__name__)
OnError = Literal["raise", "skip"]
_ON_ERROR = ("raise", "skip")


class ShardError(ValueError):
    """A shard that cannot be read (truncated, corrupt, missing, wrong sample count)."""

    def __init__(self, url: str, problem: str) -> None:
        super().__init__(f"shard {url!r}: {problem}")
        self.url = url
        self.problem = problem


class _HashingWriter:
    """A write-only file wrapper that counts bytes and hashes them on the way through."""

    def __init__(self, f: Any) -> None:
        self._f = f
        self.sha256 = hashlib.sha256()
        self.num_bytes = 0

    def write(self, data: bytes) -> int:
        self.sha256.update(data)
        self.num_bytes += len(data)
        self._f.write(data)
        return len(data)

    def flush(self) -> None:
        self._f.flush()


class ShardWriter:
    """Write samples of one split into ``{split}-{index:06d}.tar`` shards under ``root_url``."""

    def __init__(self, root_url: str, split: str, *, shard_size: int = 1000) -> None:
        if shard_size < 1:
            raise ValueError(f"shard_size must be >= 1; got {shard_size}")
        shard_name(split, 0)  # validates split
        self.root_url = root_url
        self.split = split
        self.shard_size = shard_size
        self.shards: list[ShardInfo] = []
        self._fs, root_path = resolve(root_url)
        self._fs.makedirs(root_path, exist_ok=True)
        self._file: Any = None
        self._hasher: _HashingWriter | None = None
        self._tar: wds.TarWriter | None = None
        self._count = 0
        self._keys: set[str] = set()

    def _open(self) -> None:
        name = shard_name(self.split, len(self.shards))
        self._url = join_url(self.root_url, name)
        self._file = self._fs.open(resolve(self._url)[1], "wb")
        self._hasher = _HashingWriter(self._file)
        # fixed mtime: the same samples give byte-identical shards (reproducible sha256)
        self._tar = wds.TarWriter(self._hasher, encoder=False, mtime=0.0)
        self._count = 0

    def _finish(self) -> None:
        if self._tar is None or self._hasher is None:
            return
        self._tar.close()
        self._file.close()
        self.shards.append(
            ShardInfo(
                split=self.split,
                shard=self._url.rsplit("/", 1)[-1],
                url=absolute_url(self._url),
                num_samples=self._count,
                num_bytes=self._hasher.num_bytes,
                sha256=self._hasher.sha256.hexdigest(),
            )
        )
        self._tar = self._hasher = self._file = None

    def write(self, sample: Mapping[str, Any]) -> None:
        """Encode and append one decoded sample (see :mod:`reldrop.pipeline.data.codecs`)."""
        entries = encode_sample(sample)
        key = str(entries["__key__"])
        if key in self._keys:
            raise ValueError(f"split {self.split!r}: duplicate sample key {key!r}")
        self._keys.add(key)
        if self._tar is None:
            self._open()
        assert self._tar is not None
        self._tar.write(entries)
        self._count += 1
        if self._count >= self.shard_size:
            self._finish()

    def close(self) -> list[ShardInfo]:
        """Finish the open shard; return every shard written."""
        self._finish()
        return list(self.shards)

    def __enter__(self) -> ShardWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def write_shards(
    root_url: str,
    splits: Mapping[str, Iterable[Mapping[str, Any]]],
    *,
    dataset: str,
    num_classes: int,
    class_names: tuple[str, ...] = (),
    shard_size: int = 1000,
    build: str = "{}",
    on_sample: Callable[[str], None] | None = None,
) -> Manifest:
    """Write every split's samples as shards under ``root_url``; return their manifest, which
    is not written (:func:`write_dataset` writes it; a staged build writes it after moving).

    All samples must share modality, shape and dtype (checked). ``on_sample(split)`` is called
    after each sample (progress bars).
    """
    shards: list[ShardInfo] = []
    first: dict[str, Any] = {}
    has_mask: bool | None = None
    for split, samples in splits.items():
        with ShardWriter(root_url, split, shard_size=shard_size) as writer:
            for sample in samples:
                name = "image" if sample.get("image") is not None else "points"
                array = sample.get(name)
                signature = (name, getattr(array, "shape", None), str(getattr(array, "dtype", "")))
                masked = sample.get("mask") is not None
                if not first:
                    first = {"signature": signature}
                    has_mask = masked
                elif signature != first["signature"] or masked != has_mask:
                    raise ValueError(
                        f"split {split!r}, sample {sample.get('key')!r}: {signature} "
                        f"(mask: {masked}) differs from the first sample's {first['signature']} "
                        f"(mask: {has_mask}); a dataset has one shape and dtype"
                    )
                if not 0 <= int(sample["label"]) < num_classes:
                    raise ValueError(
                        f"split {split!r}, sample {sample.get('key')!r}: label {sample['label']} "
                        f"outside [0, {num_classes})"
                    )
                writer.write(sample)
                if on_sample is not None:
                    on_sample(split)
        shards.extend(writer.shards)
    if not first:
        raise ValueError(f"no samples to write to {root_url!r}")
    modality, shape, dtype = first["signature"]
    return Manifest(
        root_url=root_url,
        dataset=dataset,
        modality=modality,
        input_shape=tuple(shape),
        dtype=dtype,
        num_classes=num_classes,
        class_names=tuple(class_names),
        has_mask=bool(has_mask),
        shards=tuple(shards),
        build=build,
    )


def write_dataset(
    root_url: str,
    splits: Mapping[str, Iterable[Mapping[str, Any]]],
    *,
    dataset: str,
    num_classes: int,
    class_names: tuple[str, ...] = (),
    shard_size: int = 1000,
    build: str = "{}",
    on_sample: Callable[[str], None] | None = None,
) -> Manifest:
    """:func:`write_shards`, then ``manifest.parquet`` (last, atomically); return the manifest.

    Writes in place: a failure leaves shards without a manifest. ``reldrop make-shards``
    stages its build instead (:func:`reldrop.pipeline.data.datasets.build_dataset`).
    """
    manifest = write_shards(
        root_url, splits, dataset=dataset, num_classes=num_classes, class_names=class_names,
        shard_size=shard_size, build=build, on_sample=on_sample,
    )
    write_manifest(manifest)
    return manifest


@dataclass(frozen=True, kw_only=True)
class Skipped:
    """One skipped sample (``key`` set) or the rest of a shard (``key`` None)."""

    url: str
    key: str | None
    reason: str


@dataclass
class SkipReport:
    """Everything :func:`iter_samples` skipped under ``on_error="skip"``; nothing is silent."""

    items: list[Skipped] = field(default_factory=list)

    def add(self, url: str, key: str | None, reason: str) -> None:
        self.items.append(Skipped(url=url, key=key, reason=reason))
        log.warning("skipped %s in shard %s: %s", key or "rest of shard", url, reason)

    @property
    def samples(self) -> int:
        """Number of individually skipped samples."""
        return sum(1 for item in self.items if item.key is not None)

    @property
    def shards(self) -> int:
        """Number of shards abandoned (part or whole) because they could not be read."""
        return sum(1 for item in self.items if item.key is None)

    def __len__(self) -> int:
        return len(self.items)

    def summary(self) -> str:
        kinds = Counter(item.reason.split(":")[0] for item in self.items)
        return (
            f"skipped {self.samples} sample(s) and {self.shards} shard(s)"
            + ("" if not kinds else f" ({dict(kinds)})")
        )


def _with_last(items: Iterable[dict[str, Any]]) -> Iterator[tuple[dict[str, Any], bool]]:
    """``(item, is_last)`` pairs, one item of look-ahead."""
    iterator = iter(items)
    try:
        previous = next(iterator)
    except StopIteration:
        return
    for item in iterator:
        yield previous, False
        previous = item
    yield previous, True


def _open_shard(info: ShardInfo, url: str, verify: bool) -> Any:
    fs, path = resolve(url)
    if not fs.exists(path):
        raise ShardError(url, "listed in the manifest but does not exist")
    if verify:
        data = fs.cat_file(path)
        verify_shard(info, data, url=url)
        return io.BytesIO(data)
    return fs.open(path, "rb")


def _read_shard(
    info: ShardInfo, url: str, manifest: Manifest, on_error: OnError,
    report: SkipReport, verify: bool,
) -> Iterator[dict[str, Any]]:
    seen = 0
    key = None
    try:
        stream = _open_shard(info, url, verify)
        try:
            raw_samples = group_by_keys(tar_file_expander([{"url": url, "stream": stream}]))
            for raw, is_last in _with_last(raw_samples):
                seen += 1
                key = str(raw["__key__"])
                if is_last and seen != info.num_samples:
                    # tarfile ends quietly at a truncated header: judge the shard before its
                    # possibly partial last sample
                    break
                try:
                    sample = decode_sample(
                        raw, url=url, key=key,
                        num_classes=manifest.num_classes, expected_shape=manifest.input_shape,
                    )
                except SampleError as err:
                    if on_error == "raise":
                        raise
                    report.add(url, key, err.problem)
                    continue
                yield sample
        finally:
            stream.close()
        if seen != info.num_samples:
            raise ShardError(
                url,
                f"holds {seen} samples, manifest says {info.num_samples} (truncated or corrupt)",
            )
    except (SampleError, ShardError, ChecksumError):
        if on_error == "raise":
            raise
        report.add(url, None, f"shard error after {seen} samples")
    except Exception as err:  # tarfile/OS errors from a truncated or corrupt tar
        # webdataset appends (stream, url) to err.args; keep only the message
        what = f"{type(err).__name__}: {err.args[0] if err.args else ''}"
        if on_error == "raise":
            after = f" after sample {key!r}" if key else ""
            raise ShardError(url, f"truncated or corrupt tar{after} ({what})") from err
        report.add(url, None, f"unreadable tar after {seen} samples ({what})")


def iter_samples(
    root_url: str,
    split: str,
    *,
    on_error: OnError = "raise",
    report: SkipReport | None = None,
    verify: bool = True,
    shuffle_shards: bool = False,
    seed: int = 0,
    split_by_node: bool = False,
) -> Iterator[dict[str, Any]]:
    """Yield decoded samples of ``split``; each sample once across ``DataLoader`` workers.

    ``verify`` (the default: every read is checked as training's) checks each shard's size and
    sha256 against the manifest before yielding any of its samples. ``split_by_node``
    also splits shards by ``torch.distributed`` rank (``webdataset.split_by_node``).
    """
    if on_error not in _ON_ERROR:
        raise ValueError(f"on_error={on_error!r}; allowed: {list(_ON_ERROR)}")
    report = report if report is not None else SkipReport()
    manifest = read_manifest(root_url)
    planned: list[dict[str, Any]] = [
        {"url": url, "info": info}
        for info, url in zip(manifest.shards_of(split), manifest.shard_urls(split), strict=True)
    ]
    if shuffle_shards:
        random.Random(seed).shuffle(planned)
    stages: Iterator[dict[str, Any]] = iter(planned)
    if split_by_node:
        stages = wds.split_by_node(stages)
    for entry in wds.split_by_worker(stages):
        yield from _read_shard(entry["info"], entry["url"], manifest, on_error, report, verify)


class ShardDataset(IterableDataset):  # type: ignore[type-arg]
    """A torch ``IterableDataset`` over :func:`iter_samples` (picklable for ``DataLoader``).

    With more workers than shards the extra workers yield nothing; no sample is duplicated.
    Each worker has its own :class:`SkipReport` (skips are also logged as warnings).
    """

    def __init__(self, root_url: str, split: str, **kwargs: Any) -> None:
        super().__init__()
        self.root_url, self.split, self.kwargs = root_url, split, kwargs

    def __iter__(self) -> Iterator[dict[str, Any]]:
        return iter_samples(self.root_url, self.split, **self.kwargs)
