"""The shape of the code: small modules and classes, and no import cycle between them.

Every package the wheel ships (``[tool.setuptools] packages`` in ``pyproject.toml``) is read,
and every form of import counts as an edge: ``import a.b``, ``from a import b`` (``a.b`` when
``b`` is a module of ``a``, else ``a``), ``from a.b import c`` and relative imports.
"""

from __future__ import annotations

import ast
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
#: The top-level packages (``demo.data`` holds data files only, read as part of ``demo``).
PACKAGES = tuple(p for p in tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"]
                 if "." not in p)  # fmt: skip
MAX_MODULE_LINES = 400
MAX_CLASS_LINES = 300
#: Oversized modules and classes that are let be, each with its reason. An entry that is no longer
#: needed fails the test, so the list only shrinks.
TOO_BIG_BUT_KNOWN = {
    "emulator.gemini": "Gemini's Batch Mode, Files and generateContent in one emulated API",
    "emulator.gemini.GeminiApi": "as emulator.gemini",
}
#: Import cycles let be, by their modules, each with its reason.
CYCLES_BUT_KNOWN: dict[frozenset[str], str] = {}


def _modules(root: Path = ROOT) -> dict[str, Path]:
    modules = {}
    for package in PACKAGES:
        for path in sorted((root / package).rglob("*.py")):
            name = ".".join(path.relative_to(root).with_suffix("").parts).removesuffix(".__init__")
            modules[name] = path
    return modules


