"""The explainer stage: a callable class for ``Dataset.map_batches`` on an actor pool.

Each actor holds a model replica. Before each batch it passes the staleness gate, pulls newer
weights from the weight store (:mod:`reldrop.pipeline.explanation.weights`) if there are any,
computes LRP relevance for the samples chosen for occlusion and adds three columns:
``dropped`` (uint8 mask of the elements to occlude; the trainer applies the fill, so the
original pixels travel once as uint8), ``fallback`` (relevance unusable, random variant used)
and ``model_version`` (the version that explained the row; -1 for baselines and precomputed
relevance). Random baselines and precomputed relevance use the same class without a model.
"""

from __future__ import annotations

import os
import time
import warnings
import zlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn

from reldrop.checkpoint import ModelSpec
from reldrop.normalization import Normalization
from reldrop.occlusion import Occluder, OcclusionConfig
from reldrop.pipeline.data.stream import model_inputs
from reldrop.pipeline.explanation.replica import ExplainerReplica

__all__ = ["ExplainerStage", "StageConfig"]


@dataclass(frozen=True, kw_only=True)
class StageConfig:
    """What an explainer actor needs (travels to the actor; no globals read there).

    An explainer waits up to ``first_weights_timeout_s`` for the trainer's first publish
    (the trainer may start long after the actors on a busy cluster). The model comes from ``spec`` (a :class:`~reldrop.checkpoint.ModelSpec` as JSON) or from
    ``model_factory`` (a picklable zero-argument callable returning an ``nn.Module``);
    ``normalization`` defaults to the spec's.
    """

    run_id: str
    occlusion: OcclusionConfig
    spec: dict[str, Any] | None = None
    model_factory: Callable[[], nn.Module] | None = None
    normalization: Normalization | None = None
    composite: str = "reference"
    use_model: bool = True
    precomputed: str | None = None
    image_column: str = "image"
    label_column: str = "label"
    max_ahead: int = 1 << 30
    gate_timeout_s: float = 15.0
    first_weights_timeout_s: float = 300.0
    threads: int = 1
    seed: int = 0
    device: str = "cpu"
    #: with a key column: every occlusion draw of a row is a function of (seed, epoch, key)
    #: (``reldrop.keyed``), so sync, async and precomputed runs of one seed draw alike
    key_column: str | None = None
    epoch: int = 0

    def __post_init__(self) -> None:
        if self.spec is None and self.normalization is None:
            raise ValueError("StageConfig needs spec= or normalization= (how pixels map to model inputs)")
        if self.use_model and (self.spec is None) == (self.model_factory is None):
            raise ValueError("StageConfig with use_model=True needs exactly one of spec= and model_factory=")

    def input_normalization(self) -> Normalization:
        if self.normalization is not None:
            return self.normalization
        assert self.spec is not None
        return ModelSpec.from_json(self.spec).normalization

    def build_model(self) -> nn.Module:
        model = self.model_factory() if self.model_factory is not None else None
        if model is None:
            assert self.spec is not None
            model = ModelSpec.from_json(self.spec).build()
        if not isinstance(model, nn.Module):
            raise TypeError(f"model_factory returned {type(model).__name__}, expected a torch.nn.Module")
        return model


def _batch_seed(seed: int, batch: dict[str, Any], config: StageConfig) -> int:
    """A generator seed from the run seed and the content of a batch (reproducible; unlike a
    process id it does not change between two runs with one seed)."""
    digest = 0
    for column in ("key", config.label_column, config.image_column):
        if column in batch:
            digest = zlib.crc32(np.ascontiguousarray(np.asarray(batch[column])).tobytes(), digest)
    return (seed * 0x9E3779B1 + digest) % (2**63)


