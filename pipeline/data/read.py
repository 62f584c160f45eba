"""The one shard reader: fetch once, verify while reading, parse strictly, decode by block.

A shard's bytes are read once through fsspec and hashed as they arrive; where a manifest lists
the shard, size and sha256 are compared with it before tar parsing starts, so tampered bytes
never reach ``tarfile`` nor the trainer. The tar is then checked member by member (relative
names without ``..``, regular files only, each key once, nothing but zero padding after the end
of the archive, as many samples as the manifest says) and decoded a block at a time into
stacked numpy arrays: one ``uint8 (n, C, H, W)`` image array per block instead of one Python
dict per row (:func:`reldrop.pipeline.data.decode.decode_samples`). Members are grouped into
samples as webdataset does: the key is the name up to the first ``.`` of its last path part.

Every consumer reads through here: Ray Data (:func:`reldrop.pipeline.data.stream.read_split`
runs :func:`read_task_blocks` as a ``map_batches`` generator, one task per shard) and
in-process loops (:func:`iter_samples`, :class:`ShardDataset`: evaluation, ``explain``,
studies, figures).

Errors follow the :data:`~reldrop.pipeline.data.errors.OnError` policy: ``"raise"`` raises one
line naming the shard (and key); ``"skip"`` turns a bad sample into a placeholder row
(``skipped=True``, ``reason`` set) and a bad shard into one placeholder row per sample the
manifest promised (one row where there is no manifest), so the trainer counts every sample
that was left out and nothing is lost silently. :func:`iter_samples` leaves them out and
counts them in a :class:`~reldrop.pipeline.data.errors.SkipReport` instead.
"""

from __future__ import annotations

import hashlib
import io
import json
import tarfile
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, field, replace
from typing import TYPE_CHECKING, Any

import numpy as np
from torch.utils.data import IterableDataset

from reldrop.pipeline.data.codecs import SampleError
from reldrop.pipeline.data.decode import DecodeOptions, decode_samples
from reldrop.pipeline.data.errors import OnError, ShardError, SkipReport, check_on_error
from reldrop.pipeline.data.fs import StorageError, resolve, retrying
from reldrop.pipeline.data.manifest import ChecksumError, Manifest, ShardInfo

if TYPE_CHECKING:
    from reldrop.pipeline.data.plan import DataPlan

__all__ = [
    "RowSchema",
    "ShardDataset",
    "ShardTask",
    "decode_block",
    "decode_stream_row",
    "fetch_shard",
    "iter_samples",
    "read_task_blocks",
    "shard_blocks",
    "shard_skip",
    "tar_samples",
]

_CHUNK = 4 << 20
_SHARD_SKIP = "whole shard left out"


