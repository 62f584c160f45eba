"""The staleness study: how much of in-loop RelDrop's out-of-distribution gain survives when
the relevance comes from older weights, as in the async pipeline.

For every seed it trains, in this process (:mod:`reldrop.pipeline.studies.inprocess`), the
baseline (no augmentation), in-loop RelDrop (``sync``: relevance from the live weights) and
RelDrop with relevance as stale as each (bound, publish interval) pair lets it be
(:class:`~reldrop.pipeline.studies.lag.WeightLag`: explained ``bound - interval + 1`` steps
ahead with weights published every ``interval`` steps). Occlusion draws are keyed by
(seed, epoch, key), so the runs of one seed differ only in the weights that explained each
batch. The figure per setting is the *retained gain*: (OOD accuracy of lagged RelDrop - of the
baseline) / (OOD of sync RelDrop - of the baseline), means over the seeds. Writes
``staleness.json``, ``staleness.md`` and, with the plots extra, ``staleness.png``.
"""

from __future__ import annotations

import json
import statistics
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

from reldrop.pipeline.studies.inprocess import RunSpec, accuracy_of, load_splits, train_in_process
from reldrop.pipeline.studies.lag import delay_for_bound

__all__ = ["StalenessConfig", "format_staleness_table", "run_staleness_study", "summarize_staleness"]

#: the pipeline's defaults (``--sync-every 2``, gate bound 8 at equal batch sizes)
PIPELINE_DEFAULT = (8, 2)


@dataclass(frozen=True, kw_only=True)
class StalenessConfig:
    """The study on the shard root ``data`` (splits ``train``, ``val``, ``test``)."""

    data: str
    method: str = "reldrop-block"
    params: Mapping[str, Any] = field(default_factory=lambda: {"p": 1.0})
    bounds: tuple[int, ...] = (1, 2, 4, 8, 16)
    intervals: tuple[int, ...] = (1, 2, 4)
    seeds: tuple[int, ...] = (0, 1, 2)
    epochs: int = 3
    batch_size: int = 64
    limit: int | None = None
    model: str = "small-cnn"
    out: str = "runs/staleness"

    def __post_init__(self) -> None:
        if not self.method.startswith("reldrop-"):
            raise ValueError(f"method={self.method!r}; expected a relevance-guided augmentation "
                             "(reldrop-pixel, reldrop-block, reldrop-patch)")
        for name in ("bounds", "intervals", "seeds"):
            values = getattr(self, name)
            if not values or len(set(values)) != len(values) or min(values) < (0 if name == "seeds" else 1):
                raise ValueError(f"{name}={list(values)!r}; expected distinct positive integers")
        if self.epochs < 1 or self.batch_size < 1:
            raise ValueError(f"epochs={self.epochs}, batch_size={self.batch_size}; expected >= 1")

    def settings(self) -> list[tuple[int, int]]:
        """(bound, interval) pairs that can hold: a row can be one interval old."""
        return [(b, s) for s in self.intervals for b in self.bounds if b >= s - 1]


def _specs(cfg: StalenessConfig) -> dict[str, RunSpec]:
    base = RunSpec(epochs=cfg.epochs, model=cfg.model, batch_size=cfg.batch_size)
    sync = replace(base, augment=cfg.method, params=dict(cfg.params))
    specs = {"none": base, "sync": sync}
    for bound, interval in cfg.settings():
        specs[f"bound {bound}, every {interval}"] = replace(
            sync, lag=delay_for_bound(bound, interval), publish_every=interval)
    return specs


def _run(spec: RunSpec, splits: Mapping[str, Any], num_classes: int, seed: int) -> dict[str, Any]:
    start = time.perf_counter()
    info: dict[str, Any] = {}
    model, mspec = train_in_process(spec, splits["train"], num_classes=num_classes, seed=seed, info=info)
    return {"seed": seed, "val_accuracy": accuracy_of(model, splits["val"], mspec.normalization),
            "ood_accuracy": accuracy_of(model, splits["test"], mspec.normalization),
            "seconds": time.perf_counter() - start, **info}


