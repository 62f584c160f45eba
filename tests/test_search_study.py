"""Per-method hyperparameter search in process (no Ray): ``python -m studies.search``."""

from __future__ import annotations

import json

import pytest

from studies.inprocess import RunSpec
from studies.search import (
    GRIDS,
    SEARCH_METRICS,
    SearchConfig,
    format_search_table,
    grid_points,
    main,
    parse_args,
    select,
)


def test_selection_uses_validation_only_and_prefers_the_strongest_tie() -> None:
    points = [{"val_accuracy": [1.0, 1.0], "ood_accuracy": [0.0, 0.0]},
              {"val_accuracy": [0.995, 1.0], "ood_accuracy": [0.9, 0.9]},
              {"val_accuracy": [0.5, 0.5], "ood_accuracy": [1.0, 1.0]}]
    assert select(points, 0.01) == 1  # strongest within 0.01 of the best val
    assert select(points, 0.0) == 0  # exact best
    points[1]["ood_accuracy"] = [0.0, 0.0]  # OOD never changes the choice
    assert select(points, 0.01) == 1


def test_search_table_names_option_settings() -> None:
    """A grid point may set a method option (a string) beside its weight."""
    figures = {key: [0.5, 0.7] for key in SEARCH_METRICS}
    table = format_search_table([{"method": "gradmask", "figures": figures,
                                  "winner": {"lam": 30.0, "form": "original"}},
                                 {"method": "none", "figures": figures, "winner": {}}])
    assert "| gradmask | lam=30, form=original | 0.600 ± 0.141 |" in table
    assert "| none | – |" in table


def test_search_arguments() -> None:
    with pytest.raises(SystemExit):
        parse_args([])  # needs --data
    with pytest.raises(SystemExit):
        parse_args(["--data", "x", "--methods", "none-sync"])
    args = parse_args(["--data", "x"])
    assert args.methods == list(GRIDS) and args.grid == {} and not args.full
    assert args.command == "python -m studies.search --data x"
    args = parse_args(["--full", "--data", "x", "--grid", "rrr=1,10",
                       "--grid", "reldrop-block=0.7"])
    assert args.grid == {"rrr": [{"lam": 1.0}, {"lam": 10.0}], "reldrop-block": [{"p": 0.7}]}
    assert grid_points("rrr", False, args.grid) == [{"lam": 1.0}, {"lam": 10.0}]
    assert grid_points("rrr", True) == GRIDS["rrr"][0]
    with pytest.raises(SystemExit):
        parse_args(["--data", "x", "--optimizer", "rmsprop"])
    with pytest.raises(ValueError, match="optimizer='lbfgs' is unknown; known: "):
        RunSpec(optimizer="lbfgs")
    with pytest.raises(ValueError, match="lr=0"):
        SearchConfig(data="x", lr=0.0)
    with pytest.raises(ValueError, match="batch_size=0"):
        SearchConfig(data="x", batch_size=0)
    for bad in ("rrr=x", "nope=1", "rrr="):
        with pytest.raises(SystemExit):
            parse_args(["--data", "x", "--grid", bad])
    args = parse_args(["--data", "x", "--grid", "gradmask=1,10",
                       "--options", 'gradmask={"form": "original"}',
                       "--options", 'actdiff={"layers": "all"}'])
    assert args.grid["gradmask"] == [{"lam": 1.0, "form": "original"},
                                     {"lam": 10.0, "form": "original"}]
    assert args.grid["actdiff"] == [{**p, "layers": "all"} for p in GRIDS["actdiff"][0]]
    for bad in ("gradmask=[1]", "nope={}", "gradmask={form"):
        with pytest.raises(SystemExit):
            parse_args(["--data", "x", "--options", bad])


def test_quick_search_end_to_end(tmp_path, capsys) -> None:
    from reldrop.pipeline.data.datasets import build_dataset


    root = str(tmp_path / "viv")
    build_dataset("viviano-synthetic", root, limit=100, progress=False)
    out = tmp_path / "search"
    code = main(parse_args(["--data", root, "--methods", "none,gradmask",
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


def test_make_results_commands_parse() -> None:
    """Every study ``make results`` runs parses with its entry point (a typo fails here, not
    hours into the run)."""
    import importlib
    import shlex
    from pathlib import Path

    makefile = (Path(__file__).resolve().parents[1] / "Makefile").read_text()
    lines = [line.split("python -m ", 1)[1] for line in makefile.splitlines()
             if "python -m studies." in line]
    assert {line.split()[0] for line in lines} == {"studies.search", "studies.staleness"}
    for line in lines:
        module, *argv = shlex.split(line)
        args = importlib.import_module(module).parse_args(argv)
        assert args.table is None or args.table.startswith("docs/results.md#")
