"""mqtt_buttons.payloads: the exact bytes each firmware publishes -> the typed reading."""

from __future__ import annotations

import pytest

from dashkanban.mqtt_buttons.payloads import (
    FORMATS,
    MAX_PAYLOAD,
    BatteryLevel,
    ButtonPress,
    Format,
    NoPress,
    Reading,
    Repeats,
    Unreadable,
    battery_topic,
    read_message,
    recognise,
)

SHELLY = "shellies/shellybutton1-A4CF12F45678/input_event/0"
SHELLY_BATTERY = "shellies/shellybutton1-A4CF12F45678/sensor/battery"
TASMOTA = "stat/tasmota_5A1B2C/RESULT"
ESPHOME = "aisle2/binary_sensor/bin_a3_button/state"
ZIGBEE = "zigbee2mqtt/Bin B1 button"
HUGE_INTEGER = b'{"action":"single","battery":' + b"9" * 4400 + b"}"


@pytest.mark.parametrize("fmt", ["auto", "shelly"])
@pytest.mark.parametrize(("payload", "expected"), [
    (b'{"event":"S","event_cnt":7}', ButtonPress("single", "shelly", count=7)),
    (b'{"event":"SS","event_cnt":8}', ButtonPress("double", "shelly", count=8)),
    (b'{"event":"SSS","event_cnt":9}', ButtonPress("double", "shelly", count=9)),
    (b'{"event":"L","event_cnt":10}', ButtonPress("long", "shelly", count=10)),
    (b'{"event":"","event_cnt":10}', NoPress("Shelly event ''")),
    (b'{"event":"S"}', Unreadable("Shelly input_event without event and event_cnt")),
    (b'{"event":"S","event_cnt":true}', Unreadable(
        "Shelly input_event without event and event_cnt")),
    (b'[1]', Unreadable("Shelly input_event is no JSON object")),
])
def test_shelly_button1(fmt: Format, payload: bytes, expected: Reading) -> None:
    assert read_message(SHELLY, payload, False, fmt) == expected


@pytest.mark.parametrize(("payload", "expected"), [
    (b"87", BatteryLevel(87.0, "shelly")),
    (b"4.5", BatteryLevel(4.5, "shelly")),
    (b"101", Unreadable("Shelly battery is no percentage")),
    (b"NaN", Unreadable("Shelly battery is no percentage")),  # json.loads reads NaN
    (b'"x"', Unreadable("Shelly battery is no percentage")),
])
def test_shelly_battery(payload: bytes, expected: Reading) -> None:
    assert read_message(SHELLY_BATTERY, payload, False) == expected


@pytest.mark.parametrize(("payload", "expected"), [
    (b'{"Button1":{"Action":"SINGLE"}}', ButtonPress("single", "tasmota")),
    (b'{"Button1":{"Action":"DOUBLE"}}', ButtonPress("double", "tasmota")),
    (b'{"Button1":{"Action":"TRIPLE"}}', ButtonPress("double", "tasmota")),
    (b'{"Button2":{"Action":"HOLD"}}', ButtonPress("long", "tasmota")),
    (b'{"Button1":{"Action":"CLEAR"}}', NoPress("Tasmota action 'CLEAR'")),
    (b'{"POWER":"ON"}', NoPress("Tasmota RESULT of no button")),
    (b'{"Button1":"SINGLE"}', Unreadable("Tasmota Button1 without Action")),
])
def test_tasmota_setoption73(payload: bytes, expected: Reading) -> None:
    assert read_message(TASMOTA, payload, False) == expected
    assert read_message(TASMOTA, payload, False, "tasmota") == expected


@pytest.mark.parametrize(("payload", "expected"), [
    (b"ON", ButtonPress("single", "esphome")),
    (b"OFF", NoPress("released (OFF)")),
    (b"on", Unreadable("ESPHome state is neither ON nor OFF")),
])
def test_esphome(payload: bytes, expected: Reading) -> None:
    assert read_message(ESPHOME, payload, False) == expected
    assert read_message(ESPHOME, payload, False, "esphome") == expected


