"""Typed run results: what each trainer worker reports, and the run's ``report.json``.

A :class:`WorkerSummary` travels from every Ray Train worker to the driver; :func:`assemble_report`
merges them with the driver's own facts into one :class:`RunReport`; :func:`write_json` is the
only JSON writer (non-finite numbers become ``null`` there, and nowhere else).
"""

from __future__ import annotations

import json
import math
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

__all__ = [
    "WORKERS_FILE",
    "RunReport",
    "WorkerSummary",
    "assemble_report",
    "json_safe",
    "merge_workers",
    "staleness_stats",
    "summary_table",
    "write_json",
    "write_report",
]


#: every worker's :class:`WorkerSummary`, in the final checkpoint (not in the metrics, which
#: stay flat scalars)
WORKERS_FILE = "workers.json"


@dataclass(kw_only=True)
class WorkerSummary:
    """One trainer worker's cumulative figures (sent with ``ray.train.report``)."""

    rank: int
    epochs: list[dict[str, Any]]
    staleness: dict[int, int]
    versions: list[int]
    counts: dict[str, int]
    skip_reasons: list[str]
    keys: list[list[str]]
    wait_s: float
    compute_s: float
    wall_s: float
    first_batch_s: float | None
    first_wait_s: float | None = None  # the wait for the first batch (start-up)
    publish_ms: list[float] = field(default_factory=list)
    store_recreated: int = 0
    #: the async hand-off's counters (:class:`~reldrop.pipeline.explanation.handoff.HandoffStats`)
    handoff: dict[str, Any] = field(default_factory=dict)
    restarts: int = 0
    in_loop: dict[str, Any] = field(default_factory=dict)
    #: shards that failed verification while streaming (their rows are in ``counts["skipped"]``)
    skipped_shards: list[dict[str, Any]] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> WorkerSummary:
        data = dict(data)
        data["staleness"] = {int(k): int(v) for k, v in data["staleness"].items()}
        return cls(**data)


def staleness_stats(histogram: dict[int, int]) -> dict[str, float | int | None]:
    """mean, p50, p99, max of a ``{staleness: count}`` histogram (``None`` when empty)."""
    total = sum(histogram.values())
    if total == 0:
        return {"mean": None, "p50": None, "p99": None, "max": None, "rows": 0}
    values = sorted(histogram)
    mean = sum(v * c for v, c in histogram.items()) / total

    def quantile(q: float) -> int:
        need, run = q * total, 0
        for v in values:
            run += histogram[v]
            if run >= need:
                return v
        return values[-1]

    return {"mean": mean, "p50": quantile(0.5), "p99": quantile(0.99), "max": values[-1], "rows": total}


def merge_workers(workers: list[WorkerSummary]) -> dict[str, Any]:
    """Combine the per-worker summaries into run-level figures (rank 0 first)."""
    workers = sorted(workers, key=lambda w: w.rank)
    hist: Counter[int] = Counter()
    counts: Counter[str] = Counter()
    for w in workers:
        hist.update(w.staleness)
        counts.update(w.counts)
    lead = workers[0]
    samples = sum(sum(e["samples"] for e in w.epochs) for w in workers)
    wall = max(w.wall_s for w in workers)
    steps = lead.epochs[-1]["steps"] if lead.epochs else 0
    compute = sum(w.compute_s for w in workers) / len(workers)
    return {
        "handoff": _merge_handoff(workers),
        "epochs": lead.epochs,
        "staleness_histogram": {str(k): hist[k] for k in sorted(hist)},
        "staleness": staleness_stats(dict(hist)),
        "counts": dict(counts),
        "skip_reasons": [r for w in workers for r in w.skip_reasons],
        "throughput": {
            "samples_per_s": samples / wall if wall else 0.0,
            "trainer_wait_fraction": (sum(w.wait_s for w in workers) / len(workers)) / wall if wall else 0.0,
            "compute_s_per_step": compute / steps if steps else None,
            "wall_s": wall,
            "first_batch_s": lead.first_batch_s,
            **_steady(workers, samples),
        },
        "publish_ms": lead.publish_ms,
        "store_recreated": lead.store_recreated,
        "restarts": lead.restarts,
        "keys": [w.keys for w in workers],
        "versions_seen": sorted({v for w in workers for v in w.versions}),
        "in_loop": lead.in_loop,
        "trained": samples,  # rows trained on, all workers and epochs
        "streamed_skips": _merge_shard_skips(workers),
    }


