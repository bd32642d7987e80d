"""Certificate login for REST: the device token over MQTT, Bearer on the one REST client, renewal at
half the lifetime and after a 401; the 403 fallback of the inventory source; report paging with a
fixed dateTo. Against the sandbox with certificate login (issue 15)."""

from __future__ import annotations

import asyncio
import base64
import json
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

from dashkanban.c8y.rest import AsyncCumulocityRest, CumulocityRest, RestError, RestInventoryLookup
from dashkanban.c8y.token import (
    DEFAULT_LIFETIME,
    TokenSource,
    fetch_token,
    lifetime_of,
    token_line,
    token_source_for,
)
from dashkanban.config import Settings, load_settings
from dashkanban.detect.buttons import Button
from dashkanban.kanban import cumulocity
from dashkanban.sandbox import Sandbox
from tests.brokers import TlsFiles
from tests.sandbox_fixture import rest, sandbox_options

if TYPE_CHECKING:
    from tests.running import RunningUplink

GW = "dashkanban-gw-test"  # the CN of tls_files' client certificate


def jwt(claims: dict[str, Any]) -> str:
    def part(value: dict[str, Any]) -> str:
        return base64.urlsafe_b64encode(json.dumps(value).encode()).rstrip(b"=").decode()
    return f"{part({'alg': 'HS256'})}.{part(claims)}.c2lnbmF0dXJl"


def test_token_lines_and_lifetimes() -> None:
    assert token_line("71,abc.def.ghi") == "abc.def.ghi"
    assert token_line("71,") is None
    assert token_line("41,,MqttAuth: Cannot publish token") is None
    assert lifetime_of(jwt({"iat": 1000, "exp": 1600})) == 600.0
    assert lifetime_of(jwt({"iat": 1000})) == DEFAULT_LIFETIME
    assert lifetime_of("not-a-jwt") == DEFAULT_LIFETIME
    assert lifetime_of("a.!!!.c") == DEFAULT_LIFETIME


def test_renewed_at_half_the_lifetime_and_at_once_after_invalidate() -> None:
    now = [0.0]
    asked: list[float] = []
    source = TokenSource(lambda: asked.append(now[0]), clock=lambda: now[0], wait=5.0)
    assert source.due()
    source.renew_if_due()
    source.renew_if_due()  # one request in flight at a time
    assert asked == [0.0]
    token = jwt({"iat": 0, "exp": 600})
    source.offer(token)
    assert source.authorization() == f"Bearer {token}"
    now[0] = 299.0
    source.renew_if_due()
    assert asked == [0.0]
    now[0] = 300.0
    assert source.authorization() == f"Bearer {token}"  # still valid while the new one comes
    assert asked == [0.0, 300.0]
    newer = jwt({"iat": 300, "exp": 900})
    source.offer(newer)
    source.invalidate()  # a 401: at once, no waiting for the half-life
    assert asked == [0.0, 300.0, 300.0]


def test_no_token_in_time_is_a_clear_error() -> None:
    now = [0.0]

    def tick() -> float:
        now[0] += 1.0
        return now[0]

    source = TokenSource(lambda: None, clock=tick, wait=3.0)
    with pytest.raises(RestError, match="no device token from Cumulocity within 3 s"):
        CumulocityRest("http://127.0.0.1:9", "t1/u", None, tokens=source).managed_object("1")


# -- against the sandbox with certificate login ------------------------------------------------

@pytest.fixture
def cert_sandbox(tls_files: TlsFiles) -> Iterator[Sandbox]:
    options = sandbox_options(mqtts_port=0, tls_cert=tls_files.server_cert,
                              tls_key=tls_files.server_key, trusted_ca=tls_files.ca_cert,
                              devices_read_own_only=True)
    with Sandbox(options) as running:
        yield running


