"""The package's import graph, read from source: every module-level and function-local import, and
literal ``importlib.import_module("trtopt....")`` targets (registries that load a module by name).

Imports under ``if TYPE_CHECKING:`` are left out: they never run. Used by tests/test_import_graph.py.
"""

from __future__ import annotations

import ast
from pathlib import Path


def module_names(package_dir: Path) -> dict[str, Path]:
    """Dotted module name → file, for every ``.py`` under ``package_dir`` (a package's ``__init__`` is the package)."""
    root = package_dir.parent
    names = {}
    for path in sorted(package_dir.rglob("*.py")):
        parts = list(path.relative_to(root).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        names[".".join(parts)] = path
    return names


def _type_checking_lines(tree: ast.AST) -> set[int]:
    lines: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            for child in node.body:
                lines.update(range(child.lineno, child.end_lineno + 1))
    return lines


def _resolve(name: str, modules: dict[str, Path]) -> str | None:
    while name and name not in modules:
        name = name.rpartition(".")[0]
    return name or None


def imports_of(module: str, path: Path, modules: dict[str, Path]) -> set[str]:
    """The package modules ``module`` imports (anywhere in its body), resolved to module names."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    skip = _type_checking_lines(tree)
    prefix = module.split(".")[0]
    found: set[str] = set()
    for node in ast.walk(tree):
        if getattr(node, "lineno", None) in skip:
            continue
        targets: list[str] = []
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = module.split(".") if path.name == "__init__.py" else module.split(".")[:-1]
                parts = parts[:len(parts) - (node.level - 1)]
                base = ".".join(parts + ([node.module] if node.module else []))
            subs = [f"{base}.{a.name}" for a in node.names if f"{base}.{a.name}" in modules]
            # `from pkg import submodule` is an edge to the submodule only (the package is loaded anyway)
            targets = subs if len(subs) == len(node.names) else [base, *subs]
        elif (isinstance(node, ast.Call) and node.args and isinstance(node.args[0], ast.Constant)
              and isinstance(node.args[0].value, str)
              and getattr(node.func, "attr", getattr(node.func, "id", None)) == "import_module"):
            targets = [node.args[0].value]
        elif isinstance(node, ast.Dict):  # registries: {"name": "trtopt.backends.ort", ...}
            targets = [v.value for v in node.values if isinstance(v, ast.Constant) and isinstance(v.value, str)
                       and v.value in modules and "." in v.value]
        for target in targets:
            if target.split(".")[0] == prefix:
                resolved = _resolve(target, modules)
                if resolved and resolved != module:
                    found.add(resolved)
    return found


def import_graph(package_dir: Path) -> dict[str, set[str]]:
    """Module → the package modules it imports."""
    modules = module_names(package_dir)
    return {name: imports_of(name, path, modules) for name, path in modules.items()}


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan), each sorted; [] for a DAG."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []
    counter = 0

    def visit(v: str) -> None:
        nonlocal counter
        index[v] = low[v] = counter
        counter += 1
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph.get(v, ())):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def in_area(module: str, areas: tuple[str, ...]) -> bool:
    """Whether ``module`` is one of ``areas`` or inside one of them (``trtopt.quant`` holds ``trtopt.quant.calibrate``)."""
    return any(module == a or module.startswith(a + ".") for a in areas)


def violations(graph: dict[str, set[str]], rules: list[tuple[tuple[str, ...], tuple[str, ...], tuple[str, ...]]]) -> list[str]:
    """Edges that break a rule ``(importers, forbidden, allowed exceptions)``: a module in ``importers`` may import
    nothing in ``forbidden`` unless it is in ``allowed`` (modules inside ``forbidden`` may import each other)."""
    bad = []
    for importers, forbidden, allowed in rules:
        for module, targets in sorted(graph.items()):
            if not in_area(module, importers):
                continue
            for target in sorted(targets):
                if in_area(target, forbidden) and not in_area(target, allowed) and not in_area(module, forbidden):
                    bad.append(f"{module} imports {target}")
    return bad
