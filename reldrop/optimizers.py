"""Optimisers by name, one factory for the trainer (``reldrop train --optimizer``) and the
in-process studies, so a setting means the same wherever it is named.

- ``sgd``: momentum 0.9, weight decay 5e-4 (the trainer's default, as RelDrop's reference
  trains ResNets with SGD);
- ``adam``: no weight decay (the gradient penalties' reference code trains with Adam:
  Ross et al. 2017 at lr 1e-3, Viviano et al. 2019 at lr 1e-4 to 1e-2).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

import torch

from reldrop.registry import Registry

__all__ = ["OPTIMIZERS", "make_optimizer"]

OptimizerFactory = Callable[..., torch.optim.Optimizer]

#: name -> ``factory(params, *, lr)``
OPTIMIZERS: Registry[OptimizerFactory] = Registry("optimizer")


@OPTIMIZERS.register("sgd")
def _sgd(params: Iterable[Any], *, lr: float) -> torch.optim.Optimizer:
    return torch.optim.SGD(params, lr=lr, momentum=0.9, weight_decay=5e-4)


@OPTIMIZERS.register("adam")
def _adam(params: Iterable[Any], *, lr: float) -> torch.optim.Optimizer:
    return torch.optim.Adam(params, lr=lr)


def make_optimizer(name: str, params: Iterable[Any], *, lr: float) -> torch.optim.Optimizer:
    """The optimiser ``name`` (see :data:`OPTIMIZERS`) over ``params`` at learning rate ``lr``."""
    return OPTIMIZERS.get(name)(params, lr=lr)
