"""Evaluation metrics on hand-made cases whose answers are known in advance."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from reldrop.evaluation import (
    FRACTIONS,
    area_under_curve,
    calibration_error,
    evaluate,
    mask_share,
    mass_count,
    occlusion_ranks,
)

SIDE, PIXEL = 10, (3, 4)


@pytest.fixture(autouse=True)
def _one_thread():
    """Tiny models run far faster on one thread (and do not fight other tests for cores)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _one_pixel_model() -> nn.Module:
    """Class 0 logit = the pixel PIXEL, class 1 logit = 0.5: right iff the pixel (=1) is kept.

    The 1 x 1 identity convolution in front makes zennit's Flat first-layer rule an identity.
    """
    conv = nn.Conv2d(1, 1, 1, bias=False)
    linear = nn.Linear(SIDE * SIDE, 2)
    with torch.no_grad():
        conv.weight.fill_(1.0)
        linear.weight.zero_()
        linear.weight[0, PIXEL[0] * SIDE + PIXEL[1]] = 1.0
        linear.bias.copy_(torch.tensor([0.0, 0.5]))
    return nn.Sequential(conv, nn.Flatten(), linear)


def _data(n: int, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    x = 0.2 + 0.8 * torch.rand(n, 1, SIDE, SIDE, generator=g)
    x[:, 0, PIXEL[0], PIXEL[1]] = 1.0
    return x, torch.zeros(n, dtype=torch.long)


def _batches(x, t, m, size):
    return [(x[i : i + size], t[i : i + size], None if m is None else m[i : i + size])
            for i in range(0, x.shape[0], size)]


@pytest.mark.parametrize("use_lrp", [True, False])
def test_one_pixel_model_curves_and_mask_share(use_lrp: bool) -> None:
    model = _one_pixel_model()
    x, t = _data(400)
    inside = torch.zeros(400, SIDE, SIDE, dtype=torch.bool)
    inside[:, PIXEL[0], PIXEL[1]] = True
    inside[:, 0, 0] = True
    w = model[2].weight[0].view(1, SIDE, SIDE).detach()
    explain = None if use_lrp else (lambda m, xx, tt: xx[:, 0] * w)  # gradient x input
    result = evaluate(model, _batches(x, t, inside, 64), explain=explain, seed=3)
    assert result.n == 400 and result.accuracy == 1.0
    assert result.relevance_curve == [1.0] + [0.0] * 20  # the pixel is occluded first
    assert result.relevance_auc == pytest.approx(0.025)
    for f, acc in zip(FRACTIONS, result.random_curve, strict=True):
        assert acc == pytest.approx(1 - round(f * SIDE * SIDE) / (SIDE * SIDE), abs=0.1)
    assert result.random_auc == pytest.approx(0.5, abs=0.04)
    assert result.mask_share == pytest.approx(1.0)
    assert result.mass50_count == 1 and result.mass50_fraction == pytest.approx(0.01)
    confidence = 1 / (1 + math.exp(-0.5))  # softmax of (1, 0.5), always right
    assert result.rms_calibration_error == pytest.approx(1 - confidence, abs=1e-5)

    outside = ~inside
    assert evaluate(model, _batches(x, t, outside, 64), explain=explain).mask_share == 0.0
    assert evaluate(model, _batches(x, t, None, 64), explain=explain).mask_share is None


def test_batching_does_not_change_the_deterministic_metrics() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), nn.Flatten(),
                          nn.Linear(4 * SIDE * SIDE, 3))
    x = torch.randn(30, 1, SIDE, SIDE)
    t = torch.randint(0, 3, (30,))
    m = torch.rand(30, SIDE, SIDE) > 0.5
    one = evaluate(model, _batches(x, t, m, 30))
    many = evaluate(model, _batches(x, t, m, 7))
    assert one.relevance_curve == pytest.approx(many.relevance_curve)
    for name in ("accuracy", "mask_share", "mass50_count", "rms_calibration_error"):
        assert getattr(one, name) == pytest.approx(getattr(many, name)), name
    again = evaluate(model, _batches(x, t, m, 7))
    assert again.random_curve == many.random_curve  # seeded
    assert set(one.to_json()) == {"n", "accuracy", "occlusion", "feature_utilization",
                                  "rms_calibration_error"}


def test_calibration_error_known_cases() -> None:
    conf = torch.full((10,), 0.8)
    right = torch.tensor([1] * 8 + [0] * 2)
    assert calibration_error(conf, right) == pytest.approx(0.0, abs=1e-6)
    over = torch.full((100,), 0.99)
    half = torch.arange(100) % 2
    assert calibration_error(over, half) == pytest.approx(0.49)
    mixed = torch.tensor([0.95] * 10 + [0.55] * 10)
    hits = torch.tensor([1] * 10 + [1] * 5 + [0] * 5)
    assert calibration_error(mixed, hits) == pytest.approx(0.05)
    with pytest.raises(ValueError, match="bins"):
        calibration_error(conf, right, bins=0)


def test_mass_count_and_mask_share_against_loops() -> None:
    g = torch.Generator().manual_seed(0)
    rel = torch.randn(6, 5, 5, generator=g)
    masks = torch.rand(6, 5, 5, generator=g) > 0.5
    counts = mass_count(rel, 0.5, "abs")
    positive = mass_count(rel, 0.5, "positive")
    shares = mask_share(rel, masks)
    for i in range(6):
        for values, got in ((rel[i].abs().flatten(), counts[i]),
                            (rel[i].clamp(min=0).flatten(), positive[i])):
            ordered = sorted(values.tolist(), reverse=True)
            total, acc, k = sum(ordered), 0.0, 0
            while acc < 0.5 * total * (1 - 1e-6):
                acc += ordered[k]
                k += 1
            assert got == k
        pos = [max(v, 0.0) for v in rel[i].flatten().tolist()]
        inside = sum(p for p, mm in zip(pos, masks[i].flatten().tolist()) if mm)
        assert shares[i] == pytest.approx(inside / sum(pos))
    assert torch.isnan(mass_count(torch.zeros(1, 3, 3)))[0]
    assert torch.isnan(mask_share(-torch.ones(1, 3, 3), torch.ones(1, 3, 3)))[0]


def test_occlusion_ranks_and_auc() -> None:
    ranks = occlusion_ranks(torch.tensor([[0.1, 3.0, 3.0, -1.0]]))
    assert ranks.tolist() == [[2, 0, 1, 3]]  # descending, ties in index order
    r = occlusion_ranks(None, (2, 6), torch.Generator().manual_seed(0))
    assert sorted(r[0].tolist()) == list(range(6))
    assert area_under_curve([0, 0.5, 1], [1, 1, 0]) == pytest.approx(0.75)
    with pytest.raises(ValueError, match="fractions"):
        evaluate(nn.Linear(1, 2), [], fractions=[0.5, 0.2])
    with pytest.raises(ValueError, match="no samples"):
        evaluate(_one_pixel_model(), [])