@dataclass(frozen=True, kw_only=True)
class RowSchema:
    """What every row of a split looks like (from the manifest); travels to read tasks."""

    num_classes: int | None
    input_shape: tuple[int, ...]
    dtype: str
    modality: str
    has_mask: bool
    on_error: OnError = "raise"
    rows_per_block: int | None = None
    column: str | None = None  # name of a key-aligned column joined into every row
    decode: DecodeOptions = field(default_factory=DecodeOptions)

    def __post_init__(self) -> None:
        check_on_error(self.on_error)
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
    """One read task: a shard, what the manifest says about it (``None``: no manifest, not
    checked), and this epoch's row seed."""

    url: str
    shard: str
    num_samples: int | None = None
    num_bytes: int | None = None
    sha256: str | None = None
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
        while task.num_bytes is None or size <= task.num_bytes:  # stop early on a larger replacement
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
    (size or sha256, where the task has them), are missing or unreadable. Storage errors
    (credentials, bucket, endpoint) are not the shard's fault and pass through under any
    policy."""
    try:
        data, digest = retrying(lambda: _read_hashed(task))
    except StorageError:
        raise
    except FileNotFoundError as err:
        where = "listed in the manifest" if task.sha256 is not None else "named by the data URL"
        raise ChecksumError(f"shard {task.url!r} {where} does not exist") from err
    except OSError as err:
        raise ShardError(task.url, f"cannot be read ({type(err).__name__}: {err})") from err
    if task.num_bytes is not None and len(data) != task.num_bytes:
        more = " or more" if len(data) > task.num_bytes else ""
        raise ChecksumError(
            f"shard {task.url!r}: {len(data)}{more} bytes, manifest says {task.num_bytes} "
            "(truncated or replaced)"
        )
    if task.sha256 is not None and digest != task.sha256:
        raise ChecksumError(
            f"shard {task.url!r}: sha256 {digest} differs from manifest {task.sha256} "
            "(changed in place)"
        )
    return data


def _member_key(member: tarfile.TarInfo, url: str) -> tuple[str, str] | None:
    """``(key, ext)`` as webdataset names them (key: the path up to the first ``.`` of its last
    part), ``None`` for a folder entry; refuses links, absolute and ``..`` names."""
    name = member.name
    if member.isdir():
        return None
    if not member.isreg():
        raise ShardError(url, f"member {name!r} is not a regular file (links and devices are refused)")
    parts = name.split("/")
    if not name or name.startswith("/") or "\\" in name or ".." in parts or parts[-1].startswith("."):
        raise ShardError(
            url, f"member name {name!r} is not a plain '<key>.<ext>' name (no '..', absolute "
            "path or hidden file)"
        )
    stem, _, ext = parts[-1].partition(".")
    key = "/".join([*parts[:-1], stem])
    if not ext or not stem or stem.startswith("__"):
        raise ShardError(url, f"member name {name!r} is not a '<key>.<ext>' name")
    return key, ext.lower()


def tar_samples(data: bytes, url: str) -> list[tuple[str, dict[str, memoryview]]]:
    """``[(key, {ext: bytes})]`` in tar order, after checking every member (see module doc)."""
    view = memoryview(data)
    samples: list[tuple[str, dict[str, memoryview]]] = []
    seen: set[str] = set()
    try:
        with tarfile.open(fileobj=io.BytesIO(data), mode="r:") as tar:
            for member in tar:
                named = _member_key(member, url)
                if named is None:
                    continue
                key, ext = named
                if not samples or samples[-1][0] != key:
                    if key in seen:
                        raise ShardError(url, f"duplicate sample key {key!r}")
                    seen.add(key)
                    samples.append((key, {}))
                entries = samples[-1][1]
                if ext in entries:
                    raise ShardError(url, f"sample {key!r} has entry '.{ext}' twice")
                end = member.offset_data + member.size
                if end > len(data):
                    raise ShardError(url, f"member {member.name!r} runs past the end of the file")
                entries[ext] = view[member.offset_data:end]
            end_of_archive = tar.offset
    except tarfile.TarError as err:
        raise ShardError(url, f"not a readable tar ({err})") from err
    if any(view[end_of_archive:]):
        raise ShardError(
            url, f"non-zero bytes after the tar's end at byte {end_of_archive} (hidden members)"
        )
    return samples


def _sample_row(s: dict[str, Any] | SampleError, url: str, key: str, schema: RowSchema
                ) -> dict[str, Any] | SampleError:
    """A decoded sample as a stream row's values, or why it cannot be one."""
    if isinstance(s, SampleError):
        return s
    if schema.has_mask and s.get("mask") is None:
        return SampleError(url, key, "has no mask but the manifest says masks exist")
    return s


def decode_stream_row(row: Mapping[str, Any], schema: RowSchema) -> dict[str, Any]:
    """One stream row from one sample's entries (``__key__``/``__url__`` plus ext -> bytes).

    The per-row reference for :func:`decode_block` (which must give the same rows stacked).
    """
    key, url = str(row.get("__key__")), str(row.get("__url__"))
    s = _sample_row(decode_samples([(key, row)], url=url, num_classes=schema.num_classes,
                                   expected_shape=tuple(schema.input_shape),
                                   options=schema.decode)[0], url, key, schema)
    if isinstance(s, SampleError):
        if schema.on_error == "raise":
            raise s
        one = schema.placeholders([key], [str(s)])
        return {name: values[0] for name, values in one.items()}
    out = {"key": key, "image": s["image"] if "image" in s else s["points"],
           "label": np.int64(s["label"])}
    if schema.has_mask:
        out["mask"] = np.asarray(s["mask"], dtype=np.uint8)
    out.update(skipped=False, reason="")
    return out


