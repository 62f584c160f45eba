"""Ray Jobs: the documented `ray job submit` commands parse, and a real submission works.

The slow test starts its own Ray head (`ray start --head --block`) with its own ports and temp
dir, so it neither joins nor disturbs other local clusters, submits jobs through the dashboard's
job API exactly as k8s/README.md shows, and stops that head by killing only the processes it
started (never `ray stop`, which would end every Ray on the machine).
"""

from __future__ import annotations

import ast
import importlib
import importlib.util
import os
import re
import secrets
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from reldrop.jobs.cli import COMMANDS

REPO = Path(__file__).resolve().parents[1]
README = REPO / "k8s" / "README.md"


def _submit_commands() -> list[str]:
    """Every `ray job submit ...` command in the README's shell blocks, continuations joined."""
    blocks = re.findall(r"```bash\n(.*?)```", README.read_text(), re.S)
    commands = []
    for block in blocks:
        for line in block.replace("\\\n", " ").splitlines():
            line = line.split(" #")[0].strip()
            if line.startswith("ray job submit"):
                commands.append(line)
    return commands


SUBMITS = _submit_commands()


def _entrypoint_module(argv: list[str]) -> tuple[str, list[str]]:
    if argv[:2] == ["python", "-m"] and argv[2] == "reldrop.jobs.cli":
        return f"reldrop.jobs.{COMMANDS[argv[3]]}", argv[4:]
    if argv[:2] == ["python", "-m"] and argv[2].startswith("reldrop.jobs."):
        return argv[2], argv[3:]
    if argv[0] == "reldrop":
        return f"reldrop.jobs.{COMMANDS[argv[1]]}", argv[2:]
    raise AssertionError(f"not a reldrop job entrypoint: {argv}")


def test_readme_documents_every_job() -> None:
    modules = {_entrypoint_module(shlex.split(c.split(" -- ", 1)[1]))[0] for c in SUBMITS}
    assert {"reldrop.jobs.make_shards", "reldrop.jobs.train"} <= modules, modules
    text = README.read_text()
    for module in ("explain", "evaluate", "compare"):
        assert module in text


@pytest.mark.parametrize("command", SUBMITS)
def test_documented_submit_parses(command: str, monkeypatch: pytest.MonkeyPatch) -> None:
    ray_part, entry = command.split(" -- ", 1)
    ray_argv = shlex.split(ray_part)
    assert "--working-dir" in ray_argv, "jobs upload the working copy"
    module_name, args = _entrypoint_module(shlex.split(entry))
    if importlib.util.find_spec(module_name) is None:
        pytest.skip(f"{module_name} does not exist yet")
    monkeypatch.chdir(REPO)  # --working-dir . is the repository root
    module = importlib.import_module(module_name)
    module.parse_args(args)
    # no literal credentials: only references to the submitting shell's environment
    values = re.findall(r'"(?:AWS_[A-Z_]+|GOOGLE_[A-Z_]+)\\?": \\?"([^"\\]*)', command)
    assert ("env_vars" in command) == bool(values), command
    assert all(v.startswith("$") for v in values), values


# --- a real submission ------------------------------------------------------------------------


def _free_ports(n: int) -> list[int]:
    sockets = [socket.socket() for _ in range(n)]
    try:
        for s in sockets:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in sockets]
    finally:
        for s in sockets:
            s.close()


def _descendants(root: int) -> list[int]:
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        children.setdefault(ppid, []).append(int(entry.name))
    found, todo = [], [root]
    while todo:
        for child in children.get(todo.pop(), []):
            found.append(child)
            todo.append(child)
    return found


def _kill_tree(proc: subprocess.Popen[bytes]) -> None:
    """SIGKILL the `ray start --block` process and every process below it, by pid."""
    for _ in range(3):  # a dying raylet may still have been starting a worker
        pids = _descendants(proc.pid)
        for pid in [proc.pid, *pids]:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        if not pids:
            break
        time.sleep(0.2)
    proc.wait(timeout=30)


