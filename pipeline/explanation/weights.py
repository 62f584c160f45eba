"""The weight store: a named Ray actor holding ``(version, weights)`` and the production gate.

The trainer (rank 0) publishes every ``sync_every`` steps: the state dict as numpy arrays, put
into the object store once (``ray.put``); explainers check the version before every batch and
pull the object only when it is newer (the pattern RLlib uses for policy weights). Versions
only move forward; a stale or malformed publish is rejected.

The store also runs the gate that bounds staleness: explainers *acquire* rows before explaining
them and the trainer reports rows it *consumed*; at most ``max_ahead`` rows may be explained
but not yet consumed. Buffering, not publish frequency, is what makes samples stale.

If the store dies, nothing stops: explainers keep their last weights and skip the gate until
the trainer recreates the store (same name) and publishes again.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

import numpy as np
import ray

__all__ = ["STORE_NAMESPACE", "WeightStore", "WeightStoreClient", "store_name"]

STORE_NAMESPACE = "reldrop"


def store_name(run_id: str) -> str:
    return f"reldrop-weights-{run_id}"


@ray.remote(num_cpus=0, max_restarts=0)
class WeightStore:
    """Holds the newest published weights; see the module docstring."""

    def __init__(self, *, max_ahead: int, keys: list[str] | None = None) -> None:
        self._version = -1
        self._ref: list[ray.ObjectRef] = []
        self._keys = keys
        self._max_ahead = int(max_ahead)
        self._produced = 0
        self._consumed = 0
        self._explainers: dict[str, Any] = {}
        self._explainer_stats: dict[str, dict[str, float]] = {}
        self._history: list[tuple[int, float]] = []
        self._cond = asyncio.Condition()

    def publish(self, version: int, weights_ref: list[ray.ObjectRef]) -> int:
        """Accept ``weights_ref`` (a one-element list so Ray does not resolve it) as ``version``."""
        if not isinstance(version, int) or version <= self._version:
            raise ValueError(
                f"publish rejected: version {version!r} is not newer than {self._version}"
            )
        if not (isinstance(weights_ref, list) and len(weights_ref) == 1):
            raise ValueError("publish rejected: weights_ref must be [ObjectRef]")
        self._version = version
        self._ref = weights_ref
        self._history.append((version, time.time()))
        return version

    def version(self) -> int:
        return self._version

    def latest(self, have: int) -> tuple[int, list[ray.ObjectRef] | None]:
        """``(version, [ref])`` if newer than ``have``, else ``(version, None)``."""
        if self._version > have:
            return self._version, self._ref
        return self._version, None

    def _admits(self, rows: int) -> bool:
        unconsumed = self._produced - self._consumed
        return unconsumed <= 0 or unconsumed + rows <= self._max_ahead

    async def acquire(self, rows: int, wait_s: float = 0.0) -> bool:
        """Admit ``rows`` for explanation once at most ``max_ahead`` would be unconsumed,
        waiting up to ``wait_s`` (no polling: :meth:`consumed` wakes the waiters)."""
        async with self._cond:
            if not self._admits(rows):
                try:
                    await asyncio.wait_for(self._cond.wait_for(lambda: self._admits(rows)), wait_s)
                except TimeoutError:
                    return False
            self._produced += rows
            return True

    async def consumed(self, rows: int) -> None:
        async with self._cond:
            self._consumed += rows
            self._cond.notify_all()

    async def reset_progress(self, consumed: int) -> None:
        """Start the gate from ``consumed`` rows (a fresh store, or a new epoch: nothing is in
        flight then, and rows acquired by a task that died and was retried are forgotten)."""
        async with self._cond:
            self._consumed = consumed
            self._produced = consumed
            self._cond.notify_all()

    def register_explainer(self, name: str, handle: Any) -> None:
        self._explainers[name] = handle

    def explainers(self) -> dict[str, Any]:
        return dict(self._explainers)

    def report_explainer(self, name: str, stats: dict[str, float]) -> None:
        """Keep an explainer's latest cumulative counters (``ExplainerStage.stats``)."""
        self._explainer_stats[name] = stats

    def explainer_stats(self) -> dict[str, dict[str, float]]:
        return dict(self._explainer_stats)

    def stats(self) -> dict[str, Any]:
        return {
            "version": self._version,
            "produced": self._produced,
            "consumed": self._consumed,
            "publishes": len(self._history),
        }


def validate_weights(weights: dict[str, np.ndarray], expected: dict[str, tuple[int, ...]]) -> None:
    """Reject a malformed publish: same names and shapes as the model, finite numeric arrays."""
    if set(weights) != set(expected):
        missing, extra = set(expected) - set(weights), set(weights) - set(expected)
        raise ValueError(f"weights rejected: missing {sorted(missing)}, unexpected {sorted(extra)}")
    for name, array in weights.items():
        if not isinstance(array, np.ndarray) or tuple(array.shape) != tuple(expected[name]):
            raise ValueError(
                f"weights rejected: {name!r} has shape {getattr(array, 'shape', None)}, "
                f"expected {expected[name]}"
            )
        if array.dtype.kind == "f" and not np.isfinite(array).all():
            raise ValueError(f"weights rejected: {name!r} holds non-finite values")


class WeightStoreClient:
    """Looks the store up by name, recreating (trainer) or tolerating (explainers) its loss."""

    def __init__(self, run_id: str, *, max_ahead: int, create: bool) -> None:
        self.name = store_name(run_id)
        self.max_ahead = max_ahead
        self.create = create
        self.failures = 0
        self.recreated = 0
        self._handle: Any = None
        self._looked_up = time.monotonic()
        self._connect()

    def _connect(self) -> Any:
        try:
            self._handle = ray.get_actor(self.name, namespace=STORE_NAMESPACE)
        except ValueError:
            if not self.create:
                self._handle = None
                return None
            self._handle = WeightStore.options(  # type: ignore[attr-defined]
                name=self.name,
                namespace=STORE_NAMESPACE,
                get_if_exists=True,
            ).remote(max_ahead=self.max_ahead)
        return self._handle

    @property
    def handle(self) -> Any:
        return self._handle if self._handle is not None else self._connect()

    def call(self, method: str, *args: Any, timeout: float = 30.0) -> Any:
        """Call ``method`` on the store; ``None`` (and a counted failure) if it is gone."""
        for attempt in range(2):
            handle = self.handle
            if handle is None:
                self.failures += 1
                return None
            try:
                return ray.get(getattr(handle, method).remote(*args), timeout=timeout)
            except ray.exceptions.RayTaskError as err:  # the store raised: a real answer
                raise err.as_instanceof_cause() from None
            except ray.exceptions.RayError:  # died, unavailable, timed out
                self.failures += 1
                self._handle = None
                if self.create and attempt == 0:
                    self.recreated += 1
                    continue
                return None
        return None

    def tell(self, method: str, *args: Any) -> None:
        """Fire-and-forget call. A message to a dead store is lost without an error, so the
        handle is looked up by name again at most once a second (a recreated store is found)."""
        now = time.monotonic()
        if now - self._looked_up > 1.0:
            self._looked_up = now
            try:
                self._handle = ray.get_actor(self.name, namespace=STORE_NAMESPACE)
            except ValueError:
                self._handle = None
        handle = self.handle
        if handle is not None:
            getattr(handle, method).remote(*args)

    def kill(self) -> None:
        if self._handle is not None:
            ray.kill(self._handle)
            self._handle = None
