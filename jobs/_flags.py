"""Command-line flags generated from a configuration dataclass's fields.

Each field declares its flag through ``FieldOption`` metadata (see
:mod:`reldrop.pipeline.training.config`); defaults, types and choices come from the field, so a
job never keeps a second list of them. Aliases are extra option strings of the same flag (and
so extra config-file keys).
"""

from __future__ import annotations

import argparse
import types
import typing
from dataclasses import MISSING, fields
from typing import Any

__all__ = ["add_config_flags"]


def _scalar_type(annotation: Any) -> type | None:
    """``int | None`` -> int; ``str`` -> str; ``bool`` -> bool."""
    args = [a for a in typing.get_args(annotation) if a is not type(None)]
    if isinstance(annotation, types.UnionType) or typing.get_origin(annotation) is typing.Union:
        return args[0] if len(args) == 1 else None
    return annotation if isinstance(annotation, type) else None


def add_config_flags(parser: argparse.ArgumentParser, cls: type) -> None:
    """Add one flag per field of dataclass ``cls`` that has a ``FieldOption``, grouped by section."""
    hints = typing.get_type_hints(cls)
    groups: dict[str, Any] = {}
    for f in fields(cls):
        opt = f.metadata.get("option")
        if opt is None or not opt.cli:
            continue
        group = groups.get(opt.section) or parser.add_argument_group(opt.section)
        groups[opt.section] = group
        names = [f"--{opt.flag or f.name.replace('_', '-')}", *(f"--{a}" for a in opt.aliases)]
        default = f.default if f.default is not MISSING else None
        kind = _scalar_type(hints[f.name])
        if kind is bool:
            group.add_argument(*names, dest=f.name, default=default, help=opt.help,
                               action=argparse.BooleanOptionalAction)
            continue
        choices = list(opt.choices()) if opt.choices else None
        convert: Any = opt.parse or kind
        group.add_argument(*names, dest=f.name, default=default, help=opt.help, choices=choices,
                           type=convert, metavar=None if choices else f.name.upper())
