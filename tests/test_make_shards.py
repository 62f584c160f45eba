"""``reldrop make-shards``: CLI into tmp_path, manifest contents, config file, errors."""

from __future__ import annotations

from pathlib import Path

import pytest

from reldrop.jobs import cli
from reldrop.jobs.make_shards import parse_args
from reldrop.pipeline.data.manifest import read_manifest, verify_dataset
from reldrop.pipeline.data.shards import iter_samples


def test_decoy_mnist(tmp_path: Path, capsys) -> None:
    out = str(tmp_path / "decoy")
    argv = ["make-shards", "--dataset", "decoy-mnist", "--out", out, "--limit", "50",
            "--shard-size", "16", "--seed", "3", "--no-progress"]
    assert cli.main(argv) == 0
    m = verify_dataset(out)
    assert m.dataset == "decoy-mnist" and m.input_shape == (1, 28, 28) and m.has_mask
    assert m.splits == ("test", "test-clean", "test-id", "train") and m.num_classes == 10
    assert [s.num_samples for s in m.shards_of("train")] == [16, 16, 8]
    assert [s.shard for s in m.shards_of("train")][-1] == "train-000002.tar"
    assert m.num_samples("test") == m.num_samples("test-clean") == 10
    assert len(list(iter_samples(out, "test-clean"))) == 10
    printed = capsys.readouterr().out
    assert "samples/s" in printed and "test-clean" in printed
    with pytest.raises(FileExistsError, match="--overwrite"):
        cli.main(argv)
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


def test_unknown_dataset(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="available"):
        cli.main(["make-shards", "--dataset", "nope", "--out", str(tmp_path)])
