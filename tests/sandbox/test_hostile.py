"""Hostile input is refused and counted, never a crash: packets, SmartREST lines, HTTP requests."""

from __future__ import annotations

import contextlib
import socket
import time
from collections.abc import Callable

import httpx
from hypothesis import given, settings
from hypothesis import strategies as st

from dashkanban.sandbox import BrokerRules, Sandbox
from dashkanban.sandbox import packets as mq
from dashkanban.sandbox.http import MAX_HEADER_BYTES
from dashkanban.sandbox.smartrest import SmartRestProcessor
from dashkanban.sandbox.store import Store
from tests.sandbox.test_packets import connect_bytes
from tests.sandbox_fixture import SANDBOX_PASSWORD, SANDBOX_USER, Device, Received, sandbox_options

MakeDevice = Callable[..., Device]


@settings(max_examples=300, deadline=None)
@given(st.integers(0, 255), st.binary(max_size=64))
def test_decode_packet_raises_only_malformed(first: int, body: bytes) -> None:
    with contextlib.suppress(mq.MalformedPacketError):
        mq.decode_packet(first, body)


@settings(max_examples=200, deadline=None)
@given(st.text(alphabet=st.sampled_from('0123456789,"\\\n\r ab:/-.+Z'), max_size=60))
def test_processor_answers_any_payload(payload: str) -> None:
    store = Store()
    replies = SmartRestProcessor(store).handle("gw-01", "s/us", payload.encode())
    assert all(r.topic in ("s/ds", "s/e") for r in replies)
    assert all(r.line.split(",")[0] in ("40", "41", "45", "106", "124") for r in replies)


def test_garbage_is_counted_and_the_broker_keeps_serving(sandbox: Sandbox,
                                                         device_factory: MakeDevice) -> None:
    assert sandbox.mqtt_port is not None
    hostile = [
        b"\xff\xff\xff\xff\xff",                       # remaining length too long
        # Not MQTT: "G" reads as PUBACK, "E" as 69 bytes to follow; 71 bytes in all.
        b"GET / HTTP/1.1\r\nHost: x\r\n\r\n".ljust(71, b"x"),
        b"\x30\x05\x00\x04s/us",                        # PUBLISH before CONNECT
        connect_bytes("gw-x", user=SANDBOX_USER, password=SANDBOX_PASSWORD)
        + b"\x82\x02\x00\x01",                          # SUBSCRIBE without a filter
    ]
    for data in hostile:
        with socket.create_connection(("127.0.0.1", sandbox.mqtt_port), timeout=5) as sock:
            sock.sendall(data)
            sock.settimeout(5)
            while sock.recv(64):  # read until the broker closes
                pass
    stats = sandbox.stats()
    assert stats["malformed"] == len(hostile)  # each counted once, none crashed the broker
    gw = device_factory("gw-01")
    assert gw.connect() == "Success"
    gw.subscribe("s/e")
    gw.publish("s/us", "100\n100")
    assert gw.expect() == Received("s/e", "41,100,Device already existing")


def test_bad_http_requests_get_400_and_the_server_keeps_serving(sandbox: Sandbox) -> None:
    assert sandbox.http_port is not None
    for data in (b"NONSENSE\r\n\r\n", b"GET / HTTP/1.1\r\nbroken header\r\n\r\n",
                 b"POST /event/events HTTP/1.1\r\nContent-Length: x\r\n\r\n"):
        with socket.create_connection(("127.0.0.1", sandbox.http_port), timeout=5) as sock:
            sock.sendall(data)
            assert sock.recv(64).startswith(b"HTTP/1.1 400 Bad Request\r\n")
    assert httpx.get(f"{sandbox.http_url}/openapi.json", timeout=5).status_code == 200


def _answer(port: int, data: bytes) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        with contextlib.suppress(ConnectionError):  # the server may close before reading all
            sock.sendall(data)
        received = b""
        with contextlib.suppress(ConnectionError):
            while chunk := sock.recv(4096):
                received += chunk
        return received


def test_headers_over_the_limit_get_431_and_the_server_keeps_serving(sandbox: Sandbox) -> None:
    assert sandbox.http_port is not None
    assert MAX_HEADER_BYTES == 32 * 1024
    request_line = b"GET /openapi.json HTTP/1.1\r\nConnection: close\r\n"
    end = b"\r\n\r\n"
    filler = MAX_HEADER_BYTES - len(request_line) - len(end) - len(b"X-Pad: ")
    at_limit = request_line + b"X-Pad: " + b"a" * filler + end
    assert len(at_limit) == MAX_HEADER_BYTES
    assert _answer(sandbox.http_port, at_limit).startswith(b"HTTP/1.1 200 OK\r\n")
    refusal = (b"HTTP/1.1 431 Request Header Fields Too Large\r\nContent-Type: text/plain\r\n"
               b"Content-Length: 41\r\nConnection: close\r\n\r\n"
               b"request line and headers over 32768 bytes")
    one_over = request_line + b"X-Pad: " + b"a" * (filler + 1) + end
    for data in (one_over, request_line + b"X-Pad: " + b"a" * 64 * 1024 + end,
                 request_line + b"X-Pad: a\r\n" * 7000 + b"\r\n"):
        assert _answer(sandbox.http_port, data) == refusal
    assert httpx.get(f"{sandbox.http_url}/openapi.json", timeout=5).status_code == 200


def test_refuse_with_connack_3() -> None:
    with Sandbox(sandbox_options(rules=BrokerRules(refuse_with=3))) as refusing:
        device = Device(refusing, "gw-01")
        try:
            assert device.connect() == "Server unavailable"
        finally:
            device.close()
        assert refusing.stats()["refused"] == 1


def test_drop_connection_fires_the_will(sandbox: Sandbox, device_factory: MakeDevice) -> None:
    gw = device_factory("gw-01", will=("s/us", "400,c8y_ConnectionEvent,lost"))
    gw.client.reconnect_delay_set(60, 60)
    gw.connect()
    gw.publish("s/us", "100")
    assert sandbox.drop_connection("gw-01") is True
    assert gw.disconnected.wait(5)
    deadline = time.monotonic() + 5
    while not sandbox.events() and time.monotonic() < deadline:
        time.sleep(0.02)
    assert [e["text"] for e in sandbox.events("gw-01")] == ["lost"]
    assert sandbox.drop_connection("gw-01") is False