@pytest.mark.parametrize(("payload", "expected"), [
    (b'{"action":"single","battery":91,"linkquality":120,"voltage":3015}',
     ButtonPress("single", "zigbee2mqtt", battery=91.0)),
    (b'{"action":"double"}', ButtonPress("double", "zigbee2mqtt")),
    (b'{"action":"triple"}', ButtonPress("double", "zigbee2mqtt")),
    (b'{"action":"long","battery":12}', ButtonPress("long", "zigbee2mqtt", battery=12.0)),
    (b'{"action":"hold"}', ButtonPress("long", "zigbee2mqtt")),
    (b'{"action":"release"}', NoPress("zigbee2mqtt action 'release'")),
    (b'{"action":"","battery":91}', BatteryLevel(91.0, "zigbee2mqtt")),
    (b'{"battery":14,"linkquality":120}', BatteryLevel(14.0, "zigbee2mqtt")),
    (b'{"linkquality":120}', NoPress("zigbee2mqtt state without action")),
    (b'{"action":5}', Unreadable("zigbee2mqtt action is no string")),
    (b'"single"', Unreadable("zigbee2mqtt message is no JSON object")),
])
def test_zigbee2mqtt(payload: bytes, expected: Reading) -> None:
    assert read_message(ZIGBEE, payload, False) == expected
    assert read_message(ZIGBEE, payload, False, "zigbee2mqtt") == expected


@pytest.mark.parametrize(("device", "action", "expected"), [
    # IKEA E1812 shortcut button: `on` a click, `off` a double click, `brightness_move_up` a
    # hold, `brightness_stop` its release (zigbee2mqtt's E1812 page).
    ("E1812", "on", ButtonPress("single", "zigbee2mqtt")),
    ("E1812", "off", ButtonPress("double", "zigbee2mqtt")),
    ("E1812", "brightness_move_up", ButtonPress("long", "zigbee2mqtt")),
    ("E1812", "brightness_stop", NoPress("zigbee2mqtt action 'brightness_stop'")),
    # SONOFF SNZB-01.
    ("SNZB-01", "single", ButtonPress("single", "zigbee2mqtt")),
    ("SNZB-01", "double", ButtonPress("double", "zigbee2mqtt")),
    ("SNZB-01", "long", ButtonPress("long", "zigbee2mqtt")),
    # Aqara WXKG01LM / WXKG11LM / WXKG12LM.
    ("WXKG01LM", "quadruple", ButtonPress("double", "zigbee2mqtt")),
    ("WXKG01LM", "many", ButtonPress("double", "zigbee2mqtt")),
    ("WXKG01LM", "hold", ButtonPress("long", "zigbee2mqtt")),
    ("WXKG01LM", "release", NoPress("zigbee2mqtt action 'release'")),
    ("WXKG12LM", "shake", NoPress("zigbee2mqtt action 'shake'")),
])
def test_zigbee2mqtt_actions_of_the_named_buttons(device: str, action: str,
                                                  expected: Reading) -> None:
    payload = f'{{"action":"{action}","battery":100,"linkquality":87}}'.encode()
    assert read_message(ZIGBEE, payload, False) == (
        ButtonPress(expected.kind, "zigbee2mqtt", battery=100.0)
        if isinstance(expected, ButtonPress) else expected), device


@pytest.mark.parametrize(("topic", "payload", "expected"), [
    # Topics of no known shape: `auto` reads the payload's.
    ("home/button", b'{"event":"S","event_cnt":1}', ButtonPress("single", "shelly", count=1)),
    ("home/button", b'{"Button1":{"Action":"HOLD"}}', ButtonPress("long", "tasmota")),
    ("home/button", b"ON", ButtonPress("single", "esphome")),
    ("home/button", b'{"action":"double"}', ButtonPress("double", "zigbee2mqtt")),
    ("home/button", b'{"temperature":21}', Unreadable("no known button format")),
    ("home/button", b"pressed", Unreadable("not JSON (Expecting value)")),
])
def test_auto_by_payload(topic: str, payload: bytes, expected: Reading) -> None:
    assert read_message(topic, payload, False) == expected