def decode_block(
    samples: Sequence[tuple[str, Mapping[str, Any]]], url: str, schema: RowSchema
) -> dict[str, np.ndarray]:
    """Decode ``samples`` into one block of stacked arrays (rows as :func:`decode_stream_row`);
    their encoded images are decoded together."""
    n = len(samples)
    block = schema.placeholders([key for key, _ in samples], [""] * n)
    block["skipped"][:] = False
    images, labels, masks = block["image"], block["label"], block.get("mask")
    decoded = decode_samples(samples, url=url, num_classes=schema.num_classes,
                             expected_shape=tuple(schema.input_shape), options=schema.decode)
    for i, ((key, _), result) in enumerate(zip(samples, decoded)):
        s = _sample_row(result, url, key, schema)
        if isinstance(s, SampleError):
            if schema.on_error == "raise":
                raise s
            block["skipped"][i], block["reason"][i] = True, str(s)
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
    if task.num_samples is not None and len(samples) != task.num_samples:
        raise ShardError(
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
    one placeholder row per manifest sample (one without a manifest), each naming the shard
    and the problem."""
    try:
        blocks = _shard_rows(task, schema)
    except (ChecksumError, ShardError) as err:
        if schema.on_error == "raise":
            raise
        reason = f"{err} ({_SHARD_SKIP})"
        count = 1 if task.num_samples is None else task.num_samples
        keys = [f"{task.shard}#{i}" for i in range(count)]
        step = schema.rows_per_block or max(1, count)
        blocks = iter([
            schema.placeholders(keys[s:s + step], [reason] * len(keys[s:s + step]))
            for s in range(0, count, step)
        ])
        if schema.column is not None:
            blocks = iter([_zero_column(b, schema) for b in blocks])
    yield from blocks


def _zero_column(block: dict[str, np.ndarray], schema: RowSchema) -> dict[str, np.ndarray]:
    assert schema.column is not None
    block[schema.column] = np.zeros((len(block["key"]), *schema.mask_shape), np.float32)
    return block


def read_task_blocks(batch: Mapping[str, Any], *, schema: RowSchema
                     ) -> Iterator[dict[str, np.ndarray]]:
    """``map_batches`` generator: a batch of ``{"task": ShardTask JSON}`` rows -> row blocks."""
    for text in batch["task"]:
        yield from shard_blocks(ShardTask.from_json(str(text)), schema)


# ---- in-process reading (no Ray) -----------------------------------------------------------


def _plan_of(source: str | DataPlan, split: str | None, on_error: OnError,
             decode: DecodeOptions | None) -> DataPlan:
    from reldrop.pipeline.data.plan import DataPlan, plan_split  # cycle

    if isinstance(source, DataPlan):
        return source
    url = source if split is None else f"{source}#{split}"
    plan = plan_split(url, "train", on_error=on_error, decode=decode)
    # without a manifest the class count is a guess from one shard: check labels >= 0 only
    return plan if plan.verified else replace(plan, check_labels=False)


def iter_samples(
    source: str | DataPlan,
    split: str | None = None,
    *,
    on_error: OnError = "raise",
    report: SkipReport | None = None,
    decode: DecodeOptions | None = None,
    shuffle_shards: bool = False,
    seed: int = 0,
    split_by_node: bool = False,
) -> Iterator[dict[str, Any]]:
    """Yield decoded samples (``key``, ``url``, ``label``, ``image`` or ``points``, ``mask``)
    of a data URL (``source``, with ``split``) or a :class:`~reldrop.pipeline.data.plan.DataPlan`;
    each sample once across torch ``DataLoader`` workers (webdataset's ``split_by_worker``;
    ``split_by_node`` also splits by ``torch.distributed`` rank).

    Shards are read and verified as by the Ray read tasks (:func:`shard_blocks`). Under
    ``on_error="skip"`` bad samples and shards are left out and counted in ``report``.
    """
    import webdataset as wds  # imports torch

    on_error = check_on_error(on_error)
    report = report if report is not None else SkipReport()
    plan = _plan_of(source, split, on_error, decode)
    for entry in plan.skipped_shards:
        report.add(entry["url"], None, entry["reason"])
    schema = RowSchema.of(plan.manifest, on_error=on_error, decode=plan.decode)
    if not plan.check_labels:
        schema = replace(schema, num_classes=None)
    from reldrop.pipeline.data.plan import shard_tasks  # cycle

    tasks: Iterator[ShardTask] = iter(shard_tasks(plan, shuffle_seed=seed if shuffle_shards else None))
    if split_by_node:
        tasks = wds.split_by_node(tasks)
    name = "points" if schema.modality == "points" else "image"
    for task in wds.split_by_worker(tasks):
        for block in shard_blocks(task, schema):
            for i, key in enumerate(block["key"]):
                if block["skipped"][i]:
                    reason = str(block["reason"][i])
                    whole = shard_skip(reason)
                    if whole is None:
                        report.add(task.url, str(key), reason)
                    elif i == 0:
                        report.add(whole, None, reason)
                    continue
                sample = {"key": str(key), "url": task.url, "label": int(block["label"][i]),
                          name: block["image"][i]}
                if "mask" in block:
                    sample["mask"] = block["mask"][i]
                yield sample


class ShardDataset(IterableDataset):  # type: ignore[type-arg]
    """A torch ``IterableDataset`` over :func:`iter_samples` (picklable for ``DataLoader``).

    With more workers than shards the extra workers yield nothing; no sample is duplicated.
    Each worker has its own :class:`~reldrop.pipeline.data.errors.SkipReport` (skips are also
    logged as warnings).
    """

    def __init__(self, source: str, split: str | None = None, **kwargs: Any) -> None:
        super().__init__()
        self.source, self.split, self.kwargs = source, split, kwargs

    def __iter__(self) -> Iterator[dict[str, Any]]:
        return iter_samples(self.source, self.split, **self.kwargs)
