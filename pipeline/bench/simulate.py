"""``reldrop bench --simulate``: none / sync / async under a modelled accelerator, side by side.

Every trainer step is padded to ``step_ms`` and every LRP call to ``lrp_ms`` per ``batch_size``
rows (:mod:`reldrop.pipeline.simulated`), so the real pipeline (Ray Data reads, the hand-off,
explainer actors, DDP) runs with the timings of a device this machine does not have. The ideal
is ``trainers * batch_size / step_ms``: a trainer that never waits. ``--nodes N`` starts N
simulated nodes on this machine (``ray.cluster_utils.Cluster``) so trainers and explainers are
spread as on a cluster. The model should be small (default ``mlp``) so that its real work fits
inside the modelled times; the report keeps the real compute time per step beside them.

Where S and L come from: ``reldrop bench --gpu`` on the GPU measures the in-process step and
LRP time of your model and batch (``gpu.in_process``); pass them here as ``--step-ms`` and
``--lrp-ms`` to plan trainers and explainers for that device. Figures from here are always
labelled simulated.
"""

from __future__ import annotations

import json
import math
import statistics
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

from reldrop.pipeline.training.config import TrainConfig

__all__ = ["SimulateConfig", "run_simulation", "summarize"]

MODES = {"none": ("none", "async"), "sync": ("reldrop-pixel", "sync"),
         "async": ("reldrop-pixel", "async")}


@dataclass(frozen=True, kw_only=True)
class SimulateConfig:
    """What ``reldrop bench --simulate`` models (``simulate.json["config"]``)."""

    out: str = "runs/simulate"
    step_ms: float = 100.0
    lrp_ms: float = 250.0
    batch_size: int = 64
    trainers: int = 1
    explainers: int = 3
    nodes: int = 1
    steps: int = 60  # trainer steps per run (per trainer)
    model: str = "mlp"
    data: str | None = None
    seed: int = 0
    modes: tuple[str, ...] = ("none", "sync", "async")
    command: str = "reldrop bench --simulate"

    def __post_init__(self) -> None:
        for name in ("step_ms", "lrp_ms"):
            value = getattr(self, name)
            if not (isinstance(value, int | float) and math.isfinite(value) and value > 0):
                raise ValueError(f"{name}={value!r}; expected a positive finite number of ms")
        for name in ("batch_size", "trainers", "explainers", "nodes", "steps"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name}={value!r}; expected an integer >= 1")
        if self.explainers < self.trainers:
            raise ValueError(f"explainers={self.explainers} < trainers={self.trainers}: every "
                             "trainer needs explainers of its own")
        unknown = sorted(set(self.modes) - set(MODES))
        if unknown or not self.modes:
            raise ValueError(f"modes={self.modes!r}; expected a non-empty subset of {sorted(MODES)}")

    @property
    def ideal_samples_per_s(self) -> float:
        return self.trainers * self.batch_size / (self.step_ms / 1e3)

    @property
    def rows(self) -> int:
        return self.steps * self.trainers * self.batch_size


def _log(message: str) -> None:
    print(f"[bench] {message}", flush=True)


def _data(cfg: SimulateConfig, out: Path) -> str:
    if cfg.data:
        return cfg.data
    from reldrop.pipeline.data.datasets import build_dataset

    root = out / "data"
    if not (root / "manifest.parquet").exists():
        build_dataset("decoy-mnist", str(root), seed=cfg.seed, limit=max(cfg.rows, 512),
                      shard_size=256, overwrite=True)
    return f"{root}#train"


def _cpus_per_node(cfg: SimulateConfig) -> int:
    """Logical CPUs per node: its trainers (1 each), explainers (0.25 each), reads and slack.
    Logical: the modelled work sleeps, the real work of a small model is light."""
    trainers = math.ceil(cfg.trainers / cfg.nodes)
    explainers = math.ceil(cfg.explainers / cfg.nodes)
    return math.ceil(trainers + 0.25 * explainers + 1)


def _start_cluster(cfg: SimulateConfig) -> Any:
    """A local Ray of ``nodes`` simulated nodes (one process tree on this machine)."""

    from reldrop.pipeline.training.driver import init_ray

    if cfg.nodes == 1:
        init_ray(TrainConfig(num_cpus=_cpus_per_node(cfg)))
        return None
    from ray.cluster_utils import Cluster

    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 0})
    for _ in range(cfg.nodes):
        cluster.add_node(num_cpus=_cpus_per_node(cfg))
    cluster.wait_for_nodes()
    init_ray(TrainConfig(address=cluster.address))
    return cluster


