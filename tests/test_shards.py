"""Tar shards over fsspec: round trips, DataLoader workers, every bad-input case for both policies."""

from __future__ import annotations

import io
import uuid
from pathlib import Path

import fsspec
import numpy as np
import pytest
import webdataset as wds

from reldrop.pipeline.data.codecs import SampleError, encode_sample
from reldrop.pipeline.data.columns import read_columns, read_split_columns, write_columns
from reldrop.pipeline.data.fs import arrow_filesystem, resolve
from reldrop.pipeline.data.manifest import (
    ChecksumError,
    Manifest,
    ShardInfo,
    read_manifest,
    write_manifest,
)
from reldrop.pipeline.data.shards import (
    ShardDataset,
    ShardError,
    SkipReport,
    iter_samples,
    write_dataset,
)


def _samples(split: str, n: int, *, masks: bool = True):
    rng = np.random.default_rng(len(split))
    out = []
    for i in range(n):
        sample = {
            "key": f"{split}-{i:04d}",
            "image": rng.integers(0, 256, (3, 5, 4), dtype=np.uint8),
            "label": int(rng.integers(4)),
        }
        if masks:
            sample["mask"] = (rng.random((5, 4)) > 0.5).astype(np.uint8)
        out.append(sample)
    return out


def _mem_root() -> str:
    return f"memory://shards-{uuid.uuid4().hex}"


def _assert_same(read: list[dict], written: list[dict]) -> None:
    assert [s["key"] for s in read] == [s["key"] for s in written]
    for r, w in zip(read, written, strict=True):
        assert r["label"] == w["label"]
        np.testing.assert_array_equal(r["image"], w["image"])
        np.testing.assert_array_equal(r["mask"], w["mask"])


@pytest.mark.parametrize("where", ["memory", "local", "file-url"])
def test_round_trip(where: str, tmp_path: Path) -> None:
    root = {"memory": _mem_root(), "local": str(tmp_path), "file-url": f"file://{tmp_path}"}[where]
    train, test = _samples("train", 11), _samples("test", 2)
    m = write_dataset(root, {"train": train, "test": test}, dataset="toy", num_classes=4,
                      shard_size=4)
    assert len(m.shards_of("train")) == 3 and m.has_mask
    _assert_same(list(iter_samples(root, "train", verify=True)), train)
    _assert_same(list(iter_samples(root, "test")), test)
    shuffled = list(iter_samples(root, "train", shuffle_shards=True, seed=3))
    assert sorted(s["key"] for s in shuffled) == [s["key"] for s in train]


def test_points_round_trip() -> None:
    root = _mem_root()
    clouds = [
        {"key": f"p{i}", "points": np.full((8, 3), i, np.float32), "label": i % 2} for i in range(3)
    ]
    write_dataset(root, {"train": clouds}, dataset="pts", num_classes=2)
    got = list(iter_samples(root, "train"))
    assert read_manifest(root).modality == "points"
    for r, w in zip(got, clouds, strict=True):
        np.testing.assert_array_equal(r["points"], w["points"])


def test_shards_are_reproducible() -> None:
    a, b = _mem_root(), _mem_root()
    for root in (a, b):
        write_dataset(root, {"train": _samples("train", 5)}, dataset="t", num_classes=4)
    assert [s.sha256 for s in read_manifest(a).shards] == [s.sha256 for s in read_manifest(b).shards]


def test_write_rejects_mixed_shapes_and_labels() -> None:
    samples = _samples("train", 2, masks=False)
    samples[1]["image"] = np.zeros((3, 6, 4), np.uint8)
    with pytest.raises(ValueError, match="one shape and dtype"):
        write_dataset(_mem_root(), {"train": samples}, dataset="t", num_classes=4)
    with pytest.raises(ValueError, match=r"outside \[0, 2\)"):
        write_dataset(_mem_root(), {"train": _samples("train", 9)}, dataset="t", num_classes=2)


