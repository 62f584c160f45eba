"""Compare training methods on shortcut-biased data: every method over the same seeds, each final
checkpoint evaluated, then ``compare.json``, a mean ± std Markdown table and a bar plot.

A method is an augmentation run through the pipeline (``none``, ``random-erasing``,
``reldrop-pixel``, ``reldrop-block``; ``sync`` = in the training loop, ``async`` = the explainer
stage) or a trainer-side regularizer (GradMask, RRR, ActDiff, ISNet, classify-masked; see
:mod:`reldrop.regularizers`), which always trains with ``augment none`` in ``sync`` mode. Every
training runs on Ray (Ray Data + Ray Train) through :func:`reldrop.pipeline.training.driver.run_training`; with
``parallel > 1`` whole runs are Ray tasks, so a cluster trains several at once.

The figures of a run (:data:`METRICS`): in-distribution and out-of-distribution accuracy of the
final model on the full test splits (DecoyMNIST: ``test-id`` keeps the class-encoding swatch,
``test`` randomises it, Ross et al. 2017), and from :func:`reldrop.pipeline.evaluation.evaluate.evaluate_checkpoint`
on ``test-id`` with the digit masks: the area under the relevance-ordered occlusion curve
(lower = the model relies on what its relevance points at) and the share of positive relevance
inside the mask (higher = the model looks at the digit, not the swatch). Time per epoch is the
trainer's wall time after its first batch arrived (start-up excluded), divided by the epochs.
"""

from __future__ import annotations

import json
import math
import statistics
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

from reldrop.pipeline.training.config import TrainConfig

__all__ = [
    "DEFAULT_METHODS",
    "METHODS",
    "METRICS",
    "CompareConfig",
    "Method",
    "format_table",
    "run_comparison",
    "run_method",
    "summarize",
]


@dataclass(frozen=True, kw_only=True)
class Method:
    """One compared method: how :class:`TrainConfig` differs from the plain baseline."""

    name: str
    augment: str = "none"
    mode: str = "sync"
    regularizer: str = "none"

    def train_config(self, base: TrainConfig) -> TrainConfig:
        return replace(base, augment=self.augment, mode=self.mode, regularizer=self.regularizer)


def _methods() -> dict[str, Method]:
    # ``none`` has no pipeline stage, so ``none-async`` would be ``none-sync`` again.
    table = [Method(name="none-sync")]
    for augment in ("random-erasing", "reldrop-pixel", "reldrop-block"):
        table += [Method(name=f"{augment}-{mode}", augment=augment, mode=mode)
                  for mode in ("sync", "async")]
    for regularizer in ("gradmask", "rrr", "actdiff", "isnet", "classify-masked"):
        table.append(Method(name=regularizer, regularizer=regularizer))
    return {m.name: m for m in table}


#: method name -> :class:`Method`
METHODS: dict[str, Method] = _methods()
DEFAULT_METHODS: tuple[str, ...] = tuple(METHODS)

#: figure key -> column label of the table (in this order)
METRICS: dict[str, str] = {
    "id_accuracy": "in-dist. accuracy",
    "ood_accuracy": "OOD accuracy",
    "relevance_auc": "relevance-ordered occlusion AUC",
    "random_auc": "random-order occlusion AUC",
    "auc_gap": "random - relevance AUC",
    "mask_share": "mask relevance share",
    "mass50_count": "features for 50% relevance",
    "epoch_s": "wall s / epoch",
}
_PLOTTED = ("id_accuracy", "ood_accuracy", "relevance_auc", "random_auc", "mask_share")  # in [0, 1]


