"""The ``reldrop`` console script: ``reldrop <command> [flags]`` dispatches to ``jobs.<command>``.

Every job runs through :func:`run`, also under ``python -m reldrop.jobs.<module>``. A user error
(bad data, a missing file, a bad flag or config value, a checksum mismatch) ends the job with
exit code 2 and one line on stderr, ``reldrop <job>: <what>, <where>, <how to fix>``; errors
raised inside Ray tasks, actors or Ray Train workers are unwrapped to the innermost such line.
``--debug`` prints the full traceback first. Anything else (a bug) keeps Python's traceback.
"""

from __future__ import annotations

import importlib
import re
import sys
import traceback
from collections.abc import Sequence

__all__ = ["COMMANDS", "USER_ERRORS", "main", "run", "summary", "usage", "user_error_line",
           "version"]

#: command name -> module under ``jobs`` (each has ``parse_args(argv)`` and ``main(args)``)
COMMANDS: dict[str, str] = {
    "make-shards": "make_shards",
    "train": "train",
    "explain": "explain",
    "evaluate": "evaluate",
    "compare": "compare",
    "bench": "bench",
}

#: What a user can fix: bad values and data (``ValueError``: also checksum, shard, sample and
#: manifest errors, ``pyarrow.ArrowInvalid``), wrong types, files (``OSError``), missing extras.
USER_ERRORS: tuple[type[BaseException], ...] = (ValueError, TypeError, OSError, ImportError)

#: the one line is cut in the middle beyond this (its start names the input, its end the fix)
_MAX_LINE = 300
#: ``ValueError: `` / ``reldrop.pipeline.data.codecs.SampleError: `` inside a traceback's text
_CLASS_PREFIX = re.compile(r"\b[\w.]*(?:Error|Exception): ")
#: what Ray Data appends to a task's exception after retrying it ("Failed to apply UDF
#: transform after 1/4 attempts ... configure `ray.data.DataContext` ...")
_RAY_SUFFIX = re.compile(r"\n\s*Failed to [^\n]* after \d+/\d+ attempts.*", re.S)
#: exit codes of an interrupted job (128 + signal number, as a shell reports them)
EXIT_SIGINT, EXIT_SIGTERM = 130, 143


def _is_ray_wrapper(err: BaseException) -> bool:
    """Ray's wrappers (``RayTaskError(ValueError)`` is also a ``ValueError``) carry tracebacks
    in their text; the user's line is in what they wrap."""
    return any(cls.__module__.split(".")[0] == "ray" for cls in type(err).__mro__)


def _nested(err: BaseException) -> list[BaseException]:
    """The exceptions ``err`` wraps: Ray's ``cause``, Ray Train's worker and controller
    failures, Python's ``__cause__``."""
    found = [
        getattr(err, "cause", None),
        getattr(err, "controller_failure", None),
        *(getattr(err, "worker_failures", None) or {}).values(),
        err.__cause__,
    ]
    return [e for e in found if isinstance(e, BaseException)]


def _chain(err: BaseException) -> list[BaseException]:
    """``err`` and everything it wraps, outermost first (breadth first, each once)."""
    chain: list[BaseException] = []
    queue = [err]
    while queue:
        current = queue.pop(0)
        if any(current is seen for seen in chain):
            continue
        chain.append(current)
        queue.extend(_nested(current))
    return chain


def _one_line(text: str) -> str:
    line = " ".join(_RAY_SUFFIX.sub("", text).split())
    if len(line) <= _MAX_LINE:
        return line
    head = _MAX_LINE * 2 // 3
    return f"{line[:head]} ... {line[-(_MAX_LINE - head - 5):]}"


def _data_line(err: BaseException) -> str | None:
    """The ``shard '...', sample '...'`` line in a Ray error that kept only the cause's text."""
    try:
        from reldrop.pipeline.data.stream import data_error  # error path only
    except ImportError:
        return None
    return data_error(err)


def user_error_line(err: BaseException) -> str | None:
    """The one line to show for ``err`` if it is (or wraps) a user error, else ``None``.

    The outermost user error that is not a Ray wrapper wins: ``raise ValueError(...) from
    ArrowInvalid(...)`` shows the ``ValueError``, a ``RayTaskError`` shows what it wraps.
    """
    chain = _chain(err)
    for inner in chain:
        if isinstance(inner, USER_ERRORS) and not _is_ray_wrapper(inner):
            return _one_line(str(inner) or type(inner).__name__)
    for inner in chain:
        line = _data_line(inner)
        if line is not None:
            return _one_line(_CLASS_PREFIX.sub("", line))
    return None


