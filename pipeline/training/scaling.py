"""Resources per role (trainer workers, explainer actors, read tasks), chosen for the cluster.

Pure arithmetic on the config and the cluster's totals, so every rule is unit-tested without
Ray. The rules, from what was measured:

- Read tasks take 0.25 CPU: at the default 1 CPU a read can starve the explainer actors once Ray
  Train has taken its CPUs, and nothing ever runs.
- On CPU, explainers share what the trainers and reads leave (0.25 to 2 CPUs each).
- Training on GPU, explainers run on GPUs too (CPU explainers cannot keep up with a GPU
  trainer). Where the cluster has GPUs beyond the trainers', trainers take one each and the
  explainers share the rest; on a one-GPU node (or fewer GPUs than trainers + 1) trainers take
  half a GPU each and the explainers share the other halves.
- ``--explainers auto``: an autoscaling actor pool from 1 up to ``explainers_max`` (default:
  as many as the free CPUs, or GPUs, allow).
"""

from __future__ import annotations

import math
import warnings
from dataclasses import asdict, dataclass
from typing import Any

from reldrop.pipeline.training.config import TrainConfig

__all__ = ["READ_CPUS", "Resources", "plan_resources"]

READ_CPUS = 0.25


@dataclass(frozen=True, kw_only=True)
class Resources:
    """What each role asks Ray for."""

    trainer_cpus: float
    trainer_gpus: float
    explainer_cpus: float
    explainer_gpus: float
    explainers_min: int
    explainers_max: int
    read_cpus: float = READ_CPUS
    cluster_cpus: float = 0.0
    cluster_gpus: float = 0.0

    @property
    def autoscaling(self) -> bool:
        return self.explainers_min != self.explainers_max

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def _trainer_gpus(cfg: TrainConfig, gpus: float) -> float:
    if not cfg.use_gpu:
        return 0.0
    if cfg.trainer_gpus is not None:
        return cfg.trainer_gpus
    sharing = cfg.needs_explainer and cfg.explainer_gpus != 0 and 0 < gpus < cfg.trainers + 1
    return 0.5 if sharing else 1.0


def _explainer_gpus(cfg: TrainConfig, gpus: float, trainer_gpus: float, count: int) -> float:
    if cfg.explainer_gpus is not None:
        return cfg.explainer_gpus
    if not (cfg.use_gpu and cfg.needs_explainer):
        return 0.0
    free = gpus - cfg.trainers * trainer_gpus
    if free <= 0:  # an autoscaling cluster shows no GPUs yet: dedicated explainer GPUs
        return 1.0
    return min(1.0, free / count)


def _explainer_count(cfg: TrainConfig, cpus_left: float, gpus_free: float) -> tuple[int, int]:
    if cfg.explainers != "auto":
        count = int(cfg.explainers or cfg.trainers)  # default: one per trainer
        return count, count
    if cfg.explainers_max is not None:
        return 1, cfg.explainers_max
    by_cpu = max(1, math.floor(cpus_left / max(cfg.explainer_cpus or 1.0, 0.25)))
    if cfg.use_gpu and gpus_free > 0:
        return 1, max(1, min(by_cpu, math.floor(gpus_free / 0.25)))
    return 1, by_cpu


def plan_resources(cfg: TrainConfig, *, cluster_cpus: float, cluster_gpus: float) -> Resources:
    """Resources for ``cfg`` on a cluster with these totals (see the module docstring)."""
    trainer_gpus = _trainer_gpus(cfg, cluster_gpus)
    cpus_left = cluster_cpus - cfg.trainers * cfg.trainer_cpus - READ_CPUS
    gpus_free = cluster_gpus - cfg.trainers * trainer_gpus
    low, high = _explainer_count(cfg, cpus_left, gpus_free)
    explainer_gpus = _explainer_gpus(cfg, cluster_gpus, trainer_gpus, high)
    if cfg.explainer_cpus is not None:
        explainer_cpus = cfg.explainer_cpus
    elif explainer_gpus > 0:  # the GPU does the work; one CPU feeds it
        explainer_cpus = max(0.25, min(1.0, cpus_left / high))
    else:
        explainer_cpus = max(0.25, min(2.0, cpus_left / high))
    if cfg.use_gpu and cfg.needs_explainer and explainer_gpus == 0:
        warnings.warn("explainers on CPU feeding a GPU trainer will be the bottleneck; "
                      "leave --explainer-gpus unset to put them on GPUs", stacklevel=2)
    return Resources(
        trainer_cpus=cfg.trainer_cpus, trainer_gpus=trainer_gpus, explainer_cpus=explainer_cpus,
        explainer_gpus=explainer_gpus, explainers_min=low, explainers_max=high,
        cluster_cpus=cluster_cpus, cluster_gpus=cluster_gpus,
    )
