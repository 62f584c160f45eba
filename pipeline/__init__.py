"""The distributed side of reldrop: shards over fsspec, Ray Data explainer stage, weight store,
Ray Train trainer.

The public API is importable from here: the shallow hand-off for your own training loop
(:class:`Handoff` over :func:`start_explainers` / :class:`RayTransport`, or
:class:`LocalTransport` in one process), :func:`apply_drop` (the fill), and the older Ray Data
stage (:func:`add_explainer_stage`, :class:`WeightPublisher`, :class:`StagePlan`: its staleness
gate cannot go below about five steps). Everything else lives in the
submodules (``reldrop.pipeline.data.shards``, ``reldrop.pipeline.training.driver``, ...). Names
are imported on first use, so ``import reldrop.pipeline`` stays light (no Ray import).
"""

from __future__ import annotations

from importlib import import_module
from typing import Any

__all__ = [
    "Handoff",
    "LocalTransport",
    "RayTransport",
    "SimulatedDevice",
    "StagePlan",
    "WeightPublisher",
    "add_explainer_stage",
    "apply_drop",
    "explainers_of_rank",
    "staleness",
    "start_explainers",
]

_WHERE = {
    "Handoff": "reldrop.pipeline.explanation.handoff",
    "LocalTransport": "reldrop.pipeline.explanation.handoff",
    "RayTransport": "reldrop.pipeline.explanation.pool",
    "start_explainers": "reldrop.pipeline.explanation.pool",
    "explainers_of_rank": "reldrop.pipeline.explanation.pool",
    "SimulatedDevice": "reldrop.pipeline.simulated",
    "StagePlan": "reldrop.pipeline.explanation.plan",
    "WeightPublisher": "reldrop.pipeline.explanation.publisher",
    "staleness": "reldrop.pipeline.explanation.publisher",
    "add_explainer_stage": "reldrop.pipeline.explanation.api",
    "apply_drop": "reldrop.pipeline.explanation.api",
}


def __getattr__(name: str) -> Any:
    if name in _WHERE:
        return getattr(import_module(_WHERE[name]), name)
    raise AttributeError(f"module 'reldrop.pipeline' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(__all__)