def test_dataloader_more_workers_than_shards(tmp_path: Path) -> None:
    torch = pytest.importorskip("torch")
    samples = _samples("train", 6)
    write_dataset(str(tmp_path), {"train": samples}, dataset="t", num_classes=4, shard_size=100)
    loader = torch.utils.data.DataLoader(
        ShardDataset(str(tmp_path), "train"), batch_size=None, num_workers=2
    )
    keys = [s["key"] for s in loader]
    assert sorted(keys) == [s["key"] for s in samples]  # each sample exactly once


# ---- bad shards and samples -------------------------------------------------------------


def _raw_shard(root: str, entries: list[dict], *, num_samples: int | None = None) -> str:
    """Write one shard of raw tar entries plus a manifest (3 classes, (3, 5, 4) images)."""
    fs, path = resolve(root)
    fs.makedirs(path, exist_ok=True)
    buf = io.BytesIO()
    with wds.TarWriter(buf, encoder=False) as writer:
        for entry in entries:
            writer.write(entry)
    data = buf.getvalue()
    fs.pipe_file(f"{path}/train-000000.tar", data)
    import hashlib

    info = ShardInfo(split="train", shard="train-000000.tar", url=f"{root}/train-000000.tar",
                     num_samples=len(entries) if num_samples is None else num_samples,
                     num_bytes=len(data), sha256=hashlib.sha256(data).hexdigest())
    write_manifest(Manifest(root_url=root, dataset="bad", modality="image", input_shape=(3, 5, 4),
                            dtype="uint8", num_classes=3, class_names=(), has_mask=True,
                            shards=(info,)))
    return f"{root}/train-000000.tar"


def _good(i: int) -> dict:
    sample = _samples("train", i + 1)[i]
    sample["label"] %= 3
    return encode_sample(sample)


def _bad_cases() -> dict[str, tuple[dict, str]]:
    npy = io.BytesIO()
    np.save(npy, np.zeros((3, 5, 4), np.float32))
    wrong_shape = encode_sample({"key": "train-0001", "label": 0,
                                 "image": np.zeros((3, 6, 4), np.uint8)})
    missing = {k: v for k, v in _good(1).items() if k != "cls"}
    return {
        "missing-label": (missing, "missing label"),
        "wrong-shape": (wrong_shape, r"expected \(3, 5, 4\)"),
        "wrong-dtype": ({"__key__": "train-0001", "cls": b"0", "npy": npy.getvalue()},
                        "expected uint8"),
        "label-range": ({**_good(1), "cls": b"3"}, r"outside the classes \[0, 3\)"),
        "pickle": ({**_good(1), "pkl": b"\x80\x04K\x01."}, "pickle-type"),
    }


@pytest.mark.parametrize("case", list(_bad_cases()))
def test_bad_sample_raise_and_skip(case: str) -> None:
    entry, message = _bad_cases()[case]
    entry = {**entry, "__key__": "train-0001"}
    root = _mem_root()
    url = _raw_shard(root, [_good(0), entry, _good(2)])
    with pytest.raises(SampleError, match=message) as info:
        list(iter_samples(root, "train"))
    assert url in str(info.value) and "train-0001" in str(info.value)
    report = SkipReport()
    got = list(iter_samples(root, "train", on_error="skip", report=report))
    assert [s["key"] for s in got] == ["train-0000", "train-0002"]
    assert report.samples == 1 and report.shards == 0
    assert (report.items[0].url, report.items[0].key) == (url, "train-0001")
    assert "skipped 1 sample" in report.summary()


def _tamper(root: str, change) -> str:
    fs, path = resolve(f"{root}/train-000000.tar")
    fs.pipe_file(path, change(fs.cat_file(path)))
    return f"{root}/train-000000.tar"


