"""The sandbox as Cumulocity really behaves where it used to flatter the client (issue 15 item 7).

Each test here fails against the sandbox before issue 15: alarm de-duplication into ACKNOWLEDGED
alarms without taking over text and severity, `117` only setting a missing interval (and <= 0
meaning maintenance), certificate login with `s/uat` tokens accepted as `Bearer`, the queue limit,
and operation status by id (504/505/506). Sources: docs/sandbox.md.
"""

from __future__ import annotations

import logging
import socket
import ssl
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import paho.mqtt.client as mqtt
import pytest

from dashkanban.sandbox import Sandbox
from dashkanban.sandbox.broker import BrokerRules
from dashkanban.sandbox.smartrest import Downlink, SmartRestProcessor
from dashkanban.sandbox.store import Store
from dashkanban.sandbox.tokens import TokenIssuer
from tests.brokers import TlsFiles, make_tls_files
from tests.sandbox_fixture import (
    SANDBOX_PASSWORD,
    SANDBOX_USER,
    WAIT,
    Device,
    Received,
    rest,
    sandbox_options,
)

NOW = datetime(2026, 11, 26, 8, 0, 0, 123000, tzinfo=UTC)
GW = "dashkanban-gw-test"  # the CN of tls_files' client certificate


@pytest.fixture
def store() -> Store:
    return Store(clock=lambda: NOW)


@pytest.fixture
def proc(store: Store) -> SmartRestProcessor:
    return SmartRestProcessor(store, owner="dash-gateway")


def send(proc: SmartRestProcessor, payload: str, topic: str = "s/us",
         client: str = "gw-01") -> list[Downlink]:
    return proc.handle(client, topic, payload.encode())


# -- alarms ---------------------------------------------------------------------------------

def test_a_repeat_goes_into_the_acknowledged_alarm_and_changes_only_count_and_time(
        proc: SmartRestProcessor, store: Store) -> None:
    send(proc, "302,c8y_Bin,Bin empty,2026-11-26T08:00:00Z")
    store.update_alarm(store.alarms[0]["id"], {"status": "ACKNOWLEDGED"})
    send(proc, "301,c8y_Bin,Bin STILL empty,2026-11-26T09:00:00Z")
    assert [(a["status"], a["severity"], a["text"], a["count"], a["time"],
             a["firstOccurrenceTime"]) for a in store.alarms] == [
        ("ACKNOWLEDGED", "MAJOR", "Bin empty", 2, "2026-11-26T09:00:00.000Z",
         "2026-11-26T08:00:00.000Z"),
    ]
    send(proc, "306,c8y_Bin")  # 306 finds the ACKNOWLEDGED alarm when there is no ACTIVE one
    send(proc, "303,c8y_Bin,new")  # a CLEARED alarm takes no repeats
    assert [(a["status"], a["severity"], a["count"]) for a in store.alarms] == [
        ("CLEARED", "MAJOR", 2), ("ACTIVE", "MINOR", 1),
    ]


# -- availability ---------------------------------------------------------------------------

def test_117_sets_only_a_missing_interval_and_0_means_maintenance(
        proc: SmartRestProcessor, store: Store) -> None:
    send(proc, "100\n117,0\n117,60\n125")
    doc = store.get_managed_object("10000")
    assert doc["c8y_RequiredAvailability"] == {"responseInterval": 0}
    assert doc["c8y_Availability"]["status"] == "MAINTENANCE"
    send(proc, "117,99999", topic="s/us/child")  # shrunk to the range border
    child = store.get_managed_object(store.find_external("c8y_Serial", "child") or "")
    assert child["c8y_RequiredAvailability"] == {"responseInterval": 32767}
    assert "c8y_Availability" not in child
    send(proc, "125", topic="s/us/child")
    assert store.get_managed_object(child["id"])["c8y_Availability"]["status"] == "AVAILABLE"


# -- operations by id -----------------------------------------------------------------------

