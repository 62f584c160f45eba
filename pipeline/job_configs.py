"""Configurations of ``make-shards``, ``explain`` and ``evaluate``: the single source of their
flags, as :class:`reldrop.pipeline.training.config.TrainConfig` is for ``train``.

Each is a frozen dataclass whose fields carry their flag (:func:`reldrop.pipeline.fields.option`);
``reldrop.jobs`` generates the parsers from them. The same flag name means the same thing in
every job (``--data``, ``--ood-test``, ``--on-error``, ``--batch-size``, ``--composite``,
``--image-key`` ...); older spellings stay as aliases. Importing this module imports no torch.
"""

from __future__ import annotations

import argparse
from dataclasses import MISSING, asdict, dataclass, fields
from typing import Any, TypeVar

from reldrop.pipeline.data.decode import DecodeOptions
from reldrop.pipeline.data.errors import ON_ERROR, check_on_error
from reldrop.pipeline.fields import option, registry_names

__all__ = ["DATASET_NAMES", "EvaluateConfig", "ExplainConfig", "MakeShardsConfig", "from_namespace"]

#: the built-in dataset names (``make-shards --help``; a test keeps it equal to the registry)
DATASET_NAMES = ("decoy-mnist", "decoy-mnist-strong", "viviano-synthetic", "mnist", "digits",
                 "points", "npz:PATH", "folder:PATH")

_T = TypeVar("_T")


def from_namespace(cls: type[_T], args: argparse.Namespace) -> _T:
    """The config ``cls`` from parsed flags (other attributes of ``args`` are ignored)."""
    names = {f.name for f in fields(cls)}  # type: ignore[arg-type]
    return cls(**{k: v for k, v in vars(args).items() if k in names})


def _positive(cfg: Any, *names: str) -> None:
    for name in names:
        value = getattr(cfg, name)
        if value is not None and (isinstance(value, bool) or value < 1):
            raise ValueError(f"{name}={value!r}; expected an integer >= 1")


def _composite() -> Any:
    return option("reference", "method", "LRP composite",
                  registry=True, choices=registry_names("reldrop.composites", "COMPOSITES"))


def _on_error() -> Any:
    return option("raise", "data", "bad sample or shard: raise, or skip and count it",
                  choices=lambda: ON_ERROR)


@dataclass(frozen=True, kw_only=True)
class MakeShardsConfig:
    """``reldrop make-shards``: which dataset, where, how it is cut into shards."""

    dataset: str = option(MISSING, "data", "dataset to build: " + ", ".join(DATASET_NAMES))
    out: str = option(MISSING, "data", "dataset root URL (a folder: local path, file://, "
                      "memory://, s3://, gs://)")
    shard_size: int = option(1000, "data", "samples per shard", minimum=1)
    seed: int = option(0, "data", "seed of the split and of synthetic data", minimum=0)
    limit: int | None = option(None, "data", "use at most N source samples", minimum=1)
    image_size: int | None = option(None, "data", "square image side (pad or resize; default: "
                                    "the source's)", minimum=1)
    num_points: int = option(256, "data", "points per cloud (points)", minimum=1)
    overwrite: bool = option(False, "run", "replace an existing dataset (only after the new one "
                             "is complete)")
    progress: bool = option(True, "run", "progress bars (shown only on a terminal)")

    def __post_init__(self) -> None:
        _positive(self, "shard_size", "limit", "image_size", "num_points")
        if self.seed < 0:
            raise ValueError(f"seed={self.seed}; expected an integer >= 0")


@dataclass(frozen=True, kw_only=True)
class ExplainConfig:
    """``reldrop explain``: relevance of a frozen checkpoint for every sample of a split."""

    checkpoint: str = option(MISSING, "data", "model.safetensors written by reldrop train")
    data: str = option(MISSING, "data", "dataset ROOT or ROOT#split (default split train)")
    out: str | None = option(None, "data", "root URL for the column shards (default: ROOT)")
    composite: str = _composite()
    batch_size: int = option(64, "method", "samples per LRP batch", minimum=1)
    model: str | None = option(
        None, "method", "the model the checkpoint must hold; naming an import-path model "
        "(package.module:factory) here allows the checkpoint to import it")
    trust_model_code: bool = option(
        False, "method", "allow files (checkpoints, config files) to name import-path models "
        "(package.module:factory), which imports and runs that code")
    on_error: str = _on_error()

    def __post_init__(self) -> None:
        _positive(self, "batch_size")
        check_on_error(self.on_error)


@dataclass(frozen=True, kw_only=True)
class EvaluateConfig:
    """``reldrop evaluate``: a checkpoint on in- and out-of-distribution data."""

    checkpoint: str = option(MISSING, "data", "safetensors checkpoint")
    data: str = option(MISSING, "data", "in-distribution data: ROOT[#split] (default split "
                       "test) or WebDataset shard URLs")
    ood_test: str | None = option(None, "data", "out-of-distribution data: ROOT[#split] (e.g. "
                                  "ROOT#test-ood) or shard URLs", aliases=("ood-data",))
    image_key: str | None = option(None, "data", "image member(s) of each sample, e.g. jpg "
                                   "(default: the first of jpg, jpeg, png, webp, npy)")
    label_key: str | None = option(None, "data", "label member: cls, json or json:FIELD "
                                   "(default: cls, else json)")
    image_size: int | None = option(None, "data", "resize the shorter side to N and crop the "
                                    "centre N x N (default: keep the size)", minimum=1)
    limit: int | None = option(None, "data", "use at most N samples per data set", minimum=1)
    on_error: str = _on_error()
    composite: str = _composite()
    batch_size: int = option(128, "method", "samples per batch", minimum=1)
    model: str | None = option(
        None, "method", "the model the checkpoint must hold; naming an import-path model "
        "(package.module:factory) here allows the checkpoint to import it")
    trust_model_code: bool = option(
        False, "method", "allow files (checkpoints, config files) to name import-path models "
        "(package.module:factory), which imports and runs that code")
    seed: int = option(0, "method", "seed of the random occlusion order", minimum=0)
    device: str = option("cpu", "run", "torch device, e.g. cpu or cuda")
    out: str = option("runs/evaluate", "run", "output directory")
    plots: bool = option(True, "run", "write PNG plots beside evaluation.json")

    def __post_init__(self) -> None:
        _positive(self, "batch_size", "limit")
        check_on_error(self.on_error)
        self.decode_options()

    def decode_options(self) -> DecodeOptions:
        return DecodeOptions(image_key=self.image_key, label_key=self.label_key,
                             image_size=self.image_size)

    def to_json(self) -> dict[str, Any]:
        return asdict(self)
