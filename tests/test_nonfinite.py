"""No silent divergence (issue 24): a non-finite loss or gradient stops the run at that step
with one line, or is skipped and counted; every method's defaults train stably."""

from __future__ import annotations

from collections import Counter

import pytest
import torch
from torch import nn

from reldrop.pipeline.training.config import TrainConfig
from reldrop.pipeline.training.nonfinite import NonFiniteError, NonFiniteGuard, nonfinite_guard
from reldrop.pipeline.training.step import train_step
from reldrop.regularizers import make_regularizer


def _nan_model() -> nn.Module:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(16, 2))
    with torch.no_grad():
        model[1].weight[0, 0] = float("nan")
    return model


def _batch() -> tuple[torch.Tensor, torch.Tensor]:
    return torch.randn(4, 1, 4, 4), torch.tensor([0, 1, 0, 1])


def test_nonfinite_loss_stops_the_run_with_one_line() -> None:
    model = _nan_model()
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    guard = nonfinite_guard(TrainConfig(regularizer="gradmask"), Counter)
    x, y = _batch()
    with pytest.raises(NonFiniteError) as info:
        train_step(model, opt, make_regularizer("none"), x, y, None, placeholder=x[:1],
                   guard=guard.at(epoch=0, step=8))
    line = str(info.value)
    assert "\n" not in line and len(line) < 250
    for part in ("non-finite loss nan", "epoch 1 step 8", "method gradmask", "lambda 1,",
                 "lr 0.05", "--on-nonfinite skip"):
        assert part in line, line


def test_nonfinite_step_is_skipped_and_counted() -> None:
    model = _nan_model()
    before = [p.detach().clone() for p in model.parameters()]
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    counts: Counter[str] = Counter()
    guard = NonFiniteGuard(policy="skip", method="none", lam=None, lr=0.05,
                           counts=lambda: counts)
    x, y = _batch()
    out = train_step(model, opt, make_regularizer("none"), x, y, None, placeholder=x[:1],
                     guard=guard)
    assert not out.stepped and counts["nonfinite_skipped"] == 1
    assert all(torch.equal(a, b, ) or torch.isnan(a).any()
               for a, b in zip(before, model.parameters()))
    assert all(p.grad is None for p in model.parameters())
    assert not opt.state  # no momentum was built from NaN


def test_finite_steps_pass_and_policy_is_checked() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(16, 2))
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    x, y = _batch()
    guard = NonFiniteGuard(policy="stop", method="none", lam=None, lr=0.05)
    assert train_step(model, opt, make_regularizer("none"), x, y, None, placeholder=x[:1],
                      guard=guard).stepped
    with pytest.raises(ValueError, match="on_nonfinite='ignore'"):
        NonFiniteGuard(policy="ignore", method="none", lam=None, lr=0.05)
    with pytest.raises(ValueError, match="on_nonfinite"):
        TrainConfig(on_nonfinite="ignore")


@pytest.mark.parametrize("method", ["gradmask", "rrr"])
def test_input_gradient_penalties_train_stably_with_defaults(tmp_path, method) -> None:
    """GradMask with defaults on viviano-synthetic reached NaN by step 5 (SGD lr 0.05, batch
    32; the reference trains with Adam); with the default clipping every step stays finite."""
    from reldrop.normalization import Normalization
    from reldrop.optimizers import make_optimizer
    from reldrop.pipeline.data.datasets import build_dataset
    from studies.inprocess import load_splits

    root = str(tmp_path / "viv")
    build_dataset("viviano-synthetic", root, limit=160, progress=False)
    train = load_splits(root, ("train",), limit=160)["train"]
    norm = Normalization.estimate(train.images[:512])
    torch.manual_seed(0)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        from reldrop.models import build_model

        model = build_model("small-cnn", in_channels=1, num_classes=2)
        cfg = TrainConfig(regularizer=method, batch_size=32)
        opt = make_optimizer(cfg.optimizer, model.parameters(), lr=cfg.lr)
        reg = make_regularizer(method, bounds=norm.bounds(), **cfg.regularizer_params())
        guard = nonfinite_guard(cfg, Counter)
        for step in range(10):
            idx = torch.arange(step * 32, step * 32 + 32) % len(train)
            x = norm.to_model(train.images[idx])
            out = train_step(model, opt, reg, x, train.labels[idx], train.masks[idx],
                             placeholder=x[:1], guard=guard.at(epoch=0, step=step + 1))
            assert out.stepped and out.loss_sum == out.loss_sum  # finite: the guard would raise
    finally:
        torch.set_num_threads(threads)
