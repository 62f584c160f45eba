"""Shared argument handling for every job: ``--config FILE`` (YAML or TOML) plus flag overrides.

A config file is a flat mapping whose keys are the job's long flag names (``batch-size`` or
``batch_size``; ``lambda`` for ``--lambda``). Its values become the parser's defaults, so any flag
given on the command line wins. Unknown keys, values of the wrong type and values outside a
flag's ``choices`` are errors that name the key; nothing is coerced silently (``epochs = 2.5``
is an error, not ``2``). Files are capped at 1 MiB; YAML duplicate keys and aliases (``*name``,
the "billion laughs" expansion) are refused rather than silently resolved.

Every job's parser reports a bad flag as one line, ``reldrop <job>: <problem>; see reldrop <job>
--help``, exits 2, and takes ``--debug`` (full tracebacks, see :mod:`reldrop.jobs.cli`).
Numeric flags use the checked types here (:func:`positive_int`, :func:`finite_nonneg_float`, ...),
which reject ``0``, ``-1``, ``inf`` and ``nan`` where they make no sense, before any work starts.
"""

from __future__ import annotations

import argparse
import copy
import math
import tomllib
from collections.abc import Callable, Hashable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NoReturn

import yaml

from reldrop.pipeline.data.storage import parse_storage_options

__all__ = [
    "MAX_CONFIG_BYTES",
    "add_trust_flags",
    "CheckedNumber",
    "LazyChoices",
    "finite_float",
    "finite_nonneg_float",
    "load_config_file",
    "name_list",
    "new_parser",
    "nonneg_int",
    "parse_with_config",
    "positive_float",
    "positive_int",
]

#: Largest config file read (a flat mapping of flags is a few KiB).
MAX_CONFIG_BYTES = 1 << 20

_SKIPPED = (argparse._HelpAction, argparse._VersionAction)
_FLAG_ACTIONS = (
    argparse._StoreTrueAction,
    argparse._StoreFalseAction,
    argparse._StoreConstAction,
    argparse._AppendConstAction,
)


@dataclass(frozen=True)
class CheckedNumber:
    """An argparse ``type`` for a finite number with a lower bound (also checks config values).

    Accepts the command line's string or a config file's number (never a bool); raises
    ``argparse.ArgumentTypeError`` naming what was expected, so argparse prints one line.
    """

    kind: type[int] | type[float]
    minimum: float | None = None
    strict: bool = False  # minimum excluded

    @property
    def __name__(self) -> str:
        bound = "" if self.minimum is None else f" {'>' if self.strict else '>='} {self.minimum:g}"
        return f"{'an integer' if self.kind is int else 'a finite number'}{bound}"

    def __call__(self, value: str | float) -> int | float:
        expected = f"expected {self.__name__}; got {value!r}"
        if isinstance(value, bool):
            raise argparse.ArgumentTypeError(expected)
        try:
            number = self.kind(value) if isinstance(value, str) or self.kind is float else value
        except ValueError:
            raise argparse.ArgumentTypeError(expected) from None
        if not isinstance(number, self.kind) or not math.isfinite(number):
            raise argparse.ArgumentTypeError(expected)
        low = self.minimum
        if low is not None and (number < low or (self.strict and number == low)):
            raise argparse.ArgumentTypeError(expected)
        return number


positive_int = CheckedNumber(int, 1)
nonneg_int = CheckedNumber(int, 0)
finite_float = CheckedNumber(float)
finite_nonneg_float = CheckedNumber(float, 0)
positive_float = CheckedNumber(float, 0, strict=True)


class LazyChoices:
    """Choices computed on first use: a registry's names (``reldrop.occlusion`` and the like
    import torch), so that building a parser and ``--help`` stay fast; a given value is checked
    against them when the flag is parsed."""

    def __init__(self, names: Callable[[], Sequence[str]]) -> None:
        self._names = names
        self._cached: list[str] | None = None

    def _list(self) -> list[str]:
        if self._cached is None:
            self._cached = list(self._names())
        return self._cached

    def __contains__(self, value: object) -> bool:
        return value in self._list()

    def __iter__(self) -> Iterator[str]:
        return iter(self._list())

    def __len__(self) -> int:
        return len(self._list())


