"""The layout's rules, read from the source with `ast`: imports in `bestmatch/` point one way
(no circle between its modules, nor between its parts), and the platform's packages never import
the product's face. Every import counts, inside functions too: a circle held together by a
function-local import is still a circle."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PLATFORM = ("features", "flows", "training", "serving")


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def modules(package: str) -> dict[str, Path]:
    return {module_name(path): path for path in sorted((ROOT / package).rglob("*.py"))}


def imported(path: Path, known: set[str]) -> set[str]:
    """The modules of `known` that the file imports, anywhere in it: `from a import b` counts
    as `a.b` where that is a module, else as `a`. (Importing `a.b` runs `a` first, but a module
    inside `a` is imported while `a` is: that is no circle of ours, so only the named module
    counts.)"""
    found: set[str] = set()
    here = module_name(path)
    package = here if path.name == "__init__.py" else here.rpartition(".")[0]
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.rsplit(".", node.level - 1)[0] if node.level > 1 else package
                base = f"{anchor}.{base}" if base else anchor
            names = [
                f"{base}.{alias.name}" if f"{base}.{alias.name}" in known else base
                for alias in node.names
            ]
        else:
            continue
        for name in names:
            while name and name not in known:
                name = name.rpartition(".")[0]
            if name and name != here:
                found.add(name)
    return found


def import_graph() -> dict[str, set[str]]:
    found = modules("bestmatch")
    return {name: imported(path, set(found)) for name, path in found.items()}


def cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One circle of the graph, or None (depth-first search, three colours)."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for target in sorted(graph.get(node, ())):
            if state.get(target) == 1:
                return [*path[path.index(target) :], target]
            if target not in state and (found := visit(target)):
                return found
        path.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (found := visit(node)):
            return found
    return None


def part(module: str) -> str:
    """The part of `bestmatch/` a module belongs to: `bestmatch.demo.run` → `demo`
    (`python -m bestmatch`, `bestmatch.__main__`, is the command line)."""
    parts = module.split(".")
    if len(parts) == 1:
        return "bestmatch"
    return "cli" if parts[1] == "__main__" else parts[1]


def test_the_cycle_finder_finds_a_circle() -> None:
    assert cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert cycle({"a": {"b", "c"}, "b": {"c"}, "c": set()}) is None


def test_function_local_imports_count() -> None:
    source = ROOT / "bestmatch" / "cli" / "demo.py"  # imports the demo inside the command
    assert "bestmatch.demo.run" in imported(source, set(modules("bestmatch")))


def test_bestmatch_modules_import_in_one_direction() -> None:
    graph = import_graph()
    assert len(graph) > 20 and graph["bestmatch.cli.app"], "the graph was not read"
    assert cycle(graph) is None, f"import circle: {' → '.join(cycle(graph) or [])}"


def test_bestmatch_parts_import_in_one_direction() -> None:
    parts: dict[str, set[str]] = {}
    for source, targets in import_graph().items():
        parts.setdefault(part(source), set()).update(
            part(t) for t in targets if part(t) != part(source)
        )
    assert cycle(parts) is None, f"circle between parts: {' → '.join(cycle(parts) or [])}"
    # the command line is the top: nothing in the product imports it
    assert not [name for name, targets in parts.items() if "cli" in targets and name != "cli"]


@pytest.mark.parametrize("package", PLATFORM)
def test_the_platform_never_imports_the_product(package: str) -> None:
    product = set(modules("bestmatch"))
    for name, path in modules(package).items():
        assert not imported(path, product), f"{name} imports bestmatch"
