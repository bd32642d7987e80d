# PYTHON_ARGCOMPLETE_OK
"""The command line (docs/cli.md): the only place that parses arguments, sets up logging
and maps errors to exit codes.

Each command's work lives in the module of its concern and takes a typed options object (a frozen
dataclass of that module). The handlers at the end of this file build it from the parsed
arguments and import the command's module only when that command runs, so `dashkanban --help`
stays fast. Nothing below this file sees argparse.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import re
import sys
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from dashkanban.errors import EXIT_FAILURE, EXIT_USAGE, DashkanbanError

if TYPE_CHECKING:
    from dashkanban.commands.service import ServiceOptions

log = logging.getLogger(__name__)

Handler = Callable[[argparse.Namespace], int]
Adder = Callable[..., argparse.ArgumentParser]  # _adder's `add`


class JsonFormatter(logging.Formatter):
    """One JSON object a line, for journald and log shippers."""

    def format(self, record: logging.LogRecord) -> str:
        data = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        if record.exc_info:
            data["exception"] = self.formatException(record.exc_info)
        return json.dumps(data, ensure_ascii=False)


class TextFormatter(logging.Formatter):
    """The text log line, its message with control characters escaped (`\\n`, `\\x1b`): a
    button or host name holding a newline cannot forge a second line (safetext). A traceback
    below the message keeps its lines. (JSON lines need nothing: json.dumps escapes them.)"""

    def formatMessage(self, record: logging.LogRecord) -> str:  # noqa: N802 - logging's name
        from dashkanban.safetext import escape_controls

        record.message = escape_controls(record.message)
        return super().formatMessage(record)


TEXT_FORMAT = "%(asctime)s %(levelname)-7s %(name)s: %(message)s"
JOURNAL_TEXT_FORMAT = "%(levelname)-7s %(name)s: %(message)s"  # journald stamps each line itself


def stderr_is_journal(environ: dict[str, str] | None = None) -> bool:
    """Whether stderr is systemd's journal stream: $JOURNAL_STREAM holds its "device:inode",
    and it must match stderr's own (a child whose stderr was redirected inherits the variable;
    see systemd.exec(5), $JOURNAL_STREAM)."""
    value = (os.environ if environ is None else environ).get("JOURNAL_STREAM", "")
    device, _, inode = value.partition(":")
    try:
        info = os.fstat(sys.stderr.fileno())
        return (info.st_dev, info.st_ino) == (int(device), int(inode))
    except (ValueError, OSError, AttributeError):  # unset, malformed, or no real stderr
        return False


def setup_logging(level: str, fmt: str) -> None:
    handler = logging.StreamHandler(sys.stderr)
    if fmt == "json":
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(
            TextFormatter(JOURNAL_TEXT_FORMAT if stderr_is_journal() else TEXT_FORMAT)
        )
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    # httpx logs every request at INFO: noise in a daemon's journal; --log-level debug shows it.
    logging.getLogger("httpx").setLevel(logging.DEBUG if level == "debug" else logging.WARNING)


LOG_LEVELS = ("debug", "info", "warning", "error")
LOG_FORMATS = ("text", "json")


class Parser(argparse.ArgumentParser):
    """argparse with "did you mean" for a misspelt command or option (difflib), and an unknown
    option named as such rather than reported as a missing COMMAND."""

    argv: Sequence[str] = ()
    root: argparse.ArgumentParser | None = None  # the top parser, whose tree knows every option
    partial = False  # built for one command (main): the whole parser words any error

    def error(self, message: str) -> Any:
        if Parser.partial:
            raise _PartialParserError
        known = {o for a in _all_actions(self.root or self) for o in a.option_strings}
        words = list(self.argv)
        choice = re.search(r"invalid choice: '([^']*)'", message)
        if choice and choice.group(1) in words:
            words = words[: words.index(choice.group(1))]  # the options before the command
        unknown = [w for w in words if w.startswith("-") and w != "-"
                   and w.split("=", 1)[0] not in known]
        if unknown and ("required: COMMAND" in message or choice):
            # An unknown option before the command: argparse took its value for the command.
            message = f"unknown option {unknown[0]}"
            message += _suggest(unknown[0].split("=", 1)[0], self._option_string_actions)
            return super().error(message)
        match = re.search(r"invalid choice: '([^']*)' \(choose from (.*)\)", message)
        if match:
            choices = re.findall(r"'([^']*)'", match.group(2))
            message = (f"unknown command {match.group(1)!r}{_suggest(match.group(1), choices)}"
                       f" (commands: {', '.join(choices)})")
        match = re.fullmatch(r"unrecognized arguments: (.*)", message)
        if match:
            word = match.group(1).split()[0]
            options = [o for a in _all_actions(self) for o in a.option_strings]
            message += _suggest(word.split("=", 1)[0], options) if word.startswith("-") else ""
        return super().error(message)


class _PartialParserError(Exception):
    """A parse error in a parser built for one command: main() parses again with all of them."""


def _all_actions(parser: argparse.ArgumentParser) -> list[argparse.Action]:
    """The parser's actions and those of the subcommand parsers under it."""
    found = list(parser._actions)
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for child in action.choices.values():
                found += _all_actions(child)
    return found


