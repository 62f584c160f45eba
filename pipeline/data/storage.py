"""Object-storage settings as configuration: where the store is and how to reach it.

:class:`StorageOptions` (endpoint, region, anonymous access, tries on transient errors, other
fsspec options) come from the AWS environment, or once per process from a job's
``--storage-options`` JSON (config key ``storage-options``) through :func:`configure_storage`.
Ray workers get the driver's settings through :data:`ENV_VAR` in their runtime environment
(:func:`worker_env`). Credentials are refused here: they stay in the environment
(``AWS_ACCESS_KEY_ID`` ...), a Kubernetes Secret or an instance role, so nothing that is
logged, shipped to workers or written into manifests and reports can hold them.
"""

from __future__ import annotations

import argparse
import json
import os
import threading
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field, replace
from typing import Any

__all__ = [
    "ENV_VAR",
    "StorageOptions",
    "configure_storage",
    "current_storage_options",
    "parse_storage_options",
    "storage_retries",
    "worker_env",
]

#: environment variable that carries the driver's :class:`StorageOptions` (JSON) to Ray workers
ENV_VAR = "RELDROP_STORAGE_OPTIONS"

_S3 = ("s3", "s3a")
#: option names that hold secrets: refused in settings that may be logged or shipped
_SECRET_NAMES = frozenset({
    "key", "secret", "token", "password", "session_token", "aws_access_key_id",
    "aws_secret_access_key", "aws_session_token", "access_key", "secret_key", "username",
})
#: filesystem classes whose constructor keywords ``--storage-options`` passes through as they
#: are (fsspec's own storage options), per protocol
_FILESYSTEMS = {
    "s3": ("s3fs", "S3FileSystem"), "s3a": ("s3fs", "S3FileSystem"),
    "gs": ("gcsfs", "GCSFileSystem"), "gcs": ("gcsfs", "GCSFileSystem"),
    "http": ("fsspec.implementations.http", "HTTPFileSystem"),
    "https": ("fsspec.implementations.http", "HTTPFileSystem"),
}
#: constructor keywords that are not options (the event loop, sessions) or are credentials
_NOT_OPTIONS = frozenset({"self", "args", "kwargs", "storage_options", "asynchronous", "loop",
                          "session", "get_client"}) | _SECRET_NAMES


def _fsspec_names(protocol: str) -> frozenset[str]:
    """The options ``protocol``'s filesystem takes (empty if its package is not installed)."""
    import importlib
    import inspect

    where = _FILESYSTEMS.get(protocol)
    if where is None:
        return frozenset()
    try:
        cls = getattr(importlib.import_module(where[0]), where[1])
    except ImportError:
        return frozenset()
    return frozenset(inspect.signature(cls.__init__).parameters) - _NOT_OPTIONS


def fsspec_option_names() -> list[str]:
    """Every fsspec storage option ``--storage-options`` accepts as it is (installed stores)."""
    return sorted(set().union(*(_fsspec_names(p) for p in _FILESYSTEMS)))
