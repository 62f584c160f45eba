"""The layers import one way only: studies -> jobs -> pipeline -> reldrop; reldrop never
imports Ray, and nothing in the product imports the studies.

The folders ``reldrop/``, ``pipeline/`` and ``jobs/`` install as ``reldrop``,
``reldrop.pipeline`` and ``reldrop.jobs``; nothing imports the generic names ``pipeline`` or
``jobs``. ``studies/`` (research: searches, the staleness study, result tables) is not installed
and may import all of the product.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
GENERIC = ("pipeline", "jobs")
FORBIDDEN = {
    "reldrop": ("ray", "reldrop.pipeline", "reldrop.jobs", "webdataset", "fsspec", "pyarrow",
                "studies"),
    "pipeline": ("reldrop.jobs", "studies"),
    "jobs": ("studies",),
    "studies": (),
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


@pytest.mark.parametrize("folder", ["reldrop", "pipeline", "jobs", "studies", "tests"])
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
    """Concern packages (data, explanation, training, evaluation, bench) import in one
    direction."""
    graph = _module_graph("pipeline")
    package = {name: ".".join(name.split(".")[:3]) for name in graph}
    edges = {(package[a], package[b]) for a, targets in graph.items() for b in targets
             if package[a] != package[b]}
    cycles = sorted((a, b) for a, b in edges if (b, a) in edges)
    assert not cycles, f"packages importing each other: {cycles}"


def test_the_product_does_not_ship_or_run_the_lab() -> None:
    """Studies live beside the package: none under ``pipeline/``, no product command that
    searches, runs the staleness study or writes README.md."""
    assert not (ROOT / "pipeline" / "studies").exists()
    assert (ROOT / "studies" / "__init__.py").is_file()
    product = [p for layer in ("reldrop", "pipeline", "jobs") for p in _files(layer)]
    writers = [str(p.relative_to(ROOT)) for p in product if "README.md" in p.read_text()]
    assert not writers, f"product modules that name README.md: {writers}"
    from reldrop.jobs.compare import build_parser

    flags = {o for a in build_parser()._actions for o in a.option_strings}
    assert not flags & {"--search", "--staleness", "--readme", "--grid"}, flags


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



def test_readme_stays_a_five_minute_read() -> None:
    """The README says what it is, the two commands, the sketch, an example per API, the jobs,
    one result table and the limitations; the rest lives in docs/ (and its links resolve)."""
    readme = (ROOT / "README.md").read_text()
    assert len(readme.splitlines()) <= 250
    assert readme.count("\n| --- |") + readme.count("\n|---|") <= 2  # the layers, one result
    import re

    for doc in ("README.md", *(str(p.relative_to(ROOT)) for p in (ROOT / "docs").glob("*.md"))):
        text = (ROOT / doc).read_text()
        for target in re.findall(r"\]\(([^)#:]+)(?:#[^)]*)?\)", text):
            assert (ROOT / doc).parent.joinpath(target).exists(), f"{doc} links to {target}"
