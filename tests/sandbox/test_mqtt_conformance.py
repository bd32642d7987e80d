"""Conformance of the sandbox's MQTT side, with paho as a plain device (notes 1, 2 and 6.1)."""

from __future__ import annotations

import socket
import time
from collections.abc import Callable

import httpx
import pytest

from dashkanban.sandbox import BrokerRules, Sandbox
from dashkanban.sandbox.broker import SubscribeRecord
from tests.brokers import TlsFiles
from tests.sandbox.test_packets import connect_bytes
from tests.sandbox_fixture import (
    SANDBOX_PASSWORD,
    SANDBOX_USER,
    Device,
    Received,
    rest,
    sandbox_options,
)

MakeDevice = Callable[..., Device]


def raw_connect(sandbox: Sandbox, packet: bytes) -> tuple[socket.socket, bytes]:
    """Send raw bytes and return the socket and the first 4 bytes of the answer (CONNACK)."""
    assert sandbox.mqtt_port is not None
    sock = socket.create_connection(("127.0.0.1", sandbox.mqtt_port), timeout=5)
    sock.sendall(packet)
    answer = b""
    while len(answer) < 4:
        chunk = sock.recv(4 - len(answer))
        if not chunk:
            break
        answer += chunk
    return sock, answer


def closed_by_peer(sock: socket.socket, timeout: float = 5.0) -> bool:
    sock.settimeout(timeout)
    try:
        return sock.recv(1) == b""
    except ConnectionResetError:
        return True


def test_device_creation_then_41_100(sandbox: Sandbox, device_factory: MakeDevice) -> None:
    gw = device_factory("dashkanban-gw-01")
    assert gw.connect() == "Success"
    gw.publish("s/us", "100,Store 3 gateway,c8y_DashKanbanGateway")
    assert gw.subscribe("s/ds", "s/e") == [1, 1]
    gw.publish("s/us", "100,Store 3 gateway,c8y_DashKanbanGateway")
    assert gw.expect() == Received("s/e", "41,100,Device already existing")
    gw.nothing_more()
    assert [(d["name"], d["type"]) for d in sandbox.devices()] == [
        ("Store 3 gateway", "c8y_DashKanbanGateway")
    ]


def test_children_events_quoted_text_and_unknown_template(
    sandbox: Sandbox, device_factory: MakeDevice
) -> None:
    gw = device_factory("d:dashkanban-gw-01")
    gw.connect()
    gw.publish("s/us", "100,Store 3 gateway,c8y_DashKanbanGateway")
    gw.subscribe("s/ds", "s/e")
    gw.publish("s/us", "101,ac63be123456,dashButton_1,c8y_DashButton")
    gw.publish("s/us/ac63be123456",
               '400,c8y_MAC_Event,"dashButton_1 pressed (ac:63:be:12:34:56), ""twice""",'
               "2026-11-26T08:00:01.234+00:00")
    gw.publish("s/us", "999,I made this up")
    assert gw.expect() == Received("s/e", "40,999,No static template for this message id")
    gw.publish("s/us", "123")
    assert gw.expect() == Received("s/ds", "124,10000")
    assert [c["name"] for c in sandbox.children("dashkanban-gw-01")] == ["dashButton_1"]
    assert [(e["type"], e["text"], e["time"]) for e in sandbox.events("ac63be123456")] == [
        ("c8y_MAC_Event", 'dashButton_1 pressed (ac:63:be:12:34:56), "twice"',
         "2026-11-26T08:00:01.234Z")
    ]
    # ... and REST shows the same, in Cumulocity's shapes.
    with rest(sandbox) as client:
        found = client.get("/identity/externalIds/c8y_Serial/ac63be123456")
        assert found.status_code == 200
        child_id = found.json()["managedObject"]["id"]
        events = client.get("/event/events", params={"source": child_id}).json()["events"]
        assert [(e["source"]["id"], e["text"]) for e in events] == [
            (child_id, 'dashButton_1 pressed (ac:63:be:12:34:56), "twice"')
        ]
        gw_doc = client.get("/inventory/managedObjects/10000").json()
        assert [r["managedObject"]["id"] for r in gw_doc["childDevices"]["references"]] == [
            child_id
        ]


@pytest.mark.parametrize(("user", "password", "code"), [
    (SANDBOX_USER, "wrong", 4),
    ("t99999/dash-gateway", SANDBOX_PASSWORD, 4),
    ("dash-gateway", SANDBOX_PASSWORD, 4),  # the tenant id is part of the user name
    (None, None, 4),
])
def test_wrong_credentials_get_connack_4(sandbox: Sandbox, user: str | None,
                                         password: str | None, code: int) -> None:
    sock, answer = raw_connect(sandbox, connect_bytes("gw-01", user=user, password=password))
    assert answer == bytes([0x20, 2, 0, code])
    assert closed_by_peer(sock)
    sock.close()


