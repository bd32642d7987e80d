"""The import graph of src/dashkanban, read from the source (ast), points one way.

A module-level import cycle inside the package makes the import order decide which names exist
(the half-initialised module problem) and ties two concerns together so neither can change alone.
The test reads every `import`/`from ... import` of every module, split into those that run when
the module is imported (module level, outside `if TYPE_CHECKING:`) and those inside a function
(lazy: they run only when the function does), and fails on any cycle among the module-level
ones. Layers and rules: CONTRIBUTING.md.
"""

from __future__ import annotations

import argparse
import ast
import inspect
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import dashkanban
from dashkanban.cli import _resolve, build_parser

PACKAGE = Path(dashkanban.__file__).parent

# Edges that close a cycle and cannot be cut yet, each with the reason. The tests ignore exactly
# these edges; any other cycle fails, and an exception that no longer exists fails too (so the
# lists only shrink). None at module level.
KNOWN_CYCLE_EDGES: dict[tuple[str, str], str] = {}

# Counting lazy (function-level) imports too. These cycles are harmless at import time, but each
# ties two layers together; they stay listed until the module they need is changed.
KNOWN_LAZY_CYCLE_EDGES: dict[tuple[str, str], str] = {}


@dataclass(frozen=True)
class Imports:
    module_level: frozenset[str]  # run when the module is imported
    function_level: frozenset[str]  # run when a function runs (lazy)
    typing_only: frozenset[str]  # under `if TYPE_CHECKING:`: never run


def modules() -> dict[str, Path]:
    """Every module of the package by dotted name (a package by its own name)."""
    found = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        found[".".join(parts)] = path
    return found


def _targets(node: ast.Import | ast.ImportFrom, name: str, path: Path,
             known: dict[str, Path]) -> Iterator[str]:
    """The package's modules an import statement loads (its own module for `from m import x`,
    the submodule for `from package import submodule`)."""
    if isinstance(node, ast.Import):
        candidates = [alias.name for alias in node.names]
    else:
        base = node.module or ""
        if node.level:
            package = name.split(".") if path.name == "__init__.py" else name.split(".")[:-1]
            package = package[: len(package) - node.level + 1]
            base = ".".join([*package, base] if base else package)
        candidates = [f"{base}.{alias.name}" if f"{base}.{alias.name}" in known else base
                      for alias in node.names]
    for candidate in candidates:
        while candidate and candidate not in known:
            candidate = candidate.rpartition(".")[0]
        if candidate.startswith("dashkanban") and candidate != name:
            yield candidate


def _is_type_checking(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def imports_of(name: str, path: Path, known: dict[str, Path]) -> Imports:
    module_level: set[str] = set()
    function_level: set[str] = set()
    typing_only: set[str] = set()

    def visit(node: ast.AST, where: set[str]) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.Import | ast.ImportFrom):
                where.update(_targets(child, name, path, known))
            elif isinstance(child, ast.FunctionDef | ast.AsyncFunctionDef | ast.Lambda):
                visit(child, function_level if where is module_level else where)
            elif isinstance(child, ast.If) and _is_type_checking(child):
                for part in child.body:
                    visit(ast.Module(body=[part], type_ignores=[]), typing_only)
                for part in child.orelse:
                    visit(ast.Module(body=[part], type_ignores=[]), where)
            else:
                visit(child, where)

    visit(ast.parse(path.read_text(encoding="utf-8"), str(path)), module_level)
    return Imports(frozenset(module_level), frozenset(function_level), frozenset(typing_only))


def graph() -> dict[str, Imports]:
    known = modules()
    return {name: imports_of(name, path, known) for name, path in known.items()}


def cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components with more than one module (Tarjan), each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def connect(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for target in sorted(edges.get(node, ())):
            if target not in index:
                connect(target)
                low[node] = min(low[node], low[target])
            elif target in on_stack:
                low[node] = min(low[node], index[target])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in sorted(edges):
        if node not in index:
            connect(node)
    return sorted(found)


def _module_edges(imports: dict[str, Imports]) -> dict[str, set[str]]:
    return {name: set(i.module_level) for name, i in imports.items()}


def test_no_import_cycle_at_module_level() -> None:
    edges = _module_edges(graph())
    for source, target in KNOWN_CYCLE_EDGES:
        edges[source].discard(target)
    assert cycles(edges) == []


def _all_edges(imports: dict[str, Imports]) -> dict[str, set[str]]:
    return {name: set(i.module_level | i.function_level) for name, i in imports.items()}


def test_no_import_cycle_counting_lazy_imports() -> None:
    """The outbox no longer imports the Courier (delivery.py) back: the outbox commands moved to
    outbox_commands.py, above both."""
    edges = _all_edges(graph())
    for source, target in KNOWN_LAZY_CYCLE_EDGES:
        edges[source].discard(target)
    assert cycles(edges) == []


def test_known_cycle_edges_still_exist() -> None:
    """A known exception that was fixed must leave the list, so it cannot hide a new cycle."""
    imports = graph()
    edges, lazy = _module_edges(imports), _all_edges(imports)
    assert [edge for edge in KNOWN_CYCLE_EDGES if edge[1] not in edges[edge[0]]] == []
    assert [edge for edge in KNOWN_LAZY_CYCLE_EDGES if edge[1] not in lazy[edge[0]]] == []


def test_readers_are_below_the_dispatcher() -> None:
    """capture/__init__ picks a reader by magic number (lazily); the readers and live capture take
    Frame and the shared rules from capture/frame.py, never from the package that picks them."""
    imports = graph()
    for reader in ("pcap", "pcapng", "libpcap", "live"):
        found = imports[f"dashkanban.capture.{reader}"]
        assert "dashkanban.capture.frame" in found.module_level, reader
        assert "dashkanban.capture" not in found.module_level | found.function_level, reader


def test_outbox_is_below_the_courier() -> None:
    imports = graph()
    assert "dashkanban.outbox" in imports["dashkanban.delivery"].module_level
    outbox = imports["dashkanban.outbox"]
    assert "dashkanban.delivery" not in outbox.module_level | outbox.function_level


def _handlers(parser: argparse.ArgumentParser, prefix: str = "") -> Iterator[tuple[str, str]]:
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, child in action.choices.items():
                handler = child.get_default("handler")
                if handler is not None:
                    yield prefix + name, handler
                yield from _handlers(child, f"{prefix}{name} ")


def test_every_command_handler_resolves() -> None:
    """The CLI names each handler as "module:function" and imports it only when it runs; here
    every one is imported and must be a function of one argument."""
    found = dict(_handlers(build_parser()))
    assert found["outbox flush"] == "dashkanban.outbox_commands:flush_command"
    assert sorted(found) == [
        "check", "demo", "discover", "kanban refilled", "kanban report", "kanban rules install",
        "kanban rules uninstall", "outbox drop", "outbox flush", "outbox status", "register",
        "replay", "run", "sandbox", "service install", "service uninstall", "test-button"]
    for name, spec in found.items():
        handler = _resolve(spec)
        assert callable(handler), name
        assert len(inspect.signature(handler).parameters) == 1, name


def test_graph_reads_every_kind_of_import(tmp_path: Path) -> None:
    """The reader itself: relative, absolute, submodule, lazy and TYPE_CHECKING imports."""
    package = tmp_path / "dashkanban"
    (package / "sub").mkdir(parents=True)
    (package / "__init__.py").write_text("")
    (package / "sub" / "__init__.py").write_text("from . import leaf\n")
    (package / "sub" / "leaf.py").write_text("")
    (package / "a.py").write_text(
        "from typing import TYPE_CHECKING\nimport dashkanban.b\nfrom .sub import leaf\n"
        "if TYPE_CHECKING:\n    from dashkanban.c import X\n"
        "def f():\n    from dashkanban import c\n    return c\n")
    (package / "b.py").write_text("from dashkanban.sub.leaf import y\n")
    (package / "c.py").write_text("from dashkanban.a import f\n")
    known = {}
    for path in sorted(package.rglob("*.py")):
        parts = list(path.relative_to(tmp_path).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        known[".".join(parts)] = path
    got = {name: imports_of(name, path, known) for name, path in known.items()}
    assert got["dashkanban.a"] == Imports(
        module_level=frozenset({"dashkanban.b", "dashkanban.sub.leaf"}),
        function_level=frozenset({"dashkanban.c"}),
        typing_only=frozenset({"dashkanban.c"}),
    )
    assert got["dashkanban.sub"].module_level == {"dashkanban.sub.leaf"}
    assert got["dashkanban.b"].module_level == {"dashkanban.sub.leaf"}
    assert got["dashkanban.c"].module_level == {"dashkanban.a"}
    edges = _module_edges(got)
    assert cycles(edges) == []
    edges["dashkanban.c"].add("dashkanban.b")
    edges["dashkanban.sub.leaf"] = {"dashkanban.c"}
    assert cycles(edges) == [["dashkanban.a", "dashkanban.b", "dashkanban.c",
                              "dashkanban.sub.leaf"]]
