"""The Ray read path: shards verified while streaming, strict tar members, the batch decoder
against the row decoder, per-epoch shuffling and streamed precomputed relevance."""

from __future__ import annotations

import hashlib
import io
import tarfile
import uuid
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from reldrop.pipeline.data.codecs import SampleError, encode_sample
from reldrop.pipeline.data.columns import ColumnJoin, read_split_columns, write_columns
from reldrop.pipeline.data.fs import resolve
from reldrop.pipeline.data.manifest import ChecksumError, Manifest, ShardInfo, write_manifest
from reldrop.pipeline.data.read import (
    RowSchema,
    ShardTask,
    decode_block,
    decode_stream_row,
    shard_blocks,
    shard_skip,
    tar_samples,
)
from reldrop.pipeline.data.shards import write_dataset
from reldrop.pipeline.data.stream import data_error, plan_split, read_split, shard_tasks

_SHAPE = (3, 5, 4)


def _mem_root() -> str:
    return f"memory://stream-{uuid.uuid4().hex}"


def _sample(i: int, *, label: int | None = None) -> dict:
    rng = np.random.default_rng(i)
    return {
        "key": f"s{i:04d}",
        "image": rng.integers(0, 256, _SHAPE, dtype=np.uint8),
        "label": int(rng.integers(3)) if label is None else label,
        "mask": (rng.random(_SHAPE[1:]) > 0.5).astype(np.uint8),
    }


def _tar(members: list[tuple[str, bytes]], *, kind: bytes = tarfile.REGTYPE) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.USTAR_FORMAT) as tar:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size, info.mtime = len(data), 0
            if name.endswith(".link"):
                info.type, info.linkname, info.size = tarfile.SYMTYPE, "/etc/passwd", 0
                data = b""
            tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def _members(*indices: int) -> list[tuple[str, bytes]]:
    out = []
    for i in indices:
        entries = encode_sample(_sample(i))
        key = entries.pop("__key__")
        out += [(f"{key}.{ext}", bytes(data)) for ext, data in entries.items()]  # type: ignore[arg-type]
    return out


def _publish(root: str, shards: list[tuple[bytes, int]]) -> None:
    """Write raw tar bytes as ``train`` shards and a manifest that matches them (what a
    careless or malicious builder could hand us: the checksums pass, the contents are bad)."""
    fs, path = resolve(root)
    fs.makedirs(path, exist_ok=True)
    infos = []
    for i, (data, num_samples) in enumerate(shards):
        name = f"train-{i:06d}.tar"
        fs.pipe_file(f"{path}/{name}", data)
        infos.append(ShardInfo(split="train", shard=name, url=f"{root}/{name}", num_samples=num_samples,
                               num_bytes=len(data), sha256=hashlib.sha256(data).hexdigest()))
    write_manifest(Manifest(root_url=root, dataset="t", modality="image", input_shape=_SHAPE,
                            dtype="uint8", num_classes=3, class_names=(), has_mask=True,
                            shards=tuple(infos)))


def _schema(on_error: str = "raise", **kw) -> RowSchema:
    return RowSchema(num_classes=3, input_shape=_SHAPE, dtype="uint8", modality="image",
                     has_mask=True, on_error=on_error, **kw)


def _blocks(root: str, on_error: str = "raise", **kw) -> list[dict]:
    plan = plan_split(root, "train", on_error=on_error)
    return [b for t in shard_tasks(plan, **kw) for b in shard_blocks(t, _schema(on_error))]


def _keys(blocks: list[dict]) -> list[str]:
    return [str(k) for b in blocks for k in b["key"]]


# ---- verification while streaming (no Ray) ------------------------------------------------


_BAD_TARS = {
    "parent-name": (lambda: _members(0) + [("../../evil.png", b"x")], "not a plain"),
    "absolute-name": (lambda: _members(0) + [("/tmp/evil.png", b"x")], "not a plain"),
    "link": (lambda: _members(0) + [("s0001.link", b"")], "not a regular file"),
    "duplicate-key": (lambda: _members(0, 1, 0), "duplicate sample key 's0000'"),
    "duplicate-entry": (lambda: _members(0) + [("s0000.cls", b"1")], "entry '.cls' twice"),
}


