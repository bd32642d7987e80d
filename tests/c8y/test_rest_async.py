"""The event loop's REST client (`AsyncCumulocityRest`) and the inventory source's coroutine,
against the project's sandbox over real HTTP: the same calls, answers, retries and messages as
the blocking client, because both carry out the same exchanges (`RestCalls`)."""

from __future__ import annotations

import asyncio
import socket
import threading
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from dashkanban.c8y.rest import (
    AsyncCumulocityRest,
    CumulocityRest,
    RestError,
    RestInventoryLookup,
    RestRefusedError,
)
from dashkanban.c8y.token import TokenSource
from dashkanban.config import Settings, load_settings
from dashkanban.detect.buttons import Button
from dashkanban.sandbox import Sandbox
from tests.sandbox_fixture import SANDBOX_PASSWORD, SANDBOX_USER, rest, sandbox_options

SERIAL, MAC = "ac63be123456", "ac:63:be:12:34:56"
PHONE = "3c:22:fb:8e:41:07"
REFUSED = ("Cumulocity refused the login of t12345/dash-gateway (401): check tenantID, user and "
           "password")


def add_button(sandbox: Sandbox, serial: str = SERIAL, name: str = "Aisle 2 screws") -> str:
    with rest(sandbox) as admin:
        made = admin.post("/inventory/managedObjects", headers={"Accept": "application/json"},
                          json={"name": name, "type": "c8y_DashButton"}).json()
        assert admin.post(f"/identity/globalIds/{made['id']}/externalIds",
                          json={"type": "c8y_Serial", "externalId": serial}).status_code == 201
    return str(made["id"])


def config(folder: Path, rest_url: str) -> Settings:
    path = folder / "config.ini"
    path.write_text(
        "[C8YMQTT]\ntenant = 127.0.0.1\ntenantID = t12345\nuser = dash-gateway\n"
        f"password = {SANDBOX_PASSWORD}\nport = 1883\ntls = no\nallow_insecure = yes\n"
        f"rest_url = {rest_url}\n[buttons]\nsource = inventory\ncache_ttl = 300\n"
    )
    path.chmod(0o600)
    return load_settings(path)


def client(url: str, **options: Any) -> AsyncCumulocityRest:
    return AsyncCumulocityRest(url, SANDBOX_USER, SANDBOX_PASSWORD, **options)


def free_port() -> int:
    with socket.create_server(("127.0.0.1", 0)) as probe:
        return int(probe.getsockname()[1])


def test_the_calls_against_the_sandbox() -> None:
    with Sandbox(sandbox_options()) as sandbox:
        mo_id = add_button(sandbox)

        async def main() -> tuple[object, ...]:
            async with client(sandbox.http_url) as c8y:
                found = await c8y.managed_object_id(SERIAL)
                unknown = await c8y.managed_object_id("fca6670a0b0c")
                await c8y.update_managed_object(mo_id, {"c8y_Kanban": {"bin": "A3"}})
                managed = await c8y.managed_object(mo_id)
                gone = await c8y.managed_object("999999")
                return found, unknown, (managed or {}).get("c8y_Kanban"), gone, c8y.requests

        assert asyncio.run(main()) == (mo_id, None, {"bin": "A3"}, None, 5)
        device = sandbox.device(SERIAL) or {}
        assert device["c8y_Kanban"] == {"bin": "A3"}
        assert device["name"] == "Aisle 2 screws"  # only the fragment was written


def test_refused_then_accepted_with_the_blocking_clients_message() -> None:
    """A password changed on the tenant: 401 at once (not retried), with the same line as the
    blocking client; once the tenant takes the password again the same client is answered."""
    with Sandbox(sandbox_options()) as sandbox:
        add_button(sandbox)
        sandbox.set_password("changed-on-the-tenant")
        with (CumulocityRest(sandbox.http_url, SANDBOX_USER, SANDBOX_PASSWORD) as blocking,
              pytest.raises(RestRefusedError) as sync_info):
            blocking.managed_object_id(SERIAL)

        async def main() -> tuple[str, int, str | None, int]:
            async with client(sandbox.http_url) as c8y:
                with pytest.raises(RestRefusedError) as info:
                    await c8y.managed_object_id(SERIAL)
                refused_after = c8y.requests
                await asyncio.to_thread(sandbox.set_password, SANDBOX_PASSWORD)
                return str(info.value), refused_after, await c8y.managed_object_id(SERIAL), \
                    c8y.requests

        message, refused_after, found, requests = asyncio.run(main())
    assert message == str(sync_info.value) == REFUSED
    assert SANDBOX_PASSWORD not in message
    assert refused_after == 1  # a refusal is not retried
    assert found is not None
    assert requests == 2


def test_transport_errors_are_retried_with_backoff_until_the_tenant_answers() -> None:
    """Nothing listens at first (connection refused); the sandbox comes up during the backoff
    and the third attempt is answered."""
    port = free_port()
    waits: list[float] = []
    started: list[Sandbox] = []

    async def sleep(seconds: float) -> None:
        waits.append(seconds)
        if len(waits) == 2:
            started.append(Sandbox(sandbox_options(http_port=port)).start())
            add_button(started[0])

    async def main() -> str | None:
        async with client(f"http://127.0.0.1:{port}", sleep=sleep, jitter=lambda: 1.0) as c8y:
            return await c8y.managed_object_id(SERIAL)

    try:
        assert asyncio.run(main()) is not None
    finally:
        for sandbox in started:
            sandbox.stop()
    assert waits == [0.5, 1.0]  # the policy's ceilings (jitter at its top)


