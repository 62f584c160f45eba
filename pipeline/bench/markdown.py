"""``bench.md``: the benchmark's figures as readable tables."""

from __future__ import annotations

import math
from typing import Any

__all__ = ["render"]

TARGETS = {
    "critical_path_ratio_async": ("<= 1.05", lambda v: v <= 1.05),
    "critical_path_ratio_sync": ("(reference)", None),
    "explainer_efficiency": (">= 0.9", lambda v: v >= 0.9),
    "weight_sync_ms_small": ("< 100 ms", lambda v: v < 100),
    "weight_sync_ms_resnet18": ("< 100 ms", lambda v: v < 100),
}


def _f(value: Any, digits: int = 3) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return "nan" if math.isnan(value) else f"{value:.{digits}g}"
    return str(value)


def _table(header: list[str], rows: list[list[Any]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(_f(c) for c in row) + " |" for row in rows]
    return lines + [""]


def _modes_section(modes: dict[str, dict[str, float]]) -> list[str]:
    return _table(
        ["mode", "trainer compute s/step", "samples/s", "trainer wait fraction", "first batch s"],
        [[m, v["compute_s_per_step"], v["samples_per_s"], v["trainer_wait_fraction"], v["first_batch_s"]]
         for m, v in modes.items()],
    )


def render(result: dict[str, Any]) -> str:
    """The markdown report for a ``run_bench`` result."""
    m, cfg = result["machine"], result["config"]
    lines = [
        "# reldrop bench", "",
        f"Command: `{result['command']}`", "",
        f"Machine: {m['cpus']} CPUs ({m['platform']}), Ray CPUs {_f(m['ray_cpus'])}, device {m['device']}, "
        f"torch {m['torch']}, trainer threads {m['trainer_threads']}, driver torch threads "
        f"{m['torch_threads_driver']}, CPUs per explainer actor {_f(m['explainer_cpus'])}; model "
        f"{cfg['model']}, batch {cfg['batch_size']}, {result['runs']['none'][0]['steps']} steps per run, "
        f"median over {len(result['runs']['none'])} interleaved round(s). Total {result['wall_s']:.0f} s.", "",
        "## Headline figures", "",
    ]
    rows = []
    for key, (target, ok) in TARGETS.items():
        value = result[key]
        verdict = "-" if ok is None or not math.isfinite(value) else ("met" if ok(value) else "MISSED")
        rows.append([key, value, target, verdict])
    lines += _table(["figure", "value", "target", ""], rows)

    lines += ["## 1 + 5. Trainer critical path and end to end (CPU)", "",
              "Trainer compute per step excludes waiting for data; the explainers share the "
              "same CPUs as the trainer here.", ""]
    lines += _modes_section(result["modes"])

    eff = result["efficiency"]
    lines += ["## 2. Explainer efficiency", ""]
    if "bare" in eff:
        bare = eff["bare"]
        lines += _table(
            ["measurement", "samples/s", "rows per call", "threads"],
            [["bare in-process relevance() loop", bare["samples_per_s"], bare["batch"], bare["threads"]],
             ["explainer actor in pipeline: relevance() only", eff["pipeline_relevance_samples_per_s"],
              eff["pipeline"][0]["rows_per_call"], eff["pipeline"][0]["threads"]],
             ["explainer actor in pipeline: whole batch work (no gate waits)",
              eff["pipeline_actor_samples_per_s"], "-", "-"]],
        )
        lines += [f"explainer_efficiency (relevance only) {_f(eff['explainer_efficiency'])}, "
                  f"whole batch work {_f(eff['explainer_efficiency_actor'])}; actor utilisation "
                  f"{_f(eff['pipeline'][0]['utilization'])}, gate waits {_f(eff['pipeline'][0]['gate_wait_s'])} s.", ""]
    else:
        lines += [eff.get("note", "not measured"), ""]

    lines += ["## 3. Weight sync (publish -> every explainer holds the version)", ""]
    lines += _table(
        ["model", "MB", "explainers", "publish->held median ms", "max ms", "publish call ms",
         "put ms", "fetch ms", "train step ms", "repeats"],
        [[w["model"], w["megabytes"], w["explainers"], w["sync_ms_median"], w["sync_ms_max"],
          w.get("publish_call_ms_median"), w["put_ms_median"], w.get("fetch_ms_median"),
          w.get("step_ms"), w["repeats"]] for w in result["weight_sync"].values()],
    )

    lines += ["## 4. Staleness (trainer step - model version of the row)", ""]
    lines += _table(
        ["sync every", "explainers", "mean", "p50", "p99", "max", "bound"],
        [[s["sync_every"], s["explainers"], s["staleness"]["mean"], s["staleness"]["p50"],
          s["staleness"]["p99"], s["staleness"]["max"], s["staleness_bound"]] for s in result["staleness"]],
    )

    lines += ["## 6. GPU", ""]
    gpu = result.get("gpu")
    if gpu is None:
        lines += ["not requested (`--gpu`).", ""]
    elif "skipped" in gpu:
        lines += [f"skipped: {gpu['skipped']}", ""]
    else:
        ip = gpu["in_process"]
        lines += [f"Device: {gpu['device']} (trainer on GPU, explainers on {gpu.get('explainers_on', 'cpu')}).", ""]
        lines += _table(
            ["in-process", "value"],
            [["train step s (none)", ip["step_s_none"]], ["train step s (sync, in-loop LRP)", ip["step_s_sync"]],
             ["bare relevance samples/s", ip["relevance"]["samples_per_s"]]],
        )
        if "modes" in gpu:
            lines += _modes_section(gpu["modes"])
            lines += [f"critical_path_ratio_async {_f(gpu['critical_path_ratio_async'])}, "
                      f"critical_path_ratio_sync {_f(gpu['critical_path_ratio_sync'])}", ""]
        if "pipeline_error" in gpu:
            lines += [f"pipeline runs: {gpu['pipeline_error']}", ""]
    return "\n".join(lines)
