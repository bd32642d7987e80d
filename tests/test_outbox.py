"""The outbox on real SQLite files: order, ids, ack, attempts, the cap, modes, bad files, status."""

from __future__ import annotations

import dataclasses
import logging
import os
import sqlite3
import stat
import subprocess
import threading
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path

import pytest

from dashkanban.cli import main
from dashkanban.config import load_settings
from dashkanban.detect.events import Event
from dashkanban.errors import ConfigError
from dashkanban.metrics import Metrics, MetricsSnapshot
from dashkanban.outbox.store import (
    Outbox,
    OutboxError,
    OutboxFullError,
    QueuedEvent,
    format_status,
    row_bytes,
)
from tests.brokers import Mosquitto, TlsFiles
from tests.c8y.support import Recorder, write_config
from tests.faults import read_only_filesystem
from tests.outbox_writer import event_for

NOW = datetime(2026, 11, 26, 9, 30, 0, 500000, tzinfo=UTC)


def clock() -> datetime:
    return NOW


def open_outbox(path: Path, **kwargs: object) -> Outbox:
    return Outbox.open(path, clock=clock, **kwargs)  # type: ignore[arg-type]


def test_put_then_peek_returns_the_exact_events_in_press_order(tmp_path: Path) -> None:
    with open_outbox(tmp_path / "o.sqlite3") as outbox:
        ids = [outbox.put(event_for(i)) for i in range(5)]
        kanban = outbox.put(event_for(5), ["302,c8y_Kanban,\"Bin A3, reorder\""])
        assert ids == [1, 2, 3, 4, 5]
        assert kanban == 6
        assert outbox.peek() == [
            *(QueuedEvent(i + 1, event_for(i), (), NOW, 0) for i in range(5)),
            QueuedEvent(6, event_for(5), ('302,c8y_Kanban,"Bin A3, reorder"',), NOW, 0),
        ]
        assert [q.id for q in outbox.peek(limit=2, after_id=3)] == [4, 5]
        assert outbox.peek(after_id=6) == []
        assert outbox.peek(limit=0) == []
        assert outbox.peek(limit=-1) == []
        assert outbox.count() == 6
        assert outbox.oldest() == QueuedEvent(1, event_for(0), (), NOW, 0)


def test_put_row_returns_exactly_what_peek_reads_back(tmp_path: Path) -> None:
    """`run` hands the row of a fresh press to the Courier without reading it (issue 11): it must
    be the row a read would give, escaped text included."""
    broken = dataclasses.replace(event_for(1), name="bad \udcff name")
    with open_outbox(tmp_path / "o.sqlite3") as outbox:
        rows = [outbox.put_row(event_for(0)),
                outbox.put_row(event_for(2), ["302,c8y_Kanban,\"Bin A3, reorder\""],
                               [("fca6670a0b0c", "306,c8y_KanbanReorder"), (None, "125")]),
                outbox.put_row(broken, ["bad \udcff line"])]
        assert outbox.peek() == rows
        assert [row.id for row in rows] == [1, 2, 3]
        escaped = rows[2].event
        assert escaped is not None
        assert escaped.name != broken.name


def test_event_time_keeps_its_offset_through_the_file(tmp_path: Path) -> None:
    from datetime import timezone

    cet = timezone(timedelta(hours=1))
    event = Event(
        datetime(2026, 11, 26, 9, 0, 1, 234567, tzinfo=cet), "ac:63:be:12:34:56",
        "ac63be123456", "Grüße ☃", "c8y_MAC_Event", 'text with "quotes", commas', "ndp",
    )
    with open_outbox(tmp_path / "o.sqlite3") as outbox:
        outbox.put(event)
    with open_outbox(tmp_path / "o.sqlite3") as outbox:
        (queued,) = outbox.peek()
    assert queued.event == event
    assert queued.event.c8y_time == "2026-11-26T09:00:01.234+01:00"


