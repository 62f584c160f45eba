"""fsspec URLs in one place: storage settings, URL -> filesystem, clear errors, bounded retries.

Any fsspec URL works: plain local paths, ``file://``, ``memory://``, ``http(s)://`` (read
only), ``s3://`` (``s3fs`` ships with reldrop) and ``gs://`` (the ``gcs`` extra, imported
lazily here). Object-storage settings (endpoint, region, anonymous access, other fsspec
options) are configuration, :class:`StorageOptions`: read from the AWS environment, or set once
per process from ``--storage-options`` with :func:`configure_storage`, and handed to Ray workers
through the environment variable :data:`ENV_VAR`. Credentials never pass through here: they
stay in the environment (``AWS_ACCESS_KEY_ID`` ...), a Kubernetes Secret or an instance role,
and nothing of the settings is written into manifests or reports.

The first use of a bucket (or HTTP host) in a process checks that it answers, so a wrong
bucket, refused access, missing credentials or an unreachable endpoint is one line naming the
URL and the fix (:class:`StorageError`) instead of a stack of botocore frames. Transient
failures (5xx, throttling, timeouts, connection resets) are retried a few times with
exponential backoff and counted (:func:`storage_retries`).
"""

from __future__ import annotations

import argparse
import errno
import json
import os
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field, replace
from typing import Any, TypeVar

import fsspec
from fsspec import AbstractFileSystem

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

#: environment variable that carries the driver's :class:`StorageOptions` (JSON) to Ray workers
ENV_VAR = "RELDROP_STORAGE_OPTIONS"

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
#: option names that hold secrets: refused in settings that may be logged or shipped
_SECRET_NAMES = frozenset({
    "key", "secret", "token", "password", "session_token", "aws_access_key_id",
    "aws_secret_access_key", "aws_session_token", "access_key", "secret_key",
})
_CONNECT_TIMEOUT_S = 5.0
_READ_TIMEOUT_S = 60.0


def _protocol(url: str) -> str:
    return url.split("://", 1)[0].lower() if "://" in url else "file"


def _secret_paths(value: Any, prefix: str) -> list[str]:
    """Dotted names of secret-looking keys anywhere in ``value`` (nested mappings)."""
    if not isinstance(value, Mapping):
        return []
    found = []
    for name, item in value.items():
        here = f"{prefix}.{name}"
        if str(name).lower() in _SECRET_NAMES:
            found.append(here)
        found.extend(_secret_paths(item, here))
    return found


