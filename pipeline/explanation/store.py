"""What the weight store holds, as plain classes (the Ray actor in
:mod:`reldrop.pipeline.explanation.weights` only delegates to them, so they are tested without Ray).

- :class:`WeightVersions`: the newest published ``(version, weights handle)``; versions only
  move forward and every publish has the names and shapes of the first one (or of the model
  the store was created for).
- :class:`StalenessGate`: bounds the rows explained but not yet consumed by the trainer.
  Buffering, not publish frequency, is what makes samples stale, so the gate is what bounds
  staleness: explainers *acquire* rows before explaining them, trainers report rows they
  *consumed*, and at most ``max_ahead`` rows may be in between.
- :class:`ExplainerBook`: explainer actor handles (for fault-injection tests) and their latest
  cumulative counters (for ``reldrop bench`` and the run report).
"""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import Mapping
from typing import Any

import numpy as np

__all__ = [
    "ExplainerBook",
    "StalenessGate",
    "WeightVersions",
    "check_shapes",
    "shapes_of",
    "validate_weights",
]

Shapes = dict[str, tuple[int, ...]]


def shapes_of(weights: Mapping[str, Any]) -> Shapes:
    """``{name: shape}`` of a state dict (numpy arrays or tensors)."""
    return {name: tuple(int(d) for d in array.shape) for name, array in weights.items()}


def check_shapes(shapes: Mapping[str, tuple[int, ...]], expected: Mapping[str, tuple[int, ...]]) -> None:
    """Reject a publish whose parameter names or shapes differ from the model's."""
    if set(shapes) != set(expected):
        missing, extra = set(expected) - set(shapes), set(shapes) - set(expected)
        raise ValueError(f"weights rejected: missing {sorted(missing)}, unexpected {sorted(extra)}")
    for name, shape in shapes.items():
        if tuple(shape) != tuple(expected[name]):
            raise ValueError(
                f"weights rejected: {name!r} has shape {tuple(shape)}, "
                f"expected {tuple(expected[name])}"
            )


def validate_weights(weights: Mapping[str, np.ndarray], expected: Mapping[str, tuple[int, ...]]) -> None:
    """Reject a malformed publish: numpy arrays with the model's names and shapes, finite values."""
    for name, array in weights.items():
        if not isinstance(array, np.ndarray):
            raise ValueError(
                f"weights rejected: {name!r} is a {type(array).__name__}, expected a numpy array "
                "(publish reldrop.checkpoint.state_to_numpy(model))"
            )
    check_shapes(shapes_of(weights), expected)
    for name, array in weights.items():
        if array.dtype.kind == "f" and not np.isfinite(array).all():
            raise ValueError(f"weights rejected: {name!r} holds non-finite values")


class WeightVersions:
    """The newest published weights: ``publish`` accepts only a newer version with the expected
    names and shapes (after a :meth:`rewind`, the rewound one); ``latest(have)`` hands out the
    payload only to holders of another version."""

    def __init__(self, *, expected: Mapping[str, tuple[int, ...]] | None = None) -> None:
        self.version = -1
        self.payload: Any = None
        self.expected: Shapes | None = (
            {k: tuple(v) for k, v in expected.items()} if expected is not None else None
        )
        self.history: list[tuple[int, float]] = []

    def publish(self, version: int, payload: Any, shapes: Mapping[str, tuple[int, ...]]) -> int:
        """Make ``payload`` (an opaque handle to the weights) the newest, as ``version``."""
        if isinstance(version, bool) or not isinstance(version, int) or version <= self.version:
            raise ValueError(
                f"publish rejected: version {version!r} is not newer than {self.version}; "
                "versions only move forward (publish the trainer's step count)"
            )
        if self.expected is None:
            self.expected = {k: tuple(v) for k, v in shapes.items()}
        else:
            check_shapes(shapes, self.expected)
        self.version = version
        self.payload = payload
        self.history.append((version, time.time()))
        return version

    def rewind(self, version: int) -> int:
        """A run resumed from a checkpoint publishes an older step again: accept ``version``
        once more (the weights of the lost future are dropped; explainers holding them reload
        on the next publish, since :meth:`latest` answers any holder of another version)."""
        if version <= self.version:
            self.version, self.payload = version - 1, None
        return self.version

    def latest(self, have: int) -> tuple[int, Any]:
        """``(version, payload)`` if ``have`` is another version (older, or newer from before a
        :meth:`rewind`), else ``(version, None)``."""
        fresh = self.payload is not None and self.version != have
        return (self.version, self.payload) if fresh else (self.version, None)


class StalenessGate:
    """At most ``max_ahead`` rows acquired (explained) but not yet consumed.

    A batch is admitted when nothing is outstanding (so a batch larger than the bound never
    deadlocks) or when it fits under the bound. Waiters sleep on a condition that
    :meth:`consumed` and :meth:`reset_progress` signal: no polling. Use from one event loop
    (the async Ray actor's).
    """

    def __init__(self, *, max_ahead: int) -> None:
        if isinstance(max_ahead, bool) or not isinstance(max_ahead, int) or max_ahead < 1:
            raise ValueError(f"max_ahead={max_ahead!r}; expected an integer >= 1 (rows)")
        self.max_ahead = max_ahead
        self.produced = 0
        self.consumed_rows = 0
        self.timeouts = 0
        self._cond: asyncio.Condition | None = None

    @property
    def outstanding(self) -> int:
        """Rows explained but not yet consumed."""
        return self.produced - self.consumed_rows

    def _condition(self) -> asyncio.Condition:
        if self._cond is None:  # bound to the running loop on first use
            self._cond = asyncio.Condition()
        return self._cond

    def admits(self, rows: int) -> bool:
        return self.outstanding <= 0 or self.outstanding + rows <= self.max_ahead

    async def acquire(self, rows: int, wait_s: float = 0.0) -> bool:
        """Admit ``rows`` once they fit under the bound, waiting up to ``wait_s`` seconds;
        ``False`` (and a counted timeout) if they did not fit in time."""
        if rows < 0 or not math.isfinite(wait_s) or wait_s < 0:
            raise ValueError(f"acquire(rows={rows}, wait_s={wait_s}); expected rows >= 0, wait_s >= 0")
        cond = self._condition()
        async with cond:
            if not self.admits(rows):
                try:
                    await asyncio.wait_for(cond.wait_for(lambda: self.admits(rows)), wait_s)
                except TimeoutError:
                    self.timeouts += 1
                    return False
            self.produced += rows
            return True

    async def consumed(self, rows: int) -> None:
        """The trainer consumed ``rows`` (explained or not): wake the waiters."""
        cond = self._condition()
        async with cond:
            self.consumed_rows += rows
            cond.notify_all()

    async def reset_progress(self, consumed: int) -> None:
        """Start the gate from ``consumed`` rows (a fresh store, or a new epoch: nothing is in
        flight then, and rows acquired by a task that died and was retried are forgotten)."""
        cond = self._condition()
        async with cond:
            self.consumed_rows = consumed
            self.produced = consumed
            cond.notify_all()


class ExplainerBook:
    """Explainer actor handles by name and their latest cumulative counters."""

    def __init__(self) -> None:
        self.handles: dict[str, Any] = {}
        self.stats: dict[str, dict[str, float]] = {}

    def register(self, name: str, handle: Any) -> None:
        self.handles[name] = handle

    def report(self, name: str, stats: Mapping[str, float]) -> None:
        """Keep an explainer's latest counters (they are cumulative: the newest replaces)."""
        self.stats[name] = dict(stats)
