"""``WeightPublisher``: the trainer's side of the weight store, for any Ray Train loop.

Call it from your own training function::

    publisher = WeightPublisher(plan, model)      # rank 0 publishes version 0 now
    for epoch in range(epochs):
        publisher.start_epoch()
        for batch in shard.iter_torch_batches(...):
            ...                                   # forward, backward, optimizer.step()
            publisher.step(model, len(batch["label"]))

Every rank reports the rows it consumed to the staleness gate; rank 0 publishes the weights
(numpy state dict, one ``ray.put``; version = optimizer steps done) every ``plan.sync_every``
steps. A DDP-wrapped model is unwrapped (``.module``). If the store died, rank 0 creates it
again, restarts the gate's count and publishes again; the explainers keep their last weights
meanwhile.
"""

from __future__ import annotations

import time
import warnings
from collections.abc import Mapping
from typing import Any

import numpy as np
from torch import nn

from reldrop.checkpoint import state_to_numpy
from reldrop.pipeline.explanation.plan import StagePlan

__all__ = ["WeightPublisher", "staleness"]


def _unwrap(model: nn.Module) -> nn.Module:
    return model.module if hasattr(model, "module") and isinstance(model.module, nn.Module) else model


def _rank_and_world() -> tuple[int, int]:
    """This process's rank and the world size under Ray Train; (0, 1) outside it."""
    try:
        import ray.train

        ctx = ray.train.get_context()
        return int(ctx.get_world_rank()), int(ctx.get_world_size())
    except Exception:  # noqa: BLE001 - not inside a Ray Train worker
        return 0, 1


def staleness(versions: Any, step: int) -> np.ndarray:
    """``step - model_version`` for the rows a model explained (version >= 0; others dropped)."""
    v = np.asarray(versions.cpu() if hasattr(versions, "cpu") else versions).astype(np.int64)
    return step - v[v >= 0]


class WeightPublisher:
    """Publishes the trainer's weights and reports consumption; see the module docstring."""

    def __init__(
        self, plan: StagePlan, model: nn.Module, *, rank: int | None = None,
        world_size: int | None = None,
    ) -> None:
        if not isinstance(plan, StagePlan):
            raise TypeError(f"plan must be a StagePlan (from add_explainer_stage), got {type(plan).__name__}")
        detected = _rank_and_world()
        self.plan = plan
        self.rank = detected[0] if rank is None else rank
        self.world_size = detected[1] if world_size is None else world_size
        self.steps = 0  # optimizer steps done: the version of the weights after them
        self.consumed_rows = 0  # rows this rank consumed
        self.publish_ms: list[float] = []
        self.rejected = 0
        self.client: Any = None
        self._recreated_seen = 0
        if plan.uses_weights:
            from reldrop.pipeline.explanation.weights import WeightStoreClient

            self.client = WeightStoreClient(
                plan.run_id, max_ahead=plan.max_ahead, create=self.rank == 0
            )
            if self.rank == 0:
                self.publish(model, 0)

    @property
    def recreated(self) -> int:
        """How often rank 0 found the store dead and created it again."""
        return self.client.recreated if self.client is not None and self.rank == 0 else 0

    def start_epoch(self) -> None:
        """Call before iterating an epoch: rank 0 restarts the gate's count (nothing is in
        flight between epochs; rows acquired by a retried task are forgotten)."""
        if self.client is not None and self.rank == 0:
            self.client.reset_progress(self.consumed_rows * self.world_size)

    def consumed(self, rows: int) -> None:
        """Report ``rows`` consumed without a training step (e.g. a batch of skipped rows)."""
        self.consumed_rows += rows
        if self.client is not None:
            self.client.consumed(rows)

    def step(self, model: nn.Module, rows_consumed: int) -> bool:
        """After an optimizer step on ``rows_consumed`` rows: report them; rank 0 publishes
        every ``sync_every`` steps. Returns whether this call published."""
        self.consumed(rows_consumed)
        self.steps += 1
        if self.rank == 0 and self.client is not None and self.steps % self.plan.sync_every == 0:
            return self.publish(model, self.steps)
        return False

    def publish(self, model: nn.Module, version: int) -> bool:
        """Publish ``model``'s weights as ``version`` now (rank 0); False if rejected or lost."""
        if self.client is None:
            return False
        start = time.perf_counter()
        try:
            put = self.client.put(state_to_numpy(_unwrap(model)))
            result = self.client.publish(version, put)
            if self.client.recreated != self._recreated_seen or result is None:
                self._recreated_seen = self.client.recreated
                self.client.reset_progress(self.consumed_rows * self.world_size)
                if result is None:
                    result = self.client.publish(version, put)
        except ValueError as err:  # not newer, or weights of another shape / non-finite
            self.rejected += 1
            warnings.warn(f"weight publish of version {version} {err}", stacklevel=2)
            return False
        self.publish_ms.append((time.perf_counter() - start) * 1e3)
        return result is not None

    def staleness(self, versions: Any) -> np.ndarray:
        """Staleness (steps) of rows explained by ``versions`` (a batch's ``model_version``),
        relative to the weights this rank trains now."""
        return staleness(versions, self.steps)

    def stats(self) -> Mapping[str, Any]:
        """This rank's counts, and the gate's valve openings so far (``gate_timeouts``: batches
        an explainer explained after waiting ``gate_timeout_s`` for the trainer, each a sign of
        a stall; None where the store does not answer or there is none)."""
        store = self.client.stats() if self.client is not None else None
        return {
            "gate_timeouts": None if store is None else int(store["gate_timeouts"]),
            "steps": self.steps, "consumed_rows": self.consumed_rows,
            "publishes": len(self.publish_ms), "publish_ms": list(self.publish_ms),
            "rejected": self.rejected, "store_recreated": self.recreated,
        }
