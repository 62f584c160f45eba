"""No silent divergence: a non-finite loss or gradient stops the run at that step, or (by
policy) the step is skipped and counted.

Without this, a diverged run trained on for epochs with NaN weights and failed far from the
cause (GradMask with defaults on ``viviano-synthetic``: loss 67 -> 72,479 by step 4, NaN by
step 8). The check costs one gradient-norm reduction per step; under DDP the ranks agree on it
(one all-reduce of a flag), so every rank skips or stops at the same step.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

__all__ = ["NonFiniteError", "NonFiniteGuard", "nonfinite_guard"]


class NonFiniteError(ValueError):
    """A training step produced a non-finite loss or gradient (the run diverged)."""


def _any_rank(bad: bool, device: torch.device) -> bool:
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return bad
    flag = torch.tensor([int(bad)], dtype=torch.int64, device=device)
    dist.all_reduce(flag, op=dist.ReduceOp.MAX)
    return bool(flag.item())


def _own_counter() -> Callable[[], Counter[str]]:
    counter: Counter[str] = Counter()
    return lambda: counter


@dataclass
class NonFiniteGuard:
    """Judge each step: ``policy`` ``"stop"`` raises :class:`NonFiniteError` (one line naming
    the method, its weight, the learning rate, the step and the fix), ``"skip"`` drops the
    step's update and counts it in ``counts["nonfinite_skipped"]``."""

    policy: str
    method: str
    lam: float | None
    lr: float
    #: where skips are counted: a callable returning the counter (the trainer's accounting
    #: replaces its counter on resume)
    counts: Callable[[], Counter[str]] = field(default_factory=lambda: _own_counter())
    epoch: int = 0  # where the trainer is (for the message), set before each step
    step: int = 0

    def __post_init__(self) -> None:
        if self.policy not in ("stop", "skip"):
            raise ValueError(f"on_nonfinite={self.policy!r}; expected 'stop' or 'skip'")

    def at(self, *, epoch: int, step: int) -> NonFiniteGuard:
        self.epoch, self.step = epoch, step
        return self

    def allows(self, loss: float, model: nn.Module, device: torch.device) -> bool:
        """After ``backward``: True to take the step; False to skip it (gradients cleared)."""
        grads = [p.grad.detach() for p in model.parameters() if p.grad is not None]
        norm = float(torch.linalg.vector_norm(torch.stack(
            [torch.linalg.vector_norm(g.float()) for g in grads]))) if grads else 0.0
        what = None if math.isfinite(loss) else f"loss {loss}"
        if what is None and not math.isfinite(norm):
            what = f"gradient norm {norm}"
        if not _any_rank(what is not None, device):
            return True
        if self.policy == "skip":
            self.counts()["nonfinite_skipped"] += 1
            model.zero_grad(set_to_none=True)
            return False
        lam = "" if self.lam is None else f", lambda {self.lam:g}"
        raise NonFiniteError(
            f"non-finite {what or 'value on another rank'} at epoch {self.epoch + 1} step "
            f"{self.step}: method {self.method}{lam}, lr {self.lr:g}; the run diverged: "
            "lower --lr or --lambda, set --clip-grad-norm, or pass --on-nonfinite skip"
        )


def nonfinite_guard(cfg: Any, counts: Callable[[], Counter[str]]) -> NonFiniteGuard:
    """The guard of a run configured by ``cfg`` (a ``TrainConfig``), counting into ``counts()``."""
    from reldrop.regularizers import REGULARIZERS

    method = cfg.regularizer if cfg.regularizer != "none" else f"{cfg.augment} ({cfg.mode})"
    lam = None
    if cfg.regularizer != "none":
        lam = cfg.reg_lambda if cfg.reg_lambda is not None else REGULARIZERS[
            cfg.regularizer].default_lambda
    return NonFiniteGuard(policy=cfg.on_nonfinite, method=method, lam=lam, lr=cfg.lr,
                          counts=counts)
