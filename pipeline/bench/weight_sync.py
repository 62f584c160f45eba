"""Weight sync latency: from the trainer's publish to every explainer holding the new version.

Followers are plain Ray actors that each hold an :class:`~reldrop.pipeline.explanation.stage.ExplainerStage`
and refresh it through its own code path (``latest`` on the :mod:`reldrop.pipeline.explanation.weights`, pull
the object, ``load_numpy_state``), polling as fast as an idle explainer would. The clock starts
before the driver validates and ``ray.put``s the numpy state dict, as in the trainer's publish.
"""

from __future__ import annotations

import statistics
import time
import uuid
from typing import Any

import ray

from reldrop.checkpoint import ModelSpec, state_to_numpy
from reldrop.occlusion import OcclusionConfig
from reldrop.pipeline.explanation.stage import ExplainerStage, StageConfig
from reldrop.pipeline.explanation.weights import WeightStoreClient

__all__ = ["measure_weight_sync"]


@ray.remote(num_cpus=0)
class _Follower:
    """An explainer replica that only refreshes weights."""

    def __init__(self, config: StageConfig) -> None:
        self.stage = ExplainerStage(config)  # waits for version 0

    def wait_for(self, version: int, poll_s: float, timeout_s: float) -> tuple[float, int]:
        """Refresh until holding ``version``; return (wall clock when loaded, version held)."""
        deadline = time.monotonic() + timeout_s
        while self.stage.version < version and time.monotonic() < deadline:
            self.stage._refresh()  # the explainer's own per-batch refresh
            if self.stage.version < version:
                time.sleep(poll_s)
        return time.time(), self.stage.version


def measure_weight_sync(
    spec: ModelSpec, *, explainers: int = 2, repeats: int = 5, poll_s: float = 0.002,
    timeout_s: float = 30.0,
) -> dict[str, Any]:
    """Publish ``repeats`` new versions of ``spec``'s model; time until all followers hold each."""
    run_id = f"bench-{uuid.uuid4().hex[:8]}"
    client = WeightStoreClient(run_id, max_ahead=1 << 30, create=True)
    model = spec.build()
    state = state_to_numpy(model)
    megabytes = sum(a.nbytes for a in state.values()) / 2**20
    client.publish(0, state)
    config = StageConfig(run_id=run_id, spec=spec.to_json(), occlusion=OcclusionConfig(strategy="reldrop-pixel"))
    followers = [_Follower.remote(config) for _ in range(explainers)]  # type: ignore[attr-defined]
    try:
        ray.get([f.wait_for.remote(0, poll_s, timeout_s) for f in followers], timeout=120)
        sync_ms, put_ms = [], []
        for version in range(1, repeats + 1):
            pending = [f.wait_for.remote(version, poll_s, timeout_s) for f in followers]
            time.sleep(0.2)  # followers are polling
            start = time.time()
            put = client.put(state_to_numpy(model))  # validated, then one ray.put
            put_ms.append((time.time() - start) * 1e3)
            client.publish(version, put)
            done = ray.get(pending, timeout=timeout_s + 10)
            if any(v < version for _, v in done):
                raise RuntimeError(f"weight sync: a follower did not reach version {version} in {timeout_s} s")
            sync_ms.append((max(t for t, _ in done) - start) * 1e3)
    finally:
        for f in followers:
            ray.kill(f)
        client.kill()
    return {
        "model": spec.name, "megabytes": megabytes, "explainers": explainers, "repeats": repeats,
        "sync_ms_median": statistics.median(sync_ms), "sync_ms_max": max(sync_ms),
        "put_ms_median": statistics.median(put_ms), "sync_ms": sync_ms,
    }
