"""The module graph is honest (issue 7): no import cycle between learning-mcp's modules, and no import of another
learning-mcp module hidden inside a function in ``tools/`` or ``server/`` (only heavy third-party libraries such
as torch and transformers may be imported lazily there).

The graph is read with ``ast`` from the source folders the package maps (pyproject ``package-dir``); imports under
``if TYPE_CHECKING:`` are left out (they never run).
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = {"learning_mcp": ROOT / "learning_mcp", "learning_mcp.server": ROOT / "server",
            "learning_mcp.tools": ROOT / "tools", "learning_mcp.backend": ROOT / "backend"}
LAZY_ALLOWED = {"torch", "transformers"}


def modules() -> dict[str, Path]:
    found = {}
    for package, folder in PACKAGES.items():
        for path in sorted(folder.glob("*.py")):
            found[package if path.stem == "__init__" else f"{package}.{path.stem}"] = path
    return found


def _is_type_checking(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def imports(name: str, path: Path, known: set[str]) -> list[tuple[str, bool]]:
    """(imported learning-mcp module, imported inside a function?) for every import that runs."""
    package = name if path.stem == "__init__" else name.rsplit(".", 1)[0]
    out: list[tuple[str, bool]] = []

    def target(base: str, names: list[str]) -> list[str]:
        hits = [f"{base}.{n}" for n in names if f"{base}.{n}" in known]
        return hits or ([base] if base in known else [])

    def visit(node: ast.AST, in_function: bool) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.If) and _is_type_checking(child):
                for other in child.orelse:
                    visit(other, in_function)
                continue
            nested = in_function or isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda))
            if isinstance(child, ast.Import):
                out.extend((m, in_function) for a in child.names for m in target(a.name, []) or
                           ([a.name] if a.name in known else []))
            elif isinstance(child, ast.ImportFrom):
                if child.level:
                    base = package.rsplit(".", child.level - 1)[0] if child.level > 1 else package
                    base = f"{base}.{child.module}" if child.module else base
                else:
                    base = child.module or ""
                out.extend((m, in_function) for m in target(base, [a.name for a in child.names]))
            visit(child, nested)

    visit(ast.parse(path.read_text(encoding="utf-8")), False)
    return out


def test_there_is_no_import_cycle():
    mods = modules()
    known = set(mods)
    graph = {name: sorted({m for m, _ in imports(name, path, known) if m != name}) for name, path in mods.items()}
    state: dict[str, int] = {}
    stack: list[str] = []

    def dfs(node: str) -> None:
        state[node] = 1
        stack.append(node)
        for nxt in graph[node]:
            if state.get(nxt) == 1:
                cycle = stack[stack.index(nxt):] + [nxt]
                raise AssertionError("import cycle: " + " -> ".join(cycle))
            if nxt not in state:
                dfs(nxt)
        stack.pop()
        state[node] = 2

    for name in sorted(graph):
        if name not in state:
            dfs(name)
    assert "learning_mcp.tools.client" in graph and graph["learning_mcp.server.app"], "the graph was not read"


def test_no_project_import_is_hidden_inside_a_function():
    mods = modules()
    known = set(mods)
    hidden = [f"{name} imports {m} inside a function" for name, path in mods.items()
              if name.startswith(("learning_mcp.tools", "learning_mcp.server"))
              for m, lazy in imports(name, path, known) if lazy]
    assert not hidden, hidden


def test_lazy_third_party_imports_in_tools_and_server_are_only_heavy_libraries():
    lazy = []
    for name, path in modules().items():
        if not name.startswith(("learning_mcp.tools", "learning_mcp.server")):
            continue
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                for inner in ast.walk(node):
                    if isinstance(inner, (ast.Import, ast.ImportFrom)) and inner is not node:
                        top = (inner.names[0].name if isinstance(inner, ast.Import) else inner.module or "")
                        top = top.split(".")[0]
                        if top not in LAZY_ALLOWED and not getattr(inner, "level", 0):
                            lazy.append(f"{name}: {top}")
    # tools/dataset.py starts its process pool's machinery only for big files (its own module, not in this change)
    allowed_elsewhere = {"learning_mcp.tools.dataset: multiprocessing", "learning_mcp.tools.dataset: concurrent"}
    assert set(lazy) <= allowed_elsewhere, sorted(set(lazy) - allowed_elsewhere)
