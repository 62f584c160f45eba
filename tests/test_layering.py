"""The layers import one way only: jobs -> pipeline -> reldrop; reldrop never imports Ray."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
FORBIDDEN = {
    "reldrop": ("ray", "pipeline", "jobs", "webdataset", "fsspec", "pyarrow"),
    "pipeline": ("jobs",),
}


def _imports(path: Path) -> set[str]:
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names.update(a.name.split(".")[0] for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module.split(".")[0])
    return names


@pytest.mark.parametrize("package", sorted(FORBIDDEN))
def test_imports_go_one_way(package: str) -> None:
    bad = {
        str(path.relative_to(ROOT)): sorted(_imports(path) & set(FORBIDDEN[package]))
        for path in (ROOT / package).rglob("*.py")
    }
    bad = {k: v for k, v in bad.items() if v}
    assert not bad, f"{package} imports what it must not: {bad}"
