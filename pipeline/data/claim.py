"""One writer per dataset: an atomic claim on a dataset root, on local disks and object stores.

``reldrop make-shards`` claims its ``--out`` before it writes anything and releases the claim
when it is done (or failed). The claim is a small lock object next to the target
(``.NAME.lock``, a hidden sibling as the staging folder; inside the bucket for a bucket root),
created with **exclusive-create** semantics: ``open(path, "xb")``, which is ``O_CREAT|O_EXCL``
on a local disk, a conditional ``PutObject`` (``If-None-Match: *``) on S3 (s3fs >= 2024.12)
and atomic in fsspec's memory filesystem. Of two writers racing for one target exactly one
creates the object; the other gets :class:`DatasetBusy`, a one-line error naming the target,
the holder and the lock.

Stale claims: a claim records ``host``, ``pid`` and ``created`` (UNIX time). It is stale, and
is removed (with a warning) before claiming again, when its process is gone on this host, or
when it is older than :data:`STALE_AFTER_S` (a build that crashed on another machine). A
filesystem that cannot create exclusively (``NotImplementedError``/``ValueError`` for mode
``"xb"``) falls back to write-then-read-back of a random token, which narrows but does not
close the race; such stores are named in the warning.
"""

from __future__ import annotations

import json
import os
import secrets
import socket
import time
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from reldrop.pipeline.data.fs import absolute_url, join_url, resolve

__all__ = ["STALE_AFTER_S", "DatasetBusy", "claim_dataset", "lock_url"]

#: a claim older than this (seconds) is stale wherever its holder ran (a build of the largest
#: built-in dataset takes minutes; a crashed build on another host leaves its claim behind)
STALE_AFTER_S = 6 * 3600.0


class DatasetBusy(FileExistsError):
    """Another writer holds the claim on a dataset root."""


def lock_url(root_url: str) -> str:
    """The claim object of ``root_url``: its hidden sibling ``.NAME.lock`` (inside a bucket
    root, which has no sibling)."""
    url = absolute_url(root_url).rstrip("/")
    scheme, sep, path = url.rpartition("://")
    head, slash, name = path.rpartition("/")
    if not slash or not name or (sep and not head):
        return join_url(url, ".reldrop-build.lock")
    return f"{scheme}{sep}{head}/.{name}.lock"


def _holder() -> dict[str, Any]:
    return {"host": socket.gethostname(), "pid": os.getpid(), "created": time.time(),
            "token": secrets.token_hex(8)}


def _read(fs: Any, path: str) -> dict[str, Any] | None:
    try:
        data = json.loads(fs.cat_file(path))
    except FileNotFoundError:
        return None
    except (OSError, ValueError):
        return {}  # unreadable or half-written: judged by age only (unknown: not stale)
    return data if isinstance(data, dict) else {}


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _stale(held: dict[str, Any], now: float) -> str | None:
    """Why ``held`` is stale, or None if it may still be building."""
    created = held.get("created")
    if isinstance(created, int | float) and now - created > STALE_AFTER_S:
        return f"older than {STALE_AFTER_S / 3600:g} h"
    pid = held.get("pid")
    if held.get("host") == socket.gethostname() and isinstance(pid, int) and not _pid_alive(pid):
        return f"its process {pid} on this host is gone"
    return None


def _create(fs: Any, path: str, data: bytes) -> bool:
    """Exclusive create; False when the object exists already."""
    try:
        with fs.open(path, "xb") as f:
            f.write(data)
        return True
    except FileExistsError:
        return False
    except (NotImplementedError, ValueError) as err:  # no exclusive create on this store
        warnings.warn(f"{type(fs).__name__} cannot create {path!r} exclusively ({err}); "
                      "using write-and-read-back, which narrows but does not close the race",
                      stacklevel=3)
        if fs.exists(path):
            return False
        fs.pipe_file(path, data)
        time.sleep(0.2)
        return bool(fs.cat_file(path) == data)


def _busy(root_url: str, lock: str, held: dict[str, Any] | None) -> DatasetBusy:
    held = held or {}
    since = held.get("created")
    when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(since)) if isinstance(
        since, int | float) else "?"
    return DatasetBusy(
        f"--out {root_url!r} is being written by another make-shards (host {held.get('host', '?')}, "
        f"pid {held.get('pid', '?')}, since {when}); wait for it, or delete {lock!r} if that "
        "build is gone"
    )


@contextmanager
def claim_dataset(root_url: str) -> Iterator[str]:
    """Hold the claim on ``root_url`` for the ``with`` block; raise :class:`DatasetBusy` if
    another writer holds it. Yields the lock's URL; the claim is removed on exit (only if it
    is still ours)."""
    lock = lock_url(root_url)
    fs, path = resolve(lock)
    parent = path.rpartition("/")[0]
    if parent:
        fs.makedirs(parent, exist_ok=True)
    mine = _holder()
    data = json.dumps(mine).encode()
    if not _create(fs, path, data):
        held = _read(fs, path)
        why = _stale(held, time.time()) if held else None
        if held is None or why is not None:
            if why is not None:
                warnings.warn(f"removing the stale claim {lock!r} ({why})", stacklevel=3)
                fs.rm(path)
            if not _create(fs, path, data):  # someone else won the retry
                raise _busy(root_url, lock, _read(fs, path))
        else:
            raise _busy(root_url, lock, held)
    try:
        yield lock
    finally:
        held = _read(fs, path)
        if held is not None and held.get("token") == mine["token"]:
            fs.rm(path)
