"""Issue 15 done-when, end to end against the sandbox: a certificate-only gateway with the buttons
from the inventory (REST with a Bearer token it got over MQTT), and a 2,000-button start-up that
never has more than `max_inflight` messages unacknowledged (the sandbox records it)."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest

from dashkanban.capture import Frame
from dashkanban.commands.run import Daemon
from dashkanban.config import load_settings
from dashkanban.detect.events import Event
from dashkanban.kanban import wiring
from dashkanban.kanban.bins import load_bins
from dashkanban.sandbox import BrokerRules, Sandbox
from tests import forge
from tests.brokers import TlsFiles
from tests.running import RunningUplink
from tests.sandbox.test_inventory_daemon import OpenSource, wait_until
from tests.sandbox_fixture import rest, sandbox_config, sandbox_options

GW = "dashkanban-gw-test"  # the CN of tls_files' client certificate
BUTTON_MAC, BUTTON_SERIAL = "fc:a6:67:0a:0b:0c", "fca6670a0b0c"


@pytest.fixture
def cert_sandbox(tls_files: TlsFiles) -> Iterator[Sandbox]:
    options = sandbox_options(mqtts_port=0, tls_cert=tls_files.server_cert,
                              tls_key=tls_files.server_key, trusted_ca=tls_files.ca_cert)
    with Sandbox(options) as running:
        yield running


def test_certificate_only_gateway_delivers_an_inventory_buttons_press(
        cert_sandbox: Sandbox, tls_files: TlsFiles, tmp_path: Path,
        caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    with rest(cert_sandbox) as admin:  # the button was registered in the tenant by an admin
        made = admin.post("/inventory/managedObjects", headers={"Accept": "application/json"},
                          json={"name": "Aisle 4 ties", "type": "c8y_DashButton"}).json()
        assert admin.post(f"/identity/globalIds/{made['id']}/externalIds",
                          json={"type": "c8y_Serial", "externalId": BUTTON_SERIAL}
                          ).status_code == 201
    (tmp_path / "MACID.csv").write_text("Name, MAC-Address\n")
    config = tmp_path / "config.ini"
    config.write_text(
        f"[C8YMQTT]\ntenant = localhost\ntenantID = t12345\nuser = device_{GW}\n"
        f"port = {cert_sandbox.mqtts_port}\nca_file = {tls_files.ca_cert}\n"
        f"cert_file = {tls_files.client_cert}\nkey_file = {tls_files.client_key}\n"
        f"rest_url = {cert_sandbox.http_url}\n\n"
        f"[gateway]\nserial = {GW}\nname = Store 3 button gateway\n\n"
        f"[buttons]\nfile = {tmp_path / 'MACID.csv'}\nsource = inventory\n\n"
        f"[outbox]\npath = {tmp_path / 'state' / 'outbox.sqlite3'}\n", encoding="utf-8")
    config.chmod(0o600)
    settings = load_settings(config)
    assert settings.c8y.password is None
    source = OpenSource()
    delivered: list[Event] = []
    daemon = Daemon(settings, source, drain_on_stop=5.0, on_delivered=delivered.append)
    runner = threading.Thread(target=daemon.run, daemon=True)
    runner.start()
    try:
        wait_until(lambda: daemon.uplink is not None and daemon.uplink.connected, "the uplink")
        t0 = time.time()
        source.put(Frame(t0, forge.dhcp_client_frame(BUTTON_MAC, forge.DISCOVER)))
        wait_until(lambda: len(delivered) == 1, "the press acknowledged")
    finally:
        daemon.stop()
        runner.join(timeout=20)
    assert not runner.is_alive()
    assert [(e.time, e.name, e.mac) for e in delivered] == [
        (datetime.fromtimestamp(t0, UTC), "Aisle 4 ties", BUTTON_MAC)]
    events = [m.payload for m in cert_sandbox.messages()
              if m.direction == "in" and m.topic == f"s/us/{BUTTON_SERIAL}"]
    assert events == [f"400,c8y_MAC_Event,Aisle 4 ties pressed ({BUTTON_MAC}),"
                      f"{delivered[0].c8y_time}"]
    # The token came over the gateway's own connection (s/dat subscribed before s/uat).
    token_lines = [(m.direction, m.topic) for m in cert_sandbox.messages()
                   if m.topic in ("s/uat", "s/dat")]
    assert token_lines == [("in", "s/uat"), ("out", "s/dat")]
    subscribed = [r.topics for r in cert_sandbox.subscriptions() if r.client_id == GW]
    assert subscribed == [("s/ds", "s/e", "s/dat")]
    assert cert_sandbox.stats()["tokens"] == 1
    # The token is a secret: no log line shows it (a JWT starts with `eyJ`, base64 of `{"`).
    assert "device token received" in caplog.text
    assert "eyJ" not in caplog.text


def macid_with_bins(path: Path, count: int) -> Path:
    rows = ["Name, MAC-Address, bin"]
    rows += [f"b{n}, 02:00:00:{n >> 16 & 255:02x}:{n >> 8 & 255:02x}:{n & 255:02x}, B{n}"
             for n in range(count)]
    path.write_text("\n".join(rows) + "\n")
    return path


def test_a_2000_button_start_up_stays_within_max_inflight(tmp_path: Path) -> None:
    """2,000 bin buttons: the template check, 101s and 2,000 `114`s at start-up. Cumulocity
    disconnects a client over its queue limit; the sandbox's limit is the window, and it records
    the most messages unacknowledged at once."""
    rules = BrokerRules(queue_limit=20, ack_delay=0.0005)
    with Sandbox(sandbox_options(rules=rules)) as sandbox:
        buttons = macid_with_bins(tmp_path / "MACID.csv", 2000)
        config = sandbox_config(tmp_path, sandbox, buttons,
                                extra="[kanban]\nalarms = yes\n")
        settings = load_settings(config)
        assert settings.c8y.max_inflight == 20
        _, bins = load_bins(settings.buttons.file)
        uplink = RunningUplink(settings, extra_subscriptions=("s/dc/dashkanban-v2",),
                               startup_publishes=wiring.startup_publishes(bins))
        uplink.start()
        try:
            assert uplink.wait_connected(60)

            def all_in() -> bool:
                return sum(1 for m in sandbox.messages()
                           if m.direction == "in" and m.payload == "500") >= 2

            deadline = time.monotonic() + 60
            while not all_in():
                assert time.monotonic() < deadline, "start-up did not finish"
                time.sleep(0.1)
        finally:
            uplink.stop()
        offered = sum(1 for m in sandbox.messages()
                      if m.direction == "in" and m.payload == "114,c8y_KanbanRefilled")
        assert offered == 2000
        assert sandbox.stats().get("queue_exceeded", 0) == 0
        assert 1 < sandbox.unacknowledged_peak("dashkanban-gw-01") <= 20


def test_a_refill_operation_delivered_twice_is_answered_once_by_id(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """An operation created while the gateway was offline reaches it twice at the reconnect
    (pushed when it subscribes, and again for its `500`): the bin is cleared and the operation
    reported once, by its id (504/506)."""
    from dashkanban.c8y.smartrest import join_lines
    from dashkanban.kanban.alarms import TEMPLATE_TOPIC, template_lines
    from tests.sandbox.test_kanban_wired import GATEWAY, SCREWS
    from tests.sandbox.test_kanban_wired import write_config as kanban_config
    from tests.sandbox_fixture import Device

    caplog.set_level(logging.INFO, logger="dashkanban")
    rules = BrokerRules(push_pending_on_subscribe=True)
    with Sandbox(sandbox_options(rules=rules)) as sandbox:
        before = Device(sandbox, GATEWAY)  # the gateway's earlier life: devices and collection
        assert before.connect() == "Success"
        before.publish("s/us", f"100\n101,{SCREWS},screws,c8y_DashButton")
        before.publish(TEMPLATE_TOPIC, join_lines(template_lines()))
        before.close()
        child = sandbox.device_id(SCREWS) or ""
        op = sandbox.create_operation(child, {"c8y_KanbanRefilled": {"bin": "A3"}})
        settings = load_settings(kanban_config(tmp_path, sandbox))
        source = OpenSource()
        daemon = Daemon(settings, source, drain_on_stop=5.0)
        runner = threading.Thread(target=daemon.run, daemon=True)
        runner.start()
        try:
            def done() -> bool:
                found = sandbox.store.operation_by_id(op["id"])
                return found is not None and found["status"] == "SUCCESSFUL"

            wait_until(done, "the operation to succeed")
            wait_until(lambda: sum(1 for m in sandbox.messages()
                                   if m.topic == "s/dc/dashkanban-v2") == 2,
                       "the operation twice")
            # The daemon has handled the second delivery (and queued nothing for it): a
            # second answer would be queued by now, and the stop's drain would send it.
            wait_until(lambda: f"operation {op['id']} delivered again: already handled"
                       in caplog.messages, "the second delivery handled")
        finally:
            daemon.stop()
            runner.join(timeout=20)
        assert not runner.is_alive()
        answers = [m.payload for m in sandbox.messages()
                   if m.direction == "in" and m.topic == f"s/us/{SCREWS}"
                   and m.payload.startswith("50")]
        assert answers == [f"504,{op['id']}\n306,c8y_KanbanReorder\n506,{op['id']}"]
        errors = [m.payload for m in sandbox.messages() if m.topic == "s/e"
                  and not m.payload.startswith("41,100,")]
        assert errors == []
