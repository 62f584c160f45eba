"""The Ray Train worker loop: one code path for ``async``, ``sync`` and ``precomputed``.

Each worker reads its split of the stream; in ``async`` mode its hand-off
(:mod:`reldrop.pipeline.explanation.handoff`) sends every batch to the rank's own explainers
``depth`` steps before training on it, and each rank publishes its weights to them every
``sync_every`` steps. A batch becomes model inputs (the fill for its ``dropped`` mask, or the
in-loop RelDrop mask on the live model in ``sync`` mode), then a DDP-safe step (:mod:`.step`).
With a simulated device (``--simulate-step-ms/--simulate-lrp-ms``) steps and in-loop LRP are
padded to the modelled durations. Every epoch ends with a checkpoint (model, optimiser, step,
figures so far), so a restarted worker group resumes at the next epoch.
"""

from __future__ import annotations

import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from reldrop.augment import RelDrop
from reldrop.checkpoint import ModelSpec
from reldrop.keyed import sample_seeds
from reldrop.occlusion import Occluder
from reldrop.optimizers import make_optimizer
from reldrop.pipeline.data.stream import data_error, model_inputs
from reldrop.pipeline.explanation.handoff import Handoff
from reldrop.pipeline.simulated import SimulatedDevice, padded
from reldrop.pipeline.training.accounting import BatchAccounting, RowPlan
from reldrop.pipeline.training.config import TrainConfig
from reldrop.pipeline.training.meter import Meter
from reldrop.pipeline.training.nonfinite import NonFiniteGuard, nonfinite_guard
from reldrop.pipeline.training.report import WORKERS_FILE, WorkerSummary, write_json
from reldrop.pipeline.training.resume import (
    TrainState,
    accounting_json,
    load_train_state,
    save_train_state,
)
from reldrop.pipeline.training.step import train_step
from reldrop.regularizers import Regularizer, make_regularizer

__all__ = ["epoch_metrics", "train_loop_per_worker"]


@dataclass
class _Worker:
    """Everything one worker holds across steps."""

    cfg: TrainConfig
    spec: ModelSpec
    rank: int
    world: int
    model: torch.nn.Module  # as trained (DDP-wrapped when world > 1)
    inner: torch.nn.Module  # the bare model
    device: torch.device
    optimizer: torch.optim.Optimizer
    regularizer: Regularizer
    occluder: Occluder
    in_loop: RelDrop
    accounting: BatchAccounting
    meter: Meter
    device_model: SimulatedDevice
    handoff: Handoff | None = None  # async: this rank's explainers
    nonfinite: NonFiniteGuard | None = None  # a non-finite loss or gradient: stop or skip
    state: TrainState = field(default_factory=TrainState)


def _setup(loop_config: dict[str, Any]) -> _Worker:
    import ray.train
    import ray.train.torch

    cfg = TrainConfig.from_json(loop_config["config"])
    spec = ModelSpec.from_json(loop_config["spec"])
    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    torch.manual_seed(cfg.seed)
    model = ray.train.torch.prepare_model(spec.build())
    inner = model.module if isinstance(model, torch.nn.parallel.DistributedDataParallel) else model
    w = _Worker(
        cfg=cfg, spec=spec, rank=rank, world=world, model=model, inner=inner,
        device=ray.train.torch.get_device(),
        optimizer=make_optimizer(cfg.optimizer, model.parameters(), lr=cfg.lr),
        regularizer=make_regularizer(cfg.regularizer, lam=cfg.reg_lambda,
                                     bounds=spec.normalization.bounds(), **cfg.regularizer_params()),
        occluder=Occluder(cfg.occlusion()),
        in_loop=RelDrop(inner, cfg.occlusion(), composite=cfg.composite,
                        bounds=spec.normalization.bounds(), seed=cfg.seed),
        accounting=BatchAccounting(max_staleness=cfg.max_staleness, stale_policy=cfg.stale_policy,
                                   record_keys=cfg.record_keys),
        meter=Meter(rank=rank, world=world, steps_per_epoch=_steps_per_epoch(cfg, loop_config)),
        device_model=cfg.simulated_device(),
    )
    if cfg.needs_explainer:
        w.handoff = _handoff(w, loop_config)
    w.nonfinite = nonfinite_guard(cfg, lambda: w.accounting.counts)  # counts survive a resume
    return w


