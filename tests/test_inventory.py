"""Inventory look-ups off the capture thread: the pipeline with `inventory.LookupQueue` over the
real RestInventoryLookup and REST client, against a real local HTTP server
(tests/kanban/c8y_server.py) that can be held (a slow tenant) or made to fail and recover."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import threading
import time
from collections.abc import Callable, Coroutine, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar

import pytest

from dashkanban.c8y.inventory import PENDING, LookupQueue
from dashkanban.c8y.rest import AsyncCumulocityRest, RestInventoryLookup
from dashkanban.capture import Frame
from dashkanban.compose import build_pipeline, load_registry
from dashkanban.config import Settings, load_settings
from dashkanban.detect.buttons import Button
from dashkanban.detect.decode import Decoder
from dashkanban.detect.pipeline import Pipeline
from dashkanban.detect.presses import Press
from tests import forge
from tests.kanban.c8y_server import Store, c8y_server

USER, PASSWORD = "t12345/dash-gateway", "s3cret"
CSV_BUTTON = Button("screws", "ac:63:be:12:34:56")
INVENTORY_MAC, INVENTORY_SERIAL = "fc:a6:67:0a:0b:0c", "fca6670a0b0c"
INVENTORY_BUTTON = Button("Aisle 4 ties", INVENTORY_MAC)
PHONE = "3c:22:fb:8e:41:07"
T0 = datetime(2026, 11, 26, 8, 0, 1, 234000, tzinfo=UTC).timestamp()
WAIT = 10.0
T = TypeVar("T")


def at(t: float) -> datetime:
    return datetime.fromtimestamp(t, UTC)


def arp(mac: str, t: float) -> Frame:
    return Frame(t, forge.arp_frame(1, mac, "0.0.0.0", "192.168.1.23"))


def dhcp(mac: str, t: float) -> Frame:
    return Frame(t, forge.dhcp_client_frame(mac, forge.DISCOVER))


def config(folder: Path, rest_url: str) -> Settings:
    (folder / "MACID.csv").write_text(f"Name, MAC-Address\n{CSV_BUTTON.name}, {CSV_BUTTON.mac}\n")
    path = folder / "config.ini"
    path.touch(mode=0o600)
    path.write_text(
        "[C8YMQTT]\ntenant = 127.0.0.1\ntenantID = t12345\nuser = dash-gateway\n"
        f"password = {PASSWORD}\nport = 1883\ntls = no\nallow_insecure = yes\n"
        f"rest_url = {rest_url}\n[buttons]\nfile = MACID.csv\nsource = both\ncache_ttl = 300\n"
    )
    return load_settings(path)


def tenant() -> Store:
    store = Store(USER, PASSWORD)
    store.add_device("201", INVENTORY_SERIAL, name=INVENTORY_BUTTON.name)
    return store


class Wired:
    """The pipeline with `LookupQueue.run()` on an event loop in a thread of the test, frames fed
    from the test's thread (as a capture beside the loop would); the answers are collected."""

    def __init__(self, settings: Settings, **options: float) -> None:
        # Backoff inside one call is the client's; 0 keeps the test fast (the policy is tested
        # in tests/c8y/test_rest.py).
        rest = AsyncCumulocityRest.from_settings(settings.c8y, backoff=0.0)
        self.source = RestInventoryLookup(settings, async_rest=rest)
        self.ready = threading.Semaphore(0)
        self.lookups = LookupQueue(self.source, notify=self.ready.release, **options)  # type: ignore[arg-type]
        self.pipeline: Pipeline = build_pipeline(settings, load_registry(settings),
                                                 inventory=self.lookups)
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, name="test-loop",
                                       daemon=True)
        self.thread.start()
        self.task = self.on_loop(self._start())

    async def _start(self) -> asyncio.Task[None]:
        return asyncio.create_task(self.lookups.run())

    def on_loop(self, coroutine: Coroutine[Any, Any, T]) -> T:
        return asyncio.run_coroutine_threadsafe(coroutine, self.loop).result(WAIT)

    def feed(self, *frames: Frame) -> list[Press]:
        return list(self.pipeline.run_presses(frames))

    def collect(self, until: Callable[[], bool]) -> list[Press]:
        """Presses from the answers, as the daemon's notify hook would collect them."""
        got: list[Press] = []
        deadline = time.monotonic() + WAIT
        while True:
            self.pipeline.answered(got.append)
            if until():
                return got
            assert time.monotonic() < deadline, "no answer from the inventory worker"
            self.ready.acquire(timeout=0.5)

    def close(self) -> None:
        async def stop() -> None:
            self.task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self.task

        self.on_loop(stop())
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(WAIT)
        self.loop.close()
        self.source.close()


