"""`LookupQueue.run()` as a task of an asyncio loop, as the daemon's TaskGroup runs it: look-ups
over httpx.AsyncClient against the project's sandbox (real HTTP), answers handed to the pipeline on
the loop's own thread through `notify`, bounded concurrency, a tenant that refuses and then
accepts, and a bug that ends `run()` instead of silencing the look-ups."""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from dashkanban.c8y.inventory import LookupQueue
from dashkanban.c8y.rest import RestInventoryLookup
from dashkanban.capture import Frame
from dashkanban.compose import build_pipeline, load_registry
from dashkanban.config import Settings, load_settings
from dashkanban.detect.buttons import Button
from dashkanban.detect.pipeline import Pipeline
from dashkanban.detect.presses import Press
from dashkanban.sandbox import Sandbox
from tests import forge
from tests.kanban.c8y_server import Store, c8y_server
from tests.sandbox_fixture import SANDBOX_PASSWORD, rest, sandbox_options

MAC, SERIAL, NAME = "fc:a6:67:0a:0b:0c", "fca6670a0b0c", "Aisle 4 ties"
PHONE = "3c:22:fb:8e:41:07"
T0 = datetime(2026, 11, 26, 8, 0, 1, 234000, tzinfo=UTC).timestamp()
WAIT = 10.0


def at(t: float) -> datetime:
    return datetime.fromtimestamp(t, UTC)


def arp(mac: str, t: float) -> Frame:
    return Frame(t, forge.arp_frame(1, mac, "0.0.0.0", "192.168.1.23"))


def config(folder: Path, rest_url: str, password: str = SANDBOX_PASSWORD) -> Settings:
    path = folder / "config.ini"
    path.write_text(
        "[C8YMQTT]\ntenant = 127.0.0.1\ntenantID = t12345\nuser = dash-gateway\n"
        f"password = {password}\nport = 1883\ntls = no\nallow_insecure = yes\n"
        f"rest_url = {rest_url}\n[buttons]\nsource = inventory\ncache_ttl = 300\n"
    )
    path.chmod(0o600)
    return load_settings(path)


def add_button(sandbox: Sandbox) -> None:
    with rest(sandbox) as admin:
        made = admin.post("/inventory/managedObjects", headers={"Accept": "application/json"},
                          json={"name": NAME, "type": "c8y_DashButton"}).json()
        assert admin.post(f"/identity/globalIds/{made['id']}/externalIds",
                          json={"type": "c8y_Serial", "externalId": SERIAL}).status_code == 201


class OnTheLoop:
    """The daemon's wiring on one loop: frames fed on the loop, `notify` collects the answers'
    presses there (recording the thread it was called on)."""

    def __init__(self, settings: Settings, **options: Any) -> None:
        self.source = RestInventoryLookup(settings)
        self.lookups = LookupQueue(self.source, notify=self._notified, **options)
        self.pipeline: Pipeline = build_pipeline(settings, load_registry(settings),
                                                 inventory=self.lookups)
        self.presses: list[Press] = []
        self.notified_on: set[str] = set()
        self.changed = asyncio.Event()

    def _notified(self) -> None:
        self.notified_on.add(threading.current_thread().name)
        self.pipeline.answered(self.presses.append)
        self.changed.set()

    def feed(self, *frames: Frame) -> list[Press]:
        return list(self.pipeline.run_presses(frames))

    async def until(self, done: Callable[[], bool]) -> None:
        async with asyncio.timeout(WAIT):
            while not done():
                self.changed.clear()
                await self.changed.wait()


def test_answers_come_on_the_loop_thread_through_notify(tmp_path: Path) -> None:
    with Sandbox(sandbox_options()) as sandbox:
        add_button(sandbox)
        wired = OnTheLoop(config(tmp_path, sandbox.http_url))

        async def main() -> list[Press]:
            async with asyncio.TaskGroup() as group:
                task = group.create_task(wired.lookups.run())
                # A burst of the button and a phone: both parked, nothing out at once.
                assert wired.feed(arp(MAC, T0), arp(PHONE, T0 + 0.2), arp(MAC, T0 + 0.4)) == []
                await wired.until(lambda: wired.lookups.pending == 0)
                # The cache answers the next sighting at once, without a look-up.
                later = wired.feed(arp(MAC, T0 + 45))
                task.cancel()
            return later

        later = asyncio.run(main())
    assert wired.presses == [Press(Button(NAME, MAC), at(T0), "arp")]
    assert later == [Press(Button(NAME, MAC), at(T0 + 45), "arp")]
    assert wired.notified_on == {threading.current_thread().name}  # the loop's thread
    assert wired.source.requests == 3  # identity + managed object, identity of the phone


