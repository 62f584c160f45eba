"""fsspec URLs in one place: resolve a URL to a filesystem, join names, bridge to pyarrow.

Any fsspec URL works: plain local paths, ``file://``, ``memory://``; ``s3://`` and ``gs://``
need the ``s3`` / ``gcs`` extras (``pip install 'reldrop[s3]'``), imported lazily here.
"""

from __future__ import annotations

import os
from typing import Any

import fsspec
from fsspec import AbstractFileSystem

__all__ = ["arrow_filesystem", "join_url", "resolve", "absolute_url"]

#: protocol -> (module fsspec needs, reldrop extra that installs it)
_EXTRAS: dict[str, tuple[str, str]] = {
    "s3": ("s3fs", "s3"),
    "s3a": ("s3fs", "s3"),
    "gs": ("gcsfs", "gcs"),
    "gcs": ("gcsfs", "gcs"),
}


def _protocol(url: str) -> str:
    return url.split("://", 1)[0].lower() if "://" in url else "file"


def resolve(url: str, **storage_options: Any) -> tuple[AbstractFileSystem, str]:
    """Return ``(filesystem, path)`` for ``url``; cloud protocols name the extra to install."""
    if not isinstance(url, str) or not url:
        raise ValueError(f"url must be a non-empty string; got {url!r}")
    protocol = _protocol(url)
    try:
        fs, path = fsspec.core.url_to_fs(url, **storage_options)
    except (ImportError, ValueError) as err:
        if protocol in _EXTRAS:
            module, extra = _EXTRAS[protocol]
            raise ImportError(
                f"url {url!r} needs the {module!r} package; install it with "
                f"`pip install 'reldrop[{extra}]'`"
            ) from err
        raise
    return fs, path


def join_url(root_url: str, *names: str) -> str:
    """``root_url`` joined with relative ``names`` by ``/`` (keeps the protocol)."""
    url = root_url.rstrip("/") if root_url not in ("/",) else root_url
    for name in names:
        if not name or name.startswith("/") or ".." in name.split("/"):
            raise ValueError(f"name {name!r} must be a relative path without '..'")
        url = f"{url}/{name}"
    return url


def absolute_url(url: str) -> str:
    """A URL with the protocol kept but local paths made absolute (for manifests and logs)."""
    if "://" in url:
        return url.rstrip("/")
    return os.path.abspath(url)


def arrow_filesystem(url: str, **storage_options: Any) -> tuple[Any, str]:
    """``(pyarrow.fs.FileSystem, path)`` for ``url`` so Ray Data can read the same URLs.

    Local paths give ``pyarrow.fs.LocalFileSystem``; other protocols wrap the fsspec
    filesystem in ``PyFileSystem(FSSpecHandler(fs))``. Pass both to
    ``ray.data.read_webdataset(paths, filesystem=fs)``. ``memory://`` only works in-process.
    """
    import pyarrow.fs as pafs  # noqa: PLC0415 (pyarrow.fs is slow to import)

    fs, path = resolve(url, **storage_options)
    protocols = fs.protocol if isinstance(fs.protocol, tuple) else (fs.protocol,)
    if "file" in protocols or "local" in protocols:
        return pafs.LocalFileSystem(), path
    return pafs.PyFileSystem(pafs.FSSpecHandler(fs)), path
