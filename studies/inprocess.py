"""One training in this process (no Ray): the paper's in-loop way, cheap enough for a
hyperparameter search over many small runs.

The data are shard splits loaded into memory once (:class:`SplitData`); a run (:class:`RunSpec`)
is a model trained with either a trainer-side regularizer (:mod:`reldrop.regularizers`) or an
in-loop occlusion (:class:`reldrop.augment.RelDrop`, keyed per-sample randomness), then its
accuracy on every split. It shares the Ray trainer's parts: the optimisers of
:mod:`reldrop.optimizers`, the normalisation estimate, the step (with the regularizer's gradient
clipping). Mini-batches are drawn from a generator seeded with the run's seed.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from reldrop.augment import RelDrop
from reldrop.checkpoint import ModelSpec
from reldrop.normalization import Normalization
from reldrop.occlusion import OcclusionResult
from reldrop.optimizers import OPTIMIZERS, make_optimizer
from reldrop.pipeline.training.step import train_step
from reldrop.regularizers import make_regularizer
from studies.lag import WeightLag

__all__ = ["STUDY_SPLITS", "RunSpec", "SplitData", "accuracy_of", "load_splits",
           "load_study_data", "mean_std", "measure_run", "occlusion_figures",
           "train_in_process"]


@dataclass(frozen=True, kw_only=True)
class SplitData:
    """One split in memory: uint8 images N x C x H x W, labels N, masks N x H x W, keys."""

    images: torch.Tensor
    labels: torch.Tensor
    masks: torch.Tensor | None
    keys: tuple[str, ...]

    def __len__(self) -> int:
        return int(self.labels.shape[0])


def load_splits(root: str, splits: tuple[str, ...], *, limit: int | None = None) -> dict[str, SplitData]:
    """Read ``splits`` of the shard dataset at ``root`` (at most ``limit`` samples each)."""
    from reldrop.pipeline.data.read import iter_samples  # torch is heavy

    out: dict[str, SplitData] = {}
    for split in splits:
        images, labels, masks, keys = [], [], [], []
        for i, sample in enumerate(iter_samples(root, split)):
            if limit is not None and i >= limit:
                break
            images.append(np.asarray(sample["image"]))
            labels.append(int(sample["label"]))
            masks.append(sample.get("mask"))
            keys.append(str(sample.get("__key__", sample.get("key", f"{split}-{i}"))))
        if not images:
            raise ValueError(f"{root}#{split} holds no samples")
        present = [m for m in masks if m is not None]
        out[split] = SplitData(
            images=torch.from_numpy(np.stack(images)),
            labels=torch.tensor(labels, dtype=torch.long),
            masks=torch.from_numpy(np.stack(present)).float() if len(present) == len(masks) else None,
            keys=tuple(keys),
        )
    return out


#: in- and out-of-distribution test splits by the names that hold in datasets of either naming
#: (``test``/``test-ood`` now, ``test-id``/``test`` before; see reldrop.pipeline.data.plan)
STUDY_SPLITS = ("train", "val", "test-id", "test-ood")


def load_study_data(root: str, *, limit: int | None, study: str) -> tuple[dict[str, SplitData], int]:
    """The splits a study selects and scores on (train, val, test-id, test-ood) and the class
    count; a dataset without them is one line naming what it has and how to make one."""
    from reldrop.pipeline.data.manifest import read_manifest
    from reldrop.pipeline.data.plan import resolve_split

    manifest = read_manifest(root)
    missing = []
    for split in STUDY_SPLITS:
        try:
            resolve_split(split, manifest.splits, root)
        except ValueError:
            missing.append(split)
    if missing:
        raise ValueError(f"{root!r} lacks split(s) {missing} (has {list(manifest.splits)}); the "
                         f"{study} needs {', '.join(STUDY_SPLITS)} (e.g. make-shards --dataset "
                         "viviano-synthetic or decoy-mnist-strong)")
    return load_splits(root, STUDY_SPLITS, limit=limit), manifest.num_classes


def mean_std(values: Sequence[float | None]) -> dict[str, float | int | None]:
    """Mean and sample standard deviation over seeds (None, NaN left out; std None below 2)."""
    vals = [float(v) for v in values if v is not None and v == v]
    return {"mean": statistics.fmean(vals) if vals else None,
            "std": statistics.stdev(vals) if len(vals) > 1 else None, "n": len(vals)}


@dataclass(frozen=True, kw_only=True)
class RunSpec:
    """A run: ``regularizer`` (+ ``lam``, ``params``) or ``augment`` (+ occlusion ``params``)."""

    regularizer: str = "none"
    lam: float | None = None
    augment: str = "none"
    params: Mapping[str, Any] = field(default_factory=dict)
    model: str = "small-cnn"
    epochs: int = 3
    batch_size: int = 64
    lr: float = 0.05
    #: a name of :data:`reldrop.optimizers.OPTIMIZERS`: ``sgd`` (``reldrop train``'s default) or
    #: ``adam`` (Viviano et al.'s synthetic-task configuration trains with Adam at lr 1e-4)
    optimizer: str = "sgd"
    composite: str = "reference"
    #: stale relevance (see :class:`~studies.lag.WeightLag`): explain each
    #: batch ``lag`` steps before training on it, with weights published every ``publish_every``
    #: steps; 0 and 1 are the in-loop (sync) method
    lag: int = 0
    publish_every: int = 1
    #: lagged runs only: also occlude each batch with the live weights (same keyed draws, not
    #: trained on) and record how far the two drop masks agree (IoU); costs one more LRP pass
    agreement: bool = False

    def __post_init__(self) -> None:
        if self.regularizer != "none" and self.augment != "none":
            raise ValueError("a run uses a regularizer or an augmentation, not both")
        if self.epochs < 1 or self.batch_size < 1 or not self.lr > 0:
            raise ValueError(f"epochs={self.epochs}, batch_size={self.batch_size}, lr={self.lr}: "
                             "expected positive values")
        OPTIMIZERS.get(self.optimizer)  # an unknown name: one line naming the known ones
        if self.lag < 0 or self.publish_every < 1:
            raise ValueError(f"lag={self.lag}, publish_every={self.publish_every}: expected "
                             "lag >= 0 and publish_every >= 1")

    @property
    def stale(self) -> bool:
        return self.augment != "none" and (self.lag > 0 or self.publish_every > 1)


def accuracy_of(model: nn.Module, data: SplitData, normalization: Normalization) -> float:
    """Top-1 accuracy of ``model`` (eval mode, modes restored) on ``data``."""
    was = model.training
    model.eval()
    correct = 0
    with torch.no_grad():
        for start in range(0, len(data), 256):
            x = normalization.to_model(data.images[start : start + 256])
            correct += int((model(x).argmax(1) == data.labels[start : start + 256]).sum())
    model.train(was)
    return correct / len(data)


def mask_iou(a: OcclusionResult, b: OcclusionResult) -> list[float]:
    """Per sample occluded in both: |dropped a & dropped b| / |dropped a | dropped b| (1 when
    neither drops anything)."""
    both = (a.applied & b.applied).cpu()
    da, db = a.dropped[both].flatten(1), b.dropped[both].flatten(1)
    union = (da | db).sum(1)
    inter = (da & db).sum(1)
    return [1.0 if int(u) == 0 else int(i) / int(u) for i, u in zip(inter, union, strict=True)]


def _occlude(
    augment: RelDrop, lag: WeightLag | None, step: int, x: torch.Tensor, y: torch.Tensor,
    keys: list[str], epoch: int, ious: list[float] | None,
) -> torch.Tensor:
    """The occluded batch: relevance from the lagged replica if any, else the live model;
    ``ious`` (lagged only) gets the agreement with the live model's masks."""
    live = lag.model if lag is not None else augment.model
    if lag is not None:
        augment.model = lag.at(step)
    result = augment(x, y, keys=keys, epoch=epoch)
    if lag is not None and ious is not None:
        augment.model = live
        ious.extend(mask_iou(result, augment(x, y, keys=keys, epoch=epoch)))
    return result.inputs


