"""fsspec URLs in one place: URL -> filesystem with the process's storage settings, clear
errors, bounded retries.

Any fsspec URL works: plain local paths, ``file://``, ``memory://``, ``http(s)://`` (read
only), ``s3://`` (``s3fs`` ships with reldrop) and ``gs://`` (the ``gcs`` extra, imported
lazily here). :func:`resolve` applies the settings of :mod:`reldrop.pipeline.data.storage`
(re-exported here).

The first use of a bucket (or HTTP host) in a process checks that it answers, so a wrong
bucket, refused access, missing credentials or an unreachable endpoint is one line naming the
URL and the fix (:class:`StorageError`) instead of a stack of botocore frames. Transient
failures (5xx, throttling, timeouts, connection resets) are retried a few times with
exponential backoff and counted (:func:`storage_retries`).
"""

from __future__ import annotations

import asyncio
import errno
import os
import time
from collections.abc import Callable
from typing import Any, TypeVar

import fsspec
from fsspec import AbstractFileSystem

from reldrop.pipeline.data import storage
from reldrop.pipeline.data.storage import (
    ENV_VAR,
    StorageOptions,
    configure_storage,
    current_storage_options,
    parse_storage_options,
    storage_retries,
    worker_env,
)

__all__ = [
    "ENV_VAR",
    "AccessDenied",
    "MissingCredentials",
    "NoSuchBucket",
    "StorageError",
    "StorageOptions",
    "Unreachable",
    "absolute_url",
    "arrow_filesystem",
    "configure_storage",
    "current_storage_options",
    "describe_error",
    "join_url",
    "parse_storage_options",
    "resolve",
    "retrying",
    "storage_retries",
    "worker_env",
]

#: protocol -> (module fsspec needs, the command that installs it)
_EXTRAS: dict[str, tuple[str, str]] = {
    "s3": ("s3fs", "`pip install s3fs` (a reldrop dependency; `pip install 'reldrop[s3]'` works too)"),
    "s3a": ("s3fs", "`pip install s3fs` (a reldrop dependency; `pip install 'reldrop[s3]'` works too)"),
    "gs": ("gcsfs", "`pip install 'reldrop[gcs]'`"),
    "gcs": ("gcsfs", "`pip install 'reldrop[gcs]'`"),
}
_S3 = ("s3", "s3a")
_BUCKETS = ("s3", "s3a", "gs", "gcs")
_HTTP = ("http", "https")


def _protocol(url: str) -> str:
    return url.split("://", 1)[0].lower() if "://" in url else "file"


def resolve(url: str, **storage_options: Any) -> tuple[AbstractFileSystem, str]:
    """Return ``(filesystem, path)`` for ``url`` with the process's storage settings (keyword
    arguments override them); the first use of a bucket or host checks that it answers."""
    if not isinstance(url, str) or not url:
        raise ValueError(f"url must be a non-empty string; got {url!r}")
    protocol = _protocol(url)
    options = current_storage_options()
    kwargs = {**options.fsspec_kwargs(protocol), **storage_options}
    try:
        if protocol in _S3:
            fs = _s3_filesystem_class()(reldrop_attempts=options.attempts, **kwargs)
            path = fs._strip_protocol(url)
        else:
            fs, path = fsspec.core.url_to_fs(url, **kwargs)
    except (ImportError, ValueError) as err:
        if protocol in _EXTRAS:
            module, command = _EXTRAS[protocol]
            raise ImportError(
                f"url {url!r} needs the {module!r} package; install it with {command}"
            ) from err
        raise
    if protocol in _BUCKETS or protocol in _HTTP:
        _check_once(fs, protocol, url, path, options)
    return fs, path


