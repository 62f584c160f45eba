"""Each plot helper writes a PNG; a missing matplotlib names the extra to install."""

from __future__ import annotations

import sys

import pytest
import torch

from reldrop import plots
from reldrop.normalization import Normalization

PNG = b"\x89PNG\r\n\x1a\n"


def _is_png(path) -> bool:
    with open(path, "rb") as f:
        return f.read(8) == PNG


def test_plot_helpers_write_pngs(tmp_path) -> None:
    curve = {"fractions": [0.0, 0.5, 1.0], "relevance_order": [1.0, 0.2, 0.1],
             "random_order": [1.0, 0.6, 0.1], "relevance_auc": 0.375}
    written = [
        plots.plot_occlusion_curves({"a": curve, "b": curve}, tmp_path / "occ.png"),
        plots.plot_relevance_grid(
            torch.randn(3, 1, 8, 8), torch.randn(3, 8, 8), tmp_path / "grid.png",
            occluded=torch.randn(3, 1, 8, 8), masks=torch.rand(3, 8, 8) > 0.5,
            normalization=Normalization(), titles=["x", "y", "z"],
        ),
        plots.plot_relevance_grid(torch.rand(2, 3, 8, 8), torch.randn(2, 8, 8),
                                  tmp_path / "rgb.png"),
        plots.plot_training_curves(
            [{"epoch": e, "loss": 1.0 / (e + 1), "train_acc": 0.5 + 0.1 * e, "test_acc": 0.5}
             for e in range(3)],
            tmp_path / "sub" / "curves.png",
        ),
        plots.plot_comparison_bars(
            {"none": {"ood acc": 0.3, "auc": 0.4}, "rrr": {"ood acc": 0.8, "auc": None}},
            tmp_path / "bars.png",
        ),
    ]
    for path in written:
        assert path.is_file() and _is_png(path), path


def test_plot_errors(tmp_path) -> None:
    with pytest.raises(ValueError, match="history"):
        plots.plot_training_curves([], tmp_path / "x.png")
    with pytest.raises(ValueError, match="same length"):
        plots.plot_relevance_grid(torch.rand(2, 1, 4, 4), torch.rand(3, 4, 4), tmp_path / "x.png")


def test_missing_matplotlib_names_the_extra(tmp_path, monkeypatch) -> None:
    monkeypatch.setitem(sys.modules, "matplotlib.figure", None)
    with pytest.raises(ImportError, match="plots"):
        plots.plot_comparison_bars({"a": {"m": 1.0}}, tmp_path / "x.png")
