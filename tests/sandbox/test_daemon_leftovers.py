"""What a review of `run`'s loop left (issue 11's rules: never go silent, never block the loop
on the disk, a bug ends the process): a start that fails half-way closes what it opened, the
uplink's state file is written off the loop, and the press queue has a bound that loses presses
only when the outbox writer is stuck, counted and logged."""

from __future__ import annotations

import asyncio
import json
import logging
import signal
import socket
import sqlite3
import threading
from collections.abc import Callable
from pathlib import Path
from types import FrameType

import pytest

from dashkanban import health
from dashkanban.capture import Frame
from dashkanban.commands.run import Daemon
from dashkanban.config import load_settings
from dashkanban.errors import ConfigError
from dashkanban.outbox import store
from dashkanban.sandbox import Sandbox
from tests import forge
from tests.brokers import Mosquitto, free_port
from tests.sandbox.test_daemon_wiring import T0, Running, events_in, wait_until
from tests.sandbox_fixture import sandbox_config


def _macs(count: int) -> list[str]:
    return [f"ac:63:be:00:10:{n:02x}" for n in range(1, count + 1)]


def _buttons(folder: Path, count: int) -> Path:
    path = folder / "MACID.csv"
    lines = [f"b{n}, {mac}" for n, mac in enumerate(_macs(count), 1)]
    path.write_text("Name, MAC-Address\n" + "\n".join(lines) + "\n")
    return path


def test_a_start_that_fails_after_opening_the_metrics_port_closes_it_and_restores_signals(
    tmp_path: Path, sandbox: Sandbox
) -> None:
    """The button broker's ca_file is unusable (a ConfigError, exit 2) and is found after the
    metrics port was opened and the loop took the signals over: the port is free again and the
    signal handlers of before the loop are back, while the error is still being handled."""
    bad_ca = tmp_path / "ca.pem"
    bad_ca.write_text("not a certificate\n")
    port = free_port()
    config = sandbox_config(
        tmp_path, sandbox, _buttons(tmp_path, 1),
        extra=f"[metrics]\nport = {port}\n\n[mqtt_buttons]\nhost = 127.0.0.1\n"
              f"port = {free_port()}\ntls = yes\nca_file = {bad_ca}\n")

    def ours(_signum: int, _frame: FrameType | None) -> None:
        pass

    before = {sig: signal.getsignal(sig) for sig in (signal.SIGTERM, signal.SIGHUP)}
    try:
        for sig in before:
            signal.signal(sig, ours)
        daemon = Daemon(load_settings(config), _LiveSource(), signals=True)
        with pytest.raises(ConfigError) as raised:
            daemon.run()
        # `raised` keeps the traceback, and with it every frame of the failed start.
        assert str(raised.value).startswith(f"ca_file {bad_ca} is not a PEM CA bundle")
        with socket.socket() as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            probe.bind(("127.0.0.1", port))  # OSError (in use) while the port is left open
        assert signal.getsignal(signal.SIGTERM) is ours
        assert signal.getsignal(signal.SIGHUP) is ours
        state = health.read_state(tmp_path / "state" / "outbox.sqlite3")
        assert state is not None
        assert state["running"] is False
    finally:
        for sig, handler in before.items():
            signal.signal(sig, handler)


class _LiveSource:
    """A live frame source (`run(handle)`, as LiveCapture): its frames are handled on the loop
    and their presses go through the press queue, as a capture's do."""

    def __init__(self) -> None:
        self._loop: asyncio.AbstractEventLoop | None = None
        self._handle: Callable[[Frame], None] | None = None
        self.ready = threading.Event()

    async def run(self, handle: Callable[[Frame], None]) -> None:
        self._loop, self._handle = asyncio.get_running_loop(), handle
        self.ready.set()
        await asyncio.Event().wait()

    def frames(self) -> list[Frame]:
        return []

    def stop(self) -> None:
        pass

    def press(self, mac: str, stamp: float) -> None:
        """One button's DHCP DISCOVER, handled on the loop; returns once it is."""
        assert self.ready.wait(10)
        assert self._loop is not None
        assert self._handle is not None
        handle = self._handle
        frame = Frame(stamp, forge.dhcp_client_frame(mac, forge.DISCOVER))

        async def on_loop() -> None:
            handle(frame)

        asyncio.run_coroutine_threadsafe(on_loop(), self._loop).result(10)


