"""What the studies' command lines share: the common flags, value parsers, writing a table into
a Markdown file, and running as ``python -m studies.NAME`` with the product's one-line errors."""

from __future__ import annotations

import argparse
import json
import shlex
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

from reldrop.jobs._args import new_parser, positive_int
from reldrop.jobs.cli import user_error_line

__all__ = ["int_list", "json_object", "record_command", "run_study", "study_parser",
           "write_table"]


def int_list(text: str) -> list[int]:
    """``1,2,4`` -> ``[1, 2, 4]`` (integers >= 1)."""
    try:
        values = [int(v) for v in str(text).split(",") if v.strip()]
    except ValueError:
        values = []
    if not values or min(values) < 1:
        raise argparse.ArgumentTypeError(f"{text!r}: expected comma-separated integers >= 1")
    return values


def json_object(text: str) -> dict[str, object]:
    try:
        value = json.loads(text)
    except json.JSONDecodeError as err:
        raise argparse.ArgumentTypeError(f"{text!r}: expected a JSON object ({err})") from None
    if not isinstance(value, dict):
        raise argparse.ArgumentTypeError(f"{text!r}: expected a JSON object like '{{\"p\": 1.0}}'")
    return value


def study_parser(name: str, description: str, *, out: str) -> argparse.ArgumentParser:
    """``python -m studies.NAME``'s parser with the flags every study takes."""
    p = new_parser(f"python -m studies.{name}", description)
    p.add_argument("--data", required=True,
                   help="shard root with splits train, val, test-id, test (e.g. "
                   "reldrop make-shards --dataset viviano-synthetic --out data/viviano)")
    p.add_argument("--seeds", type=positive_int, default=2, help="seeds 0..N-1")
    p.add_argument("--epochs", type=positive_int, default=3)
    p.add_argument("--limit", type=positive_int, default=2000, help="at most N samples per split")
    p.add_argument("--eval-limit", type=positive_int, default=200,
                   help="test-id samples for the occlusion curve and mask share")
    p.add_argument("--batch-size", type=positive_int, default=64, help="trainer batch size")
    p.add_argument("--model", default="small-cnn", help="model name")
    p.add_argument("--out", default=out, help="output directory")
    p.add_argument("--table", default=None, metavar="FILE#NAME",
                   help="also write the table between the '<!-- results:NAME -->' markers of "
                   "FILE (e.g. docs/results.md#search-viviano), with this command and the machine")
    return p


def record_command(name: str, args: argparse.Namespace, argv: Sequence[str] | None) -> None:
    """``args.command``: how to rerun this study (its own arguments, not the process's)."""
    args.command = shlex.join(["python", "-m", f"studies.{name}",
                               *(sys.argv[1:] if argv is None else argv)])


def write_table(target: str | None, markdown: Path, command: str) -> None:
    """Copy a study's Markdown (less its title) into ``target`` (``FILE#NAME``)."""
    if target is None:
        return
    from studies.tables import splice_section

    body = "\n".join(line for line in markdown.read_text().splitlines()
                     if not line.startswith("# "))
    path = splice_section(target, body, command=command)
    print(f"updated {path} section {target.partition('#')[2]!r}")


def run_study(name: str, parse_args: Callable[[Sequence[str] | None], argparse.Namespace],
              main: Callable[[argparse.Namespace], int],
              argv: Sequence[str] | None = None) -> int:
    """Parse and run; a user error (bad data, a missing file) is one line and exit code 2."""
    args = parse_args(argv)
    try:
        return main(args)
    except Exception as err:
        line = user_error_line(err)
        if line is None or args.debug:
            raise
        print(f"python -m studies.{name}: {line}", file=sys.stderr)
        return 2