@pytest.mark.parametrize("case", list(_BAD_TARS))
def test_bad_members_raise_and_skip_whole_shard(case: str) -> None:
    members, message = _BAD_TARS[case]
    root = _mem_root()
    _publish(root, [(_tar(_members(5, 6)), 2), (_tar(members()), 2)])
    with pytest.raises(ValueError, match=message) as info:
        _blocks(root)
    assert f"shard '{root}/train-000001.tar'" in str(info.value)
    blocks = _blocks(root, on_error="skip")
    keys, skipped = _keys(blocks), np.concatenate([b["skipped"] for b in blocks])
    assert keys[:2] == ["s0005", "s0006"] and not skipped[:2].any()
    assert keys[2:] == ["train-000001.tar#0", "train-000001.tar#1"] and skipped[2:].all()
    reason = str(blocks[1]["reason"][0])
    assert message.split("'")[0] in reason and shard_skip(reason) == f"{root}/train-000001.tar"
    assert shard_skip(str(SampleError("u", "k", "label 9"))) is None


def test_extra_sample_and_hidden_bytes_in_the_padding() -> None:
    good = _tar(_members(0, 1))
    # an extra sample where the end-of-archive marker was: the sample count catches it
    extra = _tar(_members(0, 1, 2))
    assert len(extra) == len(good)  # it fits the padding: same size as the good shard
    root = _mem_root()
    _publish(root, [(extra, 2)])
    with pytest.raises(ValueError, match="holds 3 samples, manifest says 2"):
        _blocks(root)
    # a member after the end-of-archive marker (tarfile stops before it)
    hidden = bytearray(good)
    end = len(good.rstrip(b"\0"))
    end += (-end) % 512 + 1024
    hidden[end:end + 512] = _tar(_members(2))[:512]
    assert len(hidden) == len(good)
    root = _mem_root()
    _publish(root, [(bytes(hidden), 2)])
    with pytest.raises(ValueError, match="non-zero bytes after the tar's end"):
        _blocks(root)


def test_same_size_tamper_fails_sha256_while_streaming() -> None:
    root = _mem_root()
    write_dataset(root, {"train": [_sample(i) for i in range(6)]}, dataset="t", num_classes=3,
                  shard_size=3)
    fs, path = resolve(f"{root}/train-000001.tar")
    data = bytearray(fs.cat_file(path))
    at = data.index(b"s0003.cls") + 512  # the label's bytes
    data[at] = ord("2") if data[at] != ord("2") else ord("1")
    fs.pipe_file(path, bytes(data))
    plan = plan_split(root, "train", on_error="raise")  # same size: the cheap check passes
    assert len(plan.urls) == 2
    with pytest.raises(ChecksumError, match=r"train-000001\.tar.*sha256 .* differs"):
        _blocks(root)
    blocks = _blocks(root, on_error="skip")
    skipped = np.concatenate([b["skipped"] for b in blocks])
    assert skipped.sum() == 3 and _keys(blocks)[:3] == ["s0000", "s0001", "s0002"]


def test_plan_checks_sizes_and_names_missing_shards() -> None:
    root = _mem_root()
    write_dataset(root, {"train": [_sample(i) for i in range(6)]}, dataset="t", num_classes=3,
                  shard_size=2)
    fs, path = resolve(root)
    fs.pipe_file(f"{path}/train-000001.tar", fs.cat_file(f"{path}/train-000001.tar")[:1000])
    fs.rm(f"{path}/train-000002.tar")
    with pytest.raises(ChecksumError, match=r"train-000001\.tar': 1000 bytes, manifest says"):
        plan_split(root, "train", on_error="raise")
    plan = plan_split(root, "train", on_error="skip")
    assert plan.urls == (f"{root}/train-000000.tar",) and plan.num_samples == 2
    assert [s["url"].rsplit("/", 1)[1] for s in plan.skipped_shards] == ["train-000001.tar",
                                                                          "train-000002.tar"]
    assert "does not exist" in plan.skipped_shards[1]["reason"]
    with pytest.raises(ValueError, match="on_error='ignore'"):
        plan_split(root, "train", on_error="ignore")


def test_data_error_finds_shard_lines() -> None:
    wrapped = RuntimeError("Traceback\n  ValueError: shard 's3://b/train-000001.tar': holds 3 samples\nmore")
    assert data_error(wrapped) == "ValueError: shard 's3://b/train-000001.tar': holds 3 samples"


# ---- the batch decoder equals the row decoder on every dataset kind ----------------------


def _npz(tmp_path: Path) -> str:
    rng = np.random.default_rng(0)
    path = tmp_path / "arrays.npz"
    np.savez(path, x=rng.integers(0, 256, (12, 6, 6, 3), dtype=np.uint8), y=np.arange(12) % 3,
             mask=(rng.random((12, 6, 6)) > 0.5).astype(np.uint8))
    return f"npz:{path}"


