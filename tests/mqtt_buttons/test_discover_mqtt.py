"""`discover --mqtt SECONDS`: the button-like topics of the broker, and `--add-to` (issue 19)."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import aiomqtt
import pytest

from dashkanban.cli import main
from dashkanban.compose import load_buttons
from dashkanban.detect.buttons import Button
from dashkanban.mqtt_buttons.discover import (
    MqttCensus,
    TopicSeen,
    button_format,
    suggested_name,
)
from dashkanban.mqtt_buttons.payloads import recognise, topic_device
from tests.brokers import Mosquitto

SHELLY = "shellies/shellybutton1-A4CF12F45678/input_event/0"
TASMOTA = "stat/tasmota_5A1B2C/RESULT"
ESPHOME = "aisle2/binary_sensor/bin_c2_button/state"
ZIGBEE = "zigbee2mqtt/Bin D1 button"
DEVICES = json.dumps([
    {"friendly_name": "Coordinator", "ieee_address": "0x00124b0000000001", "type": "Coordinator"},
    {"friendly_name": "Bin D1 button", "ieee_address": "0x00124b001ca1b2c3", "type": "EndDevice"},
]).encode()
MESSAGES: list[tuple[str, bytes]] = [
    ("zigbee2mqtt/bridge/devices", DEVICES),
    ("zigbee2mqtt/bridge/state", b'{"state":"online"}'),
    (ZIGBEE, b'{"action":"","battery":64,"linkquality":90}'),
    ("zigbee2mqtt/Kitchen thermometer", b'{"temperature":21.5,"battery":80}'),
    ("zigbee2mqtt/0x00158d0001a2b3c4", b'{"action":"single"}'),
    (SHELLY, b'{"event":"S","event_cnt":12}'),
    ("shellies/shellybutton1-A4CF12F45678/sensor/battery", b"87"),
    ("tasmota/discovery/245A1B2C3D4E/config", b'{"t":"tasmota_5A1B2C","mac":"245A1B2C3D4E"}'),
    (TASMOTA, b'{"POWER":"ON"}'),
    (TASMOTA, b'{"Button1":{"Action":"DOUBLE"}}'),
    (ESPHOME, b"OFF"),
    ("aisle2/sensor/temperature/state", b"21.5"),
    ("stat/tasmota_ffffff/RESULT", b'{"Button1":{"Action":"SINGLE"}}'),  # no discovery message
]


def test_the_census_of_button_topics() -> None:
    census = MqttCensus()
    for topic, payload in MESSAGES:
        census.add(topic, payload)
    assert sorted(census.topics.values(), key=lambda t: t.topic) == [
        TopicSeen(ESPHOME, "esphome", 1),
        TopicSeen(SHELLY, "shelly", 1, {"single": 1}),
        TopicSeen(TASMOTA, "tasmota", 1, {"double": 1}),  # the POWER result did not count
        TopicSeen("stat/tasmota_ffffff/RESULT", "tasmota", 1, {"single": 1}),
        TopicSeen("zigbee2mqtt/0x00158d0001a2b3c4", "zigbee2mqtt", 1, {"single": 1}),
        TopicSeen(ZIGBEE, "zigbee2mqtt", 1, battery=64.0),
    ]
    assert [census.address(t) for t in (SHELLY, TASMOTA, ZIGBEE, "zigbee2mqtt/0x00158d0001a2b3c4",
                                        ESPHOME, "stat/tasmota_ffffff/RESULT")] == [
        "a4:cf:12:f4:56:78", "24:5a:1b:2c:3d:4e", "00:12:4b:00:1c:a1:b2:c3",
        "00:15:8d:00:01:a2:b3:c4", None, None]
    assert census.messages == len(MESSAGES)


def test_a_friendly_name_with_a_slash_gets_its_address() -> None:
    # zigbee2mqtt allows '/' in a friendly name (folders in its frontend); discover used a
    # pattern of its own, `zigbee2mqtt/([^/]+)`, apart from the daemon's, and found no address.
    topic = "zigbee2mqtt/aisle2/bin B1"
    census = MqttCensus()
    census.add("zigbee2mqtt/bridge/devices", json.dumps([
        {"friendly_name": "aisle2/bin B1", "ieee_address": "0x00124b001ca1b2c4"}]).encode())
    census.add(topic, b'{"action":"off","battery":55}')
    census.add("zigbee2mqtt/aisle2/bin B1/set", b'{"action":"single"}')  # a command to it
    census.add("zigbee2mqtt/bridge/request/x", b'{"action":"single"}')
    assert census.topics == {topic: TopicSeen(topic, "zigbee2mqtt", 1, {"double": 1}, 55.0)}
    assert census.address(topic) == "00:12:4b:00:1c:a1:b2:c4"
    assert suggested_name(topic) == "aisle2_bin B1"


@pytest.mark.parametrize(("topic", "fmt", "device"), [
    (SHELLY, "shelly", "shellybutton1-A4CF12F45678"),
    ("shellies/shellybutton1-A4CF12F45678/sensor/battery", "shelly", "shellybutton1-A4CF12F45678"),
    (TASMOTA, "tasmota", "tasmota_5A1B2C"),
    ("RESULT", "tasmota", None),
    (ESPHOME, "esphome", "bin_c2_button"),
    (ZIGBEE, "zigbee2mqtt", "Bin D1 button"),
    ("zigbee2mqtt/aisle2/bin B1", "zigbee2mqtt", "aisle2/bin B1"),
])
def test_discover_and_the_daemon_read_topics_alike(topic: str, fmt: str,
                                                   device: str | None) -> None:
    assert topic_device(topic) == (fmt, device)
    assert recognise(topic) == fmt


@pytest.mark.parametrize(("topic", "payload"), [
    ("zigbee2mqtt/x", b"[" * 5000),
    ("zigbee2mqtt/x", b"\xff\xfe"),
    ("stat/x/RESULT", b'{"Button1":'),
    ("zigbee2mqtt/bridge/devices", b"[" * 100_000),
    # An integer Python 3.11 refuses to read (over 4,300 digits): a plain ValueError.
    ("zigbee2mqtt/x", b'{"action":"single","battery":' + b"9" * 4400 + b"}"),
    ("stat/x/RESULT", b'{"Button1":{"Action":"SINGLE"},"n":' + b"9" * 4400 + b"}"),
])
def test_hostile_messages_are_no_buttons(topic: str, payload: bytes) -> None:
    census = MqttCensus()
    census.add(topic, payload)
    assert census.topics == {}
    assert button_format(topic, payload) is None


def test_the_number_of_topics_is_bounded() -> None:
    census = MqttCensus(max_topics=3)
    for n in range(10):
        census.add(f"zigbee2mqtt/b{n}", b'{"action":"single"}')
    assert sorted(census.topics) == ["zigbee2mqtt/b0", "zigbee2mqtt/b1", "zigbee2mqtt/b2"]


def retained(broker: Mosquitto) -> None:
    async def send() -> None:
        async with aiomqtt.Client(broker.host, broker.port) as client:
            for topic, payload in MESSAGES:
                await client.publish(topic, payload, qos=1, retain=True)

    asyncio.run(send())


def config_for(tmp_path: Path, broker: Mosquitto, macid: str) -> Path:
    (tmp_path / "MACID.csv").write_text(macid)
    config = tmp_path / "config.ini"
    config.write_text(f"[buttons]\nfile = MACID.csv\n\n[mqtt_buttons]\nport = {broker.port}\n")
    return config


def test_discover_mqtt_lists_and_adds_to_macid(
    tmp_path: Path, mosquitto: Mosquitto, capsys: pytest.CaptureFixture[str]
) -> None:
    retained(mosquitto)
    config = config_for(tmp_path, mosquitto,
                        "Name;MAC-Address;bin\r\ndash;ac:63:be:12:34:56;A3\r\n")
    assert main(["discover", "--mqtt", "1", "-c", str(config)]) == 0
    out, err = capsys.readouterr()
    # The broker keeps one retained message a topic: Tasmota's POWER result is gone.
    assert err.splitlines()[-1] == (
        f"6 button topics, {len(MESSAGES) - 1} messages in 1 s from 127.0.0.1:{mosquitto.port}")
    rows = [line for line in out.splitlines() if line.startswith("│")]
    assert [[cell.strip() for cell in row.split("│")[1:-1]] for row in rows] == [
        [ESPHOME, "esphome", "?", "1", "", "", ""],
        [SHELLY, "shelly", "a4:cf:12:f4:56:78", "1", "single 1", "", ""],
        [TASMOTA, "tasmota", "24:5a:1b:2c:3d:4e", "1", "double 1", "", ""],
        ["stat/tasmota_ffffff/RESULT", "tasmota", "?", "1", "single 1", "", ""],
        ["zigbee2mqtt/0x00158d0001a2b3c4", "zigbee2mqtt", "00:15:8d:00:01:a2:b3:c4", "1",
         "single 1", "", ""],
        [ZIGBEE, "zigbee2mqtt", "00:12:4b:00:1c:a1:b2:c3", "1", "", "64 %", ""],
    ]

    assert main(["discover", "--mqtt", "1", "-c", str(config), "--add-to",
                 str(tmp_path / "MACID.csv")]) == 0
    out = capsys.readouterr().out
    assert out.splitlines() == [
        f"left out: {ESPHOME} (no address known; add its row by hand)",
        "left out: stat/tasmota_ffffff/RESULT (no address known; add its row by hand)",
        f"added: shellybutton1-A4CF12F45678, a4:cf:12:f4:56:78, {SHELLY}",
        f"added: tasmota_5A1B2C, 24:5a:1b:2c:3d:4e, {TASMOTA}",
        "added: 0x00158d0001a2b3c4, 00:15:8d:00:01:a2:b3:c4, zigbee2mqtt/0x00158d0001a2b3c4",
        f"added: Bin D1 button, 00:12:4b:00:1c:a1:b2:c3, {ZIGBEE}",
        f"{tmp_path / 'MACID.csv'}: 4 MQTT buttons added, 1 listed before",
    ]
    # The file's own delimiter and line ends; topic and format added to the header only.
    assert (tmp_path / "MACID.csv").read_bytes().decode() == (
        "Name;MAC-Address;bin;topic;format\r\n"
        "dash;ac:63:be:12:34:56;A3\r\n"
        f"shellybutton1-A4CF12F45678;a4:cf:12:f4:56:78;;{SHELLY};shelly\r\n"
        f"tasmota_5A1B2C;24:5a:1b:2c:3d:4e;;{TASMOTA};tasmota\r\n"
        "0x00158d0001a2b3c4;00:15:8d:00:01:a2:b3:c4;;zigbee2mqtt/0x00158d0001a2b3c4;zigbee2mqtt\r\n"
        f"Bin D1 button;00:12:4b:00:1c:a1:b2:c3;;{ZIGBEE};zigbee2mqtt\r\n"
    )
    registry = load_buttons(tmp_path / "MACID.csv")
    assert registry.by_topic(ZIGBEE) == Button(
        name="Bin D1 button", mac="00:12:4b:00:1c:a1:b2:c3", topic=ZIGBEE, format="zigbee2mqtt")
    # A second run adds nothing.
    assert main(["discover", "--mqtt", "1", "-c", str(config), "--add-to",
                 str(tmp_path / "MACID.csv")]) == 0
    assert capsys.readouterr().out.splitlines()[-1] == (
        f"{tmp_path / 'MACID.csv'}: 0 MQTT buttons added, 5 listed before")


def test_discover_mqtt_needs_the_section(tmp_path: Path,
                                         capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "MACID.csv").write_text("Name, MAC-Address\n")
    config = tmp_path / "config.ini"
    config.write_text("[buttons]\nfile = MACID.csv\n")
    assert main(["discover", "--mqtt", "1", "-c", str(config)]) == 2
    assert capsys.readouterr().err.splitlines()[-1] == (
        f"error: {config}: discover --mqtt needs a [mqtt_buttons] section (the broker the "
        "buttons publish to; docs/buttons.md)")


def test_discover_mqtt_shows_the_last_kept_level_of_a_known_button(
    tmp_path: Path, mosquitto: Mosquitto, capsys: pytest.CaptureFixture[str]
) -> None:
    from datetime import UTC, datetime

    from dashkanban.mqtt_buttons.battery import BatteryFile

    retained(mosquitto)
    config = config_for(tmp_path, mosquitto,
                        f"Name, MAC-Address, topic\nc2, 24:62:ab:00:00:01, {ESPHOME}\n")
    config.write_text(config.read_text() + f"\n[outbox]\npath = {tmp_path / 'outbox.sqlite3'}\n")
    button = load_buttons(tmp_path / "MACID.csv").find("c2")
    assert button is not None
    BatteryFile(tmp_path / "outbox.sqlite3").record(button, 55.0, datetime.now(UTC))
    assert main(["discover", "--mqtt", "1", "-c", str(config)]) == 0
    rows = [line for line in capsys.readouterr().out.splitlines() if line.startswith("│")]
    assert [cell.strip() for cell in rows[0].split("│")[1:-1]] == [
        ESPHOME, "esphome", "?", "1", "", "55 % (last kept)", "c2"]


def test_add_to_leaves_out_topics_macid_would_refuse(tmp_path: Path) -> None:
    import io

    from dashkanban.mqtt_buttons.discover import add_to

    census = MqttCensus()
    census.add("zigbee2mqtt/bridge/devices", json.dumps([
        {"friendly_name": "evil\x1b[2J", "ieee_address": "0x00124b001ca1b2c3"}]).encode())
    census.add("zigbee2mqtt/evil\x1b[2J", b'{"action":"single"}')
    census.add("zigbee2mqtt/0x00124b001ca1b2c4", b'{"action":"single"}')
    out = io.StringIO()
    assert add_to(tmp_path / "MACID.csv", census.topics.values(), census, out) == 1
    assert out.getvalue().splitlines() == [
        "left out: zigbee2mqtt/evil\\x1b[2J (topic 'zigbee2mqtt/evil\\x1b[2J' has a control "
        "character; add its row by hand)",
        "added: 0x00124b001ca1b2c4, 00:12:4b:00:1c:a1:b2:c4, zigbee2mqtt/0x00124b001ca1b2c4",
        f"{tmp_path / 'MACID.csv'}: 1 MQTT button added, 0 listed before",
    ]
    assert (tmp_path / "MACID.csv").read_text() == (
        "Name, MAC-Address, topic, format\n"
        "0x00124b001ca1b2c4,00:12:4b:00:1c:a1:b2:c4,zigbee2mqtt/0x00124b001ca1b2c4,zigbee2mqtt\n")
    assert len(load_buttons(tmp_path / "MACID.csv")) == 1


def test_add_to_leaves_out_a_topic_with_a_trailing_space(tmp_path: Path) -> None:
    # MACID.csv strips its values, quoted or not: a friendly name ending in a space would make a
    # row whose topic never matches what zigbee2mqtt publishes on.
    import io

    from dashkanban.mqtt_buttons.discover import add_to

    census = MqttCensus()
    census.add("zigbee2mqtt/0x00124b001ca1b2c5 ", b'{"action":"single"}')
    out = io.StringIO()
    assert add_to(tmp_path / "MACID.csv", census.topics.values(), census, out) == 0
    assert out.getvalue().splitlines() == [
        "left out: 'zigbee2mqtt/0x00124b001ca1b2c5 ' (starts or ends with a space, which "
        "MACID.csv drops: rename the device, e.g. its zigbee2mqtt friendly name)",
        f"{tmp_path / 'MACID.csv'}: 0 MQTT buttons added, 0 listed before",
    ]
    macid = tmp_path / "MACID.csv"
    macid.write_text('Name, MAC-Address, topic\nb, 0x00124b001ca1b2c5, "zigbee2mqtt/b "\n')
    assert [b.topic for b in load_buttons(macid)] == ["zigbee2mqtt/b"]
