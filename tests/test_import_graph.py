"""pricer's modules import each other in one direction only: no cycle, counting the imports inside
functions too (an import moved into a function hides a cycle from Python, not from a reader)."""

import ast
from pathlib import Path

from pricer import PACKAGE_DIR


def imports_of(path: Path) -> set[str]:
    """The pricer modules a file imports, anywhere in it."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            if node.module == "pricer":
                found |= {alias.name for alias in node.names}
            elif node.module.startswith("pricer."):
                found.add(node.module.split(".")[1])
        elif isinstance(node, ast.Import):
            found |= {alias.name.split(".")[1] for alias in node.names if alias.name.startswith("pricer.")}
    return found


def graph() -> dict[str, set[str]]:
    modules = {path.stem: path for path in PACKAGE_DIR.glob("*.py") if path.stem != "__init__"}
    return {name: imports_of(path) & modules.keys() - {name} for name, path in modules.items()}


def cycle(edges: dict[str, set[str]]) -> list[str] | None:
    """One import cycle, as the list of modules around it, or None."""
    state: dict[str, str] = {}
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = "open"
        stack.append(node)
        for target in sorted(edges[node]):
            if state.get(target) == "open":
                return stack[stack.index(target):] + [target]
            if target not in state and (found := visit(target)):
                return found
        state[node] = "done"
        stack.pop()
        return None

    for node in sorted(edges):
        if node not in state and (found := visit(node)):
            return found
    return None


def test_the_finder_sees_a_cycle_through_a_function_level_import(tmp_path: Path) -> None:
    (tmp_path / "a.py").write_text("from pricer.b import x\n")
    (tmp_path / "b.py").write_text("def f():\n    from pricer import a\n")
    edges = {p.stem: imports_of(p) for p in tmp_path.glob("*.py")}
    assert cycle(edges) == ["a", "b", "a"]


def test_pricer_has_no_import_cycle() -> None:
    assert cycle(graph()) is None, " -> ".join(cycle(graph()))
