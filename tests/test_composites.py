"""Composites and canonizers by name."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from zennit.canonizers import SequentialMergeBatchNorm
from zennit.composites import EpsilonGammaBox, EpsilonPlusFlat
from zennit.torchvision import ResNetCanonizer

from reldrop.composites import COMPOSITES, canonizers_for, make_composite, register_composite
from reldrop.models import build_model
from reldrop.relevance import relevance


def test_registry_names():
    assert {"reference", "epsilon_plus_flat", "epsilon_gamma_box"} <= set(COMPOSITES)


def test_canonizers_follow_the_architecture():
    resnet = build_model("resnet18", in_channels=3, num_classes=2)
    assert [type(c) for c in canonizers_for(resnet)] == [ResNetCanonizer]
    for name in ("small-cnn", "pointnet"):
        model = build_model(name, in_channels=3, num_classes=2)
        assert [type(c) for c in canonizers_for(model)] == [SequentialMergeBatchNorm]
    assert [type(c) for c in canonizers_for(nn.Sequential(nn.Linear(2, 2)))] == [
        SequentialMergeBatchNorm
    ]
    plain = nn.Linear(2, 2)
    plain.canonizer = "none"  # type: ignore[assignment]
    assert canonizers_for(plain) == []


def test_unknown_canonizer_lists_known():
    model = nn.Linear(2, 2)
    model.canonizer = "vgg"  # type: ignore[assignment]
    with pytest.raises(ValueError, match=r"model.canonizer is 'vgg'; known canonizers: \['none', 'resnet', 'sequential'\]"):
        canonizers_for(model)


def test_make_composite_is_fresh_and_typed():
    model = build_model("small-cnn", in_channels=1, num_classes=2)
    a = make_composite("epsilon_plus_flat", model, (-1.0, 1.0))
    b = make_composite("epsilon_plus_flat", model, (-1.0, 1.0))
    assert isinstance(a, EpsilonPlusFlat) and a is not b and a.canonizers[0] is not b.canonizers[0]
    assert isinstance(make_composite("epsilon_gamma_box", model, (-1.0, 1.0)), EpsilonGammaBox)


def test_unknown_composite_lists_known():
    model = build_model("small-cnn", in_channels=1, num_classes=2)
    with pytest.raises(ValueError, match=r"composite='lrp' is unknown; known composites: \[.*'reference'"):
        make_composite("lrp", model, (0.0, 1.0))


def test_register_composite(monkeypatch):
    monkeypatch.setattr("reldrop.composites.COMPOSITES", dict(COMPOSITES))
    from reldrop import composites

    @register_composite("test_plus_flat")
    def factory(canonizers, bounds):  # type: ignore[no-untyped-def]
        return EpsilonPlusFlat(canonizers=canonizers)

    assert composites.COMPOSITES["test_plus_flat"] is factory
    model = build_model("small-cnn", in_channels=1, num_classes=2).eval()
    x, y = torch.randn(2, 1, 8, 8), torch.tensor([0, 1])
    torch.testing.assert_close(
        relevance(model, x, y, composite="test_plus_flat"),
        relevance(model, x, y, composite="epsilon_plus_flat"),
    )
    assert not torch.allclose(
        relevance(model, x, y, composite="reference"), relevance(model, x, y, composite="epsilon_plus_flat")
    )
