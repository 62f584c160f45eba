"""One read task per shard: fetch once, verify while reading, parse strictly, decode by block.

A shard's bytes are read once through fsspec and hashed as they arrive; size and sha256 are
compared with the manifest before tar parsing starts, so tampered bytes never reach
``tarfile`` nor the trainer. The tar is then checked member by member (plain names without
``/`` or ``..``, regular files only, each key once, nothing but zero padding after the end of
the archive, as many samples as the manifest says) and decoded a block at a time into stacked
numpy arrays: one ``uint8 (n, C, H, W)`` image array per block instead of one Python dict per
row. The functions here need no Ray; :func:`reldrop.pipeline.data.stream.read_split` runs
:func:`read_shards` as a Ray Data ``map_batches`` generator, one task per shard.

Errors follow the ``on_error`` policy: ``"raise"`` raises one line naming the shard (and key);
``"skip"`` turns a bad sample into a placeholder row (``skipped=True``, ``reason`` set) and a
bad shard into one placeholder row per sample the manifest promised, so the trainer counts
every sample that was left out and nothing is lost silently.
"""

from __future__ import annotations

import hashlib
import io
import json
import tarfile
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from reldrop.pipeline.data.codecs import SampleError, decode_sample
from reldrop.pipeline.data.fs import StorageError, resolve, retrying
from reldrop.pipeline.data.manifest import ChecksumError, Manifest, ShardInfo

__all__ = [
    "ON_ERROR",
    "RowSchema",
    "ShardTask",
    "decode_block",
    "decode_stream_row",
    "fetch_shard",
    "read_shards",
    "shard_blocks",
    "shard_skip",
    "tar_samples",
]

ON_ERROR = ("raise", "skip")
_CHUNK = 4 << 20
_SHARD_SKIP = "whole shard left out"


class _ShardProblem(ValueError):
    """Raised inside a read task; rendered as ``shard '<url>': <problem>``."""

    def __init__(self, url: str, problem: str) -> None:
        super().__init__(f"shard {url!r}: {problem}")
        self.url = url
        self.problem = problem

    def __reduce__(self) -> tuple[Any, tuple[str, str]]:  # travels back from Ray tasks
        return type(self), (self.url, self.problem)


@dataclass(frozen=True, kw_only=True)
class RowSchema:
    """What every row of a split looks like (from the manifest); travels to read tasks."""

    num_classes: int
    input_shape: tuple[int, ...]
    dtype: str
    modality: str
    has_mask: bool
    on_error: str = "raise"
    rows_per_block: int | None = None
    column: str | None = None  # name of a key-aligned column joined into every row

    def __post_init__(self) -> None:
        if self.on_error not in ON_ERROR:
            raise ValueError(f"on_error={self.on_error!r}; allowed: {list(ON_ERROR)}")
        if self.rows_per_block is not None and self.rows_per_block < 1:
            raise ValueError(f"rows_per_block must be >= 1 or None; got {self.rows_per_block}")

    @classmethod
    def of(cls, manifest: Manifest, **kwargs: Any) -> RowSchema:
        return cls(
            num_classes=manifest.num_classes, input_shape=tuple(manifest.input_shape),
            dtype=manifest.dtype, modality=manifest.modality, has_mask=manifest.has_mask, **kwargs,
        )

    @property
    def row_bytes(self) -> int:
        """Bytes of one row's arrays (image, mask, label, skipped flag; key strings on top)."""
        image = int(np.prod(self.input_shape)) * np.dtype(self.dtype).itemsize
        return image + (int(np.prod(self.mask_shape)) if self.has_mask else 0) + 8 + 1

    @property
    def mask_shape(self) -> tuple[int, ...]:
        shape = self.input_shape
        return tuple(shape[1:]) if self.modality == "image" else tuple(shape[:1])

    def placeholders(self, keys: Sequence[str], reasons: Sequence[str]) -> dict[str, np.ndarray]:
        """Rows that stand for samples left out under ``on_error="skip"`` (all zeros)."""
        n = len(keys)
        out = {
            "key": np.asarray(keys, dtype=object),
            "image": np.zeros((n, *self.input_shape), np.dtype(self.dtype)),
            "label": np.zeros(n, np.int64),
        }
        if self.has_mask:
            out["mask"] = np.zeros((n, *self.mask_shape), np.uint8)
        out["skipped"] = np.ones(n, bool)
        out["reason"] = np.asarray(reasons, dtype=object)
        return out


@dataclass(frozen=True, kw_only=True)
class ShardTask:
    """One read task: a shard, what the manifest says about it, and this epoch's row seed."""

    url: str
    shard: str
    num_samples: int
    num_bytes: int
    sha256: str
    row_seed: tuple[int, ...] | None = None  # None: rows in tar order
    column_url: str | None = None  # the key-aligned column shard joined into the rows

    @classmethod
    def of(cls, info: ShardInfo, url: str, **kwargs: Any) -> ShardTask:
        return cls(url=url, shard=info.shard, num_samples=info.num_samples,
                   num_bytes=info.num_bytes, sha256=info.sha256, **kwargs)

    def to_json(self) -> str:
        return json.dumps(asdict(self))

    @classmethod
    def from_json(cls, text: str) -> ShardTask:
        values = json.loads(text)
        seed = values.pop("row_seed")
        return cls(row_seed=None if seed is None else tuple(seed), **values)


