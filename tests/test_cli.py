"""The command line: help for every command, version, and honest 'not yet' answers."""

from __future__ import annotations

import subprocess
import sys

import pytest

from dashkanban import __version__
from dashkanban.cli import build_parser, main

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
    """Design section 2: every command takes -c/--config FILE."""
    args = build_parser().parse_args([*command, "-c", "x.ini"])
    assert str(args.config) == "x.ini"