def test_ack_deletes_once_and_ids_never_come_back_after_a_drain(tmp_path: Path) -> None:
    with open_outbox(tmp_path / "o.sqlite3") as outbox:
        first = outbox.put(event_for(0))
        second = outbox.put(event_for(1))
        outbox.ack(first)
        outbox.ack(first)  # a duplicate PUBACK
        outbox.ack(999)  # never existed
        assert [q.id for q in outbox.peek()] == [second]
        outbox.ack(second)
        assert outbox.count() == 0
        assert outbox.oldest() is None
        # A plain rowid would restart at 1 here and a delivery cursor at after_id=2 would skip it.
        assert outbox.put(event_for(2)) == 3
    with open_outbox(tmp_path / "o.sqlite3") as outbox:
        assert outbox.put(event_for(3)) == 4


def test_attempts_and_last_error_are_kept_across_reopen(tmp_path: Path) -> None:
    path = tmp_path / "o.sqlite3"
    with open_outbox(path) as outbox:
        row = outbox.put(event_for(0))
        assert outbox.last_error() is None
        outbox.mark_attempt(row)
        outbox.mark_attempt(row, "connection refused (127.0.0.1:8883)")
        outbox.mark_attempt(row)
        outbox.mark_attempt(12345, "no such row: still the outbox's last error")
    with open_outbox(path) as outbox:
        (queued,) = outbox.peek()
        assert queued.attempts == 3
        assert outbox.last_error() == "no such row: still the outbox's last error"
        assert outbox.stats().last_error_at == NOW


def test_files_are_private_and_missing_folders_are_made_0750(tmp_path: Path) -> None:
    path = tmp_path / "state" / "dashkanban" / "outbox.sqlite3"
    old = os.umask(0o022)
    try:
        with open_outbox(path) as outbox:
            outbox.put(event_for(0))
            # FULL, not NORMAL: in WAL mode NORMAL may lose the last commits on power loss.
            assert outbox._db.execute("PRAGMA synchronous").fetchone() == (2,)
            modes = {
                p.name: stat.S_IMODE(p.stat().st_mode)
                for p in (path, path.with_name(path.name + "-wal"), path.parent, path.parent.parent)
            }
    finally:
        os.umask(old)
    assert modes == {
        "outbox.sqlite3": 0o600, "outbox.sqlite3-wal": 0o600, "dashkanban": 0o750, "state": 0o750,
    }
    db = sqlite3.connect(path)
    assert db.execute("PRAGMA journal_mode").fetchone() == ("wal",)
    assert db.execute("PRAGMA user_version").fetchone() == (3,)
    db.close()


