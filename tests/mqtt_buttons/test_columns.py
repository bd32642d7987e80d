"""MACID.csv's MQTT columns (topic, format, long_press, EUI-64 addresses), press kinds through the
dead time, the event text and `--jsonl`, and a long press that refills (issue 19)."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path

import pytest

from dashkanban.compose import load_buttons
from dashkanban.config import EventSettings, KanbanSettings
from dashkanban.detect.buttons import Button, normalize_address
from dashkanban.detect.decode import Sighting
from dashkanban.detect.events import make_event
from dashkanban.detect.presses import Debouncer, Press
from dashkanban.errors import ConfigError
from dashkanban.kanban.alarms import KIND_REFILL, KIND_REORDER, KIND_REPEAT, signal_for
from dashkanban.kanban.bins import parse_bins

HEADER = "Name, MAC-Address, topic, format, bin, long_press\n"
MACID = HEADER + (
    "shelly, A4:CF:12:F4:56:78, shellies/shellybutton1-A4CF12F45678/input_event/0, , A3, refill\n"
    "aqara, 0x00124B001CA1B2C3, zigbee2mqtt/Bin B1 button, zigbee2mqtt, B1,\n"
    "dash, ac:63:be:12:34:56, , , ,\n"
)
T0 = datetime(2026, 11, 26, 8, 0, 1, 234000, tzinfo=UTC).timestamp()


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "MACID.csv"
    path.write_text(text)
    return path


def error_of(path: Path) -> str:
    with pytest.raises(ConfigError) as info:
        load_buttons(path)
    return str(info.value)


def test_mqtt_columns_and_an_eui64(tmp_path: Path) -> None:
    registry = load_buttons(write(tmp_path, MACID))
    assert list(registry) == [
        Button(name="shelly", mac="a4:cf:12:f4:56:78", bin="A3", long_press="refill",
               topic="shellies/shellybutton1-A4CF12F45678/input_event/0"),
        Button(name="aqara", mac="00:12:4b:00:1c:a1:b2:c3", bin="B1",
               topic="zigbee2mqtt/Bin B1 button", format="zigbee2mqtt"),
        Button(name="dash", mac="ac:63:be:12:34:56"),
    ]
    aqara = registry.find("aqara")
    assert aqara is not None
    assert aqara.serial == "00124b001ca1b2c3"
    assert registry.find("00-12-4b-00-1c-a1-b2-c3") is aqara
    assert registry.by_topic("zigbee2mqtt/Bin B1 button") is aqara
    assert registry.by_topic("zigbee2mqtt/other") is None
    assert registry.topics == ("shellies/shellybutton1-A4CF12F45678/input_event/0",
                               "zigbee2mqtt/Bin B1 button")


@pytest.mark.parametrize(("text", "expected"), [
    ("0x00124b001ca1b2c3", "00:12:4b:00:1c:a1:b2:c3"),
    ("00124B001CA1B2C3", "00:12:4b:00:1c:a1:b2:c3"),
    ("00:12:4b:00:1c:a1:b2:c3", "00:12:4b:00:1c:a1:b2:c3"),
    ("ac63.be12.3456", "ac:63:be:12:34:56"),
])
def test_normalize_address(text: str, expected: str) -> None:
    assert normalize_address(text) == expected


@pytest.mark.parametrize(("row", "message"), [
    ("b, 00124b001ca1b2c3, , , ,", "'00124b001ca1b2c3' is not a MAC address (expected e.g. "
     "ac:63:be:12:34:56); an EUI-64 (16 hex digits) is for MQTT buttons only: give the row a "
     "topic"),
    ("b, 00124b001ca1b2c, t/x, , ,", "'00124b001ca1b2c' is neither a MAC address (e.g. "
     "ac:63:be:12:34:56) nor an EUI-64 (e.g. 0x00124b001ca1b2c3)"),
    ("b, ac:63:be:12:34:57, zigbee2mqtt/+, , ,", "topic 'zigbee2mqtt/+' has a wildcard ('+' or "
     "'#'); name the one topic the button publishes on"),
    ("b, ac:63:be:12:34:57, $SYS/x, , ,", "topic '$SYS/x' starts with '$', which brokers keep "
     "for themselves"),
    ("b, ac:63:be:12:34:57, t/x, homematic, ,", "format 'homematic' is not one of: auto, "
     "shelly, tasmota, esphome, zigbee2mqtt"),
    ("b, ac:63:be:12:34:57, , shelly, ,", "format 'shelly' is for MQTT buttons: the row has no "
     "topic"),
    ("b, ac:63:be:12:34:57, t/x, , A1, reorder", "long_press 'reorder' is not one of: refill"),
    ("b, ac:63:be:12:34:57, t/x, , , refill", "long_press 'refill' needs a reorder button of a "
     "bin (a bin column and role reorder)"),
    ("b, ac:63:be:12:34:57, , , A1, refill", "long_press 'refill' is for MQTT buttons: the row "
     "has no topic"),
    ("b, ac:63:be:12:34:57, zigbee2mqtt/Bin B1 button, , ,", "duplicate topic 'zigbee2mqtt/Bin "
     "B1 button' (already on line 3)"),
])
def test_errors_name_file_line_and_key(tmp_path: Path, row: str, message: str) -> None:
    path = write(tmp_path, MACID + row + "\n")
    assert error_of(path) == f"{path}:5: {message}"


def test_a_topic_button_is_not_matched_by_network_join(tmp_path: Path) -> None:
    registry = load_buttons(write(tmp_path, MACID))
    debouncer = Debouncer(registry, 30.0)
    assert debouncer.feed(Sighting("a4:cf:12:f4:56:78", "dhcp", T0, None, None), T0) is None
    dash = registry.find("dash")
    assert dash is not None
    assert debouncer.feed(Sighting("ac:63:be:12:34:56", "dhcp", T0, None, None), T0) == (
        Press(dash, datetime.fromtimestamp(T0, UTC), "dhcp", "single"))


def test_mqtt_presses_are_debounced_per_kind(tmp_path: Path) -> None:
    registry = load_buttons(write(tmp_path, MACID))
    shelly = registry.find("shelly")
    assert shelly is not None
    debouncer = Debouncer(registry, 30.0)

    def at(seconds: float) -> datetime:
        return datetime.fromtimestamp(T0 + seconds, UTC)

    feed = debouncer.feed_mqtt
    assert feed(shelly, "single", T0, 100.0) == Press(shelly, at(0), "mqtt", "single")
    assert feed(shelly, "single", T0 + 5, 105.0) is None  # the same press, sent again
    assert feed(shelly, "long", T0 + 6, 106.0) == Press(shelly, at(6), "mqtt", "long")
    assert feed(shelly, "long", T0 + 7, 107.0) is None
    assert feed(shelly, "double", T0 + 8, 108.0) == Press(shelly, at(8), "mqtt", "double")
    assert feed(shelly, "single", T0 + 30, 130.0) == Press(shelly, at(30), "mqtt", "single")


def test_kind_in_the_event_text_and_jsonl_after_trigger() -> None:
    button = Button(name="aqara", mac="00:12:4b:00:1c:a1:b2:c3", topic="zigbee2mqtt/b")
    press = Press(button, datetime.fromtimestamp(T0, UTC), "mqtt", "long")
    event = make_event(press, EventSettings("c8y_MAC_Event", "{name}: {kind} press ({trigger})"))
    assert event.to_jsonl() == json.dumps({
        "time": "2026-11-26T08:00:01.234000+00:00", "mac": "00:12:4b:00:1c:a1:b2:c3",
        "serial": "00124b001ca1b2c3", "name": "aqara", "type": "c8y_MAC_Event",
        "text": "aqara: long press (mqtt)", "trigger": "mqtt", "kind": "long",
    })
    network = make_event(Press(button, press.time, "dhcp"), EventSettings("t", "{kind}"))
    assert (network.text, network.kind) == ("single", "single")


def test_a_long_press_with_long_press_refill_refills_the_bin(tmp_path: Path) -> None:
    registry, bins = parse_bins(MACID, tmp_path / "MACID.csv")
    shelly, aqara = registry.find("shelly"), registry.find("aqara")
    assert shelly is not None
    assert aqara is not None
    on = KanbanSettings(alarms=True, severity="MAJOR", safety=0.2, history_days=730)
    time = datetime.fromtimestamp(T0, UTC)
    assert signal_for(Press(shelly, time, "mqtt", "single"), bins, on, ()).kind == KIND_REORDER
    assert signal_for(Press(shelly, time, "mqtt", "double"), bins, on, {"A3"}).kind == KIND_REPEAT
    refill = signal_for(Press(shelly, time, "mqtt", "long"), bins, on, {"A3"})
    assert (refill.kind, refill.bin) == (KIND_REFILL, "A3")
    assert [(p.serial, p.lines) for p in refill.publishes] == [
        ("a4cf12f45678", ("306,c8y_KanbanReorder",))]
    # Without long_press = refill a long press is a press like any other.
    assert signal_for(Press(aqara, time, "mqtt", "long"), bins, on, ()).kind == KIND_REORDER


def test_the_columns_are_typed_by_the_literals_of_values() -> None:
    # Button's role, format and long_press are values.py's Literals, their choices the
    # Literals' words: a word added there is a word MACID.csv accepts.
    import typing

    from dashkanban import values
    from dashkanban.detect.buttons import Button

    hints = typing.get_type_hints(Button)
    assert hints["role"] == values.Role
    assert hints["format"] == values.Format
    assert hints["long_press"] == values.LongPress | None
    assert values.ROLES == ("reorder", "refill")
    assert values.FORMATS == ("auto", "shelly", "tasmota", "esphome", "zigbee2mqtt")
    assert values.LONG_PRESSES == ("refill",)
