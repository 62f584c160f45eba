"""``run_training``: wire shards, the explainer stage, the weight store and Ray Train together.

This is what ``reldrop train`` calls. The defaults fit a 2-CPU machine: each trainer worker
takes 1 CPU, reads take 0.25 CPU (a read at the default 1 CPU can starve the explainer actors
once Ray Train has taken its CPUs), and explainer actors share what is left.
"""

from __future__ import annotations

import os
import shutil
import sys
import tempfile
import time
import uuid
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
from reldrop.pipeline.data.stream import DataPlan, plan_split, read_split
from reldrop.pipeline.explanation.stage import ExplainerStage, StageConfig
from reldrop.pipeline.training.config import DEFAULT_DATA_DIR, TrainConfig
from reldrop.pipeline.training.report import merge_workers, summary_table, write_report

from reldrop.checkpoint import ModelSpec
from reldrop.normalization import Normalization

__all__ = ["DEMO_DATASET", "default_data", "run_training"]

DEMO_DATASET = "decoy-mnist"
READ_CPUS = 0.25


def default_data(seed: int = 0) -> tuple[str, str, str]:
    """Build (once) the demo DecoyMNIST shards in the cache dir; return train, test, OOD URLs."""
    from reldrop.pipeline.data.datasets import ensure_dataset  # noqa: PLC0415

    root = str(DEFAULT_DATA_DIR / f"{DEMO_DATASET}-seed{seed}")
    ensure_dataset(DEMO_DATASET, root, seed=seed, progress=True)
    return f"{root}#train", f"{root}#test-id", f"{root}#test"


def _spec(cfg: TrainConfig, plan: DataPlan) -> ModelSpec:
    """Model spec from the manifest; per-channel mean/std estimated from the first samples."""
    from reldrop.pipeline.data.shards import iter_samples  # noqa: PLC0415

    m = plan.manifest
    if m.modality == "points":
        return ModelSpec(name=cfg.model, in_channels=int(m.input_shape[1]), num_classes=m.num_classes,
                         normalization=Normalization(mean=(0.0,), std=(1.0,)))
    images = []
    for i, sample in enumerate(iter_samples(plan.root, plan.split, on_error="skip")):
        images.append(sample["image"])
        if i >= 511:
            break
    data = np.stack(images).astype(np.float64) / 255.0
    mean = tuple(float(v) for v in data.mean(axis=(0, 2, 3)))
    std = tuple(max(float(v), 1e-3) for v in data.std(axis=(0, 2, 3)))
    return ModelSpec(name=cfg.model, in_channels=int(m.input_shape[0]), num_classes=m.num_classes,
                     normalization=Normalization(mean=mean, std=std))


def _sizing(cfg: TrainConfig, total_cpus: float) -> float:
    """CPUs per explainer actor: what the trainers and reads leave, shared (>= 0.25)."""
    if cfg.explainer_cpus is not None:
        return cfg.explainer_cpus
    left = total_cpus - cfg.trainers * cfg.trainer_cpus - READ_CPUS
    return max(0.25, min(2.0, left / cfg.explainers))


def _stage(cfg: TrainConfig, ds: Any, spec: ModelSpec, run_id: str, cpus: float) -> Any:
    import ray  # noqa: PLC0415

    if cfg.augment == "none" or cfg.mode == "sync":
        return ds
    stage = StageConfig(
        run_id=run_id,
        spec=spec.to_json(),
        occlusion=cfg.occlusion(),
        composite=cfg.composite,
        use_model=cfg.needs_explainer,
        precomputed=cfg.precomputed if cfg.mode == "precomputed" else None,
        max_ahead=cfg.max_ahead_samples(),
        threads=max(1, int(round(cpus))),
        seed=cfg.seed,
        device="cuda" if cfg.explainer_gpus > 0 else "cpu",
    )
    size = cfg.explainers if cfg.needs_explainer else 1
    return ds.map_batches(
        ExplainerStage,
        fn_constructor_args=(stage,),
        batch_size=cfg.stage_batch_size,
        batch_format="numpy",
        compute=ray.data.ActorPoolStrategy(size=size, max_tasks_in_flight_per_actor=1),
        num_cpus=cpus,
        num_gpus=cfg.explainer_gpus or None,
        resources={cfg.explainer_resource: 1} if cfg.explainer_resource else None,
    )