@dataclass(frozen=True, kw_only=True)
class StorageOptions:
    """Where and how to reach object storage; never credentials.

    ``endpoint_url``: an S3-compatible endpoint (MinIO, Ceph, moto, ...), ``None`` for AWS.
    ``region``: the S3 region. ``anon``: unsigned requests (public buckets). ``attempts``:
    tries per storage call when the error is transient (1 = no retry). ``extra``: further
    fsspec options per protocol, e.g. ``{"s3": {"requester_pays": true}}``.
    """

    endpoint_url: str | None = None
    region: str | None = None
    anon: bool = False
    attempts: int = 4
    extra: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.endpoint_url is not None and not str(self.endpoint_url).startswith(
            ("http://", "https://")
        ):
            raise ValueError(
                f"storage option endpoint_url must start with http:// or https://; "
                f"got {self.endpoint_url!r}"
            )
        if not isinstance(self.anon, bool):
            raise TypeError(f"storage option anon must be true or false; got {self.anon!r}")
        if isinstance(self.attempts, bool) or not isinstance(self.attempts, int) or not (
            1 <= self.attempts <= 10
        ):
            raise ValueError(f"storage option attempts must be an integer in 1..10; got {self.attempts!r}")
        if not isinstance(self.extra, Mapping) or not all(
            isinstance(v, Mapping) for v in self.extra.values()
        ):
            raise TypeError(
                "storage option extra must map a protocol name to its fsspec options, "
                f'e.g. {{"s3": {{"requester_pays": true}}}}; got {self.extra!r}'
            )
        secrets = _secret_paths(self.extra, "extra")
        if secrets:
            raise ValueError(
                f"storage options must not hold credentials (found {secrets}); give them "
                "through the environment (AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, "
                "AWS_SESSION_TOKEN), a Kubernetes Secret or an instance role"
            )
        object.__setattr__(self, "extra", json.loads(json.dumps(dict(self.extra))))

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> StorageOptions:
        """Settings a process finds in its environment: :data:`ENV_VAR` (set for Ray workers by
        the driver) if present, else ``AWS_ENDPOINT_URL_S3`` / ``AWS_ENDPOINT_URL`` and
        ``AWS_REGION`` / ``AWS_DEFAULT_REGION``."""
        env = os.environ if environ is None else environ
        if env.get(ENV_VAR):
            return cls.from_json(env[ENV_VAR], base=cls())
        return cls(
            endpoint_url=env.get("AWS_ENDPOINT_URL_S3") or env.get("AWS_ENDPOINT_URL") or None,
            region=env.get("AWS_REGION") or env.get("AWS_DEFAULT_REGION") or None,
        )

    @classmethod
    def from_json(cls, text: str, *, base: StorageOptions | None = None) -> StorageOptions:
        """Fields from a JSON object over ``base`` (default: :meth:`from_env`)."""
        try:
            values = json.loads(text)
        except json.JSONDecodeError as err:
            raise ValueError(f"storage options {text!r} are not valid JSON: {err}") from err
        if not isinstance(values, dict):
            raise ValueError(f"storage options must be a JSON object; got {text!r}")
        allowed = [f for f in cls.__dataclass_fields__]
        unknown = sorted(set(values) - set(allowed))
        if unknown:
            raise ValueError(f"unknown storage option(s) {unknown}; allowed: {allowed}")
        return replace(base if base is not None else cls.from_env(), **values)

    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)

    def fsspec_kwargs(self, protocol: str) -> dict[str, Any]:
        """Keyword arguments for ``fsspec.filesystem(protocol, ...)``."""
        extra = dict(self.extra.get(protocol, {}))
        if protocol not in _S3:
            return extra
        kwargs: dict[str, Any] = {"anon": self.anon}
        if self.endpoint_url:
            kwargs["endpoint_url"] = self.endpoint_url
        client = {"region_name": self.region} if self.region else {}
        # botocore does not retry (its retries are neither bounded by us nor counted);
        # s3fs retries what _is_transient allows, ``attempts`` times
        config = {
            "retries": {"total_max_attempts": 1},
            "connect_timeout": _CONNECT_TIMEOUT_S,
            "read_timeout": _READ_TIMEOUT_S,
        }
        kwargs["client_kwargs"] = {**client, **extra.pop("client_kwargs", {})}
        kwargs["config_kwargs"] = {**config, **extra.pop("config_kwargs", {})}
        return {**kwargs, **extra}


def parse_storage_options(text: str) -> StorageOptions:
    """``--storage-options`` value: a JSON object over the environment's settings."""
    try:
        return StorageOptions.from_json(text)
    except (TypeError, ValueError) as err:
        raise _OptionsArgumentError(str(err)) from err


class _OptionsArgumentError(argparse.ArgumentTypeError, ValueError):
    """A ValueError whose message argparse prints as is."""


_lock = threading.Lock()
_configured: StorageOptions | None = None
_checked: set[tuple[str, str, str]] = set()
_retries = 0


def configure_storage(options: StorageOptions | None) -> StorageOptions:
    """Set this process's storage settings (``None``: from the environment); return them.

    The endpoint and region are also exported as ``AWS_ENDPOINT_URL_S3`` / ``AWS_REGION`` so
    that libraries which read the AWS environment themselves (pyarrow's own S3 filesystem,
    which Ray Train uses for ``storage_path``; boto3) reach the same store.
    """
    global _configured
    with _lock:
        _configured = options if options is not None else StorageOptions.from_env()
        _checked.clear()
        os.environ.update(_aws_env(_configured))
        return _configured


