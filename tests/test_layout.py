"""The library's layout: no module imports one that imports it back (imports for type checking aside)."""
import ast
from pathlib import Path
from typing import Dict, List, Set

ROOT = Path(__file__).resolve().parents[1]


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[0] == "cli":  # installed as nas_zoo.cli
        parts = ["nas_zoo", "cli", *parts[1:]]
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def runtime_imports(tree: ast.Module) -> List[ast.ImportFrom]:
    """The ``from`` imports of a module, without those under ``if TYPE_CHECKING:``."""
    skipped = {id(n) for block in ast.walk(tree) if isinstance(block, ast.If)
               and getattr(block.test, "id", None) == "TYPE_CHECKING" for n in ast.walk(block)}
    return [n for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and id(n) not in skipped]


def import_graph() -> Dict[str, Set[str]]:
    files = {module_name(p): p for folder in ("nas_zoo", "cli") for p in (ROOT / folder).rglob("*.py")}
    graph = {}
    for name, path in files.items():
        package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
        edges = set()
        for node in runtime_imports(ast.parse(path.read_text())):
            base = package.split(".")[:len(package.split(".")) - node.level + 1] if node.level else []
            target = ".".join(base + ([node.module] if node.module else []))
            for alias in node.names:  # "from . import hub" imports the module hub
                edges.add(f"{target}.{alias.name}" if f"{target}.{alias.name}" in files else target)
        graph[name] = {e for e in edges if e in files and e not in (name, "nas_zoo")}
    return graph


def cycle(graph: Dict[str, Set[str]]) -> List[str]:
    """One import cycle in ``graph`` (depth-first search), or []."""
    state: Dict[str, int] = {}  # 1 on the path, 2 done

    def visit(node: str, path: List[str]) -> List[str]:
        state[node] = 1
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                return path[path.index(nxt):] + [nxt]
            if nxt not in state:
                found = visit(nxt, path + [nxt])
                if found:
                    return found
        state[node] = 2
        return []

    for start in sorted(graph):
        if start not in state:
            found = visit(start, [start])
            if found:
                return found
    return []


def test_the_cycle_finder_finds_a_cycle():
    assert cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert cycle({"a": {"b"}, "b": set()}) == []


def test_no_module_imports_itself_back():
    graph = import_graph()
    assert "nas_zoo.harness.train" in graph["nas_zoo.search.algorithm"]  # the graph is read, not empty
    assert cycle(graph) == []
