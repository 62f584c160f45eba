"""``reldrop make-shards``: CLI into tmp_path, manifest contents, config file, errors."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from reldrop.jobs import cli
from reldrop.jobs.make_shards import parse_args
from reldrop.pipeline.data.datasets import DatasetSource, build
from reldrop.pipeline.data.fs import absolute_url, resolve
from reldrop.pipeline.data.manifest import read_manifest, verify_dataset
from reldrop.pipeline.data.read import iter_samples


def test_decoy_mnist(tmp_path: Path, capsys) -> None:
    out = str(tmp_path / "decoy")
    argv = ["make-shards", "--dataset", "decoy-mnist", "--out", out, "--limit", "50",
            "--shard-size", "16", "--seed", "3", "--no-progress"]
    assert cli.main(argv) == 0
    m = verify_dataset(out)
    assert m.dataset == "decoy-mnist" and m.input_shape == (1, 28, 28) and m.has_mask
    assert m.splits == ("test", "test-clean", "test-ood", "train") and m.num_classes == 10
    assert [s.num_samples for s in m.shards_of("train")] == [16, 16, 8]
    assert [s.shard for s in m.shards_of("train")][-1] == "train-000002.tar"
    assert m.num_samples("test") == m.num_samples("test-clean") == 10
    assert len(list(iter_samples(out, "test-clean"))) == 10
    printed = capsys.readouterr().out
    assert "samples/s" in printed and "test-clean" in printed
    assert cli.main(argv) == 2
    assert "already holds a dataset" in capsys.readouterr().err
    assert cli.main([*argv, "--overwrite", "--shard-size", "100"]) == 0
    assert len(read_manifest(out).shards_of("train")) == 1
    assert not (tmp_path / "decoy" / "train-000002.tar").exists()


def test_points_with_config_file(tmp_path: Path) -> None:
    config = tmp_path / "c.yaml"
    config.write_text("dataset: points\nlimit: 20\nnum_points: 32\n")
    args = parse_args(["--config", str(config), "--out", str(tmp_path / "pts")])
    assert args.dataset == "points" and args.limit == 20
    argv = ["make-shards", "--config", str(config), "--out", str(tmp_path / "pts"), "--no-progress"]
    assert cli.main(argv) == 0
    m = read_manifest(str(tmp_path / "pts"))
    assert m.modality == "points" and m.input_shape == (32, 3) and m.dtype == "float32"
    assert m.class_names == ("sphere", "cube", "cylinder", "cone", "torus")


def test_unknown_dataset(tmp_path: Path, capsys) -> None:
    assert cli.main(["make-shards", "--dataset", "nope", "--out", str(tmp_path)]) == 2
    assert "unknown dataset 'nope'; available" in capsys.readouterr().err


# --- staged, atomic builds ---------------------------------------------------------------------


def _npz(path: Path, n: int = 12, seed: int = 0) -> str:
    rng = np.random.default_rng(seed)
    np.savez(path, x=rng.integers(0, 256, (n, 6, 6), dtype=np.uint8),
             y=np.arange(n, dtype=np.int64) % 3)
    return f"npz:{path}"


def _snapshot(root: str) -> dict[str, bytes]:
    fs, path = resolve(root)
    return {p.rsplit("/", 1)[-1]: fs.cat_file(p) for p in fs.find(path)}


def _failing_source(monkeypatch: pytest.MonkeyPatch, after: int) -> None:
    """Make every build fail with an OSError after ``after`` samples were written."""

    def samples() -> Iterator[dict]:
        for i in range(after):
            yield {"key": f"k{i}", "image": np.zeros((1, 6, 6), np.uint8), "label": 0}
        raise OSError(28, "No space left on device")

    source = DatasetSource(name="boom", num_classes=1, class_names=("a",),
                           splits={"train": samples})
    monkeypatch.setattr(build, "get_source", lambda name, options: source)


@pytest.mark.parametrize("root_of", [
    lambda tmp: str(tmp / "data" / "ds"),
    lambda tmp: f"file://{tmp}/data/ds",
    lambda tmp: f"memory://{tmp.name}-{uuid.uuid4().hex}/ds",
])
def test_failed_overwrite_keeps_the_old_dataset(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, root_of
) -> None:
    root = root_of(tmp_path)
    build.build_dataset(_npz(tmp_path / "a.npz"), root, shard_size=4, progress=False)
    before = _snapshot(root)
    # a typo in the source path: nothing may be deleted
    with pytest.raises(ValueError, match="does not exist"):
        build.build_dataset("npz:/no/such.npz", root, overwrite=True, progress=False)
    assert _snapshot(root) == before
    # an error after some shards were written (a full disk, a bad sample)
    _failing_source(monkeypatch, after=9)
    with pytest.raises(OSError, match="No space"):
        build.build_dataset("boom", root, shard_size=4, overwrite=True, progress=False)
    monkeypatch.undo()
    assert _snapshot(root) == before
    assert verify_dataset(root).num_samples("train") == 10
    fs, path = resolve(root)
    parent = path.rstrip("/").rsplit("/", 1)[0]
    assert [p.rsplit("/", 1)[-1] for p in fs.ls(parent, detail=False)] == ["ds"]
    # a successful overwrite replaces it whole
    build.build_dataset(_npz(tmp_path / "b.npz", n=30, seed=1), root, shard_size=100,
                        overwrite=True, progress=False)
    m = verify_dataset(root)
    assert m.num_samples("train") == 24 and len(m.shards_of("train")) == 1
    assert sorted(_snapshot(root)) == ["manifest.parquet", "test-000000.tar", "train-000000.tar"]
    assert all(info.url.startswith(absolute_url(root)) for info in m.shards)
    assert [p.rsplit("/", 1)[-1] for p in fs.ls(parent, detail=False)] == ["ds"]


def test_failed_first_build_leaves_no_target(tmp_path: Path, monkeypatch) -> None:
    _failing_source(monkeypatch, after=5)
    assert cli.main(["make-shards", "--dataset", "boom", "--out", str(tmp_path / "ds"),
                     "--no-progress"]) == 2
    assert list(tmp_path.iterdir()) == []
