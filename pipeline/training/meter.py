"""Time a trainer worker spends waiting for data and computing, and its progress lines.

Only rank 0 prints, at most one line per ``interval_s`` plus one per epoch, so a run's console
stays readable however many workers and steps it has.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

__all__ = ["Meter"]


@dataclass
class Meter:
    """Cumulative wait/compute seconds; see the module docstring."""

    rank: int
    world: int
    steps_per_epoch: int
    interval_s: float = 10.0
    wait_s: float = 0.0
    compute_s: float = 0.0
    first_batch_s: float | None = None
    first_wait_s: float | None = None
    rows: int = 0
    started: float = field(default_factory=time.perf_counter)
    _last_line: float = field(default_factory=time.perf_counter)

    def elapsed(self) -> float:
        return time.perf_counter() - self.started

    def timed(self, batches: Iterable[dict[str, Any]]) -> Iterator[dict[str, Any]]:
        """Yield ``batches``, counting the time spent waiting for each as wait and the time
        until the next request (the caller's step) as compute."""
        iterator = iter(batches)
        while True:
            t0 = time.perf_counter()
            try:
                batch = next(iterator)
            except StopIteration:
                return
            t1 = time.perf_counter()
            self.wait_s += t1 - t0
            if self.first_batch_s is None:
                self.first_batch_s = t1 - self.started
                self.first_wait_s = t1 - t0
            self.rows += len(batch["label"])
            yield batch
            self.compute_s += time.perf_counter() - t1

    def progress(self, epoch: int, step: int, totals: dict[str, float]) -> None:
        now = time.perf_counter()
        if self.rank != 0 or now - self._last_line < self.interval_s:
            return
        self._last_line = now
        elapsed = self.elapsed()
        in_epoch = step - epoch * self.steps_per_epoch
        print(
            f"[reldrop] epoch {epoch + 1} step {in_epoch}/{self.steps_per_epoch} "
            f"loss {totals['loss'] / max(totals['seen'], 1):.4f} "
            f"{self.rows * self.world / elapsed:.0f} samples/s, waiting for data "
            f"{100 * self.wait_s / elapsed:.0f}% of the time",
            flush=True,
        )

    def epoch_line(self, record: dict[str, Any], epochs: int) -> None:
        if self.rank != 0:
            return
        scores = " ".join(
            f"{k} {record[k]:.3f}" for k in ("test_accuracy", "ood_accuracy") if k in record
        )
        print(
            f"[reldrop] epoch {record['epoch']}/{epochs} loss {record['loss']:.4f} "
            f"train_acc {record['train_accuracy']:.3f} {scores}".rstrip(),
            flush=True,
        )