@pytest.fixture
def wired_factory(tmp_path: Path) -> Iterator[Callable[..., Wired]]:
    made: list[Wired] = []

    def make(rest_url: str, **options: float) -> Wired:
        made.append(Wired(config(tmp_path, rest_url), **options))
        return made[-1]

    yield make
    for wired in made:
        wired.close()


def identity_requests(store: Store, serial: str) -> int:
    path = f"/identity/externalIds/c8y_Serial/{serial}"
    return sum(1 for _, p, _ in store.requests if p == path)


def test_a_slow_tenant_does_not_delay_the_csv_buttons(
    wired_factory: Callable[..., Wired],
) -> None:
    store = tenant()
    store.hold = threading.Event()  # the tenant answers nothing until released
    with c8y_server(store) as base:
        wired = wired_factory(base)
        try:
            # An inventory button's burst, a phone, then a CSV button: the CSV press comes out
            # at once although both look-ups are still unanswered.
            presses = wired.feed(
                arp(INVENTORY_MAC, T0), dhcp(INVENTORY_MAC, T0 + 0.4), arp(PHONE, T0 + 0.5),
                dhcp(CSV_BUTTON.mac, T0 + 1.0), dhcp(INVENTORY_MAC, T0 + 2.0),
            )
            assert presses == [Press(CSV_BUTTON, at(T0 + 1.0), "dhcp")]
            assert not store.hold.is_set()  # so the look-ups cannot have been answered
            assert wired.lookups.pending == 2
        finally:
            store.hold.set()
        answered = wired.collect(lambda: wired.lookups.pending == 0)
        # Exactly one press, with the first packet's time and trigger.
        assert answered == [Press(INVENTORY_BUTTON, at(T0), "arp")]
        # One look-up per MAC, however many packets; later sightings read the cache.
        assert identity_requests(store, INVENTORY_SERIAL) == 1
        assert identity_requests(store, "3c22fb8e4107") == 1
        later = wired.feed(arp(INVENTORY_MAC, T0 + 45), arp(PHONE, T0 + 46))
        assert later == [Press(INVENTORY_BUTTON, at(T0 + 45), "arp")]
        assert len(store.requests) == 3  # two identity look-ups and one managed object
        assert wired.pipeline.presses == 3


def test_a_failing_then_recovering_tenant_loses_no_press(
    wired_factory: Callable[..., Wired], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="dashkanban")
    store = tenant()
    # Four failures: the first look-up's three attempts and the retry's first one.
    store.fail_next = [503, 503, 503, 503]
    with c8y_server(store) as base:
        wired = wired_factory(base, retry_first=0.01)
        # The whole burst and the Amazon button's second burst 17 s later, all parked.
        assert wired.feed(arp(INVENTORY_MAC, T0), dhcp(INVENTORY_MAC, T0 + 0.3),
                          dhcp(CSV_BUTTON.mac, T0 + 1.0), dhcp(INVENTORY_MAC, T0 + 17.0)) == [
            Press(CSV_BUTTON, at(T0 + 1.0), "dhcp")
        ]
        answered = wired.collect(lambda: wired.lookups.pending == 0)
    assert answered == [Press(INVENTORY_BUTTON, at(T0), "arp")]
    assert identity_requests(store, INVENTORY_SERIAL) == 5
    assert [r.getMessage() for r in caplog.records if r.name == "dashkanban.c8y.inventory"] == [
        "cannot tell whether fc:a6:67:0a:0b:0c is a button yet (identity look-up of "
        "fca6670a0b0c: 503 general/tooManyRequests: Requests rate exceeds the limit (GET "
        "/identity/externalIds/c8y_Serial/fca6670a0b0c, 3 attempts)); asking again in 0 s"
    ]


