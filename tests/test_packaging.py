"""One installed namespace that every tool resolves as Python does.

The layers live in the top-level folders ``reldrop/``, ``pipeline/`` and ``jobs/``; the links
``reldrop/pipeline -> ../pipeline`` and ``reldrop/jobs -> ../jobs`` make them ``reldrop.pipeline``
and ``reldrop.jobs`` without run-time ``__path__`` changes, and ``src/reldrop -> ../reldrop`` gives
the editable install a folder that holds only ``reldrop``. Checked here as a user sees it: a file
outside the checkout type-checks against the real classes (mypy), with the editable install
``make install`` makes and with the built wheel.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
LINKS = {"reldrop/pipeline": "../pipeline", "reldrop/jobs": "../jobs", "src/reldrop": "../reldrop"}

#: a user's file: both imports resolve to the classes (not ``Any``), so the wrong assignment is
#: reported and the right one is not
USER_FILE = """\
from reldrop.occlusion import OcclusionConfig
from reldrop.pipeline.training.config import TrainConfig

reveal_type(OcclusionConfig)
reveal_type(TrainConfig)
epochs: int = TrainConfig(epochs=1).epochs
wrong: str = TrainConfig(epochs=1).epochs
"""
#: third-party code is not what is checked here; skipping it keeps the check at seconds
MYPY_INI = """\
[mypy]
[mypy-torch.*,numpy.*,ray.*,zennit.*,safetensors.*,pyarrow.*,fsspec.*,webdataset.*,torchvision.*]
follow_imports = skip
"""


def test_layers_are_linked_into_one_package() -> None:
    for link, target in LINKS.items():
        path = ROOT / link
        assert path.is_symlink() and os.readlink(path) == target, f"{link} -> {target}"
    assert (ROOT / "reldrop" / "py.typed").is_file()
    assert "__path__" not in (ROOT / "reldrop" / "__init__.py").read_text()


def _bare_venv(where: Path) -> tuple[Path, Path]:
    """A venv without pip or packages: (its python, its site-packages)."""
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(where)], check=True,
                   capture_output=True, timeout=120)
    python = where / "bin" / "python"
    purelib = subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()"
                              "['purelib'])"], check=True, capture_output=True, text=True)
    return python, Path(purelib.stdout.strip())


def _pip(*args: str) -> None:
    """pip of this interpreter installing elsewhere; ``--ignore-installed`` so that it never
    uninstalls the project from the running environment (it did: every later subprocess test
    then failed with ``No module named 'reldrop'``)."""
    done = subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--no-deps",
                           "--no-build-isolation", "--ignore-installed", *args],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]


def _user_mypy(tmp_path: Path, python: Path) -> str:
    """mypy on a user's file outside the checkout, against what ``python`` has installed."""
    work = tmp_path / "user"
    work.mkdir()
    (work / "user.py").write_text(USER_FILE)
    (work / "mypy.ini").write_text(MYPY_INI)
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "MYPYPATH")}
    done = subprocess.run(
        [sys.executable, "-m", "mypy", "--config-file", "mypy.ini", "--python-executable",
         str(python), "--cache-dir", str(tmp_path / "mypy-cache"), "user.py"],
        cwd=work, env=env, capture_output=True, text=True, timeout=300,
    )
    return done.stdout + done.stderr


def _assert_real_classes(output: str) -> None:
    assert "-> reldrop.occlusion.OcclusionConfig" in output, output
    assert "-> reldrop.pipeline.training.config.TrainConfig" in output, output
    errors = [line for line in output.splitlines() if ": error:" in line]
    assert len(errors) == 1 and "user.py:7:" in errors[0], output


