"""The weight store: a named Ray actor holding ``(version, weights)``, the staleness gate and the
explainers' counters, and :class:`WeightStoreClient`, its typed client.

The trainer (rank 0) publishes every ``sync_every`` steps: the state dict as numpy arrays, put
into the object store once (``ray.put``; numpy arrays travel ~8x faster than torch tensors);
explainers check the version before every batch and pull the object only when it is newer (the
pattern RLlib uses for policy weights). The actor is a thin shell: what it holds and every rule
it applies live in the plain classes of :mod:`reldrop.pipeline.explanation.store`.

If the store dies, nothing stops: explainers keep their last weights and skip the gate until
the trainer recreates the store (same name) and publishes again.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import ray

from reldrop.pipeline.explanation.store import (
    ExplainerBook,
    StalenessGate,
    WeightVersions,
    shapes_of,
    validate_weights,
)

__all__ = [
    "STORE_NAMESPACE",
    "PutWeights",
    "WeightStore",
    "WeightStoreClient",
    "store_name",
    "validate_weights",
]

STORE_NAMESPACE = "reldrop"


def store_name(run_id: str) -> str:
    return f"reldrop-weights-{run_id}"


@ray.remote(num_cpus=0, max_restarts=0)
class WeightStore:
    """Named actor delegating to :class:`WeightVersions`, :class:`StalenessGate` and
    :class:`ExplainerBook` (async: gate waiters sleep in its event loop)."""

    def __init__(self, *, max_ahead: int, expected: dict[str, tuple[int, ...]] | None = None) -> None:
        self._versions = WeightVersions(expected=expected)
        self._gate = StalenessGate(max_ahead=max_ahead)
        self._book = ExplainerBook()

    def publish(
        self, version: int, weights_ref: list[ray.ObjectRef],
        shapes: dict[str, tuple[int, ...]] | None = None,
    ) -> int:
        """Accept ``weights_ref`` (a one-element list, so Ray does not resolve it) as ``version``.
        Without ``shapes`` (older callers) the weights are fetched and validated here."""
        if not (isinstance(weights_ref, list) and len(weights_ref) == 1):
            raise ValueError("publish rejected: weights_ref must be [ObjectRef]")
        if shapes is None:
            weights = ray.get(weights_ref[0])
            validate_weights(weights, self._versions.expected or shapes_of(weights))
            shapes = shapes_of(weights)
        return self._versions.publish(version, weights_ref, shapes)

    def version(self) -> int:
        return self._versions.version

    def latest(self, have: int) -> tuple[int, list[ray.ObjectRef] | None]:
        return self._versions.latest(have)

    def rewind(self, version: int) -> int:
        return self._versions.rewind(version)

    async def acquire(self, rows: int, wait_s: float = 0.0) -> bool:
        return await self._gate.acquire(rows, wait_s)

    async def consumed(self, rows: int) -> None:
        await self._gate.consumed(rows)

    async def reset_progress(self, consumed: int) -> int:
        await self._gate.reset_progress(consumed)
        return consumed

    def register_explainer(self, name: str, handle: Any) -> None:
        self._book.register(name, handle)

    def explainers(self) -> dict[str, Any]:
        return dict(self._book.handles)

    def report_explainer(self, name: str, stats: dict[str, float]) -> None:
        self._book.report(name, stats)

    def explainer_stats(self) -> dict[str, dict[str, float]]:
        return dict(self._book.stats)

    def stats(self) -> dict[str, Any]:
        return {
            "version": self._versions.version,
            "produced": self._gate.produced,
            "consumed": self._gate.consumed_rows,
            "publishes": len(self._versions.history),
            "gate_timeouts": self._gate.timeouts,
        }


@dataclass(frozen=True)
class PutWeights:
    """Validated weights in the object store, ready to publish (see :meth:`WeightStoreClient.put`)."""

    ref: ray.ObjectRef
    shapes: dict[str, tuple[int, ...]]


class WeightStoreClient:
    """Typed access to the store of ``run_id``, looked up by name.

    ``create=True`` (the trainer): a missing or dead store is created again (``recreated``
    counts it). ``create=False`` (explainers): a missing store is tolerated: calls answer
    ``None`` and count a failure, and the caller keeps its last weights. Fire-and-forget calls
    (:meth:`consumed`, :meth:`report_explainer`, :meth:`register_explainer`) look the store up
    by name again at most once a second, so a recreated store is found.
    """

    def __init__(
        self, run_id: str, *, max_ahead: int, create: bool,
        expected: Mapping[str, tuple[int, ...]] | None = None,
    ) -> None:
        self.run_id = run_id
        self.name = store_name(run_id)
        self.max_ahead = int(max_ahead)
        self.create = create
        self.expected: dict[str, tuple[int, ...]] | None = (
            {k: tuple(v) for k, v in expected.items()} if expected is not None else None
        )
        self.failures = 0
        self.recreated = 0
        self._handle: Any = None
        self._created: Any = None  # the creating handle: the actor lives while it is held
        self._had_store = False  # a store was found or made once (a later creation recreates)
        self._looked_up = time.monotonic()
        self._connect()

    # ---- connection ------------------------------------------------------------------------
    def _connect(self) -> Any:
        try:
            self._handle = ray.get_actor(self.name, namespace=STORE_NAMESPACE)
        except ValueError:
            if not self.create:
                self._handle = None
                return None
            if self._had_store:  # it existed and is gone: this is a recreation
                self.recreated += 1
            self._handle = WeightStore.options(  # type: ignore[attr-defined]
                name=self.name, namespace=STORE_NAMESPACE, get_if_exists=True,
            ).remote(max_ahead=self.max_ahead, expected=self.expected)
            # a handle from ray.get_actor does not keep a non-detached actor alive: dropping
            # this one (e.g. when _tell looks the store up again) would end the store
            self._created = self._handle
        self._had_store = True
        return self._handle

    @property
    def handle(self) -> Any:
        return self._handle if self._handle is not None else self._connect()

    def _call(self, method: str, *args: Any, timeout: float = 30.0) -> Any:
        """Call ``method`` on the store and wait; ``None`` (a counted failure) if it is gone.
        An error the store raised (a rejected publish) is raised here as its own type."""
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
                if self.create and attempt == 0:  # _connect recreates it (and counts that)
                    continue
                return None
        return None

    def _tell(self, method: str, *args: Any) -> None:
        """Fire and forget. A message to a dead store is lost without an error, so the handle
        is looked up by name again at most once a second (a recreated store is found)."""
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

    # ---- weights ---------------------------------------------------------------------------
    def put(self, weights: Mapping[str, np.ndarray]) -> PutWeights:
        """Validate ``weights`` (numpy state dict: names and shapes of the first publish,
        finite values) and put them into the object store once."""
        validate_weights(weights, self.expected if self.expected is not None else shapes_of(weights))
        if self.expected is None:
            self.expected = shapes_of(weights)
        return PutWeights(ray.put(dict(weights)), shapes_of(weights))

    def publish(self, version: int, weights: Mapping[str, np.ndarray] | PutWeights) -> int | None:
        """Make ``weights`` the newest version; ``None`` if the store could not be reached.
        Raises ``ValueError`` if the store rejects it (not newer, other names or shapes)."""
        put = weights if isinstance(weights, PutWeights) else self.put(weights)
        return self._call("publish", version, [put.ref], put.shapes)  # type: ignore[no-any-return]

    def latest(self, have: int, *, timeout: float = 10.0) -> tuple[int, dict[str, np.ndarray]] | None:
        """``(version, weights)`` if the store holds another version than ``have`` (newer, or
        older after a rewind), else ``None`` (nothing else, or the store is gone)."""
        answer = self._call("latest", have, timeout=timeout)
        if answer is None or answer[1] is None:
            return None
        version, ref = answer
        return int(version), ray.get(ref[0], timeout=timeout)

    def rewind(self, version: int) -> bool:
        """Let a run resumed at step ``version`` publish it again (see ``WeightVersions.rewind``);
        ``False`` if the store is gone."""
        return self._call("rewind", version) is not None

    def version(self, *, timeout: float = 10.0) -> int | None:
        return self._call("version", timeout=timeout)  # type: ignore[no-any-return]

    # ---- staleness gate --------------------------------------------------------------------
    def acquire(self, rows: int, wait_s: float) -> bool | None:
        """Wait up to ``wait_s`` until ``rows`` may be explained: ``True`` admitted, ``False``
        timed out (let through, counted by the store), ``None`` no store."""
        return self._call("acquire", rows, wait_s, timeout=wait_s + 30.0)  # type: ignore[no-any-return]

    def consumed(self, rows: int) -> None:
        """The trainer consumed ``rows`` (fire and forget)."""
        self._tell("consumed", rows)

    def reset_progress(self, consumed: int) -> bool:
        """Restart the gate's count at ``consumed`` rows; ``False`` if the store is gone."""
        return self._call("reset_progress", consumed) is not None

    # ---- explainers ------------------------------------------------------------------------
    def register_explainer(self, name: str, handle: Any) -> None:
        self._tell("register_explainer", name, handle)

    def report_explainer(self, name: str, stats: Mapping[str, float]) -> None:
        self._tell("report_explainer", name, dict(stats))

    def explainer_stats(self, *, timeout: float = 5.0) -> dict[str, dict[str, float]]:
        return self._call("explainer_stats", timeout=timeout) or {}

    def explainers(self, *, timeout: float = 5.0) -> dict[str, Any]:
        return self._call("explainers", timeout=timeout) or {}

    def stats(self, *, timeout: float = 5.0) -> dict[str, Any] | None:
        return self._call("stats", timeout=timeout)  # type: ignore[no-any-return]

    def kill(self) -> None:
        if self._handle is not None:
            ray.kill(self._handle)
        self._handle = self._created = None

    # ---- compatibility (method-name strings; to be removed once no caller uses them) -------
    def call(self, method: str, *args: Any, timeout: float = 30.0) -> Any:
        """Deprecated: call a store method by name (use the typed methods)."""
        return self._call(method, *args, timeout=timeout)

    def tell(self, method: str, *args: Any) -> None:
        """Deprecated: fire-and-forget call by name (use :meth:`consumed` and friends)."""
        self._tell(method, *args)
