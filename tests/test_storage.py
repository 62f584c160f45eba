"""Object storage for real: an S3-compatible server (moto) and a plain HTTP server on 127.0.0.1,
started by the tests. Settings, one-line errors and retries run without Ray (fast); the CLI
round trip (make-shards -> train -> explain -> evaluate, outputs on S3; train over HTTP) on the
shared local Ray cluster."""

from __future__ import annotations

import functools
import http.server
import json
import re
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import S3_KEY_ID, S3_SECRET

from reldrop.jobs.cli import main as cli
from reldrop.jobs.train import parse_args as train_args
from reldrop.pipeline.data import fs, storage
from reldrop.pipeline.data.fs import (
    AccessDenied,
    MissingCredentials,
    NoSuchBucket,
    StorageOptions,
    Unreachable,
    configure_storage,
    current_storage_options,
    resolve,
    storage_retries,
    worker_env,
)

pytest.importorskip("s3fs")
pytest.importorskip("moto.server")


def _options(endpoint: str, **more: object) -> str:
    return json.dumps({"endpoint_url": endpoint, **more})


def _make_bucket(endpoint: str, name: str) -> None:
    import s3fs

    s3 = s3fs.S3FileSystem(endpoint_url=endpoint, key=S3_KEY_ID, secret=S3_SECRET,
                           skip_instance_cache=True)
    if not s3.exists(name):
        s3.mkdir(name)


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@functools.cache
def _quiet_handler(base: type) -> type:
    class Quiet(base):  # type: ignore[misc,valid-type]
        def log_message(self, *args: object) -> None:
            pass

    return Quiet


@pytest.fixture
def serve() -> Iterator:
    """``serve(handler_class)`` -> base URL of an HTTP server on 127.0.0.1 (stopped after)."""
    servers: list[http.server.ThreadingHTTPServer] = []

    def start(handler: type) -> str:
        server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
        threading.Thread(target=server.serve_forever, daemon=True).start()
        servers.append(server)
        return f"http://127.0.0.1:{server.server_address[1]}"

    yield start
    for server in servers:
        server.shutdown()
        server.server_close()


def _flaky(failures: int, status: int = 503) -> type:
    """A handler answering ``status`` ``failures`` times, then 200 to every HEAD/GET."""
    state = {"left": failures, "requests": 0}

    class Flaky(_quiet_handler(http.server.BaseHTTPRequestHandler)):  # type: ignore[misc]
        counts = state

        def _answer(self, body: bytes) -> None:
            state["requests"] += 1
            code = status if state["left"] > 0 else 200
            state["left"] -= 1
            self.send_response(code)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            if self.command == "GET":
                self.wfile.write(body)

        def do_HEAD(self) -> None:  # noqa: N802 (http.server's name)
            self._answer(b"")

        def do_GET(self) -> None:  # noqa: N802
            self._answer(b"<ListBucketResult></ListBucketResult>")

    return Flaky


# --- settings -----------------------------------------------------------------------------


def test_options_from_aws_environment() -> None:
    env = {"AWS_ENDPOINT_URL": "http://minio:9000", "AWS_DEFAULT_REGION": "eu-central-1"}
    assert StorageOptions.from_env(env) == StorageOptions(
        endpoint_url="http://minio:9000", region="eu-central-1")
    env |= {"AWS_ENDPOINT_URL_S3": "https://s3.example", "AWS_REGION": "us-west-2"}
    assert StorageOptions.from_env(env) == StorageOptions(
        endpoint_url="https://s3.example", region="us-west-2")
    assert StorageOptions.from_env({}) == StorageOptions()


def test_flag_overrides_environment_and_travels_to_workers_as_json(monkeypatch) -> None:
    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://from-env:9000")
    monkeypatch.setenv("AWS_REGION", "eu-west-1")
    opts = fs.parse_storage_options('{"anon": true, "extra": {"s3": {"requester_pays": true}}}')
    assert opts.endpoint_url == "http://from-env:9000" and opts.region == "eu-west-1"
    assert opts.anon and opts.extra == {"s3": {"requester_pays": True}}
    # a worker rebuilds exactly these settings from the env var the driver hands it
    assert StorageOptions.from_env({fs.ENV_VAR: opts.to_json()}) == opts
    kwargs = opts.fsspec_kwargs("s3")
    assert kwargs["endpoint_url"] == "http://from-env:9000" and kwargs["anon"] is True
    assert kwargs["client_kwargs"] == {"region_name": "eu-west-1"}
    assert kwargs["requester_pays"] is True
    assert kwargs["config_kwargs"]["retries"] == {"total_max_attempts": 1}
    assert opts.fsspec_kwargs("http") == {}
    assert opts.fsspec_kwargs("gs") == {"token": "anon"}


