"""``--config FILE`` for every job (jobs/_args.py): YAML and TOML, flag overrides, errors."""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import json
import subprocess
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
import yaml

from reldrop.jobs._args import CheckedNumber, new_parser, parse_with_config
from reldrop.jobs.cli import COMMANDS

REPO = Path(__file__).resolve().parents[1]


def _job_modules() -> list[str]:
    """Job modules that exist in this checkout (others are written in parallel)."""
    return [f"reldrop.jobs.{m}" for m in COMMANDS.values() if importlib.util.find_spec(f"reldrop.jobs.{m}")]


JOBS = _job_modules()


def _options(module: ModuleType) -> dict[str, argparse.Action]:
    """Long flag name -> action, for the flags a config file may set."""
    parser = module.build_parser()
    table = {}
    for action in parser._actions:
        if action.dest in ("help", "config"):
            continue
        longs = [o for o in action.option_strings if o.startswith("--")]
        if longs:
            table[longs[0][2:]] = action
    return table


def _kind(action: argparse.Action) -> Any:
    """``int``/``float`` for plain and checked numeric flags, else the action's type."""
    return action.type.kind if isinstance(action.type, CheckedNumber) else action.type


def _sample_value(action: argparse.Action) -> Any:
    """A legal value for ``action`` that differs from its default (None: cannot guess)."""
    if isinstance(action, argparse._StoreTrueAction | argparse._StoreFalseAction):
        return True
    if action.nargs not in (None, "?") or type(action) is not argparse._StoreAction:
        return None
    if action.choices is not None:
        choices = [c for c in action.choices if c != action.default]
        return choices[-1] if choices else None
    if _kind(action) is int:
        return 7 if action.default != 7 else 8
    if _kind(action) is float:
        return 0.375
    if action.type is None:
        return "from-config"
    return None


def _expected(action: argparse.Action, value: Any) -> Any:
    if isinstance(action, argparse._StoreTrueAction | argparse._StoreFalseAction):
        return action.const
    return float(value) if _kind(action) is float else value


def _toml(values: dict[str, Any]) -> str:
    # json scalars are valid TOML scalars (strings, ints, floats, booleans)
    return "".join(f"{key} = {json.dumps(value)}\n" for key, value in values.items())


def _write(tmp_path: Path, name: str, values: dict[str, Any]) -> Path:
    path = tmp_path / name
    if name.endswith(".toml"):
        path.write_text(_toml(values))
    else:
        path.write_text(yaml.safe_dump(values))
    return path


def _parse_error(module: ModuleType, argv: list[str], capsys: pytest.CaptureFixture[str]) -> str:
    with pytest.raises(SystemExit) as exc:
        module.parse_args(argv)
    assert exc.value.code == 2
    return capsys.readouterr().err


#: flags that exclude another exercised flag (compare: --staleness with --search is an error)
_EXCLUSIVE = {"reldrop.jobs.compare": ("staleness",)}


@pytest.mark.parametrize("suffix", [".yaml", ".toml"])
@pytest.mark.parametrize("job", JOBS)
def test_every_flag_can_come_from_a_config_file(job: str, suffix: str, tmp_path: Path) -> None:
    module = importlib.import_module(job)
    values, expected = {}, {}
    for name, action in _options(module).items():
        value = _sample_value(action)
        if value is not None and name not in _EXCLUSIVE.get(job, ()):
            values[name] = value
            expected[action.dest] = _expected(action, value)
    assert values, f"{job}: no flag could be exercised"
    args = module.parse_args(["--config", str(_write(tmp_path, "job" + suffix, values))])
    assert {dest: getattr(args, dest) for dest in expected} == expected


@pytest.mark.parametrize("job", JOBS)
def test_flags_override_the_file(job: str, tmp_path: Path) -> None:
    module = importlib.import_module(job)
    options = _options(module)
    ints = [name for name, a in options.items() if _kind(a) is int and a.choices is None]
    if not ints:
        pytest.skip(f"{job} has no integer flag")
    name = ints[0]
    required = _required_values(options)
    path = _write(tmp_path, "job.yaml", {**required, name: 5})
    args = module.parse_args(["--config", str(path), f"--{name}", "9"])
    assert getattr(args, options[name].dest) == 9
    assert getattr(module.parse_args(["--config", str(path)]), options[name].dest) == 5


