"""``run_training``: wire shards, the explainer stage, the weight store and Ray Train together.

This is what ``reldrop train`` calls. Resources per role come from :mod:`.scaling`; the worker
loop is :mod:`.worker`; the report is assembled in :mod:`.report`.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from reldrop.checkpoint import ModelSpec
from reldrop.normalization import Normalization
from reldrop.pipeline.data.stream import DataPlan, plan_split, read_split
from reldrop.pipeline.explanation.stage import StageConfig
from reldrop.pipeline.interrupts import after_ray_init, run_interruptible
from reldrop.pipeline.preflight import check_training_run
from reldrop.pipeline.training.config import DEFAULT_DATA_DIR, TrainConfig
from reldrop.pipeline.training.console import run_console
from reldrop.pipeline.training.ray_results import clear_previous_runs
from reldrop.pipeline.training.report import (
    WORKERS_FILE,
    RunReport,
    WorkerSummary,
    assemble_report,
    summary_table,
    write_report,
)
from reldrop.pipeline.training.scaling import READ_CPUS, Resources, plan_resources

__all__ = [
    "DEMO_DATASET", "READ_CPUS", "default_data", "init_ray", "run_training", "train_set_names",
]

DEMO_DATASET = "decoy-mnist"
#: everything a run's processes print beyond its own lines (see :mod:`.console`)
LOG_FILE = "run.log"


def default_data(seed: int = 0) -> tuple[str, str, str]:
    """Build (once) the demo DecoyMNIST shards in the cache dir; return train, test, OOD URLs."""
    from reldrop.pipeline.data.datasets import ensure_dataset

    root = str(DEFAULT_DATA_DIR / f"{DEMO_DATASET}-seed{seed}")
    ensure_dataset(DEMO_DATASET, root, seed=seed, progress=True)
    return f"{root}#train", f"{root}#test-id", f"{root}#test-ood"


def _spec(cfg: TrainConfig, plan: DataPlan) -> ModelSpec:
    """Model spec from the manifest; per-channel mean/std estimated from the first samples."""
    from reldrop.pipeline.data.read import iter_samples

    m = plan.manifest
    if m.modality == "points":
        return ModelSpec(name=cfg.model, in_channels=int(m.input_shape[1]), num_classes=m.num_classes,
                         normalization=Normalization(mean=(0.0,), std=(1.0,)))
    images = []
    for i, sample in enumerate(iter_samples(plan, on_error="skip")):
        images.append(sample["image"])
        if i >= 511:
            break
    return ModelSpec(name=cfg.model, in_channels=int(m.input_shape[0]), num_classes=m.num_classes,
                     normalization=Normalization.estimate(np.stack(images)))


def _stage(
    cfg: TrainConfig, ds: Any, spec: ModelSpec, run_id: str, res: Resources, epoch: int
) -> Any:
    """Append the model-free stage (random baselines, precomputed relevance); async RelDrop
    explains in the trainers' hand-off instead (:func:`_start_explainers`)."""
    from reldrop.pipeline.explanation.api import append_stage, pool_strategy

    if not cfg.has_stage or cfg.needs_explainer:
        return ds
    stage = _stage_config(cfg, spec, run_id, res, epoch=epoch)
    return append_stage(
        ds, stage, batch_size=cfg.stage_batch_size,
        compute=pool_strategy(1, cpus=res.explainer_cpus, gpus=res.explainer_gpus),
        cpus=res.explainer_cpus, gpus=res.explainer_gpus,
        resources={cfg.explainer_resource: 1} if cfg.explainer_resource else None,
    )


def _stage_config(cfg: TrainConfig, spec: ModelSpec, run_id: str, res: Resources,
                  epoch: int = 0) -> StageConfig:
    return StageConfig(
        run_id=run_id, spec=spec.to_json(), occlusion=cfg.occlusion(), composite=cfg.composite,
        use_model=cfg.needs_explainer,  # precomputed relevance arrives as a joined column
        threads=max(1, int(round(res.explainer_cpus))), seed=cfg.seed,
        device="cuda" if res.explainer_gpus > 0 else "cpu", key_column="key", epoch=epoch,
    )


def _explainer_count(run: _Run) -> int:
    """Explainer actors of the run: ``--explainers``, or for ``auto`` what the free resources
    hold (at least one per trainer)."""
    if not run.cfg.needs_explainer:
        return 0
    return max(run.res.explainers_max, run.cfg.trainers)


def _start_explainers(run: _Run) -> list[Any]:
    """The run's explainer actors, started once (they load while Ray Train starts)."""
    from reldrop.pipeline.explanation.pool import start_explainers

    if not run.cfg.needs_explainer:
        return []
    cfg, res = run.cfg, run.res
    return start_explainers(
        run.run_id, _stage_config(cfg, run.spec, run.run_id, res), count=_explainer_count(run),
        cpus=res.explainer_cpus, gpus=res.explainer_gpus,
        resources={cfg.explainer_resource: 1} if cfg.explainer_resource else None,
        device=cfg.simulated_device(),
    )