@pytest.mark.parametrize("damage", ["truncated", "corrupt-header", "not-a-tar", "missing"])
def test_bad_shard_raise_and_skip(damage: str) -> None:
    root = _mem_root()
    _raw_shard(root, [_good(i) for i in range(6)])
    fs, path = resolve(f"{root}/train-000000.tar")
    data = fs.cat_file(path)
    if damage == "truncated":
        url = _tamper(root, lambda d: d[: len(d) // 2 + 100])
    elif damage == "corrupt-header":  # garbage over the 4th member's header
        url = _tamper(root, lambda d: d[:3 * 1024] + b"\x13" * 512 + d[3 * 1024 + 512:])
    elif damage == "not-a-tar":
        url = _tamper(root, lambda d: b"this is not a tar file" * 100)
    else:
        url = f"{root}/train-000000.tar"
        fs.rm(path)
    assert damage == "missing" or fs.cat_file(path) != data
    # the default (verify, issue 24) names the shard by its size or sha256; unverified, the
    # tar reader itself must still name it
    with pytest.raises(ValueError, match=r"shard '" + url):
        list(iter_samples(root, "train"))
    with pytest.raises(ShardError, match=r"shard '" + url):
        list(iter_samples(root, "train", verify=False))
    report = SkipReport()
    got = list(iter_samples(root, "train", on_error="skip", report=report, verify=False))
    assert len(got) < 6 and report.shards == 1 and report.items[0].url == url


def test_checksum_mismatch_with_verify() -> None:
    root = _mem_root()
    _raw_shard(root, [_good(i) for i in range(3)])
    url = _tamper(root, lambda d: d[:700] + bytes([d[700] ^ 1]) + d[701:])
    with pytest.raises(ChecksumError, match=r"train-000000\.tar.*sha256"):
        list(iter_samples(root, "train", verify=True))
    report = SkipReport()
    assert list(iter_samples(root, "train", verify=True, on_error="skip", report=report)) == []
    assert report.shards == 1 and report.items[0].url == url


def test_on_error_is_validated() -> None:
    with pytest.raises(ValueError, match=r"on_error='ignore'; allowed: \['raise', 'skip'\]"):
        list(iter_samples(_mem_root(), "train", on_error="ignore"))  # type: ignore[arg-type]


# ---- column shards and the pyarrow bridge ------------------------------------------------


@pytest.mark.parametrize("dtype", [np.float16, np.float32])
def test_columns_round_trip(dtype) -> None:
    root = _mem_root()
    rel = np.random.default_rng(0).normal(size=(3, 1, 5, 4)).astype(dtype)
    keys = ["train-0000", "train-0001", "train-0002"]
    url = write_columns(root, "train", 0, keys, {"relevance": rel})
    assert url == f"{root}/relevance/train-000000.parquet"
    write_columns(root, "train", 1, ["train-0003"], {"relevance": rel[:1]})
    got = read_columns(root, "train", 0)
    assert list(got) == keys and got["train-0001"].dtype == dtype
    np.testing.assert_array_equal(got["train-0002"], rel[2])
    assert len(read_split_columns(root, "train")) == 4
    with pytest.raises(ValueError, match="expected \\(3, ...\\)"):
        write_columns(root, "train", 0, keys, {"relevance": rel[:2]})
    with pytest.raises(ValueError, match="no column 'score'"):
        read_columns(root, "train", 0, column="score")


def test_arrow_filesystem(tmp_path: Path) -> None:
    import pyarrow.fs as pafs

    fs, path = arrow_filesystem(str(tmp_path))
    assert isinstance(fs, pafs.LocalFileSystem) and path == str(tmp_path)
    root = _mem_root()
    fsspec.filesystem("memory").pipe_file(root.split("://")[1] + "/x.bin", b"abc")
    fs, path = arrow_filesystem(root)
    with fs.open_input_stream(path + "/x.bin") as f:
        assert f.read() == b"abc"


def test_cloud_protocol_names_the_extra() -> None:
    try:
        import s3fs  # noqa: F401

        pytest.skip("s3fs installed")
    except ImportError:
        pass
    with pytest.raises(ImportError, match=r"reldrop\[s3\]"):
        resolve("s3://bucket/data")
