"""The comparison job: the mean ± std table (no Ray) and a tiny end-to-end comparison."""

from __future__ import annotations

import json
import math

import pytest

from reldrop.jobs.compare import main, parse_args
from reldrop.pipeline.studies.compare import (
    METHODS,
    METRICS,
    CompareConfig,
    format_table,
    run_comparison,
    summarize,
)


def _run(method: str, seed: int, **figures: float | None) -> dict:
    return {"method": method, "seed": seed, "figures": figures}


def test_summary_and_table_mean_std() -> None:
    runs = [
        _run("none-sync", 0, id_accuracy=0.9, ood_accuracy=0.2, epoch_s=10.0),
        _run("none-sync", 1, id_accuracy=0.8, ood_accuracy=None, epoch_s=12.0),
        _run("gradmask", 0, id_accuracy=0.7, ood_accuracy=0.6, epoch_s=30.0),
    ]
    summary = summarize(runs)
    s = summary["none-sync"]
    assert s["id_accuracy"]["mean"] == pytest.approx(0.85)
    assert s["id_accuracy"]["std"] == pytest.approx(math.sqrt(0.005))  # sample std
    assert s["ood_accuracy"] == {"mean": 0.2, "std": None, "n": 1}  # missing figure left out
    assert summary["gradmask"]["mask_share"] == {"mean": None, "std": None, "n": 0}
    lines = format_table(summary).splitlines()
    assert lines[0] == "| method | runs | " + " | ".join(METRICS.values()) + " |"
    assert lines[1].count("---") == len(METRICS) + 2
    assert lines[2] == "| none-sync | 2 | 0.850 ± 0.071 | 0.200 | – | – | – | – | – | 11.0 ± 1.4 |"
    assert lines[3] == "| gradmask | 1 | 0.700 | 0.600 | – | – | – | – | – | 30.0 |"


def test_config_and_arguments_are_validated() -> None:
    with pytest.raises(ValueError, match="methods"):
        CompareConfig(methods=("none-sync", "dropout"))
    with pytest.raises(ValueError, match="seeds"):
        CompareConfig(seeds=(0, 0))
    with pytest.raises(SystemExit):
        parse_args(["--methods", "none-sync,nope"])
    args = parse_args([])
    assert args.methods == list(METHODS) and args.seeds == 2 and args.epochs == 3
    assert all(METHODS[m].mode == "sync" and METHODS[m].augment == "none"
               for m in ("gradmask", "rrr", "actdiff", "isnet", "classify-masked"))


@pytest.mark.slow
@pytest.mark.ray
def test_tiny_comparison(ray_local, decoy_root, tmp_path, capsys) -> None:
    out = tmp_path / "cmp"
    code = main(parse_args(["--methods", "none-sync,gradmask", "--seeds", "1", "--epochs", "1",
                            "--eval-limit", "40", "--data", decoy_root, "--out", str(out)]))
    assert code == 0
    result = json.loads((out / "compare.json").read_text())
    assert {"config", "data", "methods", "runs", "summary", "paths", "table", "wall_s"} <= set(result)
    assert [(r["method"], r["seed"]) for r in result["runs"]] == [("none-sync", 0), ("gradmask", 0)]
    for run in result["runs"]:
        assert run["config"]["regularizer"] == ("gradmask" if run["method"] == "gradmask" else "none")
        assert run["config"]["augment"] == "none" and run["config"]["mode"] == "sync"
        assert run["eval_n"] == 40
        assert all(isinstance(run["figures"][k], float) for k in METRICS)
    rows = [line for line in (out / "compare.md").read_text().splitlines()
            if line.startswith("| none-sync") or line.startswith("| gradmask")]
    assert len(rows) == 2
    for row in rows:
        cells = [c.strip() for c in row.strip("|").split("|")][2:]
        assert len(cells) == len(METRICS) and all(math.isfinite(float(c)) for c in cells)
    assert (out / "compare.png").stat().st_size > 0
    assert "[compare] 2/2 gradmask seed 0" in capsys.readouterr().out


@pytest.mark.slow
@pytest.mark.ray
def test_parallel_refuses_a_cluster_too_small(ray_local, decoy_root, tmp_path) -> None:
    cfg = CompareConfig(methods=("none-sync",), seeds=(0,), data=decoy_root, out=str(tmp_path),
                        parallel=2)
    with pytest.raises(ValueError, match="parallel=2 leaves 1 CPU per run"):
        run_comparison(cfg)


# --- per-method hyperparameter search (in process, no Ray) --------------------------------------


def test_selection_uses_validation_only_and_prefers_the_strongest_tie() -> None:
    from reldrop.pipeline.studies.search import select

    points = [{"val_accuracy": [1.0, 1.0], "ood_accuracy": [0.0, 0.0]},
              {"val_accuracy": [0.995, 1.0], "ood_accuracy": [0.9, 0.9]},
              {"val_accuracy": [0.5, 0.5], "ood_accuracy": [1.0, 1.0]}]
    assert select(points, 0.01) == 1  # strongest within 0.01 of the best val
    assert select(points, 0.0) == 0  # exact best
    points[1]["ood_accuracy"] = [0.0, 0.0]  # OOD never changes the choice
    assert select(points, 0.01) == 1


