"""The staleness study: how much of in-loop RelDrop's out-of-distribution gain survives when
the relevance comes from older weights, as in the async pipeline.

For every seed it trains, in this process (:mod:`studies.inprocess`), the
baseline (no augmentation), in-loop RelDrop (``sync``: relevance from the live weights) and
RelDrop with relevance as stale as each (bound, publish interval) pair lets it be
(:class:`~studies.lag.WeightLag`: explained ``bound - interval + 1`` steps
ahead with weights published every ``interval`` steps). Occlusion draws are keyed by
(seed, epoch, key), so the runs of one seed differ only in the weights that explained each
batch. The figure per setting is the *retained gain*: (figure of lagged RelDrop - of the
baseline) / (figure of sync RelDrop - of the baseline), means over the seeds, for the OOD
accuracy and for the relevance-ordered occlusion AUC (RelDrop's robustness claim). A direct,
low-noise reading beside it: the IoU of each lagged batch's drop masks with the masks the live
weights would have given (same keyed draws). Writes
``staleness.json``, ``staleness.md`` and, with the plots extra, ``staleness.png``.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

from reldrop.jobs._args import parse_with_config
from reldrop.pipeline.data.storage import configure_storage
from studies._cli import int_list, json_object, record_command, run_study, study_parser, write_table
from studies.inprocess import (
    RunSpec,
    load_study_data,
    mean_std,
    measure_run,
    occlusion_figures,
)
from studies.lag import delay_for_bound

__all__ = ["StalenessConfig", "build_parser", "format_staleness_table", "main", "parse_args",
           "run_staleness_study", "summarize_staleness"]

#: the pipeline's defaults (``--sync-every 2``, gate bound 8 at equal batch sizes)
PIPELINE_DEFAULT = (8, 2)


@dataclass(frozen=True, kw_only=True)
class StalenessConfig:
    """The study on the shard root ``data`` (splits ``train``, ``val``, ``test``)."""

    data: str
    method: str = "reldrop-pixel"
    params: Mapping[str, Any] = field(default_factory=dict)
    bounds: tuple[int, ...] = (1, 2, 4, 8, 16)
    intervals: tuple[int, ...] = (1, 2, 4)
    seeds: tuple[int, ...] = (0, 1, 2)
    epochs: int = 3
    batch_size: int = 64
    limit: int | None = None
    eval_limit: int = 200
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
            sync, lag=delay_for_bound(bound, interval), publish_every=interval, agreement=True)
    return specs


#: the figures whose gain over the baseline the study follows -> table label
GAINS: dict[str, str] = {"ood_accuracy": "OOD acc.",
                         "relevance_auc": "relevance-order occlusion AUC"}


def _run(spec: RunSpec, splits: Mapping[str, Any], num_classes: int, seed: int,
         eval_limit: int) -> dict[str, Any]:
    start = time.perf_counter()
    info: dict[str, Any] = {}
    model, mspec, scores = measure_run(spec, splits, num_classes=num_classes, seed=seed, info=info)
    figures = occlusion_figures(model, mspec, splits["test-id"], eval_limit, seed)
    return {"seed": seed, **scores, "relevance_auc": figures["relevance_auc"],
            "random_auc": figures["random_auc"], "seconds": time.perf_counter() - start, **info}


def _noise(values: Sequence[float], base: Sequence[float]) -> float:
    """Two standard errors of a difference of means (0 with a single seed)."""
    if len(values) < 2 or len(base) < 2:
        return 0.0
    return 2 * (statistics.variance(values) / len(values) + statistics.variance(base) / len(base)) ** 0.5


def summarize_staleness(runs: Mapping[str, Sequence[Mapping[str, Any]]]) -> dict[str, dict[str, Any]]:
    """Per setting and :data:`GAINS` figure: mean, std, gain over the baseline and the retained
    gain (ratio of mean gains to sync RelDrop's). The retained gain is ``None`` where sync
    RelDrop's gain is not above two standard errors: a ratio to noise would mean nothing."""
    reference = {}  # per figure: baseline mean, sync gain, whether that gain is above noise
    for key in GAINS:
        base, sync = [r[key] for r in runs["none"]], [r[key] for r in runs["sync"]]
        gain = statistics.fmean(sync) - statistics.fmean(base)
        reference[key] = (statistics.fmean(base), gain, gain > 0 and gain > _noise(sync, base))
    out: dict[str, dict[str, Any]] = {}
    for name, records in runs.items():
        row: dict[str, Any] = {
            "val_mean": statistics.fmean(r["val_accuracy"] for r in records),
            "staleness_mean": statistics.fmean(r.get("staleness_mean", 0.0) for r in records),
            "staleness_max": max(r.get("staleness_max", 0) for r in records),
            "mask_iou": statistics.fmean(r.get("mask_iou", 1.0) for r in records),
            "seconds_mean": statistics.fmean(r["seconds"] for r in records),
        }
        for key, (base_mean, sync_gain, real) in reference.items():
            values = [r[key] for r in records]
            mean = statistics.fmean(values)
            row[key] = {"mean": mean, "std": mean_std(values)["std"], "gain": mean - base_mean,
                        "sync_gain_above_noise": real,
                        "retained": (mean - base_mean) / sync_gain if real and name != "none" else None}
        out[name] = row
    return out


def format_staleness_table(summary: Mapping[str, Mapping[str, Any]]) -> str:
    """Markdown: one row per setting; per :data:`GAINS` figure mean ± std and retained gain."""
    head = ["relevance", "staleness mean / max (steps)", "drop-mask IoU with live weights",
            "val acc."]
    for label in GAINS.values():
        head += [label, "retained gain"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    default = "bound {}, every {}".format(*PIPELINE_DEFAULT)
    for name, row in summary.items():
        cells = [name + (" (pipeline default)" if name == default else ""),
                 f"{row['staleness_mean']:.1f} / {row['staleness_max']}", f"{row['mask_iou']:.3f}",
                 f"{row['val_mean']:.3f}"]
        for key in GAINS:
            fig = row[key]
            cells.append(f"{fig['mean']:.3f}" + (f" ± {fig['std']:.3f}" if fig["std"] is not None else ""))
            cells.append("–" if fig["retained"] is None else f"{100 * fig['retained']:.0f} %")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _plot(cfg: StalenessConfig, summary: Mapping[str, Mapping[str, Any]], path: Path) -> str | None:
    try:
        from reldrop.plots import plot_lines  # needs the plots extra
    except ImportError:  # pragma: no cover - depends on the environment
        return None
    series = {f"mask IoU, publish every {interval}": [
        (float(b), 100 * float(summary[f"bound {b}, every {s}"]["mask_iou"]))
        for b, s in cfg.settings() if s == interval] for interval in cfg.intervals}
    for key, label in GAINS.items():
        if summary["sync"][key]["retained"] is None:
            continue  # sync RelDrop's gain is within noise: nothing to retain
        for interval in cfg.intervals:
            series[f"{label} gain, publish every {interval}"] = [
                (float(b), 100 * float(summary[f"bound {b}, every {s}"][key]["retained"]))
                for b, s in cfg.settings() if s == interval]
    return str(plot_lines(series, path, xlabel="staleness bound (steps)",
                          ylabel="% (IoU with live-weight masks; kept gain)", reference=100.0,
                          title=f"{cfg.method}, {len(cfg.seeds)} seeds"))


def run_staleness_study(cfg: StalenessConfig, *, log: Callable[[str], None] = print) -> dict[str, Any]:
    """Run the study; write ``staleness.json``, ``staleness.md`` (and ``staleness.png``)."""
    start = time.perf_counter()
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    splits, num_classes = load_study_data(cfg.data, limit=cfg.limit, study="staleness study")
    runs: dict[str, list[dict[str, Any]]] = {}
    for name, spec in _specs(cfg).items():
        runs[name] = [_run(spec, splits, num_classes, seed, cfg.eval_limit)
                      for seed in cfg.seeds]
        log(f"[staleness] {name}: " + ", ".join(
            f"{label} {statistics.fmean(r[key] for r in runs[name]):.3f}" for key, label in GAINS.items()))
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
        f"(every row as stale as the bound allows). Drop-mask IoU: each lagged batch is also "
        f"occluded with the live weights (same keyed draws, not trained on) and the two masks "
        f"compared. Retained gain = gain over the baseline "
        f"relative to in-loop (sync) RelDrop's, means over seeds ('–' where sync RelDrop's own "
        f"gain is within two standard errors of the baseline: nothing to retain); occlusion AUC on "
        f"{cfg.eval_limit} test-id samples (higher: more robust to removing what the model's "
        f"relevance ranks first).\n\n{table}\n")
    return result


# --- command line: python -m studies.staleness -------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    p = study_parser("staleness", __doc__ or "", out="runs/staleness")
    p.add_argument("--method", default="reldrop-pixel",
                   choices=("reldrop-pixel", "reldrop-block", "reldrop-patch"),
                   help="the relevance-guided augmentation studied")
    p.add_argument("--params", type=json_object, default={},
                   help="its settings as a JSON object (default: its own defaults)")
    p.add_argument("--bounds", type=int_list, default=[1, 2, 4, 8, 16],
                   help="staleness bounds in trainer steps")
    p.add_argument("--intervals", type=int_list, default=[1, 2, 4],
                   help="weight publish intervals in trainer steps")
    return p


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    args = parse_with_config(build_parser(), argv)
    record_command("staleness", args, argv)
    return args


def main(args: argparse.Namespace) -> int:
    configure_storage(args.storage_options)
    cfg = StalenessConfig(
        data=args.data, method=args.method, params=args.params, bounds=tuple(args.bounds),
        intervals=tuple(args.intervals), seeds=tuple(range(args.seeds)), epochs=args.epochs,
        batch_size=args.batch_size, limit=args.limit, eval_limit=args.eval_limit, model=args.model,
        out=args.out,
    )
    result = run_staleness_study(cfg, log=lambda line: print(line, flush=True))
    print(result["table"])
    write_table(args.table, Path(args.out) / "staleness.md", args.command)
    print(f"wrote {args.out}/staleness.json, staleness.md"
          + (", staleness.png" if result["plot"] else "") + f" in {result['wall_s']:.0f}s")
    return 0


if __name__ == "__main__":
    raise SystemExit(run_study("staleness", parse_args, main))