@dataclass(frozen=True, kw_only=True)
class CompareConfig:
    """A comparison: ``methods`` x ``seeds`` trainings on ``data`` (``None``: demo DecoyMNIST)."""

    methods: tuple[str, ...] = DEFAULT_METHODS
    seeds: tuple[int, ...] = (0, 1)
    epochs: int = 3
    limit: int | None = 2000
    eval_limit: int | None = 200
    data: str | None = None
    out: str = "runs/compare"
    parallel: int = 1
    address: str | None = None
    train_overrides: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        unknown = [m for m in self.methods if m not in METHODS]
        if unknown or not self.methods:
            raise ValueError(f"methods={list(self.methods)!r}; expected a non-empty list of {list(METHODS)}")
        if len(set(self.methods)) != len(self.methods):
            raise ValueError(f"methods={list(self.methods)!r} names a method twice")
        if not self.seeds or len(set(self.seeds)) != len(self.seeds):
            raise ValueError(f"seeds={list(self.seeds)!r}; expected distinct integers, at least one")
        if self.epochs < 1:
            raise ValueError(f"epochs={self.epochs!r}; expected an integer >= 1")
        for name in ("limit", "eval_limit"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise ValueError(f"{name}={value!r}; expected an integer >= 1 or None")
        if self.parallel < 1:
            raise ValueError(f"parallel={self.parallel!r}; expected an integer >= 1")
        self.base_train_config()  # validates train_overrides

    def urls(self) -> tuple[str, str, str]:
        """(train, in-distribution test, out-of-distribution test) shard URLs."""
        if self.data is None:
            from reldrop.pipeline.training.driver import default_data  # builds the demo data once

            return default_data(0)
        root = self.data.rstrip("/")
        return f"{root}#train", f"{root}#test-id", f"{root}#test-ood"

    def base_train_config(self, **kwargs: Any) -> TrainConfig:
        return TrainConfig(**{"epochs": self.epochs, "limit": self.limit, "address": self.address,
                              **self.train_overrides, **kwargs})

    def to_json(self) -> dict[str, Any]:
        return {**asdict(self), "methods": list(self.methods), "seeds": list(self.seeds),
                "train_overrides": dict(self.train_overrides)}


def _write_json(path: Path, value: Any) -> None:
    from reldrop.pipeline.training.report import json_safe  # NaN -> null

    path.write_text(json.dumps(json_safe(value), indent=2, allow_nan=False) + "\n")


def _finite(value: Any) -> float | None:
    if value is None:
        return None
    value = float(value)
    return value if math.isfinite(value) else None


def run_method(
    method: str, seed: int, cfg: CompareConfig, urls: tuple[str, str, str], **train_kwargs: Any
) -> dict[str, Any]:
    """Train ``method`` with ``seed``, evaluate its final checkpoint; return the run record."""
    from reldrop.pipeline.evaluation.evaluate import evaluate_checkpoint
    from reldrop.pipeline.training.driver import run_training

    out = Path(cfg.out) / "runs" / method / f"seed{seed}"
    train, test, ood = urls
    tcfg = METHODS[method].train_config(
        cfg.base_train_config(train=train, test=test, ood_test=ood, seed=seed, out=str(out),
                              **train_kwargs)
    )
    report = run_training(tcfg, verbose=False)
    evaluation = evaluate_checkpoint(report["paths"]["checkpoint"], test, out_dir=out / "evaluation",
                                     composite=tcfg.composite, limit=cfg.eval_limit, seed=seed,
                                     plots=False, model=tcfg.model)
    metrics = evaluation["datasets"]["in_distribution"]
    throughput = report["throughput"]
    started = throughput.get("first_batch_s") or 0.0
    return {
        "method": method,
        "seed": seed,
        "figures": {
            "id_accuracy": _finite(report["final"]["test_accuracy"]),
            "ood_accuracy": _finite(report["final"]["ood_accuracy"]),
            "relevance_auc": _finite(metrics["occlusion"]["relevance_auc"]),
            "random_auc": _finite(metrics["occlusion"]["random_auc"]),
            "auc_gap": _finite(metrics["occlusion"]["random_auc"] - metrics["occlusion"]["relevance_auc"]),
            "mass50_count": _finite(metrics["feature_utilization"]["mass50_count"]),
            "mask_share": _finite(metrics["feature_utilization"]["mask_share_positive"]),
            "eval_accuracy": _finite(metrics["accuracy"]),
            "epoch_s": _finite((throughput["wall_s"] - started) / tcfg.epochs),
            "samples_per_s": _finite(throughput["samples_per_s"]),
            "staleness_mean": _finite(report["staleness"]["mean"]),
        },
        "eval_n": metrics["n"],
        "epochs": report["epochs"],
        "config": tcfg.to_json(),
        "paths": {"report": report["paths"]["report"], "checkpoint": report["paths"]["checkpoint"],
                  "evaluation": str(out / "evaluation" / "evaluation.json")},
        "wall_s": report["wall_s"],
    }


def summarize(runs: Sequence[Mapping[str, Any]]) -> dict[str, dict[str, dict[str, float | int | None]]]:
    """method -> metric -> {mean, std, n} over the runs that have the figure (failed runs and
    missing figures are left out; ``std`` is the sample standard deviation, ``None`` for n < 2)."""
    grouped: dict[str, list[Mapping[str, Any]]] = {}
    for run in runs:
        grouped.setdefault(run["method"], []).append(run)
    summary: dict[str, dict[str, dict[str, float | int | None]]] = {}
    for method, group in grouped.items():
        summary[method] = {}
        for key in METRICS:
            values = [v for r in group if (v := _finite(r.get("figures", {}).get(key))) is not None]
            summary[method][key] = {
                "mean": statistics.fmean(values) if values else None,
                "std": statistics.stdev(values) if len(values) > 1 else None,
                "n": len(values),
            }
    return summary


def _cell(stats: Mapping[str, Any], digits: int) -> str:
    if stats.get("mean") is None:
        return "–"
    text = f"{stats['mean']:.{digits}f}"
    return text if stats.get("std") is None else f"{text} ± {stats['std']:.{digits}f}"


def format_table(summary: Mapping[str, Mapping[str, Mapping[str, Any]]]) -> str:
    """A Markdown table: one row per method, ``mean ± std`` per metric (times 1 decimal)."""
    header = ["method", "runs", *METRICS.values()]
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    for method, row in summary.items():
        n = max((int(s.get("n") or 0) for s in row.values()), default=0)
        cells = [_cell(row.get(key, {}), 1 if key == "epoch_s" else 3) for key in METRICS]
        lines.append("| " + " | ".join([method, str(n), *cells]) + " |")
    return "\n".join(lines)


def _markdown(cfg: CompareConfig, urls: Sequence[str], table: str, failed: Sequence[Mapping[str, Any]]) -> str:
    lines = [
        "# Method comparison",
        "",
        f"Data: train `{urls[0]}`, in distribution `{urls[1]}`, out of distribution `{urls[2]}`; "
        f"{cfg.epochs} epoch(s), training limit {cfg.limit}, seeds {list(cfg.seeds)}, occlusion "
        f"and mask share on {cfg.eval_limit or 'all'} in-distribution samples. Mean ± sample "
        "std over seeds. Lower relevance-ordered occlusion AUC = occluding what the model's "
        "relevance marks hurts more (an explanation-quality reading; RelDrop trains on that "
        "very perturbation, so read robustness from the random-order AUC); higher mask share = "
        "more relevance on the digit; more features for 50% of the relevance = the model "
        "spreads its evidence.",
        "",
        table,
    ]
    if failed:
        lines += ["", "Failed runs:", *(f"- {r['method']} seed {r['seed']}: {r['error']}" for r in failed)]
    return "\n".join(lines) + "\n"


def _plot(summary: Mapping[str, Mapping[str, Mapping[str, Any]]], path: Path) -> str | None:
    try:
        from reldrop.plots import plot_comparison_bars  # needs the plots extra

        table = {m: {METRICS[k]: row[k]["mean"] for k in _PLOTTED} for m, row in summary.items()}
        return str(plot_comparison_bars(table, path, title="mean over seeds"))
    except ImportError as err:  # pragma: no cover - depends on the environment
        import warnings

        warnings.warn(f"no comparison plot written: {err}", stacklevel=2)
        return None


def _parallel_runs(
    cfg: CompareConfig, plan: Sequence[tuple[str, int]], urls: tuple[str, str, str],
    record: Callable[[dict[str, Any]], None],
) -> None:
    """Each run as a Ray task (its trainer, reads and explainers take the resources), at most
    ``cfg.parallel`` at a time; explainer CPUs are sized from a 1/parallel share of the cluster
    so that concurrent runs cannot starve each other's reads (two deadlocks measured on 2-CPU machines)."""
    import ray

    from reldrop.pipeline.training.driver import READ_CPUS, init_ray

    init_ray(cfg.base_train_config())
    share = float(ray.cluster_resources().get("CPU", 0)) / cfg.parallel
    explainer_cpus = share - 1.0 - 3 * READ_CPUS  # a trainer, the train and two test reads
    if explainer_cpus < 0.25:
        raise ValueError(
            f"parallel={cfg.parallel} leaves {share:g} CPU per run on this cluster; each run "
            f"needs at least {1.25 + 3 * READ_CPUS:g} (use a smaller --parallel)"
        )
    task = ray.remote(num_cpus=0)(_task)
    pending: dict[Any, tuple[str, int]] = {}
    todo = list(plan)
    while todo or pending:
        while todo and len(pending) < cfg.parallel:
            method, seed = todo.pop(0)
            pending[task.remote(method, seed, cfg, urls, explainer_cpus)] = (method, seed)
        done, _ = ray.wait(list(pending), num_returns=1)
        method, seed = pending.pop(done[0])
        try:
            record(ray.get(done[0]))
        except Exception as err:  # noqa: BLE001 - one failed run must not lose the others
            record({"method": method, "seed": seed, "error": f"{type(err).__name__}: {err}"})


def _task(method: str, seed: int, cfg: CompareConfig, urls: tuple[str, str, str],
          explainer_cpus: float) -> dict[str, Any]:
    return run_method(method, seed, cfg, urls, explainer_cpus=explainer_cpus)


def run_comparison(cfg: CompareConfig, *, log: Callable[[str], None] = print) -> dict[str, Any]:
    """Run every method for every seed; write ``compare.json``, ``compare.md``, ``compare.png``.

    ``compare.json`` is rewritten after each run, so an interrupted comparison keeps what it
    finished. A failed run is recorded with its ``error`` and left out of the table.
    """
    start = time.perf_counter()
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    urls = cfg.urls()
    plan = [(method, seed) for seed in cfg.seeds for method in cfg.methods]
    runs: list[dict[str, Any]] = []
    result: dict[str, Any] = {"config": cfg.to_json(), "data": dict(zip(("train", "test", "ood_test"), urls)),
                              "methods": {m: asdict(METHODS[m]) for m in cfg.methods}, "runs": runs}

    def record(run: dict[str, Any]) -> None:
        runs.append(run)
        elapsed = time.perf_counter() - start
        prefix = f"[compare] {len(runs)}/{len(plan)} {run['method']} seed {run['seed']}"
        if "error" in run:
            log(f"{prefix}: FAILED {run['error']} ({elapsed:.0f}s elapsed)")
        else:
            f = run["figures"]
            fmt = {k: "–" if f[k] is None else f"{f[k]:.3f}" for k in METRICS}
            log(f"{prefix}: id acc {fmt['id_accuracy']} ood acc {fmt['ood_accuracy']} "
                f"occl. AUC {fmt['relevance_auc']} mask share {fmt['mask_share']} "
                f"{run['wall_s']:.0f}s ({elapsed:.0f}s elapsed)")
        result["wall_s"] = elapsed
        _write_json(out / "compare.json", result)

    if cfg.parallel > 1:
        _parallel_runs(cfg, plan, urls, record)
    else:
        for method, seed in plan:
            try:
                run = run_method(method, seed, cfg, urls)
            except Exception as err:  # noqa: BLE001 - one failed run must not lose the others
                run = {"method": method, "seed": seed, "error": f"{type(err).__name__}: {err}"}
            record(run)
    runs.sort(key=lambda r: (cfg.methods.index(r["method"]), cfg.seeds.index(r["seed"])))
    ok = [r for r in runs if "error" not in r]
    summary = summarize(ok)
    summary = {m: summary[m] for m in cfg.methods if m in summary}
    table = format_table(summary)
    failed = [r for r in runs if "error" in r]
    (out / "compare.md").write_text(_markdown(cfg, urls, table, failed))
    result["summary"] = summary
    result["failed"] = len(failed)
    result["paths"] = {"json": str(out / "compare.json"), "table": str(out / "compare.md"),
                       "plot": _plot(summary, out / "compare.png") if summary else None}
    result["table"] = table
    result["wall_s"] = time.perf_counter() - start
    _write_json(out / "compare.json", result)
    return result
