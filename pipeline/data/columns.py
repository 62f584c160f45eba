"""Key-aligned column shards: per-sample arrays (e.g. precomputed relevance) beside the tars.

``{root}/{group}/{split}-{index:06d}.parquet`` holds ``__key__`` plus one column per name,
each a fixed-size list of float16/float32 (the flattened array) whose shape is stored in the
field metadata. They live next to, never inside, the data shards, so a frozen model's
relevance can be written once and joined by key every epoch (``--mode precomputed``).
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from reldrop.pipeline.data.codecs import validate_key
from reldrop.pipeline.data.fs import join_url, resolve
from reldrop.pipeline.data.manifest import shard_name

__all__ = [
    "ColumnJoin",
    "align_column",
    "column_shard_url",
    "read_column_table",
    "read_columns",
    "read_split_columns",
    "write_columns",
]

_DTYPES = (np.dtype(np.float16), np.dtype(np.float32))


def column_shard_url(root_url: str, split: str, shard_index: int, *, group: str = "relevance") -> str:
    """``{root_url}/{group}/{split}-{shard_index:06d}.parquet``."""
    if not group or "/" in group or "." in group:
        raise ValueError(f"group {group!r} must be a directory name without '/' or '.'")
    return join_url(root_url, group, shard_name(split, shard_index)[: -len(".tar")] + ".parquet")


def write_columns(
    root_url: str,
    split: str,
    shard_index: int,
    keys: Sequence[str],
    columns: Mapping[str, np.ndarray],
    *,
    group: str = "relevance",
) -> str:
    """Write ``columns`` (name -> array of shape (len(keys), ...)) keyed by ``keys``; return URL."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    keys = [validate_key(k) for k in keys]
    if len(set(keys)) != len(keys):
        raise ValueError("keys must be unique")
    if not columns:
        raise ValueError("columns must name at least one array")
    fields, arrays = [pa.field("__key__", pa.string())], [pa.array(keys, pa.string())]
    for name, values in columns.items():
        values = np.asarray(values)
        if name.startswith("__"):
            raise ValueError(f"column name {name!r} must not start with '__'")
        if values.dtype not in _DTYPES:
            raise ValueError(f"column {name!r}: dtype {values.dtype}; allowed float16, float32")
        if values.ndim < 1 or values.shape[0] != len(keys):
            raise ValueError(
                f"column {name!r}: shape {values.shape}; expected ({len(keys)}, ...) for {len(keys)} keys"
            )
        shape = values.shape[1:]
        size = int(np.prod(shape)) if shape else 1
        flat = pa.array(np.ascontiguousarray(values).reshape(-1))
        arrays.append(pa.FixedSizeListArray.from_arrays(flat, size))
        meta = {"shape": json.dumps(list(shape)), "dtype": str(values.dtype)}
        fields.append(pa.field(name, arrays[-1].type, metadata=meta))
    table = pa.Table.from_arrays(arrays, schema=pa.schema(fields))
    url = column_shard_url(root_url, split, shard_index, group=group)
    fs, path = resolve(url)
    fs.makedirs(path.rsplit("/", 1)[0], exist_ok=True)
    with fs.open(path, "wb") as f:
        pq.write_table(table, f)
    return url


def read_column_table(url: str, column: str) -> tuple[list[str], np.ndarray]:
    """``(keys, values)`` of ``column`` in one column shard, values stacked ``(len(keys), ...)``."""
    import pyarrow.parquet as pq

    fs, path = resolve(url)
    if not fs.exists(path):
        raise FileNotFoundError(f"no column shard at {url!r}; write it with `reldrop explain`")
    with fs.open(path, "rb") as f:
        table = pq.read_table(f)
    if column not in table.column_names:
        names = [n for n in table.column_names if n != "__key__"]
        raise ValueError(f"column shard {url!r} has no column {column!r}; it has {names}")
    meta = table.schema.field(column).metadata or {}
    shape = tuple(json.loads(meta.get(b"shape", b"[]")))
    dtype = np.dtype(meta.get(b"dtype", b"float32").decode())
    chunked = table.column(column).combine_chunks()
    flat = chunked.flatten().to_numpy(zero_copy_only=False).astype(dtype, copy=False)
    return table.column("__key__").to_pylist(), flat.reshape((len(table), *shape))


def align_column(
    keys: Sequence[str], values: np.ndarray, want: Sequence[str] | np.ndarray, *, valid: np.ndarray
) -> tuple[np.ndarray, list[int]]:
    """``values`` reordered to the keys ``want`` (float32), and the positions of valid rows
    whose key the column shard lacks; rows not ``valid`` (placeholders) get zeros."""
    where = {key: i for i, key in enumerate(keys)}
    out = np.zeros((len(want), *values.shape[1:]), np.float32)
    missing: list[int] = []
    rows, picks = [], []
    for i, key in enumerate(want):
        j = where.get(str(key))
        if j is not None:
            rows.append(i)
            picks.append(j)
        elif valid[i]:
            missing.append(i)
    if rows:
        out[np.asarray(rows)] = values[np.asarray(picks)]
    return out, missing


def _read_table(url: str, column: str) -> dict[str, np.ndarray]:
    keys, values = read_column_table(url, column)
    return {key: values[i] for i, key in enumerate(keys)}


def read_columns(
    root_url: str,
    split: str,
    shard_index: int,
    *,
    column: str = "relevance",
    group: str = "relevance",
) -> dict[str, np.ndarray]:
    """``{key: array}`` of ``column`` in one column shard."""
    return _read_table(column_shard_url(root_url, split, shard_index, group=group), column)


def read_split_columns(
    root_url: str, split: str, *, column: str = "relevance", group: str = "relevance"
) -> dict[str, np.ndarray]:
    """``{key: array}`` of ``column`` over every column shard of ``split`` in ``group``."""
    base = column_shard_url(root_url, split, 0, group=group).rsplit("/", 1)[0]
    fs, path = resolve(base)
    names = sorted(p.rsplit("/", 1)[-1] for p in fs.glob(f"{path}/{split}-*.parquet"))
    if not names:
        raise FileNotFoundError(f"no column shards for split {split!r} under {base!r}")
    out: dict[str, np.ndarray] = {}
    for name in names:
        out.update(_read_table(join_url(base, name), column))
    return out


@dataclass(frozen=True, kw_only=True)
class ColumnJoin:
    """Which key-aligned column shards a read joins into its rows (``--mode precomputed``).

    The read task of data shard ``i`` reads column shard ``i`` of ``group`` under
    ``root_url`` and adds ``column`` (float32) to each row, so no process ever holds more
    than one shard's column.
    """

    root_url: str
    group: str = "relevance"
    column: str = "relevance"

    def __post_init__(self) -> None:
        column_shard_url(self.root_url, "train", 0, group=self.group)  # validates group
        if not self.column or self.column.startswith("__"):
            raise ValueError(f"column {self.column!r} must be a non-empty name not starting with '__'")

    def url(self, split: str, shard_index: int) -> str:
        return column_shard_url(self.root_url, split, shard_index, group=self.group)
