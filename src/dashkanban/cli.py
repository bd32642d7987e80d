"""The command line (design section 2): the only place that parses arguments, sets up logging
and maps errors to exit codes.

Each command's work lives in the module of its concern; this file names it as "module:function"
and imports it only when that command runs, so `dashkanban --help` stays fast.
"""

from __future__ import annotations

import argparse
import importlib
import json
import logging
import os
import sys
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from dashkanban.errors import EXIT_FAILURE, EXIT_USAGE, DashkanbanError

log = logging.getLogger(__name__)

Handler = Callable[[argparse.Namespace], int]


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
            logging.Formatter(JOURNAL_TEXT_FORMAT if stderr_is_journal() else TEXT_FORMAT)
        )
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    # httpx logs every request at INFO: noise in a daemon's journal; --log-level debug shows it.
    logging.getLogger("httpx").setLevel(logging.DEBUG if level == "debug" else logging.WARNING)


def _common(parser: argparse.ArgumentParser, *, used: bool = True) -> None:
    # Every command takes -c (design section 2); sandbox and demo need no config and say so.
    parser.add_argument(
        "-c",
        "--config",
        type=Path,
        default=None,
        metavar="FILE",
        help="config file (default: ./config.ini, then /etc/dashkanban/config.ini)"
        if used else "accepted for symmetry; this command needs no config file",
    )