def init_ray(cfg: TrainConfig) -> None:
    """Join ``cfg.address`` or start a local Ray for this process (no-op when initialised);
    its workers get this process's storage settings (not credentials) in their environment."""
    import ray

    from reldrop.pipeline.data.storage import worker_env

    os.environ.setdefault("RAY_TRAIN_V2_ENABLED", "1")
    # Ray Train copies worker prints into its logger and, where the worker's stdout is already
    # redirected, prints them again: every progress line twice. Print once.
    os.environ.setdefault("RAY_TRAIN_ENABLE_PRINT_PATCH", "0")
    if ray.is_initialized():
        return
    runtime_env: dict[str, Any] = {
        "worker_process_setup_hook": "reldrop.pipeline.training.logs.quiet_worker"}
    env_vars = worker_env()
    if env_vars:
        runtime_env["env_vars"] = env_vars
    if cfg.address is None:  # a local cluster for this process only
        ray.init(num_cpus=cfg.num_cpus, num_gpus=cfg.num_gpus, include_dashboard=False,
                 configure_logging=False, runtime_env=runtime_env)
    else:
        ray.init(address=cfg.address, runtime_env=runtime_env)
    after_ray_init(local=cfg.address is None)  # our SIGTERM handler back; kill -9 watchdog
    ray.data.DataContext.get_current().enable_progress_bars = False
    _warm_autoscaling_coordinator()


def _warm_autoscaling_coordinator() -> None:
    """Start Ray's autoscaling-coordinator actor now, beside the run's other start-up work.
    Ray Train's controller asks it for resources with a 5 s timeout; started on demand on a
    busy node the actor missed it, cost those 5 s before the first step and printed a
    traceback. Best effort: an internal API, skipped if Ray moves it."""
    try:
        from ray.data._internal.cluster_autoscaler.default_autoscaling_coordinator import (
            get_or_create_autoscaling_coordinator,
        )

        get_or_create_autoscaling_coordinator()
    except Exception:  # noqa: BLE001 - an optimisation only
        return


@dataclass(frozen=True)
class _Run:
    """One run's identity and the facts its parts share."""

    cfg: TrainConfig
    run_id: str
    plan: DataPlan
    spec: ModelSpec
    res: Resources
    out: Path  # local directory for the run's files
    remote_out: str | None  # where they are uploaded, if ``cfg.out`` is a URL


def _output_dir(cfg: TrainConfig) -> tuple[Path, str | None]:
    """The local directory for the run's files, and the URL they are uploaded to (if any)."""
    remote_out = cfg.out if _is_remote(cfg.out) else None
    out = (Path(tempfile.mkdtemp(prefix="reldrop-out-")) if remote_out
           else Path(cfg.out.removeprefix("file://")).absolute())
    return out, remote_out


def _prepare(cfg: TrainConfig, run_id: str | None, out: Path, remote_out: str | None) -> _Run:
    import ray

    if cfg.train is None:
        train, test, ood = default_data(cfg.seed)
        cfg = replace(cfg, train=train, test=cfg.test or test, ood_test=cfg.ood_test or ood)
    assert cfg.train is not None
    plan = plan_split(cfg.train, "train", on_error=cfg.on_error, decode=cfg.decode_options(), num_classes=cfg.num_classes)
    spec = _spec(cfg, plan)
    check_training_run(spec, plan.manifest, [cfg.test, cfg.ood_test],  # before Ray starts
                       decode=cfg.decode_options())
    init_ray(cfg)
    totals = ray.cluster_resources()
    res = plan_resources(cfg, cluster_cpus=float(totals.get("CPU", 1)),
                         cluster_gpus=float(totals.get("GPU", 0)))
    return _Run(cfg, run_id or uuid.uuid4().hex[:8], plan, spec, res, out, remote_out)


def _banner(run: _Run) -> str:
    cfg, res = run.cfg, run.res
    explainers = str(_explainer_count(run))
    sim = cfg.simulated_device()
    simulated = (f"; SIMULATED device: step {cfg.simulate_step_ms} ms, LRP {cfg.simulate_lrp_ms} "
                 f"ms per {cfg.batch_size} rows" if sim.active else "")
    return (
        f"[reldrop] run {run.run_id}: {cfg.mode} {cfg.augment} on {cfg.model}, "
        f"{run.plan.num_samples} train samples in {len(run.plan.urls)} shards; "
        f"{cfg.trainers} trainer(s) x {res.trainer_cpus:g} CPU {res.trainer_gpus:g} GPU, "
        f"{explainers} explainer(s) x {res.explainer_cpus:g} CPU {res.explainer_gpus:g} GPU, "
        f"reads {res.read_cpus:g} CPU; cluster {res.cluster_cpus:g} CPU {res.cluster_gpus:g} GPU; "
        f"publish every {cfg.sync_every} step(s), staleness bound {cfg.staleness_bound()} "
        f"steps (batches sent {cfg.handoff_depth} steps ahead){simulated}"
    )