def _suggest(word: str, choices: Any) -> str:
    import difflib  # only for a usage error: not part of every start-up

    close = difflib.get_close_matches(word, list(choices), n=1, cutoff=0.6)
    return f" (did you mean {close[0]}?)" if close else ""


def _global(parser: argparse.ArgumentParser, *, top: bool, used: bool = True) -> None:
    """-c, --log-level and --log-format, before or after the command (docs/cli.md).

    On a command's parser their default is SUPPRESS, so a value given before the command is not
    overwritten by the command parser's default."""
    default: Any = None if top else argparse.SUPPRESS
    parser.add_argument(
        "-c",
        "--config",
        type=Path,
        default=default,
        metavar="FILE",
        help="config file (default: ./config.ini, then /etc/dashkanban/config.ini)"
        if used else "accepted for symmetry; this command needs no config file",
    )
    parser.add_argument(
        "--log-level",
        default="info" if top else argparse.SUPPRESS,
        choices=LOG_LEVELS,
        help="log verbosity on stderr (default: info)",
    )
    parser.add_argument(
        "--log-format",
        default="text" if top else argparse.SUPPRESS,
        choices=LOG_FORMATS,
        help="text for people, json for journald and log shippers (default: text)",
    )


def _common(parser: argparse.ArgumentParser, *, used: bool = True) -> None:
    # Every command takes -c (docs/cli.md); sandbox and demo need no config and say so.
    _global(parser, top=False, used=used)


def number(low: float, high: float = float("inf"), *, whole: bool = False,
           low_open: bool = False) -> Callable[[str], float]:
    """An argparse type: a number in [low, high] (or (low, high] with low_open); argparse turns
    the ValueError into `error: argument --x: ...` and exit 2."""

    def parse(text: str) -> float:
        try:
            value: float = int(text) if whole else float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(
                f"{text!r} is not a {'whole ' if whole else ''}number") from None
        too_low = value <= low if low_open else value < low
        if value != value or too_low or value > high:
            bound = f"more than {low:g}" if low_open else f"at least {low:g}"
            upper = f" and at most {high:g}" if high != float("inf") else ""
            raise argparse.ArgumentTypeError(f"{text} is out of range ({bound}{upper})")
        return value

    return parse


SECONDS = number(0, 86400)  # a timeout: 0 only queues, a day is plenty
PORT = number(0, 65535, whole=True)


def _timeout(parser: argparse.ArgumentParser, text: str = "seconds to wait (default: 30)",
             default: float = 30.0) -> None:
    """`--timeout S`, as every command that waits for Cumulocity takes it."""
    parser.add_argument("--timeout", type=SECONDS, default=default, metavar="S", help=text)