class _Version(argparse.Action):
    """`--version`, reading the installed version only when asked."""

    def __init__(self, option_strings: Sequence[str], dest: str, **kwargs: Any) -> None:
        super().__init__(option_strings, dest, nargs=0, **kwargs)

    def __call__(self, parser: argparse.ArgumentParser, namespace: argparse.Namespace,
                 values: object, option_string: str | None = None) -> None:
        import dashkanban

        print(f"dashkanban {dashkanban.__version__}")  # on stdout, as argparse's own does
        parser.exit()


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="dashkanban",
        description="Watch the LAN for Wi-Fi button presses and send them to Cumulocity IoT.",
        epilog="Exit codes: 0 ok, 1 failure, 2 usage or configuration error, "
        "3 events not delivered in time (they stay queued in the outbox).",
    )
    parser.add_argument("--version", action=_Version, help="show the version and exit")
    parser.add_argument(
        "--log-level",
        default="info",
        choices=["debug", "info", "warning", "error"],
        help="log verbosity on stderr (default: info)",
    )
    parser.add_argument(
        "--log-format",
        default="text",
        choices=["text", "json"],
        help="text for people, json for journald and log shippers (default: text)",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    p = sub.add_parser("run", help="the daemon: live capture to Cumulocity")
    _common(p)
    p.add_argument("-i", "--interface", help="network interface (default: [capture] interface)")
    p.add_argument(
        "--allow-root", action="store_true", help="run as root although CAP_NET_RAW is enough"
    )
    p.set_defaults(handler="dashkanban.daemon:run_command")

    p = sub.add_parser("replay", help="run the pipeline over a pcap or pcapng file")
    _common(p)
    p.add_argument("capture", type=Path, metavar="CAPTURE", help="a pcap or pcapng file")
    p.add_argument("--dry-run", action="store_true", help="send nothing")
    p.add_argument("--jsonl", action="store_true", help="print one JSON object per event")
    p.add_argument(
        "--timeout",
        type=float,
        default=30.0,
        metavar="S",
        help="seconds to wait for the broker's acknowledgements (default: 30)",
    )
    p.set_defaults(handler="dashkanban.replay:replay_command")

    p = sub.add_parser("discover", help="list the devices seen on the network")
    _common(p)
    source = p.add_mutually_exclusive_group()
    source.add_argument("-i", "--interface", help="listen live on this interface")
    source.add_argument("--pcap", type=Path, metavar="FILE", help="read a capture file instead")
    p.add_argument(
        "--seconds", type=float, default=60.0, metavar="N", help="listen for N seconds (default 60)"
    )
    p.add_argument("--csv", action="store_true", help="print rows ready to paste into MACID.csv")
    p.set_defaults(handler="dashkanban.discover:discover_command")

    p = sub.add_parser("check", help="validate config and buttons, then try the uplink")
    _common(p)
    p.set_defaults(handler="dashkanban.check:check_command")

    p = sub.add_parser("register", help="get this gateway's own Cumulocity user (device "
                       "registration) instead of a password in config.ini")
    _common(p)
    p.add_argument("--timeout", type=float, default=600.0, metavar="S",
                   help="seconds to wait for the operator's Accept (default: 600)")
    p.add_argument("--force", action="store_true",
                   help="register although config.ini has a login or credentials are stored")
    p.add_argument("--certificate", action="store_true",
                   help="enrol a client certificate from the tenant's certificate authority "
                   "(EST) instead of getting a device password")
    p.set_defaults(handler="dashkanban.register:register_command")

    p = sub.add_parser("test-button", help="send one event as if that button had been pressed")
    _common(p)
    p.add_argument("button", metavar="NAME|MAC", help="a button's name or MAC")
    p.add_argument(
        "--timeout", type=float, default=30.0, metavar="S", help="seconds to wait (default: 30)"
    )
    p.set_defaults(handler="dashkanban.check:test_button_command")

    p = sub.add_parser("outbox", help="what is queued for Cumulocity")
    outbox_sub = p.add_subparsers(dest="outbox_command", metavar="ACTION", required=True)
    q = outbox_sub.add_parser("status", help="what is queued")
    _common(q)
    q.set_defaults(handler="dashkanban.outbox:status_command")
    q = outbox_sub.add_parser("flush", help="deliver what is queued now")
    _common(q)
    q.add_argument(
        "--timeout", type=float, default=30.0, metavar="S", help="seconds to wait (default: 30)"
    )
    q.set_defaults(handler="dashkanban.outbox:flush_command")

    p = sub.add_parser("sandbox", help="a local Cumulocity stand-in for trying and testing")
    _common(p, used=False)
    p.add_argument("--mqtt-port", type=int, default=1883, metavar="P", help="default 1883")
    p.add_argument("--http-port", type=int, default=8111, metavar="H", help="default 8111")
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
    p.set_defaults(handler="dashkanban.sandbox.cli:sandbox_command")

    p = sub.add_parser("demo", help="the whole pipeline against the built-in sandbox")
    _common(p, used=False)
    p.add_argument("--keep", action="store_true", help="keep the sandbox running afterwards")
    p.set_defaults(handler="dashkanban.demo:demo_command")

    p = sub.add_parser("service", help="install or remove the systemd service")
    service_sub = p.add_subparsers(dest="service_command", metavar="ACTION", required=True)
    for action, text in (("install", "install and enable"), ("uninstall", "stop and remove")):
        q = service_sub.add_parser(action, help=f"{text} the systemd unit")
        _common(q)
        q.add_argument("--user", default="dashkanban", metavar="NAME", help="service user")
        q.add_argument("--root", type=Path, default=Path("/"), metavar="DIR", help="install root")
        q.add_argument("--dry-run", action="store_true", help="print files and commands only")
        if action == "uninstall":
            q.add_argument("--purge", action="store_true", help="also delete the outbox")
        q.set_defaults(handler=f"dashkanban.service:{action}_command")

    p = sub.add_parser("kanban", help="Kanban bins: report and replenishment")
    kanban_sub = p.add_subparsers(dest="kanban_command", metavar="ACTION", required=True)
    q = kanban_sub.add_parser("report", help="Kanban analytics from the press history")
    _common(q)
    q.add_argument("--since", metavar="D", help="start date (YYYY-MM-DD) or days back (e.g. 30d)")
    q.add_argument("--out", type=Path, metavar="FILE", help="write a self-contained HTML report")
    q.add_argument(
        "--from-cumulocity", action="store_true", help="read the events from Cumulocity over REST"
    )
    q.set_defaults(handler="dashkanban.kanban.cli:report_command")
    q = kanban_sub.add_parser("refilled", help="mark a bin refilled (clears its reorder alarm)")
    _common(q)
    q.add_argument("bin", metavar="BIN", help="the bin, as in MACID.csv")
    q.add_argument(
        "--timeout",
        type=float,
        default=30.0,
        metavar="S",
        help="seconds to wait for the broker's acknowledgements (default: 30; 0 only queues)",
    )
    q.set_defaults(handler="dashkanban.kanban.cli:refilled_command")
    return parser


def _resolve(spec: str) -> Handler:
    module_name, _, function = spec.partition(":")
    module = importlib.import_module(module_name)
    handler: Handler = getattr(module, function)
    return handler


def final_line(message: str, fmt: str, level: int = logging.ERROR) -> str:
    """The last line `main` writes on failure: `error: ...` for people, or one JSON object like
    every other line when --log-format json (a log shipper must not choke on the one that
    matters most). Written whatever --log-level says."""
    if fmt != "json":
        return f"error: {message}" if level >= logging.ERROR else message
    record = logging.LogRecord(__name__, level, __file__, 0, message, None, None)
    return JsonFormatter().format(record)


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    setup_logging(args.log_level, args.log_format)
    fmt = args.log_format
    try:
        return _resolve(args.handler)(args)
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