def train_set_names(cfg: TrainConfig) -> list[str]:
    """One training dataset per epoch when shuffling (Ray Train re-runs a dataset's plan every
    epoch, so one dataset always streams one order), else one for every epoch."""
    return [f"train_{e}" for e in range(cfg.epochs)] if cfg.shuffle else ["train"]


def _precomputed(cfg: TrainConfig) -> Any:
    from reldrop.pipeline.data.columns import ColumnJoin

    if cfg.mode == "precomputed" and cfg.has_stage:
        return ColumnJoin(root_url=str(cfg.precomputed))
    return None


def _datasets(run: _Run) -> dict[str, Any]:
    """Training sets (explainer stage appended), then the unsplit evaluation sets.

    Shuffled, each epoch's shard order and within-shard order come from (seed, epoch): a rerun
    with the same seed sees the same orders, each key once per epoch. With ``--limit`` an epoch
    takes the first rows of its own order."""
    cfg = run.cfg
    datasets: dict[str, Any] = {}
    for epoch, name in enumerate(train_set_names(cfg)):
        rows = read_split(run.plan, on_error=cfg.on_error, read_cpus=run.res.read_cpus,
                          limit=cfg.limit, rows_per_block=cfg.stage_batch_size,
                          shuffle_seed=cfg.seed if cfg.shuffle else None, epoch=epoch,
                          columns=_precomputed(cfg))
        datasets[name] = _stage(cfg, rows, run.spec, run.run_id, run.res, epoch)
    for name, url in (("test", cfg.test), ("ood_test", cfg.ood_test)):
        if url:
            datasets[name] = read_split(plan_split(url, "test", on_error=cfg.on_error, decode=cfg.decode_options(), num_classes=cfg.num_classes),
                                        on_error=cfg.on_error, read_cpus=run.res.read_cpus)
    return datasets


def _trainer(run: _Run, datasets: dict[str, Any]) -> Any:
    from ray.train import (
        CheckpointConfig,
        DataConfig,
        FailureConfig,
        RunConfig,
        ScalingConfig,
    )
    from ray.train.torch import TorchTrainer

    cfg, res = run.cfg, run.res
    storage = (f"{run.remote_out.rstrip('/')}/ray_results" if run.remote_out
               else str(run.out / "ray_results"))
    clear_previous_runs(storage, keep=f"reldrop-{run.run_id}")  # replaced, not accumulated
    gpus = {"GPU": res.trainer_gpus} if cfg.use_gpu else {}
    return TorchTrainer(
        train_loop_per_worker=_train_loop,
        train_loop_config={
            "config": cfg.to_json(), "spec": run.spec.to_json(), "run_id": run.run_id,
            "train_sets": train_set_names(cfg),
            "eval_sets": [k for k in ("test", "ood_test") if k in datasets],
            "train_samples": min(run.plan.num_samples, cfg.limit or run.plan.num_samples),
            "explainers": _explainer_count(run),
        },
        scaling_config=ScalingConfig(num_workers=cfg.trainers, use_gpu=cfg.use_gpu,
                                     resources_per_worker={"CPU": res.trainer_cpus, **gpus}),
        datasets=datasets,
        dataset_config=DataConfig(datasets_to_split=train_set_names(cfg)),
        run_config=RunConfig(
            name=f"reldrop-{run.run_id}", storage_path=storage,
            checkpoint_config=CheckpointConfig(num_to_keep=1),
            failure_config=FailureConfig(max_failures=cfg.max_failures),
        ),
    )


def _fit(run: _Run, trainer: Any, explainers: list[Any]) -> tuple[Any, dict[str, Any]]:
    """Train; return Ray's result and the explainers' counters (the explainers end after)."""
    stats: dict[str, Any] = {}
    try:
        result = run_interruptible(trainer.fit)  # Ctrl-C / SIGTERM reach the job, not Ray Train
    finally:
        stats = _explainer_stats(explainers)
    if result.checkpoint is None or not result.metrics:
        raise RuntimeError(f"training run {run.run_id} finished without a final report: {result.error}")
    return result, stats