def _read_hashed(task: ShardTask) -> tuple[bytes, str]:
    fs, path = resolve(task.url)
    digest = hashlib.sha256()
    parts: list[bytes] = []
    size = 0
    with fs.open(path, "rb") as f:
        while size <= task.num_bytes:  # stop early on a (much) larger replacement
            chunk = f.read(_CHUNK)
            if not chunk:
                break
            digest.update(chunk)
            parts.append(chunk)
            size += len(chunk)
    return b"".join(parts), digest.hexdigest()


def fetch_shard(task: ShardTask) -> bytes:
    """The shard's bytes, read once and hashed on the way (the read is retried from the start
    on transient storage errors); raise naming the shard if they differ from the manifest
    (size or sha256), are missing or unreadable. Storage errors (credentials, bucket,
    endpoint) are not the shard's fault and pass through under any policy."""
    try:
        data, digest = retrying(lambda: _read_hashed(task))
    except StorageError:
        raise
    except FileNotFoundError as err:
        raise ChecksumError(f"shard {task.url!r} listed in the manifest does not exist") from err
    except OSError as err:
        raise _ShardProblem(task.url, f"cannot be read ({type(err).__name__}: {err})") from err
    if len(data) != task.num_bytes:
        more = " or more" if len(data) > task.num_bytes else ""
        raise ChecksumError(
            f"shard {task.url!r}: {len(data)}{more} bytes, manifest says {task.num_bytes} "
            "(truncated or replaced)"
        )
    if digest != task.sha256:
        raise ChecksumError(
            f"shard {task.url!r}: sha256 {digest} differs from manifest {task.sha256} "
            "(changed in place)"
        )
    return data


def _member_key(member: tarfile.TarInfo, url: str) -> tuple[str, str]:
    name = member.name
    if not member.isreg():
        raise _ShardProblem(url, f"member {name!r} is not a regular file (links and folders are refused)")
    if not name or "/" in name or "\\" in name or ".." in name or name.startswith("."):
        raise _ShardProblem(
            url, f"member name {name!r} is not a plain '<key>.<ext>' name (no '/', '..' or path)"
        )
    key, _, ext = name.partition(".")
    if not ext or key.startswith("__"):
        raise _ShardProblem(url, f"member name {name!r} is not a '<key>.<ext>' name")
    return key, ext.lower()


def tar_samples(data: bytes, url: str) -> list[tuple[str, dict[str, memoryview]]]:
    """``[(key, {ext: bytes})]`` in tar order, after checking every member (see module doc)."""
    view = memoryview(data)
    samples: list[tuple[str, dict[str, memoryview]]] = []
    seen: set[str] = set()
    try:
        with tarfile.open(fileobj=io.BytesIO(data), mode="r:") as tar:
            for member in tar:
                key, ext = _member_key(member, url)
                if not samples or samples[-1][0] != key:
                    if key in seen:
                        raise _ShardProblem(url, f"duplicate sample key {key!r}")
                    seen.add(key)
                    samples.append((key, {}))
                entries = samples[-1][1]
                if ext in entries:
                    raise _ShardProblem(url, f"sample {key!r} has entry '.{ext}' twice")
                end = member.offset_data + member.size
                if end > len(data):
                    raise _ShardProblem(url, f"member {member.name!r} runs past the end of the file")
                entries[ext] = view[member.offset_data:end]
            end_of_archive = tar.offset
    except tarfile.TarError as err:
        raise _ShardProblem(url, f"not a readable tar ({err})") from err
    if any(view[end_of_archive:]):
        raise _ShardProblem(
            url, f"non-zero bytes after the tar's end at byte {end_of_archive} (hidden members)"
        )
    return samples


def decode_stream_row(row: Mapping[str, Any], schema: RowSchema) -> dict[str, Any]:
    """One stream row from one sample's entries (``__key__``/``__url__`` plus ext -> bytes).

    The per-row reference for :func:`decode_block` (which must give the same rows stacked).
    """
    key, url = str(row.get("__key__")), str(row.get("__url__"))
    try:
        s = decode_sample(row, url=url, key=key, num_classes=schema.num_classes,
                          expected_shape=schema.input_shape)
        out = {"key": key, "image": s["image"] if "image" in s else s["points"],
               "label": np.int64(s["label"])}
        if schema.has_mask:
            if s.get("mask") is None:
                raise SampleError(url, key, "has no mask but the manifest says masks exist")
            out["mask"] = np.asarray(s["mask"], dtype=np.uint8)
        out.update(skipped=False, reason="")
        return out
    except SampleError as err:
        if schema.on_error == "raise":
            raise
        one = schema.placeholders([key], [str(err)])
        return {name: values[0] for name, values in one.items()}


