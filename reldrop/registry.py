"""One registry shape for every extension point (composites, canonizers, models, strategies,
fills, regularizers, datasets): name -> entry, filled by ``register`` (a decorator) or ``add``,
read with ``get`` (one error naming the known names) or as a read-only mapping."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from typing import Generic, TypeVar

__all__ = ["Registry"]

T = TypeVar("T")


class Registry(Mapping[str, T], Generic[T]):
    """Named entries of one ``kind`` (the word errors use: ``composite``, ``model``, ...)."""

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._entries: dict[str, T] = {}

    def add(self, name: str, entry: T) -> T:
        if not isinstance(name, str) or not name:
            raise ValueError(f"{self.kind} name {name!r}; expected a non-empty string")
        if name in self._entries:
            raise ValueError(f"{self.kind} {name!r} is already registered")
        self._entries[name] = entry
        return entry

    def register(self, name: str) -> Callable[[T], T]:
        """Decorator: ``@REGISTRY.register("name")``."""

        def wrap(entry: T) -> T:
            return self.add(name, entry)

        return wrap

    def get(self, name: str, default: T | None = None) -> T:  # type: ignore[override]
        """The entry ``name``; an unknown name is a ``ValueError`` listing the known ones."""
        if name in self._entries:
            return self._entries[name]
        if default is not None:
            return default
        raise ValueError(f"{self.kind}={name!r} is unknown; known: {self.names()}")

    def names(self) -> list[str]:
        return sorted(self._entries)

    def __getitem__(self, name: str) -> T:
        return self._entries[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self._entries)

    def __len__(self) -> int:
        return len(self._entries)

    def __repr__(self) -> str:
        return f"Registry({self.kind!r}, {self.names()})"