def join_url(root_url: str, *names: str) -> str:
    """``root_url`` joined with relative ``names`` by ``/`` (keeps the protocol)."""
    url = root_url.rstrip("/") if root_url not in ("/",) else root_url
    for name in names:
        if (not name or name.startswith("/") or ".." in name.split("/") or "%" in name
                or "\\" in name or not name.isprintable()):
            raise ValueError(f"name {name!r} must be a relative path without '..', '%' escapes, "
                             "backslashes or control characters")
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
    import pyarrow.fs as pafs  # pyarrow.fs is slow to import

    fs, path = resolve(url, **storage_options)
    protocols = fs.protocol if isinstance(fs.protocol, tuple) else (fs.protocol,)
    if "file" in protocols or "local" in protocols:
        return pafs.LocalFileSystem(), path
    return pafs.PyFileSystem(pafs.FSSpecHandler(fs)), path


# --- errors -------------------------------------------------------------------------------


class StorageError(OSError):
    """Object storage refused or could not be reached; the message names the URL and the fix."""


class NoSuchBucket(StorageError, FileNotFoundError):
    """The URL's bucket does not exist (or the endpoint is not the one that holds it)."""


class AccessDenied(StorageError, PermissionError):
    """The credentials in use may not list or read the bucket."""


class MissingCredentials(StorageError, PermissionError):
    """No credentials were found for a store that needs them."""


class Unreachable(StorageError, ConnectionError):
    """The endpoint refused the connection, timed out, or its name did not resolve."""


_T = TypeVar("_T")


def _type_names(err: BaseException) -> set[str]:
    return {cls.__name__ for cls in type(err).__mro__}


def _is_transient(err: BaseException) -> bool:
    """5xx, throttling, timeouts and dropped connections: worth another try."""
    names = _type_names(err)
    if names & {"EndpointConnectionError", "ConnectTimeoutError", "ClientConnectorError"}:
        return False  # refused / no route: another try soon will not help
    response = getattr(err, "response", None)
    if isinstance(response, dict):
        status = response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0)
        code = response.get("Error", {}).get("Code", "")
        return int(status or 0) >= 500 or code in {"SlowDown", "Throttling", "RequestTimeout"}
    status = getattr(err, "status", None)  # aiohttp.ClientResponseError (http)
    if isinstance(status, int):
        return status >= 500 or status == 429
    transient = {
        "HTTPClientError", "ReadTimeoutError", "ConnectionClosedError", "IncompleteRead",
        "ServerDisconnectedError", "ClientPayloadError", "ServerTimeoutError",
        "ConnectionResetError", "TimeoutError", "FSTimeoutError", "ResponseParserError",
    }
    if names & transient:
        return True
    return isinstance(err, OSError) and err.errno in (errno.ECONNRESET, errno.EPIPE)


_s3_class: type | None = None


def _s3_filesystem_class() -> type:
    """``s3fs.S3FileSystem`` with reldrop's retry policy on its own instances only: transient
    errors (:func:`_is_transient`) are tried ``attempts`` times in all with s3fs's backoff and
    counted, anything else is raised at once. s3fs's own retry loop runs once per attempt
    (``retries = 1``) and botocore's is off (``config_kwargs``), so no other s3fs user in the
    process is affected: nothing module-wide is changed."""
    global _s3_class
    if _s3_class is not None:
        return _s3_class
    import s3fs

    class RetryingS3FileSystem(s3fs.S3FileSystem):  # type: ignore[misc]
        retries = 1

        def __init__(self, *args: Any, reldrop_attempts: int = 4, **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)
            self.attempts = reldrop_attempts

        async def _call_s3(self, method: Any, *args: Any, **kwargs: Any) -> Any:
            for attempt in range(self.attempts):
                try:
                    return await super()._call_s3(method, *args, **kwargs)
                except Exception as err:
                    if attempt + 1 >= self.attempts or not _is_transient_or_cause(err):
                        raise
                    storage.count_retry()
                    await asyncio.sleep(0.1 * 1.7**attempt)
            raise AssertionError("unreachable")  # pragma: no cover

    _s3_class = RetryingS3FileSystem
    return _s3_class


def _is_transient_or_cause(err: BaseException) -> bool:
    """s3fs translates botocore's errors into ``OSError``s whose cause is the original."""
    return _is_transient(err) or (err.__cause__ is not None and _is_transient(err.__cause__))


