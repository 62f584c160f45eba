"""The Ray Train worker loop: one code path for ``async``, ``sync`` and ``precomputed``.

Each worker reads its shard of the stream, applies the fill for the ``dropped`` mask the stage
produced (``async``/``precomputed``) or computes the mask in-loop on its live model (``sync``),
trains, and reports consumption to the weight store's gate. Rank 0 publishes weights every
``sync_every`` steps. Staleness = the trainer's weights version (steps done) minus the
``model_version`` that explained the row.
"""

from __future__ import annotations

import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
import torch
from reldrop.pipeline.data.stream import data_error, model_inputs
from reldrop.pipeline.training.config import TrainConfig

from reldrop.augment import RelDrop
from reldrop.checkpoint import ModelSpec, save_checkpoint, state_to_numpy
from reldrop.occlusion import Occluder

__all__ = ["train_loop_per_worker"]

_MAX_REASONS = 50


def _evaluate(model: torch.nn.Module, shard: Any, spec: ModelSpec, device: torch.device, batch_size: int) -> float:
    model.eval()
    correct = total = 0
    with torch.no_grad():
        for batch in shard.iter_batches(batch_size=batch_size, batch_format="numpy"):
            keep = ~np.asarray(batch["skipped"], dtype=bool)
            if not keep.any():
                continue
            x = model_inputs(batch["image"][keep], spec.normalization).to(device)
            y = torch.as_tensor(batch["label"][keep]).to(device)
            correct += int((model(x).argmax(1) == y).sum())
            total += int(keep.sum())
    model.train()
    return correct / total if total else float("nan")


class _Publisher:
    """Rank 0's side of the weight store: publish, and recreate the store if it died."""

    def __init__(self, cfg: TrainConfig, run_id: str, model: torch.nn.Module) -> None:
        from reldrop.pipeline.explanation.weights import WeightStoreClient  # noqa: PLC0415

        self.client = WeightStoreClient(run_id, max_ahead=cfg.max_ahead_samples(), create=True)
        self.model = model
        self.publish_ms: list[float] = []
        self.rejected = 0
        self._recreated_seen = 0

    def publish(self, version: int, consumed_total: int) -> None:
        import ray  # noqa: PLC0415

        start = time.perf_counter()
        ref = ray.put(state_to_numpy(self.model))
        try:
            result = self.client.call("publish", version, [ref])
        except ValueError:
            self.rejected += 1
            return
        if self.client.recreated != self._recreated_seen or result is None:
            self._recreated_seen = self.client.recreated
            self.client.call("reset_progress", consumed_total)
            if result is None:
                self.client.call("publish", version, [ref])
        self.publish_ms.append((time.perf_counter() - start) * 1e3)


