"""No code runs because a file names it (issue 24): a checkpoint or config file naming an
import-path model (``package.module:factory``) is refused, before anything is imported, unless
the user names the same model (``--model``) or passes ``--trust-model-code``."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from reldrop.checkpoint import ModelSpec, load_checkpoint, save_checkpoint
from reldrop.models import SmallVGG, UntrustedModelError, check_model_trust, is_import_path

#: a module whose import and factory each leave a marker file
EVIL = '''
from pathlib import Path
Path("{marker}").write_text("imported")

def factory(*, in_channels, num_classes):
    Path("{marker}.called").write_text("called")
    from reldrop.models import SmallVGG
    return SmallVGG(in_channels=in_channels, num_classes=num_classes)
'''


def _evil(tmp_path: Path, name: str) -> Path:
    marker = tmp_path / f"{name}.marker"
    (tmp_path / f"{name}.py").write_text(EVIL.format(marker=marker))
    return marker


def _checkpoint(tmp_path: Path, model: str) -> Path:
    spec = ModelSpec(name=model, in_channels=1, num_classes=2)
    return save_checkpoint(tmp_path / "model.safetensors",
                           SmallVGG(in_channels=1, num_classes=2), spec)


def test_import_paths_need_trust() -> None:
    assert is_import_path("pkg.mod:factory") and is_import_path("os:getcwd")
    assert not any(map(is_import_path, ("small-cnn", "resnet18", "torchvision:resnet18")))
    for name in ("small-cnn", "torchvision:resnet18"):
        check_model_trust(name, source="file")
    check_model_trust("a.b:c", source="file", named="a.b:c")
    check_model_trust("a.b:c", source="file", trusted=True)
    with pytest.raises(UntrustedModelError, match=r"file names model 'a.b:c'.*--model a.b:c"):
        check_model_trust("a.b:c", source="file", named="a.b:other")


def test_checkpoint_naming_a_module_is_refused_before_import(tmp_path, monkeypatch) -> None:
    marker = _evil(tmp_path, "probe_evil_a")
    monkeypatch.syspath_prepend(str(tmp_path))
    path = _checkpoint(tmp_path, "probe_evil_a:factory")
    with pytest.raises(UntrustedModelError, match="probe_evil_a:factory"):
        load_checkpoint(path)
    with pytest.raises(ValueError, match="holds model 'probe_evil_a:factory', but --model"):
        load_checkpoint(path, model="small-cnn")
    assert not marker.exists() and "probe_evil_a" not in sys.modules
    model, spec, _ = load_checkpoint(path, model="probe_evil_a:factory")  # named: trusted
    assert marker.exists() and isinstance(model, torch.nn.Module)
    assert spec.name == "probe_evil_a:factory"


def test_evaluate_refuses_checkpoint_code_in_one_line(tmp_path) -> None:
    """The marker-file test: ``python -m reldrop.jobs.evaluate`` with the module in the cwd
    and on PYTHONPATH; nothing is imported, rc 2, one line."""
    marker = _evil(tmp_path, "probe_evil")
    path = _checkpoint(tmp_path, "probe_evil:factory")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(
        [str(tmp_path), *filter(None, [os.environ.get("PYTHONPATH")])])}
    done = subprocess.run(
        [sys.executable, "-m", "reldrop.jobs.evaluate", "--checkpoint", str(path),
         "--data", f"{tmp_path}/none#test", "--out", str(tmp_path / "eval")],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120,
    )
    assert done.returncode == 2, done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and "probe_evil:factory" in lines[0] and "--trust-model-code" in lines[0]
    assert not marker.exists() and not Path(f"{marker}.called").exists()


def test_config_file_naming_a_module_is_refused(tmp_path, monkeypatch, capsys) -> None:
    from reldrop.jobs.cli import main

    marker = _evil(tmp_path, "probe_evil_c")
    monkeypatch.syspath_prepend(str(tmp_path))
    config = tmp_path / "run.yaml"
    config.write_text('model: "probe_evil_c:factory"\nepochs: 1\n')
    with pytest.raises(SystemExit) as exit_info:
        main(["train", "--config", str(config), "--out", str(tmp_path / "run")])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "import path" in err[0] and "--trust-model-code" in err[0]
    assert not marker.exists() and "probe_evil_c" not in sys.modules
    from reldrop.jobs import train as job

    args = job.parse_args(["--config", str(config), "--trust-model-code"])  # opted in
    assert args.model == "probe_evil_c:factory"
    config.write_text('model: "os:getcwd"\n')
    with pytest.raises(SystemExit):
        job.parse_args(["--config", str(config)])
