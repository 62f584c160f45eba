"""One optimisation step that every DDP rank takes together.

Rows can be skipped (bad samples) or dropped (too stale), so ranks can hold different numbers of
rows in a step, some none at all. Ranks must still run the same collectives in the same order,
or DDP averages gradients of different steps and then deadlocks. So every rank agrees on the
step's global row count (one all-reduce), a rank without rows takes a zero-weight step (forward
on a placeholder row in eval mode so BatchNorm statistics stay untouched, loss times 0), and each
rank's loss is weighted by its share of the global rows, so DDP's gradient average is the mean
over all kept rows. When no rank has a row, no rank steps.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from reldrop.pipeline.training.nonfinite import NonFiniteGuard
from reldrop.regularizers import Regularizer

__all__ = ["StepOutcome", "global_rows", "train_step"]


@dataclass(frozen=True)
class StepOutcome:
    """What one step did on this rank."""

    stepped: bool  # False: no rank had a row, the optimiser did not step
    loss_sum: float  # loss summed over this rank's rows (0.0 without rows)
    correct: int  # rows whose prediction matched the label
    rows: int  # rows this rank trained on


def global_rows(rows: int, device: torch.device) -> int:
    """Rows kept on all ranks together (``rows`` itself without a process group)."""
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return rows
    total = torch.tensor([rows], dtype=torch.int64, device=device)
    dist.all_reduce(total)
    return int(total.item())


def _world() -> int:
    import torch.distributed as dist

    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def train_step(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    regularizer: Regularizer,
    x: torch.Tensor,
    y: torch.Tensor,
    masks: torch.Tensor | None,
    *,
    placeholder: torch.Tensor,
    guard: NonFiniteGuard | None = None,
) -> StepOutcome:
    """Train on ``x, y`` (possibly empty); see the module docstring. ``placeholder`` is one
    input row of the right shape for a zero-weight step. ``guard`` judges a non-finite loss
    or gradient before the update (stop the run, or skip this step: ``stepped`` False).
    Gradients are clipped as the regularizer says
    (:meth:`~reldrop.regularizers.Regularizer.clip_gradients`)."""
    rows = int(y.shape[0])
    total = global_rows(rows, x.device if rows else placeholder.device)
    if total == 0:
        return StepOutcome(False, 0.0, 0, 0)
    optimizer.zero_grad(set_to_none=True)
    if rows:
        out = regularizer(model, x, y, masks)
        (out.loss * (rows * _world() / total)).backward()
        loss_sum = float(out.loss.detach()) * rows
        correct = int((out.logits.detach().argmax(1) == y).sum())
    else:
        model.eval()
        try:
            logits = model(placeholder)
            (logits.float().sum() * 0.0).backward()
        finally:
            model.train()
        loss_sum, correct = 0.0, 0
    if guard is not None and not guard.allows(loss_sum, model, placeholder.device):
        return StepOutcome(False, 0.0, 0, 0)
    regularizer.clip_gradients(model)
    optimizer.step()
    return StepOutcome(True, loss_sum, correct, rows)
