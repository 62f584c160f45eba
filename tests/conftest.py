"""Shared, small, seeded fixtures."""

from __future__ import annotations

import os

os.environ.setdefault("OMP_NUM_THREADS", "2")

import pytest  # noqa: E402
import torch  # noqa: E402
from torch import nn  # noqa: E402

from reldrop.models import build_model  # noqa: E402

torch.set_num_threads(2)


@pytest.fixture
def gen() -> torch.Generator:
    """A seeded CPU generator (fresh per test)."""
    return torch.Generator().manual_seed(1234)


@pytest.fixture
def images() -> torch.Tensor:
    """8 seeded normalised single-channel 16 x 16 images."""
    return torch.randn(8, 1, 16, 16, generator=torch.Generator().manual_seed(0))


@pytest.fixture
def labels() -> torch.Tensor:
    return torch.arange(8) % 3


@pytest.fixture
def clouds() -> torch.Tensor:
    """6 seeded point clouds of 32 points in 3-D."""
    return torch.randn(6, 32, 3, generator=torch.Generator().manual_seed(1))


def _warm_batch_norm(model: nn.Module, inputs: torch.Tensor, steps: int = 3) -> nn.Module:
    """Give every BatchNorm non-trivial running statistics and affine parameters."""
    torch.manual_seed(7)
    for module in model.modules():
        if isinstance(module, (nn.BatchNorm1d, nn.BatchNorm2d)):
            with torch.no_grad():
                module.weight.uniform_(0.5, 1.5)
                module.bias.uniform_(-0.2, 0.2)
            module.momentum = 0.5
    model.train()
    with torch.no_grad():
        for i in range(steps):
            model(inputs * (1 + 0.3 * i) + 0.1 * i)
    return model


@pytest.fixture
def make_model():
    """``make_model(name, in_channels, num_classes, inputs)``: a seeded model, BatchNorm warmed
    on ``inputs`` (train mode on return)."""

    def make(name: str, in_channels: int, num_classes: int, inputs: torch.Tensor) -> nn.Module:
        torch.manual_seed(0)
        model = build_model(name, in_channels=in_channels, num_classes=num_classes)
        return _warm_batch_norm(model, inputs)

    return make


@pytest.fixture(scope="session")
def ray_local():
    """One small local Ray cluster shared by every Ray test (2 CPUs, like CI)."""
    ray = pytest.importorskip("ray")
    if not ray.is_initialized():
        ray.init(num_cpus=2, include_dashboard=False, configure_logging=False, log_to_driver=False)
    yield ray
    ray.shutdown()


@pytest.fixture(scope="session")
def decoy_root(tmp_path_factory):
    """A small DecoyMNIST (400 digits: 320 train in 7 shards, 80 per test split)."""
    from reldrop.pipeline.data.datasets import build_dataset

    root = tmp_path_factory.mktemp("decoy") / "decoy-mnist"
    build_dataset("decoy-mnist", str(root), seed=0, limit=400, shard_size=50, progress=False)
    return str(root)