def test_fsspec_own_options_pass_as_they_are() -> None:
    opts = fs.parse_storage_options(
        '{"client_kwargs": {"region_name": "eu-west-3"}, "config_kwargs": {"read_timeout": 9},'
        ' "requester_pays": true, "extra": {"s3": {"client_kwargs": {"verify": false}}}}')
    assert opts.fsspec == {"client_kwargs": {"region_name": "eu-west-3"},
                           "config_kwargs": {"read_timeout": 9}, "requester_pays": True}
    kwargs = opts.fsspec_kwargs("s3")
    assert kwargs["client_kwargs"] == {"region_name": "eu-west-3", "verify": False}
    assert kwargs["config_kwargs"]["read_timeout"] == 9 and kwargs["requester_pays"] is True
    assert kwargs["config_kwargs"]["retries"] == {"total_max_attempts": 1}
    # the HTTP filesystem takes client_kwargs too, but not requester_pays
    assert opts.fsspec_kwargs("https") == {"client_kwargs": {"region_name": "eu-west-3"}}
    assert StorageOptions.from_env({fs.ENV_VAR: opts.to_json()}) == opts
    for secret in ('{"client_kwargs": {"aws_secret_access_key": "x"}}', '{"key": "x"}'):
        with pytest.raises(ValueError, match="credentials"):
            StorageOptions.from_json(secret)


def test_no_process_wide_patching_of_s3fs() -> None:
    import s3fs.core

    retryable, handler = s3fs.core.S3_RETRYABLE_ERRORS, s3fs.core.CUSTOM_ERROR_HANDLER
    configure_storage(StorageOptions(endpoint_url=f"http://127.0.0.1:{_closed_port()}", attempts=2,
                                     anon=True))
    try:
        with pytest.raises(fs.Unreachable):  # the whole resolve path, bucket probe included
            fs.resolve("s3://bucket/key")
        filesystem = fs._s3_filesystem_class()(reldrop_attempts=2, anon=True)
        assert isinstance(filesystem, s3fs.S3FileSystem) and filesystem.attempts == 2
        assert s3fs.S3FileSystem.retries == 5  # other s3fs users keep s3fs's own policy
    finally:
        configure_storage(None)
    assert s3fs.core.S3_RETRYABLE_ERRORS is retryable and s3fs.core.CUSTOM_ERROR_HANDLER is handler


@pytest.mark.parametrize(
    ("text", "match"),
    [
        ("{bad", "not valid JSON"),
        ("[1]", "must be a JSON object"),
        ('{"endpont_url": "http://x"}', r"unknown storage option\(s\) \['endpont_url'\]"),
        ('{"endpoint_url": "minio:9000"}', "must start with http"),
        ('{"attempts": 0}', "attempts must be an integer in 1..10"),
        ('{"extra": {"s3": {"secret": "x"}}}', r"must not hold credentials.*extra\.s3\.secret"),
        ('{"extra": {"s3": {"client_kwargs": {"aws_secret_access_key": "x"}}}}', "credentials"),
    ],
)
def test_bad_storage_options_are_one_line_errors(text: str, match: str, capsys) -> None:
    with pytest.raises(SystemExit):
        train_args(["--storage-options", text])
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert "--storage-options" in err
    assert re.search(match, err), err


