"""Issue 6, item 2: every fault injected for real while the daemon runs, and after each the exact
presses, in order, seen by an independent subscriber on the broker.

The parts are real: mosquitto over TLS with a password file, the daemon's SQLite outbox on disk,
a TCP proxy that resets connections, child processes killed with SIGKILL, a tmpfs that fills up.
Each press is one DHCP DISCOVER of its own button, so every press has exactly one `400` line.
Duplicates are tolerated only for presses whose PUBACK was lost: the broker had the message (the
subscriber saw it) while the row was still in the outbox when the connection or the process died.
`check_delivered` asserts that, and that first arrivals are in press order with nothing missing.
"""

from __future__ import annotations

import logging
import signal
import sqlite3
from collections.abc import Iterator
from pathlib import Path

import pytest

from dashkanban.c8y.mqtt import MAX_REFUSALS
from tests.brokers import Mosquitto, TlsFiles, free_port
from tests.c8y.support import Recorder
from tests.conftest import BROKER_PASSWORD, BROKER_USER, _need_mosquitto
from tests.e2e.faultkit import (
    ChildDaemon,
    Message,
    Press,
    RunningDaemon,
    by_serial,
    check_delivered,
    events_of,
    lost_pubacks,
    presses,
    queued_serials,
    wait_until,
    write_config,
)
from tests.faults import ResetProxy, revoke_password, small_filesystem


@pytest.fixture
def proxy(mosquitto_tls: Mosquitto) -> Iterator[ResetProxy]:
    with ResetProxy(mosquitto_tls.port) as p:
        yield p


def delivered(recorder: Recorder) -> int:
    """Distinct presses the subscriber has seen."""
    return len(set(events_of(recorder.messages)))


def wait_delivered(recorder: Recorder, count: int, timeout: float = 30.0) -> None:
    wait_until(lambda: delivered(recorder) >= count, timeout, f"{count} presses on the broker")


GATEWAY = "dashkanban-gw-01"  # the daemon's client id


def ended(broker: Mosquitto, client_id: str = GATEWAY) -> int:
    """How many connections of `client_id` mosquitto has logged the end of (a reset, a closed
    socket or a DISCONNECT): it logs that once it has read what the connection sent."""
    return sum(1 for line in broker.log_text().splitlines()
               if f"Client {client_id} disconnected" in line
               or f"Client {client_id} closed its connection" in line
               or f"Socket error on client {client_id}," in line)


def settle(recorder: Recorder, broker: Mosquitto, connections: int) -> list[Message]:
    """Everything the broker routed from the daemon's first `connections` connections, now
    ended: mosquitto routes each message as it reads it, so once it has logged the end of the
    last one, a marker published after that reaches the subscriber behind all of them. (A pause
    with nothing new was not proof: a loaded mosquitto could route one later, which then came
    twice, resent, without being counted as a lost PUBACK.)"""
    wait_until(lambda: ended(broker) >= connections, what=f"mosquitto to end connection "
               f"{connections} of the daemon")
    marker = ("test/settled", f"after connection {connections}")
    recorder.publish(*marker)
    wait_until(lambda: marker in recorder.messages, what="the marker")
    return list(recorder.messages)


# -- (a) the broker stops and comes back -------------------------------------------------------


def test_broker_stops_and_comes_back_while_presses_keep_arriving(
    tmp_path: Path, mosquitto_tls: Mosquitto, recorder: Recorder, proxy: ResetProxy
) -> None:
    # The daemon goes through a proxy only so that it cannot reach the restarted broker before
    # the test's subscriber is back: a message routed to nobody would look lost.
    config = write_config(tmp_path, mosquitto_tls, port=proxy.port, buttons=60)
    run = RunningDaemon.from_config(config)
    try:
        run.press(presses(0, 20))
        wait_delivered(recorder, 20)
        assert run.daemon.outbox is not None
        assert run.daemon.uplink is not None
        wait_until(lambda: run.daemon.outbox.count() == 0, what="the outbox to empty")
        mosquitto_tls.stop()
        wait_until(lambda: not run.daemon.uplink.connected, what="the daemon to see it")
        lost = lost_pubacks(tmp_path / "outbox.sqlite3", recorder.messages, presses(0, 20))
        run.press(presses(20, 40))  # the broker is down: queued, in order
        wait_until(lambda: run.queued() == 40, what="40 presses queued")
        assert queued_serials(tmp_path / "outbox.sqlite3") == list(by_serial(presses(20, 40)))
        proxy.refuse(True)
        mosquitto_tls.start()
        recorder.wait_subscribed(2)
        proxy.refuse(False)
        run.press(presses(40, 60))  # and more while the daemon reconnects
        wait_delivered(recorder, 60)
        wait_until(lambda: run.daemon.outbox.count() == 0, what="the outbox to empty")
    finally:
        assert run.stop() == 0
    check_delivered(recorder.messages, presses(0, 60), lost_pubacks=lost)
    snapshot = run.daemon.metrics.snapshot()
    assert (snapshot.presses, snapshot.queued, snapshot.delivered, snapshot.reconnects) == (
        60, 60, 60, 1)


