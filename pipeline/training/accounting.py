"""Per-batch bookkeeping of a trainer worker: what was kept, skipped, stale, occluded.

Plain numpy, no Ray: the trainer loop calls :meth:`BatchAccounting.account` on every batch it
receives, and the result says which rows to train on and which to re-explain. Staleness of a row
is the trainer's step (the weights version it trains) minus the ``model_version`` that explained
it; ``-1`` marks rows no model explained (baselines, precomputed relevance, skipped rows).
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import numpy as np

__all__ = ["MAX_REASONS", "BatchAccounting", "RowPlan", "apply_stale_policy"]

#: skip reasons kept verbatim per worker (the counts cover all of them)
MAX_REASONS = 50


@dataclass(frozen=True)
class RowPlan:
    """What to do with the rows of one batch."""

    keep: np.ndarray  # bool: train on these rows
    reexplain: np.ndarray  # bool: recompute their drop mask on the live model first


def apply_stale_policy(
    version: np.ndarray, keep: np.ndarray, step: int, *, max_staleness: int, policy: str
) -> tuple[RowPlan, int]:
    """Rows explained by weights older than ``max_staleness`` steps under ``policy``:
    ``pass`` trains on them as they are, ``drop`` leaves them out, ``re-explain`` recomputes
    their mask on the live model. Returns the plan and how many rows were too stale."""
    explained = keep & (version >= 0)
    too_stale = explained & (step - version > max_staleness)
    if policy == "pass":
        return RowPlan(keep, np.zeros_like(keep)), int(too_stale.sum())
    if policy == "drop":
        return RowPlan(keep & ~too_stale, np.zeros_like(keep)), int(too_stale.sum())
    if policy == "re-explain":
        return RowPlan(keep, too_stale), int(too_stale.sum())
    raise ValueError(f"stale_policy={policy!r}; expected pass, drop or re-explain")


@dataclass
class BatchAccounting:
    """Cumulative counts of one worker; see the module docstring."""

    max_staleness: int
    stale_policy: str = "pass"
    record_keys: bool = False
    counts: Counter[str] = field(default_factory=Counter)
    staleness: Counter[int] = field(default_factory=Counter)
    versions: set[int] = field(default_factory=set)
    reasons: list[str] = field(default_factory=list)
    keys: list[list[str]] = field(default_factory=list)
    #: shards left out while streaming (failed verification): url -> {"reason", "rows"}
    shards: dict[str, dict[str, Any]] = field(default_factory=dict)

    def start_epoch(self) -> None:
        self.keys.append([])

    def account(self, batch: dict[str, Any], step: int) -> RowPlan:
        """Count ``batch`` (rows, skips, staleness, occlusion) and plan its rows."""
        n = len(batch["label"])
        self.counts["rows"] += n
        if self.record_keys:
            if not self.keys:
                self.start_epoch()
            self.keys[-1].extend(str(k) for k in batch["key"])
        keep = ~np.asarray(batch["skipped"], dtype=bool)
        self._skipped(np.asarray(batch["reason"])[~keep])
        self.counts["skipped"] += int((~keep).sum())
        plan = RowPlan(keep, np.zeros(n, dtype=bool))
        if "model_version" in batch:
            plan = self._staleness(np.asarray(batch["model_version"]), keep, step)
        if "dropped" in batch:
            dropped = np.asarray(batch["dropped"]).reshape(n, -1).any(axis=1)
            self.counts["occluded"] += int((plan.keep & dropped).sum())
        if "fallback" in batch:
            self.counts["fallback"] += int(np.asarray(batch["fallback"])[plan.keep].sum())
        return plan

    def _skipped(self, reasons: np.ndarray) -> None:
        """Keep the first reasons verbatim; a whole shard left out is listed once per URL."""
        from reldrop.pipeline.data.read import shard_skip

        for reason in (str(r) for r in reasons):
            url = shard_skip(reason)
            if url is not None:
                entry = self.shards.setdefault(url, {"url": url, "reason": reason, "rows": 0})
                entry["rows"] += 1
                continue
            if len(self.reasons) < MAX_REASONS:
                self.reasons.append(reason)

    def _staleness(self, version: np.ndarray, keep: np.ndarray, step: int) -> RowPlan:
        explained = keep & (version >= 0)
        self.versions.update(int(v) for v in np.unique(version[keep]))  # -1: no model explained
        self.staleness.update(int(s) for s in (step - version)[explained])
        plan, stale = apply_stale_policy(
            version, keep, step, max_staleness=self.max_staleness, policy=self.stale_policy
        )
        self.counts["stale"] += stale
        if self.stale_policy == "drop":
            self.counts["stale_dropped"] += stale
        elif self.stale_policy == "re-explain":
            self.counts["stale_reexplained"] += stale
        return plan