def decode_block(
    samples: Sequence[tuple[str, Mapping[str, Any]]], url: str, schema: RowSchema
) -> dict[str, np.ndarray]:
    """Decode ``samples`` into one block of stacked arrays (rows as :func:`decode_stream_row`)."""
    n = len(samples)
    block = schema.placeholders([key for key, _ in samples], [""] * n)
    block["skipped"][:] = False
    images, labels, masks = block["image"], block["label"], block.get("mask")
    for i, (key, entries) in enumerate(samples):
        try:
            s = decode_sample(entries, url=url, key=key, num_classes=schema.num_classes,
                              expected_shape=schema.input_shape)
            if masks is not None and s.get("mask") is None:
                raise SampleError(url, key, "has no mask but the manifest says masks exist")
        except SampleError as err:
            if schema.on_error == "raise":
                raise
            block["skipped"][i], block["reason"][i] = True, str(err)
            continue
        images[i] = s["image"] if "image" in s else s["points"]
        labels[i] = s["label"]
        if masks is not None:
            masks[i] = s["mask"]
    return block


def _join_column(
    block: dict[str, np.ndarray], task: ShardTask, schema: RowSchema, table: tuple[Any, Any]
) -> dict[str, np.ndarray]:
    """Add ``schema.column`` (float32) for the block's keys from the shard's column table."""
    from reldrop.pipeline.data.columns import align_column  # pyarrow

    assert schema.column is not None
    values, missing = align_column(*table, block["key"], valid=~block["skipped"])
    for i in missing:
        key = str(block["key"][i])
        err = SampleError(task.url, key, f"no {schema.column!r} for this key in column shard "
                                         f"{task.column_url!r}")
        if schema.on_error == "raise":
            raise err
        block["skipped"][i], block["reason"][i] = True, str(err)
    block[schema.column] = values
    return block


def _shard_rows(task: ShardTask, schema: RowSchema) -> Iterator[dict[str, np.ndarray]]:
    samples = tar_samples(fetch_shard(task), task.url)
    if len(samples) != task.num_samples:
        raise _ShardProblem(
            task.url, f"holds {len(samples)} samples, manifest says {task.num_samples}"
        )
    table = None
    if schema.column is not None and task.column_url is not None:
        from reldrop.pipeline.data.columns import read_column_table

        table = read_column_table(task.column_url, schema.column)
    if task.row_seed is not None:
        order = np.random.default_rng(list(task.row_seed)).permutation(len(samples))
        samples = [samples[i] for i in order]
    step = schema.rows_per_block or max(1, len(samples))
    blocks = []
    for start in range(0, len(samples), step):
        block = decode_block(samples[start:start + step], task.url, schema)
        blocks.append(block if table is None else _join_column(block, task, schema, table))
    return iter(blocks)  # decoded in full first: a shard that fails halfway emits nothing


def shard_skip(reason: str) -> str | None:
    """The shard URL if ``reason`` (a placeholder row's) says its whole shard was left out."""
    if reason.startswith("shard '") and reason.endswith(f"({_SHARD_SKIP})"):
        return reason[len("shard '"):].split("'", 1)[0]
    return None


def shard_blocks(task: ShardTask, schema: RowSchema) -> Iterator[dict[str, np.ndarray]]:
    """The decoded blocks of one shard, after it verified; a bad shard under ``"skip"`` gives
    one placeholder row per manifest sample, each naming the shard and the problem."""
    try:
        blocks = _shard_rows(task, schema)
    except (ChecksumError, _ShardProblem) as err:
        if schema.on_error == "raise":
            raise
        reason = f"{err} ({_SHARD_SKIP})"
        keys = [f"{task.shard}#{i}" for i in range(task.num_samples)]
        step = schema.rows_per_block or max(1, task.num_samples)
        blocks = iter([
            schema.placeholders(keys[s:s + step], [reason] * len(keys[s:s + step]))
            for s in range(0, task.num_samples, step)
        ])
        if schema.column is not None:
            blocks = iter([_zero_column(b, schema) for b in blocks])
    yield from blocks


def _zero_column(block: dict[str, np.ndarray], schema: RowSchema) -> dict[str, np.ndarray]:
    assert schema.column is not None
    block[schema.column] = np.zeros((len(block["key"]), *schema.mask_shape), np.float32)
    return block


def read_shards(batch: Mapping[str, Any], *, schema: RowSchema) -> Iterator[dict[str, np.ndarray]]:
    """``map_batches`` generator: a batch of ``{"task": ShardTask JSON}`` rows -> row blocks."""
    for text in batch["task"]:
        yield from shard_blocks(ShardTask.from_json(str(text)), schema)
