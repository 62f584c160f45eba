"""Stale relevance in one process: an explainer replica that lags the trainer the way the
async pipeline's does, so a staleness study costs seconds per run instead of a Ray job.

In the pipeline a row is explained with the newest weights the explainer has, and it reaches
the trainer some steps later. :class:`WeightLag` reproduces that with two numbers:

- ``publish_every`` (the pipeline's ``--sync-every``): the trainer publishes its weights after
  every ``publish_every``-th step, so the replica only ever holds versions 0, s, 2s, ...;
- ``delay``: the steps between explaining a row and training on it (the rows the gate lets the
  explainers run ahead).

The batch the trainer takes at step ``t`` was explained at step ``t - delay`` with the newest
version published by then, ``floor((t - delay) / s) * s``, so its staleness cycles through
``delay .. delay + s - 1``. A study sets ``delay = bound - s + 1``: every row as stale as a
staleness bound of ``bound`` lets it be (the pipeline's gate keeps the explainers as far ahead
as it admits, so this is the case it runs in, not a best case). Draws stay keyed by
(seed, epoch, key), so a lagged run differs from the in-loop (sync) run only in the weights
that explained each batch.
"""

from __future__ import annotations

import copy

import torch
from torch import nn

__all__ = ["WeightLag", "delay_for_bound"]


def delay_for_bound(bound: int, publish_every: int) -> int:
    """The explain-ahead delay that makes ``bound`` the largest staleness with this interval."""
    if publish_every < 1 or bound < publish_every - 1:
        raise ValueError(f"max staleness {bound} with publish interval {publish_every}: expected "
                         "bound >= interval - 1 (a row can be as old as one interval)")
    return bound - publish_every + 1


class WeightLag:
    """A replica of ``model`` that holds the weights the async pipeline would explain with."""

    def __init__(self, model: nn.Module, *, delay: int, publish_every: int) -> None:
        if delay < 0 or publish_every < 1:
            raise ValueError(f"delay={delay}, publish_every={publish_every}: expected delay >= 0 "
                             "and publish_every >= 1")
        self.model = model
        self.replica = copy.deepcopy(model)
        self.delay = delay
        self.publish_every = publish_every
        self._versions: dict[int, dict[str, torch.Tensor]] = {}
        self._loaded = -1
        self.staleness: list[int] = []

    def version_for(self, step: int) -> int:
        """The published version that explained the batch trained at ``step``."""
        explained_at = max(0, step - self.delay)
        return explained_at // self.publish_every * self.publish_every

    def at(self, step: int) -> nn.Module:
        """The replica with the weights for ``step``; call once per step, before its update."""
        if step % self.publish_every == 0:  # the trainer publishes its current weights
            self._versions[step] = {k: v.detach().clone() for k, v in self.model.state_dict().items()}
        version = self.version_for(step)
        if version != self._loaded:
            self.replica.load_state_dict(self._versions[version])
            self._loaded = version
        for old in [v for v in self._versions if v < version]:
            del self._versions[old]
        self.staleness.append(step - version)
        return self.replica
