"""``manifest.parquet`` at a dataset root: one row per shard, used to plan reads and verify.

Columns: ``split``, ``shard`` (name relative to the root, e.g. ``train-000000.tar``), ``url``
(where it was written), ``num_samples``, ``num_bytes``, ``sha256``, and the dataset-wide
``dataset``, ``modality``, ``input_shape``, ``dtype``, ``num_classes``, ``class_names``,
``has_mask``, ``build`` (JSON of the build options) repeated on every row.
Readers resolve shards against the root they were given, so a dataset can be moved.

The manifest is written last and atomically (:func:`write_manifest`): a reader sees either the
complete manifest or none, never a truncated file.
"""

from __future__ import annotations

import hashlib
import re
import secrets
from dataclasses import dataclass, field
from typing import Any, Literal

from fsspec import AbstractFileSystem

from reldrop.pipeline.data.fs import join_url, resolve

__all__ = [
    "MANIFEST_NAME",
    "ChecksumError",
    "ManifestError",
    "Manifest",
    "ShardInfo",
    "check_shard_name",
    "has_manifest",
    "read_manifest",
    "shard_name",
    "shard_urls",
    "verify_dataset",
    "verify_shard",
    "write_manifest",
]

MANIFEST_NAME = "manifest.parquet"
Modality = Literal["image", "points"]
_MODALITIES = ("image", "points")
_COLUMNS = (
    "split", "shard", "url", "num_samples", "num_bytes", "sha256", "dataset", "modality",
    "input_shape", "dtype", "num_classes", "class_names", "has_mask",
)


#: a shard name is one plain path segment: what :func:`shard_name` writes, nothing a URL, a
#: filesystem or a web server could read as a directory step (``%2e%2e``, ``..``, ``\\``, ``/``)
_SHARD_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]*(?:\.[A-Za-z0-9_-]+)*\.tar")


def check_shard_name(name: object) -> str:
    """``name`` if it is a plain ``{split}-{index}.tar`` segment; else a ``ValueError``.

    Names come from the manifest, a file anyone may have written: ``..`` and absolute paths
    were always refused, and so is every disguise (percent-encoding, backslashes, control or
    non-ASCII characters, empty segments) for every protocol, rather than decoded.
    """
    if not isinstance(name, str) or not _SHARD_NAME.fullmatch(name) or ".." in name:
        raise ValueError(
            f"shard {name!r} in the manifest is not a plain '<split>-NNNNNN.tar' name (no '/', "
            "'..', '%' escapes or other path characters); rebuild it with `reldrop make-shards`"
        )
    return name


class ChecksumError(ValueError):
    """A shard whose bytes differ from what the manifest recorded."""


class ManifestError(ValueError):
    """A ``manifest.parquet`` that cannot be read (truncated, not parquet, wrong columns)."""

    def __init__(self, url: str, problem: str) -> None:
        super().__init__(
            f"{url!r} is not a valid manifest (truncated?): {problem}; "
            "rebuild the dataset with `reldrop make-shards --overwrite`"
        )
        self.url = url


def shard_name(split: str, index: int) -> str:
    """``{split}-{index:06d}.tar``."""
    if not split or "/" in split or "." in split:
        raise ValueError(f"split {split!r} must be a non-empty name without '/' or '.'")
    if not 0 <= index <= 999_999:
        raise ValueError(f"shard index {index} must be in [0, 999999]")
    return f"{split}-{index:06d}.tar"


@dataclass(frozen=True, kw_only=True)
class ShardInfo:
    """One shard as the manifest records it."""

    split: str
    shard: str
    url: str
    num_samples: int
    num_bytes: int
    sha256: str

    def __post_init__(self) -> None:
        check_shard_name(self.shard)
        if not isinstance(self.split, str) or not self.split or "/" in self.split:
            raise ValueError(f"shard {self.shard!r}: split {self.split!r} is not a plain name")
        if self.num_samples < 0 or self.num_bytes < 0:
            raise ValueError(f"shard {self.shard!r}: counts must be >= 0")
        if len(self.sha256) != 64:
            raise ValueError(f"shard {self.shard!r}: sha256 {self.sha256!r} is not 64 hex digits")


