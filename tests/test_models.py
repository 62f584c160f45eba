"""Models by name: shapes, embed, canonizer names, errors."""

from __future__ import annotations

import pytest
import torch

from reldrop.models import MODELS, PointNet, SmallResNet18, SmallVGG, build_model


@pytest.mark.parametrize(
    "name,shape,embed_dim",
    [("small-cnn", (1, 16, 16), 128), ("resnet18", (3, 8, 8), 512), ("pointnet", (20, 3), 128)],
)
def test_forward_and_embed_shapes(name, shape, embed_dim):
    in_channels = shape[0] if name != "pointnet" else shape[1]
    model = build_model(name, in_channels=in_channels, num_classes=4).eval()
    x = torch.randn(2, *shape)
    with torch.no_grad():
        logits, features = model(x), model.embed(x)
    assert logits.shape == (2, 4) and features.shape == (2, embed_dim)
    torch.testing.assert_close(model.head(features) if hasattr(model, "head") else model.fc(features), logits)


def test_registry_and_canonizer_names():
    assert MODELS == {"small-cnn": SmallVGG, "resnet18": SmallResNet18, "pointnet": PointNet}
    assert SmallVGG.canonizer == "sequential" and PointNet.canonizer == "sequential"
    assert SmallResNet18.canonizer == "resnet"


def test_pointnet_is_permutation_invariant():
    model = build_model("pointnet", in_channels=3, num_classes=3).eval()
    x = torch.randn(2, 16, 3)
    with torch.no_grad():
        torch.testing.assert_close(model(x), model(x[:, torch.randperm(16)]), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize(
    "kw,match",
    [
        ({"name": "vgg16"}, r"model='vgg16' is unknown; known models: \['pointnet', 'resnet18', 'small-cnn'\]"),
        ({"in_channels": 0}, "in_channels=0"),
        ({"num_classes": 1}, "num_classes=1"),
    ],
)
def test_bad_arguments(kw, match):
    args = {"name": "small-cnn", "in_channels": 1, "num_classes": 3} | kw
    name = args.pop("name")
    with pytest.raises(ValueError, match=match):
        build_model(name, **args)
