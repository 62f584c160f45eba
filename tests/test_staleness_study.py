"""The in-process staleness study: the lagged explainer replica and ``python -m studies.staleness``."""

from __future__ import annotations

import json
from dataclasses import replace

import pytest
import torch
from torch import nn

from studies.lag import WeightLag, delay_for_bound
from studies.staleness import main, parse_args


def _step(model: nn.Module, step: int) -> None:
    with torch.no_grad():
        model.weight.fill_(float(step + 1))  # weights after `step + 1` updates


def test_replica_holds_the_version_published_delay_steps_before() -> None:
    model = nn.Linear(1, 1, bias=False)
    _step(model, -1)  # version 0: weight 0
    lag = WeightLag(model, delay=3, publish_every=2)
    seen = []
    for step in range(10):
        seen.append(float(lag.at(step).weight.detach()))
        _step(model, step)
    # step t explains with version floor((t - 3) / 2) * 2 (weight = version), 0 before step 3
    assert seen == [0, 0, 0, 0, 0, 2, 2, 4, 4, 6]
    assert lag.staleness == [0, 1, 2, 3, 4, 3, 4, 3, 4, 3]
    assert max(lag.staleness) == 3 + 2 - 1
    assert len(lag._versions) <= 3  # old versions are dropped
    assert lag.replica is not model and float(model.weight.detach()) == 10


def test_no_delay_every_step_is_the_live_model() -> None:
    model = nn.Linear(1, 1, bias=False)
    lag = WeightLag(model, delay=0, publish_every=1)
    for step in range(4):
        _step(model, step - 1)
        assert torch.equal(lag.at(step).weight, model.weight)
    assert lag.staleness == [0, 0, 0, 0]


def test_mask_iou() -> None:
    from reldrop.occlusion import OcclusionResult
    from studies.inprocess import mask_iou

    def result(dropped, applied):
        d = torch.tensor(dropped, dtype=torch.bool).view(len(dropped), 1, -1)
        return OcclusionResult(inputs=torch.zeros(1), dropped=d, applied=torch.tensor(applied),
                               fallback=torch.zeros(len(applied), dtype=torch.bool))

    a = result([[1, 1, 0, 0], [0, 0, 0, 0], [1, 0, 0, 0]], [True, True, False])
    b = result([[1, 0, 1, 0], [0, 0, 0, 0], [0, 1, 0, 0]], [True, True, True])
    assert mask_iou(a, b) == [1 / 3, 1.0]  # the third is not occluded in both


def test_delay_for_bound() -> None:
    assert delay_for_bound(8, 2) == 7
    assert delay_for_bound(1, 1) == 1
    assert delay_for_bound(3, 4) == 0
    with pytest.raises(ValueError, match="expected bound >= interval - 1"):
        delay_for_bound(1, 4)


def test_staleness_arguments() -> None:
    args = parse_args(["--data", "x"])
    assert args.method == "reldrop-pixel" and args.bounds == [1, 2, 4, 8, 16]
    assert args.params == {} and args.command == "python -m studies.staleness --data x"
    for bad in (["--method", "gradmask"], ["--bounds", "0,2"], ["--params", "[1]"],
                ["--search", "quick"]):
        with pytest.raises(SystemExit):
            parse_args(["--data", "x", *bad])
    with pytest.raises(SystemExit):
        parse_args([])  # needs --data


def test_staleness_study_end_to_end(tmp_path, capsys) -> None:
    from reldrop.pipeline.data.datasets import build_dataset

    root = str(tmp_path / "viv")
    build_dataset("viviano-synthetic", root, limit=100, progress=False)
    out = tmp_path / "study"
    readme = tmp_path / "results.md"
    readme.write_text("intro\n<!-- results:st -->\nold table\n<!-- /results:st -->\nrest\n")
    code = main(parse_args(["--data", root, "--bounds", "1,4", "--intervals", "1,4",
                            "--seeds", "2", "--epochs", "2", "--batch-size", "8", "--eval-limit", "8",
                            "--out", str(out),
                            "--table", f"{readme}#st"]))
    assert code == 0
    result = json.loads((out / "staleness.json").read_text())
    # bound 1 with interval 4 cannot hold and is left out
    assert list(result["runs"]) == ["none", "sync", "bound 1, every 1", "bound 4, every 1",
                                    "bound 4, every 4"]
    for name, runs in result["runs"].items():
        assert [r["seed"] for r in runs] == [0, 1]
        if name.startswith("bound"):
            bound = int(name.split()[1].rstrip(","))
            assert all(r["staleness_max"] == bound for r in runs)  # as stale as the bound allows
    summary = result["summary"]
    assert summary["sync"]["staleness_max"] == 0 and summary["sync"]["mask_iou"] == 1.0
    assert all(0 <= r["mask_iou"] <= 1 for name, runs in result["runs"].items()
               if name.startswith("bound") for r in runs)
    assert summary["bound 4, every 4"]["staleness_mean"] > summary["bound 1, every 1"]["staleness_mean"]
    for key in ("ood_accuracy", "relevance_auc"):
        gain, real = summary["sync"][key]["gain"], summary["sync"][key]["sync_gain_above_noise"]
        for name, row in summary.items():
            assert row[key]["retained"] == (row[key]["gain"] / gain if real and name != "none"
                                            else None)
        assert all(0 <= r[key] <= 1 for runs in result["runs"].values() for r in runs)
    assert "| bound 4, every 4 |" in (out / "staleness.md").read_text()
    assert "[staleness] sync: OOD acc." in capsys.readouterr().out
    text = readme.read_text()
    assert text.startswith("intro\n<!-- results:st -->\nRegenerate: `python -m studies.staleness --data ") and "old table" not in text
    assert "| bound 4, every 4 |" in text and text.endswith("<!-- /results:st -->\nrest\n")
    assert "CPUs" in text and "torch" in text


