"""Helpers for the uplink tests: a config.ini for a test broker and a recording subscriber."""

from __future__ import annotations

import ssl
import threading
import time
from pathlib import Path
from typing import Any

import paho.mqtt.client as paho
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from dashkanban.c8y.link import Link, _Client
from dashkanban.c8y.protocol import Outgoing
from dashkanban.config import Settings, load_settings
from tests.brokers import Mosquitto, TlsFiles
from tests.conftest import BROKER_PASSWORD, BROKER_USER

BUTTONS_CSV = (
    "Name, MAC-Address, bin\n"
    "dashButton_1, ac:63:be:12:34:56, A3\n"
    'dashButton_2, FC-A6-67-0A-0B-0C, B1\n'
)


def write_config(folder: Path, broker: Mosquitto, *, host: str = "127.0.0.1",
                 port: int | None = None, user: str = BROKER_USER,
                 password: str = BROKER_PASSWORD, ca_file: Path | None = None,
                 mode: str = "gateway", buttons: Path | None = None,
                 outbox: Path | None = None, extra: str = "") -> Path:
    """A config.ini (mode 0600) pointing at `broker` over TLS (or at `port`, a proxy's).

    Without `buttons`, a MACID.csv of two buttons is written next to it and found by default."""
    folder.mkdir(parents=True, exist_ok=True)
    if buttons is None:
        (folder / "MACID.csv").write_text(BUTTONS_CSV)
    tls = broker.tls
    assert tls is not None
    ca = ca_file if ca_file is not None else tls.ca_cert
    text = (
        "[C8YMQTT]\n"
        f"tenant = {host}\n"
        "tenantID = t12345\n"
        f"user = {user.split('/', 1)[1]}\n"
        f"password = {password}\n"
        f"port = {port if port is not None else broker.port}\n"
        f"ca_file = {ca}\n"
        "[gateway]\n"
        "serial = dashkanban-gw-01\n"
        "name = Store 3 button gateway\n"
        f"mode = {mode}\n"
        + (f"[buttons]\nfile = {buttons}\n" if buttons is not None else "")
        + "[outbox]\n"
        f"path = {outbox if outbox is not None else folder / 'outbox.sqlite3'}\n"
        + extra
    )
    path = folder / "config.ini"
    path.write_text(text)
    path.chmod(0o600)
    return path


def settings_for(folder: Path, broker: Mosquitto, **kwargs: object) -> Settings:
    return load_settings(write_config(folder, broker, **kwargs))  # type: ignore[arg-type]


class Recorder:
    """A separate paho client subscribed to `#`: every (topic, payload) the broker routes."""

    def __init__(self, broker: Mosquitto, tls: TlsFiles) -> None:
        self.messages: list[tuple[str, str]] = []
        self._cond = threading.Condition()
        self._client = paho.Client(CallbackAPIVersion.VERSION2, client_id="test-recorder",
                                   protocol=paho.MQTTv311)
        self._client.tls_set_context(ssl.create_default_context(cafile=str(tls.ca_cert)))
        self._client.username_pw_set(BROKER_USER, BROKER_PASSWORD)
        self._client.on_message = self._on_message
        self.subscriptions = 0
        subscribed = threading.Event()

        def on_subscribe(*_args: object) -> None:
            with self._cond:
                self.subscriptions += 1
                self._cond.notify_all()
            subscribed.set()

        self._client.on_subscribe = on_subscribe
        # Subscribe on every connect: the test may restart the broker (clean session).
        self._client.on_connect = lambda c, *_a: c.subscribe("#", qos=1)
        self._client.reconnect_delay_set(0.05, 0.2)
        self._client.connect("127.0.0.1", broker.port)
        self._client.loop_start()
        if not subscribed.wait(10):
            raise TimeoutError("the recorder could not subscribe")

    def _on_message(self, client: paho.Client, userdata: object, msg: paho.MQTTMessage) -> None:
        with self._cond:
            self.messages.append((msg.topic, msg.payload.decode()))
            self._cond.notify_all()

    def wait_for(self, count: int, timeout: float = 10.0) -> list[tuple[str, str]]:
        deadline = time.monotonic() + timeout
        with self._cond:
            while len(self.messages) < count:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    break
                self._cond.wait(remaining)
            return list(self.messages)

    def wait_subscribed(self, count: int, timeout: float = 10.0) -> None:
        with self._cond:
            if not self._cond.wait_for(lambda: self.subscriptions >= count, timeout):
                raise TimeoutError("the recorder did not subscribe again")

    def publish(self, topic: str, payload: str) -> None:
        self._client.publish(topic, payload, qos=1).wait_for_publish(5)

    def close(self) -> None:
        self._client.disconnect()
        self._client.loop_stop()


def break_row_publishes(monkeypatch: pytest.MonkeyPatch, bug: BaseException) -> None:
    """`Link._publish` raises `bug` for the rows' PUBLISHes (the events) and sends the rest.
    Only those: the link's own start-up lines may still be under way when it reports ready
    (they are tasks), and a bug there fails the link instead."""
    original = Link._publish

    async def broken(self: Link, client: Any, message: Outgoing) -> None:
        if "c8y_MAC_Event" not in message.payload:
            await original(self, client, message)
            return
        raise bug

    monkeypatch.setattr(Link, "_publish", broken)


def break_client_publishes(monkeypatch: pytest.MonkeyPatch, faults: list[BaseException],
                           topic: str = "s/us") -> list[BaseException]:
    """The client's PUBLISHes on `topic` raise `faults`, one each in order, then go out as
    ever; the others are untouched. A fault is raised before the packet reaches paho, so the
    broker sees nothing of it. Returns the faults not raised yet (the list given, emptied as they
    are used)."""
    original = _Client.publish

    async def broken(self: _Client, to: str, *args: Any, **kwargs: Any) -> None:
        if to == topic and faults:
            raise faults.pop(0)
        await original(self, to, *args, **kwargs)

    monkeypatch.setattr(_Client, "publish", broken)
    return faults