def test_paho_sees_bad_credentials(sandbox: Sandbox, device_factory: MakeDevice) -> None:
    assert device_factory("gw-01", password="nope").connect() == "Bad user name or password"
    assert sandbox.devices() == []


@pytest.mark.parametrize(("client_id", "code"), [
    ("gw:01", 2),          # `:` inside the device identifier
    ("x:gw-01", 2),        # an unknown connection type
    ("gw-01:tpl", 2),      # a template id needs the d: prefix (sr2.md)
    ("d:gw:01:tpl", 2),
    ("", 2),
    ("d:", 2),
    ("d:gw-01:tpl", 0),
    ("d:gw-01", 0),
])
def test_client_id_rules(sandbox: Sandbox, client_id: str, code: int) -> None:
    sock, answer = raw_connect(
        sandbox, connect_bytes(client_id, user=SANDBOX_USER, password=SANDBOX_PASSWORD)
    )
    assert answer == bytes([0x20, 2, 0, code])
    sock.close()


def test_protocol_and_clean_session_refusals(sandbox: Sandbox) -> None:
    ok = {"user": SANDBOX_USER, "password": SANDBOX_PASSWORD}
    sock, answer = raw_connect(sandbox, connect_bytes("gw-01", level=5, **ok))
    assert answer == b"\x20\x02\x00\x01"
    sock.close()
    sock, answer = raw_connect(sandbox, connect_bytes("gw-01", clean=False, **ok))
    assert answer == b"\x20\x02\x00\x05"
    sock.close()
    sock, answer = raw_connect(sandbox, connect_bytes("gw-01", name=b"MQIsdp", level=3, **ok))
    assert answer == b"\x20\x02\x00\x00"  # MQTT 3.1 is accepted
    sock.close()
    sock, answer = raw_connect(sandbox, connect_bytes("x" * 24, name=b"MQIsdp", level=3, **ok))
    assert answer == b"\x20\x02\x00\x05"  # ... with client ids up to 23 characters
    sock.close()
    sock, answer = raw_connect(sandbox, connect_bytes("x" * 24, **ok))
    assert answer == b"\x20\x02\x00\x00"  # MQTT 3.1.1 has no such limit
    sock.close()


def test_duplicate_client_id_drops_the_first(sandbox: Sandbox, device_factory: MakeDevice) -> None:
    first = device_factory("gw-01")
    first.client.reconnect_delay_set(60, 60)  # do not fight back during the test
    first.connect()
    first.publish("s/us", "100")
    first.subscribe("s/e")
    second = device_factory("d:gw-01")  # the same device identifier
    assert second.connect() == "Success"
    assert first.disconnected.wait(5)
    second.subscribe("s/e")
    second.publish("s/us", "100")
    assert second.expect() == Received("s/e", "41,100,Device already existing")
    assert first.received.empty()


def test_oversized_message_disconnects(sandbox: Sandbox, device_factory: MakeDevice) -> None:
    gw = device_factory("gw-01")
    gw.client.reconnect_delay_set(60, 60)
    gw.connect()
    gw.publish("s/us", "100")
    # 16,184 bytes in all (fixed header 3 + topic 6 + packet id 2 + payload) is still accepted.
    payload = "400,c8y_Big," + "x" * (16_184 - 3 - 6 - 2 - len("400,c8y_Big,"))
    gw.publish("s/us", payload)
    assert len(sandbox.events("gw-01")) == 1
    gw.client.publish("s/us", payload + "y", qos=1)
    assert gw.disconnected.wait(5)
    assert len(sandbox.events("gw-01")) == 1
    assert any(m.payload == payload for m in sandbox.messages())


def test_limit_is_configurable() -> None:
    with Sandbox(sandbox_options(rules=BrokerRules(max_message_bytes=100))) as small:
        device = Device(small, "gw-01")
        device.client.reconnect_delay_set(60, 60)
        try:
            device.connect()
            device.client.publish("s/us", "400,t," + "x" * 100, qos=1)
            assert device.disconnected.wait(5)
        finally:
            device.close()
        assert small.events() == []


def test_last_will_creates_the_event(sandbox: Sandbox) -> None:
    will = connect_bytes("gw-01", user=SANDBOX_USER, password=SANDBOX_PASSWORD,
                         will=("s/us", '400,c8y_ConnectionEvent,"Device connection was lost."'))
    sock, answer = raw_connect(sandbox, will)
    assert answer == b"\x20\x02\x00\x00"
    sock.close()  # no DISCONNECT
    deadline = time.monotonic() + 5
    while not sandbox.events() and time.monotonic() < deadline:
        time.sleep(0.02)
    assert [(e["type"], e["text"]) for e in sandbox.events("gw-01")] == [
        ("c8y_ConnectionEvent", "Device connection was lost.")
    ]


