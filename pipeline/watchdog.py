"""``python -m reldrop.pipeline.watchdog PID``: end PID's process tree once PID is gone.

Started by :func:`reldrop.pipeline.interrupts.start_watchdog` in its own session and detached
(``--detach``: it forks and its parent exits), so neither a terminal's Ctrl-C, ``kill -9`` of
the driver, nor Ray's clean-up of a dead driver's child processes reaches it. Every half second it records the
driver's descendants (pid and start time, from ``/proc``); when the driver has exited, it
sends ``SIGTERM`` to every recorded process still alive (and their descendants), then
``SIGKILL`` two seconds later. Start times guard against a recycled pid. Linux only.
"""

from __future__ import annotations

import os
import signal
import sys
import time

__all__ = ["main"]

POLL_S = 0.5
GRACE_S = 2.0


def _stat(pid: int) -> tuple[int, int] | None:
    """(parent pid, start time) of ``pid`` or None if it is gone (or a zombie)."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            text = f.read().decode(errors="replace")
    except OSError:
        return None
    fields = text[text.rindex(")") + 2:].split()
    if fields[0] in ("Z", "X"):
        return None
    return int(fields[1]), int(fields[19])


def _children() -> dict[int, list[int]]:
    tree: dict[int, list[int]] = {}
    for name in os.listdir("/proc"):
        if name.isdigit():
            stat = _stat(int(name))
            if stat is not None:
                tree.setdefault(stat[0], []).append(int(name))
    return tree


def _descendants(roots: list[int]) -> dict[int, int]:
    tree = _children()
    found: dict[int, int] = {}
    queue = list(roots)
    while queue:
        for child in tree.get(queue.pop(), []):
            stat = _stat(child)
            if stat is not None and child not in found and child != os.getpid():
                found[child] = stat[1]
                queue.append(child)
    return found


def _alive(known: dict[int, int]) -> list[int]:
    return [pid for pid, start in known.items() if (_stat(pid) or (0, -1))[1] == start]


def _signal(pids: list[int], sig: int) -> None:
    for pid in pids:
        try:
            os.kill(pid, sig)
        except OSError:
            pass


def main(argv: list[str] | None = None) -> int:
    args = argv or sys.argv[1:]
    pid = int(args[0])
    if "--detach" in args and os.fork() != 0:
        # not a child of the driver: Ray ends a dead worker's (and driver's) child processes
        os._exit(0)
    start = _stat(pid)
    if start is None:
        return 0
    known: dict[int, int] = {}
    while (_stat(pid) or (0, -1))[1] == start[1]:
        known.update(_descendants([pid]))
        time.sleep(POLL_S)
    alive = _alive(known)
    known.update(_descendants(alive))  # children of the survivors, spawned since the last poll
    alive = _alive(known)
    if not alive:
        return 0
    _signal(alive, signal.SIGTERM)
    deadline = time.monotonic() + GRACE_S
    while time.monotonic() < deadline and _alive(known):
        time.sleep(0.1)
    _signal(_alive(known), signal.SIGKILL)
    return 0


if __name__ == "__main__":
    sys.exit(main())