class _HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Each flag's default once: appended only where the help does not already speak of its
    default, never for required flags or an unset (``None``) default."""

    def _expand_help(self, action: argparse.Action) -> str:
        if isinstance(action.choices, LazyChoices):  # listing them would import torch
            action = copy.copy(action)
            action.choices = None
        return super()._expand_help(action)

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        if (action.required or "default" in text.lower() or action.default is None
                or action.default is argparse.SUPPRESS or action.default is False
                or not action.option_strings):
            return text
        return text + " (default: %(default)s)"


class _JobParser(argparse.ArgumentParser):
    """An ``ArgumentParser`` whose errors are one line: ``PROG: problem; see PROG --help``."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: {message}; see {self.prog} --help\n")


def new_parser(prog: str, description: str) -> argparse.ArgumentParser:
    """An argument parser that understands ``--config FILE`` and ``--debug``."""
    parser = _JobParser(
        prog=prog,
        description=description,
        formatter_class=_HelpFormatter,
    )
    parser.add_argument(
        "--config",
        type=Path,
        default=None,
        help="YAML or TOML file whose keys are this job's flag names; flags given on the "
        "command line override it",
    )
    parser.add_argument(
        "--debug",
        action="store_true",
        help="on an error, print the full traceback as well as the one-line summary",
    )
    parser.add_argument(
        "--storage-options", type=parse_storage_options, default=None,
        help="JSON object of object-storage settings over the AWS environment's: endpoint_url, "
        "region, anon, attempts, extra (per-protocol options), and fsspec's own storage "
        "options as they are (client_kwargs, config_kwargs, requester_pays, ...); never "
        "credentials",
    )
    return parser


def add_trust_flags(parser: argparse.ArgumentParser, *, model_flag: bool) -> None:
    """``--trust-model-code`` (and, with ``model_flag``, ``--model``) for a job that loads a
    model a file names: a checkpoint, config file or report naming an import-path model
    (``package.module:factory``) is refused unless the user names it with ``--model`` or passes
    ``--trust-model-code`` (:func:`reldrop.models.check_model_trust`)."""
    if model_flag:
        parser.add_argument(
            "--model", default=None,
            help="the model the checkpoint must hold; naming an import-path model "
            "(package.module:factory) here allows the checkpoint to import it",
        )
    parser.add_argument(
        "--trust-model-code", action="store_true",
        help="allow files (checkpoints, config files) to name import-path models "
        "(package.module:factory), which imports and runs that code",
    )


def _check_file_model(defaults: dict[str, Any], pre: argparse.Namespace) -> None:
    """A config file may not name an import-path model unless the command line does too;
    nothing is imported before this check."""
    from reldrop.models import check_model_trust

    name = defaults.get("model")
    if isinstance(name, str):
        check_model_trust(name, source="key 'model'", named=getattr(pre, "model", None),
                          trusted=bool(getattr(pre, "trust_model_code", False)))


class _ConfigLoader(yaml.SafeLoader):
    """``yaml.SafeLoader`` without aliases and with duplicate keys as errors.

    A flat config needs neither; aliases let a few lines expand exponentially ("billion
    laughs"), and a repeated key would silently keep only its last value.
    """

    def compose_node(self, parent: Any, index: Any) -> Any:
        if self.check_event(yaml.AliasEvent):
            event = self.peek_event()
            raise yaml.composer.ComposerError(
                None, None,
                f"alias *{event.anchor} is not allowed in a config file; write the value out",
                event.start_mark,
            )
        return super().compose_node(parent, index)

    def construct_mapping(self, node: Any, deep: bool = False) -> Any:
        seen: set[Any] = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=True)
            if isinstance(key, Hashable):
                if key in seen:
                    raise yaml.constructor.ConstructorError(
                        None, None, f"duplicate key {key!r}", key_node.start_mark
                    )
                seen.add(key)
        return super().construct_mapping(node, deep=deep)


