"""Plots a person looks at, written as PNG files with matplotlib's Agg backend.

matplotlib is an optional dependency (the ``plots`` extra) and is imported only when a plot is
made. Figures are built with ``matplotlib.figure.Figure`` and an Agg canvas, so no global pyplot
state or interactive backend is touched.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch

from reldrop.normalization import Normalization

__all__ = [
    "plot_comparison_bars",
    "plot_lines",
    "plot_occlusion_curves",
    "plot_relevance_grid",
    "plot_training_curves",
]


def _figure(width: float, height: float) -> Any:
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError as err:  # pragma: no cover - depends on the environment
        raise ImportError(
            "reldrop plots need matplotlib; install the 'plots' extra: pip install 'reldrop[plots]'"
        ) from err
    fig = Figure(figsize=(width, height), layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def _save(fig: Any, path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100, format="png")
    return path


def plot_occlusion_curves(
    curves: Mapping[str, Mapping[str, Any]], path: str | Path, *, title: str = "Occlusion"
) -> Path:
    """Accuracy vs occluded fraction. ``curves``: label -> ``{"fractions", "relevance_order",
    "random_order"}`` (the ``occlusion`` part of :meth:`EvaluationResult.to_json`); relevance
    order solid, random order dashed, one colour per label."""
    fig = _figure(6, 4)
    ax = fig.add_subplot()
    for i, (label, curve) in enumerate(curves.items()):
        colour = f"C{i}"
        f = curve["fractions"]
        auc = curve.get("relevance_auc")
        suffix = f" (AUC {auc:.3f})" if isinstance(auc, float) else ""
        ax.plot(f, curve["relevance_order"], "-o", ms=3, color=colour,
                label=f"{label}: relevance order{suffix}")
        if "random_order" in curve:
            ax.plot(f, curve["random_order"], "--", color=colour, label=f"{label}: random order")
    ax.set_xlabel("fraction of features occluded")
    ax.set_ylabel("accuracy")
    ax.set_ylim(0, 1.02)
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    return _save(fig, path)


def _image(x: torch.Tensor, normalization: Normalization | None) -> Any:
    """C x H x W normalised tensor -> H x W (grey) or H x W x 3 array in [0, 1]."""
    x = x.detach().float().cpu()
    pixels = (
        normalization.to_pixels(x[None])[0]
        if normalization is not None
        else (x - x.min()) / (x.max() - x.min() + 1e-12)
    )
    return pixels[0].numpy() if pixels.shape[0] == 1 else pixels[:3].permute(1, 2, 0).numpy()


def plot_relevance_grid(
    inputs: torch.Tensor,
    rel: torch.Tensor,
    path: str | Path,
    *,
    occluded: torch.Tensor | None = None,
    masks: torch.Tensor | None = None,
    normalization: Normalization | None = None,
    titles: Sequence[str] | None = None,
) -> Path:
    """One column per sample: input (mask contour if given), relevance (red +, blue -, symmetric
    scale per sample) and optionally the occluded input. ``inputs`` N x C x H x W normalised."""
    n = inputs.shape[0]
    if rel.shape[0] != n or (occluded is not None and occluded.shape[0] != n):
        raise ValueError(f"inputs, rel and occluded must have the same length; got {n}, "
                         f"{rel.shape[0]}, {None if occluded is None else occluded.shape[0]}")
    rows = 3 if occluded is not None else 2
    fig = _figure(1.6 * max(n, 1), 1.6 * rows)
    for i in range(n):
        ax = fig.add_subplot(rows, n, i + 1)
        ax.imshow(_image(inputs[i], normalization), cmap="gray", vmin=0, vmax=1)
        if masks is not None:
            ax.contour(masks[i].float().cpu().numpy(), levels=[0.5], colors="lime", linewidths=0.7)
        if titles is not None:
            ax.set_title(titles[i], fontsize=7)
        ax = fig.add_subplot(rows, n, n + i + 1)
        r = rel[i].detach().float().cpu()
        bound = float(r.abs().max()) or 1.0
        ax.imshow(r.numpy(), cmap="bwr", vmin=-bound, vmax=bound)
        if occluded is not None:
            ax = fig.add_subplot(rows, n, 2 * n + i + 1)
            ax.imshow(_image(occluded[i], normalization), cmap="gray", vmin=0, vmax=1)
    for ax in fig.axes:
        ax.set_xticks([])
        ax.set_yticks([])
    labels = ["input", "relevance", "occluded"][:rows]
    for r_index, label in enumerate(labels):
        fig.axes[0 if r_index == 0 else r_index].set_ylabel(label, fontsize=8)
    return _save(fig, path)


def plot_training_curves(
    history: Sequence[Mapping[str, Any]], path: str | Path, *, x_key: str = "epoch"
) -> Path:
    """Per-epoch numbers: keys containing ``loss`` in the left panel, ``acc`` in the right one
    (any other numeric key joins the left panel). ``history``: one dict per epoch."""
    if not history:
        raise ValueError("history is empty; expected one dict per epoch")
    keys = [k for k in history[0] if k != x_key and isinstance(history[0][k], (int, float))]
    xs = [row.get(x_key, i) for i, row in enumerate(history)]
    fig = _figure(9, 3.5)
    left, right = fig.add_subplot(1, 2, 1), fig.add_subplot(1, 2, 2)
    for key in keys:
        ax = right if "acc" in key else left
        ax.plot(xs, [row.get(key, float("nan")) for row in history], "-o", ms=3, label=key)
    for ax, label in ((left, "loss"), (right, "accuracy")):
        ax.set_xlabel(x_key)
        ax.set_ylabel(label)
        ax.grid(alpha=0.3)
        if ax.lines:
            ax.legend(fontsize=7)
    return _save(fig, path)


def plot_comparison_bars(
    table: Mapping[str, Mapping[str, float | None]],
    path: str | Path,
    *,
    metrics: Sequence[str] | None = None,
    title: str = "",
) -> Path:
    """Grouped bars: ``table`` method -> metric -> value; one group per metric."""
    if not table:
        raise ValueError("table is empty; expected method -> {metric: value}")
    methods = list(table)
    if metrics is None:
        metrics = list(dict.fromkeys(k for row in table.values() for k in row))
    fig = _figure(max(5, 1.2 * len(metrics) * max(1, len(methods)) / 2), 4)
    ax = fig.add_subplot()
    width = 0.8 / len(methods)
    for i, method in enumerate(methods):
        values = [table[method].get(m) for m in metrics]
        heights = [float("nan") if v is None else float(v) for v in values]
        ax.bar([j + i * width for j in range(len(metrics))], heights, width, label=method)
    ax.set_xticks([j + 0.4 - width / 2 for j in range(len(metrics))])
    ax.set_xticklabels(list(metrics), rotation=20, fontsize=8)
    ax.set_title(title)
    ax.grid(axis="y", alpha=0.3)
    ax.legend(fontsize=7)
    return _save(fig, path)


def plot_lines(
    series: Mapping[str, Sequence[tuple[float, float]]],
    path: str | Path,
    *,
    xlabel: str,
    ylabel: str,
    title: str = "",
    reference: float | None = None,
) -> Path:
    """One line per ``series`` entry (label -> [(x, y), ...]); ``reference`` a dashed level."""
    if not series:
        raise ValueError("series is empty; expected label -> [(x, y), ...]")
    fig = _figure(5.5, 3.8)
    ax = fig.add_subplot()
    for label, points in series.items():
        xs, ys = zip(*sorted(points), strict=True) if points else ((), ())
        ax.plot(xs, ys, marker="o", label=label)
    if reference is not None:
        ax.axhline(reference, linestyle="--", color="grey", linewidth=1)
    ax.set_xscale("log", base=2)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return _save(fig, path)
