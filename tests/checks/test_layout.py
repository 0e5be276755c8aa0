"""The repository's layout rules, read from the source with `ast` (the modules are parsed,
not imported): dependencies run one way, between the packages and between the layers
of `streaming/` (docs/architecture.md, "Layers"), and each dead-letter reason is
written once, in its registry."""

import ast
import pathlib
import re

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


def module_name(path: pathlib.Path, root: pathlib.Path) -> str:
    parts = path.relative_to(root).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def import_graph(root: pathlib.Path, package: str) -> dict[str, dict[str, int]]:
    """{module: {module it imports: line}} between the modules of `package` under
    `root`, imports inside functions included. `from p import m` imports the module
    `p.m` when there is one, else `p`."""
    paths = {module_name(p, root): p for p in sorted((root / package).rglob("*.py"))}
    graph: dict[str, dict[str, int]] = {}
    for name, path in paths.items():
        edges = graph.setdefault(name, {})
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:  # relative: from the module's own package, up level - 1
                    anchor = name.split(".")
                    anchor = anchor[: len(anchor) - node.level + (path.name == "__init__.py")]
                    base = ".".join(anchor + ([base] if base else []))
                targets = [
                    f"{base}.{alias.name}" if f"{base}.{alias.name}" in paths else base
                    for alias in node.names
                ]
            else:
                continue
            for target in targets:
                while target not in paths and "." in target:
                    target = target.rpartition(".")[0]
                if target in paths and target != name:
                    edges.setdefault(target, node.lineno)
    return graph


def documented_layers(text: str) -> list[tuple[str, ...]]:
    """The numbered list under "## Layers": the names on each line, lowest first."""
    section = text.split("\n## Layers\n", 1)[1].split("\n## ", 1)[0]
    return [
        tuple(re.findall(r"`([\w.]+)`", line))
        for line in section.splitlines()
        if re.match(r"\d+\. ", line)
    ]


def unit(module: str) -> str:
    """The sub-package or top-level module a module belongs to; the package itself is
    "" (its `__init__`, below every layer)."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else ""


def wrong_direction(graph: dict[str, dict[str, int]], layers) -> list[str]:
    """Every import of a module from a later layer, or from a peer in its own."""
    rank = {name: i for i, names in enumerate(layers) for name in names}
    rank[""] = -1
    unlisted = len(rank)  # a part missing from the docs (the test below names it)
    return [
        f"{module}:{line} imports {target}: {unit(target) or target} is not below {unit(module)}"
        for module, edges in sorted(graph.items())
        for target, line in sorted(edges.items())
        if unit(target) != unit(module)
        and rank.get(unit(target), unlisted) >= rank.get(unit(module), unlisted)
    ]


def find_cycle(graph: dict[str, dict[str, int]]) -> list[str]:
    """One import cycle as [a, b, ..., a], or [] when there is none."""
    done: set[str] = set()
    path: list[str] = []

    def visit(module: str) -> list[str]:
        path.append(module)
        for target in sorted(graph.get(module, ())):
            if target in path:
                return path[path.index(target) :] + [target]
            if target not in done:
                found = visit(target)
                if found:
                    return found
        path.pop()
        done.add(module)
        return []

    for module in sorted(graph):
        found = [] if module in done else visit(module)
        if found:
            return found
    return []


LAYERS = documented_layers((ROOT / "docs" / "architecture.md").read_text())


def test_every_part_of_the_pipeline_has_its_layer():
    units = {unit(m) for m in import_graph(ROOT, "streaming")} - {""}
    listed = [name for names in LAYERS for name in names]
    assert sorted(listed) == sorted(units), "docs/architecture.md, Layers"


def test_imports_run_down_the_layers():
    wrong = wrong_direction(import_graph(ROOT, "streaming"), LAYERS)
    assert not wrong, "\n".join(wrong)


def test_no_modules_import_each_other_in_a_cycle():
    cycle = find_cycle(import_graph(ROOT, "streaming"))
    assert not cycle, " -> ".join(cycle)


def test_the_layer_checks_see_nested_imports_and_cycles(tmp_path):
    package = tmp_path / "pkg"
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "low.py").write_text("def f():\n    from pkg.high import g\n")
    (package / "high.py").write_text("from pkg import low\n\n\ndef g():\n    pass\n")
    graph = import_graph(tmp_path, "pkg")
    assert graph == {"pkg": {}, "pkg.high": {"pkg.low": 1}, "pkg.low": {"pkg.high": 2}}
    assert wrong_direction(graph, [("low",), ("high",)]) == [
        "pkg.low:2 imports pkg.high: high is not below low"
    ]
    assert wrong_direction(graph, [("low", "high")]) == [
        "pkg.high:1 imports pkg.low: low is not below high",
        "pkg.low:2 imports pkg.high: high is not below low",
    ]
    assert find_cycle(graph) == ["pkg.high", "pkg.low", "pkg.high"]
    assert find_cycle({"pkg.high": {"pkg.low": 1}, "pkg.low": {}}) == []


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
