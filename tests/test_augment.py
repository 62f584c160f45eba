"""In-loop RelDrop: statistics, fallback, reproducibility, and short training runs."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, TensorDataset

import reldrop.augment as augment_module
from reldrop.augment import AugmentStats, RelDrop
from reldrop.models import build_model


def test_reldrop_occludes_applied_samples(make_model, images, labels):
    model = make_model("small-cnn", 1, 3, images)
    aug = RelDrop(model, "reldrop-pixel", p=0.5, seed=0)
    out = aug(images, labels)
    assert out.inputs.shape == images.shape
    assert out.dropped[out.applied].flatten(1).any(dim=1).all()
    assert not out.dropped[~out.applied].any()
    assert torch.equal(out.inputs[~out.applied], images[~out.applied])
    stats = aug.stats.as_dict()
    assert stats["seen"] == 8 and stats["applied"] == int(out.applied.sum()) and stats["fallback"] == 0
    frac = out.dropped[out.applied].flatten(1).float().mean(dim=1).mean().item()
    assert stats["mean_dropped_fraction"] == pytest.approx(frac)


def test_relevance_only_for_applied_rows(make_model, images, labels, monkeypatch):
    model = make_model("small-cnn", 1, 3, images)
    calls: list[int] = []
    real = augment_module.relevance

    def spy(model, inputs, targets, **kw):  # type: ignore[no-untyped-def]
        calls.append(inputs.shape[0])
        return real(model, inputs, targets, **kw)

    monkeypatch.setattr(augment_module, "relevance", spy)
    aug = RelDrop(model, "reldrop-block", p=0.5, seed=3)
    out = aug(images, labels)
    assert calls == ([int(out.applied.sum())] if out.applied.any() else [])
    RelDrop(model, "random-erasing", p=1.0, seed=3)(images, labels)
    assert len(calls) <= 1  # random baselines never explain


def test_same_seed_same_result_and_unseeded_instances_differ(make_model, images, labels):
    model = make_model("small-cnn", 1, 3, images)
    a = RelDrop(model, "reldrop-pixel", p=0.5, seed=7)(images, labels)
    b = RelDrop(model, "reldrop-pixel", p=0.5, seed=7)(images, labels)
    assert torch.equal(a.inputs, b.inputs) and torch.equal(a.applied, b.applied)
    x = torch.randn(64, 1, 8, 8)
    first = RelDrop(model, "random-pixel", p=0.5)(x, torch.zeros(64, dtype=torch.long))
    second = RelDrop(model, "random-pixel", p=0.5)(x, torch.zeros(64, dtype=torch.long))
    assert not torch.equal(first.dropped, second.dropped)
    torch.manual_seed(5)  # unseeded instances follow torch's global seed
    third = RelDrop(model, "random-pixel", p=0.5)(x, torch.zeros(64, dtype=torch.long))
    torch.manual_seed(5)
    fourth = RelDrop(model, "random-pixel", p=0.5)(x, torch.zeros(64, dtype=torch.long))
    assert torch.equal(third.dropped, fourth.dropped)


def test_fallback_counted_for_constant_relevance(images, labels):
    torch.manual_seed(0)
    model = build_model("small-cnn", in_channels=1, num_classes=3)
    with torch.no_grad():
        for param in model.parameters():
            param.zero_()  # constant logits -> zero relevance everywhere
    aug = RelDrop(model, "reldrop-block", p=1.0, seed=0)
    out = aug(images, labels)
    assert out.fallback.all() and aug.stats.fallback == 8
    assert out.dropped.flatten(1).any(dim=1).all()


def test_fallback_counted_for_non_finite_relevance(make_model, images, labels, monkeypatch):
    model = make_model("small-cnn", 1, 3, images)

    def broken(model, inputs, targets, **kw):  # type: ignore[no-untyped-def]
        rel = torch.randn(inputs.shape[0], *inputs.shape[2:])
        rel[::2, 0, 0] = float("nan")
        rel[1::2, 1, 1] = float("inf")
        return rel

    monkeypatch.setattr(augment_module, "relevance", broken)
    aug = RelDrop(model, "reldrop-pixel", p=1.0, seed=0)
    for _ in range(3):
        out = aug(images, labels)
        assert out.fallback.all() and torch.isfinite(out.inputs).all()
    assert aug.stats.fallback == 24 and aug.stats.applied == 24


def test_stats_accumulate():
    stats = AugmentStats()
    assert stats.as_dict()["mean_dropped_fraction"] == 0.0


@pytest.mark.parametrize(
    "targets,match",
    [
        (torch.zeros(7, dtype=torch.long), r"targets has shape \(7,\); expected \(8,\)"),
        (torch.full((8,), 3), r"targets must lie in \[0, 3\)"),
        (torch.zeros(8), "targets must be integer"),
    ],
)
def test_bad_targets(make_model, images, targets, match):
    model = make_model("small-cnn", 1, 3, images)
    with pytest.raises((ValueError, TypeError), match=match):
        RelDrop(model, "reldrop-pixel", p=1.0)(images, targets)


def test_bad_configuration(make_model, images):
    model = make_model("small-cnn", 1, 3, images)
    with pytest.raises(ValueError, match="strategy='drop' is unknown"):
        RelDrop(model, "drop")
    with pytest.raises(ValueError, match=r"alpha=2.0 is outside \[0, 1\]"):
        RelDrop(model, "reldrop-pixel", alpha=2.0)


# ---- short training runs ---------------------------------------------------------------------


def _synthetic_images(n: int = 256, classes: int = 3) -> TensorDataset:
    """Class c: a bright 4 x 4 square at one of three places, plus noise."""
    gen = torch.Generator().manual_seed(0)
    y = torch.arange(n) % classes
    x = 0.3 * torch.randn(n, 1, 16, 16, generator=gen)
    for c in range(classes):
        x[y == c, :, 2 + 4 * c : 6 + 4 * c, 3 + 3 * c : 7 + 3 * c] += 2.0
    return TensorDataset(x, y)


def _train(model, aug: RelDrop, data: TensorDataset, epochs: int, lr: float) -> list[float]:
    loader = DataLoader(data, batch_size=32, shuffle=True, generator=torch.Generator().manual_seed(0))
    opt = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9)
    losses = []
    for _ in range(epochs):
        total = 0.0
        for x, y in loader:
            model.train()
            x = aug(x, y).inputs
            loss = F.cross_entropy(model(x), y)
            opt.zero_grad()
            loss.backward()
            opt.step()
            total += loss.item() * len(y)
        losses.append(total / len(data))
    return losses


def test_training_small_cnn_with_reldrop_pixel():
    torch.manual_seed(0)
    model = build_model("small-cnn", in_channels=1, num_classes=3)
    aug = RelDrop(model, "reldrop-pixel", p=0.5, seed=0)
    losses = _train(model, aug, _synthetic_images(), epochs=4, lr=0.05)
    assert losses[-1] < 0.7 * losses[0], losses
    stats = aug.stats.as_dict()
    assert stats["seen"] == 4 * 256 and 0.3 < stats["applied"] / stats["seen"] < 0.7
    assert stats["mean_dropped_fraction"] > 0


def test_training_pointnet_with_reldrop_points():
    gen = torch.Generator().manual_seed(0)
    n, pts = 192, 32
    y = torch.arange(n) % 2
    x = torch.randn(n, pts, 3, generator=gen)
    x[y == 1] *= torch.tensor([3.0, 0.3, 1.0])  # class 1: stretched along x
    torch.manual_seed(0)
    model = build_model("pointnet", in_channels=3, num_classes=2)
    aug = RelDrop(model, "reldrop-points", p=0.5, seed=0)
    losses = _train(model, aug, TensorDataset(x, y), epochs=4, lr=0.02)
    assert losses[-1] < losses[0], losses
    assert aug.stats.applied > 0
