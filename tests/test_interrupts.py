"""Clean interrupts (issue 24): SIGINT -> one line and exit 130, SIGTERM -> 143 without a C
stack dump, a local cluster goes with the job, nothing of it outlives kill -9 of the driver."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from reldrop.jobs.cli import _one_line
from reldrop.pipeline.interrupts import run_interruptible
from reldrop.pipeline.training.ray_results import clear_previous_runs, last_checkpoint

#: a job command that says "ready" and then waits (optionally on a local Ray it started)
JOB = '''
import sys, time, types
from reldrop.jobs import cli

def main(args):
    if args.ray:
        import ray
        from reldrop.pipeline.interrupts import after_ray_init, run_interruptible
        ray.init(num_cpus=1, include_dashboard=False, configure_logging=False)
        after_ray_init(local=True)
        print("ready", flush=True)
        run_interruptible(lambda: time.sleep(120))
    print("ready", flush=True)
    time.sleep(120)

job = types.ModuleType("reldrop.jobs.waiting")
job.parse_args = lambda argv: types.SimpleNamespace(out=argv[0], ray="--ray" in argv)
job.main = main
sys.modules[job.__name__] = job
cli.COMMANDS["waiting"] = "waiting"
sys.argv = ["reldrop", "waiting", *sys.argv[1:]]
sys.exit(cli.main())
'''


def _start(tmp_path: Path, *args: str) -> subprocess.Popen[str]:
    proc = subprocess.Popen([sys.executable, "-c", JOB, str(tmp_path / "out"), *args],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert proc.stdout is not None
    line = proc.stdout.readline()
    assert line.strip() == "ready", (line, proc.stderr.read() if proc.stderr else "")
    return proc


@pytest.mark.parametrize(("sig", "code", "name"), [(signal.SIGINT, 130, "SIGINT"),
                                                    (signal.SIGTERM, 143, "SIGTERM")])
def test_signal_ends_a_job_with_one_line_and_its_exit_code(tmp_path, sig, code, name) -> None:
    proc = _start(tmp_path)
    proc.send_signal(sig)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == code, err
    assert err.strip().splitlines()[-1] == (
        f"reldrop waiting: interrupted ({name}); partial outputs in {tmp_path / 'out'}")
    assert "Traceback" not in err


def _descendants(pid: int) -> list[int]:
    tree: dict[int, list[int]] = {}
    for name in os.listdir("/proc"):
        if name.isdigit():
            try:
                stat = Path(f"/proc/{name}/stat").read_text()
            except OSError:
                continue
            tree.setdefault(int(stat[stat.rindex(")") + 2:].split()[1]), []).append(int(name))
    found, queue = [], [pid]
    while queue:
        for child in tree.get(queue.pop(), []):
            found.append(child)
            queue.append(child)
    return found


def _running(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat[stat.rindex(")") + 2] not in "ZX"


@pytest.mark.ray
@pytest.mark.slow
@pytest.mark.skipif(not os.path.isdir("/proc/self"), reason="needs /proc")
def test_sigterm_with_local_ray_exits_143_without_a_stack_dump(tmp_path) -> None:
    proc = _start(tmp_path, "--ray")
    cluster = [p for p in _descendants(proc.pid) if _running(p)]
    assert cluster, "ray.init started no processes?"
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 143, err[-2000:]
    assert "SIGTERM received" not in err and "logging.cc" not in err
    assert err.strip().splitlines()[-1].startswith("reldrop waiting: interrupted (SIGTERM)")
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and any(map(_running, cluster)):
        time.sleep(0.5)
    assert not [p for p in cluster if _running(p)]  # the cluster went with the job


@pytest.mark.ray
@pytest.mark.slow
@pytest.mark.skipif(not os.path.isdir("/proc/self"), reason="needs /proc")
def test_nothing_of_a_local_cluster_outlives_kill_9_of_the_driver(tmp_path) -> None:
    """The leftover-process test: before, ``ray::DashboardAgent`` and ``ray::RuntimeEnvAgent``
    were alive under PID 1 minutes after ``kill -9``; the watchdog ends them."""
    proc = _start(tmp_path, "--ray")
    time.sleep(2)  # the watchdog's first look at the tree
    cluster = [p for p in _descendants(proc.pid) if _running(p)]
    assert len(cluster) >= 3
    proc.kill()
    proc.wait(timeout=10)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and any(map(_running, cluster)):
        time.sleep(0.5)
    left = [Path(f"/proc/{p}/cmdline").read_bytes()[:80] for p in cluster if _running(p)]
    assert not left, left


def test_run_interruptible_returns_and_raises() -> None:
    assert run_interruptible(lambda: 3) == 3
    with pytest.raises(ZeroDivisionError):
        run_interruptible(lambda: 1 / 0)


def test_one_line_drops_ray_retry_text_and_stays_short() -> None:
    ray_text = ("shard 's3://b/d/train-000001.tar': cannot be read (endpoint down)\n"
                "Failed to apply UDF transform after 1/4 attempts (total backoff 0.0s).\n"
                "To change retry attempts, backoff, or which errors are retried, configure "
                "`ray.data.DataContext.get_current()` if you believe this to be transient.")
    assert _one_line(ray_text) == "shard 's3://b/d/train-000001.tar': cannot be read (endpoint down)"
    long = "start " + "x" * 1000 + " the fix"
    line = _one_line(long)
    assert len(line) <= 300 and line.startswith("start ") and line.endswith(" the fix")


def test_ray_results_of_earlier_runs_are_replaced(tmp_path) -> None:
    storage = tmp_path / "ray_results"
    for name in ("reldrop-old1", "reldrop-old2", "reldrop-new", "someone-else"):
        (storage / name).mkdir(parents=True)
    (storage / "reldrop-old1" / "checkpoint_1").mkdir()
    (storage / "reldrop-old1" / "checkpoint_1" / "train_state.json").write_text(
        '{"step": 30, "epochs": [{}, {}]}')
    assert last_checkpoint(tmp_path) == {"epochs": 2, "step": 30,
                                         "path": str(storage / "reldrop-old1" / "checkpoint_1")}
    clear_previous_runs(str(storage), keep="reldrop-new")
    assert sorted(p.name for p in storage.iterdir()) == ["reldrop-new", "someone-else"]
    assert last_checkpoint(tmp_path) is None
