"""Faults injected for real: a full disk, SIGKILL mid-burst, and a proxy that resets connections.

The end-to-end fault tests of issue 6 (broker down, reset mid-publish, daemon killed between queue
and PUBACK) build on these parts once the uplink lands; here each part proves it does what it says.
"""

from __future__ import annotations

import dataclasses
import os
import signal
import socket
import sqlite3
import threading
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest

from dashkanban.detect.events import Event
from dashkanban.outbox.store import Outbox, OutboxError, QueuedEvent
from tests.brokers import Mosquitto
from tests.conftest import BROKER_PASSWORD, BROKER_USER
from tests.faults import ResetProxy, restart, revoke_password, small_filesystem, start_writer
from tests.outbox_writer import event_for

# -- the disk fills up -------------------------------------------------------------------------


def _big(seq: int) -> Event:
    event = event_for(seq)
    return dataclasses.replace(event, text=f"{event.text} " + "x" * 900)


def test_a_full_disk_refuses_the_new_event_and_keeps_every_committed_one(tmp_path: Path) -> None:
    with small_filesystem(tmp_path / "disk", "1m") as disk:
        ballast = disk / "ballast"
        ballast.write_bytes(b"\0" * 64 * 1024)  # freed later, to show recovery
        path = disk / "outbox.sqlite3"
        outbox = Outbox.open(path)
        committed: list[int] = []
        error: OutboxError | None = None
        # Bounded: 2000 commits of 1 KB rows (about 12 KiB of WAL each) cannot fit in 1 MiB.
        for seq in range(2000):
            try:
                committed.append(outbox.put(_big(seq)))
            except OutboxError as exc:
                error = exc
                break
        assert error is not None
        assert str(error) == (
            f"{path}: the disk is full (queueing an event failed; everything queued before is "
            f"kept); free space on the file system of {disk}"
        )
        assert len(committed) >= 10
        assert committed == list(range(1, len(committed) + 1))
        # A second try fails the same way and the connection stays usable for reads.
        with pytest.raises(OutboxError, match="the disk is full"):
            outbox.put(event_for(0))
        assert [q.id for q in outbox.peek(limit=5000)] == committed
        outbox.close()

        # Everything committed is there after reopening, intact and in order.
        db = sqlite3.connect(path)
        assert db.execute("PRAGMA integrity_check").fetchall() == [("ok",)]
        db.close()
        ballast.unlink()
        with Outbox.open(path) as reopened:
            queued = reopened.peek(limit=5000)
            assert [q.id for q in queued] == committed
            assert [q.event for q in queued] == [_big(i) for i in range(len(committed))]
            assert reopened.put(event_for(0)) == len(committed) + 1


# -- the process is killed mid-burst -----------------------------------------------------------


def _read_ids(lines: list[str]) -> list[tuple[int, int]]:
    return [(int(a), int(b)) for a, b in (line.split() for line in lines if line.strip())]


