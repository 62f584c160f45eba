"""Run reports: staleness statistics, counts, throughput, and the summary table."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path
from typing import Any

__all__ = ["merge_workers", "staleness_stats", "summary_table", "write_report"]


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


def merge_workers(workers: list[dict[str, Any]]) -> dict[str, Any]:
    """Combine the per-worker summaries the trainer reports into run-level figures."""
    hist: Counter[int] = Counter()
    counts: Counter[str] = Counter()
    reasons: list[str] = []
    for w in workers:
        hist.update({int(k): v for k, v in w["staleness"].items()})
        counts.update(w["counts"])
        reasons.extend(w["skip_reasons"])
    lead = workers[0]
    samples = sum(sum(e["samples"] for e in w["epochs"]) for w in workers)
    wall = max(w["wall_s"] for w in workers)
    wait = sum(w["wait_s"] for w in workers) / len(workers)
    compute = sum(w["compute_s"] for w in workers) / len(workers)
    steps = lead["epochs"][-1]["steps"] if lead["epochs"] else 0
    return {
        "epochs": lead["epochs"],
        "staleness_histogram": {str(k): hist[k] for k in sorted(hist)},
        "staleness": staleness_stats(dict(hist)),
        "counts": dict(counts),
        "skip_reasons": reasons,
        "throughput": {
            "samples_per_s": samples / wall if wall else 0.0,
            "trainer_wait_fraction": wait / wall if wall else 0.0,
            "compute_s_per_step": compute / steps if steps else None,
            "wall_s": wall,
            "first_batch_s": lead["first_batch_s"],
        },
        "publish_ms": lead["publish_ms"],
        "store_recreated": lead["store_recreated"],
        "keys": [w["keys"] for w in workers],
        "versions_seen": sorted({v for w in workers for v in w["versions"]}),
    }


def write_report(out_dir: Path, report: dict[str, Any]) -> Path:
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / "report.json"
    path.write_text(json.dumps(report, indent=2, default=float))
    return path


def summary_table(report: dict[str, Any]) -> str:
    """A short plain-text table for the console."""
    final = report["final"]
    st = report["staleness"]
    tp = report["throughput"]
    c = report["counts"]

    def fmt(v: Any) -> str:
        if v is None:
            return "-"
        return f"{v:.3f}" if isinstance(v, float) else str(v)

    rows = [
        ("mode / augment", f"{report['config']['mode']} / {report['config']['augment']}"),
        ("test accuracy", fmt(final.get("test_accuracy"))),
        ("ood accuracy", fmt(final.get("ood_accuracy"))),
        ("samples/s", fmt(tp["samples_per_s"])),
        ("trainer wait fraction", fmt(tp["trainer_wait_fraction"])),
        ("staleness mean/p50/p99/max", "/".join(fmt(st[k]) for k in ("mean", "p50", "p99", "max"))),
        ("seen / skipped / fallback", f"{c['seen']} / {c['skipped']} / {c['fallback']}"),
        ("wall time (s)", fmt(report["wall_s"])),
        ("report", report["paths"]["report"]),
    ]
    width = max(len(k) for k, _ in rows)
    return "\n".join(f"{k:<{width}}  {v}" for k, v in rows)