def test_editable_install_is_typed_for_users(tmp_path: Path) -> None:
    """``pip install -e .`` (what ``make install`` runs) puts a plain path on sys.path that mypy
    follows, not an import hook it cannot see."""
    python, site = _bare_venv(tmp_path / "venv")
    _pip("--prefix", str(tmp_path / "venv"), "-e", str(ROOT))
    (pth,) = site.glob("__editable__*.pth")
    assert pth.read_text().split() == [str(ROOT / "src")]
    assert [p.name for p in (ROOT / "src").iterdir() if p.suffix != ".egg-info"] == ["reldrop"]
    _assert_real_classes(_user_mypy(tmp_path, python))


def _built_wheel(tmp_path: Path) -> Path:
    source = tmp_path / "src"  # a copy, links kept: building writes build/ next to the sources
    source.mkdir()
    for item in ("pyproject.toml", "README.md", "reldrop", "pipeline", "jobs", "src"):
        if (ROOT / item).is_dir():
            shutil.copytree(ROOT / item, source / item, symlinks=True,
                            ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
        else:
            shutil.copy(ROOT / item, source / item)
    wheels = tmp_path / "wheels"
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps",
                    "--no-build-isolation", "-w", str(wheels), str(source)],
                   check=True, capture_output=True, timeout=300)
    (wheel,) = wheels.glob("reldrop-*.whl")
    return wheel


@pytest.mark.slow
def test_wheel_installs_one_typed_namespace(tmp_path: Path) -> None:
    """The wheel holds real files under ``reldrop/`` only (no studies, no links), with
    ``py.typed``; installed, ``reldrop.pipeline`` / ``reldrop.jobs`` import from it, ``pipeline``
    and ``jobs`` do not exist, and a user's file type-checks against it."""
    wheel = _built_wheel(tmp_path)
    with zipfile.ZipFile(wheel) as archive:
        infos = archive.infolist()
    tops = {i.filename.split("/")[0] for i in infos}
    assert {t for t in tops if not t.endswith(".dist-info")} == {"reldrop"}
    names = {i.filename for i in infos}
    assert {"reldrop/py.typed", "reldrop/pipeline/training/config.py", "reldrop/jobs/cli.py",
            "reldrop/pipeline/bench/__init__.py"} <= names
    assert not [n for n in names if "studies" in n.split("/")]
    links = [i.filename for i in infos if (i.external_attr >> 16) & 0o170000 == 0o120000]
    assert not links and all(i.file_size > 0 for i in infos if i.filename.endswith("config.py"))

    python, site = _bare_venv(tmp_path / "venv")
    _pip("--target", str(site), str(wheel))
    # the wheel's install first, then this environment's packages (torch, ...) as a plain path:
    # -S leaves its .pth files unread, so an editable install of a checkout does not answer
    probe = (
        "import importlib.util, sys; sys.path[:0] = [sys.argv[1]]; sys.path.append(sys.argv[2]);"
        "import reldrop.pipeline.training.config as c, reldrop.jobs.cli as j;"
        "assert c.__file__.startswith(sys.argv[1]) and j.__file__.startswith(sys.argv[1]);"
        "bad = [n for n in ('pipeline', 'jobs', 'studies') if importlib.util.find_spec(n)];"
        "assert not bad, bad"
    )
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    done = subprocess.run([sys.executable, "-S", "-c", probe, str(site),
                           sysconfig.get_paths()["purelib"]], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    _assert_real_classes(_user_mypy(tmp_path, python))


def test_ray_working_dir_upload_holds_the_layers(tmp_path: Path) -> None:
    """``ray job submit --working-dir .`` zips the checkout following the links, so the job
    finds ``reldrop.pipeline`` and ``reldrop.jobs`` as real files beside ``reldrop``."""
    from ray._private.runtime_env.packaging import _zip_files  # what the job client calls

    zipped = tmp_path / "working_dir.zip"
    _zip_files(str(ROOT), [], str(zipped), include_parent_dir=False, include_gitignore=True)
    with zipfile.ZipFile(zipped) as archive:
        names = set(archive.namelist())
    assert {"reldrop/__init__.py", "reldrop/pipeline/training/config.py",
            "reldrop/jobs/cli.py"} <= names
