"""Command-line flags generated from a configuration dataclass's fields.

Each field declares its flag through ``FieldOption`` metadata (see
:mod:`reldrop.pipeline.fields`); defaults, types and choices come from the field, so a
job never keeps a second list of them. Aliases are extra option strings of the same flag (and
so extra config-file keys).
"""

from __future__ import annotations

import argparse
import types
import typing
from dataclasses import MISSING, fields
from typing import Any

from reldrop.jobs._args import CheckedNumber, LazyChoices

__all__ = ["add_config_flags"]


def _scalar_type(annotation: Any) -> type | None:
    """``int | None`` -> int; ``str`` -> str; ``bool`` -> bool."""
    args = [a for a in typing.get_args(annotation) if a is not type(None)]
    if isinstance(annotation, types.UnionType) or typing.get_origin(annotation) is typing.Union:
        return args[0] if len(args) == 1 else None
    return annotation if isinstance(annotation, type) else None


def add_config_flags(parser: argparse.ArgumentParser, cls: type) -> None:
    """Add one flag per field of dataclass ``cls`` that has a ``FieldOption``, grouped by
    section: default, type and choices from the field; a field without a default is a required
    flag; a registry's names are checked when given (:class:`LazyChoices`), not listed."""
    hints = typing.get_type_hints(cls)
    groups: dict[str, Any] = {}
    for f in fields(cls):
        opt = f.metadata.get("option")
        if opt is None or not opt.cli:
            continue
        group = groups.get(opt.section) or parser.add_argument_group(opt.section)
        groups[opt.section] = group
        names = [f"--{opt.flag or f.name.replace('_', '-')}", *(f"--{a}" for a in opt.aliases)]
        required = f.default is MISSING and f.default_factory is MISSING
        default = None if f.default is MISSING else f.default
        kind = _scalar_type(hints[f.name])
        if kind is bool:
            group.add_argument(*names, dest=f.name, default=default, help=opt.help,
                               action=argparse.BooleanOptionalAction)
            continue
        choices: Any = None
        metavar: str | None = f.name.upper()
        text = opt.help
        if opt.choices is not None and opt.registry:
            choices, text = LazyChoices(opt.choices), f"{text} (a registered name; a wrong one lists them)"
        elif opt.choices is not None:
            choices, metavar = list(opt.choices()), None
        convert: Any = opt.parse or (None if kind is str else kind)  # argparse keeps strings
        if opt.minimum is not None and kind in (int, float):
            convert = CheckedNumber(kind, opt.minimum)
        group.add_argument(*names, dest=f.name, default=default, help=text, choices=choices,
                           type=convert, metavar=metavar, required=required)