def read_packets(sock: socket.socket, count: int) -> list[bytes]:
    """The next `count` whole packets from the broker (short ones: one length byte)."""
    sock.settimeout(5)
    data = b""
    packets: list[bytes] = []
    while len(packets) < count:
        while len(data) < 2 or len(data) < 2 + data[1]:
            chunk = sock.recv(4096)
            assert chunk, f"closed after {packets}"
            data += chunk
        assert data[1] < 128, "a packet too long for this helper"
        size = 2 + data[1]
        packets.append(data[:size])
        data = data[size:]
    return packets


def publish_bytes(topic: str, payload: bytes, packet_id: int) -> bytes:
    """A QoS 1 PUBLISH, built by hand (MQTT 3.1.1, section 3.3)."""
    body = len(topic).to_bytes(2, "big") + topic.encode() + packet_id.to_bytes(2, "big") + payload
    return bytes([0x32, len(body)]) + body


@pytest.mark.parametrize("rules", [None, BrokerRules(ack_delay=0.01, queue_limit=10)],
                         ids=["at-once", "queued"])
def test_the_puback_comes_before_the_error_on_s_e(rules: BrokerRules | None) -> None:
    """Cumulocity acknowledges a PUBLISH on acceptance and processes it afterwards (docs/protocol.md
    1.5): the PUBACK of a line it refuses comes first, then the error on `s/e`; likewise the
    answer on `s/ds` of a line it answers."""
    options = sandbox_options() if rules is None else sandbox_options(rules=rules)
    with Sandbox(options) as running:
        ok = {"user": SANDBOX_USER, "password": SANDBOX_PASSWORD}
        sock, answer = raw_connect(running, connect_bytes("gw-01", **ok))
        assert answer == b"\x20\x02\x00\x00"
        # SUBSCRIBE s/e and s/ds at QoS 0 (packet id 1).
        body = b"\x00\x01" + b"\x00\x03s/e\x00" + b"\x00\x04s/ds\x00"
        sock.sendall(bytes([0x82, len(body)]) + body)
        assert read_packets(sock, 1) == [b"\x90\x04\x00\x01\x00\x00"]
        sock.sendall(publish_bytes("s/us", b"999,I made this up", 7))
        assert read_packets(sock, 2) == [
            b"\x40\x02\x00\x07",  # PUBACK 7
            b"\x30\x32\x00\x03s/e40,999,No static template for this message id",
        ]
        sock.sendall(publish_bytes("s/us", b"123", 8))
        assert read_packets(sock, 2) == [b"\x40\x02\x00\x08", b"\x30\x0f\x00\x04s/ds124,10000"]
        sock.close()


def test_clean_disconnect_does_not_send_the_will(sandbox: Sandbox,
                                                 device_factory: MakeDevice) -> None:
    gw = device_factory("gw-01", will=("s/us", "400,c8y_ConnectionEvent,lost"))
    gw.connect()
    gw.publish("s/us", "100")
    gw.close()
    assert gw.disconnected.wait(5)
    # The sandbox fires a will when it ends the session: once the session is gone, a will
    # would have made its event.
    deadline = time.monotonic() + 10
    while sandbox.call(lambda: "gw-01" in sandbox.broker.sessions):
        assert time.monotonic() < deadline, "the sandbox never ended the session"
        time.sleep(0.02)
    assert sandbox.events() == []


def test_keepalive_timeout_closes_and_ping_keeps_alive(sandbox: Sandbox) -> None:
    ok = {"user": SANDBOX_USER, "password": SANDBOX_PASSWORD}
    sock, answer = raw_connect(sandbox, connect_bytes("gw-01", keepalive=1, **ok))
    assert answer == b"\x20\x02\x00\x00"
    sock.sendall(b"\xc0\x00")  # PINGREQ
    sock.settimeout(5)
    assert sock.recv(2) == b"\xd0\x00"
    # Silent for more than 1.5 x keepalive: the broker closes the connection.
    assert closed_by_peer(sock, timeout=5)
    sock.close()


def test_no_subscription_to_upstream_topics(sandbox: Sandbox, device_factory: MakeDevice) -> None:
    gw = device_factory("gw-01")
    gw.connect()
    assert gw.subscribe("s/us", "s/ds", "#", "s/e") == [0x80, 1, 0x80, 1]


def test_s_ds_refused_before_the_device_exists_when_configured() -> None:
    with Sandbox(sandbox_options(rules=BrokerRules(refuse_subscribe_before_device=True))) as sb:
        device = Device(sb, "gw-01")
        try:
            device.connect()
            assert device.subscribe("s/ds", "s/e") == [0x80, 1]
            device.publish("s/us", "100")
            assert device.subscribe("s/ds") == [1]
        finally:
            device.close()


