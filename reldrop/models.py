"""Models by name: a small VGG-style CNN, a ResNet-18 for small inputs, a small PointNet, Ross et
al.'s MLP (``mlp``), any
torchvision classification model (``torchvision:resnet50``) and your own
(``package.module:factory``, called as ``factory(in_channels=..., num_classes=...)``).

Every built-in model exposes ``embed(x)`` (the penultimate features, used by ActDiff), returns
``(logits, features)`` from ``forward(x, return_embedding=True)`` (so a DDP wrapper's forward,
which synchronises gradients, is not bypassed) and names its ``canonizer`` so the LRP
composites find the right one.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import Any

import torch
from torch import nn
from torchvision.models.resnet import BasicBlock, ResNet

from reldrop.registry import Registry

__all__ = [
    "MLP",
    "MODELS",
    "PointNet",
    "SmallResNet18",
    "SmallVGG",
    "UntrustedModelError",
    "build_model",
    "check_model_trust",
    "is_import_path",
    "resolve_model",
]


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


class MLP(nn.Module):
    """The multilayer perceptron of Ross et al. 2017's DecoyMNIST experiments (dtak/rrr): two
    ReLU layers of 50 and 30 units on the flattened image. Inputs of another size than
    ``image_size`` are average-pooled to it first (identity at 28 x 28)."""

    canonizer = "none"

    def __init__(self, *, in_channels: int = 1, num_classes: int = 10, image_size: int = 28,
                 hidden: tuple[int, ...] = (50, 30)) -> None:
        super().__init__()
        self.resize = nn.AdaptiveAvgPool2d((image_size, image_size))
        widths = (in_channels * image_size * image_size, *hidden)
        layers: list[nn.Module] = [nn.Flatten()]
        for a, b in zip(widths[:-1], widths[1:]):
            layers += [nn.Linear(a, b), nn.ReLU()]
        self.body = nn.Sequential(*layers)
        self.head = nn.Linear(widths[-1], num_classes)

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(self.resize(x))  # type: ignore[no-any-return]

    def forward(self, x: torch.Tensor, return_embedding: bool = False) -> Any:
        h = self.embed(x)
        return (self.head(h), h) if return_embedding else self.head(h)


ModelFactory = Callable[..., nn.Module]
#: built-in models: name -> factory(in_channels=, num_classes=)
MODELS: Registry[ModelFactory] = Registry("model")
MODELS.add("small-cnn", SmallVGG)
MODELS.add("resnet18", SmallResNet18)
MODELS.add("pointnet", PointNet)
MODELS.add("mlp", MLP)


def _torchvision_factory(name: str, arch: str) -> ModelFactory:
    """``torchvision:ARCH``: any torchvision classification model, randomly initialised, with
    ``num_classes`` outputs and its first convolution rebuilt for ``in_channels``."""
    import torchvision.models as tvm

    known = tvm.list_models(module=tvm)
    if arch not in known:
        raise ValueError(f"model={name!r}: torchvision has no classification model {arch!r}; "
                         f"known: {', '.join(known[:8])}, ... ({len(known)} in all)")

    def build(*, in_channels: int, num_classes: int) -> nn.Module:
        model = tvm.get_model(arch, weights=None, num_classes=num_classes)
        if in_channels != 3:
            _replace_first_conv(model, in_channels, name)
        return model

    return build


def _replace_first_conv(model: nn.Module, in_channels: int, name: str) -> None:
    """Swap the first ``Conv2d`` (the stem) for one taking ``in_channels`` inputs."""
    for path, module in model.named_modules():
        if isinstance(module, nn.Conv2d):
            parent = model.get_submodule(path.rpartition(".")[0]) if "." in path else model
            setattr(parent, path.rpartition(".")[2], nn.Conv2d(
                in_channels, module.out_channels, module.kernel_size, stride=module.stride,  # type: ignore[arg-type]
                padding=module.padding, dilation=module.dilation,  # type: ignore[arg-type]
                groups=1, bias=module.bias is not None, padding_mode=module.padding_mode,
            ))
            return
    raise ValueError(f"model={name!r} has no Conv2d stem to adapt to in_channels={in_channels}")


def _import_factory(name: str) -> ModelFactory:
    """``package.module:attribute`` (``attribute`` may be dotted) -> the callable it names."""
    module_name, _, attr = name.partition(":")
    if not module_name or not attr:
        raise ValueError(f"model={name!r}: expected a built-in name {sorted(MODELS)}, "
                         "'torchvision:ARCH' or 'package.module:factory'")
    try:
        target: Any = importlib.import_module(module_name)
    except ImportError as err:
        raise ValueError(f"model={name!r}: cannot import module {module_name!r} ({err}); "
                         "put it on PYTHONPATH or install it") from None
    for part in attr.split("."):
        if not hasattr(target, part):
            raise ValueError(f"model={name!r}: module {module_name!r} has no attribute {attr!r}")
        target = getattr(target, part)
    if not callable(target):
        raise ValueError(f"model={name!r}: {attr!r} is a {type(target).__name__}, not a callable factory")
    return target  # type: ignore[no-any-return]


class UntrustedModelError(ValueError):
    """A file (checkpoint, config, report) names an import-path model the user did not name."""


def is_import_path(name: str) -> bool:
    """Whether ``name`` is ``package.module:factory``: resolving it imports and runs code.

    Built-in names and ``torchvision:ARCH`` run nothing but reldrop's and torchvision's own code.
    """
    return (isinstance(name, str) and name not in MODELS and ":" in name
            and not name.startswith("torchvision:"))


def check_model_trust(name: str, *, source: str, named: str | None = None,
                      trusted: bool = False) -> None:
    """Refuse an import-path model that ``source`` (a file) names, before anything is imported.

    Resolving ``package.module:factory`` imports that module and calls the factory, so a
    downloaded checkpoint or config could run any code on the ``PYTHONPATH`` (or in the current
    directory). It is allowed only when the user named the same model themselves (``named``,
    from ``--model``) or opted in for all files (``trusted``, ``--trust-model-code``, in the
    spirit of Hugging Face's ``trust_remote_code``). Built-in and ``torchvision:`` names pass.
    """
    if not is_import_path(name) or trusted or named == name:
        return
    raise UntrustedModelError(
        f"{source} names model {name!r}, an import path: loading it would import and run that "
        f"code; if you trust it, pass --model {name} (or --trust-model-code)"
    )


def resolve_model(name: str) -> ModelFactory:
    """The factory ``factory(in_channels=, num_classes=)`` that ``name`` stands for: a built-in
    (:data:`MODELS`), ``torchvision:ARCH`` or ``package.module:factory``. Raises a one-line
    ``ValueError`` for a name that does not resolve (use it to validate a configuration)."""
    if not isinstance(name, str) or not name:
        raise ValueError(f"model={name!r}; expected a name such as 'small-cnn', "
                         "'torchvision:resnet18' or 'package.module:factory'")
    if name in MODELS:
        return MODELS[name]
    if name.startswith("torchvision:"):
        return _torchvision_factory(name, name.partition(":")[2])
    if ":" not in name:
        raise ValueError(f"model={name!r} is unknown; known models: {sorted(MODELS)} "
                         "(or 'torchvision:ARCH', or 'package.module:factory')")
    return _import_factory(name)


def build_model(name: str, *, in_channels: int, num_classes: int) -> nn.Module:
    """A freshly initialised model ``name`` (see :func:`resolve_model`)."""
    factory = resolve_model(name)
    if in_channels < 1 or num_classes < 2:
        raise ValueError(
            f"in_channels={in_channels}, num_classes={num_classes}; expected >= 1 and >= 2"
        )
    if name in MODELS:
        return factory(in_channels=in_channels, num_classes=num_classes)
    try:
        model = factory(in_channels=in_channels, num_classes=num_classes)
    except Exception as err:  # noqa: BLE001 - a user's factory may raise anything
        raise ValueError(f"model={name!r}: factory(in_channels={in_channels}, "
                         f"num_classes={num_classes}) raised {type(err).__name__}: {err}") from err
    if not isinstance(model, nn.Module):
        raise ValueError(f"model={name!r}: the factory returned a {type(model).__name__}, "
                         "expected a torch.nn.Module")
    return model