def _aws_env(options: StorageOptions) -> dict[str, str]:
    env = {"AWS_ENDPOINT_URL_S3": options.endpoint_url, "AWS_REGION": options.region}
    return {k: v for k, v in env.items() if v}


def current_storage_options() -> StorageOptions:
    """The settings :func:`configure_storage` set, else the environment's."""
    return _configured if _configured is not None else StorageOptions.from_env()


def worker_env() -> dict[str, str]:
    """``env_vars`` for a Ray runtime environment that give workers this process's settings
    (empty when they are the defaults: workers then read their own environment). Credentials
    are not among them: workers take those from their own environment (a Secret per pod)."""
    options = current_storage_options()
    if options == StorageOptions():
        return {}
    return {ENV_VAR: options.to_json(), **_aws_env(options)}


def storage_retries() -> int:
    """Transient storage errors this process retried (or gave up on after the last attempt)."""
    return _retries


def _count_retry() -> None:
    global _retries
    with _lock:
        _retries += 1


def resolve(url: str, **storage_options: Any) -> tuple[AbstractFileSystem, str]:
    """Return ``(filesystem, path)`` for ``url`` with the process's storage settings (keyword
    arguments override them); the first use of a bucket or host checks that it answers."""
    if not isinstance(url, str) or not url:
        raise ValueError(f"url must be a non-empty string; got {url!r}")
    protocol = _protocol(url)
    options = current_storage_options()
    kwargs = {**options.fsspec_kwargs(protocol), **storage_options}
    if protocol in _S3:
        _install_s3_retry_policy()
    try:
        fs, path = fsspec.core.url_to_fs(url, **kwargs)
    except (ImportError, ValueError) as err:
        if protocol in _EXTRAS:
            module, command = _EXTRAS[protocol]
            raise ImportError(
                f"url {url!r} needs the {module!r} package; install it with {command}"
            ) from err
        raise
    if protocol in _S3:
        fs.retries = options.attempts
    if protocol in _BUCKETS or protocol in _HTTP:
        _check_once(fs, protocol, url, path, options)
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
        "ReadTimeoutError", "ConnectionClosedError", "ResponseStreamingError", "IncompleteRead",
        "ServerDisconnectedError", "ClientPayloadError", "ServerTimeoutError",
        "ConnectionResetError", "TimeoutError", "FSTimeoutError", "ResponseParserError",
    }
    if names & transient:
        return True
    return isinstance(err, OSError) and err.errno in (errno.ECONNRESET, errno.EPIPE)


def _s3_should_retry(err: BaseException) -> bool:
    """s3fs's retry hook: retry (and count) transient errors only."""
    if _is_transient(err):
        _count_retry()
        return True
    return False


_s3_policy_installed = False


def _install_s3_retry_policy() -> None:
    """Make s3fs ask :func:`_is_transient` before every retry (and nothing retry unasked)."""
    global _s3_policy_installed
    if _s3_policy_installed:
        return
    import s3fs.core  # noqa: PLC0415

    s3fs.core.S3_RETRYABLE_ERRORS = ()  # each error goes through the custom handler
    s3fs.core.set_custom_error_handler(_s3_should_retry)
    _s3_policy_installed = True


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
            _count_retry()
            time.sleep(base_delay_s * 1.7**attempt)
    raise AssertionError("unreachable")  # pragma: no cover


def _check_once(
    fs: AbstractFileSystem, protocol: str, url: str, path: str, options: StorageOptions
) -> None:
    """Probe the bucket (or HTTP host) the first time this process uses it."""
    place = path.split("/", 1)[0] if protocol in _BUCKETS else url.split("/", 3)[2]
    key = (protocol, place, options.to_json())
    if key in _checked:
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
    with _lock:
        _checked.add(key)


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
        return MissingCredentials(
            f"no credentials for {url!r} ({where}): set AWS_ACCESS_KEY_ID and "
            "AWS_SECRET_ACCESS_KEY (on a cluster from a Secret on every node), or use "
            "--storage-options '{\"anon\": true}' for a public bucket"
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
