"""Issue 13: MACID.csv names that cannot reach Cumulocity as written are refused at load, with the
file and line (exit 2), before any press could be queued behind them."""

from __future__ import annotations

from pathlib import Path

import pytest

from dashkanban.c8y.mqtt import event_messages
from dashkanban.c8y.smartrest import MAX_MESSAGE_BYTES
from dashkanban.cli import main
from dashkanban.compose import load_buttons
from dashkanban.detect.events import Event
from dashkanban.errors import ConfigError
from tests.outbox_writer import T0

CONFIG = """\
[C8YMQTT]
tenant = example.cumulocity.com
tenantID = t12345
user = dash-gateway
password = secret

[buttons]
file = {buttons}

[outbox]
path = {outbox}
"""

ESCAPE = (
    "it holds a '\\' before '\"', '\\', ',', a line break or at its end, which Cumulocity's "
    "SmartREST parser could read as an escape"
)


def _files(tmp_path: Path, rows: str) -> tuple[Path, Path]:
    buttons = tmp_path / "MACID.csv"
    buttons.write_text("Name, MAC-Address\ndashButton_1, ac:63:be:12:34:56\n" + rows,
                       encoding="utf-8")
    config = tmp_path / "config.ini"
    config.write_text(CONFIG.format(buttons=buttons, outbox=tmp_path / "outbox.sqlite3"))
    config.chmod(0o600)
    return config, buttons


@pytest.mark.parametrize(
    ("row", "message"),
    [
        ('"Shelf \\"",c8y_Evil", fc:a6:67:0a:0b:0c\n',
         f"Name 'Shelf \\\\\",c8y_Evil' cannot be sent to Cumulocity as written: {ESCAPE}; "
         "change it"),
        ("Bin A3\\, fc:a6:67:0a:0b:0c\n",
         f"Name 'Bin A3\\\\' cannot be sent to Cumulocity as written: {ESCAPE}; change it"),
        ('"bell\x07", fc:a6:67:0a:0b:0c\n',
         "Name 'bell\\x07' cannot be sent to Cumulocity as written: it holds the control "
         "character U+0007; change it"),
        ("x" * 17_000 + ", fc:a6:67:0a:0b:0c\n",
         "Name is 17000 characters: the line that creates its device in Cumulocity would be "
         "17032 bytes, over the 16000 bytes dashkanban sends in one message (Cumulocity's "
         "limit is 16,184); shorten it"),
    ],
    ids=["escape", "trailing backslash", "control character", "17,000 characters"],
)
def test_a_name_that_cannot_be_sent_is_refused_at_load(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], row: str, message: str
) -> None:
    config, buttons = _files(tmp_path, row)
    assert main(["replay", str(tmp_path / "none.pcap"), "--dry-run", "-c", str(config)]) == 2
    assert capsys.readouterr().err == f"error: {buttons}:3: {message}\n"
    assert not (tmp_path / "outbox.sqlite3").exists()


def test_the_longest_name_accepted_fits_the_uplinks_101(tmp_path: Path) -> None:
    """The load check and the uplink's own size check agree on the same line."""
    overhead = len("101,ac63be123456,,c8y_DashButton")
    longest = "n" * (MAX_MESSAGE_BYTES - overhead)
    _, buttons = _files(tmp_path, f"{longest}, fc:a6:67:0a:0b:0c\n")
    button = load_buttons(buttons).find(longest)
    assert button is not None
    event = Event(time=T0, mac=button.mac, serial=button.serial, name=button.name,
                  type="c8y_MAC_Event", text="pressed", trigger="arp")
    (announce, _) = event_messages(event, (), gateway=True, announce=True)
    assert len(announce.payload.encode()) == MAX_MESSAGE_BYTES
    _, buttons = _files(tmp_path, f"{longest}n, fc:a6:67:0a:0b:0c\n")
    with pytest.raises(ConfigError, match=r"Name is 15969 characters: .* 16001 bytes"):
        load_buttons(buttons)


def test_a_safe_backslash_is_kept(tmp_path: Path) -> None:
    _, buttons = _files(tmp_path, '"C:\\bins\\A3, left ""x""", fc:a6:67:0a:0b:0c\n')
    assert [b.name for b in load_buttons(buttons)] == ["dashButton_1", 'C:\\bins\\A3, left "x"']