#: record key -> split a study scores accuracy on (``val`` selects; ``test`` is the OOD split)
ACCURACY_SPLITS = {"val_accuracy": "val", "id_accuracy": "test-id", "ood_accuracy": "test-ood"}


def measure_run(
    spec: RunSpec, splits: Mapping[str, SplitData], *, num_classes: int, seed: int,
    info: dict[str, Any] | None = None,
) -> tuple[nn.Module, ModelSpec, dict[str, float]]:
    """Train ``spec`` on ``splits["train"]`` with ``seed``; the model, its spec and its
    accuracy on each of :data:`ACCURACY_SPLITS` with the seconds it all took."""
    start = time.perf_counter()
    model, mspec = train_in_process(spec, splits["train"], num_classes=num_classes, seed=seed,
                                    info=info)
    scores = {key: accuracy_of(model, splits[split], mspec.normalization)
              for key, split in ACCURACY_SPLITS.items()}
    return model, mspec, {**scores, "seconds": time.perf_counter() - start}


def train_in_process(
    spec: RunSpec, train: SplitData, *, num_classes: int, seed: int,
    info: dict[str, Any] | None = None,
) -> tuple[nn.Module, ModelSpec]:
    """Train ``spec`` on ``train`` with ``seed``; return the model (eval mode) and its spec.
    ``info``, if given, receives the staleness of a lagged run (mean and max, in steps) and,
    with ``spec.agreement``, the mean IoU of its drop masks with the live weights'."""
    torch.manual_seed(seed)
    normalization = Normalization.estimate(train.images[:512])  # as reldrop train estimates it
    mspec = ModelSpec(name=spec.model, in_channels=int(train.images.shape[1]),
                      num_classes=num_classes, normalization=normalization)
    model = mspec.build()
    optimizer = make_optimizer(spec.optimizer, model.parameters(), lr=spec.lr)
    bounds = normalization.bounds()
    regularizer = make_regularizer(spec.regularizer, lam=spec.lam, bounds=bounds,
                                   **(dict(spec.params) if spec.regularizer != "none" else {}))
    augment = None
    if spec.augment != "none":
        augment = RelDrop(model, spec.augment, composite=spec.composite, bounds=bounds, seed=seed,
                          **dict(spec.params))
    lag = WeightLag(model, delay=spec.lag, publish_every=spec.publish_every) if spec.stale else None
    step = 0
    ious: list[float] = []
    order_gen = torch.Generator().manual_seed(seed)
    model.train()
    for epoch in range(spec.epochs):
        order = torch.randperm(len(train), generator=order_gen)
        for start in range(0, len(train), spec.batch_size):
            idx = order[start : start + spec.batch_size]
            x = normalization.to_model(train.images[idx])
            y = train.labels[idx]
            masks = train.masks[idx] if train.masks is not None else None
            if augment is not None:
                keys = [train.keys[i] for i in idx.tolist()]
                x = _occlude(augment, lag, step, x, y, keys, epoch, ious if spec.agreement else None)
            train_step(model, optimizer, regularizer, x, y, masks, placeholder=x[:1])
            step += 1
    if info is not None and lag is not None:
        info.update(staleness_mean=sum(lag.staleness) / len(lag.staleness),
                    staleness_max=max(lag.staleness))
        if ious:
            info["mask_iou"] = sum(ious) / len(ious)
    model.eval()
    return model, mspec


def occlusion_figures(
    model: nn.Module, spec: ModelSpec, data: SplitData, limit: int, seed: int,
) -> dict[str, float | None]:
    """Occlusion AUCs (relevance and random order, their gap), mask relevance share and the
    features holding half the relevance mass, on the first ``limit`` samples of ``data``."""
    from reldrop.evaluation import evaluate

    n = min(limit, len(data))
    x = spec.normalization.to_model(data.images[:n])
    masks = data.masks[:n] if data.masks is not None else None
    result = evaluate(model, [(x, data.labels[:n], masks)], bounds=spec.normalization.bounds(),
                      seed=seed)
    return {"relevance_auc": result.relevance_auc, "random_auc": result.random_auc,
            "auc_gap": result.random_auc - result.relevance_auc, "mask_share": result.mask_share,
            "mass50_count": result.mass50_count}


def cross_entropy_of(model: nn.Module, data: SplitData, normalization: Normalization) -> float:
    """Mean cross-entropy on ``data`` (for tie-breaking in selection)."""
    with torch.no_grad():
        x = normalization.to_model(data.images)
        return float(F.cross_entropy(model(x), data.labels))