def retrying(
    fn: Callable[[], _T], *, attempts: int | None = None, base_delay_s: float = 0.1
) -> _T:
    """``fn()``, tried again after ``base_delay_s * 1.7**i`` (s3fs's schedule) when it fails
    transiently, at most ``attempts`` times in all (default: the configured ``attempts``)."""
    tries = attempts if attempts is not None else current_storage_options().attempts
    for attempt in range(tries):
        try:
            return fn()
        except Exception as err:
            if attempt + 1 >= tries or not _is_transient(err):
                raise
            storage.count_retry()
            time.sleep(base_delay_s * 1.7**attempt)
    raise AssertionError("unreachable")  # pragma: no cover


def _check_once(
    fs: AbstractFileSystem, protocol: str, url: str, path: str, options: StorageOptions
) -> None:
    """Probe the bucket (or HTTP host) the first time this process uses it."""
    place = path.split("/", 1)[0] if protocol in _BUCKETS else url.split("/", 3)[2]
    key = (protocol, place, options.to_json())
    if key in storage.checked:
        return
    try:
        if protocol in _BUCKETS:
            fs.info(place)
        else:
            retrying(lambda: _probe_http(fs, url))
    except Exception as err:
        described = describe_error(err, url, protocol, options)
        if described is None:
            raise
        raise described from err
    storage.checked.add(key)


def _probe_http(fs: AbstractFileSystem, url: str) -> None:
    try:
        fs.info(url)
    except FileNotFoundError as err:
        # fsspec reports any failed HEAD/GET as "not found"; the cause tells a dead host
        if err.__cause__ is not None and not isinstance(err.__cause__, FileNotFoundError):
            raise err.__cause__ from None
        # else the host answered: a missing file is the caller's to report


def _where(options: StorageOptions, protocol: str) -> str:
    if protocol in _S3:
        return f"endpoint {options.endpoint_url}" if options.endpoint_url else "AWS S3"
    return "the server"


def describe_error(
    err: BaseException, url: str, protocol: str, options: StorageOptions
) -> StorageError | None:
    """The one-line :class:`StorageError` for ``err`` met on ``url``, or ``None`` if unknown."""
    names = _type_names(err)
    where = _where(options, protocol)
    bucket = url.split("://", 1)[-1].split("/", 1)[0]
    endpoint_hint = (
        "set AWS_ENDPOINT_URL or --storage-options '{\"endpoint_url\": ...}'"
        if protocol in _S3 else "check the URL"
    )
    if names & {"NoCredentialsError", "PartialCredentialsError", "DefaultCredentialsError",
                "NoAuthTokenError", "CredentialRetrievalError"}:
        how = ("set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY" if protocol in _S3
               else "set GOOGLE_APPLICATION_CREDENTIALS")
        return MissingCredentials(
            f"no credentials for {url!r} ({where}): {how} (on a cluster from a Secret on every "
            "node), or use --storage-options '{\"anon\": true}' for a public bucket"
        )
    if names & {"EndpointConnectionError", "ConnectTimeoutError", "ClientConnectorError",
                "ConnectionRefusedError", "ServerTimeoutError", "TimeoutError"}:
        return Unreachable(
            f"cannot reach {where} for {url!r} ({type(err).__name__}): is it running and "
            f"reachable from this machine? {endpoint_hint}"
        )
    if isinstance(err, PermissionError):
        return AccessDenied(
            f"access denied to bucket {bucket!r} for {url!r} ({where}): the credentials in use "
            "need list/read (and for outputs write) rights on it; check AWS_ACCESS_KEY_ID / the "
            "Secret, or use --storage-options '{\"anon\": true}' for a public bucket"
        )
    if isinstance(err, FileNotFoundError) and protocol in _BUCKETS:
        return NoSuchBucket(
            f"bucket {bucket!r} of {url!r} does not exist at {where}: create it (e.g. "
            f"`aws s3 mb s3://{bucket}`) or fix the URL; {endpoint_hint} if it lives elsewhere"
        )
    return None
