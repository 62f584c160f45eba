"""manifest.parquet: round trip, planning by split, relocation, checksum verification."""

from __future__ import annotations

import shutil
import uuid

import fsspec
import numpy as np
import pytest

from reldrop.pipeline.data.manifest import (
    ChecksumError,
    Manifest,
    ShardInfo,
    has_manifest,
    read_manifest,
    shard_name,
    shard_urls,
    verify_dataset,
)
from reldrop.pipeline.data.shards import write_dataset


def _samples(split: str, n: int):
    rng = np.random.default_rng(len(split))
    for i in range(n):
        image = rng.integers(0, 256, (1, 4, 4), dtype=np.uint8)
        yield {"key": f"{split}-{i:04d}", "image": image, "label": i % 3}


def _build(root: str) -> Manifest:
    return write_dataset(
        root, {"train": _samples("train", 7), "test": _samples("test", 3)},
        dataset="toy", num_classes=3, class_names=("a", "b", "c"), shard_size=3,
    )


def test_shard_name() -> None:
    assert shard_name("train", 12) == "train-000012.tar"
    with pytest.raises(ValueError, match="split"):
        shard_name("a/b", 0)
    with pytest.raises(ValueError, match="index"):
        shard_name("train", 1_000_000)


def test_round_trip_and_planning(tmp_path) -> None:
    root = str(tmp_path / "ds")
    assert not has_manifest(root)
    written = _build(root)
    assert has_manifest(root)
    m = read_manifest(root)
    assert m.shards == written.shards
    assert (m.dataset, m.modality, m.input_shape, m.dtype) == ("toy", "image", (1, 4, 4), "uint8")
    assert m.num_classes == 3 and m.class_names == ("a", "b", "c") and not m.has_mask
    assert m.splits == ("test", "train")
    assert [s.shard for s in m.shards_of("train")] == [f"train-00000{i}.tar" for i in range(3)]
    assert [s.num_samples for s in m.shards_of("train")] == [3, 3, 1]
    assert m.num_samples("train") == 7 and m.num_samples("test") == 3
    assert shard_urls(root, "test") == [f"{root}/test-000000.tar"]
    with pytest.raises(ValueError, match=r"split 'val'.*known splits: \['test', 'train'\]"):
        m.shards_of("val")
    with pytest.raises(FileNotFoundError, match="no manifest"):
        read_manifest(str(tmp_path / "missing"))


def test_relocated_dataset_resolves_against_new_root(tmp_path) -> None:
    _build(str(tmp_path / "a"))
    shutil.move(tmp_path / "a", tmp_path / "b")
    urls = shard_urls(str(tmp_path / "b"), "train")
    assert all(u.startswith(str(tmp_path / "b")) for u in urls)
    verify_dataset(str(tmp_path / "b"))


def test_checksum_mismatch_names_the_shard() -> None:
    root = f"memory://manifest-{uuid.uuid4().hex}"
    _build(root)
    verify_dataset(root)
    fs = fsspec.filesystem("memory")
    path = root.split("://")[1] + "/train-000001.tar"
    data = bytearray(fs.cat_file(path))
    data[600] ^= 0xFF  # same size, different bytes
    fs.pipe_file(path, bytes(data))
    with pytest.raises(ChecksumError, match=r"train-000001\.tar.*sha256"):
        verify_dataset(root)
    fs.pipe_file(path, bytes(data[:-10]))
    with pytest.raises(ChecksumError, match=r"train-000001\.tar.*bytes, manifest says"):
        verify_dataset(root, splits=("train",))
    verify_dataset(root, splits=("test",))


def test_validation() -> None:
    with pytest.raises(ValueError, match="sha256"):
        ShardInfo(split="t", shard="t-000000.tar", url="x", num_samples=1, num_bytes=1, sha256="0")
    with pytest.raises(ValueError, match="modality"):
        Manifest(root_url="x", dataset="d", modality="audio", input_shape=(1,), dtype="uint8",  # type: ignore[arg-type]
                 num_classes=2, class_names=(), has_mask=False, shards=())


@pytest.mark.parametrize("cut", [0, 10, -10])
def test_truncated_manifest_is_one_clear_error(tmp_path, cut: int) -> None:
    root = str(tmp_path / "ds")
    _build(root)
    path = tmp_path / "ds" / "manifest.parquet"
    data = path.read_bytes()
    path.write_bytes(data[:cut] if cut >= 0 else data[:cut])
    with pytest.raises(ValueError, match=r"manifest\.parquet' is not a valid manifest "
                       r"\(truncated\?\).*make-shards --overwrite"):
        read_manifest(root)


def test_manifest_is_written_by_rename_and_leaves_no_temporary(tmp_path, monkeypatch) -> None:
    """A failing write (full disk) keeps the previous manifest whole and leaves no temp file."""
    root = str(tmp_path / "ds")
    _build(root)
    before = (tmp_path / "ds" / "manifest.parquet").read_bytes()
    original = fsspec.implementations.local.LocalFileSystem.pipe_file

    def full_disk(self, path, value, **kwargs):
        original(self, path, value[: len(value) // 2], **kwargs)
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(fsspec.implementations.local.LocalFileSystem, "pipe_file", full_disk)
    with pytest.raises(OSError, match="No space"):
        _build(root)
    monkeypatch.undo()
    assert (tmp_path / "ds" / "manifest.parquet").read_bytes() == before
    assert not [p for p in (tmp_path / "ds").iterdir() if ".tmp-" in p.name]
    assert read_manifest(root).num_samples("train") == 7


@pytest.mark.parametrize("name", [
    "%2e%2e/d/test-000000.tar", "%2E%2E%2Ftest-000000.tar", "..%2ftest-000000.tar",
    "test-000000.tar%00.tar", "..\\test-000000.tar", "a\\..\\test-000000.tar",
    "\uff0e\uff0e/test-000000.tar", "./test-000000.tar", "d//test-000000.tar",
    ".hidden.tar", "test-000000.tar\n", "test..tar",
])
def test_disguised_parent_steps_in_shard_names_are_refused(tmp_path, name) -> None:
    """Issue 24: an HTTP root read ``%2e%2e/d/test-000000.tar`` outside the dataset; any name
    but a plain ``<split>-NNNNNN.tar`` segment is refused for every protocol, not decoded."""
    import pyarrow.parquet as pq

    root = str(tmp_path / "ds")
    _build(root)
    table = pq.read_table(f"{root}/manifest.parquet")
    shards = table.column("shard").to_pylist()
    shards[0] = name
    table = table.set_column(table.column_names.index("shard"), "shard",
                             __import__("pyarrow").array(shards))
    pq.write_table(table, f"{root}/manifest.parquet")
    with pytest.raises(ValueError, match="not a plain '<split>-NNNNNN.tar' name"):
        read_manifest(root)
