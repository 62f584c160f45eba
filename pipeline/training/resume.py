"""Epoch checkpoints of a trainer, so a restarted worker group resumes where it stopped.

Written with safetensors (tensors) and JSON (everything else), never pickle: the model, the
optimiser's per-parameter state, the step, the finished epochs' figures and the worker's counts.
A resumed run starts at the epoch after the last checkpoint; the rows of the epoch that was in
progress when the worker died are trained again (the report counts the restart).
"""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from reldrop.checkpoint import ModelSpec, save_checkpoint
from reldrop.pipeline.training.accounting import BatchAccounting

__all__ = ["TrainState", "accounting_json", "load_train_state", "save_train_state"]

MODEL_FILE = "model.safetensors"
OPTIMIZER_FILE = "optimizer.safetensors"
STATE_FILE = "train_state.json"


@dataclass
class TrainState:
    """Progress of a training run."""

    step: int = 0
    epochs: list[dict[str, Any]] = field(default_factory=list)
    restarts: int = 0


def _optimizer_tensors(optimizer: torch.optim.Optimizer) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    state = optimizer.state_dict()
    tensors: dict[str, torch.Tensor] = {}
    scalars: dict[str, dict[str, Any]] = {}
    for index, values in state["state"].items():
        for name, value in values.items():
            if isinstance(value, torch.Tensor):
                tensors[f"{index}.{name}"] = value.detach().cpu().contiguous()
            else:
                scalars.setdefault(str(index), {})[name] = value
    return tensors, {"param_groups": state["param_groups"], "scalars": scalars}


def accounting_json(accounting: BatchAccounting, state: TrainState | None = None) -> dict[str, Any]:
    """One rank's counts and epoch figures as JSON (each rank's go into the checkpoint: ranks
    see different rows)."""
    return {
        "epochs": state.epochs if state is not None else [],
        "counts": dict(accounting.counts), "staleness": {str(k): v for k, v in accounting.staleness.items()},
        "versions": sorted(accounting.versions), "reasons": accounting.reasons, "keys": accounting.keys,
        "shards": accounting.shards,
    }


def save_train_state(
    directory: Path, model: nn.Module, optimizer: torch.optim.Optimizer, spec: ModelSpec,
    state: TrainState, ranks: list[dict[str, Any]],
) -> None:
    """Write the checkpoint files of ``state`` into ``directory``; ``ranks`` holds every rank's
    :func:`accounting_json`, in rank order."""
    save_checkpoint(directory / MODEL_FILE, model, spec, {"steps": state.step})
    tensors, meta = _optimizer_tensors(optimizer)
    save_file(tensors, str(directory / OPTIMIZER_FILE))
    (directory / STATE_FILE).write_text(json.dumps({
        "step": state.step, "epochs": state.epochs, "restarts": state.restarts, "optimizer": meta,
        "ranks": ranks,
    }, default=float))


def load_train_state(
    checkpoint: Any, model: nn.Module, optimizer: torch.optim.Optimizer, state: TrainState,
    accounting: BatchAccounting, rank: int = 0,
) -> None:
    """Restore from a Ray Train checkpoint written by :func:`save_train_state` (no-op for None)."""
    if checkpoint is None:
        return
    with checkpoint.as_directory() as path:
        directory = Path(path)
        model.load_state_dict(load_file(str(directory / MODEL_FILE)))
        saved = json.loads((directory / STATE_FILE).read_text())
        tensors = load_file(str(directory / OPTIMIZER_FILE))
    optimizer.load_state_dict(_optimizer_state(tensors, saved["optimizer"]))
    mine = saved["ranks"][rank] if "ranks" in saved else saved  # older checkpoints: one rank
    state.step, state.epochs = int(saved["step"]), list(mine.get("epochs") or saved["epochs"])
    state.restarts = int(saved["restarts"]) + 1
    accounting.counts = Counter(mine["counts"])
    accounting.staleness = Counter({int(k): int(v) for k, v in mine["staleness"].items()})
    accounting.versions = set(mine["versions"])
    accounting.reasons = list(mine["reasons"])
    accounting.keys = [list(k) for k in mine["keys"]]
    accounting.shards = dict(mine["shards"])


def _optimizer_state(tensors: dict[str, torch.Tensor], meta: dict[str, Any]) -> dict[str, Any]:
    per_param: dict[int, dict[str, Any]] = {}
    for key, value in tensors.items():
        index, name = key.split(".", 1)
        per_param.setdefault(int(index), {})[name] = value
    for index, values in meta["scalars"].items():
        per_param.setdefault(int(index), {}).update(values)
    return {"state": per_param, "param_groups": meta["param_groups"]}
