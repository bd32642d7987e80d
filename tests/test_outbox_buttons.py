"""The outbox and MQTT buttons (issue 19 gaps): a row keeps its press kind (schema 3, old rows
read as "single"), and `outbox drop --button` takes a Zigbee button's EUI-64 address."""

from __future__ import annotations

import dataclasses
import sqlite3
from datetime import UTC, datetime
from pathlib import Path

import pytest

from dashkanban.cli import main
from dashkanban.detect.events import Event
from dashkanban.outbox.store import Outbox, QueuedEvent, format_status
from tests.outbox_writer import event_for

NOW = datetime(2026, 11, 26, 9, 30, 0, 500000, tzinfo=UTC)


def open_outbox(path: Path) -> Outbox:
    return Outbox.open(path, clock=lambda: NOW)


def zigbee_event(kind: str = "long") -> Event:
    """An aqara button of zigbee2mqtt: its identity an EUI-64, its press told over MQTT."""
    return Event(
        time=datetime(2026, 11, 26, 8, 0, 1, 234000, tzinfo=UTC),
        mac="00:12:4b:00:1c:a1:b2:c3",
        serial="00124b001ca1b2c3",
        name="aqara-D1",
        type="c8y_MAC_Event",
        text=f"aqara-D1 {kind} press",
        trigger="mqtt",
        kind=kind,  # type: ignore[arg-type]  # a PressKind, from the test's parameter
    )


def test_a_row_keeps_its_press_kind_across_a_reopen(tmp_path: Path) -> None:
    path = tmp_path / "o.sqlite3"
    long_press, double = zigbee_event("long"), zigbee_event("double")
    with open_outbox(path) as outbox:
        outbox.put(event_for(0))  # a network press: single
        outbox.put(long_press)
        outbox.put(double)
    with open_outbox(path) as outbox:
        assert [row.event for row in outbox.peek()] == [event_for(0), long_press, double]
        assert [row.event.kind for row in outbox.peek() if row.event] == [
            "single", "long", "double"]
        outbox.ack(1)
        text = format_status(path, outbox.stats(), 10, 10_000)
    assert (f"oldest: {long_press.c8y_time} aqara-D1 (00:12:4b:00:1c:a1:b2:c3) long press, "
            "queued 2026-11-26T09:30:00+00:00, 0 attempts") in text.splitlines()
    db = sqlite3.connect(path)
    try:
        assert db.execute("PRAGMA user_version").fetchone() == (3,)
        assert db.execute("SELECT press_kind FROM events ORDER BY id").fetchall() == [
            ("long",), ("double",)]
    finally:
        db.close()


# Schema 2 as dashkanban wrote it before issue 19's press kinds were kept.
_SCHEMA_2 = """
CREATE TABLE events (
    id INTEGER PRIMARY KEY AUTOINCREMENT, time TEXT NOT NULL, mac TEXT NOT NULL,
    serial TEXT NOT NULL, name TEXT NOT NULL, type TEXT NOT NULL, text TEXT NOT NULL,
    trigger TEXT NOT NULL, extra_lines TEXT NOT NULL, queued_at TEXT NOT NULL,
    attempts INTEGER NOT NULL DEFAULT 0, last_error TEXT, size INTEGER NOT NULL,
    kind TEXT NOT NULL DEFAULT 'event', other_lines TEXT NOT NULL DEFAULT '[]'
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
CREATE TABLE quarantine (
    id          INTEGER PRIMARY KEY,
    time, mac, serial, name, type, text, trigger, extra_lines, queued_at, attempts, last_error,
    size, kind, other_lines,
    reason         TEXT NOT NULL,
    quarantined_at TEXT NOT NULL
);
PRAGMA user_version = 2;
"""


def _schema_2_file(path: Path, event: Event) -> None:
    db = sqlite3.connect(path)
    db.executescript(_SCHEMA_2)
    db.execute(
        "INSERT INTO events (time, mac, serial, name, type, text, trigger, extra_lines, queued_at,"
        " size, kind, other_lines) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, 'event', '[]')",
        (event.time.isoformat(), event.mac, event.serial, event.name, event.type, event.text,
         event.trigger, "[]", NOW.isoformat(), 100),
    )
    db.execute(
        "INSERT INTO events (time, mac, serial, name, type, text, trigger, extra_lines, queued_at,"
        " size, kind, other_lines) VALUES (?, '', '', '', '', '', '', '[]', ?, 40, 'lines',"
        " '[[null, \"501,c8y_KanbanRefilled\"]]')",
        (NOW.isoformat(), NOW.isoformat()),
    )
    db.commit()
    db.close()


def test_a_schema_2_outbox_is_migrated_and_its_rows_read_as_single(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A row queued by the previous version (its kind was not kept) reads as "single", the
    rows and counters stay, and new rows keep their kind; the quarantine table keeps it too."""
    path = tmp_path / "o.sqlite3"
    old = zigbee_event("long")  # queued before: only its text says "long"
    _schema_2_file(path, old)
    caplog.set_level("INFO", logger="dashkanban.outbox.store")
    with open_outbox(path) as outbox:
        assert outbox.peek() == [
            QueuedEvent(1, dataclasses.replace(old, kind="single"), (), NOW, 0),
            QueuedEvent(2, None, (), NOW, 0, ((None, "501,c8y_KanbanRefilled"),)),
        ]
        assert outbox.put(zigbee_event("double")) == 3
        assert outbox.count() == 3
        assert outbox.peek()[2].event == zigbee_event("double")
        outbox._db.execute("UPDATE events SET time = 'not a time' WHERE id = 3")
        assert len(outbox.peek()) == 2  # row 3 quarantined, whole
    assert f"{path}: outbox schema upgraded from 2 to 3" in caplog.messages
    db = sqlite3.connect(path)
    try:
        assert db.execute("PRAGMA user_version").fetchone() == (3,)
        assert db.execute("SELECT id, press_kind FROM quarantine").fetchall() == [(3, "double")]
    finally:
        db.close()
    caplog.clear()
    with open_outbox(path) as outbox:  # opening again changes nothing
        assert outbox.count() == 2
    assert "upgraded" not in " ".join(caplog.messages)


def test_drop_by_a_zigbee_buttons_eui64_address(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """`--button` takes an EUI-64 as zigbee2mqtt shows it, or with separators, as MACID.csv
    does; a MAC-only parser refused them, and the name was the only way."""
    path = tmp_path / "state" / "outbox.sqlite3"
    config = tmp_path / "config.ini"
    config.write_text(f"[outbox]\npath = {path}\n")
    with open_outbox(path) as outbox:
        outbox.put(event_for(0))
        outbox.put(zigbee_event("long"))
        outbox.put(zigbee_event("single"))
    assert main(["outbox", "drop", "--button", "0x00124B001CA1B2C3", "-c", str(config)]) == 0
    when = zigbee_event().c8y_time
    assert capsys.readouterr().out.splitlines() == [
        f"dropped: {when} aqara-D1 (00:12:4b:00:1c:a1:b2:c3) c8y_MAC_Event long press",
        f"dropped: {when} aqara-D1 (00:12:4b:00:1c:a1:b2:c3) c8y_MAC_Event",
        "outbox: dropped 2 events, 1 still queued",
    ]
    with open_outbox(path) as outbox:
        outbox.put(zigbee_event("double"))
    assert main(["outbox", "drop", "--button", "00-12-4b-00-1c-a1-b2-c3", "-c",
                 str(config)]) == 0
    assert capsys.readouterr().out.splitlines()[-1] == "outbox: dropped 1 event, 1 still queued"
