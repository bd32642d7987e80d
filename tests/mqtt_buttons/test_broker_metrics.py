"""The button broker in the metrics (issue 19 gaps): its messages, presses and malformed messages
are counters, its connection a gauge, in the summary line and on /metrics scraped over real
loopback HTTP, fed by a ButtonBroker reading a real mosquitto."""

from __future__ import annotations

import asyncio
import logging
import urllib.request
from pathlib import Path

import pytest

from dashkanban.commands.run import Daemon
from dashkanban.compose import build_pipeline, load_registry
from dashkanban.config import MqttButtonsSettings, Settings, load_settings
from dashkanban.detect.presses import Press
from dashkanban.metrics import ButtonsSnapshot, Metrics, MetricsServer, SummaryLogger
from dashkanban.mqtt_buttons.source import ButtonBroker, MqttPress
from dashkanban.mqtt_buttons.wiring import make_broker
from dashkanban.sandbox import Sandbox
from tests.brokers import Mosquitto
from tests.mqtt_buttons.test_source import (
    ESPHOME,
    SHELLY,
    TASMOTA,
    WAIT,
    ZIGBEE,
    publish,
    registry,
    until,
)


def _scrape(port: int) -> list[str]:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
        body = response.read().decode()
    return [line for line in body.splitlines()
            if line.startswith(("dashkanban_mqtt", "dashkanban_presses"))]


def test_the_brokers_counters_and_gauge_in_the_summary_and_on_metrics(
    tmp_path: Path, mosquitto: Mosquitto, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="dashkanban.metrics")
    metrics = Metrics()
    presses: list[MqttPress] = []
    settings = MqttButtonsSettings(mosquitto.host, mosquitto.port, False, None, None, None)
    broker = ButtonBroker(settings, registry(tmp_path), presses.append, metrics=metrics)
    server = MetricsServer(metrics, 0)
    summary = SummaryLogger(metrics, interval=3600)
    scraped: dict[str, list[str]] = {}

    async def main() -> None:
        await server.open()
        serving = asyncio.create_task(server.run())
        # Made, not yet connected: shown, all zero.
        scraped["before"] = await asyncio.to_thread(_scrape, server.port)
        task = asyncio.create_task(broker.run())
        try:
            await asyncio.wait_for(broker.connected.wait(), WAIT)
            await publish(mosquitto, [
                (SHELLY, b'{"event":"S","event_cnt":7}', False),
                (SHELLY, b'{"event":"S","event_cnt":7}', False),  # re-sent: not a press
                (TASMOTA, b'{"Button1":{"Action":"HOLD"}}', False),
                (TASMOTA, b"Button1 SINGLE", False),  # malformed
                (ZIGBEE, b'{"action":"single\xff"}', False),  # malformed
                (ZIGBEE, b'{"battery":80}', False),  # state, not a press
                (ESPHOME, b"ON", False),
            ])
            await until(lambda: broker.messages == 7, "every message")
            scraped["connected"] = await asyncio.to_thread(_scrape, server.port)
            await summary.log_now()
        finally:
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
        scraped["after"] = await asyncio.to_thread(_scrape, server.port)
        serving.cancel()
        with pytest.raises(asyncio.CancelledError):
            await serving

    asyncio.run(main())
    assert len(presses) == 3
    assert scraped["before"] == [
        "dashkanban_presses_total 0.0",
        "dashkanban_mqtt_messages_total 0.0",
        "dashkanban_mqtt_presses_total 0.0",
        "dashkanban_mqtt_malformed_total 0.0",
        "dashkanban_mqtt_buttons_connected 0.0",
    ]
    assert scraped["connected"] == [
        "dashkanban_presses_total 0.0",  # the daemon's, after the dead time: not the broker's
        "dashkanban_mqtt_messages_total 7.0",
        "dashkanban_mqtt_presses_total 3.0",
        "dashkanban_mqtt_malformed_total 2.0",
        "dashkanban_mqtt_buttons_connected 1.0",
    ]
    assert scraped["after"][-1] == "dashkanban_mqtt_buttons_connected 0.0"
    assert [m for m in caplog.messages if m.startswith("counters:")] == [
        "counters: frames=0 candidates=0 malformed=0 presses=0 queued=0 delivered=0 "
        "reconnects=0 refused=0 quarantined=0 c8y_refused=0 mqtt_messages=7 mqtt_presses=3 "
        "mqtt_malformed=2 mqtt_connected=1"
    ]


def _settings(folder: Path, broker: Mosquitto | None, macid: str) -> Settings:
    folder.mkdir(exist_ok=True)
    (folder / "MACID.csv").write_text(macid)
    section = (f"[mqtt_buttons]\nhost = {broker.host}\nport = {broker.port}\n"
               if broker is not None else "")
    (folder / "config.ini").write_text(
        f"[buttons]\nfile = {folder / 'MACID.csv'}\n\n[outbox]\npath = "
        f"{folder / 'outbox.sqlite3'}\n\n{section}")
    return load_settings(folder / "config.ini", uplink=False)


def _broker_of(settings: Settings, metrics: Metrics) -> ButtonBroker | None:
    registry = load_registry(settings)
    pipeline = build_pipeline(settings, registry)
    handled: list[Press] = []
    return make_broker(settings, registry, pipeline, handled.append, lambda lines, when: None,
                       metrics=metrics)


def test_make_broker_hands_the_daemons_metrics_to_the_broker(
    tmp_path: Path, mosquitto: Mosquitto
) -> None:
    """What the daemon passes (`make_broker(..., metrics=self.metrics)`) is what counts; without
    `[mqtt_buttons]` there is no broker and the metrics show nothing of it."""
    macid = f"Name, MAC-Address, topic\nt, 24:62:ab:5a:1b:2c, {TASMOTA}\n"
    metrics = Metrics()
    broker = _broker_of(_settings(tmp_path / "with", mosquitto, macid), metrics)
    assert broker is not None
    assert broker.metrics is metrics
    assert metrics.snapshot().buttons == ButtonsSnapshot()

    alone = Metrics()
    assert _broker_of(_settings(tmp_path / "without", None, macid), alone) is None
    assert alone.snapshot().buttons is None


def test_a_running_daemon_shows_the_brokers_numbers(
    tmp_path: Path, sandbox: Sandbox, mosquitto: Mosquitto
) -> None:
    from tests.mqtt_buttons.test_daemon_buttons import OpenSource, Running, wait_until
    from tests.mqtt_buttons.test_daemon_buttons import publish as publish_now
    from tests.mqtt_buttons.test_daemon_buttons import write_config as daemon_config

    settings = load_settings(daemon_config(tmp_path, sandbox, mosquitto))
    with Running(Daemon(settings, OpenSource(), drain_on_stop=5.0)) as daemon:
        publish_now(mosquitto, [(TASMOTA, b'{"Button1":{"Action":"HOLD"}}', False),
                                (TASMOTA, b"HOLD", False)])
        wait_until(lambda: (buttons := daemon.metrics.snapshot().buttons) is not None
                   and buttons.mqtt_messages == 2, "the daemon's metrics")
        assert daemon.metrics.snapshot().buttons == ButtonsSnapshot(2, 1, 1, connected=True)
