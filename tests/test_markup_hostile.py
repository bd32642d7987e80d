"""Issue 13, hole 3: strings from the network or files are data, never markup; log lines show
control characters escaped."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from dashkanban.cli import main, setup_logging
from dashkanban.safetext import escape_controls
from tests import forge
from tests.file_readers import use_reader

T0 = 1_795_000_000.0
HOSTILE = ["[/bold]", "[link=https://example.invalid]click[/link]"]
MACS = ["ac:63:be:12:34:56", "fc:a6:67:0a:0b:0c"]


def _pcap(path: Path, hostnames: list[str | None]) -> Path:
    frames = [
        (T0 + n, forge.dhcp_client_frame(mac, forge.DISCOVER, hostname=hostname))
        for n, (mac, hostname) in enumerate(zip(MACS, hostnames, strict=True))
    ]
    with path.open("wb") as f:
        forge.write_pcap(f, frames)
    return path


def test_discover_shows_hostile_host_names_as_text(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)  # no config.ini here: discover needs none
    use_reader("pure", monkeypatch)  # the summary line below is the pure reader's
    capture = _pcap(tmp_path / "lan.pcap", list(HOSTILE))
    assert main(["discover", "--pcap", str(capture)]) == 0
    out = capsys.readouterr()
    rows = [line for line in out.out.splitlines() if line.startswith("│")]
    assert "dhcp ([/bold])" in rows[0]
    assert "dhcp ([link=https://example.invalid]click[/link])" in rows[1]
    assert "\x1b]8;" not in out.out  # no hyperlink escape sequence
    assert out.err == (
        "2 devices, 2 packets read, 2 passed the candidate filter, 0 malformed\n")


def test_replay_table_shows_hostile_names_as_text(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    buttons = tmp_path / "MACID.csv"
    buttons.write_text("Name, MAC-Address\n" + "".join(
        f'"{name}", {mac}\n' for name, mac in zip(HOSTILE, MACS, strict=True)))
    config = tmp_path / "config.ini"
    config.write_text(
        "[C8YMQTT]\ntenant = example.cumulocity.com\ntenantID = t1\nuser = u\npassword = p\n\n"
        f"[buttons]\nfile = {buttons}\n\n[outbox]\npath = {tmp_path / 'outbox.sqlite3'}\n"
    )
    config.chmod(0o600)
    capture = _pcap(tmp_path / "presses.pcap", [None, None])
    assert main(["replay", str(capture), "--dry-run", "-c", str(config)]) == 0
    out = capsys.readouterr().out
    rows = [line.split("│") for line in out.splitlines() if line.startswith("│ 2026")]
    assert [(row[2].strip(), row[3].strip(), row[5].strip()) for row in rows] == [
        ("[/bold]", MACS[0], "[/bold] pressed"),  # the text column wraps
        ("[link=https://example.inval…", MACS[1], "[link=https://example.invali…"),
    ]
    assert "\x1b]8;" not in out


def test_a_name_with_a_newline_cannot_forge_a_log_line(
    capsys: pytest.CaptureFixture[str],
) -> None:
    setup_logging("info", "text")
    try:
        logging.getLogger("dashkanban.test").warning(
            "button %s pressed", "A3\n2026-12-01 01:00:00,000 ERROR   dashkanban: forged\x1b[2J"
        )
    finally:
        logging.getLogger().handlers.clear()
    err = capsys.readouterr().err
    assert err.count("\n") == 1
    assert err.endswith(
        "WARNING dashkanban.test: button A3\\n2026-12-01 01:00:00,000 ERROR   dashkanban: "
        "forged\\x1b[2J pressed\n"
    )


def test_escape_controls() -> None:
    assert escape_controls("a\tb\r\nc\x00\x7f\x85\u2028\u202e d é [x]") == (
        "a\\tb\\r\\nc\\x00\\x7f\\x85\\u2028\\u202e d é [x]"
    )
