"""``reldrop bench --tiny``: the whole benchmark at its smallest size, end to end."""

from __future__ import annotations

import json
import math

import pytest

from reldrop.jobs import bench

HEADLINE = (
    "critical_path_ratio_async",
    "critical_path_ratio_sync",
    "explainer_efficiency",
    "weight_sync_ms_small",
    "weight_sync_ms_resnet18",
)


def test_tiny_sets_small_sizes() -> None:
    from reldrop.pipeline.bench import BenchConfig

    args = bench.parse_args(["--tiny", "--out", "x"])
    assert args.tiny and args.command == "reldrop bench --tiny --out x"
    tiny, quick = BenchConfig(tiny=True), BenchConfig(quick=True)
    assert (tiny.n_limit, tiny.n_rounds, tiny.n_sync_repeats) == (300, 1, 1)
    assert tiny.staleness_grid() == [] and quick.staleness_grid() == [(1, 2)]
    assert BenchConfig(tiny=True, limit=50).n_limit == 50


def test_bench_config_rejects_bad_sizes() -> None:
    from reldrop.pipeline.bench import BenchConfig

    with pytest.raises(ValueError, match="rounds=0"):
        BenchConfig(rounds=0)


@pytest.mark.slow
@pytest.mark.ray
def test_bench_tiny_writes_finite_figures(tmp_path) -> None:
    out = tmp_path / "bench"
    assert bench.main(bench.parse_args(["--tiny", "--out", str(out)])) == 0
    result = json.loads((out / "bench.json").read_text())
    for key in HEADLINE:
        assert math.isfinite(result[key]) and result[key] > 0, (key, result[key])
    for mode in ("none", "sync", "async"):
        figures = result["modes"][mode]
        for key in ("compute_s_per_step", "samples_per_s", "first_batch_s"):
            assert math.isfinite(figures[key]) and figures[key] > 0, (mode, key, figures[key])
    assert result["staleness"] and result["machine"]["cpus"] >= 1
    text = (out / "bench.md").read_text()
    assert "critical_path_ratio_async" in text and "reldrop bench --tiny" in text