def test_storage_options_as_config_key(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.delenv(fs.ENV_VAR, raising=False)
    path = tmp_path / "job.toml"
    path.write_text("storage-options = '{\"endpoint_url\": \"http://minio.storage:9000\"}'\n")
    args = train_args(["--config", str(path)])
    assert args.storage_options.endpoint_url == "http://minio.storage:9000"
    assert train_args([]).storage_options is None  # default: the environment's, at run time


def test_driver_hands_settings_to_ray_workers(monkeypatch) -> None:
    import ray

    from reldrop.pipeline.training import driver
    from reldrop.pipeline.training.config import TrainConfig

    for name in ("AWS_ENDPOINT_URL_S3", "AWS_REGION"):
        monkeypatch.setenv(name, "")
        monkeypatch.delenv(name)
    monkeypatch.setattr(storage, "_configured", None)
    opts = configure_storage(StorageOptions(endpoint_url="http://minio:9000", region="r1"))
    calls: list[dict] = []
    monkeypatch.setattr(ray, "is_initialized", lambda: False)
    monkeypatch.setattr(ray, "init", lambda **kw: calls.append(kw))
    driver.init_ray(TrainConfig(address="ray://head:10001"))
    env_vars = calls[0]["runtime_env"]["env_vars"]
    assert StorageOptions.from_env(env_vars) == opts
    assert env_vars["AWS_ENDPOINT_URL_S3"] == "http://minio:9000"  # pyarrow's own S3 (Ray Train)
    assert not any("KEY" in k or "SECRET" in k for k in env_vars), "credentials stay in the env"
    configure_storage(StorageOptions())
    assert worker_env() == {}


# --- one-line errors, retries (real servers, no Ray) ---------------------------------------


def _one_line(err: pytest.ExceptionInfo, *words: str) -> str:
    text = str(err.value)
    assert "\n" not in text, text
    for word in words:
        assert word in text, text
    return text


def _job_line(capsys: pytest.CaptureFixture[str], argv: list[str], *words: str) -> str:
    """Run a job that must fail: exit code 2 and one line on stderr holding ``words``."""
    assert cli(argv) == 2
    lines = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith(f"reldrop {argv[0]}: "), lines
    for word in words:
        assert word in lines[0], lines[0]
    return lines[0]


def test_no_such_bucket(s3_env: str, capsys: pytest.CaptureFixture[str]) -> None:
    _job_line(capsys, ["make-shards", "--dataset", "digits", "--limit", "20", "--no-progress",
                       "--out", "s3://no-such-bucket/ds", "--storage-options", _options(s3_env)],
              "'no-such-bucket'", "s3://no-such-bucket/ds", s3_env, "create it")
    with pytest.raises(NoSuchBucket):
        resolve("s3://no-such-bucket/ds/manifest.parquet")


def test_access_denied(s3_env: str) -> None:
    import boto3
    import requests

    _make_bucket(s3_env, "private")
    # moto checks signatures from here on, after two free calls that make a user without rights
    requests.post(f"{s3_env}/moto-api/reset-auth", data=b"2", timeout=5).raise_for_status()
    try:
        iam = boto3.client("iam", endpoint_url=s3_env, region_name="us-east-1")
        iam.create_user(UserName="nobody")
        key = iam.create_access_key(UserName="nobody")["AccessKey"]
        with pytest.MonkeyPatch.context() as mp:
            mp.setenv("AWS_ACCESS_KEY_ID", key["AccessKeyId"])
            mp.setenv("AWS_SECRET_ACCESS_KEY", key["SecretAccessKey"])
            configure_storage(StorageOptions(endpoint_url=s3_env))
            with pytest.raises(AccessDenied) as err:
                resolve("s3://private/ds/manifest.parquet")
    finally:
        requests.post(f"{s3_env}/moto-api/reset-auth", data=b"inf", timeout=5).raise_for_status()
    _one_line(err, "access denied", "'private'", "s3://private/ds/manifest.parquet", "Secret")


def test_missing_credentials(
    s3_env: str, monkeypatch, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "none"))
    _job_line(capsys, ["train", "--train", "s3://bucket/ds#train", "--storage-options",
                       _options(s3_env)],
              "no credentials", "s3://bucket/ds", "AWS_ACCESS_KEY_ID", "anon")
    with pytest.raises(MissingCredentials):
        resolve("s3://bucket/ds/manifest.parquet")


def test_unreachable_endpoint_fails_fast(s3_env: str, capsys: pytest.CaptureFixture[str]) -> None:
    endpoint = f"http://127.0.0.1:{_closed_port()}"
    start = time.perf_counter()
    before = storage_retries()
    _job_line(capsys, ["train", "--train", "s3://bucket/ds#train", "--storage-options",
                       _options(endpoint)],
              "cannot reach", endpoint, "s3://bucket/ds", "AWS_ENDPOINT_URL")
    assert time.perf_counter() - start < 10, "connection refused is not retried"
    assert storage_retries() == before


def test_unreachable_http_host(s3_env: str) -> None:
    url = f"http://127.0.0.1:{_closed_port()}/ds/manifest.parquet"
    with pytest.raises(Unreachable) as err:
        resolve(url)
    _one_line(err, "cannot reach", url)


def test_transient_errors_are_retried_with_backoff_and_counted(s3_env: str, serve) -> None:
    handler = _flaky(failures=2)
    endpoint = serve(handler)
    configure_storage(StorageOptions(endpoint_url=endpoint, attempts=4))
    before = storage_retries()
    resolve("s3://flaky/ds")  # the bucket probe meets two 503s, then succeeds
    assert storage_retries() - before == 2
    assert handler.counts["requests"] == 3


def test_retries_are_bounded(s3_env: str, serve) -> None:
    handler = _flaky(failures=1000, status=500)
    endpoint = serve(handler)
    configure_storage(StorageOptions(endpoint_url=endpoint, attempts=3))
    start = time.perf_counter()
    with pytest.raises(OSError):
        resolve("s3://broken/ds")
    assert handler.counts["requests"] == 3
    assert time.perf_counter() - start < 5