def test_giving_up_logs_one_error_naming_the_mac(
    wired_factory: Callable[..., Wired], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="dashkanban")
    store = tenant()
    store.fail_next = [503] * 10_000
    with c8y_server(store) as base:
        wired = wired_factory(base, retry_first=0.05, give_up=0.5)
        assert wired.feed(arp(INVENTORY_MAC, T0), arp(INVENTORY_MAC, T0 + 1)) == []
        assert wired.collect(lambda: wired.lookups.pending == 0) == []
        errors = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
        assert errors == [
            "gave up asking Cumulocity whether fc:a6:67:0a:0b:0c is a button after 0 s "
            "(identity look-up of fca6670a0b0c: 503 general/tooManyRequests: Requests rate "
            "exceeds the limit (GET /identity/externalIds/c8y_Serial/fca6670a0b0c, 3 attempts)): "
            "its press at 2026-11-26T08:00:01.234+00:00 could not be attributed"
        ]
        assert wired.lookups.given_up == 1
        # One WARNING for the MAC, however many retries (an outage must not flood the log).
        assert [r.levelno for r in caplog.records if r.name == "dashkanban.c8y.inventory"] == [
            logging.WARNING, logging.ERROR]
        # Given up is not "not a button": the next sighting asks again.
        store.fail_next = []
        assert wired.feed(arp(INVENTORY_MAC, T0 + 60)) == []
        assert wired.collect(lambda: wired.lookups.pending == 0) == [
            Press(INVENTORY_BUTTON, at(T0 + 60), "arp")
        ]


def test_unknown_macs_are_dropped_and_cached(wired_factory: Callable[..., Wired]) -> None:
    store = tenant()
    with c8y_server(store) as base:
        wired = wired_factory(base)
        assert wired.feed(arp(PHONE, T0), arp(PHONE, T0 + 50)) == []
        assert wired.collect(lambda: wired.lookups.pending == 0) == []
        assert wired.feed(arp(PHONE, T0 + 100)) == []
        assert wired.lookups.pending == 0  # answered from the cache
        assert identity_requests(store, "3c22fb8e4107") == 1


def test_bounds_one_look_up_per_mac_parked_and_pending(
    wired_factory: Callable[..., Wired],
) -> None:
    store = tenant()
    store.hold = threading.Event()
    with c8y_server(store) as base:
        wired = wired_factory(base, max_pending=2, max_parked=3)
        try:
            frames = [arp(INVENTORY_MAC, T0 + i) for i in range(5)]
            frames += [arp(PHONE, T0 + 6), arp("3c:22:fb:8e:41:08", T0 + 7)]
            assert wired.feed(*frames) == []
            assert (wired.lookups.pending, wired.lookups.dropped, wired.lookups.refused) == (
                2, 2, 1)
        finally:
            store.hold.set()
        assert wired.collect(lambda: wired.lookups.pending == 0) == [
            Press(INVENTORY_BUTTON, at(T0), "arp")
        ]
        assert identity_requests(store, INVENTORY_SERIAL) == 1
        assert identity_requests(store, "3c22fb8e4108") == 0  # refused: not asked


def test_ask_answers_from_the_cache_without_the_worker(tmp_path: Path) -> None:
    store = tenant()
    with c8y_server(store) as base:
        settings = config(tmp_path, base)
        source = RestInventoryLookup(settings)
        try:
            assert source(INVENTORY_MAC) == INVENTORY_BUTTON  # fills the cache
            lookups = LookupQueue(source)  # not started: a cache hit needs no worker
            decode = Decoder(("arp",)).decode
            sighting = decode(arp(INVENTORY_MAC, T0).data, T0, None)
            assert sighting is not None
            assert lookups.ask(sighting, T0) == INVENTORY_BUTTON
            phone = decode(arp(PHONE, T0).data, T0, None)
            assert phone is not None
            assert lookups.ask(phone, T0) is PENDING
            assert lookups.pending == 1
        finally:
            source.close()


