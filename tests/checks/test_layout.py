"""The repository's layout rules, read from the source with `ast` (the modules are parsed,
not imported): dependencies run one way, and each dead-letter reason is written once,
in its registry."""

import ast
import pathlib

import pytest

from streaming import failures

ROOT = pathlib.Path(__file__).resolve().parents[2]
PACKAGES = ("streaming", "publisher", "analysis", "schemas")
# Who may import whom: the pipeline depends on neither the backfill CLI nor the
# analysts' tools; both of those import the pipeline's shared pieces.
FORBIDDEN = {
    "streaming": ("publisher", "analysis"),
    "schemas": ("streaming", "publisher", "analysis"),
}


def modules(*packages: str) -> list[pathlib.Path]:
    return sorted(p for package in packages for p in (ROOT / package).rglob("*.py"))


def imported(path: pathlib.Path) -> list[tuple[int, str]]:
    """(line, top-level package) of every import in the module, nested ones included."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name.split(".")[0]) for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found.append((node.lineno, node.module.split(".")[0]))
    return found


@pytest.mark.parametrize("package", sorted(FORBIDDEN))
def test_dependencies_run_one_way(package):
    wrong = [
        f"{path.relative_to(ROOT)}:{line} imports {name}"
        for path in modules(package)
        for line, name in imported(path)
        if name in FORBIDDEN[package]
    ]
    assert not wrong, "\n".join(wrong)


def test_the_direction_check_sees_nested_imports(tmp_path):
    module = tmp_path / "m.py"
    module.write_text("def f():\n    from analysis.sql import table_ref\n")
    assert imported(module) == [(2, "analysis")]


def reason_nodes(path: pathlib.Path) -> list[ast.Constant]:
    """Every string literal in the module that is a reason code."""
    return [
        node
        for node in ast.walk(ast.parse(path.read_text(), str(path)))
        if isinstance(node, ast.Constant)
        and isinstance(node.value, str)
        and node.value in failures.REASONS
    ]


def reason_literals(path: pathlib.Path) -> list[str]:
    """`file:line 'code'` for each of `reason_nodes`."""
    return [f"{path.relative_to(ROOT)}:{n.lineno} {n.value!r}" for n in reason_nodes(path)]


def test_reasons_are_written_only_in_their_registry():
    registry = ROOT / "streaming" / "failures.py"
    assert len(reason_literals(registry)) >= len(failures.REASONS)
    spelled = [
        hit for path in modules(*PACKAGES) if path != registry for hit in reason_literals(path)
    ]
    assert not spelled, "write the constant from streaming/failures.py instead:\n" + "\n".join(
        spelled
    )


def test_the_reason_check_sees_a_literal(tmp_path):
    module = tmp_path / "m.py"
    module.write_text('raise Rejected("not_an_image", "...")\n')
    assert [n.value for n in reason_nodes(module)] == [failures.NOT_AN_IMAGE]


def test_every_reason_has_its_constant():
    for code in failures.REASONS:
        assert getattr(failures, code.upper()) == code
