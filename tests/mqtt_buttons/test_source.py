"""ButtonBroker against a real mosquitto: each format's bytes published by the test become the
right presses; retained, repeated and malformed messages do not; the connection comes back after
the broker restarts (issue 19)."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable
from pathlib import Path

import aiomqtt
import pytest

from dashkanban.compose import load_buttons
from dashkanban.config import MqttButtonsSettings
from dashkanban.detect.buttons import Registry
from dashkanban.mqtt_buttons.payloads import MAX_PAYLOAD
from dashkanban.mqtt_buttons.source import Battery, ButtonBroker, MqttPress
from tests.brokers import Mosquitto

SHELLY = "shellies/shellybutton1-A4CF12F45678/input_event/0"
SHELLY_BATTERY = "shellies/shellybutton1-A4CF12F45678/sensor/battery"
TASMOTA = "stat/tasmota_5A1B2C/RESULT"
ESPHOME = "aisle2/binary_sensor/bin_a3_button/state"
ZIGBEE = "zigbee2mqtt/Bin B1 button"
MACID = (
    "Name, MAC-Address, topic, format\n"
    f"shelly, a4:cf:12:f4:56:78, {SHELLY},\n"
    f"tasmota, 24:62:ab:5a:1b:2c, {TASMOTA}, tasmota\n"
    f"esphome, 24:62:ab:00:00:01, {ESPHOME},\n"
    f"aqara, 0x00124b001ca1b2c3, {ZIGBEE}, zigbee2mqtt\n"
    "dash, ac:63:be:12:34:56, ,\n"
)
WAIT = 10.0


def registry(tmp_path: Path) -> Registry:
    path = tmp_path / "MACID.csv"
    path.write_text(MACID)
    return load_buttons(path)


async def until(check: Callable[[], bool], what: str) -> None:
    async with asyncio.timeout(WAIT):
        while not check():
            await asyncio.sleep(0.02)
    assert check(), what


async def publish(broker: Mosquitto, messages: list[tuple[str, bytes, bool]]) -> None:
    async with aiomqtt.Client(broker.host, broker.port) as client:
        for topic, payload, retain in messages:
            await client.publish(topic, payload, qos=1, retain=retain)


def run_with(broker: ButtonBroker, body: Callable[[], Awaitable[None]]) -> None:
    async def main() -> None:
        task = asyncio.create_task(broker.run())
        try:
            await body()
        finally:
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task

    asyncio.run(main())


def test_each_format_once_per_press(tmp_path: Path, mosquitto: Mosquitto) -> None:
    presses: list[MqttPress] = []
    levels: list[Battery] = []
    settings = MqttButtonsSettings(mosquitto.host, mosquitto.port, False, None, None, None)
    broker = ButtonBroker(settings, registry(tmp_path), presses.append,
                          on_battery=levels.append, clock=lambda: 1764144001.234)

    # Published before dashkanban listens, retained: the broker hands them over at subscribe,
    # with the retain flag; they must not become presses.
    asyncio.run(publish(mosquitto, [(SHELLY, b'{"event":"S","event_cnt":6}', True),
                                    (ESPHOME, b"ON", True)]))

    async def body() -> None:
        await asyncio.wait_for(broker.connected.wait(), WAIT)
        await until(lambda: broker.messages == 2, "the retained messages")
        await publish(mosquitto, [
            (SHELLY, b'{"event":"S","event_cnt":7}', False),
            (SHELLY, b'{"event":"S","event_cnt":7}', False),  # re-sent: the same press
            (SHELLY, b'{"event":"L","event_cnt":8}', False),
            (SHELLY_BATTERY, b"87", False),
            (TASMOTA, b'{"Button1":{"Action":"SINGLE"}}', False),
            (TASMOTA, b'{"POWER":"ON"}', False),
            (TASMOTA, b'{"Button1":{"Action":"DOUBLE"}}', False),
            (TASMOTA, b'{"Button1":{"Action":"HOLD"}}', False),
            (ESPHOME, b"ON", False),
            (ESPHOME, b"OFF", False),
            (ZIGBEE, b'{"action":"single","battery":14,"linkquality":96}', False),
            (ZIGBEE, b'{"battery":14,"linkquality":96}', False),
            (ZIGBEE, b'{"action":"","battery":14}', False),
            (ZIGBEE, b'{"action":"double"}', False),
            # Malformed: not UTF-8, not JSON, too large, nested too deep.
            (ZIGBEE, b'{"action":"single\xff"}', False),
            (TASMOTA, b"Button1 SINGLE", False),
            (ZIGBEE, b" " * (MAX_PAYLOAD + 1), False),
            (ZIGBEE, b"[" * 4000 + b"]" * 4000, False),
            ("zigbee2mqtt/not a button", b'{"action":"single"}', False),  # not subscribed
            (ZIGBEE, b'{"action":"long"}', False),
        ])
        await until(lambda: broker.messages == 21, "every message")

    run_with(broker, body)
    assert [(p.button.name, p.kind, p.topic, p.time) for p in presses] == [
        ("shelly", "single", SHELLY, 1764144001.234),
        ("shelly", "long", SHELLY, 1764144001.234),
        ("tasmota", "single", TASMOTA, 1764144001.234),
        ("tasmota", "double", TASMOTA, 1764144001.234),
        ("tasmota", "long", TASMOTA, 1764144001.234),
        ("esphome", "single", ESPHOME, 1764144001.234),
        ("aqara", "single", ZIGBEE, 1764144001.234),
        ("aqara", "double", ZIGBEE, 1764144001.234),
        ("aqara", "long", ZIGBEE, 1764144001.234),
    ]
    assert [(b.button.name, b.percent) for b in levels] == [
        ("shelly", 87.0), ("aqara", 14.0), ("aqara", 14.0), ("aqara", 14.0)]
    assert (broker.presses, broker.repeats, broker.malformed, broker.connections) == (9, 1, 4, 1)


def test_the_connection_comes_back_after_the_broker_restarts(
    tmp_path: Path, mosquitto: Mosquitto, caplog: pytest.LogCaptureFixture
) -> None:
    presses: list[MqttPress] = []
    settings = MqttButtonsSettings(mosquitto.host, mosquitto.port, False, None, None, None)

    async def on_press(press: MqttPress) -> None:  # a coroutine callback is awaited
        presses.append(press)

    broker = ButtonBroker(settings, registry(tmp_path), on_press, retry_max=0.2)

    async def body() -> None:
        await asyncio.wait_for(broker.connected.wait(), WAIT)
        await publish(mosquitto, [(TASMOTA, b'{"Button1":{"Action":"SINGLE"}}', False)])
        await until(lambda: len(presses) == 1, "the first press")
        await asyncio.to_thread(mosquitto.stop)
        await until(lambda: not broker.connected.is_set(), "the lost connection")
        await asyncio.to_thread(mosquitto.start)
        await until(lambda: broker.connections == 2 and broker.connected.is_set(), "reconnect")
        await publish(mosquitto, [(TASMOTA, b'{"Button1":{"Action":"HOLD"}}', False)])
        await until(lambda: len(presses) == 2, "the press after the restart")

    run_with(broker, body)
    assert [p.kind for p in presses] == ["single", "long"]
    assert any(r.getMessage().startswith(f"button broker {mosquitto.host}:{mosquitto.port}: ")
               and "connecting again in" in r.getMessage() for r in caplog.records)


def test_a_failing_on_press_ends_run(tmp_path: Path, mosquitto: Mosquitto) -> None:
    settings = MqttButtonsSettings(mosquitto.host, mosquitto.port, False, None, None, None)

    def on_press(press: MqttPress) -> None:
        raise RuntimeError(f"cannot queue {press.button.name}")

    broker = ButtonBroker(settings, registry(tmp_path), on_press)

    async def main() -> None:
        task = asyncio.create_task(broker.run())
        await asyncio.wait_for(broker.connected.wait(), WAIT)
        await publish(mosquitto, [(ESPHOME, b"ON", False)])
        with pytest.raises(RuntimeError, match=r"^cannot queue esphome$"):
            await asyncio.wait_for(task, WAIT)

    asyncio.run(main())


def test_an_unusable_ca_file_is_a_config_error(tmp_path: Path) -> None:
    from dashkanban.errors import ConfigError

    settings = MqttButtonsSettings("127.0.0.1", 8883, True, None, None, tmp_path / "no-ca.pem")
    broker = ButtonBroker(settings, registry(tmp_path), lambda press: None)
    with pytest.raises(ConfigError) as info:
        broker.tls_context()
    assert str(info.value) == f"ca_file {tmp_path / 'no-ca.pem'} does not exist"


def test_a_new_registry_changes_the_subscriptions_on_the_open_connection(
    tmp_path: Path, mosquitto: Mosquitto
) -> None:
    presses: list[MqttPress] = []
    settings = MqttButtonsSettings(mosquitto.host, mosquitto.port, False, None, None, None)
    first = tmp_path / "first"
    first.mkdir()
    (first / "MACID.csv").write_text(f"Name, MAC-Address, topic\nt, 24:62:ab:5a:1b:2c, {TASMOTA}\n")
    broker = ButtonBroker(settings, load_buttons(first / "MACID.csv"), presses.append)
    later = registry(tmp_path)  # every format, the Tasmota topic too, and the Shelly battery

    async def body() -> None:
        await asyncio.wait_for(broker.connected.wait(), WAIT)
        assert broker.subscribed == {TASMOTA}
        await asyncio.to_thread(broker.use_registry, Registry([b for b in later
                                                              if b.topic != TASMOTA]))
        await until(lambda: broker.subscribed == {SHELLY, SHELLY_BATTERY, ESPHOME, ZIGBEE},
                    "the new subscriptions")
        await publish(mosquitto, [(TASMOTA, b'{"Button1":{"Action":"SINGLE"}}', False),
                                  (ZIGBEE, b'{"action":"single"}', False)])
        await until(lambda: len(presses) == 1, "the Zigbee press")
        await publish(mosquitto, [(ESPHOME, b"ON", False)])
        await until(lambda: len(presses) == 2, "the ESPHome press")

    run_with(broker, body)
    assert [(p.button.name, p.kind) for p in presses] == [("aqara", "single"),
                                                          ("esphome", "single")]
    assert broker.messages == 2  # the Tasmota topic is no longer subscribed


def test_a_refused_login_is_retried_without_the_password_in_the_log(
    tmp_path: Path, mosquitto_password: Mosquitto, caplog: pytest.LogCaptureFixture
) -> None:
    from dashkanban.secret import Secret
    from tests.conftest import BROKER_USER

    settings = MqttButtonsSettings(mosquitto_password.host, mosquitto_password.port, False,
                                   BROKER_USER, Secret("wrong-pw-123"), None)
    broker = ButtonBroker(settings, registry(tmp_path), lambda press: None, retry_max=0.1)

    async def body() -> None:
        await until(lambda: sum("refused the login" in r.getMessage()
                                for r in caplog.records) >= 2, "two refused attempts")

    run_with(broker, body)
    assert broker.last_error == "refused the login ([code:135] Not authorized)"
    assert broker.connections == 0
    assert "wrong-pw-123" not in caplog.text


def test_a_number_python_refuses_to_read_is_malformed_and_run_goes_on(
    tmp_path: Path, mosquitto: Mosquitto
) -> None:
    # Under 8 KiB, but an integer of 4,400 digits: Python 3.11's json raises a plain ValueError
    # (not a JSONDecodeError). Anyone who may publish on a button's topic must not end `run`.
    presses: list[MqttPress] = []
    settings = MqttButtonsSettings(mosquitto.host, mosquitto.port, False, None, None, None)
    broker = ButtonBroker(settings, registry(tmp_path), presses.append)
    huge = b'{"action":"single","battery":' + b"9" * 4400 + b"}"
    assert len(huge) <= MAX_PAYLOAD

    async def body() -> None:
        await asyncio.wait_for(broker.connected.wait(), WAIT)
        await publish(mosquitto, [(ZIGBEE, huge, False),
                                  (TASMOTA, b'{"Button1":{"Action":"SINGLE"},"n":' + b"9" * 4400
                                   + b"}", False),
                                  (ZIGBEE, b'{"action":"double"}', False)])
        await until(lambda: broker.messages == 3, "every message")

    run_with(broker, body)
    assert (broker.malformed, broker.presses, broker.connections) == (2, 1, 1)
    assert [(p.button.name, p.kind) for p in presses] == [("aqara", "double")]


class _BrokenRegistry(Registry):
    """A registry whose topics cannot be listed: a stand-in for a bug in the reload's path, which
    no real MACID.csv makes (the one test double here)."""

    @property
    def topics(self) -> tuple[str, ...]:
        raise RuntimeError("a bug in the reload")


def test_a_failing_subscription_follower_ends_run(tmp_path: Path, mosquitto: Mosquitto) -> None:
    # The reload's follower runs supervised with the message loop: an error that is no
    # MqttError ends run() (the daemon then exits 1), instead of ending the follower alone,
    # after which no reload was subscribed while the daemon looked healthy.
    settings = MqttButtonsSettings(mosquitto.host, mosquitto.port, False, None, None, None)
    broker = ButtonBroker(settings, registry(tmp_path), lambda press: None)

    async def main() -> None:
        task = asyncio.create_task(broker.run())
        await asyncio.wait_for(broker.connected.wait(), WAIT)
        broker.use_registry(_BrokenRegistry())
        # Not wait_for: cancelling run() would also raise the follower's error (from the
        # finally that awaited it), which is how it stayed unobserved until shutdown.
        await asyncio.wait({task}, timeout=WAIT)
        if not task.done():
            task.cancel()
            with contextlib.suppress(BaseException):
                await task
            pytest.fail("run() goes on without its subscription follower")
        with pytest.raises(RuntimeError, match=r"^a bug in the reload$"):
            task.result()

    asyncio.run(main())
    assert not broker.connected.is_set()


def test_the_incoming_queue_keeps_no_payload_over_max_payload() -> None:
    # MQTT 3.1.1 cannot refuse a large message: paho reads it whole. What is queued after it
    # must not keep it: MAX_QUEUED messages of the broker's 256 MB each would be 64 GB.
    from dashkanban.mqtt_buttons.source import MAX_QUEUED, _Inbox, _Oversized

    async def main() -> list[aiomqtt.Message]:
        inbox = _Inbox(maxsize=MAX_QUEUED)
        inbox.put_nowait(aiomqtt.Message(ZIGBEE, b"x" * (1 << 20), 1, False, 7, None))
        inbox.put_nowait(aiomqtt.Message(ZIGBEE, b"y" * MAX_PAYLOAD, 1, True, 8, None))
        return [inbox.get_nowait(), inbox.get_nowait()]

    big, small = asyncio.run(main())
    assert isinstance(big, _Oversized)
    assert (big.topic.value, big.payload, big.size, big.qos, big.retain, big.mid) == (
        ZIGBEE, b"", 1 << 20, 1, False, 7)
    assert not isinstance(small, _Oversized)
    assert (small.payload, small.retain) == (b"y" * MAX_PAYLOAD, True)
    assert MAX_QUEUED * MAX_PAYLOAD <= 2 << 20


def test_a_message_of_a_mebibyte_is_malformed_and_not_kept(
    tmp_path: Path, mosquitto: Mosquitto, caplog: pytest.LogCaptureFixture
) -> None:
    import logging

    caplog.set_level(logging.DEBUG, logger="dashkanban.mqtt_buttons.source")
    presses: list[MqttPress] = []
    settings = MqttButtonsSettings(mosquitto.host, mosquitto.port, False, None, None, None)
    broker = ButtonBroker(settings, registry(tmp_path), presses.append)

    async def body() -> None:
        await asyncio.wait_for(broker.connected.wait(), WAIT)
        await publish(mosquitto, [(ZIGBEE, b"{" * (1 << 20), False),
                                  (ZIGBEE, b'{"action":"single"}', False)])
        await until(lambda: broker.messages == 2, "both messages")

    run_with(broker, body)
    assert (broker.malformed, [p.kind for p in presses]) == (1, ["single"])
    assert (f"button broker: unreadable message on {ZIGBEE!r} (1048576 bytes): 1048576 bytes, "
            "over 8192") in caplog.messages
