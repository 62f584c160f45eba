"""The ``reldrop`` console script: ``reldrop <command> [flags]`` dispatches to ``jobs.<command>``."""

from __future__ import annotations

import importlib
import sys
from collections.abc import Sequence

__all__ = ["COMMANDS", "main"]

#: command name -> module under ``jobs`` (each has ``parse_args(argv)`` and ``main(args)``)
COMMANDS: dict[str, str] = {
    "make-shards": "make_shards",
    "train": "train",
    "explain": "explain",
    "evaluate": "evaluate",
    "compare": "compare",
    "bench": "bench",
}


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print("usage: reldrop {" + ",".join(COMMANDS) + "} [flags]   (reldrop COMMAND --help)")
        return 0 if argv else 2
    command, rest = argv[0], argv[1:]
    if command not in COMMANDS:
        print(f"reldrop: unknown command {command!r}; known: {sorted(COMMANDS)}", file=sys.stderr)
        return 2
    module = importlib.import_module(f"reldrop.jobs.{COMMANDS[command]}")
    result = module.main(module.parse_args(rest))
    return int(result or 0)


if __name__ == "__main__":
    sys.exit(main())
