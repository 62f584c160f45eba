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