def _run(cfg: SimulateConfig, base: TrainConfig, mode: str, out: Path) -> dict[str, Any]:
    from reldrop.pipeline.training.driver import run_training

    augment, how = MODES[mode]
    _log(f"{mode}: {cfg.trainers} trainer(s), {cfg.explainers if how == 'async' and augment != 'none' else 0} "
         f"explainer(s), step {cfg.step_ms:g} ms, LRP {cfg.lrp_ms:g} ms (SIMULATED)")
    start = time.perf_counter()
    report = run_training(replace(base, augment=augment, mode=how, out=str(out / mode)),
                          verbose=False)
    return _figures(report, time.perf_counter() - start)


def _figures(report: dict[str, Any], wall_s: float) -> dict[str, Any]:
    """What the comparison reads from one run's report."""
    tp, handoff = report["throughput"], report.get("handoff") or {}
    publish = handoff.get("publish_ms") or []
    steps = report["epochs"][-1]["steps"] if report["epochs"] else 0
    return {
        "samples_per_s": tp["steady_samples_per_s"],
        "trainer_wait_fraction": tp["steady_wait_fraction"],
        "first_batch_s": tp["first_batch_s"],
        "compute_s_per_step": tp["compute_s_per_step"],
        "steps": steps,
        "staleness": report["staleness"],
        "staleness_histogram": report["staleness_histogram"],
        "staleness_bound": report["staleness_bound"],
        "publish_ms": _quantiles(publish),
        "handoff": {k: v for k, v in handoff.items() if k != "publish_ms"},
        "explainers": _explainer_profile(report.get("explainers") or {}),
        "counts": {k: report["counts"][k] for k in ("trained", "stale", "fallback")},
        "run_wall_s": wall_s,
    }


def _quantiles(values: list[float]) -> dict[str, float | None]:
    if not values:
        return {"p50": None, "p99": None, "n": 0}
    ordered = sorted(values)
    return {"p50": statistics.median(ordered),
            "p99": ordered[min(len(ordered) - 1, math.ceil(0.99 * len(ordered)) - 1)],
            "n": len(ordered)}


def _explainer_profile(stats: dict[str, Any]) -> dict[str, Any]:
    """Per explainer: calls, rows, time in LRP (real) and busy (padded), weight fetches."""
    return {
        name: {"calls": s.get("batches", 0), "rows": s.get("explained", 0),
               "relevance_s": s.get("relevance_s", 0.0), "busy_s": s.get("busy_s", 0.0),
               "alive_s": s.get("alive_s", 0.0), "fetch_ms": _quantiles(s.get("fetch_ms") or [])}
        for name, s in stats.items()
    }


def summarize(cfg: SimulateConfig, runs: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """The headline figures (see the module docstring) from the per-mode runs."""
    ideal = cfg.ideal_samples_per_s
    rate = {m: r["samples_per_s"] for m, r in runs.items()}
    asy = runs.get("async", {})

    def ratio(a: float | None, b: float | None) -> float | None:
        return a / b if a and b else None

    return {
        "simulated": True,
        "ideal_samples_per_s": ideal,
        "samples_per_s": rate,
        "efficiency": ratio(rate.get("async"), ideal),
        "async_over_sync": ratio(rate.get("async"), rate.get("sync")),
        "ideal_async_over_sync": (cfg.step_ms + cfg.lrp_ms) / cfg.step_ms,
        "trainer_wait_fraction": {m: r["trainer_wait_fraction"] for m, r in runs.items()},
        "staleness": asy.get("staleness"),
        "publish_ms": asy.get("publish_ms"),
    }


def run_simulation(cfg: SimulateConfig) -> dict[str, Any]:
    """Run the modes under the modelled device; write ``simulate.json``; return it."""
    import ray

    out = Path(cfg.out).absolute()
    out.mkdir(parents=True, exist_ok=True)
    train = _data(cfg, out)
    cluster = _start_cluster(cfg)
    base = TrainConfig(
        train=train, model=cfg.model, epochs=1, batch_size=cfg.batch_size,
        trainers=cfg.trainers, explainers=cfg.explainers, explainer_cpus=0.25,
        limit=cfg.rows, seed=cfg.seed, threads=1, simulate_step_ms=cfg.step_ms,
        simulate_lrp_ms=cfg.lrp_ms, out=str(out),
    )
    try:
        runs = {mode: _run(cfg, base, mode, out / "runs") for mode in cfg.modes}
    finally:
        if cluster is not None:
            ray.shutdown()
            cluster.shutdown()
    result = {"config": asdict(cfg), "command": cfg.command,
              **summarize(cfg, runs), "runs": runs}
    (out / "simulate.json").write_text(json.dumps(result, indent=2, default=float))
    return result
