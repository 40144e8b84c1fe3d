"""The import graph of pipeline/ and transforms/: no circle, and arrows point one way (pipeline -> transforms).

Read from the source (every import statement, at the top of a module or inside a
function), not by importing: a circle hidden in a function-level import still
makes the modules depend on each other.
"""

import ast
import pathlib

ROOT = pathlib.Path(__file__).resolve().parents[1]
PACKAGES = ("pipeline", "transforms")


def _modules() -> dict[str, pathlib.Path]:
    found = {}
    for package in PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            parts = path.relative_to(ROOT).with_suffix("").parts
            name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
            found[name] = path
    return found


def _imports(name: str, path: pathlib.Path, modules: dict) -> set[str]:
    """The project modules `name` imports, anywhere in its source."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    targets = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            targets.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative: from the module's own package, up level - 1 packages
                up = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                base = ".".join(up + ([base] if base else []))
            targets.add(base)
            targets.update(f"{base}.{alias.name}" for alias in node.names)  # `from pkg import module`
    return {t for t in targets if t in modules and t != name}


def _graph() -> dict[str, set[str]]:
    modules = _modules()
    return {name: _imports(name, path, modules) for name, path in modules.items()}


def _cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One circle in the graph (its modules, the first repeated at the end), or None."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(node):
        state[node] = 1
        path.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                return path[path.index(nxt) :] + [nxt]
            if nxt not in state:
                found = visit(nxt)
                if found:
                    return found
        path.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state:
            found = visit(node)
            if found:
                return found
    return None


def test_the_cycle_finder_finds_a_circle_and_passes_a_tree():
    assert _cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert _cycle({"a": {"b", "c"}, "b": {"c"}, "c": set()}) is None


def test_the_reader_of_imports_sees_function_level_and_from_package_imports(tmp_path):
    source = tmp_path / "m.py"
    source.write_text("import x.y\ndef f():\n    from x import z\n    from .w import q\n")
    modules = {"x.y": None, "x.z": None, "x.w": None, "x": None}
    assert _imports("x.m", source, modules) == {"x.y", "x", "x.z", "x.w"}


def test_pipeline_and_transforms_import_no_circle():
    graph = _graph()
    assert "pipeline.jobs.main" in graph and "transforms.graph" in graph  # the walk found the modules
    cycle = _cycle(graph)
    assert cycle is None, "import circle: " + " -> ".join(cycle)


def test_nothing_under_transforms_imports_pipeline():
    wrong = {
        name: sorted(t for t in targets if t.split(".")[0] == "pipeline")
        for name, targets in _graph().items()
        if name.split(".")[0] == "transforms"
    }
    assert {name: found for name, found in wrong.items() if found} == {}
