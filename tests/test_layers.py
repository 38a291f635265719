"""The layers hold: models imports nothing of ours, cache_warmer only models, and no module-level
import cycle exists among our modules (read from the source with ast, nothing is imported)."""
import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("models", "cache_warmer", "stream")


def _module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports() -> dict[str, set[str]]:
    """Our modules -> our modules they import at module level (not inside functions)."""
    graph: dict[str, set[str]] = {}
    for package in PACKAGES:
        for path in (ROOT / package).rglob("*.py"):
            name = _module_name(path)
            is_package = path.name == "__init__.py"
            deps = set()
            for node in ast.parse(path.read_text()).body:
                if isinstance(node, ast.Import):
                    deps |= {a.name for a in node.names}
                elif isinstance(node, ast.ImportFrom):
                    if node.level:
                        base = name.split(".")[: len(name.split(".")) - node.level + (1 if is_package else 0)]
                        target = ".".join(base + ([node.module] if node.module else []))
                    else:
                        target = node.module
                    deps.add(target)
                    deps |= {f"{target}.{a.name}" for a in node.names}
            graph[name] = {d for d in deps if d.split(".")[0] in PACKAGES}
    known = set(graph)
    return {m: {d for d in deps if d in known and d != m} for m, deps in graph.items()}


def test_each_layer_imports_only_the_layers_below():
    allowed = {"models": {"models"}, "cache_warmer": {"models", "cache_warmer"},
               "stream": set(PACKAGES)}
    for module, deps in _imports().items():
        for dep in deps:
            assert dep.split(".")[0] in allowed[module.split(".")[0]], f"{module} imports {dep}"


def test_no_import_cycles():
    graph = _imports()
    state: dict[str, int] = {}

    def visit(m: str, path: list[str]) -> None:
        state[m] = 1
        for d in sorted(graph[m]):
            if d.startswith(m + "."):
                continue  # a package importing its own submodules is not a cycle
            if state.get(d) == 1:
                raise AssertionError("import cycle: " + " -> ".join(path[path.index(d):] + [m, d]) if d in path
                                     else f"import cycle through {m} -> {d}")
            if d not in state:
                visit(d, path + [m])
        state[m] = 2

    for m in sorted(graph):
        if m not in state:
            visit(m, [])
    assert len(graph) > 50
