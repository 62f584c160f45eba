"""Configuration fields that carry their command-line flag: one source for defaults and help.

A job's configuration is a frozen dataclass; each field declares its flag with :func:`option`
(help, section, aliases, choices, a parser for custom types). ``reldrop.jobs`` generates every
job's flags from these fields, so a default lives in one place and the help, config files and
run reports agree. A field without a default is a required flag.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import MISSING, dataclass, field
from importlib import import_module
from typing import Any

__all__ = ["FieldOption", "option", "registry_names"]


@dataclass(frozen=True)
class FieldOption:
    """Command-line metadata of one config field."""

    section: str
    help: str
    flag: str | None = None  # default: --field-name
    aliases: tuple[str, ...] = ()  # older or synonymous spellings (config keys too)
    choices: Callable[[], Sequence[str]] | None = None  # evaluated lazily: registries fill late
    registry: bool = False  # choices are a registry's names: listing them imports torch
    parse: Callable[[str], Any] | None = None  # string -> value for custom types
    minimum: float | None = None  # numbers: checked when parsed (flag or config file)
    cli: bool = True  # False: settable from Python only


def option(default: Any, section: str, help: str, **kw: Any) -> Any:  # noqa: A002 - argparse's word
    """A dataclass field with its :class:`FieldOption` in ``metadata["option"]``;
    ``default=dataclasses.MISSING`` makes a required field (and flag)."""
    metadata = {"option": FieldOption(section, help, **kw)}
    if default is MISSING:
        return field(metadata=metadata)
    return field(default=default, metadata=metadata)


def registry_names(module: str, name: str) -> Callable[[], list[str]]:
    """The sorted names of registry ``module.name``, imported only when asked (torch)."""
    return lambda: sorted(getattr(import_module(module), name))