# -- (b) the network resets connections mid-publish -------------------------------------------


def test_connections_reset_during_a_burst_lose_nothing(
    tmp_path: Path, mosquitto_tls: Mosquitto, recorder: Recorder, proxy: ResetProxy
) -> None:
    burst = presses(0, 300)
    outbox = tmp_path / "outbox.sqlite3"
    config = write_config(tmp_path, mosquitto_tls, port=proxy.port, buttons=len(burst))
    run = RunningDaemon.from_config(config)
    lost: set[Message] = set()
    try:
        assert run.daemon.uplink is not None
        wait_until(lambda: run.daemon.uplink.connected, what="the uplink")
        courier = run.daemon.courier
        assert courier is not None
        # Three cuts, each while messages are surely in flight: the PUBACKs of a third of the
        # burst are held back when the cut comes (a fast daemon could otherwise have had all of
        # them acknowledged before the subscriber, which lags it, saw the first forty).
        for cut, chunk in enumerate((burst[:100], burst[100:200], burst[200:]), start=1):
            wait_until(lambda: run.daemon.uplink.connected, what="the uplink (again)")
            proxy.hold(True)
            run.press(chunk)
            wait_until(lambda: courier.in_flight > 0, what="messages in flight")
            proxy.refuse(True)  # the network is down: no reconnect until we have looked
            assert proxy.cut() == 1
            wait_until(lambda: not run.daemon.uplink.connected, what="the daemon to see it")
            lost |= lost_pubacks(outbox, settle(recorder, mosquitto_tls, cut), burst)
            proxy.hold(False)  # nothing held is left: it died with the connection
            proxy.refuse(False)
        wait_delivered(recorder, len(burst))
        wait_until(lambda: run.daemon.outbox.count() == 0, what="the outbox to empty")
        assert courier.resent > 0  # the cuts did hit messages in flight
    finally:
        assert run.stop() == 0
    check_delivered(recorder.messages, burst, lost_pubacks=lost)
    # One connection at the start and one after each cut (the last cut leaves rows to resend).
    assert proxy.accepted == 4
    snapshot = run.daemon.metrics.snapshot()
    assert (snapshot.queued, snapshot.delivered, snapshot.reconnects) == (
        300, 300, proxy.accepted - 1)


# -- (c) SIGKILL between queueing and PUBACK ---------------------------------------------------


def test_sigkill_between_queueing_and_puback_then_restart(
    tmp_path: Path, mosquitto_tls: Mosquitto, recorder: Recorder, proxy: ResetProxy
) -> None:
    """The broker takes presses 10..19 but their PUBACKs are held back by the proxy; the daemon
    is killed with the rows still queued. The next daemon sends them again: each arrives twice,
    which is the at-least-once promise for a lost PUBACK. Nothing else repeats."""
    outbox = tmp_path / "outbox.sqlite3"
    config = write_config(tmp_path, mosquitto_tls, port=proxy.port, buttons=30)
    child = ChildDaemon(config, tmp_path / "daemon.log")
    try:
        child.wait_log("dashkanban-gw-01 ready")
        child.press(presses(0, 10))
        wait_delivered(recorder, 10)
        wait_until(lambda: queued_serials(outbox) == [], what="the outbox to empty")
        proxy.hold(True)
        child.press(presses(10, 20))
        assert child.wait_done(20) == 20  # each put has returned
        wait_delivered(recorder, 20)  # and the broker has every one
        assert queued_serials(outbox) == list(by_serial(presses(10, 20)))  # no PUBACK came
    finally:
        child.kill()
    assert child.process.returncode == -signal.SIGKILL
    lost = lost_pubacks(outbox, settle(recorder, mosquitto_tls, 1), presses(0, 20))
    assert lost == {p.message for p in presses(10, 20)}
    assert proxy.hold(False) == 0  # the PUBACKs died with the connection

    again = ChildDaemon(config, tmp_path / "daemon.log")
    try:
        again.wait_log("dashkanban running: 30 buttons")
        again.press(presses(20, 30))
        wait_until(lambda: len(events_of(recorder.messages)) >= 40, what="40 events")
        wait_until(lambda: queued_serials(outbox) == [], what="the outbox to empty")
    finally:
        assert again.terminate() == 0
    assert "10 events queued" in again.log_text()  # the start line of the second daemon
    check_delivered(recorder.messages, presses(0, 30), lost_pubacks=lost)
    arrived = events_of(recorder.messages)
    assert [arrived.count(p.message) for p in presses(0, 30)] == [1] * 10 + [2] * 10 + [1] * 10