@pytest.mark.parametrize("kill_after", [1, 97, 400])
def test_sigkill_during_a_burst_of_puts_loses_no_returned_put(
    tmp_path: Path, kill_after: int
) -> None:
    """Every id the child printed (its put had returned) is in the file, in order, intact.

    SIGKILL stops the process between any two instructions, also inside a commit. A row may be
    committed and its id not yet printed: at most one such row, and it must be the next one.
    """
    path = tmp_path / "outbox.sqlite3"
    Outbox.open(path).close()
    printed: list[tuple[int, int]] = []
    for round_ in range(2):  # kill twice on one file: recovery after recovery
        start = len(printed) if round_ == 0 else _rows_in(path)
        child = start_writer(path, start, 1_000_000)
        assert child.stdout is not None
        seen: list[str] = []
        for line in child.stdout:  # bounded: the child prints one line per put
            seen.append(line)
            if len(seen) >= kill_after:
                break
        os.kill(child.pid, signal.SIGKILL)
        assert child.wait(timeout=10) == -signal.SIGKILL
        # Read the rest through the same buffered file: communicate() would read the pipe's fd
        # directly and miss lines already sitting in this file object's buffer.
        rest = child.stdout.read()
        child.stdout.close()
        assert child.stderr is not None
        assert child.stderr.read() == ""
        child.stderr.close()
        printed += _read_ids([*seen, *rest.splitlines()])

        db = sqlite3.connect(path)
        assert db.execute("PRAGMA integrity_check").fetchall() == [("ok",)]
        rows = db.execute("SELECT id FROM events ORDER BY id").fetchall()
        db.close()
        ids = [r[0] for r in rows]
        assert ids[: len(printed)] == [row_id for row_id, _ in printed]
        assert len(ids) - len(printed) in (0, 1)
        printed += [(ids[-1], ids[-1] - 1)] if len(ids) > len(printed) else []

    with Outbox.open(path) as outbox:
        queued = outbox.peek(limit=100_000)
    assert queued == [
        QueuedEvent(i + 1, event_for(i), (f"302,c8y_Kanban,seq {i}",), q.queued_at, 0)
        for i, q in enumerate(queued)
    ]
    assert [q.id for q in queued] == [row_id for row_id, _ in printed]
    assert [seq for _, seq in printed] == list(range(len(printed)))


def _rows_in(path: Path) -> int:
    db = sqlite3.connect(path)
    (count,) = db.execute("SELECT count(*) FROM events").fetchone()
    db.close()
    return int(count)


# -- the network resets connections ------------------------------------------------------------


def test_proxy_forwards_then_cut_resets_both_sides() -> None:
    echo = socket.create_server(("127.0.0.1", 0))
    echo_port = echo.getsockname()[1]
    server_side: list[socket.socket] = []

    server_saw: list[str] = []

    def serve() -> None:
        conn, _ = echo.accept()
        server_side.append(conn)
        try:
            while data := conn.recv(1024):
                conn.sendall(data.upper())
            server_saw.append("end of stream")
        except ConnectionResetError:
            server_saw.append("reset")

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    with ResetProxy(echo_port) as proxy:
        client = socket.create_connection(("127.0.0.1", proxy.port), timeout=5)
        client.sendall(b"hello")
        assert client.recv(1024) == b"HELLO"
        assert proxy.open_connections == 1
        assert proxy.cut() == 1
        with pytest.raises(ConnectionResetError):
            client.recv(1024)
        thread.join(timeout=5)
        assert server_saw == ["reset"]  # the broker's side is reset too, not closed cleanly
        assert proxy.open_connections == 0

        proxy.refuse(True)
        refused = socket.socket()
        refused.settimeout(5)
        with pytest.raises(ConnectionResetError):  # in connect or in the first recv: a race
            _connect_and_read(refused, proxy.port)
        assert (proxy.accepted, proxy.refused) == (1, 1)
    client.close()
    refused.close()
    echo.close()
    for conn in server_side:
        conn.close()


def _connect_and_read(sock: socket.socket, port: int) -> bytes:
    sock.connect(("127.0.0.1", port))
    return sock.recv(1024)


def test_proxy_cuts_a_real_mqtt_session(mosquitto: Mosquitto) -> None:
    """paho through the proxy to mosquitto: QoS 1 acked, then cut: paho reports the lost link."""
    with ResetProxy(mosquitto.port) as proxy:
        connected = threading.Event()
        acked = threading.Event()
        lost: list[str] = []
        gone = threading.Event()
        client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="fault-test")
        client.on_connect = lambda c, u, f, rc, p: connected.set()
        client.on_publish = lambda c, u, mid, rc, p: acked.set()

        def on_disconnect(c: object, u: object, f: object, rc: object, p: object) -> None:
            lost.append(str(rc))
            gone.set()

        client.on_disconnect = on_disconnect
        client.reconnect_delay_set(min_delay=60, max_delay=60)  # no reconnect within the test
        client.connect("127.0.0.1", proxy.port, keepalive=60)
        client.loop_start()
        try:
            assert connected.wait(5)
            info = client.publish("s/us/ac63be000000", "400,c8y_MAC_Event,x", qos=1)
            assert acked.wait(5)
            assert info.is_published()
            assert proxy.cut() == 1
            assert gone.wait(5)
            assert lost == ["Unspecified error"]
            assert "fault-test" in mosquitto.log_text()
        finally:
            client.loop_stop()
            client.disconnect()