def _handoff(w: _Worker, loop_config: dict[str, Any]) -> Handoff:
    """This rank's hand-off to its own explainers (started once per run by the driver)."""
    from reldrop.pipeline.explanation.pool import RayTransport, explainers_of_rank

    actors = explainers_of_rank(loop_config["run_id"], count=loop_config["explainers"],
                                rank=w.rank, world=w.world)
    return Handoff(RayTransport(actors), depth=w.cfg.handoff_depth,
                   wait_s=w.cfg.explainer_wait_s,
                   fallback=lambda chunk, epoch: _explain_in_loop(w, chunk, epoch))


def _explain_in_loop(w: _Worker, chunk: dict[str, np.ndarray], epoch: int) -> dict[str, np.ndarray]:
    """A chunk no explainer answered for, explained on the live model (as ``sync`` does)."""
    n = len(chunk["label"])
    keep = ~np.asarray(chunk.get("skipped", np.zeros(n, dtype=bool)), dtype=bool)
    x = model_inputs(_to_device(chunk["image"], w.device), w.spec.normalization)
    dropped = torch.zeros((n, *x.shape[2:]) if x.ndim == 4 else (n, x.shape[1]), dtype=torch.bool)
    fallback = np.zeros(n, dtype=bool)
    if keep.any():
        keys = [str(k) for k in np.asarray(chunk["key"])[keep]]
        y = _to_device(np.asarray(chunk["label"])[keep], w.device)
        result = w.in_loop(x[torch.from_numpy(keep)], y, keys=keys, epoch=epoch)
        dropped[torch.from_numpy(keep)] = result.dropped.cpu().reshape(dropped[keep].shape).bool()
        fallback[keep] = result.fallback.cpu().numpy()
    return {"dropped": dropped.numpy().astype(np.uint8), "fallback": fallback,
            "model_version": np.full(n, w.state.step, dtype=np.int64)}