# -- (d) power loss: killed during a burst -----------------------------------------------------


def test_killed_during_a_burst_the_outbox_is_intact_and_every_queued_press_is_delivered(
    tmp_path: Path, mosquitto_tls: Mosquitto, recorder: Recorder
) -> None:
    """SIGKILL while presses are being queued and acknowledged at the same time, as a power cut
    would stop it. `done N` lines tell which puts had returned; one more may have committed."""
    burst = presses(0, 400)
    outbox = tmp_path / "outbox.sqlite3"
    config = write_config(tmp_path, mosquitto_tls, buttons=len(burst))
    child = ChildDaemon(config, tmp_path / "daemon.log")
    try:
        child.wait_log("dashkanban-gw-01 ready")
        child.press(burst)
        assert child.wait_done(120) >= 120
    finally:
        child.kill()
    done = child.done
    assert 120 <= done < len(burst)  # killed mid-burst
    db = sqlite3.connect(outbox)
    assert db.execute("PRAGMA integrity_check").fetchall() == [("ok",)]
    db.close()
    queued = queued_serials(outbox)
    assert set(queued) <= set(by_serial(burst[: done + 1]))  # nothing never pressed
    lost = lost_pubacks(outbox, settle(recorder, mosquitto_tls, 1), burst)

    again = ChildDaemon(config, tmp_path / "again.log")
    try:
        # Wait for the start: the outbox may have been empty already, and a SIGTERM that comes
        # before the handlers are installed ends Python with -15 rather than the drain's 0.
        again.wait_log("dashkanban-gw-01 ready")
        wait_until(lambda: queued_serials(outbox) == [], 30, "the outbox to empty")
        wait_delivered(recorder, done)
    finally:
        assert again.terminate() == 0
    check_delivered(recorder.messages, burst[:done], maybe=burst[done: done + 1],
                    lost_pubacks=lost)


# -- (e) the disk fills up ---------------------------------------------------------------------


def test_a_full_disk_refuses_new_presses_loudly_keeps_the_queued_ones_and_recovers(
    tmp_path: Path, mosquitto_tls: Mosquitto, recorder: Recorder, proxy: ResetProxy,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO)
    with small_filesystem(tmp_path / "disk", "512k") as disk:
        outbox = disk / "outbox.sqlite3"
        ballast = disk / "ballast"
        ballast.write_bytes(b"\0" * 160 * 1024)  # freed later, to show recovery
        config = write_config(tmp_path / "etc", mosquitto_tls, port=proxy.port, buttons=300,
                              outbox=outbox)
        run = RunningDaemon.from_config(config)
        pressed = 0
        queued: list[int] = []
        refused: list[int] = []

        def press_one() -> bool:
            """One press; True when it was queued."""
            nonlocal pressed
            errors = len(_refusals(caplog))
            run.press(presses(pressed, pressed + 1))
            pressed += 1
            wait_until(lambda: run.source.consumed == pressed, what="the press handled")
            ok = len(_refusals(caplog)) == errors
            (queued if ok else refused).append(pressed - 1)
            return ok

        try:
            for _ in range(5):
                assert press_one()
            wait_delivered(recorder, 5)
            mosquitto_tls.stop()  # from now on the outbox only grows
            assert run.daemon.uplink is not None
            wait_until(lambda: not run.daemon.uplink.connected, what="the daemon to see it")
            while pressed < 250 and press_one():  # bounded: 250 rows cannot fit in 512 KiB
                pass
            assert refused == [pressed - 1]
            assert not press_one()  # still full: refused again, the same way
            first = _refusals(caplog)[0]
            button = f"button_{refused[0]:05d}"
            assert first.startswith(f"{button} pressed at ")
            assert first.endswith(
                f" but could not be queued: {outbox}: the disk is full (queueing an event failed;"
                f" everything queued before is kept); free space on the file system of {disk}")
            waiting = queued_serials(outbox)
            assert waiting == list(by_serial(Press(q) for q in queued[5:]))

            # The broker comes back while the disk is still full: the queued presses go out,
            # but deleting them after their PUBACK may fail too. They must not be sent twice,
            # and must leave the outbox once there is room.
            proxy.refuse(True)  # (as in the broker test: the subscriber first)
            mosquitto_tls.start()
            recorder.wait_subscribed(2)
            proxy.refuse(False)
            wait_delivered(recorder, len(queued))
            assert run.daemon.courier is not None
            wait_until(lambda: run.daemon.courier.in_flight == 0, what="all PUBACKs")
            left = queued_serials(outbox)  # delivered; the ones the full disk kept from deleting
            ballast.unlink()
            wait_until(lambda: queued_serials(outbox) == [], 20, "the outbox to empty")
            for _ in range(3):
                assert press_one()
            wait_delivered(recorder, len(queued))
            wait_until(lambda: queued_serials(outbox) == [], 20, "the outbox to empty")
        finally:
            assert run.stop() == 0
    check_delivered(recorder.messages, [Press(q) for q in queued])
    assert len(refused) == 2
    assert len(queued) > 10
    assert left, "the full disk let every delete through: the test did not test that"
    assert any("was delivered but cannot be removed yet" in m for m in caplog.messages)