def load_config_file(path: Path) -> dict[str, Any]:
    """Read a YAML (``.yaml``/``.yml``) or TOML (``.toml``) mapping of flag names to values."""
    if not path.is_file():
        raise ValueError(f"--config: file {str(path)!r} does not exist")
    size = path.stat().st_size
    if size > MAX_CONFIG_BYTES:
        raise ValueError(
            f"--config: {str(path)!r} is {size} bytes; a config file may hold at most "
            f"{MAX_CONFIG_BYTES} (a flat mapping of flag names)"
        )
    suffix = path.suffix.lower()
    try:
        text = path.read_text(encoding="utf-8")
        if suffix == ".toml":
            data: Any = tomllib.loads(text)
        elif suffix in (".yaml", ".yml"):
            data = yaml.load(text, Loader=_ConfigLoader)  # noqa: S506 (a SafeLoader subclass)
            data = {} if data is None else data
        else:
            raise ValueError(
                f"--config: {str(path)!r} has suffix {suffix!r}; expected .yaml, .yml or .toml"
            )
    except (tomllib.TOMLDecodeError, yaml.YAMLError, UnicodeDecodeError) as err:
        problem = " ".join(str(err).split())
        raise ValueError(
            f"--config: {str(path)!r} is not valid {suffix[1:].upper()}: {problem}"
        ) from err
    if not isinstance(data, dict):
        raise ValueError(
            f"--config: {str(path)!r} must hold a mapping of flag names to values; "
            f"got {type(data).__name__}"
        )
    return data


def _flag_table(parser: argparse.ArgumentParser) -> dict[str, tuple[argparse.Action, str]]:
    """Accepted config key (long flag without dashes, ``-`` or ``_``) -> (action, option)."""
    table: dict[str, tuple[argparse.Action, str]] = {}
    for action in parser._actions:
        if isinstance(action, _SKIPPED) or action.dest == "config":
            continue
        for option in action.option_strings:
            if option.startswith("--"):
                name = option[2:]
                table[name] = (action, option)
                table[name.replace("-", "_")] = (action, option)
    return table


def _type_name(kind: object) -> str:
    if kind is None or kind is str:
        return "a string"
    if kind is int:
        return "an integer"
    if kind is float:
        return "a number"
    if isinstance(kind, CheckedNumber):
        return kind.__name__
    return f"a string accepted by {getattr(kind, '__name__', repr(kind))}"


def _scalar(key: str, value: Any, action: argparse.Action) -> Any:
    """One value for ``action``, checked against its ``type`` and ``choices``."""
    kind = action.type
    if kind is int:
        ok = isinstance(value, int) and not isinstance(value, bool)
    elif kind is float:
        ok = isinstance(value, int | float) and not isinstance(value, bool)
        value = float(value) if ok else value
    elif kind is None or kind is str:
        ok = isinstance(value, str)
    elif isinstance(kind, CheckedNumber):  # a number, as for int/float: never a string
        ok = isinstance(value, int | float) and not isinstance(value, bool)
        try:
            value = kind(value) if ok else value
        except argparse.ArgumentTypeError:
            ok = False
    else:
        # a custom converter (Path, a parsing function) gets the string a shell would pass;
        # the raw string is kept because argparse converts string defaults itself; a number
        # in the file stands for the digits a shell would pass (``explainers = 4``)
        if isinstance(value, int | float) and not isinstance(value, bool):
            value = str(value)
        ok = isinstance(value, str)
        if ok:
            try:
                kind(value)  # type: ignore[operator]
            except (TypeError, ValueError, argparse.ArgumentTypeError):
                ok = False
    if not ok:
        raise TypeError(
            f"key {key!r} must be {_type_name(kind)}; got {type(value).__name__} {value!r}"
        )
    if action.choices is not None and value not in action.choices:
        raise ValueError(f"key {key!r} has value {value!r}; allowed: {list(action.choices)}")
    return value


