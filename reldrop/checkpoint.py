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

from reldrop.models import build_model, check_model_trust
from reldrop.normalization import Normalization

__all__ = [
    "ModelSpec",
    "load_checkpoint",
    "load_numpy_state",
    "read_checkpoint",
    "save_checkpoint",
    "state_to_numpy",
]


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


def read_checkpoint(path: str | Path) -> tuple[dict[str, torch.Tensor], ModelSpec, dict[str, Any]]:
    """The tensors, model spec and extra JSON of a checkpoint, **without** building the model
    (nothing the file names is imported).

    A file that is not safetensors, lacks the model spec or holds a non-finite weight (a
    diverged run) is a ``ValueError`` naming the file (and the tensor).
    """
    from safetensors import SafetensorError, safe_open

    path = Path(path)
    where = f"checkpoint {str(path)!r}"
    if not path.is_file():
        raise ValueError(f"{where} does not exist")
    try:
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
        state = load_file(str(path))
    except (SafetensorError, OSError) as err:
        raise ValueError(f"{where} is not a readable safetensors file ({err})") from err
    if "spec" not in meta:
        raise ValueError(f"{where} has no reldrop model spec in its metadata")
    try:
        spec = ModelSpec.from_json(json.loads(meta["spec"]))
        extra = json.loads(meta.get("extra", "{}"))
    except (ValueError, KeyError, TypeError) as err:
        raise ValueError(f"{where}: its model spec is not valid ({err!r})") from err
    if not isinstance(extra, dict):
        raise ValueError(f"{where}: its extra metadata is a {type(extra).__name__}, not a mapping")
    _check_finite(state, where)
    return state, spec, extra


def load_checkpoint(
    path: str | Path, *, model: str | None = None, trust_model_code: bool = False
) -> tuple[nn.Module, ModelSpec, dict[str, Any]]:
    """Rebuild the model from a checkpoint written by :func:`save_checkpoint`: the one loader
    of every job (evaluate, explain, figures, compare).

    A checkpoint whose model is an import path (``package.module:factory``) is refused before
    anything is imported unless the caller names the same model (``model``, the user's
    ``--model``) or passes ``trust_model_code`` (:func:`reldrop.models.check_model_trust`);
    ``model`` naming a different model than the checkpoint is an error too. Other problems
    are a ``ValueError`` naming the file, as :func:`read_checkpoint`.
    """
    state, spec, extra = read_checkpoint(path)
    where = f"checkpoint {str(path)!r}"
    if model is not None and model != spec.name:
        raise ValueError(f"{where} holds model {spec.name!r}, but --model names {model!r}; "
                         "drop --model or pass the checkpoint of that model")
    check_model_trust(spec.name, source=where, named=model, trusted=trust_model_code)
    built = spec.build()
    try:
        built.load_state_dict(state)
    except RuntimeError as err:
        problem = " ".join(str(err).split())
        if len(problem) > 160:
            problem = problem[:157] + "..."
        raise ValueError(f"{where} does not fit model {spec.name!r}: {problem}") from err
    return built, spec, extra


def _check_finite(state: dict[str, torch.Tensor], where: str) -> None:
    """Refuse NaN/inf weights: a model that diverged must not be evaluated as if it had not."""
    for name, tensor in state.items():
        if tensor.is_floating_point() and not bool(torch.isfinite(tensor).all()):
            bad = int((~torch.isfinite(tensor)).sum())
            raise ValueError(
                f"{where}: tensor {name!r} has {bad} non-finite value(s) of {tensor.numel()} "
                "(the run diverged); use an earlier checkpoint or retrain"
            )


def state_to_numpy(model: nn.Module) -> dict[str, Any]:
    """State dict as numpy arrays (cheap to ``ray.put``; no pickle of torch tensors)."""
    return {k: v.detach().cpu().numpy() for k, v in model.state_dict().items()}


def load_numpy_state(model: nn.Module, state: dict[str, Any]) -> None:
    """Load numpy arrays written by :func:`state_to_numpy` into ``model`` in place."""
    with warnings.catch_warnings():  # arrays straight from Ray's object store are read-only;
        warnings.simplefilter("ignore", UserWarning)  # load_state_dict copies them anyway
        model.load_state_dict({k: torch.from_numpy(v) for k, v in state.items()})