class _Version(argparse.Action):
    """`--version`, reading the installed version only when asked."""

    def __init__(self, option_strings: Sequence[str], dest: str, **kwargs: Any) -> None:
        super().__init__(option_strings, dest, nargs=0, **kwargs)

    def __call__(self, parser: argparse.ArgumentParser, namespace: argparse.Namespace,
                 values: object, option_string: str | None = None) -> None:
        import dashkanban

        print(f"dashkanban {dashkanban.__version__}")  # on stdout, as argparse's own does
        parser.exit()


def build_parser(command: str | None = None) -> argparse.ArgumentParser:
    """The whole command line; with `command`, only that command's arguments (main() builds
    just the one it runs: building all of them costs a replay ~15 ms of its start-up)."""
    parser = Parser(
        prog="dashkanban",
        description="Watch the LAN for Wi-Fi button presses and send them to Cumulocity IoT.",
        epilog="Exit codes: 0 ok, 1 failure, 2 usage or configuration error, "
        "3 events not delivered in time (they stay queued in the outbox).",
    )
    parser.add_argument("-V", "--version", action=_Version, help="show the version and exit")
    _global(parser, top=True)
    Parser.argv, Parser.root = (), parser  # main() sets argv; a bare parse_args sees none
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True,
                                parser_class=Parser)
    add = _adder(sub)
    for name, add_command in _COMMANDS.items():
        if command is None or name == command:
            add_command(add)
    return parser


def _add_run(add: Adder) -> None:
    p = add("run", "the daemon: live capture to Cumulocity",
            "dashkanban run -c /etc/dashkanban/config.ini")
    p.add_argument("-i", "--interface", help="network interface (default: [capture] interface)")
    p.add_argument(
        "--allow-root", action="store_true", help="run as root although CAP_NET_RAW is enough"
    )
    p.set_defaults(handler=_run)


def _add_replay(add: Adder) -> None:
    p = add("replay", "run the pipeline over a pcap or pcapng file",
            "dashkanban replay store.pcapng --dry-run --jsonl")
    p.add_argument("capture", type=Path, metavar="CAPTURE", help="a pcap or pcapng file")
    p.add_argument("--dry-run", action="store_true",
                   help="send nothing (needs no [C8YMQTT] section)")
    p.add_argument("--jsonl", action="store_true", help="print one JSON object per event")
    _timeout(p, "seconds to wait for the broker's acknowledgements (default: 30)")
    p.add_argument("--again", action="store_true",
                   help="queue presses already queued or delivered once more")
    p.set_defaults(handler=_replay)


def _add_discover(add: Adder) -> None:
    p = add("discover", "list the devices seen on the network",
            "dashkanban discover --seconds 120 --add-to MACID.csv")
    source = p.add_mutually_exclusive_group()
    source.add_argument("-i", "--interface", help="listen live on this interface")
    source.add_argument("--pcap", type=Path, metavar="FILE", help="read a capture file instead")
    source.add_argument("--mqtt", type=number(0, 86400, low_open=True), metavar="SECONDS",
                        help="list the button topics on the [mqtt_buttons] broker instead, "
                             "listening SECONDS")
    p.add_argument(
        "--seconds", type=number(0, 86400, low_open=True), default=60.0, metavar="N",
        help="listen for N seconds (default 60)",
    )
    out = p.add_mutually_exclusive_group()
    out.add_argument("--csv", action="store_true",
                     help="print a new MACID.csv (header and rows) on stdout")
    out.add_argument("--add-to", type=Path, metavar="MACID.csv",
                     help="append the devices not listed yet to this file (no second header)")
    p.set_defaults(handler=_discover)