def test_504_505_506_act_on_the_operation_of_that_id_only(
        proc: SmartRestProcessor, store: Store) -> None:
    send(proc, "100\n101,btn")
    child = store.find_external("c8y_Serial", "btn") or ""
    first = store.create_operation(child, {"c8y_KanbanRefilled": {"bin": "A1"}})
    second = store.create_operation(child, {"c8y_KanbanRefilled": {"bin": "A2"}})
    command = store.create_operation("10000", {"c8y_Command": {"text": "ls"}})
    assert send(proc, f"504,{second['id']}\n506,{second['id']}", topic="s/us/btn") == []
    assert send(proc, f"506,{second['id']}", topic="s/us/btn") == [
        Downlink("s/e", f"45,506,Operation {second['id']} is already SUCCESSFUL"),
    ]
    assert send(proc, f"504,{command['id']}", topic="s/us/btn") == [
        Downlink("s/e", f"45,504,Operation {command['id']} not found for this device"),
    ]
    assert send(proc, f"504,{command['id']}\n506,{command['id']},done\n"
                      f"505,{first['id']},bad") == [
        Downlink("s/e", f"45,505,Operation {first['id']} not found for this device"),
    ]
    assert send(proc, f"505,{first['id']},no such bin", topic="s/us/btn") == []
    ops = {o["id"]: o for o in store.operations_of([child, "10000"])}
    assert [(ops[o["id"]]["status"], ops[o["id"]].get("failureReason"))
            for o in (first, second)] == [("FAILED", "no such bin"), ("SUCCESSFUL", None)]
    assert ops[command["id"]]["c8y_Command"] == {"text": "ls", "result": "done"}


# -- tokens ---------------------------------------------------------------------------------

def test_tokens_expire_and_cannot_be_forged() -> None:
    now = [NOW]
    issuer = TokenIssuer(lambda: now[0], lifetime=600)
    token = issuer.issue("gw-1")
    who = issuer.verify(token)
    assert who is not None
    assert (who.user, who.device) == ("device_gw-1", "gw-1")
    head, claims, signature = token.split(".")
    assert issuer.verify(f"{head}.{claims}.{signature[::-1]}") is None
    assert TokenIssuer(lambda: now[0]).verify(token) is None  # another sandbox's key
    now[0] = NOW + timedelta(seconds=600)
    assert issuer.verify(token) is None


# -- certificate login ----------------------------------------------------------------------

@pytest.fixture
def cert_sandbox(tls_files: TlsFiles) -> Iterator[Sandbox]:
    options = sandbox_options(mqtts_port=0, tls_cert=tls_files.server_cert,
                              tls_key=tls_files.server_key, trusted_ca=tls_files.ca_cert,
                              devices_read_own_only=True)
    with Sandbox(options) as running:
        yield running


@pytest.fixture
def cert_device(cert_sandbox: Sandbox, tls_files: TlsFiles) -> Iterator[Callable[..., Device]]:
    made: list[Device] = []

    def make(client_id: str, **kwargs: object) -> Device:
        kwargs.setdefault("tls", tls_files)
        device = Device(cert_sandbox, client_id, **kwargs)  # type: ignore[arg-type]
        made.append(device)
        return device

    yield make
    for device in made:
        device.close()


