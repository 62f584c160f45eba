"""A modelled accelerator: pad trainer steps and explainer calls to chosen durations.

A GPU is rarely lent to this project, yet whether the hand-off keeps a fast trainer busy is a
question of timing: a trainer step of S ms and an LRP pass of L ms per batch of B rows (on an
H100, ResNet-18: L is about 2.5 S). With a :class:`SimulatedDevice` the real code paths run on
the CPU and each piece of work is padded (slept) up to its modelled duration, so throughput,
waiting and staleness come out as on a device with those timings, provided the real work fits
inside them (a small model; the report keeps the real figures beside the modelled ones).
Results are always labelled ``simulated`` and never reported as GPU figures.
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from typing import Any

__all__ = ["SimulatedDevice", "padded"]


@dataclass(frozen=True, kw_only=True)
class SimulatedDevice:
    """Modelled durations: ``step_ms`` per trainer step, ``lrp_ms`` per explainer call of
    ``batch_size`` rows (scaled by the rows a call holds). ``None``: not modelled."""

    step_ms: float | None = None
    lrp_ms: float | None = None
    batch_size: int = 64

    def __post_init__(self) -> None:
        for name in ("step_ms", "lrp_ms"):
            value = getattr(self, name)
            if value is not None and (isinstance(value, bool) or not math.isfinite(value) or value < 0):
                raise ValueError(f"{name}={value!r}; expected a finite number of milliseconds >= 0")
        if isinstance(self.batch_size, bool) or self.batch_size < 1:
            raise ValueError(f"batch_size={self.batch_size!r}; expected an integer >= 1")

    @property
    def active(self) -> bool:
        return self.step_ms is not None or self.lrp_ms is not None

    def step_s(self) -> float | None:
        return None if self.step_ms is None else self.step_ms / 1e3

    def lrp_s(self, rows: int) -> float | None:
        return None if self.lrp_ms is None else self.lrp_ms / 1e3 * rows / self.batch_size

    def to_json(self) -> dict[str, Any]:
        return {"simulated": self.active, **asdict(self)}


@contextmanager
def padded(seconds: float | None) -> Iterator[None]:
    """Run the block, then sleep until it has taken ``seconds`` (``None``: no padding)."""
    start = time.perf_counter()
    yield
    if seconds is not None:
        left = seconds - (time.perf_counter() - start)
        if left > 0:
            time.sleep(left)