def _imports(name: str, path: Path, known: set[str]) -> set[str]:
    """The project's modules that module ``name`` (at ``path``) imports, by any form of import."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:  # relative: ``from . import x``, ``from ..a import x``
                base = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                source = ".".join([*base, *([node.module] if node.module else [])])
            else:
                source = node.module or ""
            for alias in node.names:
                submodule = f"{source}.{alias.name}".lstrip(".")
                found.add(submodule if submodule in known else source)
    # ``import a.b.c`` imports a.b.c; a name that is not a module counts as its package
    resolved = set()
    for imported in found:
        while imported and imported not in known:
            imported = imported.rpartition(".")[0]
        if imported:
            resolved.add(imported)
    return resolved


def _too_big(modules: dict[str, Path]) -> list[str]:
    too_big = []
    for name, path in modules.items():
        source = path.read_text()
        if len(source.splitlines()) > MAX_MODULE_LINES:
            too_big.append(f"{name}: {len(source.splitlines())} lines")
        for node in ast.parse(source).body:
            if isinstance(node, ast.ClassDef) and node.end_lineno is not None:
                size = node.end_lineno - node.lineno + 1
                if size > MAX_CLASS_LINES:
                    too_big.append(f"{name}.{node.name}: {size} lines")
    return too_big


def _cycle(modules: dict[str, Path], known_cycles: dict[frozenset[str], str] | None = None) -> list[str] | None:
    known = set(modules)
    graph = {name: _imports(name, path, known) - {name} for name, path in modules.items()}
    for cycle in known_cycles or {}:
        first, second = sorted(cycle)
        graph[first].discard(second)
        graph[second].discard(first)
    done: set[str] = set()

    def visit(name: str, path: list[str]) -> list[str] | None:
        if name in path:
            return [*path[path.index(name) :], name]
        if name in done:
            return None
        for dependency in sorted(graph.get(name, ())):
            if (cycle := visit(dependency, [*path, name])) is not None:
                return cycle
        done.add(name)
        return None

    for name in sorted(graph):
        if (cycle := visit(name, [])) is not None:
            return cycle
    return None


def test_every_shipped_package_is_read() -> None:
    assert {"streams", "agents", "providers", "sinks", "ops", "emulator", "devkafka", "demo"} <= set(PACKAGES)
    read = {name.split(".")[0] for name in _modules()}
    assert read == set(PACKAGES)


def test_no_module_or_class_is_too_big() -> None:
    too_big = _too_big(_modules())
    names = {entry.partition(":")[0] for entry in too_big}
    assert [e for e in too_big if e.partition(":")[0] not in TOO_BIG_BUT_KNOWN] == [], f"split these by job: {too_big}"
    assert set(TOO_BIG_BUT_KNOWN) <= names, f"no longer too big: {set(TOO_BIG_BUT_KNOWN) - names}"


#: Each package imports only packages of a lower rank: contracts at the bottom (``streams``: the
#: configuration, events, results, dead letters, window records, and Kafka in), the two outer
#: boundaries on them (``sinks``: Kafka out; ``providers``: the provider APIs), the operator
#: commands and the development broker above, the demo on them, the worker and its CLI
#: (``agents.cli``) at the top. The emulator stands apart.
RANKS = {"streams": 0, "emulator": 0, "sinks": 1, "providers": 1, "devkafka": 2, "ops": 2, "demo": 3, "agents": 4}


def test_no_package_imports_one_above_it() -> None:
    assert set(RANKS) == set(PACKAGES), "every shipped package has a rank"
    modules = _modules()
    upward = sorted(
        f"{name} -> {imported}"
        for name, path in modules.items()
        for imported in _imports(name, path, set(modules))
        if name.split(".")[0] != imported.split(".")[0] and RANKS[imported.split(".")[0]] >= RANKS[name.split(".")[0]]
    )
    assert upward == [], f"imports of a package at or above the importer's rank: {upward}"


def test_no_import_cycle() -> None:
    modules = _modules()
    cycle = _cycle(modules, CYCLES_BUT_KNOWN)
    assert cycle is None, "import cycle: " + " -> ".join(cycle or [])
    for pair in CYCLES_BUT_KNOWN:
        assert _cycle({name: modules[name] for name in pair}) is not None, f"no longer a cycle: {sorted(pair)}"


@pytest.mark.parametrize(
    ("statement", "edge"),
    [
        ("import streams.errors", "streams.errors"),
        ("import streams.errors as errors", "streams.errors"),
        ("from streams import errors", "streams.errors"),
        ("from streams.errors import ConfigError", "streams.errors"),
        ("from streams import ConfigError", "streams"),
        ("from . import errors", "streams.errors"),
        ("from .errors import ConfigError", "streams.errors"),
        ("from .. import streams", "streams"),
    ],
)
def test_every_import_form_is_an_edge(tmp_path: Path, statement: str, edge: str) -> None:
    module = tmp_path / "streams" / "config.py"
    module.parent.mkdir()
    module.write_text(statement + "\n")
    known = {"streams", "streams.config", "streams.errors"}
    assert _imports("streams.config", module, known) == {edge}


def test_a_planted_cycle_and_a_planted_giant_are_found(tmp_path: Path) -> None:
    """The rules can fail: a cycle through ``from pkg import module`` and an oversized module."""
    for package in PACKAGES:
        (tmp_path / package).mkdir()
        (tmp_path / package / "__init__.py").write_text("")
    (tmp_path / "demo" / "a.py").write_text("from emulator import b\n")
    (tmp_path / "emulator" / "b.py").write_text("from ..demo import a\n" + "x = 1\n" * MAX_MODULE_LINES)
    modules = _modules(tmp_path)
    assert _cycle(modules) == ["demo.a", "emulator.b", "demo.a"]
    assert _too_big(modules) == [f"emulator.b: {MAX_MODULE_LINES + 1} lines"]


#: The packages where Kafka's clients are: ``streams`` (intake: the faust app and transport, every
#: private hook, the topic reader) and ``sinks`` (output: the writers, topics and their limits).
KAFKA_ROOMS = frozenset({"streams", "sinks"})
#: The Kafka client libraries (``mode`` is faust's service framework).
KAFKA_LIBRARIES = frozenset({"aiokafka", "faust", "mode"})
#: Packages that may use Kafka's clients directly, each with its reason (none: the list only shrinks).
KAFKA_BUT_KNOWN: dict[str, str] = {}


def _libraries(path: Path) -> set[str]:
    """The top-level names of the absolute imports of a module, by any form of import."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and not node.level and node.module:
            found.add(node.module.split(".")[0])
    return found


def _kafka_outside_rooms(modules: dict[str, Path]) -> list[str]:
    return sorted(
        f"{name} imports {', '.join(sorted(_libraries(path) & KAFKA_LIBRARIES))}"
        for name, path in modules.items()
        if name.split(".")[0] not in KAFKA_ROOMS | set(KAFKA_BUT_KNOWN) and _libraries(path) & KAFKA_LIBRARIES
    )


def test_only_streams_and_sinks_hold_kafka_clients() -> None:
    """Kafka in through ``streams``, out through ``sinks``: no other package imports aiokafka, faust
    or mode (in any form, at any depth: a function's import counts)."""
    assert _kafka_outside_rooms(_modules()) == []


def test_a_planted_kafka_import_is_found(tmp_path: Path) -> None:
    for package in PACKAGES:
        (tmp_path / package).mkdir()
        (tmp_path / package / "__init__.py").write_text("")
    (tmp_path / "agents" / "a.py").write_text("def f():\n    from aiokafka.admin import AIOKafkaAdminClient\n")
    (tmp_path / "ops" / "b.py").write_text("import faust.types\n")
    (tmp_path / "sinks" / "c.py").write_text("from aiokafka import AIOKafkaProducer\n")
    assert _kafka_outside_rooms(_modules(tmp_path)) == ["agents.a imports aiokafka", "ops.b imports faust"]
