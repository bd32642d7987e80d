"""Reusable sandbox fixtures for any test that needs Cumulocity's behaviour.

Import them into a conftest.py:

    from tests.sandbox_fixture import sandbox, sandbox_tls  # noqa: F401

`sandbox` is a fresh `Sandbox` (empty tenant, free loopback ports) per test; `Device` is a paho
client acting as a plain device, recording everything it receives. Credentials: SANDBOX_USER /
SANDBOX_PASSWORD (the tenant is SANDBOX_TENANT).
"""

from __future__ import annotations

import queue
import socket
import ssl
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import paho.mqtt.client as mqtt
import pytest

from dashkanban.sandbox import Sandbox, SandboxOptions
from tests.brokers import TlsFiles

SANDBOX_TENANT = "t12345"
SANDBOX_USER = "t12345/dash-gateway"
SANDBOX_PASSWORD = "s3cret-sandbox-pw"
WAIT = 10.0  # a hang guard (connects, TLS, PUBACKs, REST calls): never waited out when all is well
BARRIER_TOPIC = "test/barrier"  # never subscribed: Device.nothing_more's round trip
BOOTSTRAP_USER = "management/devicebootstrap"
BOOTSTRAP_PASSWORD = "b00tstrap-sandbox-pw"


def sandbox_options(**changes: object) -> SandboxOptions:
    values: dict[str, object] = {
        "password": SANDBOX_PASSWORD, "tenant": SANDBOX_TENANT, "user": "dash-gateway",
    }
    values.update(changes)
    return SandboxOptions(**values)  # type: ignore[arg-type]


@pytest.fixture
def sandbox() -> Iterator[Sandbox]:
    """A fresh sandbox: plain MQTT and HTTP on free loopback ports."""
    with Sandbox(sandbox_options()) as running:
        yield running


@pytest.fixture
def sandbox_bootstrap() -> Iterator[Sandbox]:
    """A fresh sandbox with device registration: the bootstrap user has BOOTSTRAP_PASSWORD."""
    with Sandbox(sandbox_options(bootstrap_password=BOOTSTRAP_PASSWORD)) as running:
        yield running


@pytest.fixture
def sandbox_tls(tls_files: TlsFiles) -> Iterator[Sandbox]:
    """A sandbox with MQTT over TLS (server certificate of `tls_files`) next to plain MQTT."""
    options = sandbox_options(mqtts_port=0, tls_cert=tls_files.server_cert,
                              tls_key=tls_files.server_key)
    with Sandbox(options) as running:
        yield running


def rest(sandbox: Sandbox, **kwargs: object) -> httpx.Client:
    """An httpx client for the sandbox's REST API, logged in unless `auth=None` is given."""
    kwargs.setdefault("auth", (SANDBOX_USER, SANDBOX_PASSWORD))
    return httpx.Client(base_url=sandbox.http_url, timeout=WAIT, **kwargs)  # type: ignore[arg-type]


@dataclass(frozen=True)
class Received:
    topic: str
    payload: str