def _add_check(add: Adder) -> None:
    p = add("check", "validate config and buttons, then try every connection they need",
            "dashkanban check -c config.ini --log-level debug")
    p.set_defaults(handler=_check)


def _add_register(add: Adder) -> None:
    p = add("register", "get this gateway's own Cumulocity user (device registration) instead "
            "of a password in config.ini", "dashkanban register -c config.ini --timeout 900")
    _timeout(p, "seconds to wait for the operator's Accept (default: 600)", 600.0)
    p.add_argument("--force", action="store_true",
                   help="register although config.ini has a login or credentials are stored")
    p.add_argument("--certificate", action="store_true",
                   help="enrol a client certificate from the tenant's certificate authority "
                   "(EST) instead of getting a device password")
    p.add_argument("--renew", action="store_true",
                   help="renew the certificate (EST simplereenroll) when a third of its "
                   "lifetime is left; with --force at once")
    p.set_defaults(handler=_register)


def _add_test_button(add: Adder) -> None:
    p = add("test-button", "send one event as if that button had been pressed",
            "dashkanban test-button dashButton_1")
    p.add_argument("button", metavar="NAME|MAC", help="a button's name or MAC")
    _timeout(p)
    p.set_defaults(handler=_test_button)


def _add_outbox(add: Adder) -> None:
    p = add("outbox", "what is queued for Cumulocity", "dashkanban outbox status")
    outbox_sub = p.add_subparsers(dest="outbox_command", metavar="ACTION", required=True,
                                  parser_class=Parser)
    add_outbox = _adder(outbox_sub, "outbox ")
    q = add_outbox("status", "what is queued", "dashkanban outbox status")
    q.set_defaults(handler=_outbox_status)
    q = add_outbox("flush", "deliver what is queued now", "dashkanban outbox flush --timeout 60")
    _timeout(q)
    q.set_defaults(handler=_outbox_flush)
    q = add_outbox("drop", "discard queued events (prints what it dropped)",
                   "dashkanban outbox drop --button dashButton_1")
    which = q.add_mutually_exclusive_group(required=True)
    which.add_argument("--all", action="store_true", help="everything queued")
    which.add_argument("--button", metavar="NAME|MAC", help="the events of this button")
    which.add_argument("--before", metavar="TIME",
                       help="events pressed before this time (YYYY-MM-DD or ISO 8601; UTC "
                       "unless it has an offset)")
    q.set_defaults(handler=_outbox_drop)