def _steady(workers: list[WorkerSummary], samples: int) -> dict[str, float | None]:
    """Throughput and waiting inside the training loop after its first batch (start-up and
    evaluation left out): what a simulated device's ideal is compared with."""
    loop = [w.wait_s + w.compute_s - (w.first_wait_s or 0.0) for w in workers]
    waits = [w.wait_s - (w.first_wait_s or 0.0) for w in workers]
    span = max(loop) if loop else 0.0
    mean_loop = sum(loop) / len(loop) if loop else 0.0
    return {
        "steady_samples_per_s": samples / span if span > 0 else None,
        "steady_wait_fraction": (sum(waits) / len(waits)) / mean_loop if mean_loop > 0 else None,
    }


def _merge_handoff(workers: list[WorkerSummary]) -> dict[str, Any]:
    """The hand-off counters summed over workers; every rank's publish times pooled."""
    merged: dict[str, Any] = {}
    for w in workers:
        for key, value in w.handoff.items():
            if isinstance(value, list):
                merged.setdefault(key, []).extend(value)
            else:
                merged[key] = merged.get(key, 0) + value
    return merged


def _merge_shard_skips(workers: list[WorkerSummary]) -> list[dict[str, Any]]:
    merged: dict[str, dict[str, Any]] = {}
    for w in workers:
        for entry in w.skipped_shards:
            into = merged.setdefault(entry["url"], {**entry, "rows": 0})
            into["rows"] += entry["rows"]
    return [merged[url] for url in sorted(merged)]


@dataclass(kw_only=True)
class RunReport:
    """``report.json``: the keys are a stable interface (additions only)."""

    config: dict[str, Any]
    run_id: str
    model_spec: dict[str, Any]
    epochs: list[dict[str, Any]]
    final: dict[str, Any]
    counts: dict[str, Any]
    staleness: dict[str, Any]
    staleness_histogram: dict[str, int]
    staleness_bound: int | None
    throughput: dict[str, Any]
    cluster: dict[str, Any]
    explainers: dict[str, Any]
    skip_reasons: list[str]
    publish_ms: list[float]
    store_recreated: int
    restarts: int
    keys: list[Any]
    versions_seen: list[int]
    in_loop: dict[str, Any]
    handoff: dict[str, Any] = field(default_factory=dict)
    #: the modelled accelerator (``{"simulated": False, ...}`` on real devices)
    simulated: dict[str, Any] = field(default_factory=dict)
    paths: dict[str, str] = field(default_factory=dict)
    wall_s: float = 0.0

    def to_json(self) -> dict[str, Any]:
        return json_safe(asdict(self))


def _counts(worker_counts: dict[str, int], skipped_shards: list[dict[str, Any]],
            streamed: list[dict[str, Any]], gate_timeouts: int, trained: int) -> dict[str, Any]:
    """Planned skips (shards left out before reading) are not in the workers' counts; shards
    that failed while streaming reached the workers as placeholder rows and are."""
    return {
        "seen": worker_counts.get("rows", 0),
        "skipped": worker_counts.get("skipped", 0) + sum(s["samples"] for s in skipped_shards),
        "skipped_samples": worker_counts.get("skipped", 0),
        "skipped_shards": skipped_shards + [
            {"url": s["url"], "samples": s["rows"], "reason": s["reason"], "while": "streaming"}
            for s in streamed
        ],
        "fallback": worker_counts.get("fallback", 0),
        "occluded": worker_counts.get("occluded", 0),
        "stale": worker_counts.get("stale", 0),
        "stale_dropped": worker_counts.get("stale_dropped", 0),
        "stale_reexplained": worker_counts.get("stale_reexplained", 0),
        # explainer batches let through after waiting for the gate (a stalled stream)
        "gate_timeouts": gate_timeouts,
        "trained": trained,
    }


