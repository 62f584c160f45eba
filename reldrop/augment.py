"""In-loop ("sync") RelDrop for a plain PyTorch training loop (the paper's reference method).

Relevance is computed on the live model for the samples chosen for occlusion only (each with
probability ``p``), then the strategy occludes them::

    reldrop = RelDrop(model, "reldrop-pixel", seed=0)
    for x, y in loader:
        x = reldrop(x, y).inputs          # eval-mode LRP, model mode restored
        # or, keyed: every draw a function of (seed, epoch, key), whatever the batch
        x = reldrop(x, y, keys=keys, epoch=epoch).inputs
        loss = F.cross_entropy(model(x), y)
        ...

The Ray pipeline's ``sync`` mode and every baseline use this same object.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from reldrop.composites import Bounds
from reldrop.keyed import sample_seeds
from reldrop.occlusion import Occluder, OcclusionConfig, OcclusionResult
from reldrop.relevance import Target, _check_targets, relevance

__all__ = ["AugmentStats", "RelDrop"]


@dataclass
class AugmentStats:
    """Running counts: samples seen, occluded, relevance fallbacks, elements dropped."""

    seen: int = 0
    applied: int = 0
    fallback: int = 0
    dropped_fraction_sum: float = 0.0

    def update(self, result: OcclusionResult) -> None:
        self.seen += int(result.applied.numel())
        self.applied += int(result.applied.sum())
        self.fallback += int(result.fallback.sum())
        per_sample = result.dropped.reshape(result.dropped.shape[0], -1).float().mean(dim=1)
        self.dropped_fraction_sum += float(per_sample[result.applied].sum())

    def as_dict(self) -> dict[str, float]:
        mean_drop = self.dropped_fraction_sum / self.applied if self.applied else 0.0
        return {
            "seen": self.seen,
            "applied": self.applied,
            "fallback": self.fallback,
            "mean_dropped_fraction": mean_drop,
        }


class RelDrop:
    """Occlude a batch by its live model's LRP relevance (or by a random baseline strategy)."""

    def __init__(
        self,
        model: nn.Module,
        occlusion: OcclusionConfig | str = "reldrop-pixel",
        *,
        composite: str = "reference",
        target: Target = "label",
        bounds: Bounds | None = None,
        seed: int | None = None,
        **overrides: Any,
    ) -> None:
        self.model = model
        self.occluder = Occluder(occlusion, **overrides)
        self.composite = composite
        self.target: Target = target
        self.bounds = bounds
        self.generator = torch.Generator()
        # an unseeded torch.Generator always starts from the same fixed seed, which would give
        # every unseeded instance (e.g. every pipeline actor) the same occlusions: draw the seed
        # from torch's global generator instead (reproducible under torch.manual_seed)
        if seed is None:
            seed = int(torch.randint(0, 2**62, (1,)))
        self.generator.manual_seed(seed)
        self.seed = int(seed)
        self.stats = AugmentStats()

    def explain(self, inputs: torch.Tensor, targets: torch.Tensor, applied: torch.Tensor) -> torch.Tensor:
        """Relevance for the ``applied`` rows (zeros elsewhere)."""
        kind_shape = inputs.shape[2:] if inputs.ndim == 4 else inputs.shape[1:2]
        rel = torch.zeros((inputs.shape[0], *kind_shape), device=inputs.device)
        if applied.any():
            idx = applied.to(inputs.device)
            rel[idx] = relevance(
                self.model, inputs[idx], targets[applied.to(targets.device)],
                composite=self.composite,
                target=self.target, bounds=self.bounds,
            )
        return rel

    def __call__(
        self, inputs: torch.Tensor, targets: torch.Tensor, *,
        keys: Sequence[str] | None = None, epoch: int = 0,
    ) -> OcclusionResult:
        """Occlude a batch. With ``keys`` (one per sample) every draw is keyed by
        ``sample_seed(seed, epoch, key)``; without, draws come from this object's generator."""
        _check_targets(targets, inputs.shape[0])
        seeds = None
        if keys is not None:
            if len(keys) != inputs.shape[0]:
                raise ValueError(f"{len(keys)} keys for a batch of {inputs.shape[0]} samples")
            seeds = sample_seeds(self.seed, epoch, keys)
        applied = self.occluder.select(inputs.shape[0], self.generator, seeds=seeds)
        rel = self.explain(inputs, targets, applied) if self.occluder.needs_relevance else None
        result = self.occluder(inputs, rel, applied=applied, generator=self.generator, seeds=seeds)
        self.stats.update(result)
        return result