@dataclass(frozen=True, kw_only=True)
class Manifest:
    """A dataset's shards plus what every sample in it looks like."""

    root_url: str
    dataset: str
    modality: Modality
    input_shape: tuple[int, ...]
    dtype: str
    num_classes: int
    class_names: tuple[str, ...]
    has_mask: bool
    shards: tuple[ShardInfo, ...]
    build: str = "{}"
    _by_split: dict[str, tuple[ShardInfo, ...]] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if self.modality not in _MODALITIES:
            raise ValueError(f"modality {self.modality!r}; allowed: {list(_MODALITIES)}")
        if self.num_classes < 1:
            raise ValueError(f"num_classes must be >= 1; got {self.num_classes}")
        if self.class_names and len(self.class_names) != self.num_classes:
            raise ValueError(
                f"class_names has {len(self.class_names)} names for {self.num_classes} classes"
            )
        by_split: dict[str, list[ShardInfo]] = {}
        for info in self.shards:
            by_split.setdefault(info.split, []).append(info)
        ordered = {k: tuple(sorted(v, key=lambda s: s.shard)) for k, v in by_split.items()}
        object.__setattr__(self, "_by_split", ordered)

    @property
    def splits(self) -> tuple[str, ...]:
        return tuple(sorted(self._by_split))

    def shards_of(self, split: str) -> tuple[ShardInfo, ...]:
        """The shards of ``split`` in order; ``ValueError`` naming the known splits if absent."""
        if split not in self._by_split:
            raise ValueError(
                f"split {split!r} is not in the manifest at {self.root_url!r}; "
                f"known splits: {list(self.splits)}"
            )
        return self._by_split[split]

    def shard_urls(self, split: str) -> list[str]:
        """Resolvable URLs of ``split``'s shards (relative names joined to ``root_url``)."""
        return [join_url(self.root_url, info.shard) for info in self.shards_of(split)]

    def num_samples(self, split: str) -> int:
        return sum(info.num_samples for info in self.shards_of(split))


def _manifest_path(root_url: str) -> str:
    return join_url(root_url, MANIFEST_NAME)


def has_manifest(root_url: str) -> bool:
    fs, path = resolve(_manifest_path(root_url))
    return bool(fs.exists(path))


