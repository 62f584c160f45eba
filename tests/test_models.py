"""Models by name: shapes, embed, canonizer names, errors."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from reldrop.models import MLP, MODELS, PointNet, SmallResNet18, SmallVGG, build_model


@pytest.mark.parametrize(
    "name,shape,embed_dim",
    [("small-cnn", (1, 16, 16), 128), ("resnet18", (3, 8, 8), 512), ("pointnet", (20, 3), 128),
     ("mlp", (1, 28, 28), 30), ("mlp", (3, 8, 8), 30)],
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
    assert MODELS == {"small-cnn": SmallVGG, "resnet18": SmallResNet18, "pointnet": PointNet,
                      "mlp": MLP}
    assert MLP.canonizer == "none"
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
        ({"name": "vgg16"}, r"model='vgg16' is unknown; known models: \['mlp', 'pointnet', 'resnet18', 'small-cnn'\]"),
        ({"in_channels": 0}, "in_channels=0"),
        ({"num_classes": 1}, "num_classes=1"),
    ],
)
def test_bad_arguments(kw, match):
    args = {"name": "small-cnn", "in_channels": 1, "num_classes": 3} | kw
    name = args.pop("name")
    with pytest.raises(ValueError, match=match):
        build_model(name, **args)


# ---- own models by import path ---------------------------------------------------------------
FACTORY_MODULE = '''
import torch
from torch import nn


class Tiny(nn.Module):
    def __init__(self, in_channels, num_classes):
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(in_channels, 4, 3, padding=1), nn.BatchNorm2d(4),
                                  nn.ReLU(), nn.AdaptiveAvgPool2d(2), nn.Flatten(),
                                  nn.Linear(16, num_classes))

    def forward(self, x):
        return self.body(x)


def make(*, in_channels, num_classes):
    return Tiny(in_channels, num_classes)


class Nested:
    make = staticmethod(make)


def broken(*, in_channels, num_classes):
    raise RuntimeError("no GPU here")


def not_a_model(*, in_channels, num_classes):
    return 42
'''


@pytest.fixture
def factory_module(tmp_path, monkeypatch):
    """A module ``my_factories`` outside the package, on sys.path (as PYTHONPATH would put it)."""
    (tmp_path / "my_factories.py").write_text(FACTORY_MODULE)
    monkeypatch.syspath_prepend(str(tmp_path))
    yield "my_factories"
    import sys

    sys.modules.pop("my_factories", None)


def test_factory_by_import_path_trains_with_reldrop(factory_module, tmp_path):
    from reldrop.augment import RelDrop
    from reldrop.checkpoint import ModelSpec, load_checkpoint, save_checkpoint

    torch.manual_seed(0)
    spec = ModelSpec(name=f"{factory_module}:make", in_channels=2, num_classes=3)
    model = spec.build()
    assert type(model).__name__ == "Tiny"
    assert type(build_model(f"{factory_module}:Nested.make", in_channels=2, num_classes=3)).__name__ == "Tiny"
    x = torch.randn(32, 2, 8, 8)
    y = (x[:, 0, :4].mean(dim=(1, 2)) > 0).long() + (x[:, 1, 4:].mean(dim=(1, 2)) > 0).long()
    reldrop = RelDrop(model, "reldrop-pixel", p=1.0, seed=0)
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    losses = []
    for _ in range(30):
        out = reldrop(x, y)
        assert out.applied.all() and out.dropped.any()
        loss = torch.nn.functional.cross_entropy(model(out.inputs), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
    assert np.mean(losses[-5:]) < np.mean(losses[:5])
    path = save_checkpoint(tmp_path / "own.safetensors", model, spec)
    loaded, loaded_spec, _ = load_checkpoint(path)
    assert loaded_spec.name == "my_factories:make" and type(loaded).__name__ == "Tiny"
    model.eval()
    loaded.eval()
    with torch.no_grad():
        assert torch.equal(model(x), loaded(x))


@pytest.mark.parametrize("name,match", [
    ("no_such_module_xyz:make", r"cannot import module 'no_such_module_xyz'"),
    ("my_factories:missing", r"module 'my_factories' has no attribute 'missing'"),
    ("my_factories:broken", r"raised RuntimeError: no GPU here"),
    ("my_factories:not_a_model", r"returned a int, expected a torch.nn.Module"),
    ("my_factories:", r"expected a built-in name"),
    ("torchvision:resnet1000", r"torchvision has no classification model 'resnet1000'"),
])
def test_factory_errors_are_one_line(factory_module, name, match):
    with pytest.raises(ValueError, match=match) as info:
        build_model(name, in_channels=1, num_classes=3)
    assert "\n" not in str(info.value) and repr(name) in str(info.value)


@pytest.mark.parametrize("channels", [1, 3])
def test_torchvision_model_by_name_explains(channels):
    from reldrop.relevance import relevance

    torch.manual_seed(0)
    model = build_model("torchvision:resnet18", in_channels=channels, num_classes=4).eval()
    assert model.conv1.in_channels == channels and model.fc.out_features == 4
    x, y = torch.randn(2, channels, 32, 32), torch.tensor([1, 3])
    before = {k: v.clone() for k, v in model.state_dict().items()}
    rel = relevance(model, x, y)
    assert rel.shape == (2, 32, 32) and torch.isfinite(rel).all() and rel.abs().sum() > 0
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
