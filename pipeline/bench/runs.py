"""Pipeline runs for the benchmark: ``run_training`` reports reduced to the figures compared.

All runs share one Ray session and one base :class:`~reldrop.pipeline.training.config.TrainConfig`; only the
augmentation, mode, publish interval, explainer count and device change between them.
"""

from __future__ import annotations

import statistics
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

from reldrop.pipeline.training.config import TrainConfig

__all__ = ["MODES", "explainer_rates", "median_of", "pipeline_run"]

#: bench name -> (augment, mode)
MODES: dict[str, tuple[str, str]] = {
    "none": ("none", "async"),
    "sync": ("reldrop-pixel", "sync"),
    "async": ("reldrop-pixel", "async"),
}


def explainer_rates(stats: dict[str, dict[str, float]]) -> dict[str, Any] | None:
    """Samples/s of the busiest explainer actor: in ``relevance()`` alone, and over its whole
    per-batch work excluding waits at the staleness gate."""
    if not stats:
        return None
    top = max(stats.values(), key=lambda s: s.get("explained", 0))
    if not top.get("explained") or not top.get("relevance_s"):
        return None
    work_s = max(top["busy_s"] - top["gate_wait_s"], 1e-9)
    return {
        "explained": int(top["explained"]),
        "rows_per_call": top["explained"] / max(top["relevance_calls"], 1),
        "threads": int(top["threads"]),
        "relevance_samples_per_s": top["explained"] / top["relevance_s"],
        "actor_samples_per_s": top["explained"] / work_s,
        "utilization": top["busy_s"] / max(top["alive_s"], 1e-9),
        "gate_wait_s": top["gate_wait_s"],
        "gate_timeouts": int(top["gate_timeouts"]),
    }


def pipeline_run(base: TrainConfig, name: str, out: Path, **changes: Any) -> dict[str, Any]:
    """One ``run_training`` call; the figures the benchmark reads from its report."""
    from reldrop.pipeline.training.driver import run_training  # imports Ray

    cfg = replace(base, out=str(out / name), **changes)
    start = time.perf_counter()
    report = run_training(cfg, verbose=False)
    tp = report["throughput"]
    publish = report.get("publish_ms") or []
    return {
        "name": name,
        "augment": cfg.augment,
        "mode": cfg.mode,
        "sync_every": cfg.sync_every,
        "explainers": cfg.explainers if cfg.needs_explainer else 0,
        "use_gpu": cfg.use_gpu,
        "samples_per_s": tp["samples_per_s"],
        "trainer_wait_fraction": tp["trainer_wait_fraction"],
        "compute_s_per_step": tp["compute_s_per_step"],
        "first_batch_s": tp["first_batch_s"],
        "train_wall_s": tp["wall_s"],
        "run_wall_s": time.perf_counter() - start,
        "steps": report["epochs"][-1]["steps"] if report["epochs"] else 0,
        "staleness": report["staleness"],
        "staleness_bound": report.get("staleness_bound"),
        "publish_ms_median": statistics.median(publish) if publish else None,
        "explainer": explainer_rates(report.get("explainers") or {}),
        "model_spec": report["model_spec"],
        "cluster": report["cluster"],
    }


def median_of(runs: list[dict[str, Any]], key: str) -> float:
    values = [r[key] for r in runs if r.get(key) is not None]
    return float(statistics.median(values)) if values else float("nan")
