"""core/ and spec.py stay pure: no API clients, no network, no clock (import-linter covers our own layers)."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest
from pax_cluster.procs import REPO_ROOT

PACKAGE = REPO_ROOT / "operator" / "pax_operator"
IMPURE = {"kopf", "kubernetes", "urllib", "http", "socket", "requests", "aiohttp", "time", "os", "subprocess"}


@pytest.mark.parametrize(
    "path", [*sorted((PACKAGE / "core").rglob("*.py")), PACKAGE / "spec.py"], ids=lambda p: p.name
)
def test_pure_modules_import_nothing_impure(path: Path) -> None:
    imported: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            imported |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            imported.add(node.module.split(".")[0])
    assert not imported & IMPURE, f"{path.name} imports {sorted(imported & IMPURE)}"
