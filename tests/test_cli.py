"""The command line: help for every command, version, and honest 'not yet' answers."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from dashkanban import __version__
from dashkanban.cli import build_parser, main
from tests.file_readers import READERS, child_prefix
from tests.test_replay import EXPECTED

COMMANDS = [
    ["run"], ["replay", "x.pcap"], ["discover"], ["check"], ["test-button", "b1"],
    ["outbox", "status"], ["outbox", "flush"], ["sandbox"], ["demo"], ["service", "install"],
    ["service", "uninstall"], ["kanban", "report"], ["kanban", "refilled", "A3"],
]


@pytest.mark.parametrize("command", COMMANDS, ids=lambda c: " ".join(c))
def test_every_command_has_help(command: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    words = [w for w in command if w not in ("x.pcap", "b1", "A3")]
    with pytest.raises(SystemExit) as info:
        build_parser().parse_args([*words, "--help"])
    assert info.value.code == 0
    assert "usage: dashkanban " + " ".join(words) in capsys.readouterr().out


def test_version(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        main(["--version"])
    assert capsys.readouterr().out.strip() == f"dashkanban {__version__}"


def test_usage_error_exits_2() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "dashkanban", "replay"], capture_output=True, text=True, check=False
    )
    assert result.returncode == 2
    assert "the following arguments are required: CAPTURE" in result.stderr


@pytest.mark.parametrize("command", COMMANDS, ids=lambda c: " ".join(c))
def test_every_command_takes_config(command: list[str]) -> None:
    """Every command takes -c/--config FILE (docs/cli.md, Conventions)."""
    args = build_parser().parse_args([*command, "-c", "x.ini"])
    assert str(args.config) == "x.ini"


# ---------------------------------------------------------------------------------------------
# Conventions (issue 14)


def dashkanban(*args: str, env: dict[str, str] | None = None,
               cwd: Path | None = None, prefix: tuple[str, ...] = ()
               ) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*prefix, sys.executable, "-m", "dashkanban", *args],
                          capture_output=True, text=True, check=False, timeout=60, env=env,
                          cwd=cwd)


@pytest.mark.parametrize("argv", [
    ["check", "-c", "x.ini", "--log-level", "debug", "--log-format", "json"],
    ["-c", "x.ini", "--log-level", "debug", "--log-format", "json", "check"],
    ["--log-level", "warning", "check", "--log-level", "debug", "-c", "x.ini", "--log-format",
     "json"],
    ["outbox", "--log-level", "debug", "status", "-c", "x.ini", "--log-format", "json"],
    ["-c", "y.ini", "kanban", "-c", "x.ini", "report", "--log-level", "debug", "--log-format",
     "json"],
])
def test_global_options_before_or_after_the_command(argv: list[str]) -> None:
    args = build_parser().parse_args(argv)
    assert (str(args.config), args.log_level, args.log_format) == ("x.ini", "debug", "json")
    assert args.handler.__name__ in ("_check", "_outbox_status", "_kanban_report")


def test_global_options_default_when_not_given() -> None:
    args = build_parser().parse_args(["outbox", "status"])
    assert (args.config, args.log_level, args.log_format) == (None, "info", "text")


def test_short_version() -> None:
    result = dashkanban("-V")
    assert (result.returncode, result.stdout) == (0, f"dashkanban {__version__}\n")


@pytest.mark.parametrize(("argv", "message"), [
    (["chek"], "dashkanban: error: unknown command 'chek' (did you mean check?) (commands: run, "
               "replay, discover, check, register, test-button, outbox, sandbox, demo, service, "
               "kanban)"),
    (["--bogus"], "dashkanban: error: unknown option --bogus"),
    (["--log-levl", "debug", "check"], "dashkanban: error: unknown option --log-levl (did you "
                                       "mean --log-level?)"),
    (["replay", "x.pcap", "--dry-rn"], "dashkanban: error: unrecognized arguments: --dry-rn (did "
                                       "you mean --dry-run?)"),
    (["outbox", "drp"], "dashkanban outbox: error: unknown command 'drp' (did you mean drop?) "
                        "(commands: status, flush, drop)"),
    (["test-button", "b1", "--timeout", "-5"], "dashkanban test-button: error: argument "
     "--timeout: -5 is out of range (at least 0 and at most 86400)"),
    (["discover", "--seconds", "0"], "dashkanban discover: error: argument --seconds: 0 is out "
     "of range (more than 0 and at most 86400)"),
    (["sandbox", "--mqtt-port", "70000"], "dashkanban sandbox: error: argument --mqtt-port: "
     "70000 is out of range (at least 0 and at most 65535)"),
    (["replay", "x.pcap", "--timeout", "soon"], "dashkanban replay: error: argument --timeout: "
     "'soon' is not a number"),
])
def test_usage_errors_say_what_was_meant(argv: list[str], message: str) -> None:
    result = dashkanban(*argv)
    assert result.returncode == 2
    assert result.stderr.splitlines()[-1] == message


@pytest.mark.parametrize("command", COMMANDS, ids=lambda c: " ".join(c))
def test_every_command_help_has_a_description_and_an_example(
    command: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    words = [w for w in command if w not in ("x.pcap", "b1", "A3")]
    with pytest.raises(SystemExit):
        build_parser().parse_args([*words, "--help"])
    out = capsys.readouterr().out
    assert f"\ndashkanban {' '.join(words)}: " in out  # the description
    example = out.split("example:\n  ", 1)[1].strip()
    assert example.split()[:len(words) + 1] in (
        ["dashkanban", *words], ["sudo", "dashkanban", *words][:len(words) + 1]
    )


# What each reader counted (issue 16: libpcap does not count what its filter skips).
REPLAY_READ = {
    "libpcap": "34 packets passed the button filter (3 MACs) in libpcap",
    "pure": "1211 packets read, 34 passed the button filter (3 MACs)",
}
DISCOVER_READ = {
    "libpcap": "174 packets passed the candidate filter in libpcap",
    "pure": "1211 packets read, 174 passed the candidate filter",
}


@pytest.mark.parametrize("reader", READERS)
def test_commands_that_do_not_connect_need_no_c8ymqtt(tmp_path: Path, reader: str) -> None:
    """replay --dry-run and discover read only [buttons] (issue 14); as commands on a machine
    with libpcap and on one without, with the same presses and devices (issue 16)."""
    prefix = tuple(child_prefix(reader))
    data = Path(__file__).resolve().parent.parent / "src" / "dashkanban" / "data"
    config = tmp_path / "config.ini"
    config.write_text(f"[buttons]\nfile = {data / 'MACID.csv'}\n")
    sample = data / "sample-store.pcapng"
    result = dashkanban("replay", str(sample), "--dry-run", "--jsonl", "-c", str(config),
                        prefix=prefix)
    assert result.returncode == 0, result.stderr
    assert len(result.stdout.splitlines()) == 7
    assert [json.loads(line) for line in result.stdout.splitlines()] == EXPECTED
    assert result.stderr.splitlines() == [
        f"{sample}: {REPLAY_READ[reader]}, 34 candidates, 0 malformed, 7 presses"]
    result = dashkanban("discover", "--pcap", str(sample), "--csv", "-c", str(config),
                        prefix=prefix)
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == [  # the sample's devices, its 3 known buttons left out
        "Name, MAC-Address",
        "iPhone-Kasse,3c:22:fb:8e:41:07",
        "DESKTOP-7Q2LK4M,9c:b6:d0:4f:2d:11",
        "MacBook-Filiale,f8:ff:c2:19:72:3a",
        "iPad-Lager,a4:83:e7:05:6b:e2",
        "raspberrypi,b8:27:eb:3d:52:c0",
        "button_4a1001,00:0d:b9:4a:10:01",
        "label-printer,00:e0:4c:68:01:9a",
    ]
    assert result.stderr.splitlines() == [
        f"10 devices, {DISCOVER_READ[reader]}, 0 malformed"]
    config.write_text(config.read_text() + f"[outbox]\npath = {tmp_path / 'outbox.sqlite3'}\n")
    result = dashkanban("kanban", "report", "-c", str(config))  # read the config, then no history
    assert (result.returncode, result.stderr.splitlines()[-1]) == (1, (
        f"error: no Kanban history yet at {tmp_path / 'history.sqlite3'} (the daemon and replay "
        "keep one with every press)"))
    # Sending does need it, and says so with the file and line.
    result = dashkanban("replay", str(sample), "-c", str(config))
    assert result.returncode == 2
    assert result.stderr.splitlines()[-1] == (
        f"error: {config}:1: missing section [C8YMQTT] (tenant, tenantID, user, password, port)"
    )


def test_shell_completion(tmp_path: Path) -> None:
    """argcomplete answers the shell's question (bash and zsh ask the same way; docs/cli.md)."""
    out = tmp_path / "completions"
    env = {**os.environ, "_ARGCOMPLETE": "1", "COMP_LINE": "dashkanban outbox dr",
           "COMP_POINT": "20", "_ARGCOMPLETE_STDOUT_FILENAME": str(out)}
    result = dashkanban(env=env)
    assert result.returncode == 0, result.stderr
    assert out.read_text().split() == ["drop"]