def _worker_json(result: Any) -> list[dict[str, Any]]:
    """Every worker's summary as JSON, from the final checkpoint (see ``WORKERS_FILE``)."""
    with result.checkpoint.as_directory() as ckpt_dir:
        data: list[dict[str, Any]] = json.loads((Path(ckpt_dir) / WORKERS_FILE).read_text())
    return data


def _workers(result: Any) -> list[WorkerSummary]:
    return [WorkerSummary.from_json(w) for w in _worker_json(result)]


def _explainer_stats(explainers: list[Any]) -> dict[str, Any]:
    """Each explainer's counters (``{}`` for one that does not answer), then stop them all."""
    import ray

    stats: dict[str, Any] = {}
    for i, actor in enumerate(explainers):
        try:
            stats[f"explainer-{i}"] = ray.get(actor.stats.remote(), timeout=5.0)
        except ray.exceptions.RayError:
            stats[f"explainer-{i}"] = {}
        ray.kill(actor)
    return stats


def run_training(
    cfg: TrainConfig, *, verbose: bool = True, run_id: str | None = None
) -> dict[str, Any]:
    """Train per ``cfg``; write ``report.json``, the checkpoint and plots to ``cfg.out``;
    return the report's content."""
    start = time.perf_counter()
    out, remote_out = _output_dir(cfg)
    with run_console(out / LOG_FILE):
        run = _prepare(cfg, run_id, out, remote_out)
        if verbose:
            print(_banner(run), flush=True)
        report = _train(run, start)
    if verbose:
        print(summary_table(report), flush=True)
    return report.to_json()


def _train(run: _Run, start: float) -> RunReport:
    """Explainers, Ray Train, the report and the run's files."""
    explainers = _start_explainers(run)
    result, explainer_stats = _fit(run, _trainer(run, _datasets(run)), explainers)
    report = assemble_report(
        config=run.cfg.to_json(), run_id=run.run_id, model_spec=run.spec.to_json(),
        workers=_workers(result),
        skipped_shards=list(run.plan.skipped_shards), explainer_stats=explainer_stats,
        staleness_bound=run.cfg.staleness_bound() if run.cfg.needs_explainer else None,
        simulated=run.cfg.simulated_device().to_json(),
        cluster={"cpus": run.res.cluster_cpus, "gpus": run.res.cluster_gpus,
                 "explainer_cpus": run.res.explainer_cpus, "resources": run.res.to_json()},
    )
    _write_outputs(run, result, report, start)
    return report


def _write_outputs(run: _Run, result: Any, report: RunReport, start: float) -> None:
    checkpoint = run.out / "model.safetensors"
    run.out.mkdir(parents=True, exist_ok=True)
    with result.checkpoint.as_directory() as ckpt_dir:
        shutil.copyfile(Path(ckpt_dir) / "model.safetensors", checkpoint)
    report.paths = {"checkpoint": str(checkpoint), "report": str(run.out / "report.json"),
                    "log": str(run.out / LOG_FILE)}
    report.paths.update(_plots(run.out, report, checkpoint, run.cfg))
    report.wall_s = time.perf_counter() - start
    first = min((w["first_batch_at"] for w in _worker_json(result) if w.get("first_batch_at")),
                default=None)
    # from the command's start (start-up, data check, Ray, Ray Train) to the first trained batch
    report.throughput["first_batch_after_start_s"] = (
        first - (time.time() - report.wall_s) if first is not None else None)
    if run.remote_out:
        base = run.remote_out.rstrip("/")
        report.paths = {k: f"{base}/{Path(v).name}" for k, v in report.paths.items()}
    write_report(run.out, report)
    if run.remote_out:
        _upload(run.out, run.remote_out)


def _is_remote(url: str) -> bool:
    return "://" in url and not url.startswith("file://")


def _upload(local: Path, url: str) -> None:
    """Copy the run's files (not Ray's own results, already there) to ``url`` via fsspec."""
    from reldrop.pipeline.data.fs import resolve

    fs, path = resolve(url)
    fs.makedirs(path, exist_ok=True)
    for item in sorted(local.iterdir()):
        if item.is_file():
            fs.put_file(str(item), f"{path.rstrip('/')}/{item.name}")


def _train_loop(loop_config: dict[str, Any]) -> None:
    from reldrop.pipeline.training.worker import train_loop_per_worker

    train_loop_per_worker(loop_config)


def _plots(out: Path, report: RunReport, checkpoint: Path, cfg: TrainConfig) -> dict[str, str]:
    """Loss/accuracy curves and an input / relevance / occluded grid (needs the plots extra)."""
    try:
        from reldrop.pipeline.training.figures import training_figures
    except ImportError as err:  # pragma: no cover - depends on optional extra
        print(f"[reldrop] plots skipped: {err}", file=sys.stderr)
        return {}
    return training_figures(out, report.to_json(), checkpoint, cfg)
