"""One error style for every job (jobs/cli.py): exit code 2 and one line naming the problem,
``--debug`` for the traceback, Ray-wrapped errors unwrapped, hostile config files and
checkpoints refused quickly."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from reldrop.checkpoint import ModelSpec, load_checkpoint, save_checkpoint
from reldrop.jobs import cli
from reldrop.jobs._args import load_config_file

REPO = Path(__file__).resolve().parents[1]


def _one_line(capsys: pytest.CaptureFixture[str], prefix: str) -> str:
    err = capsys.readouterr().err
    lines = err.splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith(prefix), err
    return lines[0]


# --- cli: one line, exit code 2 -------------------------------------------------------------


def test_user_error_is_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    argv = ["make-shards", "--dataset", "npz:/no/such.npz", "--out", str(tmp_path / "d")]
    assert cli.main(argv) == 2
    line = _one_line(capsys, "reldrop make-shards: npz:/no/such.npz: file does not exist")
    assert "Traceback" not in line


def test_debug_adds_the_traceback(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    argv = ["make-shards", "--dataset", "nope", "--out", str(tmp_path / "d"), "--debug"]
    assert cli.main(argv) == 2
    err = capsys.readouterr().err
    assert "Traceback (most recent call last)" in err
    assert err.splitlines()[-1].startswith("reldrop make-shards: unknown dataset 'nope'")


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--shard-size", "0"], "argument --shard-size: expected an integer >= 1; got '0'"),
        (["--limit", "-3"], "argument --limit: expected an integer >= 1; got '-3'"),
        (["--seed", "1.5"], "argument --seed: expected an integer >= 0; got '1.5'"),
        (["--bogus"], "unrecognized arguments: --bogus"),
    ],
)
def test_bad_flags_are_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], flags: list[str], message: str
) -> None:
    with pytest.raises(SystemExit) as exc:
        cli.main(["make-shards", "--dataset", "points", "--out", str(tmp_path), *flags])
    assert exc.value.code == 2
    line = _one_line(capsys, f"reldrop make-shards: {message}")
    assert line.endswith("see reldrop make-shards --help")


@pytest.mark.parametrize("job", ["evaluate", "explain"])
def test_batch_size_checked_before_work(job: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        cli.main([job, "--checkpoint", "c", "--data", "d", "--batch-size", "0"])
    _one_line(capsys, f"reldrop {job}: argument --batch-size: expected an integer >= 1")


def test_a_bug_keeps_its_traceback(monkeypatch: pytest.MonkeyPatch) -> None:
    from reldrop.jobs import make_shards

    def broken(args: object) -> int:
        raise KeyError("internal")

    monkeypatch.setattr(make_shards, "main", broken)
    with pytest.raises(KeyError, match="internal"):
        cli.main(["make-shards", "--dataset", "points", "--out", "x"])


def test_python_dash_m_uses_the_same_wrapper(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "reldrop.jobs.make_shards", "--dataset", "npz:/no/such.npz",
         "--out", str(tmp_path / "d")],
        cwd=REPO, capture_output=True, text=True, timeout=120,
    )
    assert result.returncode == 2, result.stderr
    assert result.stderr.splitlines() == [
        "reldrop make-shards: npz:/no/such.npz: file does not exist"
    ]


# --- Ray-wrapped errors -----------------------------------------------------------------------


def _ray_task_error(cause: Exception) -> Exception:
    exceptions = pytest.importorskip("ray.exceptions")
    wrapped = exceptions.RayTaskError("decode", "Traceback ...\n" * 50 + str(cause), cause)
    return wrapped.as_instanceof_cause()


def test_ray_task_error_is_unwrapped() -> None:
    cause = ValueError("shard 'memory://d/train-000000.tar', sample 'k7': label 12 outside [0, 3)")
    wrapped = _ray_task_error(cause)
    assert isinstance(wrapped, ValueError)  # Ray's wrapper is a ValueError too, with tracebacks
    assert cli.user_error_line(wrapped) == str(cause)


def test_ray_train_failure_is_unwrapped() -> None:
    v2 = pytest.importorskip("ray.train.v2.api.exceptions")
    cause = FileNotFoundError("no manifest at 'x/manifest.parquet'; build the dataset with ...")
    err = v2.WorkerGroupError("worker 1 failed", {1: _ray_task_error(cause)})
    assert cli.user_error_line(err) == str(cause)
    assert cli.user_error_line(v2.ControllerError(RuntimeError("scheduler bug"))) is None


def test_outer_user_message_wins_over_its_cause() -> None:
    try:
        try:
            raise ValueError("pyarrow: Parquet magic bytes not found")
        except ValueError as low:
            raise ValueError("'x/manifest.parquet' is not a valid manifest (truncated?)") from low
    except ValueError as err:
        assert cli.user_error_line(err) == "'x/manifest.parquet' is not a valid manifest (truncated?)"


@pytest.mark.ray
def test_error_raised_in_a_ray_task(ray_local) -> None:
    @ray_local.remote
    def bad() -> None:
        raise ValueError("npz:/d.npz: array 'y' has dtype float64; expected integer class labels")

    with pytest.raises(Exception) as exc:
        ray_local.get(bad.remote())
    assert cli.user_error_line(exc.value) == (
        "npz:/d.npz: array 'y' has dtype float64; expected integer class labels"
    )


# --- config files ------------------------------------------------------------------------------


def test_duplicate_keys_are_refused(tmp_path: Path) -> None:
    path = tmp_path / "c.yaml"
    path.write_text("dataset: points\nlimit: 20\nlimit: 30\n")
    with pytest.raises(ValueError, match=r"not valid YAML: duplicate key 'limit'.*line 3"):
        load_config_file(path)
    path = tmp_path / "c.toml"
    path.write_text("limit = 20\nlimit = 30\n")
    with pytest.raises(ValueError, match=r"not valid TOML"):
        load_config_file(path)


def test_billion_laughs_fails_fast_with_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # nine-fold per level, all under one real flag: printing 'dataset' in an error never ends
    levels = ['&l0 ["lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol"]']
    levels += [f"&l{i} [" + ", ".join([f"*l{i - 1}"] * 9) + "]" for i in range(1, 12)]
    levels = ["dataset: [" + ", ".join(levels) + "]"]
    path = tmp_path / "bomb.yaml"
    path.write_text("\n".join(levels) + "\n")
    start = time.perf_counter()
    with pytest.raises(SystemExit):
        cli.main(["make-shards", "--config", str(path)])
    assert time.perf_counter() - start < 1.0
    line = _one_line(capsys, f"reldrop make-shards: --config: '{path}' is not valid YAML")
    assert "alias *l0 is not allowed" in line


def test_oversized_config_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "big.toml"
    path.write_text("# padding\n" * 200_000)
    with pytest.raises(ValueError, match=r"big.toml' is 2000000 bytes; .* at most 1048576"):
        load_config_file(path)


def test_config_numbers_are_checked(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "c.yaml"
    path.write_text("dataset: points\nshard-size: 0\n")
    with pytest.raises(SystemExit):
        cli.main(["make-shards", "--config", str(path), "--out", str(tmp_path / "d")])
    _one_line(capsys, "reldrop make-shards: --config")
    path.write_text("dataset: points\nshard-size: 7\nseed: 3\n")
    from reldrop.jobs.make_shards import parse_args

    args = parse_args(["--config", str(path), "--out", "o"])
    assert (args.shard_size, args.seed) == (7, 3)


# --- checkpoints -------------------------------------------------------------------------------


def _checkpoint(path: Path, fill: float | None = None) -> Path:
    spec = ModelSpec(name="small-cnn", in_channels=1, num_classes=3)
    model = spec.build()
    if fill is not None:
        with torch.no_grad():
            for p in model.parameters():
                p.fill_(fill)
    return save_checkpoint(path, model, spec)


def test_non_finite_weights_are_refused(tmp_path: Path) -> None:
    path = _checkpoint(tmp_path / "nan.safetensors", float("nan"))
    with pytest.raises(ValueError, match=r"nan.safetensors': tensor '.+' has \d+ non-finite"):
        load_checkpoint(path)
    load_checkpoint(_checkpoint(tmp_path / "ok.safetensors"))


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (b"\x10\x00\x00\x00\x00\x00\x00\x00{not json at all}", "is not a readable safetensors file"),
        (b"\xff" * 8, "is not a readable safetensors file"),
        (b"", "is not a readable safetensors file"),
    ],
)
def test_corrupt_checkpoint_names_the_file(tmp_path: Path, content: bytes, message: str) -> None:
    path = tmp_path / "bad.safetensors"
    path.write_bytes(content)
    with pytest.raises(ValueError, match=rf"checkpoint '{path}' {message}"):
        load_checkpoint(path)


def test_evaluate_refuses_a_nan_checkpoint(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from reldrop.pipeline.data.shards import write_dataset

    root = str(tmp_path / "data")
    rng = np.random.default_rng(0)
    samples = [{"key": f"k{i}", "image": rng.integers(0, 256, (1, 8, 8), dtype=np.uint8),
                "label": i % 3} for i in range(6)]
    write_dataset(root, {"test": samples}, dataset="toy", num_classes=3)
    path = _checkpoint(tmp_path / "nan.safetensors", float("nan"))
    argv = ["evaluate", "--checkpoint", str(path), "--data", root, "--out", str(tmp_path / "e"),
            "--no-plots"]
    assert cli.main(argv) == 2
    line = _one_line(capsys, f"reldrop evaluate: checkpoint '{path}': tensor '")
    assert "non-finite" in line


def test_cause_kept_only_as_text_is_found() -> None:
    """Ray Train may keep a worker's error only as text; the data line is found in it."""
    v2 = pytest.importorskip("ray.train.v2.api.exceptions")
    text = ("bad training data: reldrop.pipeline.data.codecs.SampleError: shard '/d/train-000000.tar',"
            " sample 'tr2': label 2 is outside the classes [0, 2)")
    err = v2.WorkerGroupError(f"[Rank 0]\nRuntimeError: {text}", {0: RuntimeError(text)})
    assert cli.user_error_line(err) == (
        "bad training data: shard '/d/train-000000.tar', sample 'tr2': label 2 is outside the "
        "classes [0, 2)"
    )


@pytest.mark.parametrize("flags,message", [
    (["--max-staleness", "0"], "max_staleness=0 with mode='async' is in-loop explanation: use --mode sync"),
    (["--simulate-step-ms", "-5"], "simulate_step_ms=-5.0; expected a finite number"),
    (["--simulate-lrp-ms", "inf"], "simulate_lrp_ms=inf; expected a finite number"),
    (["--trainers", "3", "--explainers", "2"], "explainers=2 for trainers=3"),
])
def test_impossible_handoff_settings_are_one_line_before_ray(
    flags: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert cli.main(["train", "--train", "/nowhere#train", *flags]) == 2
    _one_line(capsys, f"reldrop train: {message}")