def train_loop_per_worker(loop_config: dict[str, Any]) -> None:
    import ray.train  # noqa: PLC0415
    import ray.train.torch  # noqa: PLC0415

    from reldrop.regularizers import make_regularizer  # noqa: PLC0415

    cfg = TrainConfig(**loop_config["config"])
    spec = ModelSpec.from_json(loop_config["spec"])
    run_id: str = loop_config["run_id"]
    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    torch.manual_seed(cfg.seed)
    inner = spec.build()
    model = ray.train.torch.prepare_model(inner)
    device = ray.train.torch.get_device()
    inner = model.module if isinstance(model, torch.nn.parallel.DistributedDataParallel) else model
    optimizer = torch.optim.SGD(model.parameters(), lr=cfg.lr, momentum=0.9, weight_decay=5e-4)
    regularizer = make_regularizer(cfg.regularizer, lam=cfg.reg_lambda)
    occluder = Occluder(cfg.occlusion())
    generator = torch.Generator().manual_seed(cfg.seed * 7919 + rank)
    in_loop = RelDrop(
        inner, cfg.occlusion(), composite=cfg.composite,
        bounds=spec.normalization.bounds(), seed=cfg.seed * 31 + rank,
    )
    publisher = _Publisher(cfg, run_id, inner) if rank == 0 and cfg.needs_explainer else None
    gate = None
    if cfg.needs_explainer:
        from reldrop.pipeline.explanation.weights import WeightStoreClient  # noqa: PLC0415

        gate = WeightStoreClient(run_id, max_ahead=cfg.max_ahead_samples(), create=False)

    shard = ray.train.get_dataset_shard("train")
    steps_per_epoch = max(1, -(-int(loop_config.get("train_samples", 0)) // cfg.global_batch))
    progress_every = max(1, steps_per_epoch // 4)
    step = 0
    consumed = 0
    staleness: Counter[int] = Counter()
    versions: set[int] = set()
    counts: Counter[str] = Counter()
    reasons: list[str] = []
    epochs: list[dict[str, Any]] = []
    keys_per_epoch: list[list[str]] = []
    wait_s = compute_s = 0.0
    first_batch_s: float | None = None
    run_start = time.perf_counter()
    if publisher is not None:
        publisher.publish(0, 0)

    for epoch in range(cfg.epochs):
        if publisher is not None:
            publisher.client.call("reset_progress", consumed * world)
        epoch_loss = 0.0
        correct = seen = 0
        keys: list[str] = []
        iterator = iter(shard.iter_batches(batch_size=cfg.batch_size, batch_format="numpy", prefetch_batches=1))
        while True:
            t0 = time.perf_counter()
            try:
                batch = next(iterator)
            except StopIteration:
                break
            except Exception as err:
                line = data_error(err)
                if line is None:
                    raise
                raise RuntimeError(f"bad training data: {line}") from err
            t1 = time.perf_counter()
            wait_s += t1 - t0
            if first_batch_s is None:
                first_batch_s = t1 - run_start
            n = len(batch["label"])
            consumed += n
            counts["rows"] += n
            if cfg.record_keys:
                keys.extend(str(k) for k in batch["key"])
            keep = ~np.asarray(batch["skipped"], dtype=bool)
            for r in batch["reason"][~keep][: max(0, _MAX_REASONS - len(reasons))]:
                reasons.append(str(r))
            counts["skipped"] += int((~keep).sum())
            reexplain = np.zeros(n, dtype=bool)
            if "model_version" in batch:
                version = np.asarray(batch["model_version"])
                versions.update(int(v) for v in np.unique(version[keep]))
                stale = step - version
                for s in stale[keep & (version >= 0)]:
                    staleness[int(s)] += 1
                too_stale = keep & (version >= 0) & (stale > cfg.max_staleness)
                counts["stale"] += int(too_stale.sum())
                if cfg.stale_policy == "drop":
                    keep &= ~too_stale
                    counts["stale_dropped"] += int(too_stale.sum())
                elif cfg.stale_policy == "re-explain":
                    reexplain = too_stale
                    counts["stale_reexplained"] += int(too_stale.sum())
            if "dropped" in batch:  # rows the stage occluded (model or precomputed relevance)
                counts["occluded"] += int((keep & np.asarray(batch["dropped"]).reshape(n, -1).any(1)).sum())
            if "fallback" in batch:
                counts["fallback"] += int(np.asarray(batch["fallback"])[keep].sum())
            if gate is not None:
                gate.tell("consumed", n)
            if not keep.any():
                continue
            x = model_inputs(batch["image"][keep], spec.normalization).to(device)
            y = torch.as_tensor(batch["label"][keep]).to(device)
            masks = torch.as_tensor(batch["mask"][keep]).to(device).float() if "mask" in batch else None
            if "dropped" in batch:
                dropped = torch.as_tensor(batch["dropped"][keep]).bool()
                if reexplain[keep].any():
                    idx = torch.as_tensor(reexplain[keep])
                    dropped[idx] = in_loop(x[idx], y[idx]).dropped.cpu()
                x = occluder.fill(x, dropped, generator)
            elif cfg.augment != "none":
                result = in_loop(x, y)
                counts["fallback"] += int(result.fallback.sum())
                counts["occluded"] += int(result.applied.sum()) if occluder.needs_relevance else 0
                x = result.inputs
            out = regularizer(model, x, y, masks)
            optimizer.zero_grad(set_to_none=True)
            out.loss.backward()
            optimizer.step()
            step += 1
            epoch_loss += float(out.loss.detach()) * int(keep.sum())
            correct += int((out.logits.detach().argmax(1) == y).sum())
            seen += int(keep.sum())
            if device.type == "cuda":
                torch.cuda.synchronize()
            compute_s += time.perf_counter() - t1
            if publisher is not None and step % cfg.sync_every == 0:
                publisher.publish(step, consumed * world)
            if rank == 0 and (step - epoch * steps_per_epoch) % progress_every == 0:
                elapsed = time.perf_counter() - run_start
                print(
                    f"[reldrop] epoch {epoch + 1} step {step - epoch * steps_per_epoch}"
                    f"/{steps_per_epoch} loss {epoch_loss / max(seen, 1):.4f} "
                    f"{consumed * world / elapsed:.0f} samples/s, waiting for data "
                    f"{100 * wait_s / elapsed:.0f}% of the time",
                    flush=True,
                )
        record: dict[str, Any] = {
            "epoch": epoch + 1,
            "loss": epoch_loss / seen if seen else float("nan"),
            "train_accuracy": correct / seen if seen else float("nan"),
            "samples": seen,
            "steps": step,
        }
        # every rank iterates the (unsplit) test sets: Ray Train coordinates their execution
        # across workers, so rank 0 alone would wait for the others forever
        for name, key in (("test", "test_accuracy"), ("ood_test", "ood_accuracy")):
            if name in loop_config["eval_sets"]:
                record[key] = _evaluate(model, ray.train.get_dataset_shard(name), spec, device, 256)
        if rank == 0:
            print(
                f"[reldrop] epoch {epoch + 1}/{cfg.epochs} loss {record['loss']:.4f} "
                f"train_acc {record['train_accuracy']:.3f} "
                + " ".join(f"{k} {record[k]:.3f}" for k in ("test_accuracy", "ood_accuracy") if k in record),
                flush=True,
            )
        epochs.append(record)
        keys_per_epoch.append(keys)
        summary = {
            "rank": rank,
            "epochs": epochs,
            "staleness": dict(staleness),
            "versions": sorted(versions),
            "counts": dict(counts),
            "skip_reasons": reasons,
            "keys": keys_per_epoch if cfg.record_keys else [],
            "wait_s": wait_s,
            "compute_s": compute_s,
            "wall_s": time.perf_counter() - run_start,
            "first_batch_s": first_batch_s,
            "publish_ms": publisher.publish_ms if publisher else [],
            "store_recreated": publisher.client.recreated if publisher else 0,
            "in_loop": in_loop.stats.as_dict(),
        }
        final = epoch == cfg.epochs - 1
        if final and world > 1:
            import torch.distributed as dist  # noqa: PLC0415

            gathered: list[Any] = [None] * world
            dist.all_gather_object(gathered, summary)
            summary = {"workers": gathered}
        else:
            summary = {"workers": [summary]}
        if final and rank == 0:
            with tempfile.TemporaryDirectory() as tmp:
                save_checkpoint(Path(tmp) / "model.safetensors", inner, spec, {"steps": step})
                ray.train.report(summary, checkpoint=ray.train.Checkpoint.from_directory(tmp))
        else:
            ray.train.report(summary if final else {"epoch": epoch + 1})