def summarize_staleness(runs: Mapping[str, Sequence[Mapping[str, Any]]]) -> dict[str, dict[str, Any]]:
    """Per setting: mean/std OOD and val accuracy, staleness, and the retained gain (ratio of
    mean gains; ``None`` when sync RelDrop has no gain to retain)."""
    def mean(name: str, key: str) -> float:
        return statistics.fmean(r[key] for r in runs[name])

    sync_gain = mean("sync", "ood_accuracy") - mean("none", "ood_accuracy")
    out: dict[str, dict[str, Any]] = {}
    for name, records in runs.items():
        ood = [r["ood_accuracy"] for r in records]
        gain = statistics.fmean(ood) - mean("none", "ood_accuracy")
        out[name] = {
            "ood_mean": statistics.fmean(ood),
            "ood_std": statistics.stdev(ood) if len(ood) > 1 else None,
            "val_mean": mean(name, "val_accuracy"),
            "gain": gain,
            "retained": gain / sync_gain if sync_gain > 0 and name != "none" else None,
            "staleness_mean": (statistics.fmean(r["staleness_mean"] for r in records)
                               if "staleness_mean" in records[0] else 0.0),
            "staleness_max": max(r.get("staleness_max", 0) for r in records),
            "seconds_mean": mean(name, "seconds"),
        }
    return out


def format_staleness_table(summary: Mapping[str, Mapping[str, Any]]) -> str:
    """Markdown: one row per setting."""
    lines = ["| relevance | staleness mean / max (steps) | val acc. | OOD acc. | OOD gain "
             "| retained gain |", "|---|---|---|---|---|---|"]
    for name, row in summary.items():
        ood = f"{row['ood_mean']:.3f}" + (f" ± {row['ood_std']:.3f}" if row["ood_std"] is not None else "")
        retained = "–" if row["retained"] is None else f"{100 * row['retained']:.0f} %"
        label = name + (" (pipeline default)" if name == "bound {}, every {}".format(*PIPELINE_DEFAULT) else "")
        lines.append(f"| {label} | {row['staleness_mean']:.1f} / {row['staleness_max']} "
                     f"| {row['val_mean']:.3f} | {ood} | {row['gain']:+.3f} | {retained} |")
    return "\n".join(lines)


def _plot(cfg: StalenessConfig, summary: Mapping[str, Mapping[str, Any]], path: Path) -> str | None:
    try:
        from reldrop.plots import plot_lines  # noqa: PLC0415 (needs the plots extra)
    except ImportError:  # pragma: no cover - depends on the environment
        return None
    if any(row["retained"] is None for name, row in summary.items() if name != "none"):
        return None
    series = {f"publish every {s}": [(float(b), 100 * float(summary[f"bound {b}, every {s}"]["retained"]))
                                     for b, s2 in cfg.settings() if s2 == s]
              for s in cfg.intervals}
    return str(plot_lines(series, path, xlabel="staleness bound (steps)",
                          ylabel="% of sync RelDrop's OOD gain", reference=100.0,
                          title=f"{cfg.method}, {len(cfg.seeds)} seeds"))


def run_staleness_study(cfg: StalenessConfig, *, log: Callable[[str], None] = print) -> dict[str, Any]:
    """Run the study; write ``staleness.json``, ``staleness.md`` (and ``staleness.png``)."""
    from reldrop.pipeline.data.manifest import read_manifest  # noqa: PLC0415

    start = time.perf_counter()
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    manifest = read_manifest(cfg.data)
    missing = [s for s in ("train", "val", "test") if s not in manifest.splits]
    if missing:
        raise ValueError(f"{cfg.data!r} lacks split(s) {missing} (has {list(manifest.splits)}); the "
                         "study needs train, val and test (e.g. make-shards --dataset viviano-synthetic)")
    splits = load_splits(cfg.data, ("train", "val", "test"), limit=cfg.limit)
    runs: dict[str, list[dict[str, Any]]] = {}
    for name, spec in _specs(cfg).items():
        runs[name] = [_run(spec, splits, manifest.num_classes, seed) for seed in cfg.seeds]
        log(f"[staleness] {name}: OOD {statistics.fmean(r['ood_accuracy'] for r in runs[name]):.3f}")
    summary = summarize_staleness(runs)
    table = format_staleness_table(summary)
    result = {"config": {**asdict(cfg), "params": dict(cfg.params)}, "runs": runs,
              "summary": summary, "table": table, "wall_s": time.perf_counter() - start}
    result["plot"] = _plot(cfg, summary, out / "staleness.png")
    (out / "staleness.json").write_text(json.dumps(result, indent=2) + "\n")
    (out / "staleness.md").write_text(
        f"# Staleness study\n\nData `{cfg.data}`, {cfg.method} {dict(cfg.params)}, {cfg.epochs} "
        f"epoch(s), batch {cfg.batch_size}, seeds {list(cfg.seeds)}, model {cfg.model}; relevance explained "
        f"`bound - interval + 1` steps ahead with weights published every `interval` steps "
        f"(every row as stale as the bound allows). Retained gain = OOD gain over the baseline "
        f"relative to in-loop (sync) RelDrop's, means over seeds.\n\n{table}\n")
    return result
