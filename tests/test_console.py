"""A run's console (pipeline/training/console.py): its own lines shown, the rest in the log."""

from __future__ import annotations

import logging
import sys
import warnings
from pathlib import Path

import pytest

from reldrop.pipeline.training.console import run_console


def test_only_reldrop_lines_reach_the_console(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    log = tmp_path / "run.log"
    before = (sys.stdout, logging.getLogger("ray").handlers[:], warnings.showwarning)
    with run_console(log):
        print("\x1b[36m(RayTrainWorker pid=1)\x1b[0m [reldrop] epoch 1 step 3/9 loss 2.0")
        print("(TrainController pid=2) Traceback (most recent call last):", file=sys.stderr)
        print("[2026 E 1 2] core_worker.cc:1: lost", file=sys.stderr)
        logging.getLogger("ray.train").warning("controller noise")
        warnings.warn_explicit("library noise", UserWarning, "/site-packages/lib.py", 1)
        print("[reldrop] run abc: banner")
    out, err = capsys.readouterr()
    assert out.splitlines() == ["[reldrop] epoch 1 step 3/9 loss 2.0", "[reldrop] run abc: banner"]
    assert err == ""
    text = log.read_text()
    for line in ("Traceback", "core_worker.cc", "controller noise", "library noise", "banner"):
        assert line in text
    assert (sys.stdout, logging.getLogger("ray").handlers, warnings.showwarning) == before


def test_streams_are_restored_after_an_error(tmp_path: Path) -> None:
    stdout = sys.stdout
    with pytest.raises(ValueError, match="bad"), run_console(tmp_path / "run.log"):
        raise ValueError("bad")
    assert sys.stdout is stdout
