"""Figures for a training run: loss/accuracy curves and a grid of input / relevance / occluded
test samples explained by the final model (needs the ``plots`` extra)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch

from reldrop.augment import RelDrop
from reldrop.checkpoint import load_checkpoint
from reldrop.pipeline.data.read import iter_samples
from reldrop.pipeline.data.stream import model_inputs, parse_data_url
from reldrop.pipeline.training.config import TrainConfig
from reldrop.plots import plot_relevance_grid, plot_training_curves
from reldrop.relevance import relevance

__all__ = ["training_figures"]


def training_figures(
    out: Path, report: dict[str, Any], checkpoint: Path, cfg: TrainConfig, *, samples: int = 8
) -> dict[str, str]:
    """Write ``curves.png`` and ``samples.png`` into ``out``; return their paths by name."""
    history = [
        {k: v for k, v in e.items() if k in ("epoch", "loss", "train_accuracy", "test_accuracy",
                                              "ood_accuracy")}
        for e in report["epochs"]
    ]
    paths = {"curves": str(plot_training_curves(history, out / "curves.png"))}
    url = cfg.test or cfg.train
    if url is None:
        return paths
    root, split = parse_data_url(url, "test")
    picked = []
    for sample in iter_samples(f"{root}#{split}", on_error="skip", decode=cfg.decode_options()):
        if "image" not in sample:  # point clouds: no image grid
            return paths
        picked.append(sample)
        if len(picked) == samples:
            break
    model, spec, _ = load_checkpoint(checkpoint, model=cfg.model)  # the run's own model
    x = model_inputs(np.stack([s["image"] for s in picked]), spec.normalization)
    y = torch.tensor([s["label"] for s in picked])
    bounds = spec.normalization.bounds()
    rel = relevance(model, x, y, composite=cfg.composite, bounds=bounds)
    augment = cfg.augment if cfg.augment not in ("none", "reldrop-points") else "reldrop-pixel"
    occluded = RelDrop(model, augment, composite=cfg.composite, bounds=bounds, seed=cfg.seed,
                       p=1.0)(x, y).inputs
    masks = torch.as_tensor(np.stack([s["mask"] for s in picked])) if "mask" in picked[0] else None
    paths["samples"] = str(plot_relevance_grid(
        x, rel, out / "samples.png", occluded=occluded, masks=masks,
        normalization=spec.normalization, titles=[f"{s['key']} y={s['label']}" for s in picked],
    ))
    return paths
