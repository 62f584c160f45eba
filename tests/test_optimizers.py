"""One optimiser factory for the trainer and the studies, named by ``--optimizer``; the step
clips gradients the one way the regularizer says; one normalisation estimate."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from reldrop.normalization import Normalization
from reldrop.optimizers import OPTIMIZERS, make_optimizer
from reldrop.pipeline.training.config import TrainConfig
from reldrop.pipeline.training.step import train_step
from reldrop.regularizers import make_regularizer


def test_named_optimizers_and_their_settings() -> None:
    params = [nn.Parameter(torch.zeros(2))]
    assert OPTIMIZERS.names() == ["adam", "sgd"]
    sgd = make_optimizer("sgd", params, lr=0.1)
    assert isinstance(sgd, torch.optim.SGD)
    assert sgd.defaults["momentum"] == 0.9 and sgd.defaults["weight_decay"] == 5e-4
    adam = make_optimizer("adam", params, lr=1e-3)
    assert isinstance(adam, torch.optim.Adam) and adam.defaults["weight_decay"] == 0
    with pytest.raises(ValueError, match="optimizer='lbfgs' is unknown; known: \\['adam', 'sgd'\\]"):
        make_optimizer("lbfgs", params, lr=0.1)


def test_train_config_names_the_optimizer() -> None:
    assert TrainConfig().optimizer == "sgd"  # the trainer's default stays SGD
    assert TrainConfig(optimizer="adam").to_json()["optimizer"] == "adam"
    with pytest.raises(ValueError, match="optimizer='rmsprop'; expected one of"):
        TrainConfig(optimizer="rmsprop")


@pytest.mark.parametrize(("name", "params", "bound"), [
    ("none", {"clip_grad_norm": 1e-3}, 1e-3),
    ("isnet", {}, 1.0),  # the reference clips ISNet at 1.0
])
def test_the_step_clips_as_the_regularizer_says(name: str, params: dict, bound: float) -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(1, 2, 3), nn.ReLU(), nn.Flatten(), nn.Linear(2 * 4 * 4, 3))
    regularizer = make_regularizer(name, lam=None if name == "none" else 0.5, **params)
    x, y = torch.randn(4, 1, 6, 6) * 100, torch.tensor([0, 1, 2, 0])
    masks = torch.ones(4, 6, 6)
    train_step(model, torch.optim.SGD(model.parameters(), lr=0.0), regularizer, x, y, masks,
               placeholder=x[:1])
    norm = torch.linalg.vector_norm(torch.stack([p.grad.norm() for p in model.parameters()]))
    assert float(norm) <= bound * (1 + 1e-4)


def test_normalization_estimate_per_channel() -> None:
    pixels = np.zeros((4, 2, 3, 3), dtype=np.uint8)
    pixels[:, 0] = 255
    pixels[:2, 1] = 255
    est = Normalization.estimate(pixels)
    assert est.mean == pytest.approx((1.0, 0.5)) and est.std == pytest.approx((1e-3, 0.5))
    assert Normalization.estimate(torch.from_numpy(pixels)) == est  # tensors too
    with pytest.raises(ValueError, match="expected N x C x H x W"):
        Normalization.estimate(pixels[0])