def test_replay_asks_synchronously_and_is_deterministic(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Replay: packet time is the clock, so waiting for each answer changes nothing; the same
    events come out every time, in packet order."""
    from dashkanban.cli import main

    capture = tmp_path / "burst.pcap"
    with capture.open("wb") as out:
        forge.write_pcap(out, [(f.timestamp, f.data) for f in (
            arp(PHONE, T0), arp(INVENTORY_MAC, T0 + 0.5), dhcp(INVENTORY_MAC, T0 + 0.9),
            dhcp(CSV_BUTTON.mac, T0 + 1.0), arp(PHONE, T0 + 2.0),
        )])
    store = tenant()
    with c8y_server(store) as base:
        config(tmp_path, base)
        runs = []
        for _ in range(2):
            code = main(["replay", "-c", str(tmp_path / "config.ini"), str(capture), "--dry-run",
                         "--jsonl"])
            runs.append((code, capsys.readouterr().out))
    assert runs[0] == runs[1]
    assert runs[0][0] == 0
    assert [(e["name"], e["mac"], e["time"], e["trigger"])
            for e in map(json.loads, runs[0][1].splitlines())] == [
        ("Aisle 4 ties", INVENTORY_MAC, "2026-11-26T08:00:01.734000+00:00", "arp"),
        ("screws", CSV_BUTTON.mac, "2026-11-26T08:00:02.234000+00:00", "dhcp"),
    ]


def test_replay_fails_rather_than_take_a_failed_look_up_as_unknown(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from dashkanban.cli import main

    capture = tmp_path / "burst.pcap"
    with capture.open("wb") as out:
        forge.write_pcap(out, [(T0, arp(INVENTORY_MAC, T0).data)])
    store = tenant()
    store.fail_next = [503] * 3
    with c8y_server(store) as base:
        config(tmp_path, base)
        code = main(["replay", "-c", str(tmp_path / "config.ini"), str(capture), "--dry-run",
                     "--jsonl"])
    err = capsys.readouterr().err
    assert code == 1, err
    assert err.splitlines()[-1] == (
        "error: identity look-up of fca6670a0b0c: 503 general/tooManyRequests: Requests rate "
        "exceeds the limit (GET /identity/externalIds/c8y_Serial/fca6670a0b0c, 3 attempts)"
    )


def test_the_source_holds_its_lock_only_around_the_cache(tmp_path: Path) -> None:
    """While one look-up waits for a held tenant, the cache still answers at once."""
    store = tenant()
    store.hold = threading.Event()
    with c8y_server(store) as base:
        source = RestInventoryLookup(config(tmp_path, base))
        asked = threading.Thread(target=source, args=(INVENTORY_MAC,), daemon=True)
        # A bound for a broken implementation: release the tenant after a while, so that a
        # cache blocked by the HTTP call shows up as "released first" instead of hanging.
        guard = threading.Timer(5.0, store.hold.set)
        try:
            asked.start()
            wait = time.monotonic() + WAIT
            while not store.requests:  # the look-up is in flight at the tenant
                assert time.monotonic() < wait
                time.sleep(0.01)
            guard.start()
            assert source.cached(PHONE) is not None  # MISS, answered...
            assert not store.hold.is_set()  # ...while the tenant still holds the look-up
        finally:
            guard.cancel()
            store.hold.set()
            asked.join(WAIT)
            source.close()
        assert source.cached(INVENTORY_MAC) == INVENTORY_BUTTON


def test_the_cache_is_bounded(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from dashkanban.c8y import rest

    monkeypatch.setattr(rest, "MAX_CACHED", 8)
    store = tenant()
    with c8y_server(store) as base:
        source = RestInventoryLookup(config(tmp_path, base))
        try:
            macs = [f"3c:22:fb:8e:41:{i:02x}" for i in range(20)]
            for mac in macs:
                assert source(mac) is None
                assert len(source._cache) <= 8
            assert source.cached(macs[-1]) is None  # the newest answers are kept
        finally:
            source.close()
