"""Run configuration: one frozen object built from the CLI, validated once, sent to every actor
and written into the report."""

from __future__ import annotations

import argparse
import math
import os
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

from reldrop.composites import COMPOSITES
from reldrop.models import MODELS
from reldrop.occlusion import STRATEGIES, OcclusionConfig

__all__ = ["DEFAULT_DATA_DIR", "MODES", "STALE_POLICIES", "TrainConfig"]

MODES = ("async", "sync", "precomputed")
STALE_POLICIES = ("pass", "drop", "re-explain")
ON_ERROR = ("raise", "skip")
DEFAULT_DATA_DIR = Path(os.environ.get("RELDROP_CACHE", Path.home() / ".cache" / "reldrop"))


@dataclass(frozen=True, kw_only=True)
class TrainConfig:
    """Everything needed to rerun a training job (``report.json["config"]``)."""

    train: str | None = None
    test: str | None = None
    ood_test: str | None = None
    model: str = "small-cnn"
    augment: str = "reldrop-pixel"
    mode: str = "async"
    regularizer: str = "none"
    reg_lambda: float | None = None
    composite: str = "reference"
    apply_prob: float = 0.5
    fill: str | None = None
    epochs: int = 3
    batch_size: int = 64
    lr: float = 0.05
    trainers: int = 1
    trainer_cpus: float = 1.0
    explainers: int = 1
    explainer_cpus: float | None = None
    explainer_gpus: float = 0.0
    explainer_batch_size: int | None = None
    explainer_resource: str | None = None
    sync_every: int = 2
    max_staleness: int = 8
    stale_policy: str = "pass"
    precomputed: str | None = None
    on_error: str = "raise"
    limit: int | None = None
    use_gpu: bool = False
    address: str | None = None
    num_cpus: int | None = None
    seed: int = 0
    out: str = "runs/train"
    record_keys: bool = False
    threads: int | None = None

    def __post_init__(self) -> None:
        def bad(name: str, allowed: str) -> ValueError:
            return ValueError(f"{name}={getattr(self, name)!r}; expected {allowed}")

        if self.model not in MODELS:
            raise bad("model", f"one of {sorted(MODELS)}")
        if self.augment not in STRATEGIES:
            raise bad("augment", f"one of {sorted(STRATEGIES)}")
        if self.mode not in MODES:
            raise bad("mode", f"one of {MODES}")
        if self.composite not in COMPOSITES:
            raise bad("composite", f"one of {sorted(COMPOSITES)}")
        if self.stale_policy not in STALE_POLICIES:
            raise bad("stale_policy", f"one of {STALE_POLICIES}")
        if self.on_error not in ON_ERROR:
            raise bad("on_error", f"one of {ON_ERROR}")
        for name in ("epochs", "batch_size", "trainers", "explainers", "sync_every"):
            if getattr(self, name) < 1:
                raise bad(name, "an integer >= 1")
        if self.max_staleness < 0:
            raise bad("max_staleness", "an integer >= 0")
        if not (self.lr > 0 and math.isfinite(self.lr)):
            raise bad("lr", "a positive finite number")
        if self.limit is not None and self.limit < 1:
            raise bad("limit", "an integer >= 1 or None")
        if self.trainer_cpus <= 0:
            raise bad("trainer_cpus", "a positive number of CPUs")
        if self.explainer_cpus is not None and self.explainer_cpus <= 0:
            raise bad("explainer_cpus", "a positive number of CPUs")
        if self.mode == "precomputed" and not self.precomputed:
            raise ValueError("mode='precomputed' needs --precomputed URL (written by `reldrop explain`)")
        self.occlusion()  # validates apply_prob, fill

    # ---- derived -------------------------------------------------------------------------
    def occlusion(self) -> OcclusionConfig:
        return OcclusionConfig(strategy=self.augment, p=self.apply_prob, fill=self.fill)

    @property
    def needs_explainer(self) -> bool:
        """Whether the pipeline runs model-replica explainer actors (async RelDrop)."""
        return self.mode == "async" and STRATEGIES[self.augment].needs_relevance

    @property
    def stage_batch_size(self) -> int:
        return self.explainer_batch_size or self.batch_size

    @property
    def global_batch(self) -> int:
        return self.batch_size * self.trainers

    def ahead_steps(self) -> int:
        """Trainer steps the explainers may run ahead: staleness <= ahead + sync_every + 1
        (the +1: a publish lands asynchronously, at most one step late)."""
        return max(1, self.max_staleness - self.sync_every - 1)

    def max_ahead_samples(self) -> int:
        """Rows explained but not yet consumed that the gate admits. The floor keeps the stream
        live: Ray Data's split operator may hold back up to two blocks (of about one explainer
        batch each) and every trainer needs a full batch."""
        floor = 2 * self.global_batch + 3 * self.stage_batch_size
        return max(self.ahead_steps() * self.global_batch, floor)

    def staleness_bound(self) -> int:
        """The staleness (trainer steps) that the gate guarantees, given the sizes."""
        ahead = math.ceil(self.max_ahead_samples() / self.global_batch)
        return ahead + self.sync_every + 1

    # ---- conversions ---------------------------------------------------------------------
    @classmethod
    def from_namespace(cls, args: argparse.Namespace) -> TrainConfig:
        names = {f.name for f in fields(cls)}
        values = {k: v for k, v in vars(args).items() if k in names}
        return cls(**values)

    def to_json(self) -> dict[str, Any]:
        return asdict(self)
