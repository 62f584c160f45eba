"""Composites and canonizers by name."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from zennit.canonizers import SequentialMergeBatchNorm
from zennit.composites import EpsilonGammaBox, EpsilonPlusFlat
from zennit.torchvision import ResNetCanonizer, VGGCanonizer

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
    # no BatchNorm, nothing to merge (SequentialMergeBatchNorm would be a no-op there)
    assert canonizers_for(nn.Sequential(nn.Linear(2, 2))) == []
    with_bn = nn.Sequential(nn.Conv2d(1, 2, 3), nn.BatchNorm2d(2), nn.ReLU())
    assert [type(c) for c in canonizers_for(with_bn)] == [SequentialMergeBatchNorm]
    tv_resnet = build_model("torchvision:resnet18", in_channels=3, num_classes=2)
    assert [type(c) for c in canonizers_for(tv_resnet)] == [ResNetCanonizer]
    tv_vgg = build_model("torchvision:vgg11_bn", in_channels=1, num_classes=2)
    assert [type(c) for c in canonizers_for(tv_vgg)] == [VGGCanonizer]
    plain = nn.Linear(2, 2)
    plain.canonizer = "none"  # type: ignore[assignment]
    assert canonizers_for(plain) == []


def test_unknown_canonizer_lists_known():
    model = nn.Linear(2, 2)
    model.canonizer = "vgg16"  # type: ignore[assignment]
    with pytest.raises(ValueError, match=r"model.canonizer is 'vgg16'; known canonizers: \['none', 'resnet', 'sequential', 'vgg'\]"):
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
    monkeypatch.setattr(COMPOSITES, "_entries", dict(COMPOSITES))  # undone after the test
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


class _UserNet(nn.Module):
    """A user's model: BatchNorm after a conv inside a Sequential, no reldrop attributes."""

    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(),
                                  nn.Conv2d(4, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(),
                                  nn.Flatten(), nn.Linear(4 * 6 * 6, 3))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x)


def test_user_model_with_batchnorm_matches_hand_built_zennit():
    from zennit.attribution import Gradient

    torch.manual_seed(0)
    model = _UserNet()
    with torch.no_grad():
        for bn in (model.body[1], model.body[4]):
            bn.running_mean.uniform_(-0.5, 0.5)
            bn.running_var.uniform_(0.5, 2.0)
            bn.weight.uniform_(0.5, 1.5)
            bn.bias.uniform_(-0.5, 0.5)
    model.eval()
    x, y = torch.randn(5, 1, 6, 6), torch.tensor([0, 1, 2, 0, 1])
    got = relevance(model, x, y, composite="epsilon_plus_flat")
    composite = EpsilonPlusFlat(canonizers=[SequentialMergeBatchNorm()])
    inputs = x.clone().requires_grad_(True)
    with Gradient(model=model, composite=composite) as attributor:
        _, attr = attributor(inputs, torch.eye(3)[y])
    assert torch.equal(got, attr.sum(dim=1))
    # without the canonizer the BatchNorm would get the Pass rule: a different heatmap
    inputs = x.clone().requires_grad_(True)
    with Gradient(model=model, composite=EpsilonPlusFlat()) as attributor:
        _, unmerged = attributor(inputs, torch.eye(3)[y])
    assert not torch.allclose(got, unmerged.sum(dim=1))


def test_own_canonizer_callable():
    model = _UserNet()
    model.canonizer = lambda: []  # type: ignore[assignment]
    assert canonizers_for(model) == []
    model.canonizer = lambda: ["not a canonizer"]  # type: ignore[assignment]
    with pytest.raises(ValueError, match="list of zennit Canonizer"):
        canonizers_for(model)