def _config_value(key: str, value: Any, action: argparse.Action, option: str) -> Any:
    """The namespace value that ``key: value`` from a config file stands for."""
    if isinstance(action, argparse.BooleanOptionalAction):
        if not isinstance(value, bool):
            raise TypeError(
                f"key {key!r} must be true or false; got {type(value).__name__} {value!r}"
            )
        return value if not option.startswith("--no-") else not value
    if isinstance(action, _FLAG_ACTIONS):
        if not isinstance(value, bool):
            raise TypeError(
                f"key {key!r} must be true or false; got {type(value).__name__} {value!r}"
            )
        if isinstance(action, argparse._AppendConstAction):
            return [action.const] if value else action.default
        return action.const if value else action.default
    if isinstance(action, argparse._CountAction):
        if not isinstance(value, int) or isinstance(value, bool) or value < 0:
            raise TypeError(f"key {key!r} must be a non-negative integer; got {value!r}")
        return value
    if value is None:
        if action.default is None:
            return None
        raise TypeError(f"key {key!r} must be {_type_name(action.type)}; got null")
    many = (
        isinstance(action, argparse._AppendAction)
        or action.nargs in ("*", "+")
        or (isinstance(action.nargs, int))
    )
    if many:
        if not isinstance(value, list):
            raise TypeError(
                f"key {key!r} must be a list, each item {_type_name(action.type)}; "
                f"got {type(value).__name__} {value!r}"
            )
        if action.nargs == "+" and not value:
            raise ValueError(f"key {key!r} must be a non-empty list")
        if isinstance(action.nargs, int) and len(value) != action.nargs:
            raise ValueError(f"key {key!r} must list exactly {action.nargs} values; got {value!r}")
        return [_scalar(key, item, action) for item in value]
    return _scalar(key, value, action)


def _config_defaults(parser: argparse.ArgumentParser, values: dict[str, Any]) -> dict[str, Any]:
    """Map a config file's ``values`` to parser defaults (``dest -> value``), checking each."""
    table = _flag_table(parser)
    unknown = sorted(str(k) for k in values if k not in table)
    if unknown:
        known = sorted({option[2:] for _, option in table.values()})
        raise ValueError(f"unknown key(s) {unknown}; known keys are the flag names: {known}")
    defaults: dict[str, Any] = {}
    source: dict[str, str] = {}
    for key, value in values.items():
        action, option = table[key]
        if action.dest in source:
            raise ValueError(f"keys {source[action.dest]!r} and {key!r} set the same flag")
        source[action.dest] = key
        defaults[action.dest] = _config_value(key, value, action, option)
    return defaults


def parse_with_config(
    parser: argparse.ArgumentParser, argv: Sequence[str] | None = None
) -> argparse.Namespace:
    """Parse ``argv``; values from ``--config`` become defaults that explicit flags override."""
    required = [a for a in parser._actions if a.required]
    for action in required:  # find --config even when required flags are left to the file
        action.required = False
    try:
        pre, _ = parser.parse_known_args(argv)
    finally:
        for action in required:
            action.required = True
    if pre.config is not None:

        def fail(message: str) -> NoReturn:
            parser.error(f"--config {str(pre.config)!r}: {message}")

        try:
            values = load_config_file(pre.config)
        except ValueError as err:
            parser.error(str(err))
        try:
            defaults = _config_defaults(parser, values)
            _check_file_model(defaults, pre)
        except (TypeError, ValueError) as err:
            fail(str(err))
        for action in required:
            if action.dest in defaults:
                action.required = False
        parser.set_defaults(**defaults)
    return parser.parse_args(argv)


def name_list(known: Callable[[], Iterable[str]]) -> Callable[[str], list[str]]:
    """An argparse type: ``a,b,c`` -> the names, each one of ``known()`` (read when parsing,
    so registries may fill late)."""

    def parse(text: str) -> list[str]:
        allowed = list(known())
        names = [n.strip() for n in str(text).split(",") if n.strip()]
        unknown = [n for n in names if n not in allowed]
        if unknown or not names:
            raise argparse.ArgumentTypeError(
                f"{unknown or text!r}: expected comma-separated names from {allowed}")
        return names

    return parse