def test_each_client_sees_only_its_own_tree(sandbox: Sandbox, device_factory: MakeDevice) -> None:
    a, b = device_factory("gw-a"), device_factory("gw-b")
    for device in (a, b):
        device.connect()
        device.publish("s/us", "100")
        device.subscribe("s/ds", "s/e")
    a.publish("s/us", "999")
    a.publish("s/us", "101,btn-a")
    assert a.expect() == Received("s/e", "40,999,No static template for this message id")
    sandbox.create_operation(sandbox.device_id("btn-a") or "", {"c8y_Restart": {}})
    assert a.expect() == Received("s/ds", "510,btn-a")
    b.nothing_more()


def test_operations_over_rest_reach_the_device_and_again_after_500(
    sandbox: Sandbox, device_factory: MakeDevice
) -> None:
    gw = device_factory("gw-01")
    gw.connect()
    gw.publish("s/us", "100\n101,btn-1")
    gw.subscribe("s/ds", "s/e")
    with rest(sandbox) as client:
        btn = client.get("/identity/externalIds/c8y_Serial/btn-1").json()["managedObject"]["id"]
        created = client.post("/devicecontrol/operations", headers={"Accept": "application/json"},
                              json={"deviceId": btn, "c8y_Command": {"text": "blink 3"}})
        assert created.status_code == 201
        assert created.json()["status"] == "PENDING"
    assert gw.expect() == Received("s/ds", "511,btn-1,blink 3")
    gw.close()
    # Created while the device is offline: delivered only after `500`.
    sandbox.create_operation(btn, {"c8y_Restart": {}})
    again = device_factory("gw-01")
    again.connect()
    again.subscribe("s/ds")
    again.nothing_more()
    again.publish("s/us", "500")
    assert again.expect() == Received("s/ds", "511,btn-1,blink 3")
    assert again.expect() == Received("s/ds", "510,btn-1")
    again.publish("s/us/btn-1", "501,c8y_Restart\n503,c8y_Restart")
    with rest(sandbox) as client:
        ops = client.get("/devicecontrol/operations", params={"deviceId": btn}).json()
    assert [(o["status"], "c8y_Restart" in o) for o in ops["operations"]] == [
        ("SUCCESSFUL", True), ("PENDING", False)
    ]


def test_qos0_and_qos2_publishes_are_processed(sandbox: Sandbox,
                                               device_factory: MakeDevice) -> None:
    gw = device_factory("gw-01")
    gw.connect()
    gw.publish("s/us", "400,t,zero", qos=0)
    gw.publish("s/us", "400,t,two", qos=2)
    deadline = time.monotonic() + 5
    while len(sandbox.events()) < 2 and time.monotonic() < deadline:
        time.sleep(0.02)
    assert sorted(e["text"] for e in sandbox.events()) == ["two", "zero"]


def test_mqtt_over_tls(sandbox_tls: Sandbox, tls_files: TlsFiles) -> None:
    device = Device(sandbox_tls, "gw-tls", tls=tls_files)
    try:
        assert device.connect() == "Success"
        device.subscribe("s/e")
        device.publish("s/us", "100\n100")
        assert device.expect() == Received("s/e", "41,100,Device already existing")
    finally:
        device.close()
    assert sandbox_tls.mqtt_port is not None
    assert sandbox_tls.mqtts_port is not None


def test_rest_and_mqtt_share_the_login(sandbox: Sandbox) -> None:
    response = httpx.get(f"{sandbox.http_url}/inventory/managedObjects",
                         auth=(SANDBOX_USER, SANDBOX_PASSWORD), timeout=5)
    assert response.status_code == 200


def test_subscriptions_are_recorded_in_their_place_among_the_messages(
    sandbox: Sandbox, device_factory: MakeDevice
) -> None:
    gw = device_factory("d:dashkanban-gw-01")
    gw.connect()
    gw.publish("s/us", "100,Store 3 gateway,c8y_DashKanbanGateway")
    # A refused filter (devices may not subscribe upstream) is recorded with its 0x80.
    assert gw.subscribe("s/e", "s/us") == [1, 0x80]
    gw.publish("s/us", "500")
    assert gw.subscribe("s/ds") == [1]
    assert sandbox.subscriptions() == [
        SubscribeRecord("d:dashkanban-gw-01", ("s/e", "s/us"), (1, 0x80), 1),
        SubscribeRecord("d:dashkanban-gw-01", ("s/ds",), (1,), 2),
    ]
    assert [m.payload for m in sandbox.messages()] == [
        "100,Store 3 gateway,c8y_DashKanbanGateway", "500"]
