"""The benchmarks and tools/ import nothing from tests/: code that tests and benchmarks
share (child processes, the counting proxies, sample images) lives in tools/, so a
benchmark still runs when the tests are reorganised."""

import ast
import pathlib

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[2]
FILES = sorted((ROOT / "benchmarks").rglob("*.py")) + sorted((ROOT / "tools").rglob("*.py"))


def imported_modules(path: pathlib.Path) -> set[str]:
    """Every module a file imports, at the top or inside a function."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found.add(node.module)
    return found


def test_there_are_files_to_check():
    assert any(p.parent.name == "benchmarks" for p in FILES)


@pytest.mark.parametrize("path", FILES, ids=lambda p: str(p.relative_to(ROOT)))
def test_no_import_from_tests(path):
    bad = sorted(m for m in imported_modules(path) if m == "tests" or m.startswith("tests."))
    assert bad == [], f"{path.relative_to(ROOT)} imports {bad}: move the shared code to tools/"
