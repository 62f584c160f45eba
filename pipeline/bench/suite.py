"""``run_bench``: every benchmark section in one process and one Ray session.

Sections: trainer critical path, explainer efficiency, weight sync, staleness,
end to end, and the same on GPU when asked for and present. Pipeline runs of ``none``,
``async`` and ``sync`` are interleaved (round after round) so drift on a shared machine hits
all three alike; each figure is the median over rounds.
"""

from __future__ import annotations

import json
import math
import os
import platform
import statistics
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import torch

from reldrop.checkpoint import ModelSpec
from reldrop.pipeline.bench.micro import bare_relevance, train_steps
from reldrop.pipeline.bench.runs import MODES, median_of, pipeline_run
from reldrop.pipeline.training.config import TrainConfig

__all__ = ["AHEAD_STEPS", "BenchConfig", "run_bench"]

#: Trainer steps the hand-off sends batches ahead (the default bound of 2 at publish every step):
#: ``max_staleness = sync_every - 1 + AHEAD_STEPS``.
AHEAD_STEPS = 2


def _max_staleness(sync_every: int) -> int:
    return sync_every - 1 + AHEAD_STEPS


@dataclass(frozen=True, kw_only=True)
class BenchConfig:
    """What ``reldrop bench`` measures and how big (``bench.json["config"]``)."""

    out: str = "runs/bench"
    quick: bool = False
    tiny: bool = False  # the test suite's size: quick, 300 samples, no extra staleness runs
    gpu: bool = False
    data: str | None = None
    limit: int | None = None
    epochs: int | None = None
    rounds: int | None = None
    model: str = "small-cnn"
    batch_size: int = 64
    threads: int = 1
    sync_every: int = 1
    sync_repeats: int | None = None
    seed: int = 0
    command: str = "reldrop bench"

    def __post_init__(self) -> None:
        for name in ("limit", "epochs", "rounds", "sync_repeats"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise ValueError(f"{name}={value!r}; expected an integer >= 1 or None")
        for name in ("batch_size", "threads", "sync_every"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name}={getattr(self, name)!r}; expected an integer >= 1")

    # sizes: quick / full defaults, overridable
    @property
    def n_limit(self) -> int:
        return self.limit or (300 if self.tiny else 1000 if self.quick else 2500)

    @property
    def n_epochs(self) -> int:
        return self.epochs or 1

    @property
    def n_rounds(self) -> int:
        return self.rounds or (1 if self.quick or self.tiny else 2)

    @property
    def n_sync_repeats(self) -> int:
        return self.sync_repeats or (1 if self.tiny else 3 if self.quick else 10)

    def staleness_grid(self) -> list[tuple[int, int]]:
        """(sync_every, explainers) pairs; the main async run covers (sync_every, 1)."""
        if self.tiny:
            return []
        if self.quick:
            return [(1, 2)]
        return [(s, e) for e in (1, 2) for s in (1, 4, 16) if (s, e) != (self.sync_every, 1)]


def _data(cfg: BenchConfig, out: Path) -> str:
    if cfg.data:
        return cfg.data
    from reldrop.pipeline.data.datasets import build_dataset

    root = out / "data"
    if not (root / "manifest.parquet").exists():
        build_dataset("decoy-mnist", str(root), seed=cfg.seed, limit=cfg.n_limit, shard_size=100,
                      overwrite=True)
    return f"{root}#train"


def _log(message: str) -> None:
    print(f"[bench] {message}", flush=True)


def _ratio(a: float, b: float) -> float:
    return a / b if b and math.isfinite(a) and math.isfinite(b) else float("nan")


def _modes(base: TrainConfig, out: Path, rounds: int, tag: str = "") -> dict[str, list[dict[str, Any]]]:
    runs: dict[str, list[dict[str, Any]]] = {m: [] for m in MODES}
    for r in range(rounds):
        for mode in ("none", "async", "sync"):
            augment, how = MODES[mode]
            _log(f"{tag}{mode} round {r + 1}/{rounds}")
            runs[mode].append(pipeline_run(base, f"{tag}{mode}-{r}", out, augment=augment, mode=how))
    return runs


def _mode_table(runs: dict[str, list[dict[str, Any]]]) -> dict[str, dict[str, float]]:
    keys = ("compute_s_per_step", "samples_per_s", "trainer_wait_fraction", "first_batch_s")
    return {m: {k: median_of(rs, k) for k in keys} for m, rs in runs.items()}


def _efficiency(async_runs: list[dict[str, Any]]) -> dict[str, Any]:
    rates = [r["explainer"] for r in async_runs if r["explainer"]]
    if not rates:
        return {"note": "no explainer statistics came back"}
    spec = ModelSpec.from_json(async_runs[0]["model_spec"])
    batch = max(1, round(_median([r["rows_per_call"] for r in rates])))
    threads = rates[0]["threads"]
    bare = bare_relevance(spec, batch=batch, threads=threads)
    pipe = _median([r["relevance_samples_per_s"] for r in rates])
    actor = _median([r["actor_samples_per_s"] for r in rates])
    return {
        "bare": bare, "pipeline_relevance_samples_per_s": pipe, "pipeline_actor_samples_per_s": actor,
        "pipeline": rates,
        "explainer_efficiency": _ratio(pipe, bare["samples_per_s"]),
        "explainer_efficiency_actor": _ratio(actor, bare["samples_per_s"]),
    }


def _median(values: list[float]) -> float:
    return float(statistics.median(values)) if values else float("nan")


def _gpu(cfg: BenchConfig, base: TrainConfig, out: Path, spec: ModelSpec) -> dict[str, Any]:
    if not torch.cuda.is_available():
        return {"skipped": "no CUDA device visible to torch (torch.cuda.is_available() is False)"}
    name = torch.cuda.get_device_name(0)
    _log(f"GPU section on {name}")
    micro = {
        mode: train_steps(spec, batch=cfg.batch_size, threads=cfg.threads, augment=MODES[mode][0],
                          device="cuda")
        for mode in ("none", "sync")
    }
    result: dict[str, Any] = {
        "device": name,
        "in_process": {
            "step_s_none": micro["none"]["s_per_step_median"],
            "step_s_sync": micro["sync"]["s_per_step_median"],
            "relevance": bare_relevance(spec, batch=cfg.batch_size, threads=cfg.threads, device="cuda"),
        },
    }
    try:
        runs = _modes(replace(base, use_gpu=True), out, 1, tag="gpu-")
    except ImportError as err:  # e.g. a GPU box without Ray: the in-process figures stand
        result["pipeline_error"] = f"{type(err).__name__}: {err}"
        return result
    table = _mode_table(runs)
    result.update(
        modes=table, runs=runs,
        explainers_on="cpu" if base.explainer_gpus == 0 else "gpu (shared with the trainer on one GPU)",
        critical_path_ratio_async=_ratio(table["async"]["compute_s_per_step"], table["none"]["compute_s_per_step"]),
        critical_path_ratio_sync=_ratio(table["sync"]["compute_s_per_step"], table["none"]["compute_s_per_step"]),
    )
    return result


def run_bench(cfg: BenchConfig) -> dict[str, Any]:
    """Run every section; write ``bench.json`` and ``bench.md`` to ``cfg.out``; return the dict."""
    from reldrop.pipeline.bench.markdown import render
    from reldrop.pipeline.bench.weight_sync import measure_weight_sync

    start = time.perf_counter()
    out = Path(cfg.out).absolute()
    out.mkdir(parents=True, exist_ok=True)
    train = _data(cfg, out)
    base = TrainConfig(
        train=train, model=cfg.model, epochs=cfg.n_epochs, batch_size=cfg.batch_size,
        threads=cfg.threads, sync_every=cfg.sync_every, max_staleness=_max_staleness(cfg.sync_every),
        seed=cfg.seed, out=str(out),
    )
    runs = _modes(base, out / "runs", cfg.n_rounds)
    table = _mode_table(runs)
    spec = ModelSpec.from_json(runs["none"][0]["model_spec"])
    _log("explainer efficiency: bare relevance loop")
    efficiency = _efficiency(runs["async"])

    staleness = [{k: runs["async"][0][k] for k in ("sync_every", "explainers", "staleness", "staleness_bound")}]
    for sync_every, explainers in cfg.staleness_grid():
        _log(f"staleness: sync_every {sync_every}, {explainers} explainer(s)")
        try:
            run = pipeline_run(base, f"stale-s{sync_every}-e{explainers}", out / "runs",
                               sync_every=sync_every, explainers=explainers,
                               max_staleness=_max_staleness(sync_every))
        except Exception as err:  # noqa: BLE001 - one failed combo must not lose the other figures
            _log(f"staleness run failed: {type(err).__name__}: {err}")
            run = {"sync_every": sync_every, "explainers": explainers, "staleness_bound": None,
                   "staleness": {"mean": None, "p50": None, "p99": None, "max": None},
                   "error": f"{type(err).__name__}: {str(err)[:200]}"}
        staleness.append({k: run[k] for k in ("sync_every", "explainers", "staleness", "staleness_bound")})
    staleness.sort(key=lambda r: (r["explainers"], r["sync_every"]))

    sync: dict[str, Any] = {}
    for label, model in (("small", cfg.model), ("resnet18", "resnet18")):
        _log(f"weight sync: {model}")
        sync[label] = measure_weight_sync(replace(spec, name=model), repeats=cfg.n_sync_repeats)

    result: dict[str, Any] = {
        "config": asdict(cfg),
        "machine": {
            "cpus": os.cpu_count(), "torch_threads_driver": torch.get_num_threads(),
            "trainer_threads": cfg.threads, "device": "cpu", "torch": torch.__version__,
            "python": platform.python_version(), "platform": platform.platform(),
            "ray_cpus": runs["none"][0]["cluster"]["cpus"],
            "explainer_cpus": runs["async"][0]["cluster"]["explainer_cpus"],
        },
        "command": cfg.command,
        "critical_path_ratio_async": _ratio(table["async"]["compute_s_per_step"], table["none"]["compute_s_per_step"]),
        "critical_path_ratio_sync": _ratio(table["sync"]["compute_s_per_step"], table["none"]["compute_s_per_step"]),
        "explainer_efficiency": efficiency.get("explainer_efficiency", float("nan")),
        "weight_sync_ms_small": sync["small"]["sync_ms_median"],
        "weight_sync_ms_resnet18": sync["resnet18"]["sync_ms_median"],
        "modes": table,
        "efficiency": efficiency,
        "weight_sync": sync,
        "staleness": staleness,
        "runs": runs,
    }
    if cfg.gpu:
        result["gpu"] = _gpu(cfg, base, out / "runs", spec)
    result["wall_s"] = time.perf_counter() - start
    (out / "bench.json").write_text(json.dumps(result, indent=2, default=float))
    (out / "bench.md").write_text(render(result))
    return result
