"""The daemon with MQTT buttons, end to end: a real mosquitto as the button broker, the payloads
published by the test, the events checked in the sandbox over REST (issue 19)."""

from __future__ import annotations

import asyncio
import logging
import queue
import ssl
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import aiomqtt
import pytest

from dashkanban.capture import Frame
from dashkanban.commands.run import Daemon
from dashkanban.config import load_settings
from dashkanban.sandbox import Sandbox
from tests import forge
from tests.brokers import Mosquitto, TlsFiles
from tests.conftest import BROKER_PASSWORD, BROKER_USER
from tests.sandbox_fixture import rest, sandbox_config

SHELLY = "shellies/shellybutton1-A4CF12F45678/input_event/0"
SHELLY_BATTERY = "shellies/shellybutton1-A4CF12F45678/sensor/battery"
TASMOTA = "stat/tasmota_5A1B2C/RESULT"
ESPHOME = "aisle2/binary_sensor/bin_c1_button/state"
ZIGBEE = "zigbee2mqtt/Bin B1 button"
MACID = (
    "Name, MAC-Address, topic, format, bin, part, quantity, long_press\n"
    f"shelly, a4:cf:12:f4:56:78, {SHELLY}, , A3, M6 screws, 50, refill\n"
    f"tasmota, 24:62:ab:5a:1b:2c, {TASMOTA}, tasmota, , , ,\n"
    f"esphome, 24:62:ab:00:00:01, {ESPHOME}, , , , ,\n"
    f"aqara, 0x00124b001ca1b2c3, {ZIGBEE}, zigbee2mqtt, , , ,\n"
    "dash, ac:63:be:12:34:56, , , , , ,\n"
)
SHELLY_SERIAL, DASH_SERIAL = "a4cf12f45678", "ac63be123456"
WAIT = 10.0


class OpenSource:
    """A frame source that stays open until stopped, fed by the test (as the other daemon
    tests do)."""

    def __init__(self) -> None:
        self._frames: queue.Queue[Frame | None] = queue.Queue()

    def put(self, data: bytes) -> None:
        self._frames.put(Frame(time.time(), data))

    def frames(self) -> Iterator[Frame]:
        while (frame := self._frames.get()) is not None:
            yield frame

    def stop(self) -> None:
        self._frames.put(None)


def write_config(folder: Path, sandbox: Sandbox, broker: Mosquitto, extra: str = "") -> Path:
    (folder / "MACID.csv").write_text(MACID, encoding="utf-8")
    return sandbox_config(folder, sandbox, folder / "MACID.csv", extra=(
        f"[mqtt_buttons]\nhost = {broker.host}\nport = {broker.port}\n\n"
        "[event]\ntext = {name} {kind} ({trigger})\n\n" + extra))


def publish(broker: Mosquitto, messages: list[tuple[str, bytes, bool]]) -> None:
    async def send() -> None:
        async with aiomqtt.Client(broker.host, broker.port) as client:
            for topic, payload, retain in messages:
                await client.publish(topic, payload, qos=1, retain=retain)

    asyncio.run(send())


def wait_until(check: Callable[[], bool], what: str, timeout: float = WAIT) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


def get(sandbox: Sandbox, url: str, **params: Any) -> Any:
    with rest(sandbox) as client:
        answer = client.get(url, params=params)
    assert answer.status_code == 200, answer.text
    return answer.json()


def events(sandbox: Sandbox) -> list[tuple[str, str]]:
    """(type, text) of every event in the sandbox, oldest first."""
    found = get(sandbox, "/event/events", pageSize=100)["events"]
    return [(e["type"], e["text"]) for e in sorted(found, key=lambda e: (e["time"], e["id"]))]


class Running:
    def __init__(self, daemon: Daemon) -> None:
        self.daemon = daemon
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.code: int | None = None

    def _run(self) -> None:
        self.code = self.daemon.run()

    def __enter__(self) -> Daemon:
        self.thread.start()
        wait_until(lambda: self.daemon.button_broker is not None
                   and self.daemon.button_broker.connected.is_set(), "the button broker")
        return self.daemon

    def __exit__(self, *exc: object) -> None:
        self.daemon.stop()
        self.thread.join(timeout=20)
        assert not self.thread.is_alive()