def test_certificate_login_token_and_bearer(cert_sandbox: Sandbox, tls_files: TlsFiles,
                                            cert_device: Callable[..., Device],
                                            caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    gw = cert_device(GW, username=None,
                     client_cert=(tls_files.client_cert, tls_files.client_key))
    assert gw.connect() == "Success"  # no user name or password: the certificate is the login
    assert gw.subscribe("s/dat", "s/e") == [1, 1]
    gw.publish("s/us", "100")
    gw.publish("s/uat", "")
    answer = gw.expect()
    assert answer.topic == "s/dat"
    assert answer.payload.startswith("71,")
    token = answer.payload[3:]
    gw_id = cert_sandbox.device_id(GW)
    with httpx.Client(base_url=cert_sandbox.http_url, timeout=WAIT) as client:
        own = client.get(f"/inventory/managedObjects/{gw_id}",
                         headers={"Authorization": f"Bearer {token}"})
        assert own.status_code == 200
        assert own.json()["name"] == f"MQTT Device {GW}"
        forged = client.get(f"/inventory/managedObjects/{gw_id}",
                            headers={"Authorization": f"Bearer {token}x"})
        assert (forged.status_code, forged.json()["error"]) == (401, "security/Unauthorized")
    with rest(cert_sandbox) as admin:  # Basic still works for users
        other = admin.post("/inventory/managedObjects", json={"name": "Bin A3 button"},
                           headers={"Accept": "application/json"}).json()
        assert admin.get(f"/inventory/managedObjects/{other['id']}").status_code == 200
    with httpx.Client(base_url=cert_sandbox.http_url, timeout=WAIT) as client:
        denied = client.get(f"/inventory/managedObjects/{other['id']}",
                            headers={"Authorization": f"Bearer {token}"})
        assert (denied.status_code, denied.json()["error"]) == (403, "security/Forbidden")
    assert cert_sandbox.stats()["tokens"] == 1
    # The token is a credential: the message log (and so the open status page) never shows it.
    assert [m.payload for m in cert_sandbox.messages() if m.topic == "s/dat"] == ["71,<token>"]
    with httpx.Client(base_url=cert_sandbox.http_url, timeout=WAIT) as client:
        assert token not in client.get("/sandbox/state.json").text
    assert "s/dat 71,<token>" in caplog.text
    assert token not in caplog.text


def test_certificate_cn_must_equal_the_client_id(cert_device: Callable[..., Device],
                                                 tls_files: TlsFiles) -> None:
    other = cert_device("not-the-cn", username=None,
                        client_cert=(tls_files.client_cert, tls_files.client_key))
    assert other.connect() == "Not authorized"  # CONNACK 5, never 4 with a certificate
    same = cert_device(f"d:{GW}", username="t12345/nobody", password="wrong",
                       client_cert=(tls_files.client_cert, tls_files.client_key))
    assert same.connect() == "Success"  # the certificate wins over user name and password


def test_certificate_from_another_ca_is_not_trusted(cert_sandbox: Sandbox, tls_files: TlsFiles,
                                                    tmp_path: Path) -> None:
    stranger = make_tls_files(tmp_path / "other", client_cn=GW)
    context = ssl.create_default_context(cafile=str(tls_files.ca_cert))
    context.load_cert_chain(str(stranger.client_cert), str(stranger.client_key))
    assert cert_sandbox.mqtts_port is not None
    with socket.create_connection(("127.0.0.1", cert_sandbox.mqtts_port), timeout=WAIT) as raw:
        # The sandbox refuses it in the TLS handshake (TLS 1.3 reports that after the client's
        # first write); Cumulocity answers CONNACK 5 (docs/sandbox.md). Never a CONNACK 0.
        client_id = GW.encode()
        body = b"\x00\x04MQTT\x04\x02\x00\x3c" + len(client_id).to_bytes(2, "big") + client_id
        try:
            with context.wrap_socket(raw, server_hostname="localhost") as tls:
                tls.sendall(bytes([0x10, len(body)]) + body)
                answer = tls.recv(4)
        except (ssl.SSLError, ConnectionError):
            answer = b""
        assert answer == b""


def test_a_password_device_gets_no_token(cert_sandbox: Sandbox,
                                         cert_device: Callable[..., Device]) -> None:
    device = cert_device("pw-device")
    assert device.connect() == "Success"
    assert device.subscribe("s/dat", "s/e") == [1, 1]
    device.publish("s/uat", "")
    assert device.expect() == Received(
        "s/e", "41,,MqttAuth: Cannot publish token for device that do not use certificate "
               "authentication")


# -- the queue limit ------------------------------------------------------------------------

def test_a_client_over_the_queue_limit_is_disconnected() -> None:
    rules = BrokerRules(queue_limit=5, ack_delay=0.02)
    with Sandbox(sandbox_options(rules=rules)) as sandbox:
        client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="flood",
                             protocol=mqtt.MQTTv311, clean_session=True)
        client.username_pw_set(SANDBOX_USER, SANDBOX_PASSWORD)
        client.max_inflight_messages_set(100)
        assert sandbox.mqtt_port is not None
        client.connect("127.0.0.1", sandbox.mqtt_port)
        client.loop_start()
        try:
            infos = [client.publish("s/us", f"400,t,press {n}", qos=1) for n in range(50)]
            deadline = time.monotonic() + WAIT
            while sandbox.stats().get("queue_exceeded", 0) == 0 and time.monotonic() < deadline:
                time.sleep(0.05)
            assert sandbox.stats().get("queue_exceeded", 0) == 1
            assert sandbox.unacknowledged_peak("flood") == 6
            assert not all(info.is_published() for info in infos)
        finally:
            client.loop_stop()


def test_a_client_within_the_queue_limit_stays() -> None:
    rules = BrokerRules(queue_limit=5, ack_delay=0.005)
    with Sandbox(sandbox_options(rules=rules)) as sandbox:
        device = Device(sandbox, "patient")
        try:
            assert device.connect() == "Success"
            for n in range(20):
                device.publish("s/us", f"400,t,press {n}")  # one at a time, each PUBACKed
            assert [e["text"] for e in sandbox.events("patient")] == [
                f"press {n}" for n in range(20)]
            assert sandbox.unacknowledged_peak("patient") == 1
            assert sandbox.stats().get("queue_exceeded", 0) == 0
        finally:
            device.close()