class Device:
    """A paho MQTT 3.1.1 client used as a device: connect, publish QoS 1, collect s/ds and s/e."""

    def __init__(self, sandbox: Sandbox, client_id: str, *, username: str | None = SANDBOX_USER,
                 password: str = SANDBOX_PASSWORD, tls: TlsFiles | None = None,
                 will: tuple[str, str] | None = None, keepalive: int = 60,
                 client_cert: tuple[Path, Path] | None = None) -> None:
        """`username=None` sends no credentials; `client_cert` (certificate, key) logs in with a
        TLS client certificate (needs `tls`)."""
        self.sandbox = sandbox
        self.client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=client_id,
                                  protocol=mqtt.MQTTv311, clean_session=True)
        if username is not None:
            self.client.username_pw_set(username, password)
        if tls is not None:
            cert, key = client_cert if client_cert is not None else (None, None)
            self.client.tls_set(ca_certs=str(tls.ca_cert),
                                certfile=str(cert) if cert else None,
                                keyfile=str(key) if key else None)
        if will is not None:
            self.client.will_set(will[0], will[1], qos=1)
        self.tls = tls
        self.keepalive = keepalive
        self.received: queue.Queue[Received] = queue.Queue()
        self.connack: queue.Queue[str] = queue.Queue()
        self.disconnected = threading.Event()
        self.client.on_connect = self._on_connect
        self.client.on_message = self._on_message
        self.client.on_disconnect = self._on_disconnect
        self.client.on_socket_open = self._on_socket_open

    def _on_socket_open(self, client: mqtt.Client, userdata: object, sock: object) -> None:
        if isinstance(sock, socket.socket | ssl.SSLSocket):
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def _on_connect(self, client: mqtt.Client, userdata: object, flags: object,
                    reason: object, properties: object) -> None:
        self.connack.put(str(reason))

    def _on_disconnect(self, *args: object) -> None:
        self.disconnected.set()

    def _on_message(self, client: mqtt.Client, userdata: object, message: mqtt.MQTTMessage) -> None:
        self.received.put(Received(message.topic, message.payload.decode("utf-8")))

    def connect(self) -> str:
        """Connect and return paho's name for the CONNACK code ("Success" when accepted)."""
        port = self.sandbox.mqtts_port if self.tls else self.sandbox.mqtt_port
        assert port is not None
        self.client.connect("127.0.0.1" if self.tls is None else "localhost", port,
                            keepalive=self.keepalive)
        self.client.loop_start()
        return self.connack.get(timeout=WAIT)

    def subscribe(self, *topics: str) -> list[int]:
        granted: queue.Queue[list[int]] = queue.Queue()

        def on_subscribe(client: mqtt.Client, userdata: object, mid: int, codes: list[object],
                         properties: object) -> None:
            granted.put([int(getattr(c, "value", c)) for c in codes])  # type: ignore[call-overload]

        self.client.on_subscribe = on_subscribe
        self.client.subscribe([(t, 1) for t in topics])
        return granted.get(timeout=WAIT)

    def publish(self, topic: str, payload: str | bytes, qos: int = 1) -> None:
        info = self.client.publish(topic, payload, qos=qos)
        info.wait_for_publish(timeout=WAIT)
        assert info.is_published(), f"no PUBACK for {payload!r}"

    def expect(self, timeout: float = WAIT) -> Received:
        return self.received.get(timeout=timeout)

    def nothing_more(self) -> bool:
        """No message beyond those taken: proved by a round trip rather than a pause, which a
        slow machine outlasts. The sandbox handles a connection's packets in order and writes
        what each one causes before it reads the next, and paho hands packets over in order:
        once the UNSUBACK for a topic never subscribed is back, every message the sandbox sent
        before is in `received`. (An UNSUBSCRIBE leaves no trace in the sandbox's logs.)"""
        unsubscribed = threading.Event()
        self.client.on_unsubscribe = lambda *args: unsubscribed.set()
        result, _ = self.client.unsubscribe(BARRIER_TOPIC)
        assert result == mqtt.MQTT_ERR_SUCCESS, f"UNSUBSCRIBE not sent ({result})"
        assert unsubscribed.wait(WAIT), "no UNSUBACK"
        try:
            got = self.received.get_nowait()
        except queue.Empty:
            return True
        raise AssertionError(f"unexpected message {got}")

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


@pytest.fixture
def device_factory(sandbox: Sandbox) -> Iterator[Callable[..., Device]]:
    """`device_factory("client-id", **kwargs)` -> a Device (not connected yet), closed after."""
    made: list[Device] = []

    def make(client_id: str, **kwargs: object) -> Device:
        device = Device(sandbox, client_id, **kwargs)  # type: ignore[arg-type]
        made.append(device)
        return device

    yield make
    for device in made:
        device.close()


def sandbox_config(folder: Path, sandbox: Sandbox, buttons: Path, *, mode: str = "gateway",
                   source: str = "csv", rest_url: str | None = None,
                   outbox: Path | None = None, gateway: str = "dashkanban-gw-01",
                   gateway_name: str = "Store 3 button gateway", extra: str = "") -> Path:
    """A config.ini (mode 0600) for a gateway talking to `sandbox`: plain MQTT on loopback,
    REST at `rest_url` (default: the sandbox's own), `extra` appended as further sections."""
    config = folder / "config.ini"
    config.touch(mode=0o600)
    config.write_text(
        f"[C8YMQTT]\ntenant = 127.0.0.1\ntenantID = {SANDBOX_TENANT}\nuser = dash-gateway\n"
        f"password = {SANDBOX_PASSWORD}\nport = {sandbox.mqtt_port}\ntls = no\n"
        f"allow_insecure = yes\nrest_url = {rest_url or sandbox.http_url}\n\n"
        f"[gateway]\nserial = {gateway}\nname = {gateway_name}\nmode = {mode}\n\n"
        f"[buttons]\nfile = {buttons}\nsource = {source}\n\n"
        f"[outbox]\npath = {outbox or folder / 'state' / 'outbox.sqlite3'}\n\n" + extra,
        encoding="utf-8",
    )
    return config