class ExplainerStage:
    """``map_batches`` callable: adds ``dropped``, ``fallback`` and ``model_version`` columns."""

    def __init__(self, config: StageConfig, *, connect: bool = True) -> None:
        """``connect=False``: no weight store (the hand-off actor loads the weights sent with
        each call, :mod:`reldrop.pipeline.explanation.handoff`)."""
        torch.set_num_threads(max(1, config.threads))
        self.config = config
        self.normalization = config.input_normalization()
        self.occluder = Occluder(config.occlusion)
        self.device = torch.device(config.device)
        self.generator: torch.Generator | None = None  # seeded from the first batch
        self.version = -1
        self.replica: ExplainerReplica | None = None
        self.store: Any = None
        self.precomputed: dict[str, np.ndarray] | None = None
        self.counters = {"batches": 0, "explained": 0, "relevance_calls": 0, "relevance_s": 0.0,
                         "busy_s": 0.0, "gate_wait_s": 0.0, "gate_timeouts": 0}
        self.started = time.perf_counter()
        if config.use_model:
            from reldrop.pipeline.explanation.weights import WeightStoreClient

            self.replica = ExplainerReplica(
                config.build_model(), composite=config.composite,
                bounds=self.normalization.bounds(), device=self.device,
            )
            if not connect:
                return
            self.store = WeightStoreClient(config.run_id, max_ahead=config.max_ahead, create=False)
            self._register()
            self._refresh(wait_s=config.first_weights_timeout_s)
            if self.version < 0:
                warnings.warn(
                    f"explainer of run {config.run_id!r}: no weights published within "
                    f"{config.first_weights_timeout_s:g} s; explaining with the initial model "
                    "(rows carry model_version -1) until the trainer publishes", stacklevel=2)
        elif config.precomputed:
            from reldrop.pipeline.data.columns import read_split_columns

            self.precomputed = read_split_columns(config.precomputed, "train")

    @property
    def model(self) -> nn.Module | None:
        return self.replica.model if self.replica is not None else None

    def _register(self) -> None:
        import ray

        if not ray.is_initialized():  # in-process use without Ray (tests, benchmarks)
            return
        ctx = ray.get_runtime_context()
        if ctx.get_actor_id() is not None:  # also usable in-process (tests, benchmarks)
            self.store.register_explainer(ctx.get_actor_id(), ctx.current_actor)

    def _refresh(self, wait_s: float = 0.0) -> None:
        """Load newer published weights, if any (waiting up to ``wait_s`` for the first)."""
        deadline = time.monotonic() + wait_s
        while True:
            answer = self.store.latest(self.version)
            if answer is not None:
                assert self.replica is not None
                self.load(*answer)
            if self.version >= 0 or time.monotonic() >= deadline:
                return
            time.sleep(0.05)

    def _gate(self, rows: int) -> None:
        """Wait until the trainer has consumed enough that these rows stay within the bound."""
        start = time.monotonic()
        if self.store.acquire(rows, self.config.gate_timeout_s) is False:
            self.counters["gate_timeouts"] += 1  # None: no store, keep going on the last weights
        self.counters["gate_wait_s"] += time.monotonic() - start

    def _labels(self, batch: dict[str, Any], idx: torch.Tensor) -> torch.Tensor:
        """The explained rows' labels, checked on the host (a device-side check would sync)."""
        labels = np.asarray(batch[self.config.label_column], dtype=np.int64)[idx.numpy()]
        classes = self.replica.num_classes if self.replica is not None else None
        if labels.size and (labels.min() < 0 or (classes is not None and labels.max() >= classes)):
            raise ValueError(
                f"column {self.config.label_column!r} holds labels in [{labels.min()}, "
                f"{labels.max()}]; the model has {classes} outputs"
            )
        return torch.from_numpy(labels)

    def _relevance(
        self, batch: dict[str, Any], x: torch.Tensor, applied: torch.Tensor,
        streamed: np.ndarray | None = None,
    ) -> torch.Tensor:
        """Relevance for the ``applied`` rows (zeros elsewhere), on the host: from the
        ``relevance`` column the read joined in (precomputed, streamed shard by shard), from a
        whole-split lookup, or from the model replica."""
        rel = torch.zeros(x.shape[0], *(x.shape[2:] if x.ndim == 4 else x.shape[1:2]))
        idx = torch.nonzero(applied).flatten()  # on the host: no device sync to index
        if streamed is not None:
            rel[idx] = torch.from_numpy(np.asarray(streamed, dtype=np.float32))[idx].reshape(
                rel[idx].shape)
            return rel
        if self.precomputed is not None:
            for i in idx.tolist():
                rel[i] = torch.from_numpy(self.precomputed[str(batch["key"][i])].astype(np.float32))
            return rel
        if idx.numel():
            assert self.replica is not None
            start = time.perf_counter()
            targets = self._labels(batch, idx).to(self.device, non_blocking=True)
            inputs = x[idx].to(self.device, non_blocking=True)
            rel[idx] = self.replica.relevance(inputs, targets).cpu()
            self.counters["relevance_s"] += time.perf_counter() - start
            self.counters["relevance_calls"] += 1
            self.counters["explained"] += int(idx.numel())
        return rel

    def _seeds(self, batch: dict[str, Any], epoch: int) -> torch.Tensor | None:
        if self.config.key_column is None or self.config.key_column not in batch:
            return None
        from reldrop.keyed import sample_seeds

        keys = [str(k) for k in batch[self.config.key_column]]
        return sample_seeds(self.config.seed, epoch, keys)

    def load(self, version: int, weights: Mapping[str, np.ndarray]) -> None:
        """Explain with ``weights`` as ``version`` from now on."""
        assert self.replica is not None
        self.replica.load(weights)  # removes the composite first (see replica.py)
        self.version = int(version)

    def stats(self) -> dict[str, float]:
        """Cumulative timing counters (read by ``reldrop bench`` through the weight store)."""
        return {**self.counters, "threads": torch.get_num_threads(),
                "alive_s": time.perf_counter() - self.started,
                "registrations": self.replica.registrations if self.replica else 0}

    def __call__(self, batch: dict[str, Any]) -> dict[str, Any]:
        start = time.perf_counter()
        if self.replica is not None:
            self._gate(len(batch[self.config.label_column]))
            self._refresh()
        batch.update(self.explain(batch, self.config.epoch))
        self.counters["busy_s"] += time.perf_counter() - start
        if self.store is not None:
            self.store.report_explainer(f"pid{os.getpid()}", self.stats())
        return batch

    def explain(self, batch: dict[str, Any], epoch: int) -> dict[str, np.ndarray]:
        """The ``dropped``, ``fallback`` and ``model_version`` columns for ``batch`` with the
        weights loaded now (draws keyed by ``epoch`` where the batch has a key column)."""
        cfg = self.config
        n = len(batch[cfg.label_column])
        if self.generator is None:
            self.generator = torch.Generator().manual_seed(_batch_seed(cfg.seed, batch, cfg))
        streamed = batch.pop("relevance", None)  # joined by the read; not sent on to trainers
        x = model_inputs(batch[cfg.image_column], self.normalization)
        valid = ~np.asarray(batch.get("skipped", np.zeros(n, dtype=bool)), dtype=bool)
        seeds = self._seeds(batch, epoch)
        applied = self.occluder.select(n, self.generator, seeds=seeds) & torch.from_numpy(valid)
        rel = (self._relevance(batch, x, applied, streamed) if self.occluder.needs_relevance
               else None)
        dropped, fallback = self.occluder.drop_mask(x, rel, applied=applied,
                                                    generator=self.generator, seeds=seeds)
        self.counters["batches"] += 1
        return {"dropped": dropped.cpu().numpy().astype(np.uint8), "fallback": fallback.numpy(),
                "model_version": np.full(n, self.version, dtype=np.int64)}
