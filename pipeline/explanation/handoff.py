"""The shallow hand-off: the trainer owns the schedule, explainers only compute.

The shape RL learners use for one-step-off-policy rollouts. When the trainer asks for the batch
of step ``s`` (its weights are version ``s``), :class:`Handoff` first sends the raw batch of step
``s + depth`` to the explainers with the weights of version ``s``, then collects the masks of
batch ``s``, sent ``depth`` steps ago. Every trained row is thus explained by weights at most
``depth`` steps old (exactly ``depth`` in steady state, fewer at the start and after a
re-explanation): the staleness bound holds by construction, with no gate and no buffer whose
depth nobody can see. Each batch is cut into one chunk per explainer, so an LRP pass of L ms
costs about L/K on K explainers, and the trainer never waits while L/K fits in ``depth`` steps.

Publishing with ``sync_every`` > 1 adds ``sync_every - 1`` steps to the bound (the weights sent
are the newest published).

Faults: a chunk whose explainer died is sent again to a live one (with the newest weights); if
none answers within ``wait_s`` the chunk is explained in the training loop by ``fallback`` (the
live model) and counted. Every batch is trained once, nothing is lost or repeated. Memory: at
most ``depth + 1`` batches per trainer are in flight.

:class:`Transport` is how chunks reach explainers: :class:`LocalTransport` (threads in this
process: tests, a laptop) or the Ray actors of :mod:`reldrop.pipeline.explanation.pool`.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Mapping
from concurrent.futures import Future, ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np
from torch import nn

__all__ = [
    "ExplainerLost",
    "Handoff",
    "HandoffStats",
    "LocalTransport",
    "Transport",
    "split_rows",
]

Columns = dict[str, np.ndarray]
#: explains a chunk in the training loop: (chunk, epoch) -> the explainer's columns
Fallback = Callable[[Columns, int], Columns]
#: the columns a chunk carries to an explainer (the rest of the batch stays with the trainer)
CHUNK_COLUMNS = ("key", "image", "label", "skipped")


class ExplainerLost(RuntimeError):
    """The explainer holding a chunk died (it may be restarting)."""


class Transport(Protocol):
    """Where chunks are explained. ``submit`` returns a handle that ``result`` resolves."""

    @property
    def size(self) -> int: ...

    def publish(self, version: int, weights: Mapping[str, np.ndarray]) -> None: ...

    def submit(self, index: int, chunk: Columns, epoch: int, version: int) -> Any: ...

    def result(self, handle: Any, timeout: float) -> Columns:
        """The chunk's columns; raises :class:`ExplainerLost` or ``TimeoutError``."""
        ...

    def alive(self, index: int) -> bool:
        """Whether explainer ``index`` takes work (non-blocking; may probe a dead one)."""
        ...


@dataclass
class HandoffStats:
    """What one trainer's hand-off did (cumulative)."""

    batches: int = 0
    chunks: int = 0
    resent: int = 0  # chunks sent again after their explainer died
    in_loop_rows: int = 0  # rows explained by the trainer's fallback
    lost: int = 0  # explainer deaths seen
    collect_wait_s: float = 0.0
    publish_ms: list[float] = field(default_factory=list)
    publish_blocked_ms: float = 0.0  # time a dispatch waited for its weights

    def to_json(self) -> dict[str, Any]:
        return {"batches": self.batches, "chunks": self.chunks, "resent": self.resent,
                "in_loop_rows": self.in_loop_rows, "lost": self.lost,
                "collect_wait_s": self.collect_wait_s, "publish_ms": list(self.publish_ms),
                "publish_blocked_ms": self.publish_blocked_ms}