_CONNECT_TIMEOUT_S = 5.0
_READ_TIMEOUT_S = 60.0


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
    tries per storage call when the error is transient (1 = no retry). ``fsspec``: fsspec's
    own storage options as they are (``client_kwargs``, ``config_kwargs``,
    ``requester_pays``, ...), given to the filesystem of every URL whose filesystem takes them
    (s3, gs, http); in JSON they are top-level keys. ``extra``: options for one protocol only,
    e.g. ``{"s3": {"requester_pays": true}}``.
    """

    endpoint_url: str | None = None
    region: str | None = None
    anon: bool = False
    attempts: int = 4
    fsspec: Mapping[str, Any] = field(default_factory=dict)
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
        if not isinstance(self.fsspec, Mapping):
            raise TypeError(f"storage option fsspec must be a mapping; got {self.fsspec!r}")
        secrets = _secret_paths(self.extra, "extra") + _secret_paths(self.fsspec, "")
        if secrets:
            raise ValueError(
                f"storage options must not hold credentials (found {secrets}); give them "
                "through the environment (AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, "
                "AWS_SESSION_TOKEN), a Kubernetes Secret or an instance role"
            )
        object.__setattr__(self, "extra", json.loads(json.dumps(dict(self.extra))))
        object.__setattr__(self, "fsspec", json.loads(json.dumps(dict(self.fsspec))))

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
        """Fields from a JSON object over ``base`` (default: :meth:`from_env`); keys that are
        not fields but options of an fsspec filesystem (``client_kwargs``, ...) go to
        ``fsspec`` as they are."""
        try:
            values = json.loads(text)
        except json.JSONDecodeError as err:
            raise ValueError(f"storage options {text!r} are not valid JSON: {err}") from err
        if not isinstance(values, dict):
            raise ValueError(f"storage options must be a JSON object; got {text!r}")
        own = [f for f in cls.__dataclass_fields__]
        passed = {k: v for k, v in values.items() if k not in own}
        secrets = _secret_paths(passed, "")
        if secrets:
            raise ValueError(
                f"storage options must not hold credentials (found {[s[1:] for s in secrets]}); "
                "give them through the environment (AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, "
                "AWS_SESSION_TOKEN), a Kubernetes Secret or an instance role"
            )
        unknown = sorted(set(passed) - set(fsspec_option_names()))
        if unknown:
            raise ValueError(
                f"unknown storage option(s) {unknown}; allowed: {own} and the fsspec options of "
                f"the installed filesystems ({', '.join(fsspec_option_names())})"
            )
        values = {k: v for k, v in values.items() if k in own}
        if passed:
            values["fsspec"] = {**values.get("fsspec", {}), **passed}
        return replace(base if base is not None else cls.from_env(), **values)

    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)

    def fsspec_kwargs(self, protocol: str) -> dict[str, Any]:
        """Keyword arguments for ``fsspec.filesystem(protocol, ...)``: ``endpoint_url`` and
        ``region`` apply to S3, ``anon`` to S3 and GCS, ``fsspec`` to every protocol whose
        filesystem takes them, ``extra[protocol]`` to its protocol (last; nested
        ``client_kwargs``/``config_kwargs`` are merged, the later value winning)."""
        names = _fsspec_names(protocol) if self.fsspec else frozenset()
        extra = _merge({k: v for k, v in self.fsspec.items() if k in names},
                       dict(self.extra.get(protocol, {})))
        if protocol in ("gs", "gcs"):
            return {**({"token": "anon"} if self.anon else {}), **extra}
        if protocol not in _S3:
            return extra
        kwargs: dict[str, Any] = {"anon": self.anon}
        if self.endpoint_url:
            kwargs["endpoint_url"] = self.endpoint_url
        client = {"region_name": self.region} if self.region else {}
        # botocore does not retry (its retries are neither bounded by us nor counted);
        # reldrop's S3 filesystem (fs.py) retries what _is_transient allows, ``attempts`` times
        config = {
            "retries": {"total_max_attempts": 1},
            "connect_timeout": _CONNECT_TIMEOUT_S,
            "read_timeout": _READ_TIMEOUT_S,
        }
        kwargs["client_kwargs"] = {**client, **extra.pop("client_kwargs", {})}
        kwargs["config_kwargs"] = {**config, **extra.pop("config_kwargs", {})}
        return {**kwargs, **extra}


def _merge(base: Mapping[str, Any], over: Mapping[str, Any]) -> dict[str, Any]:
    """``over`` on ``base``; the client and config mappings are merged one level deep."""
    out = dict(base)
    for name, value in over.items():
        if name in ("client_kwargs", "config_kwargs") and isinstance(out.get(name), Mapping):
            out[name] = {**out[name], **value}
        else:
            out[name] = value
    return out


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
#: (protocol, bucket or host, settings) that answered in this process; emptied on configure
checked: set[tuple[str, str, str]] = set()
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
        checked.clear()
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


def count_retry() -> None:
    """Count one transient storage error met (by :mod:`reldrop.pipeline.data.fs`)."""
    global _retries
    with _lock:
        _retries += 1
