"""Weight publish and fetch through the hand-off, against a training step of the same model.

The trainer's :meth:`~reldrop.pipeline.explanation.handoff.Handoff.publish` copies the weights to
host arrays (on the step's critical path: ``publish_call_ms``) and puts them into the object
store beside the next step (``put_ms``); an explainer fetches a version when the first chunk
naming it arrives (``fetch_ms``, zero-copy on the same node). ``sync_ms`` is the whole trip:
publish until every explainer has explained a one-row chunk with the new version. ``step_ms`` is
an in-process SGD step at ``batch`` rows on this machine, for scale.
"""

from __future__ import annotations

import statistics
import time
import uuid
from typing import Any

import numpy as np
import ray
import torch

from reldrop.checkpoint import ModelSpec
from reldrop.occlusion import OcclusionConfig
from reldrop.pipeline.explanation.handoff import Handoff
from reldrop.pipeline.explanation.pool import ExplainerActor, RayTransport
from reldrop.pipeline.explanation.stage import StageConfig

__all__ = ["measure_weight_sync"]


def _step_ms(model: torch.nn.Module, shape: tuple[int, ...], classes: int, batch: int) -> float:
    x, y = torch.randn(batch, *shape), torch.randint(0, classes, (batch,))
    opt = torch.optim.SGD(model.parameters(), lr=1e-3)
    times = []
    for _ in range(4):
        start = time.perf_counter()
        opt.zero_grad()
        torch.nn.functional.cross_entropy(model(x), y).backward()
        opt.step()
        times.append((time.perf_counter() - start) * 1e3)
    return statistics.median(times[1:])


def measure_weight_sync(
    spec: ModelSpec, *, explainers: int = 2, repeats: int = 5, batch: int = 64, size: int = 28,
) -> dict[str, Any]:
    """Publish ``repeats`` versions of ``spec``'s model to ``explainers`` actors; see above."""
    config = StageConfig(run_id=f"bench-{uuid.uuid4().hex[:8]}", spec=spec.to_json(),
                         occlusion=OcclusionConfig(strategy="reldrop-pixel", p=1.0))
    actors = [ExplainerActor.options(num_cpus=0).remote(config)  # type: ignore[attr-defined]
              for _ in range(explainers)]
    handoff = Handoff(RayTransport(actors), depth=1)
    model = spec.build()
    shape = (spec.in_channels, size, size)
    chunk = {"key": np.array(["k"]), "label": np.zeros(1, np.int64),
             "image": np.zeros((1, *shape), np.uint8), "skipped": np.zeros(1, bool)}
    call_ms, sync_ms = [], []
    try:
        for version in range(repeats + 1):
            start = time.perf_counter()
            handoff.publish(model, version)
            call_ms.append((time.perf_counter() - start) * 1e3)
            handoff.wait_published()  # the put itself is timed too
            refs = [handoff.transport.submit(i, chunk, 0, version) for i in range(explainers)]
            ray.get(refs, timeout=120)
            sync_ms.append((time.perf_counter() - start) * 1e3)
        fetch = [f for a in actors for f in ray.get(a.stats.remote())["fetch_ms"][1:]]
    finally:
        handoff.close()
        for actor in actors:
            ray.kill(actor)
    put = handoff.stats.publish_ms[1:]
    megabytes = sum(v.numel() * v.element_size() for v in model.state_dict().values()) / 2**20
    return {
        "model": spec.name, "megabytes": megabytes, "explainers": explainers, "repeats": repeats,
        "sync_ms_median": statistics.median(sync_ms[1:]), "sync_ms_max": max(sync_ms[1:]),
        "put_ms_median": statistics.median(put), "publish_call_ms_median": statistics.median(call_ms[1:]),
        "fetch_ms_median": statistics.median(fetch) if fetch else None,
        "step_ms": _step_ms(model, shape, spec.num_classes, batch), "batch": batch,
        "sync_ms": sync_ms[1:],
    }