def cert_settings(folder: Path, sandbox: Sandbox, tls: TlsFiles, extra: str = "") -> Settings:
    """A certificate-only gateway (no password) for the sandbox's TLS listener."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "MACID.csv").write_text("Name, MAC-Address\n")
    config = folder / "config.ini"
    config.write_text(
        f"[C8YMQTT]\ntenant = localhost\ntenantID = t12345\nuser = device_{GW}\n"
        f"port = {sandbox.mqtts_port}\nca_file = {tls.ca_cert}\ncert_file = {tls.client_cert}\n"
        f"key_file = {tls.client_key}\nrest_url = {sandbox.http_url}\n\n"
        f"[gateway]\nserial = {GW}\nname = Store 3 button gateway\n\n"
        f"[outbox]\npath = {folder / 'outbox.sqlite3'}\n" + extra,
        encoding="utf-8")
    config.chmod(0o600)
    return load_settings(config)


def test_bearer_token_from_mqtt_and_renewed_after_a_401(
        cert_sandbox: Sandbox, tls_files: TlsFiles, tmp_path: Path) -> None:
    settings = cert_settings(tmp_path, cert_sandbox, tls_files)
    assert settings.c8y.password is None
    jwt_value = fetch_token(settings, timeout=10)
    assert cert_sandbox.tokens.verify(jwt_value) is not None
    with rest(cert_sandbox) as admin:
        made = admin.post("/inventory/managedObjects", headers={"Accept": "application/json"},
                          json={"name": "Aisle 2 screws"}).json()
        admin.post(f"/identity/globalIds/{made['id']}/externalIds",
                   json={"type": "c8y_Serial", "externalId": "ac63be123456"})
    tokens = token_source_for(settings)
    tokens.offer(jwt_value + "x")  # a token Cumulocity no longer accepts
    with CumulocityRest.from_settings(settings.c8y, tokens=tokens) as client:
        assert client.managed_object_id("ac63be123456") == made["id"]
        assert client.managed_object_id("fca6670a0b0c") is None
    assert tokens.received == 2  # the 401 renewed it over MQTT at once
    assert cert_sandbox.stats()["tokens"] == 2


def test_bearer_token_on_the_event_loop_renewed_after_a_401(
        cert_sandbox: Sandbox, tls_files: TlsFiles, tmp_path: Path) -> None:
    """The loop's client: the same Bearer header and renewal (waiting for the new token, which
    comes over MQTT, is handed off the loop)."""
    settings = cert_settings(tmp_path, cert_sandbox, tls_files)
    jwt_value = fetch_token(settings, timeout=10)
    with rest(cert_sandbox) as admin:
        made = admin.post("/inventory/managedObjects", headers={"Accept": "application/json"},
                          json={"name": "Aisle 2 screws"}).json()
        admin.post(f"/identity/globalIds/{made['id']}/externalIds",
                   json={"type": "c8y_Serial", "externalId": "ac63be123456"})
    tokens = token_source_for(settings)
    tokens.offer(jwt_value + "x")  # a token Cumulocity no longer accepts

    async def main() -> tuple[str | None, str | None]:
        async with AsyncCumulocityRest.from_settings(settings.c8y, tokens=tokens) as client:
            return (await client.managed_object_id("ac63be123456"),
                    await client.managed_object_id("fca6670a0b0c"))

    assert asyncio.run(main()) == (made["id"], None)
    assert tokens.received == 2  # the 401 renewed it over MQTT at once
    assert cert_sandbox.stats()["tokens"] == 2


def test_inventory_button_of_another_owner_is_named_by_its_serial(
        cert_sandbox: Sandbox, tls_files: TlsFiles, tmp_path: Path) -> None:
    """A device user may look the serial up but not read a button it does not own (403): the
    serial is its name, as for a deleted one (404), instead of 10 minutes of retries."""
    settings = cert_settings(tmp_path, cert_sandbox, tls_files, "[buttons]\nsource = inventory\n")
    with rest(cert_sandbox) as admin:
        made = admin.post("/inventory/managedObjects", headers={"Accept": "application/json"},
                          json={"name": "Aisle 2 screws", "type": "c8y_DashButton"}).json()
        assert admin.post(f"/identity/globalIds/{made['id']}/externalIds",
                          json={"type": "c8y_Serial", "externalId": "ac63be123456"}
                          ).status_code == 201
    source = RestInventoryLookup(settings)
    try:
        assert source("ac:63:be:12:34:56") == Button(name="ac63be123456", mac="ac:63:be:12:34:56")
        assert source("fc:a6:67:0a:0b:0c") is None
    finally:
        source.close()


# -- a request that cannot be sent -------------------------------------------------------------


def watched_uplink(settings: Settings) -> tuple[RunningUplink, list[str]]:
    """A started uplink (fast backoff) and the messages of what its loop left unhandled (an
    exception never retrieved, a callback that raised): a test asserts the list stays empty."""
    from tests.running import RunningUplink

    unhandled: list[str] = []
    uplink = RunningUplink(settings, backoff=(0.05, 0.2))
    uplink.thread.loop.set_exception_handler(
        lambda _loop, context: unhandled.append(str(context.get("message"))))
    uplink.start()
    return uplink, unhandled


def test_a_token_request_that_cannot_be_sent_fails_the_waiter_at_once(
        cert_sandbox: Sandbox, tls_files: TlsFiles, tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    """A bug in the `s/uat` publish (a task of its own): the caller waiting for the token is
    told at once as the token path's own error (not after `wait` seconds as "no device token
    within 30 s"), the uplink fails with the bug (`run` exits 1), and its exception is never
    left unretrieved. (A connection error is the next test's: the reconnect answers.)"""
    import logging

    from aiomqtt.exceptions import MqttCodeError

    from dashkanban.c8y.link import _Client
    from dashkanban.c8y.token import TOKEN_REQUEST_TOPIC, TokenError

    caplog.set_level(logging.INFO)
    settings = cert_settings(tmp_path, cert_sandbox, tls_files)
    original = _Client.publish

    bug = [False]  # the request at connect fails like a dropped connection; the next is a bug

    async def publish(self: _Client, topic: str, *args: Any, **kwargs: Any) -> None:
        if topic == TOKEN_REQUEST_TOPIC:
            if bug[0]:
                raise KeyError("injected")
            raise MqttCodeError(4, "The client is not currently connected.")
        await original(self, topic, *args, **kwargs)

    monkeypatch.setattr(_Client, "publish", publish)
    uplink, unhandled = watched_uplink(settings)
    try:
        assert uplink.tokens is not None
        assert uplink.wait_connected(10)
        bug[0] = True
        with pytest.raises(TokenError) as raised:
            uplink.tokens.authorization()
        assert str(raised.value) == (
            f"cannot ask Cumulocity for a device token on {GW}: the s/uat publish failed "
            "(KeyError, a bug)")
        task = uplink.task
        assert task is not None
        uplink.thread.wait(asyncio.wait({task}, timeout=10))
        assert task.done()
        group = task.exception()
        assert isinstance(group, BaseExceptionGroup)
        assert [repr(e) for e in _leaves(group)] == ["KeyError('injected')"]
    finally:
        uplink.stop()
    assert unhandled == []
    assert "exception was never retrieved" not in caplog.text
    assert cert_sandbox.stats().get("tokens", 0) == 0  # no s/uat reached it


@pytest.mark.parametrize("fault", [
    # paho has lost the socket: what aiomqtt raises when the connection just dropped
    "[code:4] The client is not currently connected.",
    # the socket's own error
    "[Errno 32] Broken pipe",
])
def test_a_token_request_lost_to_a_dropping_connection_is_answered_after_the_reconnect(
        cert_sandbox: Sandbox, tls_files: TlsFiles, tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture, fault: str) -> None:
    """The connection drops just as a REST call asks for the token: the `s/uat` publish fails
    with a connection error. The call used to fail at once (TokenError) although the reconnect
    asks again; it now waits (within its own `wait`) and gets the token the reconnect brings."""
    import concurrent.futures
    import logging
    import time

    from aiomqtt.exceptions import MqttCodeError

    from dashkanban.c8y.link import _Client
    from dashkanban.c8y.token import TOKEN_REQUEST_TOPIC

    caplog.set_level(logging.INFO)
    settings = cert_settings(tmp_path, cert_sandbox, tls_files)
    original = _Client.publish
    requests = [0]

    async def publish(self: _Client, topic: str, *args: Any, **kwargs: Any) -> None:
        if topic == TOKEN_REQUEST_TOPIC:
            requests[0] += 1
            if requests[0] <= 2:  # the request at connect and the REST call's
                if fault.startswith("[code:4]"):
                    raise MqttCodeError(4, "The client is not currently connected.")
                raise BrokenPipeError(32, "Broken pipe")
        await original(self, topic, *args, **kwargs)

    monkeypatch.setattr(_Client, "publish", publish)
    uplink, unhandled = watched_uplink(settings)
    try:
        tokens = uplink.tokens
        assert tokens is not None
        assert uplink.wait_connected(10)
        assert requests[0] == 1
        with concurrent.futures.ThreadPoolExecutor(1) as pool:
            waiter = pool.submit(tokens.authorization)  # a REST call's worker thread
            deadline = time.monotonic() + 10  # bounded: the request is one loop step away
            while requests[0] < 2 and time.monotonic() < deadline:
                time.sleep(0.01)
            assert requests[0] == 2
            assert cert_sandbox.drop_connection(GW)  # the drop that failed the publish
            bearer = waiter.result(timeout=20)
        assert cert_sandbox.tokens.verify(bearer.removeprefix("Bearer ")) is not None
        assert requests[0] == 3  # asked once more, by the reconnect
        assert cert_sandbox.stats()["tokens"] == 1
        task = uplink.task
        assert task is not None
        assert not task.done()
    finally:
        uplink.stop()
    assert unhandled == []
    assert "exception was never retrieved" not in caplog.text
    lines = [r.getMessage() for r in caplog.records
             if r.getMessage().startswith("cannot ask Cumulocity for a device token")]
    assert lines == [f"cannot ask Cumulocity for a device token on {GW} now ({fault}); the "
                     "next connect asks again"] * 2


def test_a_token_request_lost_with_its_connection_is_asked_again_at_the_next_connect(
        cert_sandbox: Sandbox, tls_files: TlsFiles, tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    """The answer to `s/uat` comes at QoS 0 on the connection that asked. When that connection
    drops first, the request used to be taken for one in flight until `wait` (30 s) ran out: the
    next connect did not ask, and REST waited for nothing. The next connect asks again."""
    import time

    from dashkanban.c8y.link import _Client
    from dashkanban.c8y.token import TOKEN_REQUEST_TOPIC
    from tests.running import RunningUplink

    settings = cert_settings(tmp_path, cert_sandbox, tls_files)
    original = _Client.publish
    requests = [0]

    async def publish(self: _Client, topic: str, *args: Any, **kwargs: Any) -> None:
        if topic == TOKEN_REQUEST_TOPIC:
            requests[0] += 1
            if requests[0] == 1:
                return  # lost on the way, as with a connection that drops just then
        await original(self, topic, *args, **kwargs)

    monkeypatch.setattr(_Client, "publish", publish)
    uplink = RunningUplink(settings, backoff=(0.05, 0.2))
    uplink.start()
    try:
        assert uplink.wait_connected(10)
        assert requests[0] == 1
        assert cert_sandbox.drop_connection(GW)
        deadline = time.monotonic() + 15  # bounded: the reconnect is at most 0.2 s away
        while cert_sandbox.stats().get("tokens", 0) == 0 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert cert_sandbox.stats().get("tokens", 0) == 1, "the next connect did not ask"
        assert requests[0] == 2
        tokens = uplink.tokens
        assert tokens is not None
        bearer = tokens.authorization()  # there at once: nothing is asked or waited for
        assert cert_sandbox.tokens.verify(bearer.removeprefix("Bearer ")) is not None
        assert requests[0] == 2
    finally:
        uplink.stop()


def test_a_token_asked_for_while_the_uplink_connects_comes_with_the_connection(
        cert_sandbox: Sandbox, tls_files: TlsFiles, tmp_path: Path) -> None:
    """A REST call asks (from its worker thread) while the link is not connected yet: the loop
    cannot send that request, and it used to be taken for one in flight, so the connect did not
    ask either and the call failed after `wait` (30 s). The connect asks, and the call gets it."""
    from tests.running import RunningUplink

    settings = cert_settings(tmp_path, cert_sandbox, tls_files)
    cert_sandbox.refuse_logins(2, 3)  # "server unavailable": retried at once (FAST backoff)
    uplink = RunningUplink(settings, backoff=(0.05, 0.2))
    uplink.start()
    try:
        tokens = uplink.tokens
        assert tokens is not None
        assert not uplink.connected
        bearer = tokens.authorization()
        assert cert_sandbox.tokens.verify(bearer.removeprefix("Bearer ")) is not None
        assert cert_sandbox.stats()["refused"] == 2
        assert cert_sandbox.stats()["tokens"] == 1
    finally:
        uplink.stop()


def _leaves(group: BaseExceptionGroup[BaseException]) -> list[BaseException]:
    out: list[BaseException] = []
    for exc in group.exceptions:
        out.extend(_leaves(exc) if isinstance(exc, BaseExceptionGroup) else [exc])
    return out


# -- report paging ------------------------------------------------------------------------------

def test_report_pages_with_a_fixed_date_to(monkeypatch: pytest.MonkeyPatch) -> None:
    """Events arriving while the pages are read (newest first) must not shift the pages: each
    page asks with the same dateTo, so every event is read once."""
    monkeypatch.setattr(cumulocity, "PAGE_SIZE", 2)
    start = datetime(2026, 11, 26, 8, 0, tzinfo=UTC)
    with Sandbox(sandbox_options()) as sandbox, rest(sandbox) as admin:
        gw = admin.post("/inventory/managedObjects", headers={"Accept": "application/json"},
                        json={"name": "gw"}).json()

        def press(minute: int) -> None:
            assert admin.post("/event/events", json={
                "source": {"id": gw["id"]}, "type": "c8y_MAC_Event", "text": f"p{minute}",
                "time": (start + timedelta(minutes=minute)).isoformat()}).status_code == 201

        for minute in range(5):
            press(minute)
        client = CumulocityRest(sandbox.http_url, "t12345/dash-gateway",
                                "s3cret-sandbox-pw")
        pages = 0
        original = client.get_json

        def get_json(url: str, what: str, params: Any) -> Any:
            nonlocal pages
            pages += 1
            if pages == 2:
                press(30)  # a new press arrives between page 1 and page 2
            return original(url, what, params)

        monkeypatch.setattr(client, "get_json", get_json)
        until = start + timedelta(minutes=10)
        texts = [e["text"] for e in cumulocity.read_events(client, "c8y_MAC_Event", start,
                                                            until)]
        client.close()
    assert texts == ["p4", "p3", "p2", "p1", "p0"]
    assert pages == 3