def test_http_retries_transient_errors(s3_env: str, serve) -> None:
    handler = _flaky(failures=4, status=502)
    url = serve(handler) + "/ds/manifest.parquet"
    before = storage_retries()
    resolve(url)  # fsspec tries HEAD then GET per call: two calls fail, the third succeeds
    assert storage_retries() - before == 2
    assert handler.counts["requests"] == 5


# --- the whole path through the CLI, on the shared Ray cluster -----------------------------


@pytest.mark.ray
@pytest.mark.slow
def test_ray_worker_sees_the_drivers_settings(ray_local, s3_env: str) -> None:
    opts = configure_storage(StorageOptions(endpoint_url="http://minio:9000", region="r9",
                                            extra={"s3": {"requester_pays": True}}))

    @ray_local.remote(num_cpus=0.1)
    def settings_in_worker() -> str:

        return current_storage_options().to_json()

    job = settings_in_worker.options(runtime_env={"env_vars": worker_env()})
    assert StorageOptions.from_json(ray_local.get(job.remote(), timeout=120),
                                   base=StorageOptions()) == opts


def _read(url: str) -> bytes:
    filesystem, path = resolve(url)
    return bytes(filesystem.cat_file(path))


@pytest.mark.ray
@pytest.mark.slow
def test_s3_round_trip(ray_local, s3_env: str, tmp_path: Path) -> None:
    _make_bucket(s3_env, "reldrop")
    opts = ["--storage-options", _options(s3_env, region="us-east-1")]
    ds = "s3://reldrop/digits"
    assert cli(["make-shards", "--dataset", "digits", "--limit", "400", "--shard-size", "100",
                "--no-progress", "--out", ds, *opts]) == 0
    assert cli(["train", "--train", f"{ds}#train", "--test", f"{ds}#test", "--model", "small-cnn",
                "--mode", "async", "--explainers", "1", "--epochs", "1", "--limit", "256",
                "--batch-size", "64", "--num-cpus", "2", "--out", "s3://reldrop/run", *opts]) == 0
    report_bytes = _read("s3://reldrop/run/report.json")
    report = json.loads(report_bytes)
    assert report["counts"]["trained"] == 256 and report["final"]["test_accuracy"] is not None
    assert report["paths"]["checkpoint"] == "s3://reldrop/run/model.safetensors"
    checkpoint = tmp_path / "model.safetensors"
    checkpoint.write_bytes(_read(report["paths"]["checkpoint"]))

    summary_out = cli(["explain", "--checkpoint", str(checkpoint), "--data", f"{ds}#train", *opts])
    assert summary_out == 0
    filesystem, root = resolve(ds)
    columns = sorted(filesystem.glob(f"{root}/relevance/train-*.parquet"))
    assert len(columns) == 4, columns  # one column shard per data shard, next to the data

    assert cli(["evaluate", "--checkpoint", str(checkpoint), "--data", f"{ds}#test",
                "--limit", "40", "--no-plots", "--out", str(tmp_path / "eval"), *opts]) == 0
    evaluation = json.loads((tmp_path / "eval" / "evaluation.json").read_text())
    assert evaluation["checkpoint"] == str(checkpoint)

    # storage settings and credentials stay out of what the run writes
    for name, data in (("report.json", report_bytes),
                       ("manifest.parquet", _read(f"{ds}/manifest.parquet")),
                       ("evaluation.json", (tmp_path / "eval" / "evaluation.json").read_bytes())):
        for secret in (S3_KEY_ID, S3_SECRET, s3_env.split("//")[1]):
            assert secret.encode() not in data, f"{name} holds {secret!r}"


@pytest.mark.ray
@pytest.mark.slow
def test_train_over_http(ray_local, s3_env: str, tmp_path: Path, serve) -> None:
    root = tmp_path / "site" / "digits"
    assert cli(["make-shards", "--dataset", "digits", "--limit", "200", "--shard-size", "80",
                "--no-progress", "--out", str(root)]) == 0
    handler = functools.partial(
        _quiet_handler(http.server.SimpleHTTPRequestHandler), directory=str(root.parent))
    url = serve(handler) + "/digits"
    out = tmp_path / "run"
    assert cli(["train", "--train", f"{url}#train", "--test", f"{url}#test", "--augment", "none",
                "--epochs", "1", "--limit", "128", "--num-cpus", "2", "--out", str(out)]) == 0
    report = json.loads((out / "report.json").read_text())
    assert report["counts"]["trained"] == 128
    assert report["config"]["train"] == f"{url}#train"
