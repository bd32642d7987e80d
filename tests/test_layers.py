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
import dataclasses
import importlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

import dashkanban
from dashkanban.cli import build_parser
from dashkanban.commands.check import ButtonTestOptions, CheckOptions
from dashkanban.commands.demo import DemoOptions
from dashkanban.commands.discover import DiscoverOptions
from dashkanban.commands.outbox import DropOptions, FlushOptions, StatusOptions
from dashkanban.commands.register import RegisterOptions
from dashkanban.commands.replay import ReplayOptions
from dashkanban.commands.run import RunOptions
from dashkanban.commands.service import ServiceOptions
from dashkanban.kanban.cli import RefilledOptions, ReportOptions, RulesOptions
from dashkanban.sandbox.cli import SandboxCommandOptions

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
    """The outbox store no longer imports the Courier (outbox/courier.py) back: the outbox
    commands moved to commands/outbox.py, above both."""
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
    assert "dashkanban.outbox.store" in imports["dashkanban.outbox.courier"].module_level
    outbox = imports["dashkanban.outbox.store"]
    assert "dashkanban.outbox.courier" not in outbox.module_level | outbox.function_level


def test_buttons_are_below_the_mqtt_buttons_adapter() -> None:
    """MACID.csv's columns are typed by values.py's Literals (Role, Format, LongPress);
    detect/buttons.py takes none of them from mqtt_buttons/, the adapter built on it (review f1,
    item 6)."""
    imports = graph()
    buttons = imports["dashkanban.detect.buttons"]
    assert "dashkanban.values" in buttons.module_level
    assert not {m for m in buttons.module_level | buttons.function_level | buttons.typing_only
                if m.startswith("dashkanban.mqtt_buttons")}


# The layers, bottom to top (CONTRIBUTING.md, "Where things are"). A module may import from its
# own layer and the ones below, never from one above, not even lazily (`if TYPE_CHECKING:`
# imports are types only and not counted). A module belongs to the layer of its longest prefix.
LAYERS: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("values and plumbing", (
        "dashkanban", "dashkanban.values", "dashkanban.errors", "dashkanban.secret",
        "dashkanban.safetext", "dashkanban.backoff", "dashkanban.files", "dashkanban.config",
        "dashkanban.credentials", "dashkanban.privileges", "dashkanban.samples",
        # A pure codec (text in, text out) that the stages use to check that a name or an
        # event's text can be sent; it lives beside the rest of the Cumulocity adapter.
        "dashkanban.c8y.smartrest",
    )),
    ("detect: frames to presses to events", ("dashkanban.detect", "dashkanban.capture")),
    # metrics.py serves HTTP and health.py writes a state file and talks to systemd: I/O at the
    # edge, beside the other adapters (nothing below imports them).
    ("adapters", ("dashkanban.outbox",  # relayout: keep (the package)
                  "dashkanban.c8y", "dashkanban.mqtt_buttons", "dashkanban.kanban",
                  "dashkanban.sandbox", "dashkanban.metrics", "dashkanban.health")),
    ("composition root", ("dashkanban.compose",)),
    ("commands", ("dashkanban.commands", "dashkanban.kanban.cli", "dashkanban.sandbox.cli",
                  "dashkanban.mqtt_buttons.discover")),
    ("command line", ("dashkanban.cli", "dashkanban.__main__")),
)

# Imports that point up a layer, each with its reason; the list only shrinks.
KNOWN_UPWARD_EDGES: dict[tuple[str, str], str] = {
    ("dashkanban.config", "dashkanban.detect.buttons"): (
        "config checks each `event_text` against sample Buttons; detect/buttons.py itself needs "
        "only values, errors and files"),
}


def layer_of(module: str) -> int:
    best = max(((len(prefix), number) for number, (_, prefixes) in enumerate(LAYERS)
                for prefix in prefixes if module == prefix or module.startswith(prefix + ".")),
               default=None)
    assert best is not None, f"{module} is in no layer: add it to LAYERS"
    return best[1]


def _upward_edges() -> set[tuple[str, str]]:
    return {
        (name, target)
        for name, found in graph().items()
        for target in found.module_level | found.function_level
        if layer_of(target) > layer_of(name)
    }


def test_every_module_is_in_a_layer() -> None:
    assert {name: layer_of(name) for name in modules()}  # layer_of fails on a module in none


def test_imports_point_down_the_layers() -> None:
    assert _upward_edges() - set(KNOWN_UPWARD_EDGES) == set()


def test_known_upward_edges_still_exist() -> None:
    assert set(KNOWN_UPWARD_EDGES) - _upward_edges() == set()


