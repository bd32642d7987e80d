"""Issue 13, hole 2: `[event] text` is rendered for every button at load, and a press is never
lost to its template."""

from __future__ import annotations

import logging
from datetime import UTC, datetime
from pathlib import Path

import pytest

from dashkanban.cli import main
from dashkanban.config import EventSettings
from dashkanban.detect.buttons import Button
from dashkanban.detect.events import make_event
from dashkanban.detect.presses import Press

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

[event]
text = {text}
"""
TEXT_LINE = 14


def _replay(tmp_path: Path, text: str, buttons: str = "") -> int:
    csv = tmp_path / "MACID.csv"
    csv.write_text("Name, MAC-Address, quantity\ndashButton_1, ac:63:be:12:34:56, 200\n" + buttons)
    config = tmp_path / "config.ini"
    config.write_text(CONFIG.format(buttons=csv, outbox=tmp_path / "outbox.sqlite3", text=text))
    config.chmod(0o600)
    return main(["replay", str(tmp_path / "none.pcap"), "--dry-run", "-c", str(config)])


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("{name:d}", "text = {name:d}: cannot be rendered for a button with every optional "
         "column: ValueError: Unknown format code 'd' for object of type 'str'"),
        ("{quantity:d} left", "text = {quantity:d} left: cannot be rendered for a button without "
         "optional columns: ValueError: Unknown format code 'd' for object of type 'str'"),
        ("{name:>999999999999}", "text = {name:>999999999999}: the width or precision "
         "999999999999 in {name:>999999999999} is over 1000"),
        ("{name:.{quantity}}", "text = {name:.{quantity}}: a placeholder inside a format spec "
         "({name:.{quantity}}) is not supported"),
        ("{name!x}", "text = {name!x}: cannot be rendered for a button with every optional "
         "column: ValueError: Unknown conversion specifier x"),
        ("{bin}", "text = {bin}: cannot be rendered for a button without optional columns: it "
         "renders to an empty text, and Cumulocity refuses an event without text"),
        ("{part} {location}", "text = {part} {location}: cannot be rendered for a button "
         "without optional columns: it renders to an empty text, and Cumulocity refuses an "
         "event without text"),
    ],
    ids=["name:d", "quantity:d", "huge width", "nested", "conversion", "empty", "blank"],
)
def test_a_template_that_cannot_render_is_refused_at_load(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], text: str, message: str
) -> None:
    assert _replay(tmp_path, text) == 2
    assert capsys.readouterr().err == f"error: {tmp_path / 'config.ini'}:{TEXT_LINE}: {message}\n"
    assert not (tmp_path / "outbox.sqlite3").exists()


def test_a_template_is_rendered_for_every_button(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Fine for the sample buttons, but one button's event line would not fit in a message."""
    long_name = "n" * 8_000
    assert _replay(tmp_path, "{name} pressed ({mac}), {name}", f"{long_name}, fc:a6:67:0a:0b:0c\n"
                   ) == 2
    assert capsys.readouterr().err == (
        f"error: {tmp_path / 'config.ini'}:{TEXT_LINE}: [event] text = {{name}} pressed ({{mac}}), "
        f"{{name}}: cannot be rendered for button {long_name[:60]!r}: its event line would be "
        "16080 bytes, over the 16000 bytes of one message\n"
    )


def test_rendering_at_press_time_never_loses_the_press(caplog: pytest.LogCaptureFixture) -> None:
    """Should a template still fail (a button from the inventory), the press gets the default."""
    press = Press(Button(name="Aisle 2 screws", mac="ac:63:be:12:34:56"),
                  datetime(2026, 11, 26, 8, 0, 1, 234000, tzinfo=UTC), "dhcp")
    with caplog.at_level(logging.WARNING, logger="dashkanban.detect.events"):
        event = make_event(press, EventSettings(type="c8y_MAC_Event", text="{quantity:d} left"))
    assert (event.name, event.type, event.text) == (
        "Aisle 2 screws", "c8y_MAC_Event", "Aisle 2 screws pressed (ac:63:be:12:34:56)"
    )
    assert [r.getMessage() for r in caplog.records] == [
        "[event] text '{quantity:d} left' cannot be rendered for button 'Aisle 2 screws' "
        "(ValueError: Unknown format code 'd' for object of type 'str'); sending "
        "'Aisle 2 screws pressed (ac:63:be:12:34:56)' instead"
    ]


def test_a_text_that_renders_empty_at_press_time_gets_the_default(
        caplog: pytest.LogCaptureFixture) -> None:
    """Cumulocity refuses an event without text: a template that renders empty for a press
    (settings made without `load_settings`, which refuses it) still sends the press."""
    press = Press(Button(name="Aisle 2 screws", mac="ac:63:be:12:34:56"),
                  datetime(2026, 11, 26, 8, 0, 1, 234000, tzinfo=UTC), "dhcp")
    with caplog.at_level(logging.WARNING, logger="dashkanban.detect.events"):
        event = make_event(press, EventSettings(type="c8y_MAC_Event", text="{bin}"))
    assert event.text == "Aisle 2 screws pressed (ac:63:be:12:34:56)"
    assert [r.getMessage() for r in caplog.records] == [
        "[event] text '{bin}' cannot be rendered for button 'Aisle 2 screws' (ValueError: it "
        "renders to an empty text, and Cumulocity refuses an event without text); sending "
        "'Aisle 2 screws pressed (ac:63:be:12:34:56)' instead"
    ]
