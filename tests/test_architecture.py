"""The package's shape: no import cycles between attnlens modules, and the public names the
README documents."""

from __future__ import annotations

import ast
import importlib.util
import types
from pathlib import Path

import attnlens

PACKAGE = Path(attnlens.__file__).parent


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _modules() -> dict[str, Path]:
    return {_module_name(path): path for path in PACKAGE.rglob("*.py")}


def _imports(path: Path, known: set[str]) -> set[str]:
    """attnlens modules that ``path`` imports, at the top or inside functions (a deferred import
    that only works because it is deferred is still a cycle of the design)."""
    found: set[str] = set()
    package = _module_name(path) if path.name == "__init__.py" else _module_name(path).rpartition(".")[0]
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names if alias.name in known)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join(package.split(".")[: len(package.split(".")) - node.level + 1] + ([base] if base else []))
            if base not in known:
                continue
            found.add(base)
            found.update(f"{base}.{alias.name}" for alias in node.names if f"{base}.{alias.name}" in known)
    return found


def _cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for child in sorted(graph[node]):
            if state.get(child) == 1:
                return stack[stack.index(child):] + [child]
            if child not in state:
                found = visit(child)
                if found:
                    return found
        stack.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state:
            found = visit(node)
            if found:
                return found
    return None


def test_no_import_cycles_between_modules() -> None:
    modules = _modules()
    known = set(modules)
    graph = {name: _imports(path, known) - {name} for name, path in modules.items()}
    # A package importing its own submodules (to re-export them) is not a cycle of the design;
    # a submodule importing its package back is.
    for name in graph:
        # importing a.b.c runs the packages a.b and a first
        parents = {".".join(child.split(".")[:depth]) for child in graph[name] for depth in range(2, child.count(".") + 1)}
        graph[name] = {c for c in graph[name] | (parents & known) if c != name and not c.startswith(name + ".")}
    assert _cycle(graph) is None, f"import cycle: {' -> '.join(_cycle(graph))}"


def test_the_function_explain_is_not_shadowed_by_a_package() -> None:
    from attnlens import Explanation, explain, methods

    assert callable(explain) and explain is attnlens.explain
    assert callable(methods) and "rollout" in methods()
    assert Explanation.__module__ == "attnlens.explainers.base"
    assert not isinstance(attnlens.explain, types.ModuleType)
    assert importlib.util.find_spec("attnlens.explain") is None, "a module attnlens.explain would shadow the function"


def test_subpackages_load_on_first_access() -> None:
    import subprocess
    import sys

    code = "import attnlens, sys; assert 'attnlens.evaluate' not in sys.modules; print(attnlens.evaluate.run.__module__)"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "attnlens.evaluate.runner"
