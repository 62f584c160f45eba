"""Clean interrupts for a job that owns its process (the ``reldrop`` command line).

- ``SIGTERM`` raises :class:`Terminated` (a ``BaseException``, so no library's ``except
  Exception`` swallows it) instead of Ray's handler, whose C++ failure handler printed a stack
  dump; the job then shuts Ray down and exits 143. ``SIGINT`` stays Python's
  ``KeyboardInterrupt`` (exit 130).
- ``ray.init`` installs its own ``SIGTERM`` handler, so :func:`after_ray_init` (called by the
  driver right after ``ray.init``) puts ours back.
- Ray Train's ``fit`` installs its own ``SIGINT`` handler (a "graceful abort" that ended the
  process with code 1 and no message); :func:`run_interruptible` runs such a call in a helper
  thread, where Ray Train installs none, while the main thread waits and receives the signal.
- ``kill -9`` of the driver runs no handler at all: for a local cluster the job started,
  :func:`after_ray_init` also starts a watchdog process (:mod:`reldrop.pipeline.watchdog`, its
  own session) that records the driver's process tree and, once the driver is gone, ends
  whatever of it is still alive (Ray's raylet, GCS, dashboard and runtime-env agents, workers).

Nothing is installed unless :func:`install_handlers` was called (by the command line, never by
library use in someone else's process).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
from collections.abc import Callable
from types import FrameType
from typing import Any, TypeVar

T = TypeVar("T")

__all__ = ["Terminated", "after_ray_init", "install_handlers", "run_interruptible",
           "start_watchdog"]

_state: dict[str, Any] = {"installed": False, "watchdog": False}


class Terminated(BaseException):
    """The process received ``SIGTERM``."""


def _on_sigterm(signum: int, frame: FrameType | None) -> None:
    raise Terminated(signum)


def install_handlers() -> None:
    """``SIGTERM`` -> :class:`Terminated`, ``SIGINT`` -> ``KeyboardInterrupt`` (main thread)."""
    if threading.current_thread() is not threading.main_thread():
        return
    signal.signal(signal.SIGTERM, _on_sigterm)
    signal.signal(signal.SIGINT, signal.default_int_handler)
    _state["installed"] = True


def after_ray_init(*, local: bool) -> None:
    """Re-install the handlers ``ray.init`` replaced; with a ``local`` cluster started by this
    process, start the watchdog. A no-op unless :func:`install_handlers` ran."""
    if not _state["installed"]:
        return
    install_handlers()
    if local and not _state["watchdog"]:
        _state["watchdog"] = start_watchdog()


def start_watchdog(pid: int | None = None) -> bool:
    """Start a detached process (own session, not our child) that ends ``pid``'s descendants
    once ``pid`` is gone; False where ``/proc`` is not available."""
    if not os.path.isdir("/proc/self"):
        return False
    script = os.path.join(os.path.dirname(os.path.abspath(__file__)), "watchdog.py")
    subprocess.run(  # the file itself (stdlib only): no import of reldrop, torch, ray
        [sys.executable, "-I", script, str(pid or os.getpid()), "--detach"],
        stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        start_new_session=True, close_fds=True, check=False, timeout=60,
    )
    return True


def run_interruptible(fn: Callable[[], T]) -> T:
    """``fn()``; with the handlers installed, run in a daemon thread so that ``SIGINT`` /
    ``SIGTERM`` reach this (main) thread as ``KeyboardInterrupt`` / :class:`Terminated` while
    ``fn`` blocks (the caller then shuts Ray down, which ends ``fn``)."""
    if not _state["installed"] or threading.current_thread() is not threading.main_thread():
        return fn()
    box: dict[str, Any] = {}

    def target() -> None:
        try:
            box["value"] = fn()
        except BaseException as err:  # noqa: BLE001 - handed to the main thread
            box["error"] = err

    thread = threading.Thread(target=target, name="reldrop-fit", daemon=True)
    thread.start()
    while thread.is_alive():
        thread.join(0.2)
    if "error" in box:
        raise box["error"]
    return box["value"]  # type: ignore[no-any-return]
