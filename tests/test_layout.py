"""The shape of the code: small modules and classes, and no import cycle between them."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("streams", "agents", "providers", "sinks", "ops")
MAX_MODULE_LINES = 400
MAX_CLASS_LINES = 300


def _modules() -> dict[str, Path]:
    modules = {}
    for package in PACKAGES:
        for path in sorted((ROOT / package).glob("*.py")):
            name = f"{package}.{path.stem}".removesuffix(".__init__")
            modules[name] = path
    return modules


def _imports(path: Path) -> set[str]:
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        names = [node.module] if isinstance(node, ast.ImportFrom) and node.module else []
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        found.update(name for name in names if name.split(".")[0] in PACKAGES)
    return found


def test_no_module_or_class_is_too_big():
    too_big = []
    for name, path in _modules().items():
        source = path.read_text()
        if len(source.splitlines()) > MAX_MODULE_LINES:
            too_big.append(f"{name}: {len(source.splitlines())} lines")
        for node in ast.parse(source).body:
            if isinstance(node, ast.ClassDef) and node.end_lineno is not None:
                size = node.end_lineno - node.lineno + 1
                if size > MAX_CLASS_LINES:
                    too_big.append(f"{name}.{node.name}: {size} lines")
    assert too_big == [], f"split these by job: {too_big}"


def test_no_import_cycle():
    graph = {name: _imports(path) - {name} for name, path in _modules().items()}
    done: set[str] = set()

    def visit(name: str, path: list[str]) -> None:
        if name in path:
            raise AssertionError("import cycle: " + " -> ".join([*path[path.index(name) :], name]))
        if name in done:
            return
        for dependency in graph.get(name, ()):
            visit(dependency, [*path, name])
        done.add(name)

    for name in graph:
        visit(name, [])
