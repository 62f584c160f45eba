"""End-to-end tests of the Ray pipeline on a small local cluster: async training, versions and
staleness, exactly-once delivery under explainer and weight-store failures, corrupt shards,
precomputed relevance."""

from __future__ import annotations

import json
import shutil
import threading
import time
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch

from reldrop.pipeline.explanation.pool import POOL_NAMESPACE, explainer_name
from reldrop.pipeline.training.config import TrainConfig
from reldrop.pipeline.training.driver import run_training

pytestmark = [pytest.mark.ray, pytest.mark.slow]


def _config(decoy_root: str, out: Path, **kw) -> TrainConfig:
    base = dict(
        train=f"{decoy_root}#train", test=f"{decoy_root}#test-id", ood_test=f"{decoy_root}#test",
        epochs=2, batch_size=32, out=str(out), record_keys=True,
        threads=1,
    )
    base.update(kw)
    return TrainConfig(**base)


def _assert_exactly_once(report: dict, expected: int) -> None:
    epochs = report["keys"][0]
    if len(epochs) > 1 and report["config"]["shuffle"]:  # a new order every epoch
        assert epochs[0] != epochs[1]
    for worker_keys in zip(*report["keys"]):  # per epoch, across workers
        keys = [k for w in worker_keys for k in w]
        dupes = [k for k, c in Counter(keys).items() if c > 1]
        assert not dupes, f"keys delivered twice: {dupes[:5]}"
        assert len(keys) == expected


def _killer(run_id: str, stop: threading.Event, killed: list) -> None:
    """Kill explainer 0 (Ray restarts it) once it has explained a few chunks."""
    import ray

    deadline = time.monotonic() + 240
    while not stop.is_set() and time.monotonic() < deadline:
        try:
            actor = ray.get_actor(explainer_name(run_id, 0), namespace=POOL_NAMESPACE)
            if ray.get(actor.stats.remote(), timeout=5)["batches"] >= 4:
                ray.kill(actor, no_restart=False)
                killed.append("explainer")
                return
        except Exception:  # noqa: BLE001 - not started yet
            pass
        time.sleep(0.2)


def _run_with_kill(cfg: TrainConfig) -> tuple[dict, list]:
    run_id = f"kill{int(time.time())}"
    stop, killed = threading.Event(), []
    thread = threading.Thread(target=_killer, args=(run_id, stop, killed), daemon=True)
    thread.start()
    try:
        report = run_training(cfg, verbose=False, run_id=run_id)
    finally:
        stop.set()
        thread.join(timeout=10)
    return report, killed


def test_async_end_to_end_with_explainer_killed(ray_local, decoy_root, tmp_path):
    cfg = _config(decoy_root, tmp_path / "run", explainers=1)
    report, killed = _run_with_kill(cfg)
    assert killed == ["explainer"]
    saved = json.loads((tmp_path / "run" / "report.json").read_text())
    for key in ("config", "epochs", "final", "throughput", "staleness", "counts", "paths", "handoff"):
        assert key in saved
    assert Path(saved["paths"]["checkpoint"]).is_file()
    assert set(saved["epochs"][0]) >= {"loss", "train_accuracy", "test_accuracy", "ood_accuracy", "samples"}
    # every row explained carries a version, and versions advance (published every step)
    assert saved["versions_seen"] and min(saved["versions_seen"]) >= 0
    assert len(saved["versions_seen"]) >= 10
    # the bound holds by construction: no row is staler than 2 steps, none is stale
    assert saved["staleness_bound"] == 2 and saved["staleness"]["max"] <= 2
    assert saved["counts"]["stale"] == 0
    # the kill was seen and its chunks explained elsewhere (the restarted actor or in the loop)
    handoff = saved["handoff"]
    assert handoff["lost"] >= 1 and handoff["resent"] + handoff["in_loop_rows"] >= 1
    _assert_exactly_once(report, 320)
    assert 0 <= saved["throughput"]["trainer_wait_fraction"] <= 1
    # Ray's own result tools see flat scalars per epoch
    from ray.train import Result

    (run_dir,) = (tmp_path / "run" / "ray_results").iterdir()
    frame = Result.from_path(str(run_dir)).metrics_dataframe
    assert {"loss", "train_accuracy", "test_accuracy", "ood_accuracy", "samples_per_s",
            "staleness_max"} <= set(frame.columns)
    assert len(frame) >= 1 and (frame["staleness_max"] <= 2).all()


