"""Add RelDrop to a Ray Data pipeline and a Ray Train loop that you wrote yourself.

Three pieces (Grüne et al. 2025, arXiv 2505.21595, as a pipeline stage):

- :func:`add_explainer_stage` appends the explainer actors to any ``ray.data.Dataset`` with an
  image and a label column; they explain each batch with the trainer's newest weights and add
  ``dropped`` (the occlusion mask), ``fallback`` and ``model_version`` columns. It returns the
  dataset and a :class:`StagePlan`.
- :class:`~reldrop.pipeline.explanation.publisher.WeightPublisher`, built from that plan
  inside the training function, publishes the weights and feeds the staleness gate.
- :func:`apply_drop` turns a batch's ``dropped`` mask into filled model inputs on your device.
"""

from __future__ import annotations

import uuid
import warnings
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np
import torch
from torch import nn

from reldrop.checkpoint import ModelSpec
from reldrop.fills import FillParams, apply_fill
from reldrop.normalization import Normalization
from reldrop.occlusion import STRATEGIES, OcclusionConfig
from reldrop.pipeline.data.blocks import cut_blocks, schema_row_bytes
from reldrop.pipeline.explanation.plan import StagePlan
from reldrop.pipeline.explanation.stage import ExplainerStage, StageConfig

__all__ = ["add_explainer_stage", "append_stage", "apply_drop", "pool_strategy"]

Explainers = int | tuple[int, int] | str


def pool_strategy(explainers: Explainers, *, cpus: float, gpus: float = 0.0) -> Any:
    """The actor pool for ``explainers``: a fixed size, ``(min, max)``, or ``"auto"`` (an
    autoscaling pool from 1 to what the cluster's CPUs, or GPUs, hold at ``cpus``/``gpus``
    each, one CPU left for reading)."""
    import ray

    if explainers == "auto":
        if not ray.is_initialized():
            raise ValueError("explainers='auto' sizes the pool from the cluster: call ray.init() "
                             "first, or pass explainers=(min, max)")
        res = ray.cluster_resources()
        top = res.get("GPU", 0.0) / gpus if gpus > 0 else (res.get("CPU", 1.0) - 1.0) / cpus
        explainers = (1, max(1, int(top)))
    if isinstance(explainers, tuple):
        low, high = explainers
        if not (isinstance(low, int) and isinstance(high, int) and 1 <= low <= high):
            raise ValueError(f"explainers={explainers!r}; expected (min, max) with 1 <= min <= max")
        return ray.data.ActorPoolStrategy(min_size=low, max_size=high, max_tasks_in_flight_per_actor=1)
    if isinstance(explainers, bool) or not isinstance(explainers, int) or explainers < 1:
        raise ValueError(f"explainers={explainers!r}; expected an integer >= 1, (min, max) or 'auto'")
    return ray.data.ActorPoolStrategy(size=explainers, max_tasks_in_flight_per_actor=1)


def append_stage(
    ds: Any, config: StageConfig, *, batch_size: int, compute: Any, cpus: float,
    gpus: float = 0.0, resources: Mapping[str, float] | None = None,
) -> Any:
    """``ds.map_batches`` with the explainer actor (shared by ``reldrop train`` and the API)."""
    if cpus <= 0 or gpus < 0:
        raise ValueError(f"cpus={cpus}, gpus={gpus}; expected cpus > 0 and gpus >= 0 per explainer")
    return ds.map_batches(
        ExplainerStage, fn_constructor_args=(config,), batch_size=batch_size,
        batch_format="numpy", compute=compute, num_cpus=cpus, num_gpus=gpus or None,
        resources=dict(resources) if resources else None,
    )


def _cut_to_batches(ds: Any, batch_size: int, row_bytes: int | None) -> None:
    if row_bytes is not None and (isinstance(row_bytes, bool) or row_bytes < 1):
        raise ValueError(f"row_bytes={row_bytes!r}; expected the bytes of one row (>= 1) or None")
    size = row_bytes if row_bytes is not None else schema_row_bytes(ds.schema())
    if size < 1:
        warnings.warn(
            "add_explainer_stage: the dataset's schema has no fixed-size column to size blocks "
            "by, so a block may hold far more than one explainer batch and stall the staleness "
            "gate; pass row_bytes= (bytes of one row)", stacklevel=3)
        return
    cut_blocks(ds, batch_size, size)


def _model_source(
    model_factory: Callable[[], nn.Module] | None, spec: ModelSpec | None,
    normalization: Normalization | None,
) -> tuple[dict[str, Any] | None, Normalization]:
    if (model_factory is None) == (spec is None):
        raise ValueError("add_explainer_stage needs exactly one of model_factory= (a zero-argument "
                         "callable returning your nn.Module) and spec= (a reldrop ModelSpec)")
    if model_factory is not None and not callable(model_factory):
        raise TypeError(f"model_factory must be callable, got {type(model_factory).__name__}")
    if spec is not None and not isinstance(spec, ModelSpec):
        raise TypeError(f"spec must be a reldrop.checkpoint.ModelSpec, got {type(spec).__name__}")
    norm = normalization if normalization is not None else (spec.normalization if spec else None)
    if norm is None:
        raise ValueError("add_explainer_stage needs normalization= (per-channel mean/std of the "
                         "[0, 1]-scaled images) to map uint8 pixels into the model's input space")
    return (spec.to_json() if spec is not None else None), norm