def _connack(port: int, user: str | None = None, password: str | None = None) -> str:
    """Log in once with paho and return the CONNACK reason as paho names it."""
    result: list[str] = []
    done = threading.Event()
    client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="fault-login")

    def on_connect(c: object, u: object, f: object, rc: object, p: object) -> None:
        result.append(str(rc))
        done.set()

    client.on_connect = on_connect
    if user is not None:
        client.username_pw_set(user, password)
    client.connect("127.0.0.1", port, keepalive=60)
    client.loop_start()
    try:
        assert done.wait(5)
    finally:
        client.loop_stop()
        client.disconnect()
    return result[0]


def test_revoked_credentials_are_refused_at_the_next_login(mosquitto_password: Mosquitto) -> None:
    port = mosquitto_password.port
    assert _connack(port, BROKER_USER, BROKER_PASSWORD) == "Success"
    revoke_password(mosquitto_password, BROKER_USER)
    assert _connack(port, BROKER_USER, BROKER_PASSWORD) == "Not authorized"


def test_restart_brings_the_broker_back_on_the_same_port(mosquitto: Mosquitto) -> None:
    """A paho client sees the broker go away and reconnects by itself when it is back."""
    connects: list[int] = []
    disconnected = threading.Event()
    reconnected = threading.Event()
    client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="fault-restart")

    def on_connect(c: object, u: object, f: object, rc: object, p: object) -> None:
        connects.append(1)
        if len(connects) == 2:
            reconnected.set()

    client.on_connect = on_connect
    client.on_disconnect = lambda c, u, f, rc, p: disconnected.set()
    client.reconnect_delay_set(min_delay=1, max_delay=1)
    client.connect("127.0.0.1", mosquitto.port, keepalive=60)
    client.loop_start()
    try:
        restart(mosquitto, down_for=0.2)
        assert disconnected.wait(5)
        assert reconnected.wait(10)
        log = mosquitto.log_text()  # one file across both lives of the broker
        assert log.count(" starting") == 2
        assert log.count("New client connected from 127.0.0.1") == 2
    finally:
        client.loop_stop()
        client.disconnect()


def test_after_a_full_disk_the_write_ahead_log_gives_its_space_back(tmp_path: Path) -> None:
    """SQLite checkpoints only at 1,000 pages: on a full disk the WAL would eat every byte freed
    and even the deletes that make room would fail for good. After a failure for lack of space
    the outbox checkpoints (TRUNCATE) before its next write, so freeing a little is enough."""
    with small_filesystem(tmp_path / "disk", "512k") as disk:
        ballast = disk / "ballast"
        ballast.write_bytes(b"\0" * 160 * 1024)
        path = disk / "outbox.sqlite3"
        wal = disk / "outbox.sqlite3-wal"
        outbox = Outbox.open(path)
        committed: list[int] = []
        error = ""
        for seq in range(300):  # bounded: 300 commits of ~12 KiB of WAL cannot fit
            try:
                committed.append(outbox.put(event_for(seq)))
            except OutboxError as exc:
                error = str(exc)
                break
        assert "the disk is full" in error
        assert len(committed) >= 10
        full_wal = wal.stat().st_size
        ballast.unlink()
        for row_id in committed:  # every delete succeeds: the first one cut the WAL first
            outbox.ack(row_id)
        assert outbox.count() == 0
        assert wal.stat().st_size < full_wal
        assert outbox.put(event_for(0)) > committed[-1]
        outbox.close()