def _init_ray(cfg: TrainConfig) -> None:
    """Start or join Ray; workers get this process's storage settings (not credentials)."""
    import ray  # noqa: PLC0415
    from reldrop.pipeline.data.fs import worker_env  # noqa: PLC0415

    if ray.is_initialized():
        return
    os.environ.setdefault("RAY_TRAIN_V2_ENABLED", "1")
    env_vars = worker_env()
    runtime_env = {"env_vars": env_vars} if env_vars else None
    if cfg.address is None:  # a local cluster for this process only
        ray.init(num_cpus=cfg.num_cpus, include_dashboard=False, configure_logging=False,
                 runtime_env=runtime_env)
    else:
        ray.init(address=cfg.address, runtime_env=runtime_env)


def run_training(
    cfg: TrainConfig, *, verbose: bool = True, run_id: str | None = None
) -> dict[str, Any]:
    """Train per ``cfg``; write ``report.json``, the checkpoint and plots to ``cfg.out``."""
    import ray  # noqa: PLC0415
    from ray.train import CheckpointConfig, DataConfig, RunConfig, ScalingConfig  # noqa: PLC0415
    from ray.train.torch import TorchTrainer  # noqa: PLC0415

    start = time.perf_counter()
    remote_out = cfg.out if _is_remote(cfg.out) else None
    out = (
        Path(tempfile.mkdtemp(prefix="reldrop-out-")) if remote_out
        else Path(cfg.out.removeprefix("file://")).absolute()
    )
    if cfg.train is None:
        train, test, ood = default_data(cfg.seed)
        cfg = replace(cfg, train=train, test=cfg.test or test, ood_test=cfg.ood_test or ood)
    assert cfg.train is not None
    plan = plan_split(cfg.train, "train", on_error=cfg.on_error)
    spec = _spec(cfg, plan)
    _init_ray(cfg)
    ray.data.DataContext.get_current().enable_progress_bars = False
    total_cpus = float(ray.cluster_resources().get("CPU", 1))
    cpus = _sizing(cfg, total_cpus)
    run_id = run_id or uuid.uuid4().hex[:8]
    if verbose:
        print(
            f"[reldrop] run {run_id}: {cfg.mode} {cfg.augment} on {cfg.model}, "
            f"{plan.num_samples} train samples in {len(plan.urls)} shards, "
            f"{cfg.trainers} trainer(s) x {cfg.trainer_cpus:g} CPU{' + 1 GPU' if cfg.use_gpu else ''}, "
            f"{cfg.explainers if cfg.needs_explainer else 0} explainer(s) x {cpus:g} CPU, "
            f"reads {READ_CPUS} CPU, cluster {total_cpus:g} CPU; sync every {cfg.sync_every} "
            f"steps, max staleness {cfg.max_staleness} (gate admits {cfg.max_ahead_samples()} rows "
            f"ahead, implied bound {cfg.staleness_bound()} steps)",
            flush=True,
        )
    store = None
    if cfg.needs_explainer:
        from reldrop.pipeline.explanation.weights import WeightStoreClient  # noqa: PLC0415

        store = WeightStoreClient(run_id, max_ahead=cfg.max_ahead_samples(), create=True)
    train_ds = read_split(plan, on_error=cfg.on_error, read_cpus=READ_CPUS, limit=cfg.limit,
                          rows_per_block=cfg.stage_batch_size)
    datasets = {"train": _stage(cfg, train_ds, spec, run_id, cpus)}
    for name, url in (("test", cfg.test), ("ood_test", cfg.ood_test)):
        if url:
            datasets[name] = read_split(plan_split(url, "test", on_error=cfg.on_error),
                                        on_error=cfg.on_error, read_cpus=READ_CPUS)
    trainer = TorchTrainer(
        train_loop_per_worker=_train_loop,
        train_loop_config={
            "config": cfg.to_json(), "spec": spec.to_json(), "run_id": run_id,
            "eval_sets": [k for k in datasets if k != "train"],
            "train_samples": min(plan.num_samples, cfg.limit or plan.num_samples),
        },
        scaling_config=ScalingConfig(
            num_workers=cfg.trainers, use_gpu=cfg.use_gpu,
            resources_per_worker={"CPU": cfg.trainer_cpus, **({"GPU": 1.0} if cfg.use_gpu else {})},
        ),
        datasets=datasets,
        dataset_config=DataConfig(datasets_to_split=["train"]),
        run_config=RunConfig(
            name=f"reldrop-{run_id}",
            storage_path=f"{remote_out.rstrip('/')}/ray_results" if remote_out else str(out / "ray_results"),
            checkpoint_config=CheckpointConfig(num_to_keep=1),
        ),
    )
    explainer_stats: dict[str, Any] = {}
    try:
        result = trainer.fit()
    finally:
        if store is not None:
            explainer_stats = store.call("explainer_stats", timeout=5.0) or {}
            store.kill()
    if result.metrics is None or result.checkpoint is None:
        raise RuntimeError(f"training run {run_id} finished without a final report: {result.error}")
    merged = merge_workers(result.metrics["workers"])
    checkpoint_path = out / "model.safetensors"
    with result.checkpoint.as_directory() as ckpt_dir:
        shutil.copyfile(Path(ckpt_dir) / "model.safetensors", checkpoint_path)
    counts = merged.pop("counts")
    skipped_shards = list(plan.skipped_shards)
    report: dict[str, Any] = {
        "config": cfg.to_json(),
        "run_id": run_id,
        "model_spec": spec.to_json(),
        "epochs": merged.pop("epochs"),
        **merged,
        "counts": {
            "seen": counts.get("rows", 0),
            "skipped": counts.get("skipped", 0) + sum(s["samples"] for s in skipped_shards),
            "skipped_samples": counts.get("skipped", 0),
            "skipped_shards": skipped_shards,
            "fallback": counts.get("fallback", 0),
            "occluded": counts.get("occluded", 0),
            "stale": counts.get("stale", 0),
            "stale_dropped": counts.get("stale_dropped", 0),
            "stale_reexplained": counts.get("stale_reexplained", 0),
            # explainer batches let through after waiting gate_timeout_s (a stalled stream)
            "gate_timeouts": sum(int(e.get("gate_timeouts", 0)) for e in explainer_stats.values()),
        },
        "staleness_bound": cfg.staleness_bound() if cfg.needs_explainer else None,
        "cluster": {"cpus": total_cpus, "explainer_cpus": cpus},
        "explainers": explainer_stats,
    }
    last = report["epochs"][-1]
    report["final"] = {k: last.get(k) for k in ("test_accuracy", "ood_accuracy", "train_accuracy", "loss")}
    report["counts"]["trained"] = sum(e["samples"] for e in report["epochs"])
    report["paths"] = {"checkpoint": str(checkpoint_path), "report": str(out / "report.json")}
    report["paths"].update(_plots(out, report, checkpoint_path, cfg))
    report["wall_s"] = time.perf_counter() - start
    if remote_out:
        report["paths"] = {k: f"{remote_out.rstrip('/')}/{Path(v).name}" for k, v in report["paths"].items()}
    write_report(out, report)
    if remote_out:
        _upload(out, remote_out)
    if verbose:
        print(summary_table(report), flush=True)
    return report


def _is_remote(url: str) -> bool:
    return "://" in url and not url.startswith("file://")


def _upload(local: Path, url: str) -> None:
    """Copy the run's files (not Ray's own results, already there) to ``url`` via fsspec."""
    from reldrop.pipeline.data.fs import resolve  # noqa: PLC0415

    fs, path = resolve(url)
    fs.makedirs(path, exist_ok=True)
    for item in sorted(local.iterdir()):
        if item.is_file():
            fs.put_file(str(item), f"{path.rstrip('/')}/{item.name}")


def _train_loop(loop_config: dict[str, Any]) -> None:
    from reldrop.pipeline.training.worker import train_loop_per_worker  # noqa: PLC0415

    train_loop_per_worker(loop_config)


def _plots(out: Path, report: dict[str, Any], checkpoint: Path, cfg: TrainConfig) -> dict[str, str]:
    """Loss/accuracy curves and an input / relevance / occluded grid (needs the plots extra)."""
    try:
        from reldrop.pipeline.studies.figures import training_figures  # noqa: PLC0415
    except ImportError as err:  # pragma: no cover - depends on optional extra
        print(f"[reldrop] plots skipped: {err}", file=sys.stderr)
        return {}
    return training_figures(out, report, checkpoint, cfg)