def assemble_report(
    *,
    config: dict[str, Any],
    run_id: str,
    model_spec: dict[str, Any],
    workers: list[WorkerSummary],
    skipped_shards: list[dict[str, Any]],
    explainer_stats: dict[str, Any],
    staleness_bound: int | None,
    cluster: dict[str, Any],
    simulated: dict[str, Any] | None = None,
) -> RunReport:
    """The one place a run's report is put together."""
    merged = merge_workers(workers)
    epochs = merged.pop("epochs")
    last = epochs[-1] if epochs else {}
    gate_timeouts = sum(int(e.get("gate_timeouts", 0)) for e in explainer_stats.values())
    trained = merged.pop("trained")
    return RunReport(
        config=config, run_id=run_id, model_spec=model_spec, epochs=epochs,
        final={k: last.get(k) for k in ("test_accuracy", "ood_accuracy", "train_accuracy", "loss")},
        counts=_counts(merged.pop("counts"), skipped_shards, merged.pop("streamed_skips"),
                       gate_timeouts, trained),
        staleness_bound=staleness_bound, cluster=cluster, explainers=explainer_stats,
        simulated=simulated or {"simulated": False}, **merged,
    )


def json_safe(value: Any) -> Any:
    """``value`` with NaN/inf replaced by ``None`` (strict JSON has no non-finite numbers)."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {str(k): json_safe(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [json_safe(v) for v in value]
    return value


def write_json(path: Path, data: Any) -> Path:
    """Write ``data`` as strict, indented JSON (numpy scalars become numbers)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(json_safe(data), indent=2, default=_plain, allow_nan=False))
    return path


def _plain(value: Any) -> Any:
    if hasattr(value, "item"):  # numpy scalar
        return json_safe(value.item())
    if hasattr(value, "tolist"):
        return json_safe(value.tolist())
    raise TypeError(f"cannot write {type(value).__name__} to JSON")


def write_report(out_dir: Path, report: RunReport | dict[str, Any]) -> Path:
    data = report.to_json() if isinstance(report, RunReport) else report
    return write_json(out_dir / "report.json", data)


def summary_table(report: RunReport) -> str:
    """A short plain-text table for the console."""
    st, tp, c = report.staleness, report.throughput, report.counts

    def fmt(v: Any) -> str:
        if v is None:
            return "-"
        return f"{v:.3f}" if isinstance(v, float) else str(v)

    rows = [
        ("mode / augment", f"{report.config['mode']} / {report.config['augment']}"),
        ("test accuracy", fmt(report.final.get("test_accuracy"))),
        ("ood accuracy", fmt(report.final.get("ood_accuracy"))),
        ("samples/s", fmt(tp["samples_per_s"])),
        ("trainer wait fraction", fmt(tp["trainer_wait_fraction"])),
        ("staleness mean/p50/p99/max", "/".join(fmt(st[k]) for k in ("mean", "p50", "p99", "max"))),
        ("seen / skipped / fallback", f"{c['seen']} / {c['skipped']} / {c['fallback']}"),
        ("restarts", fmt(report.restarts)),
        ("wall time (s)", fmt(report.wall_s)),
        ("report", report.paths.get("report", "-")),
        ("log", report.paths.get("log", "-")),
    ]
    width = max(len(k) for k, _ in rows)
    return "\n".join(f"{k:<{width}}  {v}" for k, v in rows)