def test_the_layer_rule_can_fail() -> None:
    """A stage reaching up into a command is found (the rule is not vacuous)."""
    assert layer_of("dashkanban.detect.pipeline") < layer_of("dashkanban.commands.run")
    assert layer_of("dashkanban.c8y.smartrest") < layer_of("dashkanban.detect.events")
    assert layer_of("dashkanban.c8y.mqtt") > layer_of("dashkanban.detect.events")
    assert layer_of("dashkanban.kanban.cli") > layer_of("dashkanban.compose")
    assert layer_of("dashkanban.metrics") > layer_of("dashkanban.detect.pipeline")


# The commands: the modules holding a `*_command` handler (the test below finds them all), plus
# cli.py above them and __main__. Nothing else may import one of them.
COMMAND_MODULES = frozenset({
    "dashkanban.__main__", "dashkanban.cli", "dashkanban.commands.check", "dashkanban.commands.run",
    "dashkanban.commands.demo", "dashkanban.commands.discover", "dashkanban.kanban.cli",
    "dashkanban.mqtt_buttons.discover",
    "dashkanban.commands.outbox", "dashkanban.commands.register", "dashkanban.commands.replay",
    "dashkanban.sandbox.cli", "dashkanban.commands.service",
})


def _defines_a_command(path: Path) -> bool:
    tree = ast.parse(path.read_text(encoding="utf-8"))
    return any(isinstance(node, ast.FunctionDef) and node.name.endswith("_command")
               for node in tree.body)


def test_the_command_modules_are_all_listed() -> None:
    found = {name for name, path in modules().items() if _defines_a_command(path)}
    assert found == COMMAND_MODULES - {"dashkanban.__main__", "dashkanban.cli"}


def test_no_lower_layer_imports_a_command() -> None:
    """Imports point down: values, stages, adapters and the composition root never reach up
    into a command module, not even lazily (a shared helper moves down instead, as the pipeline
    wiring moved from commands/replay.py to compose.py)."""
    upward = {
        name: sorted((found.module_level | found.function_level) & COMMAND_MODULES)
        for name, found in graph().items() if name not in COMMAND_MODULES
    }
    assert {name: up for name, up in upward.items() if up} == {}


# A command importing another command ties two of them together; what they share belongs in
# the composition root. These edges remain, each with its reason; the list only shrinks.
KNOWN_COMMAND_EDGES: dict[tuple[str, str], str] = {
    ("dashkanban.commands.discover", "dashkanban.mqtt_buttons.discover"): (
        "`discover --mqtt` is discover's second mode; its listening lives beside the MQTT "
        "buttons' reader"),
}


def _command_edges() -> set[tuple[str, str]]:
    return {
        (name, target)
        for name, found in graph().items()
        if name in COMMAND_MODULES - {"dashkanban.__main__", "dashkanban.cli"}
        for target in (found.module_level | found.function_level) & COMMAND_MODULES
    }


def test_commands_do_not_import_each_other() -> None:
    assert _command_edges() - set(KNOWN_COMMAND_EDGES) == set()


def test_known_command_edges_still_exist() -> None:
    assert set(KNOWN_COMMAND_EDGES) - _command_edges() == set()


def test_values_import_nothing_of_the_package() -> None:
    found = graph()["dashkanban.values"]
    assert found.module_level | found.function_level | found.typing_only == set()


def test_the_pipeline_commands_share_the_composition_root() -> None:
    """run, replay, demo and check build the pipeline and queue presses with compose.py, not
    with copies of their own (run imports it when it starts: nothing at import time)."""
    imports = graph()
    for command in ("replay", "demo", "check"):
        found = imports[f"dashkanban.commands.{command}"]
        assert "dashkanban.compose" in found.module_level, command
    assert "dashkanban.compose" in imports["dashkanban.commands.run"].function_level


def _handlers(parser: argparse.ArgumentParser,
              prefix: str = "") -> Iterator[tuple[str, Callable[..., int]]]:
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, child in action.choices.items():
                handler = child.get_default("handler")
                if handler is not None:
                    yield prefix + name, handler
                yield from _handlers(child, f"{prefix}{name} ")


C = Path("c.ini")