def write_manifest(manifest: Manifest) -> str:
    """Write ``manifest.parquet`` under ``manifest.root_url``; return its URL."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    if not manifest.shards:
        raise ValueError(f"manifest for {manifest.root_url!r} has no shards")
    n = len(manifest.shards)
    columns = {
        name: [getattr(info, name) for info in manifest.shards]
        for name in ("split", "shard", "url", "num_samples", "num_bytes", "sha256")
    }
    table = pa.table(
        {
            **columns,
            "dataset": [manifest.dataset] * n,
            "modality": [manifest.modality] * n,
            "input_shape": pa.array([list(manifest.input_shape)] * n, pa.list_(pa.int64())),
            "dtype": [manifest.dtype] * n,
            "num_classes": pa.array([manifest.num_classes] * n, pa.int64()),
            "class_names": pa.array([list(manifest.class_names)] * n, pa.list_(pa.string())),
            "has_mask": [manifest.has_mask] * n,
            "build": [manifest.build] * n,
        }
    )
    sink = pa.BufferOutputStream()
    pq.write_table(table, sink)
    url = _manifest_path(manifest.root_url)
    _write_atomically(url, sink.getvalue().to_pybytes())
    return url


def _is_local(fs: AbstractFileSystem) -> bool:
    protocols = fs.protocol if isinstance(fs.protocol, tuple) else (fs.protocol,)
    return "file" in protocols or "local" in protocols


def _write_atomically(url: str, data: bytes) -> None:
    """Put ``data`` at ``url`` so that readers see the old file or the new one, never a part.

    Local files: write a hidden temporary file next to it, then rename over it (``os.rename``
    replaces atomically on POSIX). Object stores (s3, gcs) and memory: one ``put`` of the whole
    object, which those stores make visible atomically.
    """
    fs, path = resolve(url)
    if not _is_local(fs):
        fs.pipe_file(path, data)
        return
    head, _, name = path.rpartition("/")
    temporary = f"{head}/.{name}.tmp-{secrets.token_hex(4)}"
    try:
        fs.pipe_file(temporary, data)
        fs.mv(temporary, path)
    finally:
        if fs.exists(temporary):
            fs.rm(temporary)


def read_manifest(root_url: str) -> Manifest:
    """Read ``{root_url}/manifest.parquet``; ``FileNotFoundError`` names the URL if missing."""
    import pyarrow.parquet as pq

    url = _manifest_path(root_url)
    fs, path = resolve(url)
    if not fs.exists(path):
        raise FileNotFoundError(
            f"no manifest at {url!r}; build the dataset with `reldrop make-shards --out {root_url}`"
        )
    try:
        with fs.open(path, "rb") as f:
            table = pq.read_table(f)
    except (OSError, ValueError) as err:  # pyarrow.ArrowInvalid is a ValueError
        raise ManifestError(url, f"{type(err).__name__}: {err}") from err
    missing = sorted(set(_COLUMNS) - set(table.column_names))
    if missing:
        raise ManifestError(url, f"missing column(s) {missing}")
    rows = table.to_pylist()
    if not rows:
        raise ManifestError(url, "it has no rows")
    return _from_rows(root_url, url, rows)


def _from_rows(root_url: str, url: str, rows: list[dict[str, Any]]) -> Manifest:
    first = rows[0]
    for name in ("dataset", "modality", "input_shape", "dtype", "num_classes", "class_names"):
        values = {repr(row[name]) for row in rows}
        if len(values) > 1:
            raise ValueError(f"manifest {url!r}: column {name!r} differs between rows: {values}")
    shards = tuple(
        ShardInfo(
            split=row["split"],
            shard=row["shard"],
            url=row["url"],
            num_samples=int(row["num_samples"]),
            num_bytes=int(row["num_bytes"]),
            sha256=row["sha256"],
        )
        for row in rows
    )
    return Manifest(
        root_url=root_url,
        dataset=first["dataset"],
        modality=first["modality"],
        input_shape=tuple(int(d) for d in first["input_shape"]),
        dtype=first["dtype"],
        num_classes=int(first["num_classes"]),
        class_names=tuple(first["class_names"] or ()),
        has_mask=bool(first["has_mask"]),
        shards=shards,
        build=first.get("build") or "{}",
    )


def shard_urls(root_url: str, split: str) -> list[str]:
    """Resolvable shard URLs of ``split`` per the manifest at ``root_url``."""
    return read_manifest(root_url).shard_urls(split)


def verify_shard(info: ShardInfo, data: bytes, *, url: str) -> None:
    """Raise :class:`ChecksumError` naming the shard if ``data`` differs from the manifest."""
    if len(data) != info.num_bytes:
        raise ChecksumError(
            f"shard {url!r}: {len(data)} bytes, manifest says {info.num_bytes} "
            "(truncated or replaced)"
        )
    digest = hashlib.sha256(data).hexdigest()
    if digest != info.sha256:
        raise ChecksumError(f"shard {url!r}: sha256 {digest} differs from manifest {info.sha256}")


def verify_dataset(root_url: str, *, splits: tuple[str, ...] | None = None) -> Manifest:
    """Check every shard's size and sha256 against the manifest; return the manifest."""
    manifest = read_manifest(root_url)
    for split in splits or manifest.splits:
        for info, url in zip(manifest.shards_of(split), manifest.shard_urls(split), strict=True):
            fs, path = resolve(url)
            if not fs.exists(path):
                raise ChecksumError(f"shard {url!r} listed in the manifest does not exist")
            verify_shard(info, fs.cat_file(path), url=url)
    return manifest