def test_search_table_names_option_settings() -> None:
    """A grid point may set a method option (a string) beside its weight."""
    from reldrop.pipeline.studies.search import SEARCH_METRICS, format_search_table

    figures = {key: [0.5, 0.7] for key in SEARCH_METRICS}
    table = format_search_table([{"method": "gradmask", "figures": figures,
                                  "winner": {"lam": 30.0, "form": "original"}},
                                 {"method": "none", "figures": figures, "winner": {}}])
    assert "| gradmask | lam=30, form=original | 0.600 ± 0.141 |" in table
    assert "| none | – |" in table


def test_search_arguments() -> None:
    with pytest.raises(SystemExit):
        parse_args(["--search", "quick"])  # needs --data
    with pytest.raises(SystemExit):
        parse_args(["--search", "quick", "--data", "x", "--methods", "none-sync"])
    args = parse_args(["--search", "quick", "--data", "x"])
    from reldrop.pipeline.studies.search import GRIDS, grid_points

    assert args.methods == list(GRIDS) and args.grid == {}
    args = parse_args(["--search", "full", "--data", "x", "--grid", "rrr=1,10",
                       "--grid", "reldrop-block=0.7"])
    assert args.grid == {"rrr": [{"lam": 1.0}, {"lam": 10.0}], "reldrop-block": [{"p": 0.7}]}
    assert grid_points("rrr", False, args.grid) == [{"lam": 1.0}, {"lam": 10.0}]
    assert grid_points("rrr", True) == GRIDS["rrr"][0]
    with pytest.raises(SystemExit):
        parse_args(["--search", "quick", "--data", "x", "--optimizer", "rmsprop"])
    from reldrop.pipeline.studies.inprocess import RunSpec
    from reldrop.pipeline.studies.search import SearchConfig

    with pytest.raises(ValueError, match="optimizer='lbfgs'; expected one of"):
        RunSpec(optimizer="lbfgs")
    with pytest.raises(ValueError, match="lr=0"):
        SearchConfig(data="x", lr=0.0)
    with pytest.raises(ValueError, match="batch_size=0"):
        SearchConfig(data="x", batch_size=0)
    for bad in ("rrr=x", "nope=1", "rrr="):
        with pytest.raises(SystemExit):
            parse_args(["--search", "quick", "--data", "x", "--grid", bad])
    args = parse_args(["--search", "quick", "--data", "x", "--grid", "gradmask=1,10",
                       "--options", 'gradmask={"form": "original"}',
                       "--options", 'actdiff={"layers": "all"}'])
    assert args.grid["gradmask"] == [{"lam": 1.0, "form": "original"},
                                     {"lam": 10.0, "form": "original"}]
    assert args.grid["actdiff"] == [{**p, "layers": "all"} for p in GRIDS["actdiff"][0]]
    with pytest.raises(SystemExit):  # not silently ignored without --search
        parse_args(["--data", "x", "--options", 'gradmask={"form": "original"}'])
    for bad in ("gradmask=[1]", "nope={}", "gradmask={form"):
        with pytest.raises(SystemExit):
            parse_args(["--search", "quick", "--data", "x", "--options", bad])


def test_quick_search_end_to_end(tmp_path, capsys) -> None:
    from reldrop.pipeline.data.datasets import build_dataset
    from reldrop.pipeline.studies.search import SEARCH_METRICS, grid_points, select

    root = str(tmp_path / "viv")
    build_dataset("viviano-synthetic", root, limit=100, progress=False)
    out = tmp_path / "search"
    code = main(parse_args(["--search", "quick", "--data", root, "--methods", "none,gradmask",
                            "--seeds", "2", "--epochs", "1", "--eval-limit", "8",
                            "--batch-size", "16", "--out", str(out)]))
    assert code == 0
    result = json.loads((out / "search.json").read_text())
    assert result["config"]["optimizer"] == "adam" and result["config"]["lr"] == 0.001  # defaults
    assert result["config"]["batch_size"] == 16
    assert result["sizes"] == {"train": 57, "val": 14, "test-id": 14, "test-ood": 14}
    gm = result["methods"][1]
    assert gm["method"] == "gradmask" and len(gm["grid"]) == len(grid_points("gradmask", True))
    assert gm["winner"] == gm["grid"][select(gm["grid"], 0.01)]["point"]
    for method in result["methods"]:
        assert set(method["figures"]) == set(SEARCH_METRICS)
        assert all(len(v) == 2 for v in method["figures"].values())  # one per seed
    table = (out / "search.md").read_text()
    assert "| gradmask | lam=" in table and "OOD never used" in table
    assert "batch 16, adam at lr 0.001" in table
    assert "[search] gradmask {'lam': 0.01}: val" in capsys.readouterr().out