def split_rows(n: int, parts: int, *, min_rows: int = 1) -> list[slice]:
    """``n`` rows cut into at most ``parts`` contiguous slices of >= ``min_rows`` (near equal)."""
    parts = max(1, min(parts, n // max(1, min_rows) or 1))
    bounds = np.linspace(0, n, parts + 1).round().astype(int)
    return [slice(int(a), int(b)) for a, b in zip(bounds[:-1], bounds[1:]) if b > a] or [slice(0, n)]


@dataclass
class _Part:
    rows: slice
    index: int
    handle: Any
    chunk: Columns


@dataclass
class _Ticket:
    batch: dict[str, Any]
    parts: list[_Part]


class Handoff:
    """One trainer's hand-off to its explainers; see the module docstring.

    Call :meth:`publish` with the model after every ``sync_every``-th step (and once before the
    first batch), and iterate :meth:`batches` over the raw stream of an epoch.
    """

    def __init__(
        self, transport: Transport, *, depth: int = 2, wait_s: float = 60.0,
        first_wait_s: float = 300.0, fallback: Fallback | None = None, min_chunk_rows: int = 8,
    ) -> None:
        if isinstance(depth, bool) or not isinstance(depth, int) or depth < 1:
            raise ValueError(f"depth={depth!r}; expected an integer >= 1 (steps the explainers "
                             "work ahead; the staleness bound)")
        if transport.size < 1:
            raise ValueError("the hand-off needs at least one explainer")
        self.transport = transport
        self.depth = depth
        self.wait_s = wait_s
        self.first_wait_s = first_wait_s
        self.fallback = fallback
        self.min_chunk_rows = min_chunk_rows
        self.stats = HandoffStats()
        self.version = -1
        self._next = 0  # round-robin start
        self._down: set[int] = set()
        self._collected = 0
        self._publisher = ThreadPoolExecutor(max_workers=1, thread_name_prefix="reldrop-publish")
        self._published: Future[None] | None = None

    # ---- weights ---------------------------------------------------------------------------
    def publish(self, model: nn.Module, version: int) -> None:
        """Make ``model``'s weights ``version``: copied to host arrays now (one copy), handed
        to the transport (``ray.put``) beside the next step; a dispatch waits for it only if
        it is not done by then (``publish_blocked_ms``)."""
        start = time.perf_counter()
        inner = getattr(model, "module", model)  # DDP wraps the model
        inner = inner if isinstance(inner, nn.Module) else model
        weights = {k: v.detach().to("cpu", copy=True).numpy() for k, v in inner.state_dict().items()}
        self.wait_published()
        self._published = self._publisher.submit(self._put, version, weights, start)
        self.version = int(version)

    def _put(self, version: int, weights: Columns, start: float) -> None:
        self.transport.publish(version, weights)
        self.stats.publish_ms.append((time.perf_counter() - start) * 1e3)

    def wait_published(self) -> None:
        """Block until the last :meth:`publish` is in the transport (counted as blocked)."""
        if self._published is not None:
            start = time.perf_counter()
            self._published.result()
            self.stats.publish_blocked_ms += (time.perf_counter() - start) * 1e3
            self._published = None

    def close(self) -> None:
        self.wait_published()
        self._publisher.shutdown(wait=True)

    # ---- the schedule ----------------------------------------------------------------------
    def batches(self, raw: Iterable[dict[str, Any]], epoch: int) -> Iterator[dict[str, Any]]:
        """``raw`` batches with ``dropped``, ``fallback`` and ``model_version`` added, in
        order; ``depth`` batches are being explained while the caller trains on one."""
        if self.version < 0:
            raise RuntimeError("Handoff.publish(model, version) must come before the first batch")
        source = iter(raw)
        pending: deque[_Ticket] = deque()
        while True:
            while len(pending) <= self.depth:  # dispatch the batch of step s + depth first
                batch = next(source, None)
                if batch is None:
                    break
                pending.append(self._dispatch(batch, epoch))
            if not pending:
                return
            yield self._collect(pending.popleft(), epoch)

    def _live(self) -> list[int]:
        for index in sorted(self._down):
            if self.transport.alive(index):
                self._down.discard(index)
        return [i for i in range(self.transport.size) if i not in self._down]

    def _dispatch(self, batch: dict[str, Any], epoch: int) -> _Ticket:
        self.wait_published()
        n = len(batch["label"])
        live = self._live()
        parts: list[_Part] = []
        for j, rows in enumerate(split_rows(n, len(live) or 1, min_rows=self.min_chunk_rows)):
            chunk = {c: np.asarray(batch[c])[rows] for c in CHUNK_COLUMNS if c in batch}
            turn = (self._next + j) % max(1, len(live))
            order = live[turn:] + live[:turn]
            index, handle = self._submit(order, chunk, epoch)
            parts.append(_Part(rows, index, handle, chunk))
        self._next += 1
        self.stats.batches += 1
        self.stats.chunks += len(parts)
        return _Ticket(dict(batch), parts)

    def _submit(self, candidates: list[int], chunk: Columns, epoch: int) -> tuple[int, Any]:
        """Send ``chunk`` to the first candidate that takes it: (index, handle), or (-1, None)."""
        for index in candidates:
            if index in self._down:
                continue
            try:
                return index, self.transport.submit(index, chunk, epoch, self.version)
            except ExplainerLost:
                self._lost(index)
        return -1, None

    def _lost(self, index: int) -> None:
        self.stats.lost += 1
        self._down.add(index)

    def _collect(self, ticket: _Ticket, epoch: int) -> dict[str, Any]:
        start = time.perf_counter()
        wait = self.first_wait_s if self._collected == 0 else self.wait_s
        columns = [self._resolve(part, epoch, start + wait) for part in ticket.parts]
        self._collected += 1
        self.stats.collect_wait_s += time.perf_counter() - start
        batch = ticket.batch
        for name in ("dropped", "fallback", "model_version"):
            batch[name] = np.concatenate([c[name] for c in columns])
        return batch

    def _resolve(self, part: _Part, epoch: int, deadline: float) -> Columns:
        """The part's columns: from its explainer, from another after a death (once per
        live explainer), else from the training loop's fallback."""
        tried: set[int] = set()
        while part.handle is not None:
            try:
                return self.transport.result(part.handle, max(0.0, deadline - time.perf_counter()))
            except ExplainerLost:
                self._lost(part.index)
            except TimeoutError:
                break
            tried.add(part.index)
            part.index, part.handle = self._submit(
                [i for i in self._live() if i not in tried], part.chunk, epoch)
            self.stats.resent += part.handle is not None
        return self._in_loop(part.chunk, epoch)

    def _in_loop(self, chunk: Columns, epoch: int) -> Columns:
        if self.fallback is None:
            raise RuntimeError("no explainer answered and the hand-off has no in-loop fallback")
        self.stats.in_loop_rows += len(chunk["label"])
        return self.fallback(chunk, epoch)


class LocalTransport:
    """Explainers in this process, one thread each (tests, a laptop, a debugger).

    ``explainers`` are objects with ``load(version, weights)`` and ``explain(chunk, epoch)``
    (e.g. :class:`~reldrop.pipeline.explanation.stage.ExplainerStage` with ``connect=False``).
    """

    def __init__(self, explainers: list[Any]) -> None:
        self.explainers = explainers
        self.pools = [ThreadPoolExecutor(max_workers=1) for _ in explainers]
        self.weights: dict[int, Mapping[str, np.ndarray]] = {}
        self.dead: set[int] = set()

    @property
    def size(self) -> int:
        return len(self.explainers)

    def publish(self, version: int, weights: Mapping[str, np.ndarray]) -> None:
        self.weights = {version: weights}  # the newest only: dispatches use it

    def _run(self, index: int, chunk: Columns, epoch: int, version: int,
             weights: Mapping[str, np.ndarray] | None) -> Columns:
        if index in self.dead:
            raise ExplainerLost(f"explainer {index} is dead")
        explainer = self.explainers[index]
        if getattr(explainer, "version", None) != version and weights is not None:
            explainer.load(version, weights)
        return dict(explainer.explain(dict(chunk), epoch))

    def submit(self, index: int, chunk: Columns, epoch: int, version: int) -> Future[Columns]:
        if index in self.dead:
            raise ExplainerLost(f"explainer {index} is dead")
        weights = self.weights.get(version)  # the call carries its weights, as over Ray
        return self.pools[index].submit(self._run, index, chunk, epoch, version, weights)

    def result(self, handle: Future[Columns], timeout: float) -> Columns:
        try:
            return handle.result(timeout=timeout)
        except FutureTimeout:
            raise TimeoutError from None

    def alive(self, index: int) -> bool:
        return index not in self.dead