def test_each_format_becomes_one_event_per_press_with_its_kind(
    tmp_path: Path, sandbox: Sandbox, mosquitto: Mosquitto, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="dashkanban")
    settings = load_settings(write_config(tmp_path, sandbox, mosquitto))
    # Retained before the daemon starts: handed over at subscribe, never a press.
    publish(mosquitto, [(SHELLY, b'{"event":"S","event_cnt":41}', True),
                        (ESPHOME, b"ON", True), (ZIGBEE, b'{"action":"single"}', True)])
    with Running(Daemon(settings, OpenSource(), drain_on_stop=5.0)) as daemon:
        publish(mosquitto, [
            (SHELLY, b'{"event":"S","event_cnt":42}', False),
            (SHELLY, b'{"event":"S","event_cnt":42}', False),  # the same press, re-sent
            (SHELLY, b'{"event":"SS","event_cnt":43}', False),
            (TASMOTA, b'{"Button1":{"Action":"SINGLE"}}', False),
            (TASMOTA, b'{"Button1":{"Action":"SINGLE"}}', False),  # within the dead time
            (TASMOTA, b'{"Button1":{"Action":"HOLD"}}', False),
            (TASMOTA, b"SINGLE", False),  # malformed
            (ESPHOME, b"ON", False),
            (ESPHOME, b"OFF", False),
            (ZIGBEE, b'{"action":"double","battery":80}', False),
            (ZIGBEE, b'{"battery":80}', False),
            (ZIGBEE, b'{"action":"single\xff"}', False),  # malformed
            (ZIGBEE, b'{"action":"long"}', False),
        ])
        broker = daemon.button_broker
        assert broker is not None
        wait_until(lambda: broker.messages == 16, "every message read")
        wait_until(lambda: len(events(sandbox)) == 7, "7 events")
        assert (broker.presses, broker.repeats, broker.malformed) == (8, 1, 2)
    assert events(sandbox) == [("c8y_MAC_Event", text) for text in [
        "shelly single (mqtt)", "shelly double (mqtt)",
        "tasmota single (mqtt)", "tasmota long (mqtt)",
        "esphome single (mqtt)",
        "aqara double (mqtt)", "aqara long (mqtt)",
    ]]
    # Each on its own child device, the Zigbee one by its EUI-64.
    for serial in (SHELLY_SERIAL, "2462ab5a1b2c", "2462ab000001", "00124b001ca1b2c3"):
        assert sandbox.device_id(serial) is not None, serial
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]


def test_network_join_and_mqtt_presses_in_one_run(
    tmp_path: Path, sandbox: Sandbox, mosquitto: Mosquitto
) -> None:
    settings = load_settings(write_config(tmp_path, sandbox, mosquitto))
    source = OpenSource()
    with Running(Daemon(settings, source, drain_on_stop=5.0)):
        source.put(forge.dhcp_client_frame("ac:63:be:12:34:56", forge.DISCOVER))
        wait_until(lambda: len(events(sandbox)) == 1, "the Dash press")
        publish(mosquitto, [(TASMOTA, b'{"Button1":{"Action":"DOUBLE"}}', False)])
        wait_until(lambda: len(events(sandbox)) == 2, "the Tasmota press")
        # The Shelly's own network join is not a second press: a topic row is an MQTT button.
        source.put(forge.dhcp_client_frame("a4:cf:12:f4:56:78", forge.DISCOVER))
        publish(mosquitto, [(SHELLY, b'{"event":"L","event_cnt":1}', False)])
        wait_until(lambda: len(events(sandbox)) == 3, "the Shelly press")
        source.put(forge.dhcp_client_frame("ac:63:be:12:34:56", forge.REQUEST))  # dead time
        publish(mosquitto, [(ZIGBEE, b'{"action":"single"}', False)])
        wait_until(lambda: len(events(sandbox)) == 4, "the Zigbee press")
    assert events(sandbox) == [("c8y_MAC_Event", text) for text in [
        "dash single (dhcp)", "tasmota double (mqtt)", "shelly long (mqtt)",
        "aqara single (mqtt)",
    ]]


