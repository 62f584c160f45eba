"""``StagePlan``: what the explainer stage and the trainer's weight publisher must agree on.

One frozen object carries the run id (which names the weight store), the publish interval and
the staleness budget, and derives from them the number of rows the staleness gate lets the
explainers run ahead of the trainer and the staleness bound that this implies. The stage
(:func:`reldrop.pipeline.add_explainer_stage`) returns it and the trainer's
:class:`~reldrop.pipeline.WeightPublisher` takes it, so the two sides cannot disagree.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

__all__ = ["StagePlan"]


@dataclass(frozen=True, kw_only=True)
class StagePlan:
    """Weight-store sizing of one run.

    ``train_batch_size`` is the rows one trainer step consumes over all workers together;
    ``explainer_batch_size`` the rows of one explainer call (default: ``train_batch_size``).
    ``uses_weights`` is False for strategies that need no model (random baselines): then no
    weight store is created and the publisher does nothing.
    """

    run_id: str
    train_batch_size: int
    sync_every: int = 2
    max_staleness: int = 8
    explainer_batch_size: int | None = None
    uses_weights: bool = True

    def __post_init__(self) -> None:
        if not isinstance(self.run_id, str) or not self.run_id:
            raise ValueError(f"run_id={self.run_id!r}; expected a non-empty string")
        for name in ("train_batch_size", "sync_every"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name}={value!r}; expected an integer >= 1")
        if not isinstance(self.max_staleness, int) or self.max_staleness < 0:
            raise ValueError(f"max_staleness={self.max_staleness!r}; expected an integer >= 0")
        batch = self.explainer_batch_size
        if batch is not None and (not isinstance(batch, int) or batch < 1):
            raise ValueError(f"explainer_batch_size={batch!r}; expected an integer >= 1 or None")

    @property
    def stage_batch_size(self) -> int:
        return self.explainer_batch_size or self.train_batch_size

    @property
    def ahead_steps(self) -> int:
        """Trainer steps the explainers may run ahead: staleness <= ahead + sync_every + 1
        (the +1: a publish lands asynchronously, at most one step late)."""
        return max(1, self.max_staleness - self.sync_every - 1)

    @property
    def max_ahead(self) -> int:
        """Rows explained but not yet consumed that the gate admits. The floor keeps the stream
        live: Ray Data's split operator may hold back up to two blocks (of about one explainer
        batch each) and every trainer needs a full batch."""
        floor = 2 * self.train_batch_size + 3 * self.stage_batch_size
        return max(self.ahead_steps * self.train_batch_size, floor)

    @property
    def staleness_bound(self) -> int:
        """The staleness (trainer steps) that the gate guarantees, given the sizes; larger
        than ``max_staleness`` when the batches are too large for it (see ``max_ahead``)."""
        return math.ceil(self.max_ahead / self.train_batch_size) + self.sync_every + 1

    def describe(self) -> str:
        """One line for a log: the interval, the gate and the bound it implies."""
        return (
            f"run {self.run_id}: publish every {self.sync_every} steps, gate admits "
            f"{self.max_ahead} rows ahead, staleness bound {self.staleness_bound} steps"
        )

    def to_json(self) -> dict[str, Any]:
        return {**asdict(self), "max_ahead": self.max_ahead, "staleness_bound": self.staleness_bound}