def test_a_full_press_queue_loses_presses_counted_and_logged_once_per_stretch(
    tmp_path: Path, sandbox: Sandbox, caplog: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The outbox writer is stuck (another connection holds the SQLite file's write lock): a
    queue of 3 takes three presses behind the one being written, the next two are lost, one
    ERROR says so, the metrics count 2; once the writer is free every queued press is delivered
    and the next press fits again, with one ERROR giving the count."""
    caplog.set_level(logging.INFO, logger="dashkanban")
    # The writer must stay stuck until the test lets it go: with the 5 s busy timeout a loaded
    # machine's slow stretch let its put fail instead (an ERROR, and the queue emptied).
    monkeypatch.setattr(store, "BUSY_TIMEOUT_MS", 60_000)
    macs = _macs(8)
    config = sandbox_config(tmp_path, sandbox, _buttons(tmp_path, 8))
    outbox = tmp_path / "state" / "outbox.sqlite3"
    source = _LiveSource()
    daemon = Daemon(load_settings(config), source, press_queue=3)
    running = Running(daemon)
    try:
        source.press(macs[0], T0)
        wait_until(lambda: len(events_in(sandbox)) == 1, "the first press delivered")
        lock = sqlite3.connect(outbox, isolation_level=None)
        try:
            lock.execute("BEGIN IMMEDIATE")  # the writer's next put waits (busy timeout)
            source.press(macs[1], T0 + 1)
            queue = daemon._press_queue
            assert queue is not None
            wait_until(lambda: queue.qsize() == 0, "the press writer to take the press")
            for n in range(2, 7):
                source.press(macs[n], T0 + n)
            assert queue.qsize() == 3
            assert daemon.metrics.snapshot().presses_lost == 2
            # `outbox status` shows the stretch while it lasts, not only once it ended.
            wait_until(lambda: (health.read_state(outbox) or {}).get("presses_lost") == 2,
                       "the state file to show the 2 lost presses during the stretch")
        finally:
            lock.execute("ROLLBACK")
            lock.close()
        wait_until(lambda: len(events_in(sandbox)) == 5, "the queued presses delivered")
        source.press(macs[7], T0 + 8)
        wait_until(lambda: len(events_in(sandbox)) == 6, "the press after the stretch")
    finally:
        assert running.finish() == 0
    assert [e.split(",")[2] for e in events_in(sandbox)] == [
        f"b{n} pressed ({macs[n - 1]})" for n in (1, 2, 3, 4, 5, 8)]
    errors = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
    assert errors == [
        "the press queue is full (3 presses wait for the outbox writer: is the disk hung?); "
        "presses are lost until it has room",
        "the press queue has room again; 2 presses lost while it was full",
    ]
    assert daemon.metrics.snapshot().presses_lost == 2
    state = health.read_state(outbox)  # what `outbox status` shows
    assert state is not None
    assert (state["running"], state["presses_lost"]) == (False, 2)


def test_a_hung_state_file_write_holds_up_neither_capture_nor_delivery(
    tmp_path: Path, sandbox: Sandbox, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Every write of the uplink's state file after the first hangs (a disk that stopped
    answering an fsync) until the test lets it go: the connect still completes and a press is
    delivered meanwhile; afterwards the file holds the newest state, and at the end "not
    running"."""
    written: list[bool] = []
    release = threading.Event()
    real_write = health.write_atomic

    def hanging_write(path: Path, data: bytes, mode: int) -> None:
        if written:
            assert release.wait(30), "never released"
        real_write(path, data, mode)
        written.append(json.loads(data)["running"])

    monkeypatch.setattr(health, "write_atomic", hanging_write)
    macs = _macs(1)
    config = sandbox_config(tmp_path, sandbox, _buttons(tmp_path, 1))
    outbox = tmp_path / "state" / "outbox.sqlite3"
    source = _LiveSource()
    daemon = Daemon(load_settings(config), source)
    running = Running(daemon)
    try:
        source.press(macs[0], T0)
        wait_until(lambda: len(events_in(sandbox)) == 1, "the press delivered")
        assert written == [True]  # only the start's state: the others hang
    finally:
        release.set()
        code = running.finish()
    assert code == 0
    state = health.read_state(outbox)
    assert state is not None
    assert state["running"] is False
    assert written[-1] is False


def test_a_hung_battery_file_write_does_not_stop_the_loop(
    tmp_path: Path, sandbox: Sandbox, mosquitto: Mosquitto, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An MQTT button's battery level is kept in batteries.json (fsynced): while that write
    hangs, a network-join button's press is still captured and delivered."""
    from dashkanban.mqtt_buttons import battery
    from tests.mqtt_buttons.test_daemon_buttons import SHELLY_BATTERY, events, publish
    from tests.mqtt_buttons.test_daemon_buttons import Running as WithBroker
    from tests.mqtt_buttons.test_daemon_buttons import write_config as buttons_config

    entered, release = threading.Event(), threading.Event()
    real_write = battery.write_atomic

    def hanging_write(path: Path, data: bytes, mode: int) -> None:
        entered.set()
        assert release.wait(30), "never released"
        real_write(path, data, mode)

    monkeypatch.setattr(battery, "write_atomic", hanging_write)
    source = _LiveSource()
    with WithBroker(Daemon(load_settings(buttons_config(tmp_path, sandbox, mosquitto)),
                           source)):
        try:
            publish(mosquitto, [(SHELLY_BATTERY, b"87", False)])
            assert entered.wait(10), "the battery level was never written"
            source.press("ac:63:be:12:34:56", T0)
            wait_until(lambda: len(events(sandbox)) == 1, "the dash button's press")
            assert events(sandbox) == [("c8y_MAC_Event", "dash single (dhcp)")]
        finally:
            release.set()  # before the stop: asyncio.run waits for its worker threads
    assert json.loads((tmp_path / "state" / "batteries.json").read_text())["buttons"][
        "a4cf12f45678"]["percent"] == 87
