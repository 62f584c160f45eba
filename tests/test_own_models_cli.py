"""``reldrop train --model package.module:factory`` and ``--model torchvision:NAME`` through the
real command line: train, checkpoint, evaluate (the checkpoint rebuilds the model by name)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = [pytest.mark.ray, pytest.mark.slow]

FACTORY = '''
from torch import nn


class Tiny(nn.Module):
    def __init__(self, in_channels, num_classes):
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(in_channels, 8, 3, padding=1), nn.BatchNorm2d(8),
                                  nn.ReLU(), nn.AdaptiveAvgPool2d(2), nn.Flatten())
        self.fc = nn.Linear(32, num_classes)

    def forward(self, x):
        return self.fc(self.body(x))


def make(*, in_channels, num_classes):
    return Tiny(in_channels, num_classes)
'''

SCRIPT = '''
import json, sys
from reldrop.jobs.cli import main
data, out = sys.argv[1], sys.argv[2]
assert main(["make-shards", "--dataset", "digits", "--out", data, "--limit", "240",
             "--shard-size", "60", "--no-progress"]) == 0
for tag, model in (("own", "usermodels:make"), ("tv", "torchvision:resnet18")):
    run = f"{out}/{tag}"
    assert main(["train", "--train", f"{data}#train", "--test", f"{data}#test", "--model", model,
                 "--mode", "async", "--epochs", "1", "--batch-size", "32", "--num-cpus", "2",
                 "--out", run]) == 0
    # an import-path model in a checkpoint loads only when named again (issue 24)
    assert main(["evaluate", "--checkpoint", f"{run}/model.safetensors", "--data",
                 f"{data}#test", "--out", f"{run}/eval", "--no-plots", "--model", model]) == 0
'''


def test_train_and_evaluate_user_and_torchvision_models(tmp_path: Path) -> None:
    (tmp_path / "pkg").mkdir()
    (tmp_path / "pkg" / "usermodels.py").write_text(FACTORY)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(
        [str(tmp_path / "pkg"), *filter(None, [os.environ.get("PYTHONPATH")])])}
    done = subprocess.run([sys.executable, "-c", SCRIPT, str(tmp_path / "data"),
                           str(tmp_path / "runs")], cwd=tmp_path, env=env, capture_output=True,
                          text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-4000:]
    for tag, model in (("own", "usermodels:make"), ("tv", "torchvision:resnet18")):
        report = json.loads((tmp_path / "runs" / tag / "report.json").read_text())
        assert report["model_spec"]["name"] == model
        assert report["counts"]["trained"] > 0 and min(report["versions_seen"]) >= 0  # explained
        evaluation = json.loads((tmp_path / "runs" / tag / "eval" / "evaluation.json").read_text())
        assert 0.0 <= evaluation["datasets"]["in_distribution"]["accuracy"] <= 1.0