def _stop_ray() -> None:
    """Shut down a Ray this process started, so its forwarded worker logs (tracebacks of the
    same error) stop before the one line is printed instead of burying it."""
    ray = sys.modules.get("ray")
    if ray is not None and ray.is_initialized():
        ray.shutdown()


def run(command: str, argv: Sequence[str] | None = None) -> int:
    """Parse ``argv`` for job ``command`` and run it; a user error is one line and exit code 2.

    ``argv`` None means this process is the job (console script, ``python -m``): on an error,
    Ray is shut down before the line is printed, so the line comes last.
    """
    own_process = argv is None
    return _run(command, list(sys.argv[1:] if argv is None else argv), own_process=own_process)


def _interrupted(command: str, args: object, signal_name: str) -> str:
    """``reldrop train: interrupted (SIGINT) at epoch 2 step 17; partial outputs in runs/a``:
    where the newest epoch checkpoint says the run was, as close as the driver knows."""
    out = getattr(args, "out", None)
    where = ""
    if command == "train" and out:
        from reldrop.pipeline.training.ray_results import last_checkpoint

        last = last_checkpoint(out)
        if last is not None:
            where = f" in epoch {last['epochs'] + 1} after step {last['step']} (last checkpoint)"
        else:
            where = " in epoch 1 (no checkpoint yet)"
    partial = f"; partial outputs in {out}" if out else ""
    return f"reldrop {command}: interrupted ({signal_name}){where}{partial}"


def _run(command: str, argv: list[str], *, own_process: bool) -> int:
    module = importlib.import_module(f"reldrop.jobs.{COMMANDS[command]}")
    debug = "--debug" in argv
    args: object = None
    if own_process:
        from reldrop.pipeline.interrupts import install_handlers

        install_handlers()
    try:
        args = module.parse_args(argv)
        debug = debug or bool(getattr(args, "debug", False))
        return int(module.main(args) or 0)
    except (KeyboardInterrupt, _terminated()) as err:
        if not own_process:
            raise
        if debug:
            traceback.print_exc()
        code = EXIT_SIGINT if isinstance(err, KeyboardInterrupt) else EXIT_SIGTERM
        try:
            _stop_ray()  # the local cluster this job started goes with it
        except (KeyboardInterrupt, _terminated()):
            pass
        print(_interrupted(command, args, "SIGINT" if code == EXIT_SIGINT else "SIGTERM"),
              file=sys.stderr, flush=True)
        return code
    except Exception as err:
        line = user_error_line(err)
        if line is None:
            raise
        if debug:
            traceback.print_exc()
        if own_process:
            _stop_ray()
        print(f"reldrop {command}: {line}", file=sys.stderr)
        return 2


def summary(command: str) -> str:
    """The one-line summary of ``command``: its module docstring's first line."""
    module = importlib.import_module(f"reldrop.jobs.{COMMANDS[command]}")
    first = (module.__doc__ or "").strip().splitlines()[0] if module.__doc__ else ""
    first = first.split(": ", 1)[1] if first.startswith("``reldrop") else first
    first = first.replace("``", "").rstrip(".")
    return first[:1].upper() + first[1:]


def usage() -> str:
    """``reldrop --help``: the commands with their one-line summaries."""
    width = max(len(c) for c in COMMANDS)
    lines = [
        "usage: reldrop COMMAND [flags]      (reldrop COMMAND --help for its flags)",
        "       reldrop --version",
        "",
        "RelDrop (relevance-driven input dropout) as a Ray data-pipeline stage.",
        "",
        "commands:",
        *(f"  {c:<{width}}  {summary(c)}" for c in COMMANDS),
        "",
        "Every command takes --config FILE (YAML or TOML, keys = flag names), --storage-options "
        "JSON and --debug.",
    ]
    return "\n".join(lines)


def version() -> str:
    import reldrop

    return f"reldrop {reldrop.__version__}"


def _terminated() -> type[BaseException]:
    from reldrop.pipeline.interrupts import Terminated

    return Terminated


def main(argv: Sequence[str] | None = None) -> int:
    """``reldrop COMMAND [flags]``; ``argv`` None reads ``sys.argv`` (the console script)."""
    argv_given = argv is not None
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(usage(), file=sys.stdout if argv else sys.stderr)
        return 0 if argv else 2
    if argv[0] in ("-V", "--version"):
        print(version())
        return 0
    command, rest = argv[0], argv[1:]
    if command not in COMMANDS:
        print(f"reldrop: unknown command {command!r}; known: {sorted(COMMANDS)}", file=sys.stderr)
        return 2
    return _run(command, rest, own_process=not argv_given)


if __name__ == "__main__":
    sys.exit(main())