def test_a_refusing_tenant_is_asked_again_after_retry_max_and_then_answers(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """The password is wrong on the tenant (401: no hammering, the next try after retry_max);
    once the tenant takes it again, the parked burst becomes the press, with its first time.
    However late the password is fixed on a loaded machine, each refused try is one request and
    one log line (WARNING once, then DEBUG), and the answer two requests."""
    caplog.set_level(logging.WARNING, logger="dashkanban")
    caplog.set_level(logging.DEBUG, logger="dashkanban.c8y.inventory")
    with Sandbox(sandbox_options()) as sandbox:
        add_button(sandbox)
        sandbox.set_password("changed-on-the-tenant")
        wired = OnTheLoop(config(tmp_path, sandbox.http_url), retry_max=0.3)

        async def main() -> None:
            async with asyncio.TaskGroup() as group:
                task = group.create_task(wired.lookups.run())
                assert wired.feed(arp(MAC, T0), arp(MAC, T0 + 0.3)) == []
                async with asyncio.timeout(WAIT):  # until the refusal is in (its WARNING)
                    while not any(r.levelno >= logging.WARNING for r in caplog.records):
                        await asyncio.sleep(0.01)
                await asyncio.to_thread(sandbox.set_password, SANDBOX_PASSWORD)
                await wired.until(lambda: wired.lookups.pending == 0)
                task.cancel()

        asyncio.run(main())
    refusal = ("cannot tell whether fc:a6:67:0a:0b:0c is a button yet (Cumulocity refused the "
               "login of t12345/dash-gateway (401): check tenantID, user and password); asking "
               "again in 0 s")
    tries = [(r.levelname, r.getMessage()) for r in caplog.records
             if r.getMessage().startswith("cannot tell")]
    assert wired.presses == [Press(Button(NAME, MAC), at(T0), "arp")]
    assert tries == [("WARNING", refusal)] + [("DEBUG", refusal)] * (len(tries) - 1)
    # Each refusal once (not retried within the call), then identity + managed object.
    assert wired.source.requests == len(tries) + 2
    assert [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING] == [refusal]


def test_at_most_concurrency_look_ups_at_once(tmp_path: Path) -> None:
    """Six MACs at once, concurrency 2, a slow tenant: at most two look-ups in flight, counted
    where they happen (the tenant's requests served at once, the source's look-ups under way),
    not by waiting for a third that might be merely late."""
    store = Store("t12345/dash-gateway", SANDBOX_PASSWORD)
    store.add_device("201", SERIAL, name=NAME)
    store.hold = threading.Event()  # a slow tenant: every request waits until released
    macs = [f"3c:22:fb:8e:41:{i:02x}" for i in range(6)]
    with c8y_server(store) as base:
        wired = OnTheLoop(config(tmp_path, base), concurrency=2)
        under_way = [0, 0]  # the source's look-ups now, and the most at once
        look_up = wired.source.look_up

        async def counted(mac: str) -> Button | None:
            under_way[0] += 1
            under_way[1] = max(under_way)
            try:
                return await look_up(mac)
            finally:
                under_way[0] -= 1

        wired.source.look_up = counted  # type: ignore[method-assign]  # the real one, counted

        async def main() -> list[int]:
            seen = []
            async with asyncio.TaskGroup() as group:
                task = group.create_task(wired.lookups.run())
                wired.feed(*(arp(mac, T0 + i) for i, mac in enumerate(macs)))
                async with asyncio.timeout(WAIT):
                    while len(store.requests) < 2:
                        await asyncio.sleep(0.01)
                # Without the limit, all six would have entered look_up at once, in the loop's
                # turns before any request could reach the tenant.
                assert under_way == [2, 2]
                seen.append(len(store.requests))
                store.hold.set()  # type: ignore[union-attr]
                await wired.until(lambda: wired.lookups.pending == 0)
                seen.append(len(store.requests))
                task.cancel()
            return seen

        assert asyncio.run(main()) == [2, 6]
    assert store.peak == 2
    assert under_way == [0, 2]
    assert wired.presses == []  # phones, all of them
    asked = [path for _, path, _ in store.requests]
    wanted = [f"/identity/externalIds/c8y_Serial/{mac.replace(':', '')}" for mac in macs]
    # The first two sighted are the first two asked; their requests travel on two connections at
    # once, so which of them reaches the tenant first is a race (seen under load).
    assert set(asked[:2]) == set(wanted[:2])
    assert sorted(asked) == wanted  # each MAC once


def test_a_bug_ends_run_instead_of_silencing_the_look_ups(tmp_path: Path) -> None:
    with Sandbox(sandbox_options()) as sandbox:
        add_button(sandbox)
        wired = OnTheLoop(config(tmp_path, sandbox.http_url))

        def broken() -> None:
            raise RuntimeError("a bug in the notify hook")

        wired.lookups.notify = broken

        async def main() -> None:
            run = asyncio.create_task(wired.lookups.run())
            wired.feed(arp(MAC, T0))
            await asyncio.wait_for(run, WAIT)

        with pytest.raises(ExceptionGroup) as info:
            asyncio.run(main())
    assert [str(e) for e in info.value.exceptions] == ["a bug in the notify hook"]


def test_a_bug_in_a_look_up_ends_run_instead_of_being_retried(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture,
) -> None:
    """Only the REST client's errors (a DashkanbanError such as RestError, an OSError) are a
    look-up to try again; a bug in the look-up used to be logged and retried for 10 minutes,
    the daemon living on. It ends `run()` (the daemon then exits 1), logged by the supervisor
    only."""
    with Sandbox(sandbox_options()) as sandbox:
        add_button(sandbox)
        wired = OnTheLoop(config(tmp_path, sandbox.http_url))

        def broken(self: RestInventoryLookup, mac: str, button: Button | None) -> Button | None:
            raise TypeError("injected: a bug after the inventory answered")

        monkeypatch.setattr(RestInventoryLookup, "_remember", broken)

        async def main() -> None:
            run = asyncio.create_task(wired.lookups.run())
            wired.feed(arp(MAC, T0))
            await asyncio.wait_for(run, WAIT)

        with pytest.raises(ExceptionGroup) as info:
            asyncio.run(main())
    assert [repr(e) for e in info.value.exceptions] == [
        "TypeError('injected: a bug after the inventory answered')"]
    assert "cannot tell whether" not in caplog.text  # not taken for a failed look-up
    assert "failed unexpectedly" not in caplog.text  # the supervisor says it, once


def test_stopping_while_the_capture_asks_about_a_new_mac_still_closes_the_client(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """run()'s way out counts the MACs still being looked up while the capture's thread may ask
    about one more (played at the worst moment: a waiting MAC whose count makes the capture
    ask): no "dictionary changed size during iteration", and the HTTP client is closed."""
    from dashkanban.detect.decode import Decoder

    caplog.set_level(logging.WARNING, logger="dashkanban.c8y.inventory")
    store = Store("t12345/dash-gateway", SANDBOX_PASSWORD)
    store.hold = threading.Event()  # the phone's look-up stays in flight
    late = Decoder(("arp",)).decode(arp("3c:22:fb:8e:41:99", T0).data, T0, None)
    assert late is not None
    with c8y_server(store) as base:
        wired = OnTheLoop(config(tmp_path, base))
        lookups = wired.lookups

        class AskedWhileCounted:
            @property
            def answered(self) -> bool:
                assert late is not None
                lookups.ask(late, 0.0)  # as the capture's thread would, just now
                return False

        async def main() -> None:
            run = asyncio.create_task(lookups.run())
            wired.feed(arp(PHONE, T0))
            async with asyncio.timeout(WAIT):
                while not store.requests:
                    await asyncio.sleep(0.01)
            assert wired.source._async_rest is not None  # the client is open
            lookups._waiting["3c:22:fb:8e:41:98"] = AskedWhileCounted()  # type: ignore[assignment]
            run.cancel()
            with pytest.raises(asyncio.CancelledError):
                await run

        try:
            asyncio.run(main())
        finally:
            store.hold.set()
    assert wired.source._async_rest is None  # closed on the way out
    assert lookups.pending == 3  # the late MAC was taken: its look-up waits for the next run
    assert [r.getMessage() for r in caplog.records] == [
        "stopping with 2 MAC(s) still being looked up in the inventory; their sightings are "
        "not counted as presses"
    ]
