"""The comparison job: the mean ± std table (no Ray) and a tiny end-to-end comparison."""

from __future__ import annotations

import json
import math

import pytest

from reldrop.jobs.compare import main, parse_args
from reldrop.pipeline.evaluation.compare import (
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
