"""Shared, small, seeded fixtures."""

from __future__ import annotations

import os

os.environ.setdefault("OMP_NUM_THREADS", "2")

import pytest  # noqa: E402
import torch  # noqa: E402
from torch import nn  # noqa: E402

from reldrop.models import build_model  # noqa: E402

torch.set_num_threads(2)


@pytest.fixture
def gen() -> torch.Generator:
    """A seeded CPU generator (fresh per test)."""
    return torch.Generator().manual_seed(1234)


@pytest.fixture
def images() -> torch.Tensor:
    """8 seeded normalised single-channel 16 x 16 images."""
    return torch.randn(8, 1, 16, 16, generator=torch.Generator().manual_seed(0))


@pytest.fixture
def labels() -> torch.Tensor:
    return torch.arange(8) % 3


@pytest.fixture
def clouds() -> torch.Tensor:
    """6 seeded point clouds of 32 points in 3-D."""
    return torch.randn(6, 32, 3, generator=torch.Generator().manual_seed(1))


def _warm_batch_norm(model: nn.Module, inputs: torch.Tensor, steps: int = 3) -> nn.Module:
    """Give every BatchNorm non-trivial running statistics and affine parameters."""
    torch.manual_seed(7)
    for module in model.modules():
        if isinstance(module, (nn.BatchNorm1d, nn.BatchNorm2d)):
            with torch.no_grad():
                module.weight.uniform_(0.5, 1.5)
                module.bias.uniform_(-0.2, 0.2)
            module.momentum = 0.5
    model.train()
    with torch.no_grad():
        for i in range(steps):
            model(inputs * (1 + 0.3 * i) + 0.1 * i)
    return model


@pytest.fixture
def make_model():
    """``make_model(name, in_channels, num_classes, inputs)``: a seeded model, BatchNorm warmed
    on ``inputs`` (train mode on return)."""

    def make(name: str, in_channels: int, num_classes: int, inputs: torch.Tensor) -> nn.Module:
        torch.manual_seed(0)
        model = build_model(name, in_channels=in_channels, num_classes=num_classes)
        return _warm_batch_norm(model, inputs)

    return make


#: fake credentials for the local S3 server: distinctive, so tests can prove no output holds them
S3_KEY_ID = "AKIDRELDROPTEST00001"
S3_SECRET = "reldrop-test-secret-do-not-write"


@pytest.fixture(scope="session")
def s3_endpoint():
    """A real S3-compatible server (moto's threaded server) on 127.0.0.1, on a free port."""
    import logging

    moto_server = pytest.importorskip("moto.server")
    logging.getLogger("werkzeug").setLevel(logging.ERROR)  # no line per request
    server = moto_server.ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    yield f"http://{host}:{port}"
    server.stop()


def _ray_worker_env(request) -> dict[str, str]:
    """What a cluster's pods would carry: the local S3 server's settings and credentials."""
    try:
        import moto.server  # noqa: F401
    except ImportError:
        return {}
    from reldrop.pipeline.data.fs import ENV_VAR, StorageOptions

    endpoint = request.getfixturevalue("s3_endpoint")
    return {
        ENV_VAR: StorageOptions(endpoint_url=endpoint, region="us-east-1").to_json(),
        "AWS_ENDPOINT_URL_S3": endpoint,
        "AWS_REGION": "us-east-1",
        "AWS_ACCESS_KEY_ID": S3_KEY_ID,
        "AWS_SECRET_ACCESS_KEY": S3_SECRET,
    }


@pytest.fixture(scope="session")
def ray_local(request):
    """One small local Ray cluster shared by every Ray test (2 CPUs, like CI); its workers
    reach the session's local S3 server as a cluster's pods would (settings + Secret env)."""
    ray = pytest.importorskip("ray")
    if ray.is_initialized():  # a job run in process started its own: its workers lack the env
        ray.shutdown()
    ray.init(num_cpus=2, include_dashboard=False, configure_logging=False, log_to_driver=False,
             runtime_env={"env_vars": _ray_worker_env(request)})
    yield ray
    ray.shutdown()


@pytest.fixture
def s3_env(s3_endpoint, monkeypatch):
    """This process as a user would set it up for the local S3 server: credentials in the
    environment, the endpoint given by ``--storage-options`` (returned); storage settings,
    checked buckets and cached s3fs instances reset before and after."""
    from reldrop.pipeline.data import fs, storage

    for name in ("AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3", "AWS_REGION", "AWS_DEFAULT_REGION",
                 "AWS_PROFILE", fs.ENV_VAR):
        monkeypatch.setenv(name, "")  # recorded, so whatever a test sets is undone
        monkeypatch.delenv(name)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", S3_KEY_ID)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", S3_SECRET)
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")  # no metadata-service probes
    monkeypatch.setattr(storage, "_configured", None)
    storage.checked.clear()
    _clear_s3fs_cache()
    yield s3_endpoint
    storage.checked.clear()
    _clear_s3fs_cache()


def _clear_s3fs_cache() -> None:
    import s3fs

    from reldrop.pipeline.data.fs import _s3_filesystem_class

    s3fs.S3FileSystem.clear_instance_cache()
    _s3_filesystem_class().clear_instance_cache()


@pytest.fixture(scope="session")
def decoy_root(tmp_path_factory):
    """A small DecoyMNIST (400 digits: 320 train in 7 shards, 80 per test split)."""
    from reldrop.pipeline.data.datasets import build_dataset

    root = tmp_path_factory.mktemp("decoy") / "decoy-mnist"
    build_dataset("decoy-mnist", str(root), seed=0, limit=400, shard_size=50, progress=False)
    return str(root)
