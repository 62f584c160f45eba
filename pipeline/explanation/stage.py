"""The explainer stage: a callable class for ``Dataset.map_batches`` on an actor pool.

Each actor holds a model replica. Before each batch it passes the staleness gate, pulls newer
weights from the :mod:`reldrop.pipeline.explanation.weights` if there are any, computes LRP relevance for the
samples chosen for occlusion and adds two columns: ``dropped`` (uint8 mask of the elements to
occlude; the trainer applies the fill, so the original pixels travel once as uint8) and
``model_version`` (the version that explained the row; -1 for baselines and precomputed
relevance). Random baselines and precomputed relevance use the same class without a model.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from reldrop.checkpoint import ModelSpec, load_numpy_state
from reldrop.occlusion import Occluder
from reldrop.pipeline.data.stream import model_inputs
from reldrop.relevance import relevance

__all__ = ["ExplainerStage", "StageConfig"]


@dataclass(frozen=True, kw_only=True)
class StageConfig:
    """What an explainer actor needs (travels to the actor; no globals read there)."""

    run_id: str
    spec: dict[str, Any]
    occlusion: Any  # reldrop.occlusion.OcclusionConfig
    composite: str = "reference"
    use_model: bool = True
    precomputed: str | None = None
    max_ahead: int = 1 << 30
    gate_timeout_s: float = 15.0
    threads: int = 1
    seed: int = 0
    device: str = "cpu"


class ExplainerStage:
    """``map_batches`` callable: adds ``dropped`` and ``model_version`` columns to a batch."""

    def __init__(self, config: StageConfig) -> None:
        torch.set_num_threads(max(1, config.threads))
        self.config = config
        self.spec = ModelSpec.from_json(config.spec)
        self.occluder = Occluder(config.occlusion)
        self.device = torch.device(config.device)
        self.generator = torch.Generator().manual_seed(config.seed * 1000 + os.getpid())
        self.version = -1
        self.model: torch.nn.Module | None = None
        self.store: Any = None
        self.precomputed: dict[str, np.ndarray] | None = None
        self.gate_waits_s = 0.0
        self.gate_timeouts = 0
        self.batches = 0
        self.explained = 0  # rows sent through LRP
        self.relevance_calls = 0
        self.relevance_s = 0.0  # time inside relevance()
        self.busy_s = 0.0  # time inside __call__, gate waits included
        self.started = time.perf_counter()
        if config.use_model:
            from reldrop.pipeline.explanation.weights import WeightStoreClient  # noqa: PLC0415 (imports ray)

            self.model = self.spec.build().to(self.device).eval()
            self.store = WeightStoreClient(config.run_id, max_ahead=config.max_ahead, create=False)
            self._register()
            self._refresh(wait_s=120.0)
        elif config.precomputed:
            from reldrop.pipeline.data.columns import read_split_columns  # noqa: PLC0415

            self.precomputed = read_split_columns(config.precomputed, "train")

    def _register(self) -> None:
        import ray  # noqa: PLC0415

        ctx = ray.get_runtime_context()
        if ctx.get_actor_id() is not None:  # also usable in-process (tests, benchmarks)
            self.store.tell("register_explainer", ctx.get_actor_id(), ctx.current_actor)

    def _refresh(self, wait_s: float = 0.0) -> None:
        """Load newer published weights, if any (waiting up to ``wait_s`` for the first)."""
        import ray  # noqa: PLC0415

        deadline = time.monotonic() + wait_s
        while True:
            answer = self.store.call("latest", self.version, timeout=10.0)
            if answer is not None:
                version, ref = answer
                if ref is not None:
                    assert self.model is not None
                    load_numpy_state(self.model, ray.get(ref[0]))
                    self.version = version
            if self.version >= 0 or time.monotonic() >= deadline:
                return
            time.sleep(0.05)

    def _gate(self, rows: int) -> None:
        """Wait until the trainer has consumed enough that these rows stay within the bound."""
        start = time.monotonic()
        wait = self.config.gate_timeout_s
        admitted = self.store.call("acquire", rows, wait, timeout=wait + 30.0)
        if admitted is False:  # None: no store, keep going on the last weights
            self.gate_timeouts += 1
        self.gate_waits_s += time.monotonic() - start

    def _relevance(
        self, batch: dict[str, np.ndarray], x: torch.Tensor, applied: torch.Tensor
    ) -> torch.Tensor:
        rel = torch.zeros(x.shape[0], *(x.shape[2:] if x.ndim == 4 else x.shape[1:2]))
        if self.precomputed is not None:
            for i, key in enumerate(batch["key"]):
                if applied[i]:
                    rel[i] = torch.from_numpy(self.precomputed[str(key)].astype(np.float32))
            return rel
        if applied.any():
            assert self.model is not None
            idx = applied
            targets = torch.from_numpy(np.asarray(batch["label"], dtype=np.int64))[idx]
            start = time.perf_counter()
            rel[idx] = relevance(
                self.model, x[idx].to(self.device), targets.to(self.device),
                composite=self.config.composite, bounds=self.spec.normalization.bounds(),
            ).cpu()
            self.relevance_s += time.perf_counter() - start
            self.relevance_calls += 1
            self.explained += int(idx.sum())
        return rel

    def stats(self) -> dict[str, float]:
        """Cumulative timing counters (read by ``reldrop bench`` through the weight store)."""
        return {
            "batches": self.batches, "explained": self.explained,
            "relevance_calls": self.relevance_calls, "relevance_s": self.relevance_s,
            "busy_s": self.busy_s, "gate_wait_s": self.gate_waits_s,
            "gate_timeouts": self.gate_timeouts, "threads": torch.get_num_threads(),
            "alive_s": time.perf_counter() - self.started,
        }

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        start = time.perf_counter()
        n = len(batch["label"])
        if self.model is not None:
            self._gate(n)
            self._refresh()
        x = model_inputs(batch["image"], self.spec.normalization)
        valid = ~np.asarray(batch.get("skipped", np.zeros(n, dtype=bool)), dtype=bool)
        applied = self.occluder.select(n, self.generator) & torch.from_numpy(valid)
        rel = self._relevance(batch, x, applied) if self.occluder.needs_relevance else None
        dropped, fallback = self.occluder.drop_mask(x, rel, applied=applied, generator=self.generator)
        batch["dropped"] = dropped.cpu().numpy().astype(np.uint8)
        batch["fallback"] = fallback.numpy()
        batch["model_version"] = np.full(n, self.version, dtype=np.int64)
        self.batches += 1
        self.busy_s += time.perf_counter() - start
        if self.store is not None:
            self.store.tell("report_explainer", f"pid{os.getpid()}", self.stats())
        return batch
