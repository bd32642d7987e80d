"""The sandbox misbehaves on purpose, so that reconnect paths are tested against it (issue 11,
item 5): refused logins with a chosen CONNACK code, dropped connections, TLS handshakes closed
unanswered, and credentials reloaded while clients run."""

from __future__ import annotations

import socket
import ssl
from collections.abc import Callable

import httpx
import pytest

from dashkanban.sandbox import Sandbox
from tests.brokers import TlsFiles
from tests.sandbox_fixture import SANDBOX_PASSWORD, SANDBOX_USER, Device, rest

MakeDevice = Callable[..., Device]

def _connack(sandbox: Sandbox, client_id: str) -> bytes:
    """One MQTT 3.1.1 CONNECT on a raw socket (paho would retry a code 1 as MQTT 3.1 on its
    own); returns the CONNACK's bytes."""
    assert sandbox.mqtt_port is not None
    user, password = SANDBOX_USER.encode(), SANDBOX_PASSWORD.encode()
    cid = client_id.encode()
    body = (b"\x00\x04MQTT\x04\xc2\x00\x3c" + len(cid).to_bytes(2, "big") + cid
            + len(user).to_bytes(2, "big") + user + len(password).to_bytes(2, "big") + password)
    with socket.create_connection(("127.0.0.1", sandbox.mqtt_port), timeout=5) as sock:
        sock.sendall(bytes([0x10, len(body)]) + body)
        return sock.recv(4)


@pytest.mark.parametrize("code", [1, 2, 3, 4, 5])
def test_the_next_n_logins_are_refused_with_the_chosen_code_then_accepted(
    sandbox: Sandbox, code: int
) -> None:
    sandbox.refuse_logins(2, code)
    assert sandbox.logins_to_refuse() == 2
    answers = [_connack(sandbox, f"gw-{attempt}") for attempt in range(3)]
    assert answers == [bytes([0x20, 2, 0, code])] * 2 + [b"\x20\x02\x00\x00"]
    assert sandbox.logins_to_refuse() == 0
    assert sandbox.stats()["refused"] == 2


def test_refuse_logins_checks_its_arguments(sandbox: Sandbox) -> None:
    with pytest.raises(ValueError, match="CONNACK code from 1 to 5"):
        sandbox.refuse_logins(1, 0)
    with pytest.raises(ValueError, match="CONNACK code from 1 to 5"):
        sandbox.refuse_logins(-1, 5)


def test_drop_all_connections_closes_every_client(sandbox: Sandbox,
                                                  device_factory: MakeDevice) -> None:
    first, second = device_factory("gw-a"), device_factory("gw-b")
    for device in (first, second):
        device.client.reconnect_delay_set(60, 60)
        assert device.connect() == "Success"
    assert sandbox.drop_all_connections() == 2
    assert first.disconnected.wait(5)
    assert second.disconnected.wait(5)
    assert sandbox.drop_all_connections() == 0


def _handshake(port: int, tls_files: TlsFiles) -> str:
    context = ssl.create_default_context(cafile=str(tls_files.ca_cert))
    with socket.create_connection(("localhost", port), timeout=5) as raw:
        try:
            with context.wrap_socket(raw, server_hostname="localhost"):
                return "handshake done"
        except ssl.SSLError as exc:
            return type(exc).__name__
        except ConnectionResetError:
            return "reset"


def test_tls_handshakes_are_closed_unanswered_then_served(sandbox_tls: Sandbox,
                                                          tls_files: TlsFiles) -> None:
    port = sandbox_tls.mqtts_port
    assert port is not None
    sandbox_tls.close_tls_handshakes(2)
    results = [_handshake(port, tls_files) for _ in range(3)]
    # Closed mid-handshake, as a load balancer in trouble does: UNEXPECTED_EOF_WHILE_READING.
    assert results == ["SSLEOFError", "SSLEOFError", "handshake done"]
    assert sandbox_tls.stats()["tls_closed"] == 2
    assert sandbox_tls.tls_handshakes_to_close() == 0
    device = Device(sandbox_tls, "gw-tls", tls=tls_files)
    try:
        assert device.connect() == "Success"  # MQTT over the TLS the listener now starts itself
    finally:
        device.close()


def test_tls_handshakes_are_closed_for_a_while_then_served(sandbox_tls: Sandbox,
                                                            tls_files: TlsFiles) -> None:
    port = sandbox_tls.mqtts_port
    assert port is not None
    sandbox_tls.close_tls_handshakes_for(60)
    assert [_handshake(port, tls_files) for _ in range(3)] == ["SSLEOFError"] * 3
    sandbox_tls.close_tls_handshakes_for(0)  # the while is over
    assert _handshake(port, tls_files) == "handshake done"
    assert sandbox_tls.stats()["tls_closed"] == 3


def test_set_password_reloads_the_credentials_of_mqtt_and_rest(
    sandbox: Sandbox, device_factory: MakeDevice
) -> None:
    connected = device_factory("gw-old")
    assert connected.connect() == "Success"
    sandbox.set_password("a-new-password")
    assert device_factory("gw-1").connect() == "Bad user name or password"
    assert device_factory("gw-2", password="a-new-password").connect() == "Success"
    with rest(sandbox) as old:
        assert old.get("/inventory/managedObjects").status_code == 401
    with httpx.Client(base_url=sandbox.http_url, auth=(SANDBOX_USER, "a-new-password"),
                      timeout=5) as new:
        assert new.get("/inventory/managedObjects").status_code == 200
    assert connected.client.is_connected()  # a reload does not close open connections
    assert "a-new-password" not in repr(sandbox.options)
    assert SANDBOX_PASSWORD != "a-new-password"


def test_the_same_knobs_over_rest_for_a_test_in_another_process(
    sandbox: Sandbox, device_factory: MakeDevice
) -> None:
    connected = device_factory("gw-rest")
    connected.client.reconnect_delay_set(60, 60)
    assert connected.connect() == "Success"
    with rest(sandbox) as client:
        answer = client.post("/sandbox/misbehave", json={
            "refuse_logins": {"count": 2, "code": 3}, "drop_connections": True})
        assert (answer.status_code, answer.json()) == (
            200, {"logins_to_refuse": 2, "tls_handshakes_to_close": 0, "dropped": 1})
        assert connected.disconnected.wait(5)
        assert [_connack(sandbox, f"gw-{n}") for n in range(3)] == [
            b"\x20\x02\x00\x03", b"\x20\x02\x00\x03", b"\x20\x02\x00\x00"]
        bad = client.post("/sandbox/misbehave", json={"refuse": 1})
        assert (bad.status_code, bad.json()["message"]) == (
            422, "unknown keys ['refuse']; known: ['close_tls_handshakes', "
                 "'close_tls_handshakes_for', 'drop_connections', 'password', 'refuse_logins']")
        bad = client.post("/sandbox/misbehave", json={"refuse_logins": {"count": 1, "code": 9}})
        assert (bad.status_code, bad.json()["message"]) == (
            422, "refuse_logins needs count >= 0 and a CONNACK code from 1 to 5")
        changed = client.post("/sandbox/misbehave", json={"password": "changed-over-rest"})
        assert changed.status_code == 200
        assert client.get("/inventory/managedObjects").status_code == 401  # the old one
    with httpx.Client(base_url=sandbox.http_url, timeout=5) as anonymous:
        # It changes the tenant's behaviour: only its user may ask.
        assert anonymous.post("/sandbox/misbehave", json={}).status_code == 401
