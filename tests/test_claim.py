"""One writer per dataset (issue 24): concurrent ``make-shards`` into one ``--out``."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest

from reldrop.jobs import cli
from reldrop.pipeline.data.claim import DatasetBusy, claim_dataset, lock_url
from reldrop.pipeline.data.fs import resolve
from reldrop.pipeline.data.manifest import verify_dataset


def test_lock_url_is_a_hidden_sibling() -> None:
    assert lock_url("/data/decoy") == "/data/.decoy.lock"
    assert lock_url("s3://bucket/sets/decoy/") == "s3://bucket/sets/.decoy.lock"
    assert lock_url("s3://bucket") == "s3://bucket/.reldrop-build.lock"


@pytest.mark.parametrize("kind", ["local", "memory"])
def test_second_claim_is_refused_and_released(tmp_path: Path, kind: str) -> None:
    root = str(tmp_path / "ds") if kind == "local" else f"memory://claim-{uuid.uuid4().hex}/ds"
    with claim_dataset(root) as lock:
        with pytest.raises(DatasetBusy, match=r"being written by another make-shards .*pid "
                           + str(os.getpid())), claim_dataset(root):
            pass
        fs, path = resolve(lock)
        assert fs.exists(path)
    assert not fs.exists(path)
    with claim_dataset(root):  # free again
        pass


def test_make_shards_while_claimed_exits_2_naming_the_target(tmp_path: Path, capsys) -> None:
    out = str(tmp_path / "digits")
    argv = ["make-shards", "--dataset", "digits", "--out", out, "--limit", "40", "--no-progress"]
    with claim_dataset(out):
        assert cli.main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and repr(out) in err[0] and "another make-shards" in err[0]
    assert not Path(out).exists()
    assert cli.main(argv) == 0


def test_stale_claim_of_a_dead_process_is_taken_over(tmp_path: Path) -> None:
    root = str(tmp_path / "ds")
    fs, path = resolve(lock_url(root))
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True, check=True)
    import socket

    fs.pipe_file(path, json.dumps({"host": socket.gethostname(), "pid": int(dead.stdout),
                                   "created": time.time(), "token": "x"}).encode())
    with pytest.warns(UserWarning, match="stale claim"), claim_dataset(root):
        pass
    fs.pipe_file(path, json.dumps({"host": "elsewhere", "pid": 1, "created": 0.0}).encode())
    with pytest.warns(UserWarning, match="older than"), claim_dataset(root):
        pass


def test_two_concurrent_make_shards_one_wins(tmp_path: Path) -> None:
    """The two-writer test: two processes build one ``--out`` at once; exactly one succeeds,
    the other exits 2 with one line naming the target."""
    out = str(tmp_path / "digits")
    argv = [sys.executable, "-m", "reldrop.jobs.make_shards", "--dataset", "digits", "--out",
            out, "--limit", "300", "--shard-size", "50", "--no-progress"]
    procs = [subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for _ in range(2)]
    results = [(p.wait(timeout=180), p.stderr.read() if p.stderr else "") for p in procs]
    codes = sorted(rc for rc, _ in results)
    assert codes == [0, 2], results
    line = next(err for rc, err in results if rc == 2).strip().splitlines()
    assert len(line) == 1 and repr(out) in line[0], line
    assert verify_dataset(out).num_samples("train") > 0
    assert not Path(lock_url(out)).exists()


def test_claim_on_s3_is_exclusive(s3_env: str) -> None:
    """Object storage: the claim is a conditional put (If-None-Match: *), atomic on S3."""
    import s3fs

    from reldrop.pipeline.data.storage import configure_storage, parse_storage_options

    configure_storage(parse_storage_options(json.dumps({"endpoint_url": s3_env})))
    s3 = s3fs.S3FileSystem(endpoint_url=s3_env, skip_instance_cache=True)
    if not s3.exists("claims"):
        s3.mkdir("claims")
    root = f"s3://claims/ds-{uuid.uuid4().hex[:8]}"
    with claim_dataset(root) as lock:
        assert lock.endswith(".lock")
        with pytest.raises(DatasetBusy, match=repr(root)), claim_dataset(root):
            pass
    with claim_dataset(root):
        pass
