"""The explainer pool: Ray actors started once per run, and the hand-off's Ray transport.

Each actor is a thin shell around :class:`~reldrop.pipeline.explanation.stage.ExplainerStage`
(a model replica with its LRP composite registered once per weight version). The trainer sends
each chunk with its weight version and a reference to those weights (put into the object store
once per version by the trainer, read zero-copy by every explainer on that node); an actor
fetches them only when the version differs from the one it holds. Actors restart after a crash
(``max_restarts=-1``) and the hand-off sends the chunks they lost elsewhere meanwhile.

Explainer ``i`` serves trainer rank ``i % trainers``: ranks never wait on each other's
explainers. Actors are named ``reldrop-explainer-<run>-<i>`` so a restarted trainer finds them.
"""

from __future__ import annotations

import os
import time
from collections.abc import Mapping
from typing import Any

import numpy as np
import ray

from reldrop.pipeline.explanation.handoff import Columns, ExplainerLost
from reldrop.pipeline.explanation.stage import ExplainerStage, StageConfig
from reldrop.pipeline.simulated import SimulatedDevice, padded

__all__ = [
    "POOL_NAMESPACE",
    "ExplainerActor",
    "RayTransport",
    "explainer_name",
    "explainers_of_rank",
    "start_explainers",
]

POOL_NAMESPACE = "reldrop"


def explainer_name(run_id: str, index: int) -> str:
    return f"reldrop-explainer-{run_id}-{index}"


@ray.remote(max_restarts=-1, max_task_retries=0)
class ExplainerActor:
    """One explainer: loads the weights a call names (if newer than its own) and explains."""

    def __init__(self, config: StageConfig, device: SimulatedDevice | None = None) -> None:
        self.stage = ExplainerStage(config, connect=False)
        self.device = device or SimulatedDevice()
        self.fetch_ms: list[float] = []

    def explain(self, chunk: Columns, epoch: int, version: int, weights: list[Any]) -> Columns:
        """``weights``: ``[ObjectRef]`` of version ``version`` (a list, so Ray passes the
        reference instead of resolving it on every call)."""
        start = time.perf_counter()
        if version != self.stage.version and weights:
            self.stage.load(version, ray.get(weights[0]))
            self.fetch_ms.append((time.perf_counter() - start) * 1e3)
        with padded(self.device.lrp_s(len(chunk["label"]))):
            columns = self.stage.explain(dict(chunk), epoch)
        self.stage.counters["busy_s"] += time.perf_counter() - start
        return columns

    def ping(self) -> int:
        return os.getpid()

    def stats(self) -> dict[str, Any]:
        return {**self.stage.stats(), "fetch_ms": list(self.fetch_ms)}


def start_explainers(
    run_id: str, config: StageConfig, *, count: int, cpus: float, gpus: float = 0.0,
    resources: Mapping[str, float] | None = None, device: SimulatedDevice | None = None,
) -> list[Any]:
    """Start ``count`` named explainer actors for ``run_id`` (they import torch and build the
    model while the trainers start); returns their handles (keep them: they own the actors)."""
    return [
        ExplainerActor.options(  # type: ignore[attr-defined]
            name=explainer_name(run_id, i), namespace=POOL_NAMESPACE, get_if_exists=True,
            num_cpus=cpus, num_gpus=gpus or None, resources=dict(resources or {}) or None,
        ).remote(config, device)
        for i in range(count)
    ]


def explainers_of_rank(run_id: str, *, count: int, rank: int, world: int) -> list[Any]:
    """Handles of the explainers that serve trainer ``rank`` (``i % world == rank``)."""
    mine = [i for i in range(count) if i % world == rank]
    if not mine:
        raise ValueError(f"{count} explainer(s) for {world} trainers: rank {rank} has none; "
                         "start at least as many explainers as trainers")
    return [ray.get_actor(explainer_name(run_id, i), namespace=POOL_NAMESPACE) for i in mine]


class RayTransport:
    """The hand-off's transport over explainer actors (see the module docstring)."""

    def __init__(self, actors: list[Any], *, keep_versions: int = 2) -> None:
        self.actors = actors
        self.keep_versions = keep_versions
        self.refs: dict[int, Any] = {}  # version -> ObjectRef of its weights
        self.probes: dict[int, Any] = {}  # dead explainer -> pending ping

    @property
    def size(self) -> int:
        return len(self.actors)

    def publish(self, version: int, weights: Mapping[str, np.ndarray]) -> None:
        self.refs[version] = ray.put(dict(weights))
        for old in sorted(self.refs)[:-self.keep_versions]:
            del self.refs[old]  # chunks already sent hold their own reference

    def submit(self, index: int, chunk: Columns, epoch: int, version: int) -> Any:
        ref = self.refs.get(version)
        return self.actors[index].explain.remote(chunk, epoch, version, [ref] if ref else [])

    def result(self, handle: Any, timeout: float) -> Columns:
        try:
            return ray.get(handle, timeout=timeout)  # type: ignore[no-any-return]
        except ray.exceptions.GetTimeoutError:
            raise TimeoutError from None
        except (ray.exceptions.RayActorError, ray.exceptions.ActorUnavailableError) as err:
            raise ExplainerLost(str(err).splitlines()[0]) from None

    def alive(self, index: int) -> bool:
        """A dead explainer is pinged; it takes work again once the ping returns."""
        probe = self.probes.get(index)
        if probe is None:
            self.probes[index] = self.actors[index].ping.remote()
            return False
        ready, _ = ray.wait([probe], timeout=0)
        if not ready:
            return False
        del self.probes[index]
        try:
            ray.get(probe)
        except ray.exceptions.RayError:
            return False
        return True