def test_help_lists_every_command(capsys: pytest.CaptureFixture[str]) -> None:
    """`dashkanban --help` builds the whole parser (main builds one command's for a run)."""
    with pytest.raises(SystemExit) as info:
        main(["--help"])
    assert info.value.code == 0
    out = capsys.readouterr().out
    listed = out.split("\n  COMMAND\n", 1)[1].split("\n\noptions:", 1)[0]
    assert [line.split()[0] for line in listed.splitlines() if line[4:5].strip()] == [
        "run", "replay", "discover", "check", "register", "test-button", "outbox", "sandbox",
        "demo", "service", "kanban"]


@pytest.mark.parametrize(("argv", "command"), [
    *((c, c[0]) for c in COMMANDS),
    (["-c", "y.ini", "kanban", "-c", "x.ini", "report", "--log-level", "debug"], "kanban"),
    (["--log-level=debug", "-cx.ini", "--log-format", "json", "replay", "x.pcap", "--dry-run"],
     "replay"),
    (["--config=x.ini", "outbox", "drop", "--all"], "outbox"),
    (["kanban", "rules", "install", "--dry-run"], "kanban"),
])
def test_one_command_parser_parses_as_the_whole_one(argv: list[str], command: str) -> None:
    """main() builds only the command it runs: the same arguments come out."""
    from dashkanban.cli import _command_in

    assert _command_in(argv) == command
    whole, one = vars(build_parser().parse_args(argv)), vars(build_parser(command).parse_args(argv))
    assert one == whole


@pytest.mark.parametrize(("argv", "command"), [
    (["--help", "replay"], None), (["-h"], None), (["--conf", "x.ini", "check"], None),
    (["-V"], None), (["--", "check"], None), (["-c", "check"], None), ([], None),
    (["replay", "--help"], "replay"), (["-c", "x", "check"], "check"),
])
def test_the_whole_parser_answers_all_but_a_plain_command(argv: list[str],
                                                          command: str | None) -> None:
    from dashkanban.cli import _command_in

    assert _command_in(argv) == command