def _refusals(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records
            if r.levelno == logging.ERROR and "could not be queued" in r.getMessage()]


# -- (f) the credentials are revoked -----------------------------------------------------------


GATEWAY_USER = "t12345/store-3-gateway"
GATEWAY_PASSWORD = "gateway-pw-1"


@pytest.fixture
def two_users(tmp_path: Path, tls_files: TlsFiles) -> Iterator[Mosquitto]:
    """A TLS broker where the gateway and the test's subscriber log in as different users: the
    gateway's password is revoked, the subscriber's stays (mosquitto may drop the sessions of
    a user whose password changed when it reloads)."""
    _need_mosquitto()
    broker = Mosquitto(tmp_path / "mosquitto", free_port(), tls=tls_files,
                       users={BROKER_USER: BROKER_PASSWORD, GATEWAY_USER: GATEWAY_PASSWORD})
    broker.start()
    yield broker
    broker.stop()


def test_revoked_credentials_are_retried_for_ever_quietly_and_a_restored_password_delivers(
    tmp_path: Path, two_users: Mosquitto, tls_files: TlsFiles, caplog: pytest.LogCaptureFixture,
) -> None:
    # Issue 11 changed this: `run` used to give up after MAX_REFUSALS refusals and live on
    # without an uplink until restarted by hand. Now it retries for ever (at most every
    # retry_max seconds, 1 here), says so once, and delivers when the password works again.
    from tests.faults import restore_password

    caplog.set_level(logging.INFO)
    outbox = tmp_path / "outbox.sqlite3"
    recorder = Recorder(two_users, tls_files)
    proxy = ResetProxy(two_users.port)
    proxy.start()
    config = write_config(tmp_path, two_users, port=proxy.port, buttons=10, user=GATEWAY_USER,
                          password=GATEWAY_PASSWORD)
    config.write_text(config.read_text().replace("[gateway]", "retry_max = 1\n[gateway]", 1))
    run = RunningDaemon.from_config(config)
    try:
        run.press(presses(0, 3))
        wait_delivered(recorder, 3)
        revoke_password(two_users, GATEWAY_USER)
        proxy.cut()  # in case the reload left the session open: the next login is refused
        run.press(presses(3, 6))
        uplink = run.daemon.uplink
        assert uplink is not None
        attempts = proxy.accepted
        wait_until(lambda: proxy.accepted > attempts + MAX_REFUSALS, 30,
                   "more logins than the old limit")
        assert uplink.failed is None  # still trying
        assert run.result == []  # still running
        run.press(presses(6, 8))  # capture goes on; presses are queued
        wait_until(lambda: run.queued() == 8, what="8 presses queued")
        assert queued_serials(outbox) == list(by_serial(presses(3, 8)))
        restore_password(two_users, GATEWAY_USER)
        wait_delivered(recorder, 8)  # no restart
        wait_until(lambda: queued_serials(outbox) == [], what="the outbox to empty")
    finally:
        assert run.stop() == 0
        proxy.stop()
        recorder.close()
    errors = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
    assert len(errors) == 1, errors  # once when it starts, not at every attempt
    assert errors[0].startswith("login refused since ")
    assert "(not authorised, CONNACK 5); retrying every 1 s; check user and password" in errors[0]
    assert "giving up" not in caplog.text
    assert GATEWAY_PASSWORD not in caplog.text
    check_delivered(recorder.messages, presses(0, 8))