def alarms_of(sandbox: Sandbox, serial: str) -> list[tuple[str, str]]:
    source = sandbox.device_id(serial)
    assert source is not None, f"no device {serial}"
    found = get(sandbox, "/alarm/alarms", source=source, pageSize=100)["alarms"]
    return [(a["type"], a["status"]) for a in found]


def test_a_long_press_with_long_press_refill_clears_the_alarm(
    tmp_path: Path, sandbox: Sandbox, mosquitto: Mosquitto
) -> None:
    settings = load_settings(write_config(tmp_path, sandbox, mosquitto,
                                          "[kanban]\nalarms = yes\nhistory_days = 36500\n"))
    with Running(Daemon(settings, OpenSource(), drain_on_stop=5.0)):
        publish(mosquitto, [(SHELLY, b'{"event":"S","event_cnt":1}', False)])
        wait_until(lambda: sandbox.device_id(SHELLY_SERIAL) is not None
                   and alarms_of(sandbox, SHELLY_SERIAL) != [], "the reorder alarm")
        assert alarms_of(sandbox, SHELLY_SERIAL) == [("c8y_KanbanReorder", "ACTIVE")]
        publish(mosquitto, [(SHELLY, b'{"event":"L","event_cnt":2}', False)])
        wait_until(lambda: alarms_of(sandbox, SHELLY_SERIAL) == [
            ("c8y_KanbanReorder", "CLEARED")], "the alarm cleared by the long press")
    assert events(sandbox) == [("c8y_MAC_Event", "shelly single (mqtt)"),
                               ("c8y_MAC_Event", "shelly long (mqtt)")]