def test_unreachable_is_the_same_error_in_both_clients() -> None:
    url = f"http://127.0.0.1:{free_port()}"
    with (CumulocityRest(url, SANDBOX_USER, SANDBOX_PASSWORD, sleep=lambda s: None) as blocking,
          pytest.raises(RestError) as sync_info):
        blocking.managed_object_id(SERIAL)

    async def no_wait(seconds: float) -> None:
        pass

    async def main() -> str:
        async with client(url, sleep=no_wait) as c8y:
            with pytest.raises(RestError) as info:
                await c8y.managed_object_id(SERIAL)
            return str(info.value)

    message = asyncio.run(main())
    assert message.startswith("identity look-up of ac63be123456: cannot reach Cumulocity: "
                              "ConnectError: ")
    assert message.endswith(" (GET /identity/externalIds/c8y_Serial/ac63be123456, 3 attempts)")
    assert message == str(sync_info.value)


def test_the_inventory_source_on_the_loop_shares_the_cache(tmp_path: Path) -> None:
    with Sandbox(sandbox_options()) as sandbox:
        add_button(sandbox)
        source = RestInventoryLookup(config(tmp_path, sandbox.http_url))

        async def main() -> list[Button | None]:
            try:
                answers = [await source.look_up(MAC), await source.look_up(PHONE)]
                answers += [await source.look_up(MAC), await source.look_up(PHONE)]
                return answers
            finally:
                await source.aclose()

        assert asyncio.run(main()) == [Button("Aisle 2 screws", MAC), None] * 2
        assert source.requests == 3  # identity and managed object, identity; then the cache
        assert source(MAC) == Button("Aisle 2 screws", MAC)  # the blocking way reads it too
        assert source.requests == 3
        source.close()


def test_a_cancelled_call_aborts_the_request_under_way() -> None:
    """Cancelling the task (the daemon stopping) ends a call stuck on a tenant that accepted
    the connection but answers nothing."""

    async def main() -> bool:
        accepted = asyncio.Event()

        async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            accepted.set()
            await reader.read()  # never answers
            writer.close()

        server = await asyncio.start_server(silent, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        async with server, client(f"http://127.0.0.1:{port}") as c8y:
            call = asyncio.create_task(c8y.managed_object_id(SERIAL))
            await asyncio.wait_for(accepted.wait(), 5)
            call.cancel()
            with pytest.raises(asyncio.CancelledError):
                await asyncio.wait_for(call, 5)
            return call.cancelled()

    assert asyncio.run(main())


def test_waiting_for_a_device_token_does_not_block_the_loop() -> None:
    """A certificate device's first call waits for its token (it comes over MQTT, here from a
    thread once the loop has ticked 5 times since the request, bounded): the loop keeps running
    meanwhile, then the call carries it. (A 0.3 s timer could come before 5 ticks of a loop
    starved on a loaded machine; a blocked loop never ticks, and then gets it after 10 s.)"""
    jwt = "eyJhbGciOiJIUzI1NiJ9.eyJpYXQiOjAsImV4cCI6NjAwfQ.c2ln"
    tokens = TokenSource()
    ticks = [0]
    asked: list[int] = []

    def offer_after_ticks() -> None:
        deadline = time.monotonic() + 10
        while ticks[0] < asked[0] + 5 and time.monotonic() < deadline:
            time.sleep(0.01)
        tokens.offer(jwt)

    def request() -> None:
        asked.append(ticks[0])
        threading.Thread(target=offer_after_ticks, daemon=True).start()

    tokens.set_request(request)

    async def main() -> tuple[str | None, list[tuple[int, str]]]:
        seen: list[tuple[int, str]] = []

        async def tick() -> None:
            while True:
                await asyncio.sleep(0.01)
                ticks[0] += 1

        async def tenant(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            head = (await reader.readuntil(b"\r\n\r\n")).decode()
            auth = [line.split(": ", 1)[1] for line in head.split("\r\n")
                    if line.lower().startswith("authorization:")]
            seen.append((ticks[0], auth[0] if auth else ""))
            writer.write(b"HTTP/1.1 404 Not Found\r\nContent-Length: 2\r\n\r\n{}")
            await writer.drain()
            writer.close()

        ticker = asyncio.create_task(tick())
        server = await asyncio.start_server(tenant, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        async with server, AsyncCumulocityRest(f"http://127.0.0.1:{port}", "t12345/device_gw",
                                               None, tokens=tokens) as c8y:
            found = await c8y.managed_object_id(SERIAL)
        ticker.cancel()
        return found, seen

    found, seen = asyncio.run(main())
    assert found is None
    assert [auth for _, auth in seen] == [f"Bearer {jwt}"]
    assert len(asked) == 1
    assert seen[0][0] - asked[0] >= 5  # ticks while the token was awaited: a blocked loop has none


def test_one_constructor_for_both_clients() -> None:
    # The blocking and the async client were built by two twin constructors; one now builds
    # both, each adding only its httpx client and how it waits.
    import time

    from dashkanban.c8y.rest import _Client

    assert "__init__" not in CumulocityRest.__dict__
    assert "__init__" not in AsyncCumulocityRest.__dict__
    blocking = CumulocityRest("http://127.0.0.1:9", "t1/u", "pw")
    looped = AsyncCumulocityRest("http://127.0.0.1:9", "t1/u", "pw")
    assert isinstance(blocking, _Client)
    assert isinstance(looped, _Client)
    assert (type(blocking._client), blocking._sleep) == (httpx.Client, time.sleep)
    assert (type(looped._client), looped._sleep) == (httpx.AsyncClient, asyncio.sleep)
    options = [dict(client._http_options) for client in (blocking, looped)]
    assert [type(o.pop("auth")) for o in options] == [httpx.BasicAuth, httpx.BasicAuth]
    assert options[0] == options[1]
    blocking.close()
    asyncio.run(looped.aclose())
