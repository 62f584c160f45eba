"""The layers import one way only: jobs -> pipeline -> reldrop; reldrop never imports Ray.

The folders ``reldrop/``, ``pipeline/`` and ``jobs/`` install as ``reldrop``,
``reldrop.pipeline`` and ``reldrop.jobs``; nothing imports the generic names ``pipeline`` or
``jobs``.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
GENERIC = ("pipeline", "jobs")
FORBIDDEN = {
    "reldrop": ("ray", "reldrop.pipeline", "reldrop.jobs", "webdataset", "fsspec", "pyarrow"),
    "pipeline": ("reldrop.jobs",),
    "jobs": (),
}


def _imports(path: Path) -> set[str]:
    """Every absolute module name imported in ``path`` (``a.b.c`` also counts as ``a``, ``a.b``)."""
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        modules: list[str] = []
        if isinstance(node, ast.Import):
            modules = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            modules = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
        for module in modules:
            parts = module.split(".")
            names.update(".".join(parts[: i + 1]) for i in range(len(parts)))
    return names


def _files(layer: str) -> list[Path]:
    return sorted((ROOT / layer).rglob("*.py"))


@pytest.mark.parametrize("layer", sorted(FORBIDDEN))
def test_imports_go_one_way(layer: str) -> None:
    bad = {
        str(path.relative_to(ROOT)): sorted(_imports(path) & set(FORBIDDEN[layer]))
        for path in _files(layer)
    }
    bad = {k: v for k, v in bad.items() if v}
    assert not bad, f"{layer} imports what it must not: {bad}"


@pytest.mark.parametrize("folder", ["reldrop", "pipeline", "jobs", "tests"])
def test_no_generic_top_level_imports(folder: str) -> None:
    """``import pipeline`` / ``import jobs`` would only work inside a checkout."""
    bad = {
        str(path.relative_to(ROOT)): sorted(n for n in _imports(path) if n in GENERIC)
        for path in _files(folder)
    }
    bad = {k: v for k, v in bad.items() if v}
    assert not bad, f"generic top-level imports (use reldrop.pipeline / reldrop.jobs): {bad}"


def _module_graph(layer: str) -> dict[str, set[str]]:
    """``reldrop.pipeline.a.b`` -> the ``reldrop.pipeline...`` modules it imports."""
    prefix = {"pipeline": "reldrop.pipeline", "jobs": "reldrop.jobs"}[layer]
    graph: dict[str, set[str]] = {}
    for path in _files(layer):
        parts = path.relative_to(ROOT / layer).with_suffix("").parts
        name = ".".join((prefix, *parts)).removesuffix(".__init__")
        graph[name] = {n for n in _imports(path) if n.startswith(prefix + ".") and n != name}
    return {k: {n for n in v if n in graph} for k, v in graph.items()}


def test_no_import_cycles_between_pipeline_packages() -> None:
    """Concern packages (data, explanation, training, studies) import in one direction."""
    graph = _module_graph("pipeline")
    package = {name: ".".join(name.split(".")[:3]) for name in graph}
    edges = {(package[a], package[b]) for a, targets in graph.items() for b in targets
             if package[a] != package[b]}
    cycles = sorted((a, b) for a, b in edges if (b, a) in edges)
    assert not cycles, f"packages importing each other: {cycles}"


MAX_FUNCTION_LINES = 60


@pytest.mark.parametrize("folder", ["pipeline/training", "pipeline/explanation"])
def test_functions_read_at_once(folder: str) -> None:
    """The training and explanation paths are built from named steps of a screen or less."""
    long = []
    for path in sorted((ROOT / folder).rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                lines = (node.end_lineno or node.lineno) - node.lineno + 1
                if lines > MAX_FUNCTION_LINES:
                    long.append(f"{path.relative_to(ROOT)}:{node.lineno} {node.name} ({lines})")
    assert not long, f"functions over {MAX_FUNCTION_LINES} lines: {long}"


def test_readme_layer_table_matches_the_folders() -> None:
    readme = (ROOT / "README.md").read_text()
    for package in sorted(p.parent for p in (ROOT / "pipeline").glob("*/__init__.py")):
        assert f"`pipeline/{package.name}/`" in readme, f"README misses pipeline/{package.name}/"


def test_wheel_installs_one_namespace(tmp_path: Path) -> None:
    """Built and installed, the project claims no generic top-level name: ``import pipeline``
    and ``import jobs`` fail outside the repository, ``reldrop.pipeline`` / ``reldrop.jobs``
    import from the installed layout."""
    import shutil
    import subprocess
    import sys
    import zipfile

    source = tmp_path / "src"  # a copy: building writes build/ next to the sources
    source.mkdir()
    for item in ("pyproject.toml", "README.md", "reldrop", "pipeline", "jobs"):
        if (ROOT / item).is_dir():
            shutil.copytree(ROOT / item, source / item, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copy(ROOT / item, source / item)
    wheels = tmp_path / "wheels"
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps",
                    "--no-build-isolation", "-w", str(wheels), str(source)],
                   check=True, capture_output=True, timeout=300)
    (wheel,) = wheels.glob("reldrop-*.whl")
    tops = {name.split("/")[0] for name in zipfile.ZipFile(wheel).namelist()}
    assert {t for t in tops if not t.endswith(".dist-info")} == {"reldrop"}
    site = tmp_path / "site"
    subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--target",
                    str(site), str(wheel)], check=True, capture_output=True, timeout=300)
    probe = (
        "import importlib, importlib.util, sys; sys.path.insert(0, sys.argv[1]);"
        "import reldrop.pipeline.training.config as c, reldrop.jobs.cli as j;"
        "assert c.__file__.startswith(sys.argv[1]) and j.__file__.startswith(sys.argv[1]);"
        "bad = [n for n in ('pipeline', 'jobs') if importlib.util.find_spec(n)];"
        "assert not bad, bad"
    )
    done = subprocess.run([sys.executable, "-c", probe, str(site)], cwd=tmp_path,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