# Each command: its command line (-c c.ini is added), the function the CLI hands it to, and the
# typed options that function must get.
COMMANDS: dict[str, tuple[list[str], str, object]] = {
    "run": (["run", "-i", "eth9", "--allow-root"], "dashkanban.commands.run:run_command",
            RunOptions(config=C, interface="eth9", allow_root=True)),
    "replay": (["replay", "x.pcap", "--dry-run", "--jsonl", "--timeout", "5", "--again"],
               "dashkanban.commands.replay:replay_command",
               ReplayOptions(capture=Path("x.pcap"), dry_run=True, jsonl=True, timeout=5.0,
                             again=True, config=C)),
    "discover": (["discover", "--pcap", "x.pcap", "--seconds", "2", "--csv"],
                 "dashkanban.commands.discover:discover_command",
                 DiscoverOptions(interface=None, pcap=Path("x.pcap"), seconds=2.0, csv=True,
                                 add_to=None, config=C)),
    "check": (["check"], "dashkanban.commands.check:check_command", CheckOptions(config=C)),
    "test-button": (["test-button", "A3", "--timeout", "0"],
                    "dashkanban.commands.check:test_button_command",
                    ButtonTestOptions(button="A3", timeout=0.0, config=C)),
    "register": (["register", "--timeout", "9", "--force", "--certificate"],
                 "dashkanban.commands.register:register_command",
                 RegisterOptions(timeout=9.0, force=True, certificate=True, renew=False,
                                 config=C)),
    "outbox status": (["outbox", "status"], "dashkanban.commands.outbox:status_command",
                      StatusOptions(config=C)),
    "outbox flush": (["outbox", "flush", "--timeout", "7"],
                     "dashkanban.commands.outbox:flush_command",
                     FlushOptions(timeout=7.0, config=C)),
    "outbox drop": (["outbox", "drop", "--button", "A3"], "dashkanban.commands.outbox:drop_command",
                    DropOptions(button="A3", before=None, config=C)),
    "sandbox": (["sandbox", "--mqtt-port", "0", "--http-port", "0", "--bind", "::1", "--tenant",
                 "t1", "--user", "u", "--password", "pw", "--tls-cert", "a.pem", "--tls-key",
                 "k.pem", "--data", "d.json", "--bootstrap-password", "bp"],
                "dashkanban.sandbox.cli:sandbox_command",
                SandboxCommandOptions(mqtt_port=0, http_port=0, bind="::1", tenant="t1",
                                      user="u", password="pw", tls_cert=Path("a.pem"),
                                      tls_key=Path("k.pem"), data=Path("d.json"),
                                      bootstrap_password="bp")),
    "demo": (["demo", "--keep"], "dashkanban.commands.demo:demo_command", DemoOptions(keep=True)),
    "service install": (["service", "install", "--user", "svc", "--root", "/r", "--dry-run"],
                        "dashkanban.commands.service:install_command",
                        ServiceOptions(user="svc", root=Path("/r"), dry_run=True, purge=False,
                                       config=C)),
    "service uninstall": (["service", "uninstall", "--user", "svc", "--purge"],
                          "dashkanban.commands.service:uninstall_command",
                          ServiceOptions(user="svc", root=Path("/"), dry_run=False, purge=True,
                                         config=C)),
    "kanban report": (["kanban", "report", "--since", "30d", "--out", "r.html",
                       "--from-cumulocity", "--json"], "dashkanban.kanban.cli:report_command",
                      ReportOptions(since="30d", out=Path("r.html"), from_cumulocity=True,
                                    json=True, config=C)),
    "kanban refilled": (["kanban", "refilled", "A3", "--timeout", "0"],
                        "dashkanban.kanban.cli:refilled_command",
                        RefilledOptions(bin="A3", timeout=0.0, config=C)),
    "kanban rules install": (["kanban", "rules", "install", "--dry-run"],
                             "dashkanban.kanban.cli:rules_install_command",
                             RulesOptions(dry_run=True, config=C)),
    "kanban rules uninstall": (["kanban", "rules", "uninstall"],
                               "dashkanban.kanban.cli:rules_uninstall_command",
                               RulesOptions(dry_run=False, config=C)),
}


def test_the_cli_imports_no_command_at_start() -> None:
    """`dashkanban --help` stays fast: cli.py imports the commands inside its handlers."""
    assert graph()["dashkanban.cli"].module_level == {"dashkanban.errors"}


@pytest.mark.parametrize("command", sorted(COMMANDS))
def test_every_command_gets_its_typed_options(command: str,
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    """The CLI hands each command to a function by reference (mypy checks the call), importing
    its module only when it runs; here each handler runs with its command's function replaced,
    which must get a frozen dataclass holding every argument given."""
    argv, target, expected = COMMANDS[command]
    module_name, _, function = target.partition(":")
    got: list[object] = []
    module = importlib.import_module(module_name)
    monkeypatch.setattr(module, function, lambda options: got.append(options) or 0)
    args = build_parser().parse_args([*argv, "-c", str(C)])
    assert args.handler(args) == 0
    assert got == [expected]
    assert dataclasses.is_dataclass(expected)
    with pytest.raises(dataclasses.FrozenInstanceError):
        setattr(expected, dataclasses.fields(expected)[0].name, None)


def test_every_command_is_listed() -> None:
    assert sorted(name for name, _ in _handlers(build_parser())) == sorted(COMMANDS)


def test_argparse_stays_in_the_cli() -> None:
    """Commands take typed options: no module below cli.py imports argparse."""
    found = set()
    for name, path in modules().items():
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Import) and any(a.name == "argparse" for a in node.names):
                found.add(name)
            if isinstance(node, ast.ImportFrom) and node.module == "argparse":
                found.add(name)
    assert found == {"dashkanban.cli"}


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