def test_retained_gain_only_where_sync_gains_above_noise() -> None:
    from studies.staleness import summarize_staleness

    def runs(values):
        return [{"val_accuracy": 1.0, "seconds": 1.0, "ood_accuracy": v, "relevance_auc": v}
                for v in values]

    clear = summarize_staleness({"none": runs([0.1, 0.12, 0.11]), "sync": runs([0.5, 0.52, 0.51]),
                                 "stale": runs([0.3, 0.32, 0.31])})
    assert clear["stale"]["ood_accuracy"]["retained"] == pytest.approx(0.5)
    assert clear["sync"]["ood_accuracy"]["retained"] == pytest.approx(1.0)
    noisy = summarize_staleness({"none": runs([0.0, 0.3, 0.1]), "sync": runs([0.05, 0.35, 0.2]),
                                 "stale": runs([0.3, 0.3, 0.3])})
    assert noisy["sync"]["ood_accuracy"]["gain"] > 0
    assert noisy["stale"]["ood_accuracy"]["retained"] is None  # sync's gain is within noise


def test_splice_needs_one_pair_of_markers(tmp_path) -> None:
    from studies.tables import splice_section

    path = tmp_path / "R.md"
    path.write_text("<!-- results:a -->\nx\n<!-- /results:a -->\n")
    splice_section(f"{path}#a", "| t |", command="reldrop compare --x")
    assert "Regenerate: `reldrop compare --x`" in path.read_text() and "| t |" in path.read_text()
    splice_section(f"{path}#a", "| u |", command="c")  # idempotent markers: a second run replaces
    assert "| t |" not in path.read_text() and path.read_text().count("results:a") == 2
    for target, match in ((f"{path}#b", "expected one '<!-- results:b -->'"),
                          (str(path), "expected FILE#NAME"),
                          (f"{tmp_path}/none.md#a", "is not a file")):
        with pytest.raises(ValueError, match=match):
            splice_section(target, "t", command="c")


def test_a_replica_without_lag_trains_exactly_like_sync(tmp_path, monkeypatch) -> None:
    """The lagged path adds nothing but staleness: at delay 0 it reproduces sync bit for bit."""
    from reldrop.pipeline.data.datasets import build_dataset
    from studies import inprocess

    root = str(tmp_path / "viv")
    build_dataset("viviano-synthetic", root, limit=60, progress=False)
    train = inprocess.load_splits(root, ("train",))["train"]
    spec = inprocess.RunSpec(augment="reldrop-pixel", epochs=1, batch_size=8)
    sync, _ = inprocess.train_in_process(spec, train, num_classes=2, seed=3)
    monkeypatch.setattr(inprocess.RunSpec, "stale", property(lambda self: True))
    info: dict = {}
    lagged, _ = inprocess.train_in_process(spec, train, num_classes=2, seed=3, info=info)
    assert info == {"staleness_mean": 0.0, "staleness_max": 0}
    agreeing: dict = {}
    inprocess.train_in_process(replace(spec, agreement=True), train, num_classes=2, seed=3,
                               info=agreeing)
    assert agreeing["mask_iou"] == 1.0  # no lag: the live masks are the same masks
    for a, b in zip(sync.state_dict().values(), lagged.state_dict().values(), strict=True):
        assert torch.equal(a, b)
    lagged1, _ = inprocess.train_in_process(
        inprocess.RunSpec(augment="reldrop-pixel", epochs=1, batch_size=8, lag=1), train,
        num_classes=2, seed=3)
    assert not all(torch.equal(a, b) for a, b in zip(sync.state_dict().values(),
                                                     lagged1.state_dict().values(), strict=True))


def test_staleness_from_a_config_file(tmp_path) -> None:
    path = tmp_path / "study.yaml"
    path.write_text("data: x\nbounds: '2,8'\nparams: '{\"p\": 0.5}'\n")
    args = parse_args(["--config", str(path)])
    assert args.data == "x" and args.bounds == [2, 8] and args.params == {"p": 0.5}
