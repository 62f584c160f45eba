"""The algorithm layer on a CUDA device: same numbers as on the CPU, tensors stay on the device.

Skipped where no GPU is present (CI); run on a GPU machine with ``pytest tests/test_cuda.py``.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from reldrop.augment import RelDrop
from reldrop.evaluation import evaluate
from reldrop.models import build_model
from reldrop.occlusion import STRATEGIES
from reldrop.regularizers import REGULARIZERS, make_regularizer
from reldrop.relevance import relevance

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
CUDA = torch.device("cuda")


def _model(name: str, channels: int) -> torch.nn.Module:
    torch.manual_seed(0)
    return build_model(name, in_channels=channels, num_classes=10).eval()


@pytest.mark.parametrize(("name", "shape"), [("small-cnn", (1, 28, 28)), ("resnet18", (3, 32, 32)),
                                             ("pointnet", (64, 3))])
@pytest.mark.parametrize("composite", ["reference", "epsilon_plus_flat", "epsilon_gamma_box"])
def test_relevance_matches_cpu(name: str, shape: tuple[int, ...], composite: str, monkeypatch) -> None:
    # TF32 (on by default for cuDNN convolutions) rounds to 10 mantissa bits: compare in fp32
    monkeypatch.setattr(torch.backends.cudnn, "allow_tf32", False)
    monkeypatch.setattr(torch.backends.cuda.matmul, "allow_tf32", False)
    monkeypatch.setattr(torch.backends.cudnn, "deterministic", True)
    model = _model(name, shape[0] if name != "pointnet" else 3)
    x = torch.randn(8, *shape, generator=torch.Generator().manual_seed(1))
    y = torch.arange(8) % 10
    cpu = relevance(model, x, y, composite=composite)
    gpu = relevance(model.to(CUDA), x.to(CUDA), y.to(CUDA), composite=composite)
    assert gpu.device.type == "cuda"
    scale = cpu.abs().max()
    torch.testing.assert_close(gpu.cpu() / scale, cpu / scale, atol=2e-3, rtol=2e-3)


@pytest.mark.parametrize("strategy", [s for s in STRATEGIES if s != "reldrop-points"])
@pytest.mark.parametrize("fill", ["zero", "constant", "noise", "blur"])
def test_occlusion_on_device(strategy: str, fill: str) -> None:
    model = _model("small-cnn", 1).to(CUDA)
    x = torch.randn(16, 1, 28, 28, device=CUDA)
    y = torch.randint(0, 10, (16,), device=CUDA)
    out = RelDrop(model, strategy, fill=fill, p=1.0, seed=0)(x, y)
    assert out.inputs.device.type == "cuda" and out.dropped.device.type == "cuda"
    kept = ~out.dropped.unsqueeze(1)
    assert torch.equal(out.inputs[kept], x[kept])


def test_points_on_device() -> None:
    model = _model("pointnet", 3).to(CUDA)
    x = torch.randn(8, 64, 3, device=CUDA)
    out = RelDrop(model, "reldrop-points", p=1.0, seed=0)(x, torch.randint(0, 10, (8,), device=CUDA))
    assert out.inputs.device.type == "cuda" and out.dropped.any()


def test_in_loop_training_on_device() -> None:
    torch.manual_seed(0)
    model = build_model("small-cnn", in_channels=1, num_classes=3).to(CUDA)
    x = torch.randn(256, 1, 16, 16, device=CUDA)
    y = torch.randint(0, 3, (256,), device=CUDA)
    x[torch.arange(256), 0, 8, y * 4] += 3.0  # a learnable signal
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    reldrop = RelDrop(model, "reldrop-pixel", seed=0)
    losses = []
    for _ in range(8):
        for i in range(0, 256, 64):
            xb = reldrop(x[i:i + 64], y[i:i + 64]).inputs
            loss = F.cross_entropy(model(xb), y[i:i + 64])
            opt.zero_grad()
            loss.backward()
            opt.step()
            losses.append(float(loss.detach()))
    assert sum(losses[-4:]) < sum(losses[:4])


@pytest.mark.parametrize("name", sorted(REGULARIZERS))
def test_regularizers_match_cpu(name: str, monkeypatch) -> None:
    monkeypatch.setattr(torch.backends.cudnn, "allow_tf32", False)
    model = _model("small-cnn", 1).train()
    x = torch.randn(8, 1, 16, 16, generator=torch.Generator().manual_seed(2))
    y = torch.arange(8) % 10
    masks = torch.zeros(8, 16, 16)
    masks[:, 4:12, 4:12] = 1
    if name == "actdiff":  # random shuffle: compare only that it runs and is finite
        out = make_regularizer(name)(model.to(CUDA), x.to(CUDA), y.to(CUDA), masks.to(CUDA))
        assert torch.isfinite(out.loss)
        out.loss.backward()
        return
    cpu = make_regularizer(name)(model, x, y, masks).loss
    gpu = make_regularizer(name)(model.to(CUDA), x.to(CUDA), y.to(CUDA), masks.to(CUDA)).loss
    gpu.backward()
    torch.testing.assert_close(gpu.cpu().detach(), cpu.detach(), atol=1e-3, rtol=1e-3)


def test_evaluation_on_device() -> None:
    model = _model("small-cnn", 1).to(CUDA)
    batches = [(torch.randn(16, 1, 16, 16, device=CUDA), torch.randint(0, 10, (16,), device=CUDA),
                torch.ones(16, 16, 16, device=CUDA))]
    result = evaluate(model, batches)
    assert 0.0 <= result.to_json()["accuracy"] <= 1.0