def test_an_explicit_format_wins_over_the_topic() -> None:
    assert read_message(ZIGBEE, b'{"event":"L","event_cnt":3}', False, "shelly") == (
        ButtonPress("long", "shelly", count=3))
    assert read_message("my/button", b"ON", False, "esphome") == ButtonPress("single", "esphome")


@pytest.mark.parametrize(("topic", "payload"), [
    (SHELLY, b'{"event":"S","event_cnt":7}'),
    (TASMOTA, b'{"Button1":{"Action":"SINGLE"}}'),
    (ESPHOME, b"ON"),
    (ZIGBEE, b'{"action":"single"}'),
])
def test_a_retained_message_is_never_a_press(topic: str, payload: bytes) -> None:
    assert read_message(topic, payload, True) == NoPress("retained")


@pytest.mark.parametrize(("payload", "expected"), [
    (b"{" * (MAX_PAYLOAD + 1), Unreadable(f"{MAX_PAYLOAD + 1} bytes, over {MAX_PAYLOAD}")),
    (b'{"action":"single\xff"}', Unreadable("not UTF-8 (byte 17)")),
    (b"\x00\x00", Unreadable("not JSON (Expecting value)")),
    (b"", Unreadable("not JSON (Expecting value)")),
    (b'{"action":"single"', Unreadable("not JSON (Expecting ',' delimiter)")),
    (b'{"battery":1e999}', NoPress("zigbee2mqtt state without action")),
    # Python 3.11 refuses to read an integer of over 4,300 digits with a plain ValueError.
    (HUGE_INTEGER, Unreadable("not JSON (a number of over 4300 digits)")),
])
def test_hostile_payloads_are_bounded_and_never_raise(payload: bytes,
                                                      expected: Reading) -> None:
    assert len(payload) <= MAX_PAYLOAD + 1
    assert read_message(ZIGBEE, payload, False) == expected
    for fmt in FORMATS:
        read_message(ZIGBEE, payload, False, fmt)  # whatever it reads as, it returns


@pytest.mark.parametrize("payload", [
    b"[" * 4000 + b"]" * 4000,
    b'{"a":' * 1200 + b"1" + b"}" * 1200,
])
def test_deep_json_is_unreadable(payload: bytes) -> None:
    assert len(payload) <= MAX_PAYLOAD
    assert read_message(ZIGBEE, payload, False) == Unreadable("JSON nested too deep")


@pytest.mark.parametrize(("topic", "expected"), [
    (SHELLY, "shelly"), (SHELLY_BATTERY, "shelly"), (TASMOTA, "tasmota"), (ESPHOME, "esphome"),
    (ZIGBEE, "zigbee2mqtt"), ("zigbee2mqtt/bridge/state", "zigbee2mqtt"), ("home/x", None),
])
def test_recognise(topic: str, expected: str | None) -> None:
    assert recognise(topic) == expected


def test_battery_topic() -> None:
    assert battery_topic(SHELLY, "auto") == SHELLY_BATTERY
    assert battery_topic(SHELLY, "shelly") == SHELLY_BATTERY
    assert battery_topic(SHELLY, "tasmota") is None
    assert battery_topic(ZIGBEE, "auto") is None  # in the press message itself


def test_repeated_event_cnt_is_the_same_press() -> None:
    repeats = Repeats()
    first = ButtonPress("single", "shelly", count=7)
    assert repeats.seen(SHELLY, first) is False
    assert repeats.seen(SHELLY, first) is True
    assert repeats.seen(SHELLY, ButtonPress("long", "shelly", count=8)) is False
    assert repeats.seen("shellies/other/input_event/0", first) is False
    no_count = ButtonPress("single", "tasmota")
    assert repeats.seen(TASMOTA, no_count) is False
    assert repeats.seen(TASMOTA, no_count) is False
