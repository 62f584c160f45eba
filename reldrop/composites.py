"""LRP composites and canonizers, chosen by name.

The ``reference`` composite is exactly the rules of the RelDrop reference code (Grüne et al.
2025, arXiv 2505.21595, its ``epsilon_zplus`` composite): Epsilon(1e-3) on convolutional and
linear layers, Flat on the first layer, Norm on average pooling, Pass on activations and
BatchNorm, and no rule for residual additions (timm/torchvision ResNets add with ``+``, which
the gradient passes through). ``reference-sum-norm`` adds the Norm rule at residual additions
(zennit's ``Sum`` modules, which ``ResNetCanonizer`` inserts): sounder, identical on networks
without residual sums, but a different heatmap on a ResNet. ``epsilon_plus_flat`` and
``epsilon_gamma_box`` are zennit's presets (Montavon et al. 2019; Kohlbrenner et al. 2020).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn
from torchvision.models import VGG, ResNet
from zennit.canonizers import Canonizer, SequentialMergeBatchNorm
from zennit.composites import EpsilonGammaBox, EpsilonPlusFlat, SpecialFirstLayerMapComposite
from zennit.core import Composite
from zennit.layer import Sum
from zennit.rules import Epsilon, Flat, Norm, Pass
from zennit.torchvision import ResNetCanonizer, VGGCanonizer
from zennit.types import Activation, AvgPool, BatchNorm, Convolution, Linear

from reldrop.registry import Registry

__all__ = [
    "CANONIZERS",
    "COMPOSITES",
    "canonizers_for",
    "detect_canonizer",
    "make_composite",
    "register_composite",
]

Bounds = tuple[torch.Tensor | float, torch.Tensor | float]
CompositeFactory = Callable[[list[Canonizer], Bounds], Composite]

#: name -> factory(canonizers, (low, high)) -> zennit Composite
COMPOSITES: Registry[CompositeFactory] = Registry("composite")
#: name -> factory() -> list of canonizers
CANONIZERS: Registry[Callable[[], list[Canonizer]]] = Registry("canonizer")
CANONIZERS.add("resnet", lambda: [ResNetCanonizer()])
CANONIZERS.add("vgg", lambda: [VGGCanonizer()])
CANONIZERS.add("sequential", lambda: [SequentialMergeBatchNorm()])
CANONIZERS.add("none", lambda: [])


def register_composite(name: str) -> Callable[[CompositeFactory], CompositeFactory]:
    """Register a composite factory under ``name`` (used by the CLI, configs and manifests)."""
    return COMPOSITES.register(name)


class _ReferenceComposite(SpecialFirstLayerMapComposite):
    """Epsilon on conv/linear, Flat on the first layer, Norm on average pooling, Pass on
    activations and BatchNorm; ``sum_norm`` adds Norm at residual additions."""

    def __init__(
        self, epsilon: float = 1e-3, canonizers: list[Canonizer] | None = None,
        *, sum_norm: bool = False,
    ) -> None:
        layer_map = [
            (Activation, Pass()),
            (BatchNorm, Pass()),
            *([(Sum, Norm())] if sum_norm else []),
            (AvgPool, Norm()),
            (Convolution, Epsilon(epsilon=epsilon)),
            (nn.Linear, Epsilon(epsilon=epsilon)),
        ]
        first_map = [(Linear, Flat())]
        super().__init__(layer_map=layer_map, first_map=first_map, canonizers=canonizers)


@register_composite("reference")
def _reference(canonizers: list[Canonizer], bounds: Bounds) -> Composite:
    return _ReferenceComposite(canonizers=canonizers)


@register_composite("reference-sum-norm")
def _reference_sum_norm(canonizers: list[Canonizer], bounds: Bounds) -> Composite:
    return _ReferenceComposite(canonizers=canonizers, sum_norm=True)


@register_composite("epsilon_plus_flat")
def _epsilon_plus_flat(canonizers: list[Canonizer], bounds: Bounds) -> Composite:
    return EpsilonPlusFlat(canonizers=canonizers)


@register_composite("epsilon_gamma_box")
def _epsilon_gamma_box(canonizers: list[Canonizer], bounds: Bounds) -> Composite:
    low, high = bounds
    return EpsilonGammaBox(low=low, high=high, canonizers=canonizers)


def detect_canonizer(model: nn.Module) -> str:
    """The canonizer an architecture needs: torchvision ResNets ``resnet`` (BatchNorm merge plus
    the residual sum as a module), VGGs ``vgg``, other models with BatchNorm ``sequential``
    (merge a BatchNorm into the linear layer before it in an ``nn.Sequential``), else ``none``."""
    if isinstance(model, ResNet):
        return "resnet"
    if isinstance(model, VGG):
        return "vgg"
    if any(isinstance(m, BatchNorm) for m in model.modules()):
        return "sequential"
    return "none"


def canonizers_for(model: nn.Module) -> list[Canonizer]:
    """Fresh canonizers for ``model``: its own ``canonizer`` attribute if it has one (a name in
    :data:`CANONIZERS`, or a callable returning a list of zennit canonizers), else
    :func:`detect_canonizer`."""
    own = getattr(model, "canonizer", None)
    if own is not None and not isinstance(own, str):
        if not callable(own):
            raise ValueError(f"model.canonizer is a {type(own).__name__}; expected a name in "
                             f"{sorted(CANONIZERS)} or a callable returning zennit canonizers")
        made = list(own())
        if not all(isinstance(c, Canonizer) for c in made):
            raise ValueError("model.canonizer() must return a list of zennit Canonizer instances")
        return made
    name = own if own is not None else detect_canonizer(model)
    if name not in CANONIZERS:
        raise ValueError(f"model.canonizer is {name!r}; known canonizers: {sorted(CANONIZERS)}")
    return CANONIZERS[name]()


def make_composite(name: str, model: nn.Module, bounds: Bounds) -> Composite:
    """A fresh composite ``name`` with the canonizers for ``model``.

    ``bounds`` = (lowest, highest) input value, used by box rules (``epsilon_gamma_box``).
    """
    if name not in COMPOSITES:
        raise ValueError(f"composite={name!r} is unknown; known composites: {sorted(COMPOSITES)}")
    return COMPOSITES[name](canonizers_for(model), bounds)
