"""kubeha.core imports only the standard library and itself; reports import only kubeha.core besides that."""

from __future__ import annotations

import ast
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
CORE = sorted((ROOT / "kubeha" / "core").glob("*.py"))
REPORTS = sorted((ROOT / "reports").glob("*.py"))


def imported_modules(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
    return names


def allowed(module: str, own: tuple[str, ...]) -> bool:
    return module.split(".")[0] in sys.stdlib_module_names or any(
        module == prefix or module.startswith(prefix + ".") for prefix in own
    )


def test_the_tree_has_modules_to_check() -> None:
    assert len(CORE) >= 8 and len(REPORTS) >= 4


@pytest.mark.parametrize("path", CORE, ids=lambda p: p.name)
def test_core_imports_only_stdlib(path: Path) -> None:
    offending = sorted(m for m in imported_modules(path) if not allowed(m, ("kubeha.core",)))
    assert offending == [], f"{path.name} imports {offending}; kubeha.core must stay standard-library only"


@pytest.mark.parametrize("path", REPORTS, ids=lambda p: p.name)
def test_reports_import_only_core(path: Path) -> None:
    offending = sorted(m for m in imported_modules(path) if not allowed(m, ("kubeha.core", "reports")))
    assert offending == [], f"{path.name} imports {offending}; reports may import kubeha.core only"
