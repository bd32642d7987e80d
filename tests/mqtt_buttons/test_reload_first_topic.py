"""A daemon started before any MQTT button was listed starts listening on a reload (SIGHUP), not
only on a restart (issue 19 gaps): a real mosquitto as the button broker, the sandbox as
Cumulocity."""

from __future__ import annotations

import logging
import threading
from pathlib import Path

import pytest

from dashkanban.commands.run import Daemon
from dashkanban.config import load_settings
from dashkanban.sandbox import Sandbox
from tests.brokers import Mosquitto
from tests.mqtt_buttons.test_daemon_buttons import (
    TASMOTA,
    OpenSource,
    events,
    publish,
    wait_until,
)
from tests.sandbox_fixture import sandbox_config

DASH_ONLY = "Name, MAC-Address, topic\ndash, ac:63:be:12:34:56,\n"
WITH_TASMOTA = DASH_ONLY + f"tasmota, 24:62:ab:5a:1b:2c, {TASMOTA}\n"


def test_a_reload_that_lists_the_first_topic_starts_the_button_broker(
    tmp_path: Path, sandbox: Sandbox, mosquitto: Mosquitto, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="dashkanban")
    macid = tmp_path / "MACID.csv"
    macid.write_text(DASH_ONLY)
    config = sandbox_config(tmp_path, sandbox, macid, extra=(
        f"[mqtt_buttons]\nhost = {mosquitto.host}\nport = {mosquitto.port}\n\n"
        "[event]\ntext = {name} {kind} ({trigger})\n"))
    daemon = Daemon(load_settings(config), OpenSource(), drain_on_stop=5.0)
    codes: list[int] = []
    thread = threading.Thread(target=lambda: codes.append(daemon.run()), daemon=True)
    thread.start()
    try:
        address = f"{mosquitto.host}:{mosquitto.port}"
        idle = (f"button broker {address}: no button has a topic; not connecting until a reload "
                "(SIGHUP) lists one")
        wait_until(lambda: idle in caplog.messages, "the idle button broker")
        broker = daemon.button_broker
        assert broker is not None
        assert not broker.connected.is_set()
        assert broker.connections == 0

        macid.write_text(WITH_TASMOTA)
        daemon.reload()  # what SIGHUP does
        wait_until(broker.connected.is_set, "the button broker to connect after the reload")
        assert broker.subscribed == {TASMOTA}
        publish(mosquitto, [(TASMOTA, b'{"Button1":{"Action":"HOLD"}}', False)])
        wait_until(lambda: len(events(sandbox)) == 1, "the Tasmota press")
    finally:
        daemon.stop()
        thread.join(timeout=20)
    assert not thread.is_alive()
    assert codes == [0]
    assert events(sandbox) == [("c8y_MAC_Event", "tasmota long (mqtt)")]
    assert (f"[mqtt_buttons] is set, but no button in {macid} has a topic (yet: a reload that "
            "adds one starts listening)") in caplog.messages
    assert f"button broker {address}: listening to 1 MQTT button topic(s)" in caplog.messages