def test_corrupt_shard_is_skipped_and_counted(ray_local, decoy_root, tmp_path):
    root = tmp_path / "data"
    shutil.copytree(decoy_root, root)
    victim = sorted(root.glob("train-*.tar"))[2]
    victim.write_bytes(victim.read_bytes()[: victim.stat().st_size // 2])
    cfg = _config(str(root), tmp_path / "run", mode="sync", epochs=1, on_error="skip",
                  record_keys=True)
    report = run_training(cfg, verbose=False)
    assert report["counts"]["skipped"] == 50
    assert [s["url"].rsplit("/", 1)[-1] for s in report["counts"]["skipped_shards"]] == [victim.name]
    assert report["counts"]["seen"] == 270
    with pytest.raises(Exception, match=victim.name):
        run_training(_config(str(root), tmp_path / "run2", mode="sync", epochs=1,
                             on_error="raise"), verbose=False)


def test_precomputed_mode(ray_local, decoy_root, tmp_path):
    from reldrop.checkpoint import ModelSpec, save_checkpoint
    from reldrop.pipeline.explanation.precompute import explain_dataset

    root = tmp_path / "data"
    shutil.copytree(decoy_root, root)
    spec = ModelSpec(name="small-cnn", in_channels=1, num_classes=10)
    save_checkpoint(tmp_path / "frozen.safetensors", spec.build(), spec)
    summary = explain_dataset(str(tmp_path / "frozen.safetensors"), f"{root}#train")
    assert summary["samples"] == 320 and summary["shards"] == 7
    cfg = _config(str(root), tmp_path / "run", mode="precomputed", precomputed=str(root), epochs=1)
    report = run_training(cfg, verbose=False)
    assert report["counts"]["occluded"] > 0
    assert report["versions_seen"] == [-1]
    _assert_exactly_once(report, 320)


def test_explainer_matches_direct_relevance(ray_local):
    from reldrop.checkpoint import ModelSpec, load_numpy_state, state_to_numpy
    from reldrop.occlusion import OcclusionConfig
    from reldrop.pipeline.explanation.stage import ExplainerStage, StageConfig
    from reldrop.pipeline.explanation.weights import WeightStoreClient
    from reldrop.relevance import relevance

    spec = ModelSpec(name="small-cnn", in_channels=1, num_classes=10)
    torch.manual_seed(3)
    model = spec.build()
    client = WeightStoreClient("direct", max_ahead=10_000, create=True)
    try:
        assert client.publish(5, state_to_numpy(model)) == 5
        stage = ExplainerStage(StageConfig(run_id="direct", spec=spec.to_json(),
                                           occlusion=OcclusionConfig(strategy="reldrop-pixel", p=1.0)))
        assert stage.version == 5
        rng = np.random.default_rng(0)
        batch = {"image": rng.integers(0, 256, (6, 1, 28, 28), dtype=np.uint8),
                 "label": rng.integers(0, 10, 6), "key": np.array([f"k{i}" for i in range(6)])}
        x = spec.normalization.to_model(torch.from_numpy(batch["image"]))
        got = stage._relevance(batch, x, torch.ones(6, dtype=torch.bool))
        fresh = spec.build()
        load_numpy_state(fresh, state_to_numpy(model))
        want = relevance(fresh, x, torch.from_numpy(batch["label"]), bounds=spec.normalization.bounds())
        torch.testing.assert_close(got, want)
        out = stage(dict(batch))
        assert (out["model_version"] == 5).all()
        # a stale publish is rejected
        with pytest.raises(ValueError, match="not newer"):
            client.publish(3, state_to_numpy(model))
    finally:
        client.kill()


def test_data_error_finds_the_shard_line():
    from reldrop.pipeline.data.codecs import SampleError
    from reldrop.pipeline.data.stream import data_error

    wrapped = RuntimeError("Traceback ...\n" + str(SampleError("s3://b/train-000001.tar", "k7", "label 12 >= 10")) + "\nmore")
    assert data_error(wrapped) == "shard 's3://b/train-000001.tar', sample 'k7': label 12 >= 10"
    assert data_error(RuntimeError("unrelated")) is None



def _skipping_dataset(root: Path, n: int = 256, bad: range = range(64, 96)) -> None:
    """``n`` 8x8 images of 4 classes; the rows in ``bad`` carry label 99 (out of range)."""
    from dataclasses import replace

    from reldrop.pipeline.data.manifest import read_manifest, write_manifest
    from reldrop.pipeline.data.shards import write_dataset

    rng = np.random.default_rng(0)
    samples = [{"key": f"s{i:04d}", "image": rng.integers(0, 255, (1, 8, 8), dtype=np.uint8),
                "label": 99 if i in bad else int(i % 4)} for i in range(n)]
    # written for 100 classes, then declared as 4: labels 99 are bad
    write_dataset(str(root), {"train": samples}, dataset="skips", num_classes=100, shard_size=32)
    write_manifest(replace(read_manifest(str(root)), num_classes=4))


def _children(pid: int) -> list[tuple[int, str]]:
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[-1].split()
            title = (stat.parent / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if int(fields[1]) == pid:
            found.append((int(stat.parent.name), title))
    return found


def _kill_in_cluster_of(driver: int, out: Path, stop: threading.Event, killed: list) -> None:
    """In the local cluster of process ``driver``: SIGKILL an explainer actor once the first
    epoch checkpoint exists, and a Ray Train worker once the second does."""
    import os
    import signal

    deadline = time.monotonic() + 400
    targets = [(1, "ray::ExplainerActor"), (2, "ray::RayTrainWorker")]
    while targets and not stop.is_set() and time.monotonic() < deadline:
        checkpoints = len(list((out / "ray_results").glob("*/checkpoint_*")))
        raylets = [p for p, title in _children(driver) if "raylet" in title]
        if raylets and checkpoints >= targets[0][0]:
            for pid, title in _children(raylets[0]):
                if title.startswith(targets[0][1]):
                    os.kill(pid, signal.SIGKILL)
                    killed.append(targets.pop(0)[1])
                    break
        time.sleep(0.1)


def test_two_trainers_async_survive_explainer_and_trainer_kills_and_skipped_ranks(tmp_path):
    """Two DDP workers (gloo), each with an explainer of its own, a bound of 2, one out-of-range
    shard under --on-error skip (some steps leave a rank without a single row: it takes a
    zero-weight step), an explainer killed after epoch 1 and a trainer after epoch 2 (resumed
    from its checkpoint, --max-failures 1). Every key once per epoch, staleness within the
    bound, skips counted. Its own process: the shared 2-CPU cluster holds one trainer."""
    import subprocess
    import sys

    root, out = tmp_path / "data", tmp_path / "run"
    _skipping_dataset(root)
    cmd = [sys.executable, "-m", "reldrop.jobs.train", "--train", f"{root}#train",
           "--trainers", "2", "--explainers", "2", "--mode", "async", "--on-error", "skip",
           "--epochs", "3", "--batch-size", "16", "--num-cpus", "5", "--record-keys",
           "--max-failures", "1", "--out", str(out)]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    stop, killed = threading.Event(), []
    thread = threading.Thread(target=_kill_in_cluster_of, args=(proc.pid, out, stop, killed),
                              daemon=True)
    thread.start()
    try:
        output, _ = proc.communicate(timeout=500)
    finally:
        stop.set()
        thread.join(timeout=10)
    assert proc.returncode == 0, output[-3000:]
    assert killed == ["ray::ExplainerActor", "ray::RayTrainWorker"]
    report = json.loads((out / "report.json").read_text())
    assert report["restarts"] >= 1 and len(report["keys"]) == 2
    assert report["counts"]["skipped"] == 3 * 32 and report["counts"]["trained"] == 3 * 224
    assert report["staleness"]["max"] <= report["staleness_bound"] == 2
    assert report["counts"]["stale"] == 0
    _assert_exactly_once(report, 256)


def _raylet_pid() -> int:
    import ray
    from ray._private import ray_constants

    node = ray._private.worker._global_node
    return node.all_processes[ray_constants.PROCESS_TYPE_RAYLET][0].process.pid


def _kill_trainer_after_first_checkpoint(out: Path, stop: threading.Event, killed: list) -> None:
    """SIGKILL this cluster's Ray Train worker process once the first epoch checkpoint exists
    (other Ray clusters on the machine are left alone: the worker's parent is our raylet)."""
    import os
    import signal

    raylet = _raylet_pid()
    deadline = time.monotonic() + 300
    while not stop.is_set() and time.monotonic() < deadline:
        # the controller's snapshot: the checkpoint is registered, a restart will get it
        if any((out / "ray_results").glob("*/checkpoint_manager_snapshot.json")):
            for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
                try:
                    title = cmdline.read_bytes().replace(b"\0", b" ").decode(errors="replace")
                    stat = (cmdline.parent / "stat").read_text().rsplit(")", 1)[-1].split()
                except OSError:
                    continue
                if title.startswith("ray::RayTrainWorker") and int(stat[1]) == raylet:
                    os.kill(int(cmdline.parent.name), signal.SIGKILL)
                    killed.append(int(cmdline.parent.name))
                    return
        time.sleep(0.2)


def test_killed_trainer_resumes_from_its_epoch_checkpoint(ray_local, decoy_root, tmp_path):
    """A trainer worker killed after epoch 1: Ray Train restarts the group, the loop resumes at
    epoch 2 from the checkpoint (model, optimiser, step, counts) and the report counts it."""
    out = tmp_path / "run"
    cfg = _config(decoy_root, out, mode="sync", augment="none", epochs=3, max_failures=1)
    stop, killed = threading.Event(), []
    thread = threading.Thread(target=_kill_trainer_after_first_checkpoint,
                              args=(out, stop, killed), daemon=True)
    thread.start()
    try:
        report = run_training(cfg, verbose=False)
    finally:
        stop.set()
        thread.join(timeout=10)
    assert killed, "no trainer worker was killed"
    assert report["restarts"] >= 1
    assert [e["epoch"] for e in report["epochs"]] == [1, 2, 3]
    steps = [e["steps"] for e in report["epochs"]]
    assert steps == sorted(steps) and steps[0] > 0  # the step count went on, not from zero
    # every epoch's keys once: the resumed run restarted its epoch from the start
    _assert_exactly_once(report, 320)
