"""What happens to bad data: the one on-error policy type, shard errors, the skip report.

Every reader, job and configuration spells the policy the same way: :data:`OnError`
(``"raise"``: one error naming the shard URL and sample key; ``"skip"``: leave the sample or
shard out, count it and log it), checked once by :func:`check_on_error`.
"""

from __future__ import annotations

import logging
from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Literal, cast

__all__ = [
    "ON_ERROR",
    "OnError",
    "ShardError",
    "SkipReport",
    "Skipped",
    "check_on_error",
]

log = logging.getLogger(__name__)

#: what to do with a bad sample or shard
OnError = Literal["raise", "skip"]
#: the allowed :data:`OnError` values (flag choices, config validation)
ON_ERROR: tuple[OnError, ...] = ("raise", "skip")


def check_on_error(value: object) -> OnError:
    """``value`` if it is an :data:`OnError`, else ``ValueError`` naming it and the choices."""
    if value not in ON_ERROR:
        raise ValueError(f"on_error={value!r}; allowed: {list(ON_ERROR)}")
    return cast(OnError, value)


class ShardError(ValueError):
    """A shard that cannot be read (truncated, corrupt, missing, bad members, wrong count);
    rendered as ``shard '<url>': <problem>``."""

    def __init__(self, url: str, problem: str) -> None:
        super().__init__(f"shard {url!r}: {problem}")
        self.url = url
        self.problem = problem

    def __reduce__(self) -> tuple[Any, tuple[str, str]]:  # travels back from Ray tasks
        return type(self), (self.url, self.problem)


@dataclass(frozen=True, kw_only=True)
class Skipped:
    """One skipped sample (``key`` set) or a whole shard (``key`` None)."""

    url: str
    key: str | None
    reason: str


@dataclass
class SkipReport:
    """Everything a reader skipped under ``on_error="skip"``; nothing is silent."""

    items: list[Skipped] = field(default_factory=list)

    def add(self, url: str, key: str | None, reason: str) -> None:
        self.items.append(Skipped(url=url, key=key, reason=reason))
        log.warning("skipped %s in shard %s: %s", key or "whole shard", url, reason)

    @property
    def samples(self) -> int:
        """Number of individually skipped samples."""
        return sum(1 for item in self.items if item.key is not None)

    @property
    def shards(self) -> int:
        """Number of shards left out because they could not be read."""
        return sum(1 for item in self.items if item.key is None)

    def __len__(self) -> int:
        return len(self.items)

    def summary(self) -> str:
        kinds = Counter(item.reason.split(":")[0] for item in self.items)
        return (
            f"skipped {self.samples} sample(s) and {self.shards} shard(s)"
            + ("" if not kinds else f" ({dict(kinds)})")
        )
