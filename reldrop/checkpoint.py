"""Checkpoints as safetensors (never pickle): weights plus JSON metadata to rebuild the model."""

from __future__ import annotations

import json
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from reldrop.models import build_model
from reldrop.normalization import Normalization

__all__ = ["ModelSpec", "load_checkpoint", "load_numpy_state", "save_checkpoint", "state_to_numpy"]


@dataclass(frozen=True, kw_only=True)
class ModelSpec:
    """Everything needed to rebuild a model and feed it: architecture, shapes, normalisation."""

    name: str
    in_channels: int
    num_classes: int
    normalization: Normalization = field(default_factory=Normalization)

    def build(self) -> nn.Module:
        return build_model(self.name, in_channels=self.in_channels, num_classes=self.num_classes)

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> ModelSpec:
        norm = data.get("normalization") or {}
        return cls(
            name=str(data["name"]),
            in_channels=int(data["in_channels"]),
            num_classes=int(data["num_classes"]),
            normalization=Normalization(
                mean=tuple(norm.get("mean", (0.5,))), std=tuple(norm.get("std", (0.5,)))
            ),
        )


def save_checkpoint(
    path: str | Path, model: nn.Module, spec: ModelSpec, extra: dict[str, Any] | None = None
) -> Path:
    """Write ``model``'s state dict and ``spec`` (plus ``extra`` JSON) to a safetensors file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    meta = {"spec": json.dumps(spec.to_json()), "extra": json.dumps(extra or {})}
    save_file(state, str(path), metadata=meta)
    return path


def load_checkpoint(path: str | Path) -> tuple[nn.Module, ModelSpec, dict[str, Any]]:
    """Rebuild the model from a checkpoint written by :func:`save_checkpoint`."""
    from safetensors import safe_open

    path = Path(path)
    if not path.is_file():
        raise ValueError(f"checkpoint {str(path)!r} does not exist")
    with safe_open(str(path), framework="pt") as f:
        meta = f.metadata() or {}
    if "spec" not in meta:
        raise ValueError(f"checkpoint {str(path)!r} has no reldrop model spec in its metadata")
    spec = ModelSpec.from_json(json.loads(meta["spec"]))
    model = spec.build()
    model.load_state_dict(load_file(str(path)))
    return model, spec, json.loads(meta.get("extra", "{}"))


def state_to_numpy(model: nn.Module) -> dict[str, Any]:
    """State dict as numpy arrays (cheap to ``ray.put``; no pickle of torch tensors)."""
    return {k: v.detach().cpu().numpy() for k, v in model.state_dict().items()}


def load_numpy_state(model: nn.Module, state: dict[str, Any]) -> None:
    """Load numpy arrays written by :func:`state_to_numpy` into ``model`` in place."""
    with warnings.catch_warnings():  # arrays straight from Ray's object store are read-only;
        warnings.simplefilter("ignore", UserWarning)  # load_state_dict copies them anyway
        model.load_state_dict({k: torch.from_numpy(v) for k, v in state.items()})
