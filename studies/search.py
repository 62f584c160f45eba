"""Hyperparameter search per method, in process: the comparison the papers make.

Every method gets its own grid (:data:`GRIDS`: weights on a log scale for the regularizers,
RelDrop's p / alpha / beta), every grid point trains with every seed
(:func:`studies.inprocess.train_in_process`), and the winner is chosen on the
**in-distribution validation split only** (``val``; the out-of-distribution ``test`` is never
looked at for selection). Because a shortcut makes validation accuracy saturate for every
setting, the rule is: among the grid points whose mean validation accuracy is within ``tol``
of the best, the *strongest* regularization (grids run from weak to strong). The winner's
runs are then measured on ``test-id`` and ``test-ood`` and evaluated
(:func:`reldrop.evaluation.evaluate` on ``test-id``: relevance- and random-order occlusion AUC
and their difference, mask relevance share, features holding 50 % of the relevance mass).
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from reldrop.jobs._args import name_list, parse_with_config
from reldrop.optimizers import OPTIMIZERS
from reldrop.pipeline.data.storage import configure_storage
from studies._cli import json_object, record_command, run_study, study_parser, write_table
from studies.inprocess import (
    RunSpec,
    SplitData,
    load_study_data,
    mean_std,
    measure_run,
    occlusion_figures,
)

__all__ = ["GRIDS", "SEARCH_METRICS", "SearchConfig", "format_search_table", "grid_points",
           "build_parser", "main", "parse_args", "run_search", "select"]

Point = dict[str, Any]


def _reldrop_grid(full: bool) -> list[Point]:
    if not full:
        return [{"p": 0.5}, {"p": 1.0}]
    return [{"p": p, "alpha": a, "beta": b} for p in (0.5, 1.0) for a in (0.3, 0.5)
            for b in (0.5, 0.7)]


def _lams(*values: float) -> list[Point]:
    return [{"lam": v} for v in values]


#: method -> (quick grid, full grid); each point a RunSpec's lam / params, weak to strong. The
#: penalties' windows between "keeps the shortcut" and "collapses to chance" are about half a
#: decade wide (measured with Adam 1e-3 on both shortcut tasks: GradMask 0.1-0.3, ActDiff
#: 0.03-0.3, RRR 10-100 on decoy-mnist-strong), so their grids step by ~3x.
GRIDS: dict[str, tuple[list[Point], list[Point]]] = {
    "none": ([{}], [{}]),
    "gradmask": (_lams(0.01, 0.03, 0.1, 0.3), _lams(1e-3, 3e-3, 0.01, 0.03, 0.1, 0.3, 1.0)),
    "rrr": (_lams(10.0, 100.0, 1000.0, 1e4),
            _lams(1.0, 3.0, 10.0, 30.0, 100.0, 300.0, 1000.0, 3000.0, 1e4, 3e4)),
    "actdiff": (_lams(0.01, 0.03, 0.1, 0.3), _lams(3e-3, 0.01, 0.03, 0.1, 0.3, 1.0)),
    "isnet": ([{"lam": 0.7}], [{"lam": v} for v in (0.3, 0.5, 0.7, 0.9)]),
    "classify-masked": ([{}], [{}]),
    "reldrop-pixel": (_reldrop_grid(False), _reldrop_grid(True)),
    "reldrop-block": ([{"p": 0.5}, {"p": 1.0}], [{"p": p} for p in (0.3, 0.5, 1.0)]),
    "reldrop-patch": ([{"p": 0.5}, {"p": 1.0}], [{"p": p} for p in (0.3, 0.5, 1.0)]),
    "random-erasing": ([{"p": 0.5}, {"p": 1.0}], [{"p": p} for p in (0.3, 0.5, 1.0)]),
}
_AUGMENTS = ("reldrop-pixel", "reldrop-block", "reldrop-patch", "random-erasing")

#: figure key -> column label
SEARCH_METRICS: dict[str, str] = {
    "val_accuracy": "val acc. (selection)",
    "id_accuracy": "test-id acc.",
    "ood_accuracy": "OOD acc.",
    "relevance_auc": "relevance-order AUC",
    "random_auc": "random-order AUC",
    "auc_gap": "random - relevance AUC",
    "mask_share": "mask relevance share",
    "mass50_count": "features for 50% relevance",
}


@dataclass(frozen=True, kw_only=True)
class SearchConfig:
    """A search: ``methods`` x grid (``quick`` or full) x ``seeds`` on the shard root ``data``
    (splits ``train``, ``val``, ``test-id``, ``test-ood``; older names accepted)."""

    data: str
    methods: tuple[str, ...] = tuple(GRIDS)
    quick: bool = True
    seeds: tuple[int, ...] = (0, 1)
    epochs: int = 3
    limit: int | None = None
    eval_limit: int = 200
    tol: float = 0.01
    model: str = "small-cnn"
    #: every run's optimizer and learning rate (see :class:`RunSpec`): Adam, as the references
    #: of the gradient penalties train (with SGD 0.05 they collapsed to chance, README)
    optimizer: str = "adam"
    lr: float = 1e-3
    batch_size: int = 64
    out: str = "runs/search"
    #: method -> grid replacing the built-in one (e.g. a narrower range found by a first search)
    grids: Mapping[str, Sequence[Point]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        unknown = [m for m in self.methods if m not in GRIDS]
        if unknown or not self.methods:
            raise ValueError(f"methods={list(self.methods)!r}; expected names from {list(GRIDS)}")
        if not self.seeds or len(set(self.seeds)) != len(self.seeds):
            raise ValueError(f"seeds={list(self.seeds)!r}; expected distinct integers")
        if self.epochs < 1 or self.eval_limit < 1 or (self.limit is not None and self.limit < 1):
            raise ValueError("epochs, eval_limit and limit must be >= 1")
        # one line naming a wrong optimizer, lr or batch size, up front
        RunSpec(optimizer=self.optimizer, lr=self.lr, batch_size=self.batch_size)
        if not 0 <= self.tol < 1:
            raise ValueError(f"tol={self.tol}; expected in [0, 1)")
        bad = [m for m, g in self.grids.items() if m not in GRIDS or not g]
        if bad:
            raise ValueError(f"grids for {bad}: expected non-empty grids of methods in {list(GRIDS)}")


def grid_points(method: str, quick: bool, grids: Mapping[str, Sequence[Point]] | None = None) -> list[Point]:
    """The grid of ``method``: ``grids[method]`` if given, else the quick or full one."""
    if grids and method in grids:
        return [dict(p) for p in grids[method]]
    return GRIDS[method][0 if quick else 1]


def _spec(method: str, point: Point, cfg: SearchConfig) -> RunSpec:
    params = {k: v for k, v in point.items() if k != "lam"}
    method_args: dict[str, Any] = (
        {"augment": method} if method in _AUGMENTS
        else {"regularizer": method, "lam": point.get("lam")}
    )
    return RunSpec(**method_args, params=params, epochs=cfg.epochs, model=cfg.model,
                   optimizer=cfg.optimizer, lr=cfg.lr, batch_size=cfg.batch_size)


def select(points: Sequence[Mapping[str, Any]], tol: float) -> int:
    """Index of the winner: the last (strongest) point whose mean ``val_accuracy`` is within
    ``tol`` of the best (validation only; never the OOD split)."""
    scores = [statistics.fmean(p["val_accuracy"]) for p in points]
    best = max(scores)
    return max(i for i, s in enumerate(scores) if s >= best - tol)


def _run_point(
    method: str, point: Point, cfg: SearchConfig, splits: Mapping[str, SplitData], num_classes: int,
) -> tuple[dict[str, Any], list[tuple[nn.Module, Any]]]:
    record: dict[str, Any] = {"point": point, "val_accuracy": [], "id_accuracy": [],
                              "ood_accuracy": [], "seconds": []}
    models = []
    for seed in cfg.seeds:
        model, spec, scores = measure_run(_spec(method, point, cfg), splits,
                                          num_classes=num_classes, seed=seed)
        for key, value in scores.items():
            record[key].append(value)
        models.append((model, spec))
    return record, models


def _search_method(
    method: str, cfg: SearchConfig, splits: Mapping[str, SplitData], num_classes: int,
    log: Callable[[str], None],
) -> dict[str, Any]:
    points, best_models = [], None
    best_index = -1
    for point in grid_points(method, cfg.quick, cfg.grids):
        record, models = _run_point(method, point, cfg, splits, num_classes)
        points.append(record)
        log(f"[search] {method} {point or '(no parameters)'}: val "
            f"{statistics.fmean(record['val_accuracy']):.3f} (OOD, not used for selection: "
            f"{statistics.fmean(record['ood_accuracy']):.3f}) {sum(record['seconds']):.0f}s")
        index = select(points, cfg.tol)
        if index != best_index:  # keep only the current winner's models
            best_index, best_models = index, models
    assert best_models is not None
    winner = points[best_index]
    evaluations = [occlusion_figures(m, s, splits["test-id"], cfg.eval_limit, seed)
                   for (m, s), seed in zip(best_models, cfg.seeds, strict=True)]
    figures = {k: winner[k] for k in ("val_accuracy", "id_accuracy", "ood_accuracy")}
    for key in ("relevance_auc", "random_auc", "auc_gap", "mask_share", "mass50_count"):
        figures[key] = [e[key] for e in evaluations]
    return {"method": method, "winner": winner["point"], "figures": figures, "grid": points}


def _setting(value: Any) -> str:
    """A grid value for the table: numbers short (``1e+04``, ``0.3``), options as they are."""
    return f"{value:g}" if isinstance(value, (int, float)) and not isinstance(value, bool) else str(value)


def format_search_table(results: Sequence[Mapping[str, Any]]) -> str:
    """Markdown: one row per method, its winning setting, mean ± std over seeds per metric."""
    header = ["method", "winner (selected on val)", *SEARCH_METRICS.values()]
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    for r in results:
        cells = []
        for key in SEARCH_METRICS:
            s = mean_std(r["figures"][key])
            digits = 1 if key == "mass50_count" else 3
            text = "–" if s["mean"] is None else f"{s['mean']:.{digits}f}"
            if s["std"] is not None:
                text += f" ± {s['std']:.{digits}f}"
            cells.append(text)
        winner = ", ".join(f"{k}={_setting(v)}" for k, v in r["winner"].items()) or "–"
        lines.append("| " + " | ".join([r["method"], winner, *cells]) + " |")
    return "\n".join(lines)


def run_search(cfg: SearchConfig, *, log: Callable[[str], None] = print) -> dict[str, Any]:
    """Search every method; write ``search.json`` (after each method) and ``search.md``."""
    start = time.perf_counter()
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    splits, num_classes = load_study_data(cfg.data, limit=cfg.limit, study="search")
    torch.set_num_threads(max(1, torch.get_num_threads()))
    result: dict[str, Any] = {"config": {**asdict(cfg), "methods": list(cfg.methods),
                                         "seeds": list(cfg.seeds),
                                         "grids": {k: list(v) for k, v in cfg.grids.items()}},
                              "sizes": {k: len(v) for k, v in splits.items()}, "methods": []}
    for method in cfg.methods:
        result["methods"].append(_search_method(method, cfg, splits, num_classes, log))
        result["wall_s"] = time.perf_counter() - start
        (out / "search.json").write_text(json.dumps(result, indent=2) + "\n")
    table = format_search_table(result["methods"])
    grid = "quick" if cfg.quick else "full"
    (out / "search.md").write_text(
        f"# Method comparison with per-method search\n\nData `{cfg.data}` ({result['sizes']}); "
        f"{grid} grid, {cfg.epochs} epoch(s), batch {cfg.batch_size}, {cfg.optimizer} at lr "
        f"{cfg.lr:g}, "
        f"seeds {list(cfg.seeds)}, model {cfg.model}; "
        f"winner = strongest setting within {cfg.tol} of the best mean validation accuracy "
        f"(in distribution; OOD never used); occlusion and relevance metrics on "
        f"{cfg.eval_limit} test-id samples. Mean ± std over seeds.\n\n{table}\n")
    result["table"] = table
    result["wall_s"] = time.perf_counter() - start
    (out / "search.json").write_text(json.dumps(result, indent=2) + "\n")
    return result


# --- command line: python -m studies.search ----------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    p = study_parser("search", __doc__ or "", out="runs/search")
    p.add_argument("--methods", type=name_list(lambda: GRIDS), default=list(GRIDS),
                   help="comma-separated method names")
    p.add_argument("--full", action="store_true", help="the full grids instead of the quick ones")
    p.add_argument("--tol", type=float, default=0.01,
                   help="the strongest setting within TOL of the best val accuracy wins")
    p.add_argument("--optimizer", choices=OPTIMIZERS.names(), default="adam",
                   help="optimizer of every run (adam: as the gradient penalties' reference "
                   "code; sgd: momentum 0.9, weight decay 5e-4)")
    p.add_argument("--lr", type=float, default=1e-3, help="learning rate of every run")
    p.add_argument("--grid", action="append", default=[], metavar="METHOD=V1,V2",
                   help="replace METHOD's grid by these values (lambda for a regularizer, p for "
                   "an augmentation); repeatable")
    p.add_argument("--options", action="append", default=[], metavar="METHOD=JSON",
                   help="add these method options to every grid point of METHOD, e.g. "
                   "gradmask='{\"form\": \"original\"}'; repeatable")
    return p


def _grids(parser: argparse.ArgumentParser, items: Sequence[str]) -> dict[str, list[Point]]:
    grids: dict[str, list[Point]] = {}
    for item in items:
        method, _, values = item.partition("=")
        key = "lam" if method not in _AUGMENTS else "p"
        try:
            grids[method] = [{key: float(v)} for v in values.split(",") if v.strip()]
        except ValueError:
            parser.error(f"--grid {item!r}: expected METHOD=V1,V2 with numbers")
        if method not in GRIDS or not grids[method]:
            parser.error(f"--grid {item!r}: expected METHOD=V1,V2 with METHOD in {list(GRIDS)}")
    return grids


def _with_options(parser: argparse.ArgumentParser, grids: dict[str, list[Point]],
                  items: Sequence[str], quick: bool) -> dict[str, list[Point]]:
    """``grids`` with each ``--options METHOD=JSON`` of ``items`` merged into every point of
    METHOD's grid (the given one or the built-in quick / full one)."""
    grids = dict(grids)
    for item in items:
        method, _, text = item.partition("=")
        if method not in GRIDS:
            parser.error(f"--options {item!r}: expected METHOD=JSON with METHOD in {list(GRIDS)}")
        try:
            options = json_object(text)
        except argparse.ArgumentTypeError as err:
            parser.error(f"--options {method}=...: {err}")
        grids[method] = [{**point, **options} for point in grid_points(method, quick, grids)]
    return grids


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = build_parser()
    args = parse_with_config(parser, argv)
    record_command("search", args, argv)
    args.grid = _with_options(parser, _grids(parser, args.grid), args.options,
                              quick=not args.full)
    return args


def main(args: argparse.Namespace) -> int:
    configure_storage(args.storage_options)
    cfg = SearchConfig(
        data=args.data, methods=tuple(args.methods), quick=not args.full,
        seeds=tuple(range(args.seeds)), epochs=args.epochs, limit=args.limit,
        eval_limit=args.eval_limit, tol=args.tol, model=args.model, out=args.out,
        grids=args.grid, optimizer=args.optimizer, lr=args.lr, batch_size=args.batch_size,
    )
    result = run_search(cfg, log=lambda line: print(line, flush=True))
    print(result["table"])
    write_table(args.table, Path(args.out) / "search.md", args.command)
    print(f"wrote {args.out}/search.json, {args.out}/search.md in {result['wall_s']:.0f}s")
    return 0


if __name__ == "__main__":
    raise SystemExit(run_study("search", parse_args, main))