def _steps_per_epoch(cfg: TrainConfig, loop_config: dict[str, Any]) -> int:
    return max(1, -(-int(loop_config.get("train_samples", 0)) // cfg.global_batch))


def _to_device(array: np.ndarray, device: torch.device) -> torch.Tensor:
    """Host array -> tensor on ``device`` (pinned and non-blocking when it is a GPU)."""
    t = torch.as_tensor(np.require(array, requirements=["C", "W"]))
    if device.type == "cuda":
        return t.pin_memory().to(device, non_blocking=True)
    return t


def _inputs(
    w: _Worker, batch: dict[str, Any], plan: RowPlan, epoch: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """Model inputs, labels and masks of the kept rows, occluded as the mode says; every draw
    of a row is keyed by (seed, epoch, key), as in the explainer stage."""
    keep = plan.keep
    keys = [str(k) for k in np.asarray(batch["key"])[keep]]
    x = model_inputs(_to_device(batch["image"][keep], w.device), w.spec.normalization)
    y = _to_device(np.asarray(batch["label"])[keep], w.device)
    masks = _to_device(batch["mask"][keep], w.device).float() if "mask" in batch else None
    if "dropped" in batch:
        dropped = torch.as_tensor(np.asarray(batch["dropped"])[keep]).bool()
        again = torch.as_tensor(plan.reexplain[keep])
        if bool(again.any()):
            redo = [k for k, a in zip(keys, again.tolist()) if a]
            dropped[again] = w.in_loop(x[again], y[again], keys=redo, epoch=epoch).dropped.cpu()
        x = w.occluder.fill(x, dropped.to(w.device), seeds=sample_seeds(w.cfg.seed, epoch, keys))
    elif w.cfg.augment != "none" and len(y):
        with padded(w.device_model.lrp_s(len(y))):
            result = w.in_loop(x, y, keys=keys, epoch=epoch)
        w.accounting.counts["fallback"] += int(result.fallback.sum())
        if w.occluder.needs_relevance:
            w.accounting.counts["occluded"] += int(result.applied.sum())
        x = result.inputs
    return x, y, masks


def _placeholder(w: _Worker, batch: dict[str, Any]) -> torch.Tensor:
    return model_inputs(_to_device(batch["image"][:1], w.device), w.spec.normalization)


def _train_batch(w: _Worker, batch: dict[str, Any], epoch: int, totals: dict[str, float]) -> None:
    plan = w.accounting.account(batch, w.state.step)
    x, y, masks = _inputs(w, batch, plan, epoch)
    with padded(w.device_model.step_s()):
        outcome = train_step(w.model, w.optimizer, w.regularizer, x, y, masks,
                             placeholder=x[:1] if len(y) else _placeholder(w, batch),
                             guard=w.nonfinite and w.nonfinite.at(epoch=epoch, step=w.state.step + 1))
    if not outcome.stepped:
        return
    w.state.step += 1
    totals["loss"] += outcome.loss_sum
    totals["correct"] += outcome.correct
    totals["seen"] += outcome.rows
    if w.device.type == "cuda":
        torch.cuda.synchronize()
    if w.handoff is not None and w.state.step % w.cfg.sync_every == 0:
        w.handoff.publish(w.inner, w.state.step)


def _batches(w: _Worker, shard: Any, epoch: int) -> Any:
    """The epoch's batches; a data error becomes one line naming shard and sample."""
    buffer = w.cfg.shuffle_buffer if w.cfg.shuffle else 0  # raw rows: the buffer ages nothing
    iterator = shard.iter_batches(
        batch_size=w.cfg.batch_size, batch_format="numpy", prefetch_batches=2,
        local_shuffle_buffer_size=buffer or None,
        local_shuffle_seed=(w.cfg.seed * 1_000_003 + epoch * 7919 + w.rank) if buffer else None,
    )
    if w.handoff is not None:  # explained here, depth steps ahead of training
        iterator = w.handoff.batches(iterator, epoch)
    try:
        yield from iterator
    except Exception as err:
        line = data_error(err)
        if line is None:
            raise
        raise ValueError(f"bad training data: {line}") from err


def _run_epoch(w: _Worker, shard: Any, epoch: int) -> dict[str, Any]:
    totals = {"loss": 0.0, "correct": 0.0, "seen": 0.0}
    w.accounting.start_epoch()
    for batch in w.meter.timed(_batches(w, shard, epoch)):
        _train_batch(w, batch, epoch, totals)
        w.meter.progress(epoch, w.state.step, totals)
    seen = int(totals["seen"])
    return {
        "epoch": epoch + 1,
        "loss": totals["loss"] / seen if seen else float("nan"),
        "train_accuracy": totals["correct"] / seen if seen else float("nan"),
        "samples": seen,
        "steps": w.state.step,
    }


def _evaluate(w: _Worker, shard: Any, batch_size: int = 256) -> float:
    w.model.eval()
    correct = total = 0
    with torch.no_grad():
        for batch in shard.iter_batches(batch_size=batch_size, batch_format="numpy"):
            keep = ~np.asarray(batch["skipped"], dtype=bool)
            if not keep.any():
                continue
            x = model_inputs(_to_device(batch["image"][keep], w.device), w.spec.normalization)
            y = _to_device(np.asarray(batch["label"])[keep], w.device)
            correct += int((w.model(x).argmax(1) == y).sum())
            total += int(keep.sum())
    w.model.train()
    return correct / total if total else float("nan")


def _summary(w: _Worker) -> WorkerSummary:
    a = w.accounting
    return WorkerSummary(
        rank=w.rank, epochs=w.state.epochs, staleness=dict(a.staleness), versions=sorted(a.versions),
        counts=dict(a.counts), skip_reasons=list(a.reasons),
        keys=a.keys if w.cfg.record_keys else [], wait_s=w.meter.wait_s,
        compute_s=w.meter.compute_s, wall_s=w.meter.elapsed(), first_batch_s=w.meter.first_batch_s,
        first_wait_s=w.meter.first_wait_s, first_batch_at=w.meter.first_batch_at,
        publish_ms=list(w.handoff.stats.publish_ms) if w.handoff else [],
        handoff=w.handoff.stats.to_json() if w.handoff else {},
        restarts=w.state.restarts, in_loop=w.in_loop.stats.as_dict(),
        skipped_shards=list(a.shards.values()),
    )


def _gather(w: _Worker, item: Any) -> list[Any]:
    """``item`` of every rank, in rank order (one all-gather; no collective with one rank)."""
    if w.world == 1:
        return [item]
    import torch.distributed as dist

    gathered: list[Any] = [None] * w.world
    dist.all_gather_object(gathered, item)
    return gathered


def epoch_metrics(w: _Worker, record: dict[str, Any]) -> dict[str, float | int]:
    """Flat scalars for ``ray.train.report`` (``Result.metrics_dataframe``, checkpoint scoring,
    Tune): the epoch's figures and this rank's throughput, waiting and staleness so far."""
    stale = w.accounting.staleness
    rows = sum(stale.values())
    elapsed = w.meter.elapsed()
    metrics: dict[str, float | int] = {k: v for k, v in record.items()
                                       if isinstance(v, int | float) and not isinstance(v, bool)}
    metrics.update({
        "samples_per_s": w.meter.rows * w.world / elapsed if elapsed > 0 else 0.0,
        "trainer_wait_fraction": w.meter.wait_s / elapsed if elapsed > 0 else 0.0,
        "staleness_max": max(stale) if stale else -1,
        "staleness_mean": sum(k * v for k, v in stale.items()) / rows if rows else -1.0,
    })
    return metrics


def _report_epoch(w: _Worker, record: dict[str, Any], final: bool) -> None:
    """Report the epoch's flat metrics with a checkpoint: rank 0 writes the model, the
    optimiser and every rank's counts; after the last epoch also every rank's summary
    (``workers.json``), which the driver reads from the final checkpoint."""
    import ray.train

    ranks = _gather(w, accounting_json(w.accounting, w.state))
    summaries = _gather(w, _summary(w).to_json()) if final else None
    metrics = epoch_metrics(w, record)
    if w.rank != 0:
        ray.train.report(metrics)
        return
    with tempfile.TemporaryDirectory() as tmp:
        save_train_state(Path(tmp), w.inner, w.optimizer, w.spec, w.state, ranks)
        if summaries is not None:
            write_json(Path(tmp) / WORKERS_FILE, summaries)
        ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(tmp))


def train_loop_per_worker(loop_config: dict[str, Any]) -> None:
    """Ray Train's ``train_loop_per_worker`` for :func:`~reldrop.pipeline.training.driver.run_training`."""
    import ray.train

    w = _setup(loop_config)
    load_train_state(ray.train.get_checkpoint(), w.inner, w.optimizer, w.state, w.accounting,
                     rank=w.rank)
    if w.handoff is not None:
        w.handoff.publish(w.inner, w.state.step)
    sets = loop_config["train_sets"]  # one per epoch when shuffling
    for epoch in range(len(w.state.epochs), w.cfg.epochs):
        shard = ray.train.get_dataset_shard(sets[epoch] if len(sets) > 1 else sets[0])
        record = _run_epoch(w, shard, epoch)
        # every rank iterates the (unsplit) test sets: Ray Train coordinates their execution
        # across workers, so rank 0 alone would wait for the others forever
        for name, key in (("test", "test_accuracy"), ("ood_test", "ood_accuracy")):
            if name in loop_config["eval_sets"]:
                record[key] = _evaluate(w, ray.train.get_dataset_shard(name))
        w.state.epochs.append(record)
        w.meter.epoch_line(record, w.cfg.epochs)
        _report_epoch(w, record, final=epoch == w.cfg.epochs - 1)
