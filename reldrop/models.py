"""Models by name: a small VGG-style CNN, a ResNet-18 for small inputs, a small PointNet.

Every model exposes ``embed(x)`` (the penultimate features, used by ActDiff), returns
``(logits, features)`` from ``forward(x, return_embedding=True)`` (so a DDP wrapper's forward,
which synchronises gradients, is not bypassed) and names its ``canonizer`` so the LRP
composites find the right one.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import nn
from torchvision.models.resnet import BasicBlock, ResNet

__all__ = ["MODELS", "PointNet", "SmallResNet18", "SmallVGG", "build_model"]


def _conv_block(c_in: int, c_out: int) -> list[nn.Module]:
    return [nn.Conv2d(c_in, c_out, 3, padding=1), nn.BatchNorm2d(c_out), nn.ReLU()]


class SmallVGG(nn.Module):
    """VGG-style CNN with BatchNorm: 2 x (conv-bn-relu x 2, maxpool), 3 x 3 average pool,
    2 linear layers."""

    canonizer = "sequential"

    def __init__(self, *, in_channels: int = 1, num_classes: int = 10, width: int = 32) -> None:
        super().__init__()
        w = width
        self.features = nn.Sequential(
            *_conv_block(in_channels, w),
            *_conv_block(w, w),
            nn.MaxPool2d(2),
            *_conv_block(w, 2 * w),
            *_conv_block(2 * w, 2 * w),
            nn.MaxPool2d(2),
            # a 3 x 3 grid keeps where things are (global pooling trained to ~0.6 test accuracy
            # on 2000 digits in 3 epochs, the 3 x 3 grid to ~0.9)
            nn.AdaptiveAvgPool2d(3),
            nn.Flatten(),
            nn.Linear(2 * w * 9, 4 * w),
            nn.ReLU(),
        )
        self.head = nn.Linear(4 * w, num_classes)

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        return self.features(x)

    def forward(self, x: torch.Tensor, return_embedding: bool = False) -> Any:
        h = self.features(x)
        return (self.head(h), h) if return_embedding else self.head(h)


class SmallResNet18(ResNet):
    """torchvision's ResNet-18 with a 3x3 stride-1 stem and no max-pool, for 28-64 px inputs."""

    canonizer = "resnet"

    def __init__(self, *, in_channels: int = 3, num_classes: int = 10) -> None:
        super().__init__(BasicBlock, [2, 2, 2, 2], num_classes=num_classes)
        self.conv1 = nn.Conv2d(in_channels, 64, kernel_size=3, stride=1, padding=1, bias=False)
        self.maxpool = nn.Identity()  # type: ignore[assignment]

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        x = self.relu(self.bn1(self.conv1(x)))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return torch.flatten(self.avgpool(x), 1)

    def forward(self, x: torch.Tensor, return_embedding: bool = False) -> Any:
        h = self.embed(x)
        return (self.fc(h), h) if return_embedding else self.fc(h)


class PointNet(nn.Module):
    """Small PointNet (Qi et al. 2017) without transform nets: shared per-point MLP (1x1 conv +
    BatchNorm + ReLU), max over points, MLP head. Input N x P x C."""

    canonizer = "sequential"

    def __init__(self, *, in_channels: int = 3, num_classes: int = 5, width: int = 64) -> None:
        super().__init__()
        w = width
        self.point_mlp = nn.Sequential(
            nn.Conv1d(in_channels, w, 1),
            nn.BatchNorm1d(w),
            nn.ReLU(),
            nn.Conv1d(w, w, 1),
            nn.BatchNorm1d(w),
            nn.ReLU(),
            nn.Conv1d(w, 4 * w, 1),
            nn.BatchNorm1d(4 * w),
            nn.ReLU(),
        )
        self.mlp = nn.Sequential(nn.Linear(4 * w, 2 * w), nn.ReLU())
        self.head = nn.Linear(2 * w, num_classes)

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        h = self.point_mlp(x.transpose(1, 2))
        return self.mlp(h.amax(dim=2))

    def forward(self, x: torch.Tensor, return_embedding: bool = False) -> Any:
        h = self.embed(x)
        return (self.head(h), h) if return_embedding else self.head(h)


ModelFactory = Callable[..., nn.Module]
#: name -> factory(in_channels=, num_classes=)
MODELS: dict[str, ModelFactory] = {
    "small-cnn": SmallVGG,
    "resnet18": SmallResNet18,
    "pointnet": PointNet,
}


def build_model(name: str, *, in_channels: int, num_classes: int) -> nn.Module:
    """A freshly initialised model ``name`` (see :data:`MODELS`)."""
    if name not in MODELS:
        raise ValueError(f"model={name!r} is unknown; known models: {sorted(MODELS)}")
    if in_channels < 1 or num_classes < 2:
        raise ValueError(
            f"in_channels={in_channels}, num_classes={num_classes}; expected >= 1 and >= 2"
        )
    return MODELS[name](in_channels=in_channels, num_classes=num_classes)
