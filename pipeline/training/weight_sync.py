"""The trainer's side of the weight store: rank 0 publishes weights, every rank reports the rows
it consumed to the staleness gate."""

from __future__ import annotations

import time

from torch import nn

from reldrop.checkpoint import state_to_numpy
from reldrop.pipeline.training.config import TrainConfig

__all__ = ["WeightSync"]


class WeightSync:
    """Publish (rank 0) and consumption reports (every rank) for one trainer worker."""

    def __init__(
        self, cfg: TrainConfig, run_id: str, model: nn.Module, *, publish: bool, world: int
    ) -> None:
        from reldrop.pipeline.explanation.weights import WeightStoreClient

        self.client = WeightStoreClient(run_id, max_ahead=cfg.max_ahead_samples(), create=publish)
        self.model = model
        self.publishes = publish
        self.world = world
        self.rows = 0  # rows this worker consumed
        self.publish_ms: list[float] = []
        self.rejected = 0
        self._recreated_seen = 0

    @property
    def recreated(self) -> int:
        return self.client.recreated

    def start(self, step: int, *, resumed: bool) -> None:
        """First publish of a run, or of a resumed one (whose store may hold newer versions
        from before the failure: the store accepts the resumed step again)."""
        if self.publishes:
            if resumed:
                self.client.rewind(step)
            self.publish(step)

    def start_epoch(self) -> None:
        """Nothing is in flight between epochs: restart the gate's count from here."""
        if self.publishes:
            self.client.reset_progress(self.rows * self.world)

    def consumed(self, rows: int) -> None:
        self.rows += rows
        self.client.consumed(rows)

    def publish(self, version: int) -> None:
        """Publish the model as ``version`` (rank 0); a store recreated since the last publish
        restarts its gate count from the rows consumed so far."""
        if not self.publishes:
            return
        start = time.perf_counter()
        try:
            put = self.client.put(state_to_numpy(self.model))
            result = self.client.publish(version, put)
        except ValueError:  # not newer, or malformed weights: counted, training goes on
            self.rejected += 1
            return
        if self.client.recreated != self._recreated_seen or result is None:
            self._recreated_seen = self.client.recreated
            self.client.reset_progress(self.rows * self.world)
            if result is None:
                self.client.publish(version, put)
        self.publish_ms.append((time.perf_counter() - start) * 1e3)