def add_explainer_stage(
    ds: Any, *, model_factory: Callable[[], nn.Module] | None = None,
    spec: ModelSpec | None = None, normalization: Normalization | None = None,
    strategy: str = "reldrop-pixel", p: float = 0.5, occlusion: OcclusionConfig | None = None,
    composite: str = "reference", image_column: str = "image", label_column: str = "label",
    run_id: str | None = None, explainers: Explainers = 1, cpus: float = 1.0,
    gpus: float = 0.0, resources: Mapping[str, float] | None = None, batch_size: int = 64,
    train_batch_size: int | None = None, max_staleness: int = 8, sync_every: int = 2,
    seed: int = 0, gate_timeout_s: float = 15.0, row_bytes: int | None = None,
) -> tuple[Any, StagePlan]:
    """Append RelDrop's explainer stage to ``ds``; return ``(dataset, plan)``.

    ``ds`` rows hold ``image_column`` (uint8 C x H x W, normalised with ``normalization``; float
    is taken as already in model space; or float P x C point clouds) and ``label_column``
    (class index). The model is ``model_factory()`` (picklable, no arguments) or ``spec.build()``.
    ``strategy`` and ``p`` (or a full ``occlusion`` config) choose the occlusion; ``composite``
    the LRP rules. ``explainers`` actors (an int, ``(min, max)`` or ``"auto"``) take ``cpus``,
    ``gpus`` and ``resources`` each and explain ``batch_size`` rows per call.
    ``train_batch_size`` (rows per trainer step over all workers; default ``batch_size``),
    ``max_staleness`` and ``sync_every`` size the staleness gate: ``plan.staleness_bound`` is
    what it guarantees. Pass ``plan`` to :class:`WeightPublisher` in the training function.
    The blocks of ``ds`` and of the stage are cut to about ``batch_size`` rows, so the
    explainers hand rows on batch by batch (:mod:`reldrop.pipeline.data.blocks`); the row size
    comes from ``ds.schema()`` (which runs ``ds`` on its first block) unless ``row_bytes`` gives
    it.
    """
    spec_json, norm = _model_source(model_factory, spec, normalization)
    occ = occlusion if occlusion is not None else OcclusionConfig(strategy=strategy, p=p)
    uses_model = STRATEGIES[occ.strategy].needs_relevance
    plan = StagePlan(
        run_id=run_id or uuid.uuid4().hex[:8], train_batch_size=train_batch_size or batch_size,
        sync_every=sync_every, max_staleness=max_staleness, explainer_batch_size=batch_size,
        uses_weights=uses_model,
    )
    config = StageConfig(
        run_id=plan.run_id, occlusion=occ, spec=spec_json, model_factory=model_factory,
        normalization=norm, composite=composite, use_model=uses_model,
        image_column=image_column, label_column=label_column, max_ahead=plan.max_ahead,
        gate_timeout_s=gate_timeout_s, threads=max(1, int(round(cpus))), seed=seed,
        device="cuda" if gpus > 0 else "cpu",
    )
    compute = pool_strategy(explainers if uses_model else 1, cpus=cpus, gpus=gpus)
    _cut_to_batches(ds, batch_size, row_bytes)
    staged = append_stage(ds, config, batch_size=batch_size, compute=compute, cpus=cpus,
                          gpus=gpus, resources=resources)
    return staged, plan


def _as_tensor(value: Any) -> torch.Tensor:
    if isinstance(value, torch.Tensor):
        return value
    return torch.from_numpy(np.require(np.asarray(value), requirements=["C", "W"]))


def apply_drop(
    batch: Mapping[str, Any], *, fill: str = "zero", normalization: Normalization | None = None,
    device: torch.device | str | None = None, generator: torch.Generator | None = None,
    image_column: str = "image", fill_value: float = 0.0, noise_std: float = 1.0,
    blur_sigma: float = 2.0,
) -> torch.Tensor:
    """Model inputs for a batch from the explainer stage, on ``device``: the images (uint8 are
    normalised with ``normalization``; float are taken as model space) with the ``dropped``
    elements replaced by ``fill`` (``zero`` = the dataset mean in model space, ``constant``,
    ``noise``, ``blur``; point clouds also ``duplicate``). Accepts numpy or torch batches; on
    CUDA the host arrays are pinned and copied without blocking."""
    for column in (image_column, "dropped"):
        if column not in batch:
            raise ValueError(f"batch has no {column!r} column (columns: {sorted(batch)}); "
                             "add the explainer stage with add_explainer_stage first")
    target = torch.device(device) if device is not None else torch.device("cpu")
    images, dropped = _as_tensor(batch[image_column]), _as_tensor(batch["dropped"])
    if target.type == "cuda":
        images = images.pin_memory() if images.device.type == "cpu" else images
        dropped = dropped.pin_memory() if dropped.device.type == "cpu" else dropped
    images = images.to(target, non_blocking=True)
    dropped = dropped.to(target, non_blocking=True).bool()
    if images.dtype == torch.uint8:
        if normalization is None:
            raise ValueError("apply_drop got uint8 images: pass normalization= to map them to model inputs")
        x = normalization.to_model(images)
    else:
        x = images.float()
    params = FillParams(value=fill_value, noise_std=noise_std, blur_sigma=blur_sigma)
    return apply_fill(x, dropped, fill, params, generator)