@pytest.fixture(scope="module")
def ray_head() -> Iterator[tuple[str, dict[str, str]]]:
    """Dashboard URL and environment of a private single-node Ray head."""
    bindir = Path(sys.executable).parent
    ray_cli = bindir / "ray"
    if not ray_cli.exists():
        pytest.skip(f"no ray CLI next to {sys.executable}")
    if importlib.util.find_spec("aiohttp") is None:
        pytest.skip("the job server needs ray[default] (dev extra): aiohttp is missing")
    if not Path("/proc").is_dir():
        pytest.skip("stopping the private head needs /proc (Linux)")
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_")}
    env["PATH"] = f"{bindir}{os.pathsep}{env.get('PATH', '')}"  # `python` in jobs = this venv
    env["RAY_USAGE_STATS_ENABLED"] = "0"
    # Ray 2.60 turns token auth on by itself once ~/.ray/auth_token exists (any local
    # ray.init() writes one): use a private token, so the test runs the same either way
    env["RAY_AUTH_MODE"] = "token"
    env["RAY_AUTH_TOKEN"] = secrets.token_hex(32)
    gcs, dash, client, agent, agent_grpc, runtime_env, metrics = _free_ports(7)
    temp_dir = tempfile.mkdtemp(prefix="rdray")  # short: Ray puts unix sockets below it
    log = open(Path(temp_dir) / "ray-start.log", "wb")  # noqa: SIM115
    proc = subprocess.Popen(
        [
            str(ray_cli), "start", "--head", "--block", "--disable-usage-stats",
            "--node-ip-address", "127.0.0.1",
            "--port", str(gcs), "--dashboard-port", str(dash), "--include-dashboard", "true",
            "--dashboard-host", "127.0.0.1", "--ray-client-server-port", str(client),
            "--dashboard-agent-listen-port", str(agent),
            "--dashboard-agent-grpc-port", str(agent_grpc),
            "--runtime-env-agent-port", str(runtime_env), "--metrics-export-port", str(metrics),
            "--num-cpus", "1", "--object-store-memory", str(100 * 1024 * 1024),
            "--temp-dir", temp_dir,
        ],
        stdout=log, stderr=subprocess.STDOUT, env=env,
    )  # fmt: skip
    url = f"http://127.0.0.1:{dash}"
    try:
        deadline = time.monotonic() + 90
        while True:
            request = urllib.request.Request(
                f"{url}/api/version", headers={"Authorization": f"Bearer {env['RAY_AUTH_TOKEN']}"}
            )
            try:
                with urllib.request.urlopen(request, timeout=2):
                    break
            except urllib.error.HTTPError:
                break  # the server answers
            except OSError:
                pass
            if proc.poll() is not None or time.monotonic() > deadline:
                log.flush()
                tail = (Path(temp_dir) / "ray-start.log").read_text()[-3000:]
                pytest.fail(f"Ray head did not come up (rc={proc.poll()}):\n{tail}")
            time.sleep(0.5)
        yield url, env
    finally:
        _kill_tree(proc)
        log.close()
        shutil.rmtree(temp_dir, ignore_errors=True)


def _submit(url: str, env: dict[str, str], *entrypoint: str) -> subprocess.CompletedProcess[str]:
    ray_cli = str(Path(sys.executable).parent / "ray")
    return subprocess.run(
        [ray_cli, "job", "submit", "--address", url, "--working-dir", str(REPO), "--", *entrypoint],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=180,
    )  # fmt: skip


@pytest.mark.slow
@pytest.mark.ray
def test_ray_job_submit_runs_the_cli(ray_head: tuple[str, dict[str, str]]) -> None:
    """The documented form; the same job lists what the working-dir upload contained."""
    url, env = ray_head
    listing = "python -c 'import os; print(\"LISTING\", sorted(os.listdir()))'"
    result = _submit(url, env, "sh", "-c", f"python -m reldrop.jobs.cli --help && {listing}")
    out = result.stdout + result.stderr
    assert result.returncode == 0, out
    assert "usage: reldrop COMMAND" in out and "make-shards" in out
    assert "succeeded" in out
    found = re.search(r"LISTING (\[.*\])", out)
    assert found, out
    names = set(ast.literal_eval(found.group(1)))
    assert {"jobs", "pipeline", "configs", "pyproject.toml"} <= names
    assert not names & {".venv", ".git", "__pycache__"}, names


@pytest.mark.slow
@pytest.mark.ray
def test_failed_job_fails_the_submit(ray_head: tuple[str, dict[str, str]]) -> None:
    url, env = ray_head
    result = _submit(url, env, "python", "-m", "reldrop.jobs.train", "--config", "no-such-file.yaml")
    out = result.stdout + result.stderr
    assert result.returncode != 0, out
    assert "no-such-file.yaml" in out and "does not exist" in out


@pytest.mark.slow
@pytest.mark.ray
def test_ray_job_makes_shards(ray_head: tuple[str, dict[str, str]], tmp_path: Path) -> None:
    if importlib.util.find_spec("reldrop.jobs.make_shards") is None:
        pytest.skip("jobs/make_shards.py does not exist yet")
    url, env = ray_head
    out_dir = tmp_path / "digits"
    argv = ["--dataset", "digits", "--limit", "40", "--shard-size", "16", "--no-progress"]
    argv += ["--out", str(out_dir)]
    importlib.import_module("reldrop.jobs.make_shards").parse_args(argv)
    result = _submit(url, env, "python", "-m", "reldrop.jobs.make_shards", *argv)
    out = result.stdout + result.stderr
    assert result.returncode == 0, out
    assert (out_dir / "manifest.parquet").is_file(), out
    assert sorted(p.name for p in out_dir.glob("train-*.tar")), out
