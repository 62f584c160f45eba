"""``reldrop evaluate`` end to end on a tiny untrained checkpoint and tiny data."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from reldrop.checkpoint import ModelSpec, save_checkpoint
from reldrop.jobs import evaluate as job
from reldrop.normalization import Normalization
from reldrop.pipeline.evaluation.evaluate import evaluate_checkpoint, sample_batches

SIDE = 12


@pytest.fixture(autouse=True)
def _one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _samples(n: int, seed: int, mask: bool = True) -> list[dict]:
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        m = np.zeros((SIDE, SIDE), dtype=np.uint8)
        m[3:9, 3:9] = 1
        sample = {"key": f"s{seed}-{i:04d}", "label": int(i % 3),
                  "image": rng.integers(0, 256, (1, SIDE, SIDE), dtype=np.uint8)}
        if mask:
            sample["mask"] = m
        out.append(sample)
    return out


@pytest.fixture
def checkpoint(tmp_path):
    torch.manual_seed(0)
    spec = ModelSpec(name="small-cnn", in_channels=1, num_classes=3,
                     normalization=Normalization(mean=(0.4,), std=(0.3,)))
    return save_checkpoint(tmp_path / "model.safetensors", spec.build(), spec, {"epoch": 0})


def _check_report(report: dict, out, ood: bool) -> None:
    on_disk = json.loads((out / "evaluation.json").read_text())
    assert on_disk == report
    names = ["in_distribution"] + (["out_of_distribution"] if ood else [])
    assert list(report["datasets"]) == names
    for name in names:
        metrics = report["datasets"][name]
        assert {"n", "accuracy", "occlusion", "feature_utilization", "rms_calibration_error",
                "data", "seconds"} <= set(metrics)
        assert len(metrics["occlusion"]["relevance_order"]) == 21
        assert (out / f"relevance_{name}.png").is_file()
    for png in ("occlusion_curves.png", "metrics.png"):
        assert (out / png).is_file()
    assert set(report["plots"]) == {p.name for p in out.glob("*.png")}


def test_evaluate_checkpoint_on_in_memory_samples(tmp_path, checkpoint) -> None:
    out = tmp_path / "eval"
    report = evaluate_checkpoint(checkpoint, _samples(20, 0), _samples(9, 1, mask=False),
                                 out_dir=out, batch_size=8, limit=12)
    _check_report(report, out, ood=True)
    ind, ood = report["datasets"]["in_distribution"], report["datasets"]["out_of_distribution"]
    assert ind["n"] == 12 and ood["n"] == 9
    assert ind["feature_utilization"]["mask_share_positive"] is not None
    assert ood["feature_utilization"]["mask_share_positive"] is None
    assert report["model"]["name"] == "small-cnn" and report["checkpoint_extra"] == {"epoch": 0}


def test_sample_batches() -> None:
    norm = Normalization(mean=(0.5,), std=(0.5,))
    batches = list(sample_batches(_samples(5, 0), norm, batch_size=2))
    assert [b[0].shape[0] for b in batches] == [2, 2, 1]
    x, y, m = batches[0]
    assert x.dtype == torch.float32 and x.min() >= -1 and x.max() <= 1
    assert y.tolist() == [0, 1] and m is not None and m.dtype == torch.bool
    mixed = _samples(2, 0) + _samples(1, 1, mask=False)
    assert list(sample_batches(mixed, norm, batch_size=3))[0][2] is None
    with pytest.raises(ValueError, match="batch_size"):
        list(sample_batches([], norm, batch_size=0))


def test_evaluate_job_on_shards(tmp_path, checkpoint) -> None:
    shards = pytest.importorskip("reldrop.pipeline.data.shards")
    root = str(tmp_path / "data")
    shards.write_dataset(root, {"test": _samples(10, 0), "shifted": _samples(6, 1)},
                         dataset="toy", num_classes=3, shard_size=4)
    out = tmp_path / "eval"
    args = job.parse_args(["--checkpoint", str(checkpoint), "--data", root,
                           "--ood-data", f"{root}#shifted", "--out", str(out),
                           "--batch-size", "4"])
    assert job.main(args) == 0
    report = json.loads((out / "evaluation.json").read_text())
    _check_report(report, out, ood=True)
    assert report["datasets"]["in_distribution"]["n"] == 10
    assert report["datasets"]["in_distribution"]["data"].endswith("#test")
    assert report["datasets"]["out_of_distribution"]["n"] == 6


def test_evaluate_job_arguments(tmp_path) -> None:
    with pytest.raises(SystemExit):
        job.parse_args(["--data", "x"])
    config = tmp_path / "eval.yaml"
    config.write_text("checkpoint: c.safetensors\ndata: d\nlimit: 5\n")
    args = job.parse_args(["--config", str(config), "--limit", "7"])
    assert (args.checkpoint, args.data, args.limit, args.ood_test) == ("c.safetensors", "d", 7,
                                                                       None)
