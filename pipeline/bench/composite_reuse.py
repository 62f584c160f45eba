"""What registering the LRP composite once per weight version saves, per explainer batch.

Interleaves ``relevance()`` (composite built and registered on every call, as before) with
:class:`~reldrop.pipeline.explanation.replica.ExplainerReplica` (registered once, reused) on
the same model and batch, and reports medians; also checks the two agree bitwise.
"""

from __future__ import annotations

import copy
import statistics
import time
from typing import Any

import torch

from reldrop.checkpoint import ModelSpec
from reldrop.pipeline.explanation.replica import ExplainerReplica
from reldrop.relevance import relevance

__all__ = ["measure_composite_reuse"]


def measure_composite_reuse(
    spec: ModelSpec, *, shape: tuple[int, ...], batch: int = 64, repeats: int = 10,
    composite: str = "reference", seed: int = 0,
) -> dict[str, Any]:
    """Median ms per batch of ``relevance()`` per call vs the replica's registered composite."""
    torch.manual_seed(seed)
    model = spec.build().eval()
    x = torch.randn(batch, *shape)
    y = torch.randint(0, spec.num_classes, (batch,))
    bounds = spec.normalization.bounds()
    # its own copy: a second composite registered on a model that holds one would merge
    # BatchNorm twice
    replica = ExplainerReplica(copy.deepcopy(model), composite=composite, bounds=bounds, device=torch.device("cpu"))
    same = torch.equal(replica.relevance(x, y), relevance(model, x, y, composite=composite, bounds=bounds))
    per_call, reused = [], []
    for _ in range(repeats):
        start = time.perf_counter()
        relevance(model, x, y, composite=composite, bounds=bounds)
        per_call.append((time.perf_counter() - start) * 1e3)
        start = time.perf_counter()
        replica.relevance(x, y)
        reused.append((time.perf_counter() - start) * 1e3)
    replica.release()
    a, b = statistics.median(per_call), statistics.median(reused)
    return {"model": spec.name, "batch": batch, "repeats": repeats, "bitwise_equal": same,
            "per_call_ms": a, "registered_once_ms": b, "saved_ms": a - b,
            "saved_fraction": (a - b) / a if a else float("nan")}