def _add_sandbox(add: Adder) -> None:
    p = add("sandbox", "a local Cumulocity stand-in for trying and testing",
            "dashkanban sandbox --password s3cret", used=False)
    p.add_argument("--mqtt-port", type=PORT, default=1883, metavar="P",
                   help="default 1883 (0: any free port)")
    p.add_argument("--http-port", type=PORT, default=8111, metavar="H",
                   help="default 8111 (0: any free port)")
    p.add_argument("--bind", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    p.add_argument("--tenant", default="t12345", metavar="T", help="tenant id (default t12345)")
    p.add_argument("--user", default="admin", metavar="U", help="user name (default admin)")
    p.add_argument(
        "--password", default=None, metavar="PW", help="password (default: random, printed)"
    )
    p.add_argument("--tls-cert", type=Path, metavar="F", help="serve MQTT over TLS with this cert")
    p.add_argument("--tls-key", type=Path, metavar="F", help="the certificate's private key")
    p.add_argument("--data", type=Path, metavar="FILE", help="keep the store in this JSON file")
    p.add_argument("--bootstrap-password", default=None, metavar="PW",
                   help="password of management/devicebootstrap for `dashkanban register` "
                   "(default: random, printed)")
    p.set_defaults(handler=_sandbox)


def _add_demo(add: Adder) -> None:
    p = add("demo", "the whole pipeline against the built-in sandbox", "dashkanban demo --keep",
            used=False)
    p.add_argument("--keep", action="store_true",
                   help="keep the sandbox and its status page running until Ctrl-C")
    p.set_defaults(handler=_demo)


def _add_service(add: Adder) -> None:
    p = add("service", "install or remove the systemd service",
            "sudo dashkanban service install -c config.ini")
    service_sub = p.add_subparsers(dest="service_command", metavar="ACTION", required=True,
                                   parser_class=Parser)
    add_service = _adder(service_sub, "service ")
    for action, text in (("install", "install and enable"), ("uninstall", "stop and remove")):
        q = add_service(action, f"{text} the systemd unit",
                        f"sudo dashkanban service {action} --dry-run")
        q.add_argument("--user", default="dashkanban", metavar="NAME", help="service user")
        q.add_argument("--root", type=Path, default=Path("/"), metavar="DIR", help="install root")
        q.add_argument("--dry-run", action="store_true", help="print files and commands only")
        if action == "uninstall":
            q.add_argument("--purge", action="store_true", help="also delete the outbox")
        q.set_defaults(handler=_service_install if action == "install" else _service_uninstall)


def _add_kanban(add: Adder) -> None:
    p = add("kanban", "Kanban bins: report and replenishment",
            "dashkanban kanban report --since 90d")
    kanban_sub = p.add_subparsers(dest="kanban_command", metavar="ACTION", required=True,
                                  parser_class=Parser)
    add_kanban = _adder(kanban_sub, "kanban ")
    q = add_kanban("report", "Kanban analytics from the press history",
                   "dashkanban kanban report --since 90d --out report.html")
    q.add_argument("--since", metavar="D", help="start date (YYYY-MM-DD) or days back (e.g. 30d)")
    q.add_argument("--out", type=Path, metavar="FILE", help="write a self-contained HTML report")
    q.add_argument(
        "--from-cumulocity", action="store_true", help="read the events from Cumulocity over REST"
    )
    q.add_argument("--json", action="store_true", help="print one JSON object instead of a table")
    q.set_defaults(handler=_kanban_report)
    q = add_kanban("refilled", "mark a bin refilled (clears its reorder alarm)",
                   "dashkanban kanban refilled A3")
    q.add_argument("bin", metavar="BIN", help="the bin, as in MACID.csv")
    _timeout(q, "seconds to wait for the broker's acknowledgements (default: 30; 0 only queues)")
    q.set_defaults(handler=_kanban_refilled)
    q = kanban_sub.add_parser("rules", help="Cumulocity Smart Rules that mail the suppliers")
    rules_sub = q.add_subparsers(dest="rules_command", metavar="ACTION", required=True)
    for action, text in (("install", "create or update one rule per supplier_email"),
                         ("uninstall", "remove the rules `install` made")):
        r = rules_sub.add_parser(action, help=text)
        _common(r)
        r.add_argument("--dry-run", action="store_true",
                       help="show what would change, change nothing")
        r.set_defaults(handler=_rules_install if action == "install" else _rules_uninstall)


# Each command's arguments, in the order `dashkanban --help` lists them.
_COMMANDS: dict[str, Callable[[Adder], None]] = {
    "run": _add_run,
    "replay": _add_replay,
    "discover": _add_discover,
    "check": _add_check,
    "register": _add_register,
    "test-button": _add_test_button,
    "outbox": _add_outbox,
    "sandbox": _add_sandbox,
    "demo": _add_demo,
    "service": _add_service,
    "kanban": _add_kanban,
}


def _adder(sub: Any, prefix: str = "") -> Adder:
    """`add(name, summary, example)`: a command parser whose --help starts with the summary and
    ends with an example, taking the global options (`used=False`: accepted, not needed)."""

    def add(name: str, summary: str, example: str, *,
            used: bool = True) -> argparse.ArgumentParser:
        parser: argparse.ArgumentParser = sub.add_parser(
            name, help=summary, description=f"dashkanban {prefix}{name}: {summary}.",
            epilog=f"example:\n  {example}",
            formatter_class=argparse.RawDescriptionHelpFormatter,
        )
        _common(parser, used=used)
        return parser

    return add


# -- The handlers: each builds its command's typed options from the parsed arguments, and imports
# the command's module only now (so `dashkanban --help` stays fast). tests/test_layers.py calls
# every one and checks what reaches the command.


def _run(args: argparse.Namespace) -> int:
    from dashkanban.commands.run import RunOptions, run_command

    return run_command(RunOptions(config=args.config, interface=args.interface,
                                  allow_root=args.allow_root))


def _replay(args: argparse.Namespace) -> int:
    from dashkanban.commands.replay import ReplayOptions, replay_command

    return replay_command(ReplayOptions(
        capture=args.capture, dry_run=args.dry_run, jsonl=args.jsonl, timeout=args.timeout,
        again=args.again, config=args.config))


def _discover(args: argparse.Namespace) -> int:
    from dashkanban.commands.discover import DiscoverOptions, discover_command

    return discover_command(DiscoverOptions(
        interface=args.interface, pcap=args.pcap, seconds=args.seconds, csv=args.csv,
        add_to=args.add_to, config=args.config, mqtt=args.mqtt))


def _check(args: argparse.Namespace) -> int:
    from dashkanban.commands.check import CheckOptions, check_command

    return check_command(CheckOptions(config=args.config))


def _test_button(args: argparse.Namespace) -> int:
    from dashkanban.commands.check import ButtonTestOptions, test_button_command

    return test_button_command(ButtonTestOptions(
        button=args.button, timeout=args.timeout, config=args.config))


def _register(args: argparse.Namespace) -> int:
    from dashkanban.commands.register import RegisterOptions, register_command

    return register_command(RegisterOptions(
        timeout=args.timeout, force=args.force, certificate=args.certificate, renew=args.renew,
        config=args.config))


def _outbox_status(args: argparse.Namespace) -> int:
    from dashkanban.commands.outbox import StatusOptions, status_command

    return status_command(StatusOptions(config=args.config))


def _outbox_flush(args: argparse.Namespace) -> int:
    from dashkanban.commands.outbox import FlushOptions, flush_command

    return flush_command(FlushOptions(timeout=args.timeout, config=args.config))


def _outbox_drop(args: argparse.Namespace) -> int:
    from dashkanban.commands.outbox import DropOptions, drop_command

    return drop_command(DropOptions(button=args.button, before=args.before, config=args.config))


def _sandbox(args: argparse.Namespace) -> int:
    from dashkanban.sandbox.cli import SandboxCommandOptions, sandbox_command

    return sandbox_command(SandboxCommandOptions(
        mqtt_port=args.mqtt_port, http_port=args.http_port, bind=args.bind, tenant=args.tenant,
        user=args.user, password=args.password, tls_cert=args.tls_cert, tls_key=args.tls_key,
        data=args.data, bootstrap_password=args.bootstrap_password))


def _demo(args: argparse.Namespace) -> int:
    from dashkanban.commands.demo import DemoOptions, demo_command

    return demo_command(DemoOptions(keep=args.keep))


def _service_options(args: argparse.Namespace) -> ServiceOptions:
    from dashkanban.commands.service import ServiceOptions

    return ServiceOptions(user=args.user, root=args.root, dry_run=args.dry_run,
                          purge=getattr(args, "purge", False), config=args.config)


def _service_install(args: argparse.Namespace) -> int:
    from dashkanban.commands.service import install_command

    return install_command(_service_options(args))


def _service_uninstall(args: argparse.Namespace) -> int:
    from dashkanban.commands.service import uninstall_command

    return uninstall_command(_service_options(args))


def _kanban_report(args: argparse.Namespace) -> int:
    from dashkanban.kanban.cli import ReportOptions, report_command

    return report_command(ReportOptions(
        since=args.since, out=args.out, from_cumulocity=args.from_cumulocity, json=args.json,
        config=args.config))


def _kanban_refilled(args: argparse.Namespace) -> int:
    from dashkanban.kanban.cli import RefilledOptions, refilled_command

    return refilled_command(RefilledOptions(bin=args.bin, timeout=args.timeout,
                                            config=args.config))


def _rules_install(args: argparse.Namespace) -> int:
    from dashkanban.kanban.cli import RulesOptions, rules_install_command

    return rules_install_command(RulesOptions(dry_run=args.dry_run, config=args.config))


def _rules_uninstall(args: argparse.Namespace) -> int:
    from dashkanban.kanban.cli import RulesOptions, rules_uninstall_command

    return rules_uninstall_command(RulesOptions(dry_run=args.dry_run, config=args.config))


def final_line(message: str, fmt: str, level: int = logging.ERROR) -> str:
    """The last line `main` writes on failure: `error: ...` for people, or one JSON object like
    every other line when --log-format json (a log shipper must not choke on the one that
    matters most). Written whatever --log-level says."""
    if fmt != "json":
        from dashkanban.safetext import escape_controls

        message = escape_controls(message)
        return f"error: {message}" if level >= logging.ERROR else message
    record = logging.LogRecord(__name__, level, __file__, 0, message, None, None)
    return JsonFormatter().format(record)


def _complete(parser: argparse.ArgumentParser) -> None:
    """Shell completion (bash, zsh) through argcomplete, docs/cli.md; only when a shell asks."""
    if "_ARGCOMPLETE" not in os.environ:
        return
    try:
        import argcomplete
    except ImportError:  # completion is a convenience: never a failure
        return
    argcomplete.autocomplete(parser)


_VALUED = ("-c", "--config", "--log-level", "--log-format")


def _command_in(words: Sequence[str]) -> str | None:
    """The command `words` name plainly: a command's name after nothing but -c, --log-level
    and --log-format with their values. Else None: help, --version, a misspelt command or an
    abbreviated option before it, for the whole parser to answer."""
    i = 0
    while i < len(words):
        word = words[i]
        if word in _VALUED:
            i += 2
        elif word.startswith(tuple(f"{o}=" for o in _VALUED[1:])) or (
                word.startswith("-c") and not word.startswith("--")):
            i += 1
        else:
            return word if word in _COMMANDS else None
    return None


def _parse(words: list[str]) -> argparse.Namespace:
    """The arguments, parsed by a parser holding only the named command's (~15 ms less to
    build) unless completing; an error is worded by the whole parser, as if built at once."""
    command = None if "_ARGCOMPLETE" in os.environ else _command_in(words)
    parser = build_parser(command)
    _complete(parser)
    Parser.argv, Parser.partial = words, command is not None
    try:
        return parser.parse_args(words)
    except _PartialParserError:
        Parser.partial = False
        parser = build_parser()
        Parser.argv = words
        return parser.parse_args(words)
    finally:
        Parser.partial = False


def main(argv: Sequence[str] | None = None) -> int:
    words = list(sys.argv[1:] if argv is None else argv)
    args = _parse(words)
    setup_logging(args.log_level, args.log_format)
    fmt = args.log_format
    try:
        handler: Handler = args.handler
        return handler(args)
    except DashkanbanError as exc:
        print(final_line(str(exc), fmt), file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print(final_line("interrupted", fmt, logging.WARNING), file=sys.stderr)
        return 130
    except BrokenPipeError:
        return EXIT_FAILURE
    except Exception as exc:  # the last line of defence: one line for the user, details in debug
        log.debug("unexpected failure", exc_info=True)
        message = (f"unexpected {type(exc).__name__}: {exc} "
                   "(run with --log-level debug for details)")
        print(final_line(message, fmt), file=sys.stderr)
        return EXIT_FAILURE


__all__ = ["EXIT_USAGE", "build_parser", "main"]
