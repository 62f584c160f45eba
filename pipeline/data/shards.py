"""Write WebDataset tar shards at any fsspec URL.

:class:`ShardWriter` (``webdataset.TarWriter`` over an fsspec file, rotating every
``shard_size`` samples into ``{split}-{000000}.tar``, hashing as it writes),
:func:`write_shards` (all splits; returns the :class:`Manifest` unwritten) and
:func:`write_dataset` (the same, then ``manifest.parquet`` last). Reading is
:mod:`reldrop.pipeline.data.read` (one reader for Ray and in-process loops).
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterable, Mapping
from typing import Any

import webdataset as wds

from reldrop.pipeline.data.codecs import encode_sample
from reldrop.pipeline.data.fs import absolute_url, join_url, resolve
from reldrop.pipeline.data.manifest import Manifest, ShardInfo, shard_name, write_manifest

__all__ = ["ShardWriter", "write_dataset", "write_shards"]


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
