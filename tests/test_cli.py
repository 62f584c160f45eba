"""The command line as a user meets it: command list, version, fast help without torch, one
default per flag, the same flag names across jobs."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

from reldrop.jobs.cli import COMMANDS, main

REPO = Path(__file__).resolve().parents[1]


def test_help_lists_every_command_with_a_summary(capsys) -> None:
    assert main(["--help"]) == 0
    out = capsys.readouterr().out
    for command in COMMANDS:
        line = next(x for x in out.splitlines() if x.strip().startswith(command + " "))
        assert len(line.split(None, 1)[1]) > 20 and len(line) <= 100, line
    assert main(["--version"]) == 0
    assert re.fullmatch(r"reldrop \d+\.\d+\S*\n", capsys.readouterr().out)


def test_help_imports_neither_torch_nor_ray() -> None:
    """Every ``--help`` builds its parser without torch, zennit or ray (2 s on 2 busy cores)."""
    probe = (
        "import sys, contextlib, io\n"
        "from reldrop.jobs.cli import main\n"
        f"for c in {list(COMMANDS)!r} + [None]:\n"
        "    with contextlib.redirect_stdout(io.StringIO()):\n"
        "        try: main([c, '--help'] if c else ['--help'])\n"
        "        except SystemExit: pass\n"
        "heavy = sorted(m for m in ('torch', 'zennit', 'ray', 'torchvision') if m in sys.modules)\n"
        "assert not heavy, heavy\n"
    )
    subprocess.run([sys.executable, "-c", probe], check=True, cwd=REPO, timeout=120)


@pytest.mark.parametrize("command", list(COMMANDS))
def test_one_default_per_flag_and_none_on_required(command: str, capsys) -> None:
    with pytest.raises(SystemExit):
        main([command, "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "(default: None)" not in text
    for flag_help in re.split(r" (?=--[a-z])", text):
        assert flag_help.count("(default") <= 1, flag_help
    if command == "evaluate":
        checkpoint = re.search(r"--checkpoint CHECKPOINT ([^-]*)", text)
        assert checkpoint and "default" not in checkpoint.group(1)


def test_same_names_across_jobs_old_spellings_kept(tmp_path: Path) -> None:
    from reldrop.jobs import evaluate, train

    for job in (train, evaluate):
        options = {o for a in job.build_parser()._actions for o in a.option_strings}
        assert {"--ood-test", "--ood-data", "--on-error", "--image-key", "--image-size"} <= options
    args = evaluate.parse_args(["--checkpoint", "c", "--data", "d", "--ood-data", "o"])
    assert args.ood_test == "o"


def test_make_shards_help_names_every_dataset() -> None:
    from reldrop.pipeline.data.datasets import available_datasets
    from reldrop.pipeline.job_configs import DATASET_NAMES

    assert sorted(DATASET_NAMES) == sorted(available_datasets())