def test_over_tls_with_a_password_file(
    tmp_path: Path, sandbox: Sandbox, mosquitto_tls: Mosquitto, tls_files: TlsFiles,
    caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    (tmp_path / "buttons.pw").write_text(BROKER_PASSWORD + "\n")
    (tmp_path / "buttons.pw").chmod(0o600)
    (tmp_path / "MACID.csv").write_text(MACID, encoding="utf-8")
    config = sandbox_config(tmp_path, sandbox, tmp_path / "MACID.csv", extra=(
        f"[mqtt_buttons]\nhost = localhost\nport = {mosquitto_tls.port}\ntls = yes\n"
        f"user = {BROKER_USER}\npassword_file = buttons.pw\nca_file = {tls_files.ca_cert}\n"))
    with Running(Daemon(load_settings(config), OpenSource(), drain_on_stop=5.0)):
        async def send() -> None:
            context = ssl.create_default_context(cafile=str(tls_files.ca_cert))
            async with aiomqtt.Client("localhost", mosquitto_tls.port, username=BROKER_USER,
                                      password=BROKER_PASSWORD, tls_context=context) as client:
                await client.publish(ZIGBEE, b'{"action":"hold"}', qos=1)

        asyncio.run(send())
        wait_until(lambda: len(events(sandbox)) == 1, "the press over TLS")
    assert events(sandbox) == [("c8y_MAC_Event", "aqara pressed (00:12:4b:00:1c:a1:b2:c3)")]
    assert BROKER_PASSWORD not in caplog.text


def test_a_button_broker_failure_ends_run_with_exit_1(
    tmp_path: Path, sandbox: Sandbox, mosquitto: Mosquitto, caplog: pytest.LogCaptureFixture
) -> None:
    settings = load_settings(write_config(tmp_path, sandbox, mosquitto))
    daemon = Daemon(settings, OpenSource(), drain_on_stop=1.0,
                    extra_lines=lambda press: 1 / 0 if press.trigger == "mqtt" else ())
    running = Running(daemon)
    with running:
        publish(mosquitto, [(ESPHOME, b"ON", False)])
        running.thread.join(timeout=WAIT)
        assert not running.thread.is_alive()
    assert running.code == 1
    # An MQTT press is committed by the press writer, as a captured one is (commands/run.py).
    assert daemon.failure == "the press writer"
    assert [r.getMessage() for r in caplog.records if r.levelno == logging.CRITICAL] == [
        "the press writer failed unexpectedly; exiting so that the service is restarted"]


def test_battery_levels_become_one_measurement_an_hour_and_one_warning(
    tmp_path: Path, sandbox: Sandbox, mosquitto: Mosquitto, caplog: pytest.LogCaptureFixture,
    capsys: pytest.CaptureFixture[str]
) -> None:
    config = write_config(tmp_path, sandbox, mosquitto)
    with Running(Daemon(load_settings(config), OpenSource(), drain_on_stop=5.0)):
        publish(mosquitto, [
            (SHELLY_BATTERY, b"87", False),
            (ZIGBEE, b'{"battery":12,"linkquality":90}', False),
            (ZIGBEE, b'{"action":"single","battery":11}', False),  # within the hour: kept only
            (SHELLY_BATTERY, b"86", False),
            (TASMOTA, b'{"Button1":{"Action":"SINGLE"}}', False),
        ])
        # The outbox delivers in order: once the Tasmota press is there, so is any measurement.
        wait_until(lambda: len(events(sandbox)) == 2, "the presses")
    found = get(sandbox, "/measurement/measurements", pageSize=100)["measurements"]
    by_source = {sandbox.device_id(serial): serial
                 for serial in (SHELLY_SERIAL, "00124b001ca1b2c3")}
    assert sorted((by_source[m["source"]["id"]], m["type"], m["c8y_Battery"])
                  for m in found) == [
        ("00124b001ca1b2c3", "c8y_Battery", {"level": {"value": 12, "unit": "%"}}),
        (SHELLY_SERIAL, "c8y_Battery", {"level": {"value": 87, "unit": "%"}}),
    ]
    warnings = [r.getMessage() for r in caplog.records
                if r.levelno == logging.WARNING and "battery" in r.getMessage()]
    assert warnings == [
        "aqara (00124b001ca1b2c3): battery at 12 %, under 15 %: replace it soon"]
    from dashkanban.cli import main

    capsys.readouterr()
    assert main(["outbox", "status", "-c", str(config)]) == 0
    lines = [line for line in capsys.readouterr().out.splitlines()
             if line.startswith("battery: ")]
    assert [line.rsplit(" at ", 1)[0] for line in lines] == [
        "battery: aqara (00124b001ca1b2c3) 11 %", "battery: shelly (a4cf12f45678) 86 %"]
    assert lines[0].endswith(" (under 15 %: replace it)")


def test_sighup_subscribes_a_button_added_to_macid(
    tmp_path: Path, sandbox: Sandbox, mosquitto: Mosquitto
) -> None:
    settings = load_settings(write_config(tmp_path, sandbox, mosquitto))
    with Running(Daemon(settings, OpenSource(), drain_on_stop=5.0)) as daemon:
        broker = daemon.button_broker
        assert broker is not None
        with (tmp_path / "MACID.csv").open("a") as macid:
            macid.write("ikea, 0x000d6ffffe123456, zigbee2mqtt/Bin E1 button, , , , ,\n")
        daemon.reload()  # what SIGHUP does
        wait_until(lambda: "zigbee2mqtt/Bin E1 button" in broker.subscribed, "the new topic")
        publish(mosquitto, [("zigbee2mqtt/Bin E1 button", b'{"action":"on"}', False)])
        wait_until(lambda: len(events(sandbox)) == 1, "the new button's press")
    assert events(sandbox) == [("c8y_MAC_Event", "ikea single (mqtt)")]
    assert sandbox.device_id("000d6ffffe123456") is not None