@pytest.mark.parametrize("name", ["decoy-mnist", "mnist", "digits", "points", "npz"])
def test_batch_decoder_equals_row_decoder(name: str, tmp_path: Path) -> None:
    from reldrop.pipeline.data.datasets import build_dataset

    root = str(tmp_path / "data")
    source = _npz(tmp_path) if name == "npz" else name
    build_dataset(source, root, seed=0, limit=24, shard_size=7, progress=False, num_points=16)
    plan = plan_split(root, "train", on_error="skip")
    schema = RowSchema.of(plan.manifest, on_error="skip")
    assert name not in ("decoy-mnist", "npz") or schema.has_mask
    for task in shard_tasks(plan):
        samples = tar_samples(resolve(task.url)[0].cat_file(resolve(task.url)[1]), task.url)
        samples.append(("broken", {**samples[0][1], "cls": b"99"}))  # a bad label: placeholder
        block = decode_block(samples, task.url, schema)
        rows = [decode_stream_row({"__key__": k, "__url__": task.url, **e}, schema) for k, e in samples]
        assert set(block) == set(rows[0])
        for column, values in block.items():
            if column in ("key", "reason"):
                assert values.tolist() == [r[column] for r in rows], column
                continue
            want = np.stack([np.asarray(r[column]) for r in rows])
            assert values.shape == want.shape and values.dtype == want.dtype, column
            np.testing.assert_array_equal(values, want, err_msg=column)
        assert block["skipped"][-1] and "outside the classes" in block["reason"][-1]


# ---- shuffling and streamed columns without Ray ------------------------------------------


def _dataset(root: str, n: int = 40, shard_size: int = 8) -> None:
    write_dataset(root, {"train": [_sample(i) for i in range(n)]}, dataset="t", num_classes=3,
                  shard_size=shard_size)


def test_epoch_order_differs_is_reproducible_and_complete() -> None:
    root = _mem_root()
    _dataset(root)
    orders = {(seed, epoch): _keys(_blocks(root, shuffle_seed=seed, epoch=epoch))
              for seed in (1, 2) for epoch in (0, 1)}
    assert orders[1, 0] != orders[1, 1] and orders[1, 0] != orders[2, 0]
    assert orders[1, 0] == _keys(_blocks(root, shuffle_seed=1, epoch=0))
    for order in orders.values():
        assert sorted(order) == [f"s{i:04d}" for i in range(40)]
    assert _keys(_blocks(root)) == [f"s{i:04d}" for i in range(40)]  # no seed: manifest order


