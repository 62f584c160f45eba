"""What a run prints: its own ``[reldrop]`` lines on the console, everything else in its log file.

Ray forwards every worker's output to the driver (Ray Train's controller and worker messages,
Ray Data's execution plans, core-worker log lines, warnings of libraries) by writing it to the
driver's ``sys.stdout``/``sys.stderr``. While :func:`run_console` is open those streams go to
the run's log file, and only lines that carry ``[reldrop]`` (the banner, progress, epoch lines,
reldrop's own warnings) reach the console as well, without Ray's process prefix. Python
loggers of Ray and warnings of other libraries go to the log file too. Nothing is patched for
the whole process: the streams, the ``ray`` logger's handlers and the warning hook are restored
when the block ends, also on an error (which the job then reports as its one line).
"""

from __future__ import annotations

import io
import logging
import sys
import warnings
from collections.abc import Iterator
from contextlib import contextmanager, redirect_stderr, redirect_stdout
from pathlib import Path
from typing import Any, TextIO

__all__ = ["MARK", "run_console"]

MARK = "[reldrop]"


class _Filtered(io.TextIOBase):
    """A text stream writing everything to ``log`` and the lines holding :data:`MARK` (from
    the mark on) to ``console``."""

    def __init__(self, log: TextIO, console: TextIO) -> None:
        self.log = log
        self.console = console
        self.pending = ""

    def write(self, text: str) -> int:
        self.log.write(text)
        self.pending += text
        while "\n" in self.pending:
            line, self.pending = self.pending.split("\n", 1)
            at = line.find(MARK)
            if at >= 0:
                self.console.write(line[at:] + "\n")
                self.console.flush()
        return len(text)

    def flush(self) -> None:
        self.log.flush()
        self.console.flush()

    def isatty(self) -> bool:  # progress bars and colours only on a terminal, never in the log
        return False


def _warning_to(log: TextIO, console: TextIO) -> Any:
    """A ``warnings.showwarning`` that keeps reldrop's own warnings on the console."""

    def show(message: Any, category: Any, filename: str, lineno: int, file: Any = None,
             line: Any = None) -> None:
        text = warnings.formatwarning(message, category, filename, lineno, line)
        log.write(text)
        if "reldrop" in filename or "/pipeline/" in filename or "/jobs/" in filename:
            console.write(f"{MARK} warning: {message}\n")
    return show


@contextmanager
def run_console(log_path: Path) -> Iterator[Path]:
    """Route output as the module docstring says; yields ``log_path``."""
    log_path.parent.mkdir(parents=True, exist_ok=True)
    console_out, console_err = sys.stdout, sys.stderr
    ray_logger = logging.getLogger("ray")
    saved = (ray_logger.handlers[:], ray_logger.propagate, warnings.showwarning)
    with open(log_path, "a", encoding="utf-8", buffering=1) as log:
        handler = logging.StreamHandler(log)
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
        ray_logger.handlers[:] = [handler]
        ray_logger.propagate = False
        warnings.showwarning = _warning_to(log, console_err)
        out, err = _Filtered(log, console_out), _Filtered(log, console_err)
        try:
            with redirect_stdout(out), redirect_stderr(err):  # type: ignore[type-var]
                yield log_path
        finally:
            out.flush()
            err.flush()
            ray_logger.handlers[:], ray_logger.propagate, warnings.showwarning = saved