def test_row_cap_keeps_the_oldest_refuses_new_and_warns_once_per_crossing(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "o.sqlite3"
    metrics = Metrics()
    with open_outbox(path, max_rows=3, metrics=metrics) as outbox:
        for i in range(3):
            outbox.put(event_for(i))
        caplog.set_level(logging.WARNING, logger="dashkanban.outbox.store")
        message = (
            f"{path}: the outbox is full (3 events, 398 bytes; cap 3 rows, 100000000 bytes): new"
            " events are refused and the oldest kept until"
            " Cumulocity takes some; restore the uplink or raise [outbox] max_rows/max_bytes"
        )
        for i in (3, 4):
            with pytest.raises(OutboxFullError) as info:
                outbox.put(event_for(i))
            assert str(info.value) == message
        assert [r.getMessage() for r in caplog.records] == [f"OUTBOX FULL: {message}"]
        assert [q.event for q in outbox.peek()] == [event_for(0), event_for(1), event_for(2)]
        assert outbox.refused() == 2
        outbox.ack(1)
        assert outbox.put(event_for(5)) == 4
        with pytest.raises(OutboxFullError):
            outbox.put(event_for(6))
        assert len(caplog.records) == 2  # a second crossing, a second warning
        assert metrics.snapshot() == MetricsSnapshot(queued=4, delivered=1, refused=3)
    with open_outbox(path, max_rows=3) as outbox:
        assert outbox.refused() == 3  # kept in the file for `outbox status`


def test_byte_cap_counts_the_payload(tmp_path: Path) -> None:
    size = row_bytes(event_for(0), ())
    assert size == len(
        "2026-11-26T08:00:01.234000+00:00" "ac:63:be:00:00:00" "ac63be000000" "dashButton_0"
        "c8y_MAC_Event" "dashButton_0 pressed (ac:63:be:00:00:00) #0" "arp"
    )
    with open_outbox(tmp_path / "o.sqlite3", max_bytes=2 * size + 5) as outbox:
        outbox.put(event_for(0))
        outbox.put(event_for(0))
        full = r"\(2 events, 264 bytes; cap 200000 rows, 269 bytes\)"
        with pytest.raises(OutboxFullError, match=full):
            outbox.put(event_for(0))
        outbox.ack(1)
        outbox.put(event_for(0))
        assert outbox.stats().bytes == 2 * size


def test_counters_stay_exact_with_two_processes_on_one_file(tmp_path: Path) -> None:
    path = tmp_path / "o.sqlite3"
    with open_outbox(path, max_rows=4) as daemon, open_outbox(path, max_rows=4) as replay:
        daemon.put(event_for(0))
        replay.put(event_for(1))
        daemon.put(event_for(2))
        replay.put(event_for(3))
        with pytest.raises(OutboxFullError):
            daemon.put(event_for(4))
        replay.ack(1)
        assert daemon.count() == 3
        assert [q.event for q in daemon.peek()] == [event_for(1), event_for(2), event_for(3)]


def test_put_and_ack_from_two_threads(tmp_path: Path) -> None:
    """The capture thread puts while the network thread acks; nothing is lost or doubled."""
    total = 400
    with open_outbox(tmp_path / "o.sqlite3") as outbox:
        acked: list[int] = []
        done = threading.Event()

        def network_thread() -> None:
            cursor = 0
            while len(acked) < total:
                batch = outbox.peek(limit=50, after_id=cursor)
                for queued in batch:
                    outbox.ack(queued.id)
                    acked.append(queued.id)
                    cursor = queued.id
                if not batch and done.wait(0.001) and not outbox.peek(after_id=cursor):
                    break

        worker = threading.Thread(target=network_thread)
        worker.start()
        ids = [outbox.put(event_for(i)) for i in range(total)]
        done.set()
        worker.join(timeout=30)
        assert acked == ids == list(range(1, total + 1))
        assert outbox.count() == 0


# -- bad files ---------------------------------------------------------------------------------


def test_an_empty_file_left_by_a_crash_before_the_schema_becomes_an_outbox(tmp_path: Path) -> None:
    path = tmp_path / "o.sqlite3"
    path.touch(mode=0o600)
    with open_outbox(path) as outbox:
        assert outbox.put(event_for(0)) == 1


def test_a_file_that_is_not_a_database_is_reported_as_corrupt(tmp_path: Path) -> None:
    path = tmp_path / "o.sqlite3"
    path.write_bytes(b"this is not SQLite at all, " * 200)
    with pytest.raises(OutboxError) as info:
        Outbox.open(path)
    assert str(info.value) == (
        f"{path}: the outbox is corrupt (file is not a database); stop dashkanban, move it aside "
        f"(mv {path} {path}.corrupt) and start again: a new one is made; "
        f"`sqlite3 {path}.corrupt .recover` may save its events"
    )


def test_a_damaged_page_fails_the_integrity_check(tmp_path: Path) -> None:
    path = tmp_path / "o.sqlite3"
    with Outbox.open(path) as outbox:
        for i in range(300):
            outbox.put(event_for(i))
    db = sqlite3.connect(path)
    page_size = db.execute("PRAGMA page_size").fetchone()[0]
    root = db.execute("SELECT rootpage FROM sqlite_master WHERE name = 'events'").fetchone()[0]
    db.close()
    with path.open("r+b") as f:  # scribble over the events table's root page (an interior page)
        f.seek((root - 1) * page_size + 8)
        f.write(b"\xff" * 64)
    with pytest.raises(OutboxError) as info:
        Outbox.open(path)
    text = str(info.value)
    assert text.startswith(f"{path}: the outbox is corrupt (")
    assert text.endswith(f"(mv {path} {path}.corrupt) and start again: a new one is made; "
                         f"`sqlite3 {path}.corrupt .recover` may save its events")
    assert "\n" not in text


def test_another_programs_database_is_not_taken_over(tmp_path: Path) -> None:
    path = tmp_path / "other.sqlite3"
    db = sqlite3.connect(path)
    db.execute("CREATE TABLE customers (id INTEGER)")
    db.commit()
    db.close()
    with pytest.raises(OutboxError) as info:
        Outbox.open(path)
    assert str(info.value) == (
        f"{path}: is an SQLite database but not a dashkanban outbox; set [outbox] path to another "
        "file"
    )


def test_a_newer_schema_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "o.sqlite3"
    Outbox.open(path).close()
    db = sqlite3.connect(path)
    db.execute("PRAGMA user_version = 7")
    db.close()
    with pytest.raises(OutboxError) as info:
        Outbox.open(path)
    assert str(info.value) == (
        f"{path}: the outbox was written by a newer dashkanban (schema 7, this one reads 3); "
        "upgrade dashkanban or set [outbox] path"
    )


def test_a_folder_as_path_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as info:
        Outbox.open(tmp_path)
    assert str(info.value) == (
        f"{tmp_path}: the outbox path is not a file; set [outbox] path to a file"
    )


def _populate(folder: Path) -> None:
    with Outbox.open(folder / "o.sqlite3", clock=clock) as outbox:
        outbox.put(event_for(0))


def test_a_read_only_file_system_gives_a_clear_error(tmp_path: Path) -> None:
    with read_only_filesystem(tmp_path / "ro", _populate) as folder:
        with pytest.raises(ConfigError) as info:
            Outbox.open(folder / "o.sqlite3")
        assert info.value.exit_code == 2
        assert str(info.value) == (
            f"{folder}: the outbox folder is read-only (SQLite writes its -wal and -shm files "
            f"next to the outbox); make it writable for the service user (chown/chmod 0750 "
            f"{folder}) or set [outbox] path"
        )
        with pytest.raises(ConfigError) as info:
            Outbox.open(folder / "new" / "o.sqlite3")
        assert str(info.value) == (
            f"{folder / 'new'}: cannot create the outbox folder: Read-only file system; create it "
            f"for the service user (install -d -m 0750 {folder / 'new'}) or set [outbox] path"
        )


def test_a_read_only_file_gives_a_clear_error(tmp_path: Path) -> None:
    path = tmp_path / "o.sqlite3"
    _populate(tmp_path)
    path.chmod(0o400)
    immutable = False
    if os.geteuid() == 0:  # root writes through file modes; the immutable flag stops even root
        if subprocess.run(["chattr", "+i", str(path)], capture_output=True).returncode != 0:
            pytest.skip("root writes through file modes and chattr +i is not supported here")
        immutable = True
    try:
        with pytest.raises(ConfigError) as info:
            Outbox.open(path)
    finally:
        if immutable:
            subprocess.run(["chattr", "-i", str(path)], check=True)
    assert str(info.value) == (
        f"{path}: the outbox file is read-only; make it writable for the service user "
        f"(chown it, chmod 600 {path}) or set [outbox] path"
    )
    path.chmod(0o600)
    with Outbox.open(path) as outbox:  # nothing was lost by the refused open
        assert [q.event for q in outbox.peek()] == [event_for(0)]


# -- the commands ------------------------------------------------------------------------------

CONFIG = """\
[C8YMQTT]
tenant = example.cumulocity.com
tenantID = t12345
user = t12345/dash-gateway
password = secret
port = 8883

[outbox]
path = {path}
max_rows = 1000
"""


def _config(tmp_path: Path, outbox: Path) -> Path:
    config = tmp_path / "config.ini"
    config.write_text(CONFIG.format(path=outbox))
    config.chmod(0o600)
    return config


def test_status_prints_count_oldest_bytes_refusals_and_last_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "state" / "outbox.sqlite3"
    config = _config(tmp_path, path)
    assert main(["outbox", "status", "-c", str(config)]) == 0
    assert capsys.readouterr().out == f"outbox: {path} (not created yet)\nqueued: 0 events\n"
    assert not path.exists()  # status creates nothing

    with open_outbox(path, max_rows=1000) as outbox:
        first = outbox.put(event_for(0))
        outbox.put(event_for(1))
        outbox.mark_attempt(first, "PUBACK timeout after 10 s")
        outbox.mark_attempt(first, "connection reset by peer")
        size = outbox.stats().bytes
        disk = outbox.stats().file_bytes
    with sqlite3.connect(path) as db:  # as a full outbox would have counted them
        db.execute("UPDATE stats SET refused = 7")
    db.close()
    assert main(["outbox", "status", "-c", str(config)]) == 0
    out = capsys.readouterr().out
    disk_after = path.stat().st_size + sum(
        p.stat().st_size for p in [path.with_name(path.name + "-wal")] if p.exists()
    )
    assert disk > 0
    assert out == (
        f"outbox: {path}\n"
        f"queued: 2 events, {size} bytes (cap 1000 events, 100000000 bytes; "
        f"{disk_after} bytes on disk)\n"
        "oldest: 2026-11-26T08:00:01.234+00:00 dashButton_0 (ac:63:be:00:00:00), queued "
        "2026-11-26T09:30:00+00:00, 2 attempts\n"
        "refused by the cap: 7\n"
        "refused by Cumulocity: 0\n"
        "last error: 2026-11-26T09:30:00+00:00 connection reset by peer\n"
    )


def test_status_of_a_corrupt_outbox_exits_1_with_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "outbox.sqlite3"
    path.write_bytes(b"\0garbage" * 1000)
    assert main(["outbox", "status", "-c", str(_config(tmp_path, path))]) == 1
    err = capsys.readouterr().err
    assert err == (
        f"error: {path}: the outbox is corrupt (file is not a database); stop dashkanban, move it "
        f"aside (mv {path} {path}.corrupt) and start again: a new one is made; "
        f"`sqlite3 {path}.corrupt .recover` may save its events\n"
    )


def test_flush_delivers_what_is_queued(
    tmp_path: Path, mosquitto_tls: Mosquitto, tls_files: TlsFiles,
    capsys: pytest.CaptureFixture[str],
) -> None:
    config = write_config(tmp_path / "etc", mosquitto_tls)
    settings = load_settings(config)
    recorder = Recorder(mosquitto_tls, tls_files)
    try:
        with open_outbox(settings.outbox.path) as outbox:
            outbox.put(event_for(0))
            outbox.put(event_for(1))
        assert main(["outbox", "flush", "-c", str(config)]) == 0
        assert capsys.readouterr().out == "outbox: delivered 2 events\n"
        events = [p for t, p in recorder.wait_for(4 + 2 + 2) if t.startswith("s/us/")]
        assert events == [
            f"400,{event_for(n).type},{event_for(n).text},{event_for(n).c8y_time}"
            for n in (0, 1)
        ]
    finally:
        recorder.close()
    with open_outbox(settings.outbox.path) as outbox:
        assert outbox.count() == 0


def test_flush_with_the_broker_down_exits_3_and_keeps_the_rows(
    tmp_path: Path, mosquitto_tls: Mosquitto, capsys: pytest.CaptureFixture[str]
) -> None:
    config = write_config(tmp_path / "etc", mosquitto_tls)
    settings = load_settings(config)
    with open_outbox(settings.outbox.path) as outbox:
        outbox.put(event_for(0))
    mosquitto_tls.stop()
    # 2 s: the first attempt must have failed by then, on a loaded machine too (its error is
    # in the message).
    assert main(["outbox", "flush", "-c", str(config), "--timeout", "2"]) == 3
    assert capsys.readouterr().err.splitlines()[-1] + "\n" == (
        "error: not delivered within 2 s (cannot connect to "
        f"127.0.0.1:{mosquitto_tls.port}: Connection refused); 1 event stays queued in "
        f"{settings.outbox.path}: `dashkanban outbox flush` delivers it, `dashkanban outbox drop "
        "--all` (or --button NAME|MAC, --before TIME) discards it\n"
    )
    with open_outbox(settings.outbox.path) as outbox:
        assert [row.event for row in outbox.peek()] == [event_for(0)]


def test_flush_of_an_empty_outbox(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    config = _config(tmp_path, tmp_path / "o.sqlite3")
    assert main(["outbox", "flush", "-c", str(config)]) == 0
    assert capsys.readouterr().out == "outbox: nothing queued\n"


def test_hostile_text_is_stored_not_crashed_on(tmp_path: Path) -> None:
    """A NUL survives as is; a lone surrogate (undecodable bytes) is stored as a visible escape."""
    nul = dataclasses.replace(event_for(0), name="evil\0name", text="a\0b")
    bad = dataclasses.replace(event_for(1), name="bad\udcffname")
    with open_outbox(tmp_path / "o.sqlite3") as outbox:
        outbox.put(nul)
        outbox.put(bad, ["302,x,\udcfe"])
        stored = outbox.peek()
    assert stored[0].event == nul
    assert stored[1].event == dataclasses.replace(bad, name="bad\\udcffname")
    assert stored[1].extra_lines == ("302,x,\\udcfe",)


# Schema 1 as dashkanban 0.x wrote it (before rows could carry lines for other devices).
_SCHEMA_1 = """
CREATE TABLE events (
    id INTEGER PRIMARY KEY AUTOINCREMENT, time TEXT NOT NULL, mac TEXT NOT NULL,
    serial TEXT NOT NULL, name TEXT NOT NULL, type TEXT NOT NULL, text TEXT NOT NULL,
    trigger TEXT NOT NULL, extra_lines TEXT NOT NULL, queued_at TEXT NOT NULL,
    attempts INTEGER NOT NULL DEFAULT 0, last_error TEXT, size INTEGER NOT NULL
);
CREATE TABLE stats (
    one INTEGER PRIMARY KEY CHECK (one = 1), rows INTEGER NOT NULL, bytes INTEGER NOT NULL,
    refused INTEGER NOT NULL, last_error TEXT, last_error_at TEXT
);
INSERT INTO stats (one, rows, bytes, refused) VALUES (1, 0, 0, 0);
CREATE TRIGGER events_added AFTER INSERT ON events BEGIN
    UPDATE stats SET rows = rows + 1, bytes = bytes + NEW.size WHERE one = 1;
END;
CREATE TRIGGER events_removed AFTER DELETE ON events BEGIN
    UPDATE stats SET rows = rows - 1, bytes = bytes - OLD.size WHERE one = 1;
END;
PRAGMA user_version = 1;
"""


def test_a_schema_1_outbox_is_migrated_keeping_its_rows(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "o.sqlite3"
    db = sqlite3.connect(path)
    db.executescript(_SCHEMA_1)
    e = event_for(0)
    db.execute(
        "INSERT INTO events (time, mac, serial, name, type, text, trigger, extra_lines, queued_at,"
        " size) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
        (e.time.isoformat(), e.mac, e.serial, e.name, e.type, e.text, e.trigger,
         '["302,c8y_KanbanReorder,x"]', NOW.isoformat(), 150),
    )
    db.commit()
    db.close()
    caplog.set_level("INFO", logger="dashkanban.outbox.store")
    with open_outbox(path) as outbox:
        assert outbox.peek() == [QueuedEvent(1, e, ("302,c8y_KanbanReorder,x",), NOW, 0)]
        assert outbox.put_lines([("btn", "306,c8y_KanbanReorder")], NOW) == 2
        assert outbox.count() == 2
    assert f"{path}: outbox schema upgraded from 1 to 3" in caplog.messages
    db = sqlite3.connect(path)
    assert db.execute("PRAGMA user_version").fetchone() == (3,)
    db.close()
    caplog.clear()
    with open_outbox(path) as outbox:  # opening again changes nothing
        assert outbox.count() == 2
    assert "upgraded" not in " ".join(caplog.messages)


def test_rows_carry_lines_for_other_devices_and_rows_of_lines_only(tmp_path: Path) -> None:
    clears = [("ac63be123456", "306,c8y_KanbanReorder"), ("ac63be123457", "306,c8y_KanbanReorder")]
    with open_outbox(tmp_path / "o.sqlite3", max_rows=3) as outbox:
        assert outbox.put(event_for(0), ["302,x"], clears) == 1
        assert outbox.put_lines([(None, "501,c8y_KanbanRefilled")], NOW) == 2
        assert outbox.peek() == [
            QueuedEvent(1, event_for(0), ("302,x",), NOW, 0, tuple(clears)),
            QueuedEvent(2, None, (), NOW, 0, ((None, "501,c8y_KanbanRefilled"),)),
        ]
        # Lines count against the cap like events.
        stats = outbox.stats()
        expected_bytes = row_bytes(event_for(0), ["302,x"], clears) + 32 + 22
        assert (stats.rows, stats.bytes) == (2, expected_bytes)
        outbox.put_lines([("x", "306,y")], NOW)
        with pytest.raises(OutboxFullError):
            outbox.put_lines([("x", "306,y")], NOW)
        with pytest.raises(ValueError, match="at least one line"):
            outbox.put_lines([], NOW)
        outbox.ack(1)
        text = format_status(outbox.path, outbox.stats(), 3, 100)
    assert "oldest: 1 SmartREST lines, queued 2026-11-26T09:30:00+00:00, 0 attempts" in text


def test_a_delete_does_not_wait_for_fsync_but_every_put_still_does(tmp_path: Path) -> None:
    """A lost delete only repeats a delivered event (at least once); a lost put loses a press.
    So `ack` commits with synchronous=NORMAL and puts keep FULL (2)."""
    with Outbox.open(tmp_path / "outbox.sqlite3") as outbox:
        row = outbox.put(event_for(1))
        outbox.ack(row)
        assert outbox._db.execute("PRAGMA synchronous").fetchone() == (2,)
        assert outbox.count() == 0


# ---------------------------------------------------------------------------------------------
# Press identity and `outbox drop` (issue 14)


def test_press_identity_is_serial_millisecond_and_type(tmp_path: Path) -> None:
    from dashkanban.outbox.store import press_key

    event = event_for(1)
    same_instant = dataclasses.replace(
        event, time=event.time.astimezone(timezone(timedelta(hours=1))) + timedelta(
            microseconds=400), text="another text")
    assert press_key(same_instant) == press_key(event)  # offset and sub-millisecond ignored
    assert press_key(dataclasses.replace(event, type="c8y_Other")) != press_key(event)
    with open_outbox(tmp_path / "o.sqlite3") as outbox:
        outbox.put(event_for(1))
        outbox.put(event_for(2))
        outbox.remember([press_key(event_for(1)), press_key(event_for(2))])
        outbox.ack(1)  # delivered
        keys = [press_key(event_for(i)) for i in (1, 2, 3)]
        assert outbox.seen(keys) == {keys[0]: "delivered", keys[1]: "queued"}


def test_drop_by_button_and_before(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "state" / "outbox.sqlite3"
    config = tmp_path / "config.ini"
    config.write_text(f"[outbox]\npath = {path}\n")  # drop connects nowhere: no [C8YMQTT]
    with open_outbox(path) as outbox:
        for seq in (0, 1, 50, 51, 100):  # buttons 0, 1, 0, 1, 0
            outbox.put(event_for(seq))
    assert main(["outbox", "drop", "--button", "AC-63-BE-00-00-01", "-c", str(config)]) == 0
    assert capsys.readouterr().out.splitlines() == [
        f"dropped: {event_for(1).c8y_time} dashButton_1 (ac:63:be:00:00:01) c8y_MAC_Event",
        f"dropped: {event_for(51).c8y_time} dashButton_1 (ac:63:be:00:00:01) c8y_MAC_Event",
        "outbox: dropped 2 events, 3 still queued",
    ]
    before = event_for(100).time.isoformat()  # strictly before: 100 itself stays
    assert main(["outbox", "drop", "--before", before, "-c", str(config)]) == 0
    assert capsys.readouterr().out.splitlines() == [
        f"dropped: {event_for(0).c8y_time} dashButton_0 (ac:63:be:00:00:00) c8y_MAC_Event",
        f"dropped: {event_for(50).c8y_time} dashButton_0 (ac:63:be:00:00:00) c8y_MAC_Event",
        "outbox: dropped 2 events, 1 still queued",
    ]
    assert main(["outbox", "drop", "--button", "dashbutton_7", "-c", str(config)]) == 0
    assert capsys.readouterr().out.splitlines() == ["outbox: dropped 0 events, 1 still queued"]
    assert main(["outbox", "drop", "--before", "yesterday", "-c", str(config)]) == 2
    assert capsys.readouterr().err.splitlines()[-1] == (
        "error: --before 'yesterday': expected a date (YYYY-MM-DD) or a time "
        "(e.g. 2026-11-26T08:00:00+01:00)")
    assert main(["outbox", "drop", "--all", "-c", str(config)]) == 0
    assert capsys.readouterr().out.splitlines()[-1] == "outbox: dropped 1 event, 0 still queued"


def test_refusals_by_cumulocity_are_counted_in_the_file_with_the_last_one(tmp_path: Path) -> None:
    """Issue 13: an `s/e` refusal survives the process that saw it (a table made on the first,
    as the quarantine is), counts in the metrics, and `outbox status` shows it escaped."""
    path = tmp_path / "outbox.sqlite3"
    metrics = Metrics()
    with open_outbox(path, metrics=metrics) as outbox:
        assert outbox.c8y_refusals() == (0, None)
        outbox.record_c8y_refusal("45,400,Wrong number of arguments", "400,t,,2026")
        outbox.record_c8y_refusal("45,400,Wrong\x1b[31m", '400,t,"a\nb",2026')
    assert metrics.snapshot().c8y_refused == 2
    with open_outbox(path) as outbox:
        assert outbox.c8y_refusals() == (
            2, '2026-11-26T09:30:00.500000+00:00 45,400,Wrong\x1b[31m for 400,t,"a\nb",2026')
        text = format_status(path, outbox.stats(), 10, 1000)
    assert ('\nrefused by Cumulocity: 2 (last: 2026-11-26T09:30:00.500000+00:00 '
            '45,400,Wrong\\x1b[31m for 400,t,"a\\nb",2026)\n') in text


def test_remember_forgets_old_identities_through_an_index(tmp_path: Path) -> None:
    """Every press prunes identities older than PRESS_IDS_DAYS: by the index on `remembered`,
    not by reading the whole table each time, and only the old ones go."""
    from dashkanban.outbox.store import PRESS_IDS_DAYS, press_key

    path = tmp_path / "o.sqlite3"
    now = clock()
    times = iter([now - timedelta(days=PRESS_IDS_DAYS + 1), now])
    with Outbox.open(path, clock=lambda: next(times)) as outbox:
        outbox.remember([press_key(event_for(1))])  # remembered long ago
        outbox.remember([press_key(event_for(2))])  # now: the first is forgotten
        keys = [press_key(event_for(i)) for i in (1, 2)]
        assert outbox.seen(keys) == {keys[1]: "delivered"}
    db = sqlite3.connect(path)
    try:
        plan = db.execute("EXPLAIN QUERY PLAN DELETE FROM press_ids WHERE remembered < ?",
                          ("x",)).fetchall()
    finally:
        db.close()
    assert [row[3] for row in plan] == [
        "SEARCH press_ids USING COVERING INDEX press_ids_remembered (remembered<?)"]


def test_put_with_a_key_keeps_the_row_and_the_identity_in_one_commit(tmp_path: Path) -> None:
    """`put(..., key=)`: the press identity is written in the row's own transaction (one commit,
    one fsync per press instead of two), and `seen`/`drop` treat it as `remember` would."""
    from dashkanban.outbox.store import press_key

    path = tmp_path / "o.sqlite3"
    with open_outbox(path) as outbox:
        first = outbox.put(event_for(0))  # without a key, as before
        statements: list[str] = []
        outbox._db.set_trace_callback(statements.append)
        row = outbox.put(event_for(1), key=press_key(event_for(1)))
        outbox._db.set_trace_callback(None)
        assert [s for s in statements if s in ("BEGIN IMMEDIATE", "COMMIT")] == [
            "BEGIN IMMEDIATE", "COMMIT"]
        outbox.ack(first)
        outbox.ack(row)
        keys = [press_key(event_for(i)) for i in (0, 1)]
        assert outbox.seen(keys) == {keys[1]: "delivered"}  # gone, its identity kept
        # The row that queued the press is the one `drop` forgets it with.
        outbox.put(event_for(2), key=press_key(event_for(2)))
        assert [r.event for r in outbox.drop(button="dashButton_2")] == [event_for(2)]
        assert outbox.seen([press_key(event_for(2))]) == {}


def test_put_with_a_key_refused_by_a_full_outbox_keeps_neither(tmp_path: Path) -> None:
    from dashkanban.outbox.store import press_key

    path = tmp_path / "o.sqlite3"
    with open_outbox(path, max_rows=1) as outbox:
        outbox.put(event_for(1), key=press_key(event_for(1)))
        with pytest.raises(OutboxFullError):
            outbox.put(event_for(2), key=press_key(event_for(2)))
        assert [r.event for r in outbox.peek()] == [event_for(1)]
        keys = [press_key(event_for(i)) for i in (1, 2)]
        assert outbox.seen(keys) == {keys[0]: "queued"}
    db = sqlite3.connect(path)
    try:
        assert db.execute("SELECT serial, time, type FROM press_ids").fetchall() == [keys[0]]
    finally:
        db.close()
