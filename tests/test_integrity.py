"""Integrity on every read (issue 24): ``evaluate`` and ``explain`` verify each shard's size and
sha256 as training does, and refuse a checkpoint that does not fit the data, in one line."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from reldrop.checkpoint import ModelSpec, save_checkpoint
from reldrop.jobs.cli import main
from reldrop.pipeline.data.fs import resolve
from reldrop.pipeline.data.shards import write_dataset

SIDE = 12


def _samples(n: int, seed: int, channels: int = 1):
    rng = np.random.default_rng(seed)
    for i in range(n):
        yield {"key": f"s{seed}-{i:04d}", "label": i % 3,
               "image": rng.integers(0, 256, (channels, SIDE, SIDE), dtype=np.uint8)}


@pytest.fixture
def data(tmp_path) -> str:
    root = str(tmp_path / "data")
    write_dataset(root, {"test": _samples(8, 0)}, dataset="toy", num_classes=3, shard_size=4)
    return root


def _checkpoint(tmp_path, *, channels: int = 1, classes: int = 3, name: str = "small-cnn"):
    torch.manual_seed(0)
    spec = ModelSpec(name=name, in_channels=channels, num_classes=classes)
    return str(save_checkpoint(tmp_path / f"m{channels}{classes}.safetensors", spec.build(), spec))


def _one_line(capsys) -> str:
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1, lines
    return lines[0]


def test_evaluate_refuses_a_same_size_tampered_shard(tmp_path, data, capsys) -> None:
    fs, path = resolve(f"{data}/test-000001.tar")
    raw = bytearray(fs.cat_file(path))
    label_at = raw.index(b"s0-0004.cls") + 512  # the first sample's label, inside its member
    raw[label_at] = ord("0") if raw[label_at] != ord("0") else ord("1")
    fs.pipe_file(path, bytes(raw))  # same size, other bytes: a label changed in place
    checkpoint = _checkpoint(tmp_path)
    for job in (["evaluate", "--out", str(tmp_path / "eval"), "--no-plots"], ["explain"]):
        rc = main([job[0], "--checkpoint", checkpoint, "--data", f"{data}#test", *job[1:]])
        line = _one_line(capsys)
        assert rc == 2 and "test-000001.tar" in line and "sha256" in line, line


@pytest.mark.parametrize(("channels", "classes", "problem"), [
    (3, 3, "takes 3 input channel(s)"), (1, 5, "has 5 classes"),
])
def test_checkpoint_that_does_not_fit_the_data_is_one_line(tmp_path, data, capsys, channels,
                                                           classes, problem) -> None:
    checkpoint = _checkpoint(tmp_path, channels=channels, classes=classes)
    rc = main(["evaluate", "--checkpoint", checkpoint, "--data", data, "--out",
               str(tmp_path / "eval"), "--no-plots"])
    line = _one_line(capsys)
    assert rc == 2 and problem in line and len(line) < 400, line


IDENTITY = '''
from torch import nn
def make(*, in_channels, num_classes):
    return nn.Identity()
'''


def test_a_model_that_returns_no_logits_is_one_line(tmp_path, data, capsys, monkeypatch) -> None:
    (tmp_path / "identity_model.py").write_text(IDENTITY)
    monkeypatch.syspath_prepend(str(tmp_path))
    spec = ModelSpec(name="identity_model:make", in_channels=1, num_classes=3)
    checkpoint = save_checkpoint(tmp_path / "id.safetensors", torch.nn.Identity(), spec)
    rc = main(["evaluate", "--checkpoint", str(checkpoint), "--data", data, "--out",
               str(tmp_path / "eval"), "--model", "identity_model:make"])
    line = _one_line(capsys)
    assert rc == 2 and "expected N x 3 logits" in line, line


@pytest.mark.parametrize(("model", "problem"), [
    ("os:getcwd", "factory(in_channels=1, num_classes=3) raised TypeError"),
    ("torchvision:resnet18", None),  # builds and fits: passes the check (no training here)
])
def test_model_is_checked_before_ray_starts(tmp_path, data, capsys, monkeypatch, model,
                                            problem) -> None:
    """``--model os:getcwd`` used to start Ray and fail after 134 s with 72 lines."""

    from reldrop.pipeline.data.stream import plan_split
    from reldrop.pipeline.preflight import check_training_run
    from reldrop.pipeline.training import driver

    if problem is None:
        plan = plan_split(f"{data}#test", "train", on_error="raise")
        spec = driver._spec(driver.TrainConfig(model=model, train=f"{data}#test"), plan)
        check_training_run(spec, plan.manifest, [f"{data}#test"])
        return
    started: list[object] = []  # (another test may have left a shared Ray running)
    monkeypatch.setattr(driver, "init_ray", started.append)
    rc = main(["train", "--model", model, "--train", f"{data}#test", "--out",
               str(tmp_path / "run"), "--num-cpus", "1"])
    line = _one_line(capsys)
    assert rc == 2 and problem in line, line
    assert not started


def test_test_set_of_another_kind_is_refused_before_ray(tmp_path, data, capsys) -> None:
    other = str(tmp_path / "other")
    write_dataset(other, {"test": _samples(4, 1, channels=3)}, dataset="rgb", num_classes=3)
    rc = main(["train", "--train", f"{data}#test", "--test", f"{other}#test", "--out",
               str(tmp_path / "run")])
    line = _one_line(capsys)
    assert rc == 2 and "use data of one kind" in line, line