def _required_values(options: dict[str, argparse.Action]) -> dict[str, Any]:
    return {n: _sample_value(a) for n, a in options.items() if a.required}


@pytest.mark.parametrize("job", JOBS)
def test_unknown_keys_are_named(
    job: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    module = importlib.import_module(job)
    path = _write(tmp_path, "job.toml", {"no-such-flag": 1, "epoch": 3})
    err = _parse_error(module, ["--config", str(path)], capsys)
    assert "unknown key(s) ['epoch', 'no-such-flag']" in err


@pytest.mark.parametrize("job", JOBS)
def test_wrong_types_name_key_and_type(
    job: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    module = importlib.import_module(job)
    cases: list[tuple[str, Any, str]] = []
    for name, action in _options(module).items():
        if _kind(action) is int:
            cases.append((name, "three", "must be an integer"))
            cases.append((name, 2.5, "must be an integer"))
        elif _kind(action) is float:
            cases.append((name, "0.5", "must be a"))
        if isinstance(action.type, CheckedNumber) and action.type.minimum is not None:
            cases.append((name, action.type.minimum - 1, "must be " + action.type.__name__))
            cases.append((name, float("nan"), "must be " + action.type.__name__))
        elif isinstance(action, argparse._StoreTrueAction):
            cases.append((name, "yes", "must be true or false"))
        elif action.choices is not None:
            cases.append((name, "not-a-choice", "allowed:"))
    assert cases, f"{job}: no typed flag to check"
    for name, value, message in cases:
        path = _write(tmp_path, "job.yaml", {name: value})
        err = _parse_error(module, ["--config", str(path)], capsys)
        assert f"key {name!r}" in err and message in err, (name, value, err)


@pytest.mark.parametrize("job", JOBS)
def test_job_module_runs_with_python_dash_m(job: str) -> None:
    result = subprocess.run(
        [sys.executable, "-m", job, "--help"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    assert "--config" in result.stdout


# --- the shipped config files and jobs.train specifics ---------------------------------------


def test_demo_yaml_is_the_embedded_demo() -> None:
    from reldrop.jobs import train

    args = train.parse_args(["--config", str(REPO / "configs/demo.yaml")])
    defaults = train.parse_args([])
    assert (args.model, args.augment, args.mode) == ("small-cnn", "reldrop-pixel", "async")
    assert {k: v for k, v in vars(args).items() if k != "config"} == {
        k: v for k, v in vars(defaults).items() if k != "config"
    }


def test_cluster_gpu_toml() -> None:
    from reldrop.jobs import train

    args = train.parse_args(["--config", str(REPO / "configs/cluster-gpu.toml")])
    assert args.use_gpu is True and args.trainers == 4 and args.explainers == "auto"
    assert args.explainers_max == 8 and args.explainer_gpus > 0 and args.explainer_resource
    for url in (args.train, args.test, args.ood_test, args.out):
        assert url.startswith("s3://"), url
    args = train.parse_args(["--config", str(REPO / "configs/cluster-gpu.toml"), "--trainers", "2"])
    assert args.trainers == 2


def test_key_spellings(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from reldrop.jobs import train

    path = _write(tmp_path, "a.yaml", {"batch_size": 16, "lambda": 1, "p": 0.25, "lr": 1})
    args = train.parse_args(["--config", str(path)])
    assert (args.batch_size, args.reg_lambda, args.apply_prob, args.lr) == (16, 1.0, 0.25, 1.0)
    assert isinstance(args.lr, float)
    path = _write(tmp_path, "b.yaml", {"batch_size": 16, "batch-size": 32})
    assert "set the same flag" in _parse_error(train, ["--config", str(path)], capsys)


@pytest.mark.parametrize(
    ("name", "text", "message"),
    [
        ("missing.yaml", None, "does not exist"),
        ("job.json", "{}", "expected .yaml, .yml or .toml"),
        ("bad.toml", "epochs = \n", "is not valid TOML"),
        ("bad.yaml", "epochs: [\n", "is not valid YAML"),
        ("list.yaml", "- 1\n", "must hold a mapping"),
        ("null.yaml", "model: null\n", "key 'model' must be a string; got null"),
        ("bool.yaml", "epochs: true\n", "key 'epochs' must be an integer; got bool"),
    ],
)
def test_bad_files(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], name: str, text: str | None, message: str
) -> None:
    from reldrop.jobs import train

    path = tmp_path / name
    if text is not None:
        path.write_text(text)
    assert message in _parse_error(train, ["--config", str(path)], capsys)


def test_null_allowed_where_the_default_is_none(tmp_path: Path) -> None:
    from reldrop.jobs import train

    path = _write(tmp_path, "a.yaml", {"train": None, "limit": None, "epochs": 2})
    args = train.parse_args(["--config", str(path)])
    assert (args.train, args.limit, args.epochs) == (None, None, 2)
    assert train.parse_args([]).config is None


def test_empty_yaml_changes_nothing(tmp_path: Path) -> None:
    from reldrop.jobs import train

    path = tmp_path / "empty.yaml"
    path.write_text("# nothing\n")
    assert train.parse_args(["--config", str(path)]).epochs == train.parse_args([]).epochs


# --- parser features other jobs may use --------------------------------------------------------


def _level(text: str) -> int:
    if text not in ("low", "high"):
        raise ValueError(text)
    return {"low": 1, "high": 2}[text]


def _feature_parser() -> argparse.ArgumentParser:
    p = new_parser("test", "")
    p.add_argument("--out", required=True)
    p.add_argument("--sizes", type=int, nargs="+", default=[1])
    p.add_argument("--tag", action="append", default=None)
    p.add_argument("--shuffle", action=argparse.BooleanOptionalAction, default=True)
    p.add_argument("--no-progress", dest="progress", action="store_false")
    p.add_argument("--level", type=_level, default="low")
    p.add_argument("-v", "--verbose", action="count", default=0)
    return p


def test_required_flags_can_come_from_the_file(tmp_path: Path) -> None:
    path = _write(tmp_path, "a.toml", {"out": "s3://b/x"})
    assert parse_with_config(_feature_parser(), ["--config", str(path)]).out == "s3://b/x"
    with pytest.raises(SystemExit):
        parse_with_config(_feature_parser(), [])


def test_lists_booleans_counts_and_custom_types(tmp_path: Path) -> None:
    values = {
        "out": "o",
        "sizes": [2, 3],
        "tag": ["a", "b"],
        "no-shuffle": True,
        "no-progress": True,
        "level": "high",
        "verbose": 2,
    }
    args = parse_with_config(
        _feature_parser(), ["--config", str(_write(tmp_path, "a.yaml", values))]
    )
    assert (args.sizes, args.tag, args.shuffle, args.progress) == ([2, 3], ["a", "b"], False, False)
    assert (args.level, args.verbose) == (2, 2)
    args = parse_with_config(
        _feature_parser(),
        ["--config", str(_write(tmp_path, "b.yaml", {"shuffle": False}))] + ["--out", "o"],
    )
    assert args.shuffle is False and args.level == 1


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"sizes": 3}, "key 'sizes' must be a list"),
        ({"sizes": []}, "non-empty list"),
        ({"sizes": [1, "x"]}, "key 'sizes' must be an integer"),
        ({"level": "medium"}, "key 'level' must be a string accepted by _level"),
        ({"shuffle": "no"}, "key 'shuffle' must be true or false"),
        ({"verbose": -1}, "key 'verbose' must be a non-negative integer"),
    ],
)
def test_feature_errors(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], values: dict[str, Any], message: str
) -> None:
    path = _write(tmp_path, "a.yaml", {"out": "o", **values})
    with pytest.raises(SystemExit):
        parse_with_config(_feature_parser(), ["--config", str(path)])
    assert message in capsys.readouterr().err