def _relevance(root: str, n: int = 40, shard_size: int = 8) -> None:
    for shard in range(n // shard_size):
        keys = [f"s{i:04d}" for i in range(shard * shard_size, (shard + 1) * shard_size)]
        values = np.stack([np.full(_SHAPE[1:], int(k[1:]), np.float16) for k in keys])
        write_columns(root, "train", shard, keys[::-1], {"relevance": values[::-1]})


def test_joined_column_equals_whole_split_lookup_without_ray() -> None:
    root = _mem_root()
    _dataset(root)
    _relevance(root)
    plan = plan_split(root, "train", on_error="raise")
    schema = _schema(column="relevance", rows_per_block=3)
    whole = read_split_columns(root, "train")
    tasks = shard_tasks(plan, shuffle_seed=3, columns=ColumnJoin(root_url=root))
    for block in (b for t in tasks for b in shard_blocks(t, schema)):
        assert block["relevance"].dtype == np.float32 and len(block["key"]) <= 3
        for key, rel in zip(block["key"], block["relevance"]):
            np.testing.assert_array_equal(rel, whole[str(key)].astype(np.float32))


def test_missing_column_key_is_named() -> None:
    root = _mem_root()
    _dataset(root, n=8)
    write_columns(root, "train", 0, [f"s{i:04d}" for i in range(7)],
                  {"relevance": np.zeros((7, *_SHAPE[1:]), np.float16)})
    task = shard_tasks(plan_split(root, "train", on_error="raise"), columns=ColumnJoin(root_url=root))[0]
    with pytest.raises(SampleError, match=r"sample 's0007': no 'relevance' for this key"):
        list(shard_blocks(task, _schema(column="relevance")))
    (block,) = shard_blocks(task, _schema("skip", column="relevance"))
    assert block["skipped"].tolist() == [False] * 7 + [True]


# ---- through Ray -----------------------------------------------------------------------


def _rows(ds) -> list[dict]:
    return [row for batch in ds.iter_batches(batch_size=16, batch_format="numpy")
            for row in (dict(zip(batch, values)) for values in zip(*batch.values()))]


@pytest.mark.ray
def test_ray_epochs_shuffle_reproducibly_each_key_once(ray_local) -> None:
    import ray

    root = _mem_root().replace("memory://", "/tmp/reldrop-test-")
    _dataset(root)
    plan = plan_split(root, "train", on_error="raise")
    ctx = ray.data.DataContext.get_current()
    old, ctx.execution_options.preserve_order = ctx.execution_options.preserve_order, True
    try:
        def keys(**kw) -> list[str]:
            ds = read_split(plan, on_error="raise", rows_per_block=5, shuffle_seed=7, **kw)
            return [str(k) for b in ds.iter_batches(batch_size=16) for k in b["key"]]

        first, second, again = keys(epoch=0), keys(epoch=1), keys(epoch=0)
    finally:
        ctx.execution_options.preserve_order = old
    assert first != second and first == again
    for order in (first, second):
        assert Counter(order) == Counter(f"s{i:04d}" for i in range(40))
    assert first == _keys(_blocks(root, shuffle_seed=7, epoch=0))


@pytest.mark.ray
def test_ray_read_rows_and_streamed_relevance(ray_local, tmp_path: Path) -> None:
    root = str(tmp_path / "data")
    _dataset(root)
    _relevance(root)
    plan = plan_split(root, "train", on_error="raise")
    ds = read_split(plan, on_error="raise", rows_per_block=3, columns=ColumnJoin(root_url=root))
    rows = _rows(ds)
    # blocks of rows_per_block rows (Ray would merge what a task yields into 128 MiB blocks)
    sizes = [m.num_rows for bundle in ds.iter_internal_ref_bundles() for m in bundle.metadata]
    assert sum(sizes) == 40 and max(sizes) <= 3
    whole = read_split_columns(root, "train")
    assert sorted(r["key"] for r in rows) == [f"s{i:04d}" for i in range(40)]
    for row in rows:
        want = _sample(int(row["key"][1:]))
        np.testing.assert_array_equal(row["image"], want["image"])
        np.testing.assert_array_equal(row["mask"], want["mask"])
        assert row["label"] == want["label"] and not row["skipped"]
        np.testing.assert_array_equal(row["relevance"], whole[row["key"]].astype(np.float32))


@pytest.mark.ray
def test_ray_tampered_shard_raise_names_it_skip_counts_it(ray_local, tmp_path: Path) -> None:
    root = str(tmp_path / "data")
    _dataset(root, n=16)
    victim = tmp_path / "data" / "train-000001.tar"
    data = bytearray(victim.read_bytes())
    data[data.index(b"s0009.cls") + 512] ^= 1
    victim.write_bytes(bytes(data))
    with pytest.raises(Exception, match=r"train-000001\.tar") as info:
        _rows(read_split(plan_split(root, "train", on_error="raise"), on_error="raise"))
    assert "sha256" in (data_error(info.value) or "")
    rows = _rows(read_split(plan_split(root, "train", on_error="skip"), on_error="skip"))
    assert len(rows) == 16 and sum(r["skipped"] for r in rows) == 8
    assert {shard_skip(r["reason"]) for r in rows if r["skipped"]} == {str(victim)}


def test_shard_task_json_round_trip() -> None:
    task = ShardTask(url="memory://x/train-000000.tar", shard="train-000000.tar", num_samples=3,
                     num_bytes=10, sha256="0" * 64, row_seed=(1, 2, 3), column_url=None)
    assert ShardTask.from_json(task.to_json()) == task


def test_errors_survive_pickling() -> None:
    import pickle

    err = SampleError("s3://b/train-000001.tar", "k7", "label 12 outside")
    back = pickle.loads(pickle.dumps(err))
    assert (back.url, back.key, back.problem, str(back)) == (err.url, err.key, err.problem, str(err))


@pytest.mark.ray
def test_measure_data_path_runs_both_paths(ray_local, tmp_path: Path) -> None:
    from reldrop.pipeline.bench.data_path import make_bench_shards, measure_data_path

    root = make_bench_shards(str(tmp_path / "bench"), rows=24, shape=(1, 4, 4), shard_size=8)
    result = measure_data_path(root, repeats=1, batch_size=8)
    assert result["rows"] == 24 and result["shards"] == 3
    for path in ("old", "new"):
        assert result[path]["rows_per_s"] > 0 and result[path]["rows_per_cpu_s"] > 0
