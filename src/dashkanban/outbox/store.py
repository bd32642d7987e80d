"""The durable outbox: every event is a SQLite row before anything is sent (docs/outbox.md).

Guarantees, for the delivery loop that consumes it:
- `put` returns only after the row is committed with `synchronous=FULL` in WAL mode, so a press
  whose `put` returned survives a crash of the process and (given honest disks) a power loss.
- Rows are deleted only by `ack`, which the uplink calls on the broker's PUBACK. Cumulocity
  requires a clean MQTT session (docs/protocol.md 1.4), so the broker keeps nothing for us across a
  reconnect: this table is the only memory of what is still owed.
- Ids come from `AUTOINCREMENT`, so they only ever grow, even after the table was drained. The
  delivery loop's `peek(after_id=...)` cursor relies on that: with a plain rowid, an emptied table
  would hand out id 1 again and the cursor would skip the new row.
- A cap in rows and payload bytes keeps the oldest events and refuses new ones, with a loud warning
  once per crossing; refusals are counted in the file, so `outbox status` shows them.

One connection guarded by a lock; in `run` every write comes from the one writer thread
(outbox/writer.py). Counters live in a one-row table maintained by triggers inside the same
transactions, so they stay exact when two processes share the file (a `replay` next to the daemon).
"""

from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import json
import logging
import os
import sqlite3
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, NamedTuple, TypeVar, cast

from dashkanban.detect.events import Event
from dashkanban.errors import ConfigError, DashkanbanError
from dashkanban.safetext import escape_controls
from dashkanban.values import DeviceLine, PressKind, Trigger

if TYPE_CHECKING:
    from dashkanban.config import OutboxSettings
    from dashkanban.metrics import Metrics

log = logging.getLogger(__name__)
_T = TypeVar("_T")

SCHEMA_VERSION = 3
KIND_EVENT = "event"  # a press: the event, its extra lines, then any lines for other devices
KIND_LINES = "lines"  # SmartREST lines only (e.g. a Kanban refill's clears from the CLI)
DEFAULT_MAX_ROWS = 200_000
DEFAULT_MAX_BYTES = 100_000_000
BUSY_TIMEOUT_MS = 5_000  # another process (status, replay) holding the write lock briefly
FOLDER_MODE = 0o750
FILE_MODE = 0o600

# Every statement is idempotent: two processes opening a new file together both run it, one
# after the other under the write lock (issue 13, hole 5).
_SCHEMA = """
CREATE TABLE IF NOT EXISTS events (
    id          INTEGER PRIMARY KEY AUTOINCREMENT,
    time        TEXT    NOT NULL,
    mac         TEXT    NOT NULL,
    serial      TEXT    NOT NULL,
    name        TEXT    NOT NULL,
    type        TEXT    NOT NULL,
    text        TEXT    NOT NULL,
    trigger     TEXT    NOT NULL,
    extra_lines TEXT    NOT NULL,
    queued_at   TEXT    NOT NULL,
    attempts    INTEGER NOT NULL DEFAULT 0,
    last_error  TEXT,
    size        INTEGER NOT NULL,
    kind        TEXT    NOT NULL DEFAULT 'event',
    other_lines TEXT    NOT NULL DEFAULT '[]',
    press_kind  TEXT    NOT NULL DEFAULT 'single'
);
CREATE TABLE IF NOT EXISTS stats (
    one        INTEGER PRIMARY KEY CHECK (one = 1),
    rows       INTEGER NOT NULL,
    bytes      INTEGER NOT NULL,
    refused    INTEGER NOT NULL,
    last_error TEXT,
    last_error_at TEXT
);
INSERT OR IGNORE INTO stats (one, rows, bytes, refused) VALUES (1, 0, 0, 0);
CREATE TRIGGER IF NOT EXISTS events_added AFTER INSERT ON events BEGIN
    UPDATE stats SET rows = rows + 1, bytes = bytes + NEW.size WHERE one = 1;
END;
CREATE TRIGGER IF NOT EXISTS events_removed AFTER DELETE ON events BEGIN
    UPDATE stats SET rows = rows - 1, bytes = bytes - OLD.size WHERE one = 1;
END;
"""

# Rows that could not be read back (a hand-edited or damaged field): moved here whole, never
# deleted, so they stop blocking the queue and can still be inspected (docs/outbox.md). Made by
# the first quarantine, so a file of any schema version can get it; older versions ignore it.
_QUARANTINE = """
CREATE TABLE IF NOT EXISTS quarantine (
    id          INTEGER PRIMARY KEY,
    time, mac, serial, name, type, text, trigger, extra_lines, queued_at, attempts, last_error,
    size, kind, other_lines, press_kind,
    reason         TEXT NOT NULL,
    quarantined_at TEXT NOT NULL
)
"""
_QUARANTINE_COPY = (
    "INSERT OR REPLACE INTO quarantine (id, time, mac, serial, name, type, text, trigger,"
    " extra_lines, queued_at, attempts, last_error, size, kind, other_lines, press_kind, reason,"
    " quarantined_at) SELECT id, time, mac, serial, name, type, text, trigger, extra_lines,"
    " queued_at, attempts, last_error, size, kind, other_lines, press_kind, ?, ? FROM events"
    " WHERE id = ?"
)

# Lines Cumulocity accepted (PUBACK) and then refused on `s/e` (issue 13): counted here, durably,
# with the last one, so `outbox status` shows them after the process that saw them ended. Not
# `refused`, which counts presses refused by the cap. Made by the first refusal, as the
# quarantine table is, so a file of any schema version can get it.
_C8Y_REFUSALS = """
CREATE TABLE IF NOT EXISTS c8y_refusals (
    one        INTEGER PRIMARY KEY CHECK (one = 1),
    count      INTEGER NOT NULL,
    last_error TEXT,
    last_line  TEXT,
    last_at    TEXT
)
"""

_COLUMNS = (
    "id, time, mac, serial, name, type, text, trigger, extra_lines, queued_at, attempts, kind,"
    " other_lines, press_kind"
)
# Schema 1 -> 2: a row may carry lines for other child devices, or be lines only.
_MIGRATE_1_TO_2 = """
ALTER TABLE events ADD COLUMN kind TEXT NOT NULL DEFAULT 'event';
ALTER TABLE events ADD COLUMN other_lines TEXT NOT NULL DEFAULT '[]';
"""
# Schema 2 -> 3: a press row keeps its kind (single, double, long: issue 19), so an event read
# back says what the button said; rows queued before read as "single", which is all a network
# press ever is. The quarantine table, if one was made, keeps it too.
_MIGRATE_2_TO_3 = """
ALTER TABLE events ADD COLUMN press_kind TEXT NOT NULL DEFAULT 'single';
"""
_MIGRATE_2_TO_3_QUARANTINE = "ALTER TABLE quarantine ADD COLUMN press_kind"

# A press's identity: (serial, time to the millisecond in UTC, event type); see press_key.
PressKey = tuple[str, str, str]
PRESS_IDS_DAYS = 800  # how long a queued press is remembered (a capture replayed next year)
_PRESS_IDS = """
CREATE TABLE IF NOT EXISTS press_ids (
    serial     TEXT NOT NULL,
    time       TEXT NOT NULL,
    type       TEXT NOT NULL,
    remembered TEXT NOT NULL,
    PRIMARY KEY (serial, time, type)
) WITHOUT ROWID
"""
# `remember` forgets old identities on every press: without this index that DELETE read the
# whole table each time.
_PRESS_IDS_AGE = "CREATE INDEX IF NOT EXISTS press_ids_remembered ON press_ids (remembered)"


class OutboxError(DashkanbanError):
    """The outbox file cannot be used: corrupt, disk full, an I/O error. Exit code 1."""


class OutboxFullError(OutboxError):
    """The cap is reached: the new event is refused and the oldest are kept."""


@dataclass(frozen=True, slots=True)
class QueuedEvent:
    id: int  # SQLite rowid, increasing in press order
    event: Event | None  # None for a row of lines only (`put_lines`)
    extra_lines: tuple[str, ...]  # more SmartREST lines for the same device, sent with the 400
    queued_at: datetime  # aware UTC
    attempts: int
    # Lines for other devices of the same gateway, sent after the event in this order: e.g. a
    # refill button's press clears the alarm on its bin's reorder button.
    other_lines: tuple[DeviceLine, ...] = ()


@dataclass(frozen=True, slots=True)
class OutboxStats:
    """What `outbox status` shows."""

    rows: int
    bytes: int
    refused: int
    last_error: str | None
    last_error_at: datetime | None
    oldest: QueuedEvent | None
    file_bytes: int  # the database plus its WAL on disk
    quarantined: int = 0  # unreadable rows moved to the quarantine table
    c8y_refused: int = 0  # lines Cumulocity refused on `s/e` after accepting them
    c8y_last: str | None = None  # the last of them: "<time> <s/e line> for <our line>"


class _Counters(NamedTuple):
    """The one-row stats table the triggers keep (OutboxStats adds what other queries find)."""

    rows: int
    bytes: int
    refused: int  # by the cap
    last_error: str | None
    last_error_at: str | None  # ISO text as stored; OutboxStats parses it


def _utc_now() -> datetime:
    return datetime.now(UTC)


def row_bytes(
    event: Event, extra_lines: Sequence[str], other_lines: Sequence[DeviceLine] = ()
) -> int:
    """The payload a row is charged against `max_bytes`: its text fields in UTF-8.

    SQLite's own overhead (record headers, b-tree pages, indexes) comes on top; docs/outbox.md
    gives the measured ratio of file size to payload.
    """
    fields = (event.mac, event.serial, event.name, event.type, event.text, event.trigger)
    total = len(event.time.isoformat()) + sum(len(f.encode()) for f in fields)
    total += sum(len(line.encode()) for line in extra_lines)
    return total + _lines_bytes(other_lines)


def _lines_bytes(lines: Sequence[DeviceLine]) -> int:
    return sum(len((serial or "").encode()) + len(line.encode()) for serial, line in lines)


def _storable(text: str) -> str:
    """Text SQLite and Cumulocity can take: lone surrogates (bytes a decoder could not read, e.g.
    from a hostile DHCP hostname) become visible `\\udcff` escapes instead of failing the put."""
    try:
        text.encode()
    except UnicodeEncodeError:
        return text.encode("utf-8", "backslashreplace").decode()
    return text


def _storable_event(event: Event, extra: tuple[str, ...]) -> tuple[Event, tuple[str, ...]]:
    fields = (event.mac, event.serial, event.name, event.type, event.text, event.trigger, *extra)
    if all(_storable(f) is f for f in fields):
        return event, extra
    log.warning("event of %r has text that is not valid Unicode: stored escaped", event.mac)
    return (
        dataclasses.replace(
            event,
            mac=_storable(event.mac),
            serial=_storable(event.serial),
            name=_storable(event.name),
            type=_storable(event.type),
            text=_storable(event.text),
            # A trigger is one of a few ASCII words (values.Trigger): stored as it is.
        ),
        tuple(_storable(line) for line in extra),
    )


def _storable_lines(lines: Sequence[DeviceLine]) -> tuple[DeviceLine, ...]:
    return tuple(
        DeviceLine(None if serial is None else _storable(serial), _storable(line))
        for serial, line in lines
    )


class Outbox:
    """The durable, bounded, ordered queue of events still owed to Cumulocity."""

    def __init__(
        self,
        connection: sqlite3.Connection,
        path: Path,
        *,
        max_rows: int,
        max_bytes: int,
        clock: Callable[[], datetime],
        metrics: Metrics | None,
    ) -> None:
        self._db = connection
        self.path = path
        self.max_rows = max_rows
        self.max_bytes = max_bytes
        self._clock = clock
        self._metrics = metrics
        self._lock = threading.Lock()
        self._over_cap = False  # warn once per crossing, not once per refused press
        self._short_of_space = False  # a write failed with a full disk: checkpoint first
        self._closed = False

    # -- opening -------------------------------------------------------------------------------

    @classmethod
    def from_settings(
        cls,
        settings: OutboxSettings,
        *,
        clock: Callable[[], datetime] = _utc_now,
        metrics: Metrics | None = None,
    ) -> Outbox:
        """The outbox `[outbox]` names, with its caps (`path`, `max_rows`, `max_bytes`)."""
        return cls.open(settings.path, max_rows=settings.max_rows, max_bytes=settings.max_bytes,
                        clock=clock, metrics=metrics)

    @classmethod
    def open(
        cls,
        path: Path,
        *,
        max_rows: int = DEFAULT_MAX_ROWS,
        max_bytes: int = DEFAULT_MAX_BYTES,
        clock: Callable[[], datetime] = _utc_now,
        metrics: Metrics | None = None,
    ) -> Outbox:
        """Open (or create) the outbox at `path`. Raises ConfigError or OutboxError (one line)."""
        path = Path(path)
        existed = path.exists()
        if existed and not path.is_file():
            raise ConfigError("the outbox path is not a file; set [outbox] path to a file", path)
        _make_folder(path.parent)
        if existed:
            _check_writable(path)
        else:
            _create_file(path)
        try:
            connection = sqlite3.connect(
                path, isolation_level=None, check_same_thread=False, timeout=BUSY_TIMEOUT_MS / 1000
            )
        except sqlite3.Error as exc:
            raise _translate(exc, path, "open") from None
        connection.text_factory = _lenient_text
        try:
            _prepare(connection, path, check=existed)
        except BaseException:
            connection.close()
            raise
        outbox = cls(
            connection, path, max_rows=max_rows, max_bytes=max_bytes, clock=clock, metrics=metrics
        )
        log.debug("outbox %s open: %d queued", path, outbox.count())
        return outbox

    # -- the queue -----------------------------------------------------------------------------

    def put(
        self,
        event: Event,
        extra_lines: Sequence[str] = (),
        other_lines: Sequence[DeviceLine] = (),
        key: PressKey | None = None,
    ) -> int:
        """Queue one event; durable (fsynced) when this returns. Returns the row id.

        `extra_lines` go with the event to its own device; `other_lines` are (child serial or
        None for the gateway, line) pairs sent after it, in order, acknowledged with the row.
        `key` (`press_key(event)`) is remembered as `remember` does, in the same transaction as
        the row: one fsync per press, and a press is never queued without its identity, nor
        its identity kept for a press that was not queued.

        Raises OutboxFullError when the cap is reached (the event is not queued, the refusal is
        counted) and OutboxError when the disk is full or failing (nothing already queued is lost).
        """
        event, extra = _storable_event(event, tuple(extra_lines))
        others = _storable_lines(other_lines)
        size = row_bytes(event, extra, others)
        now = self._clock().astimezone(UTC)
        values = (
            event.time.isoformat(),
            event.mac,
            event.serial,
            event.name,
            event.type,
            event.text,
            event.trigger,
            json.dumps(extra, ensure_ascii=False),
            now.isoformat(),
            size,
            KIND_EVENT,
            json.dumps(others, ensure_ascii=False),
            event.kind,
        )
        # The identity is stamped with the row's queued_at, so `drop` sees this row as the one
        # that first queued the press (`_first_queued_by`).
        also = () if key is None else self._remembering([key], now)
        return self._insert(values, size, "queueing an event", also)

    def put_row(self, event: Event, extra_lines: Sequence[str] = (),
                other_lines: Sequence[DeviceLine] = (), key: PressKey | None = None
                ) -> QueuedEvent:
        """`put` (with the press identity `key` in the same transaction), returning the row as
        `peek` will read it back, without reading it: `run` hands a fresh press to the Courier
        at once (issue 11)."""
        stored, extra = _storable_event(event, tuple(extra_lines))
        others = _storable_lines(other_lines)
        row_id = self.put(stored, extra, others, key)
        return QueuedEvent(row_id, stored, extra, self._clock().astimezone(UTC), 0, others)

    def put_lines(self, lines: Sequence[DeviceLine], time: datetime) -> int:
        """Queue SmartREST lines without an event (same guarantees and cap as `put`).

        `time` is when they were made (shown by `outbox status`). Returns the row id.
        """
        if not lines:
            raise ValueError("put_lines needs at least one line")
        others = _storable_lines(lines)
        size = len(time.isoformat()) + _lines_bytes(others)
        values = (
            time.isoformat(), "", "", "", "", "", "", "[]",
            self._clock().astimezone(UTC).isoformat(), size, KIND_LINES,
            json.dumps(others, ensure_ascii=False), "single",
        )
        return self._insert(values, size, "queueing lines")

    def _insert(self, values: tuple[object, ...], size: int, action: str,
                also: Sequence[tuple[str, tuple[object, ...]]] = ()) -> int:
        """Insert one row, and run `also` in the same transaction (nothing of it on a refusal)."""

        def insert() -> int | None:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                rows, used = self._db.execute(
                    "SELECT rows, bytes FROM stats WHERE one = 1"
                ).fetchone()
                if rows + 1 > self.max_rows or used + size > self.max_bytes:
                    self._db.execute("UPDATE stats SET refused = refused + 1 WHERE one = 1")
                    self._db.execute("COMMIT")
                    raise self._refuse(rows, used)
                cursor = self._db.execute(
                    "INSERT INTO events (time, mac, serial, name, type, text, trigger,"
                    " extra_lines, queued_at, size, kind, other_lines, press_kind)"
                    " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                    values,
                )
                row_id = cursor.lastrowid
                for sql, params in also:
                    self._db.execute(sql, params)
                self._db.execute("COMMIT")
            except sqlite3.Error:
                self._rollback()
                raise
            return row_id

        with self._lock:
            self._check_open()
            try:
                row_id = self._with_room(insert)
            except sqlite3.Error as exc:
                raise _translate(exc, self.path, action) from None
        assert row_id is not None
        if self._metrics is not None:
            self._metrics.add("queued")
        return row_id

    def _refuse(self, rows: int, used: int) -> OutboxFullError:
        if self._metrics is not None:
            self._metrics.add("refused")
        message = (
            f"{self.path}: the outbox is full ({rows} events, {used} bytes; cap {self.max_rows} "
            f"rows, {self.max_bytes} bytes): new events are refused and the oldest kept until "
            "Cumulocity takes some; restore the uplink or raise [outbox] max_rows/max_bytes"
        )
        if not self._over_cap:
            self._over_cap = True
            log.warning("OUTBOX FULL: %s", message)
        return OutboxFullError(message)

    def peek(self, limit: int = 100, after_id: int = 0) -> list[QueuedEvent]:
        """Up to `limit` queued events with id > after_id, oldest first.

        A row that cannot be read back is quarantined on the way (`_quarantine`) and the rows
        behind it are returned: one bad row never stops delivery, and reading never raises a
        row's error into the caller."""
        found: list[QueuedEvent] = []
        while len(found) < limit:
            with self._lock:
                self._check_open()
                try:
                    rows = self._db.execute(
                        f"SELECT {_COLUMNS} FROM events WHERE id > ? ORDER BY id LIMIT ?",  # noqa: S608
                        (after_id, max(limit - len(found), 0)),  # negative LIMIT means "all"
                    ).fetchall()
                except sqlite3.Error as exc:
                    raise _translate(exc, self.path, "reading") from None
            poisoned = False
            for row in rows:
                after_id = int(row[0])
                try:
                    found.append(_queued(row))
                except (ValueError, TypeError, KeyError, IndexError, UnicodeError) as exc:
                    self._quarantine(after_id, f"{type(exc).__name__}: {exc}")
                    poisoned = True
            if not poisoned:
                break
        return found

    def _quarantine(self, row_id: int, reason: str) -> None:
        """Move an unreadable row to the quarantine table, whole, in one transaction."""
        reason = reason.encode("utf-8", "backslashreplace").decode("utf-8")[:300]

        now = self._clock().astimezone(UTC).isoformat()
        self._transaction("quarantining an unreadable row", [
            (_QUARANTINE, ()),
            (_QUARANTINE_COPY, (reason, now, row_id)),
            ("DELETE FROM events WHERE id = ?", (row_id,)),
        ])
        log.error(
            "outbox row %d cannot be read (%s): moved to the quarantine table of %s, delivery "
            "goes on with the next row", row_id, reason, self.path,
        )
        if self._metrics is not None:
            self._metrics.add("quarantined")

    def _transaction(self, what: str,
                     statements: Sequence[tuple[str, tuple[object, ...]]]) -> None:
        """`statements` in one write transaction (with room made on a full disk, as `put`);
        a failure is an OutboxError saying `what` failed, and nothing of it is kept."""

        def run() -> None:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                for sql, params in statements:
                    self._db.execute(sql, params)
                self._db.execute("COMMIT")
            except sqlite3.Error:
                self._rollback()
                raise

        with self._lock:
            self._check_open()
            try:
                self._with_room(run)
            except sqlite3.Error as exc:
                raise _translate(exc, self.path, what) from None

    def quarantined(self) -> int:
        """Rows moved to the quarantine table since the file was made (they are kept there)."""
        with self._lock:
            self._check_open()
            try:
                exists = self._db.execute(
                    "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'quarantine'"
                ).fetchone()
                row = self._db.execute("SELECT count(*) FROM quarantine").fetchone() if (
                    exists) else (0,)
            except sqlite3.Error as exc:
                raise _translate(exc, self.path, "reading") from None
        return int(row[0])

    def record_c8y_refusal(self, error: str, line: str) -> None:
        """Count a line Cumulocity refused on `s/e` (`error`, e.g. `45,400,Wrong number of
        arguments`) after accepting it, and keep it as the last one."""
        now = self._clock().astimezone(UTC).isoformat()
        error, line = error[:300], line[:300]

        self._transaction("counting a refusal by Cumulocity", [
            (_C8Y_REFUSALS, ()),
            ("INSERT INTO c8y_refusals (one, count, last_error, last_line, last_at)"
             " VALUES (1, 1, ?, ?, ?) ON CONFLICT (one) DO UPDATE SET"
             " count = count + 1, last_error = excluded.last_error,"
             " last_line = excluded.last_line, last_at = excluded.last_at",
             (error, line, now)),
        ])
        if self._metrics is not None:
            self._metrics.add("c8y_refused")

    def c8y_refusals(self) -> tuple[int, str | None]:
        """(lines Cumulocity refused since the file was made, the last as "<time> <s/e line>
        for <our line>")."""
        with self._lock:
            self._check_open()
            try:
                exists = self._db.execute(
                    "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'c8y_refusals'"
                ).fetchone()
                row = self._db.execute(
                    "SELECT count, last_error, last_line, last_at FROM c8y_refusals"
                    " WHERE one = 1"
                ).fetchone() if exists else None
            except sqlite3.Error as exc:
                raise _translate(exc, self.path, "reading") from None
        if row is None:
            return 0, None
        return int(row[0]), f"{row[3]} {row[1]} for {row[2]}"

    def ack(self, row_id: int) -> None:
        """Delete a row after its PUBACK. Acking an id twice, or an unknown one, is a no-op."""
        with self._lock:
            self._check_open()
            try:
                deleted = self._with_room(lambda: self._delete(row_id))
                if self._over_cap and deleted:
                    rows, used = self._db.execute(
                        "SELECT rows, bytes FROM stats WHERE one = 1"
                    ).fetchone()
                    if rows < self.max_rows and used < self.max_bytes:
                        self._over_cap = False
                        log.info("outbox below its cap again (%d events): queueing resumes", rows)
            except sqlite3.Error as exc:
                raise _translate(exc, self.path, "removing a delivered event") from None
        if deleted and self._metrics is not None:
            self._metrics.add("delivered")

    def _delete(self, row_id: int) -> int:
        # A delete need not wait for fsync: if power fails before it reaches the disk, the row
        # is sent again, a duplicate at-least-once allows (docs/outbox.md). In WAL mode NORMAL
        # still commits atomically, and the next put's FULL commit syncs it with its own. The
        # fsync per PUBACK, in the MQTT network thread, held the drain under 1,000 events/s.
        self._db.execute("PRAGMA synchronous = NORMAL")
        try:
            return int(self._db.execute("DELETE FROM events WHERE id = ?", (row_id,)).rowcount)
        finally:
            self._db.execute("PRAGMA synchronous = FULL")

    def mark_attempt(self, row_id: int, error: str | None = None) -> None:
        """Count a delivery attempt; an error is kept on the row and as the outbox's last error."""

        def update() -> None:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                self._db.execute(
                    "UPDATE events SET attempts = attempts + 1,"
                    " last_error = coalesce(?, last_error) WHERE id = ?",
                    (error, row_id),
                )
                if error is not None:
                    self._db.execute(
                        "UPDATE stats SET last_error = ?, last_error_at = ? WHERE one = 1",
                        (error, self._clock().astimezone(UTC).isoformat()),
                    )
                self._db.execute("COMMIT")
            except sqlite3.Error:
                self._rollback()
                raise

        with self._lock:
            self._check_open()
            try:
                self._with_room(update)
            except sqlite3.Error as exc:
                raise _translate(exc, self.path, "recording a delivery attempt") from None

    def count(self) -> int:
        return self._counters().rows

    def oldest(self) -> QueuedEvent | None:
        found = self.peek(1)
        return found[0] if found else None

    def last_error(self) -> str | None:
        return self._counters().last_error

    def refused(self) -> int:
        """Events refused by the cap since the file was made."""
        return self._counters().refused

    def _counters(self) -> _Counters:
        with self._lock:
            self._check_open()
            try:
                row = self._db.execute(
                    "SELECT rows, bytes, refused, last_error, last_error_at"
                    " FROM stats WHERE one = 1"
                ).fetchone()
            except sqlite3.Error as exc:
                raise _translate(exc, self.path, "reading") from None
        return _Counters(int(row[0]), int(row[1]), int(row[2]), row[3], row[4])

    def stats(self) -> OutboxStats:
        oldest = self.oldest()  # first: quarantining a bad oldest row changes the counts
        rows, used, refused, error, error_at = self._counters()
        refusals, last_refusal = self.c8y_refusals()
        return OutboxStats(
            rows=rows,
            bytes=used,
            refused=refused,
            last_error=error,
            last_error_at=_time_or_none(error_at),
            oldest=oldest,
            quarantined=self.quarantined(),
            c8y_refused=refusals,
            c8y_last=last_refusal,
            file_bytes=sum(
                p.stat().st_size
                for p in (self.path, self.path.with_name(self.path.name + "-wal"))
                if p.exists()
            ),
        )

    def close(self) -> None:
        with self._lock:
            if not self._closed:
                self._closed = True
                self._db.close()

    def __enter__(self) -> Outbox:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _with_room(self, write: Callable[[], _T]) -> _T:
        """Run one write, keeping SQLite's write-ahead log from locking up a full disk.

        SQLite checkpoints the WAL only at 1,000 pages (about 4 MB) and never shrinks it. On a
        full disk the WAL holds the only copy of the recent pages, so the checkpoint that would
        free it needs room in the database file first: once the disk is full, freeing a little
        space is eaten by the WAL again and even the deletes that would make room fail for good
        (found on a 512 KiB tmpfs). So after a write failed for lack of space, every write first
        tries a TRUNCATE checkpoint (cheap while the disk is still full: it fails at once) until
        one succeeds, and the failed write is tried once more after a successful one.
        Called with the lock held, outside any transaction.
        """
        if self._short_of_space and self._truncate_wal():
            self._short_of_space = False
        try:
            return write()
        except sqlite3.Error as exc:
            if not _is_full(exc):
                raise
            self._short_of_space = True
            if not self._truncate_wal():
                raise
            self._short_of_space = False
        return write()

    def _truncate_wal(self) -> bool:
        try:
            busy = self._db.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()[0]
        except sqlite3.Error as exc:
            log.debug("checkpoint on a full disk failed: %s", exc)
            return False
        if busy:
            return False  # another process reads the file: the WAL cannot be cut now
        log.info("%s: moved the write-ahead log into the outbox file to make room on the disk",
                 self.path)
        return True

    def _check_open(self) -> None:
        if self._closed:
            raise OutboxError(f"{self.path}: the outbox is closed")

    def _rollback(self) -> None:
        try:
            if self._db.in_transaction:
                self._db.execute("ROLLBACK")
        except sqlite3.Error:
            log.debug("rollback failed", exc_info=True)


    # -- press identity and dropping (issue 14) -----------------------------------------------

    def seen(self, keys: Iterable[PressKey]) -> dict[PressKey, str]:
        """Which of these presses were queued before: "queued" (still in the outbox) or
        "delivered" (queued once and gone since: delivered, as `outbox drop` forgets what it
        drops). Presses not seen are left out."""
        wanted = set(keys)
        with self._lock:
            self._check_open()
            try:
                self._ledger()
                rows = self._db.execute(
                    "SELECT serial, time, type FROM events WHERE kind = ?", (KIND_EVENT,)
                ).fetchall()
                queued = {_key(str(serial), str(time), str(type_)) for serial, time, type_ in rows}
                found = dict.fromkeys(wanted & queued, "queued")
                for key in sorted(wanted - queued):
                    if self._db.execute(
                        "SELECT 1 FROM press_ids WHERE serial = ? AND time = ? AND type = ?", key
                    ).fetchone():
                        found[key] = "delivered"
            except sqlite3.Error as exc:
                raise _translate(exc, self.path, "reading") from None
        return found

    def remember(self, keys: Iterable[PressKey]) -> None:
        """Keep the identities of presses just queued (`seen` knows them after delivery);
        identities older than PRESS_IDS_DAYS are forgotten."""
        self._transaction("remembering presses",
                          self._remembering(keys, self._clock().astimezone(UTC)))

    @staticmethod
    def _remembering(keys: Iterable[PressKey],
                     now: datetime) -> list[tuple[str, tuple[object, ...]]]:
        """The statements that keep `keys` (stamped `now`) and forget the oldest identities."""
        stamp = now.isoformat()
        cutoff = (now - timedelta(days=PRESS_IDS_DAYS)).isoformat()
        return [
            (_PRESS_IDS, ()),
            (_PRESS_IDS_AGE, ()),
            *(("INSERT OR IGNORE INTO press_ids (serial, time, type, remembered)"
               " VALUES (?, ?, ?, ?)", (*key, stamp)) for key in keys),
            ("DELETE FROM press_ids WHERE remembered < ?", (cutoff,)),
        ]

    def drop(self, *, button: str | None = None,
             before: datetime | None = None) -> list[QueuedEvent]:
        """Delete queued rows: all of them, those of one button (its serial, MAC or name), or
        those pressed before a time. A press first queued by a dropped row is forgotten, so a
        replay queues it again; one delivered before stays known. Returns the rows dropped,
        oldest first."""
        serial = None
        if button is not None:
            from dashkanban.detect.buttons import normalize_address, serial_of

            try:  # a MAC, or a Zigbee button's EUI-64 (issue 19)
                serial = serial_of(normalize_address(button))
            except ValueError:
                serial = None

        def matches(row: QueuedEvent) -> bool:
            event = row.event
            if button is not None:
                return event is not None and (
                    event.serial == serial or event.name.casefold() == button.casefold()
                )
            if before is not None:
                time = event.time if event is not None else row.queued_at
                return time < before
            return True

        with self._lock:
            self._check_open()
            try:
                rows = [_queued(r) for r in self._db.execute(
                    f"SELECT {_COLUMNS} FROM events ORDER BY id"  # noqa: S608
                ).fetchall()]
                dropped = [row for row in rows if matches(row)]

                def delete() -> None:
                    self._db.execute("BEGIN IMMEDIATE")
                    try:
                        self._db.executemany(
                            "DELETE FROM events WHERE id = ?", [(r.id,) for r in dropped]
                        )
                        self._db.executemany(
                            "DELETE FROM press_ids WHERE serial = ? AND time = ? AND type = ?",
                            forget,
                        )
                        self._db.execute("COMMIT")
                    except sqlite3.Error:
                        self._rollback()
                        raise

                self._ledger()
                forget = [key for r in dropped if (key := self._first_queued_by(r)) is not None]
                self._with_room(delete)
            except sqlite3.Error as exc:
                raise _translate(exc, self.path, "dropping events") from None
        return dropped

    def _first_queued_by(self, row: QueuedEvent) -> PressKey | None:
        """The row's press identity if this row is what first queued it (remembered when it was
        queued, not before): dropping it forgets the press, so a replay queues it again. A
        press queued once more (`replay --again`) stays known as delivered before."""
        if row.event is None:
            return None
        key = press_key(row.event)
        found = self._db.execute(
            "SELECT remembered FROM press_ids WHERE serial = ? AND time = ? AND type = ?", key
        ).fetchone()
        if found is None or datetime.fromisoformat(str(found[0])) < row.queued_at:
            return None
        return key

    def _ledger(self) -> None:
        # Its own table, made when first needed and outside the schema version: an older
        # dashkanban ignores it, and it needs no migration of the queue (called with the lock).
        self._db.execute(_PRESS_IDS)
        self._db.execute(_PRESS_IDS_AGE)


# -- helpers -----------------------------------------------------------------------------------


def press_key(event: Event) -> PressKey:
    """A press's identity (docs/outbox.md): its button's serial, its time to the millisecond
    (in UTC, so the same instant written with another offset is the same press), its type."""
    return (event.serial, event.time.astimezone(UTC).isoformat(timespec="milliseconds"),
            event.type)


def _key(serial: str, time: str, type_: str) -> PressKey:
    utc = datetime.fromisoformat(time).astimezone(UTC)
    return (serial, utc.isoformat(timespec="milliseconds"), type_)


def _is_full(exc: sqlite3.Error) -> bool:
    return str(getattr(exc, "sqlite_errorname", "") or "").startswith("SQLITE_FULL")


def _queued(row: tuple[object, ...]) -> QueuedEvent:
    """A row as the queue's value; ValueError, TypeError or UnicodeError for a damaged one."""
    (row_id, time, mac, serial, name, type_, text, trigger, extra, queued_at, attempts, kind,
     others, press_kind) = row
    event = None if kind == KIND_LINES else Event(
        time=_aware(datetime.fromisoformat(_str(time))),
        mac=_str(mac),
        serial=_str(serial),
        name=_str(name),
        type=_str(type_),
        text=_str(text),
        trigger=_trigger(trigger),
        kind=_press_kind(press_kind),
    )
    if not isinstance(row_id, int) or not isinstance(attempts, int):
        raise TypeError(f"id {row_id!r} or attempts {attempts!r} is not a whole number")
    extra_lines = tuple(_str(line) for line in _json_list(extra))
    other_lines: list[DeviceLine] = []
    for item in _json_list(others):
        if not isinstance(item, list) or len(item) != 2:
            raise TypeError(f"{item!r} where a [serial, line] pair was stored")
        serial_of_line, line = item
        child = None if serial_of_line is None else _str(serial_of_line)
        other_lines.append(DeviceLine(child, _str(line)))
    return QueuedEvent(
        id=row_id,
        event=event,
        extra_lines=extra_lines,
        queued_at=_aware(datetime.fromisoformat(_str(queued_at))),
        attempts=attempts,
        other_lines=tuple(other_lines),
    )


def _time_or_none(text: str | None) -> datetime | None:
    """The stats row's last error time; a damaged one is shown as unknown, never a failure."""
    try:
        return datetime.fromisoformat(text) if text else None
    except ValueError:
        return None


def _lenient_text(data: bytes) -> str:
    """SQLite TEXT -> str without failing the whole query on a row of bad UTF-8: the bad bytes
    become surrogates, which `_str` then refuses for that row alone (it is quarantined)."""
    return data.decode("utf-8", "surrogateescape")


def _str(value: object) -> str:
    if not isinstance(value, str):
        raise TypeError(f"{type(value).__name__} where text was stored")
    value.encode("utf-8")  # UnicodeEncodeError for bytes that were not UTF-8 (_lenient_text)
    return value


def _trigger(value: object) -> Trigger:
    # put() stored a Trigger; the row gives back what was written, as it always has (a word a
    # newer version added is read, not quarantined).
    return cast("Trigger", _str(value))


def _press_kind(value: object) -> PressKind:
    # As `_trigger`: what put() stored is read back; a kind a newer version added is not a
    # reason to quarantine the row.
    return cast("PressKind", _str(value))


def _json_list(value: object) -> list[object]:
    loaded = json.loads(_str(value))
    if not isinstance(loaded, list):
        raise TypeError(f"{type(loaded).__name__} where a JSON list was stored")
    return loaded


def _aware(time: datetime) -> datetime:
    return time if time.tzinfo is not None else time.replace(tzinfo=UTC)


def _make_folder(folder: Path) -> None:
    """Create missing folders with mode 0750 (not the umask's 0755): events name the buttons."""
    missing = []
    current = folder
    while not current.exists():
        missing.append(current)
        if current.parent == current:
            break
        current = current.parent
    for item in reversed(missing):
        try:
            item.mkdir(mode=FOLDER_MODE)
            item.chmod(FOLDER_MODE)
        except FileExistsError:
            continue
        except OSError as exc:
            raise ConfigError(
                f"cannot create the outbox folder: {exc.strerror}; create it for the service user "
                f"(install -d -m 0750 {item}) or set [outbox] path",
                item,
            ) from None
    if not folder.is_dir():
        raise ConfigError("is not a folder; set [outbox] path to a file in a folder", folder)
    if not os.access(folder, os.W_OK | os.X_OK):
        raise ConfigError(
            "the outbox folder is read-only (SQLite writes its -wal and -shm files next to the "
            f"outbox); make it writable for the service user (chown/chmod 0750 {folder}) "
            "or set [outbox] path",
            folder,
        )


def _check_writable(path: Path) -> None:
    if not os.access(path, os.R_OK | os.W_OK):
        raise ConfigError(
            "the outbox file is read-only; make it writable for the service user "
            f"(chown it, chmod 600 {path}) or set [outbox] path",
            path,
        )


def _create_file(path: Path) -> None:
    """Create the file 0600 ourselves: SQLite would use the umask, and gives -wal the same mode."""
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, FILE_MODE)
    except FileExistsError:
        return
    except OSError as exc:
        raise ConfigError(
            f"cannot create the outbox file: {exc.strerror}; set [outbox] path", path
        ) from None
    os.fchmod(fd, FILE_MODE)
    os.close(fd)


def _prepare(db: sqlite3.Connection, path: Path, *, check: bool) -> None:
    try:
        if check:
            result = [str(r[0]) for r in db.execute("PRAGMA integrity_check").fetchall()]
            if result != ["ok"]:
                raise _corrupt(path, "; ".join(result)[:200])
        db.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
        mode = _journal_mode_wal(db)
        if str(mode).lower() != "wal":
            raise OutboxError(f"{path}: SQLite refused WAL mode ({mode}); use a local file system")
        # FULL: in WAL mode NORMAL may lose the last commits on power loss, and a returned put
        # must survive that (https://www.sqlite.org/pragma.html#pragma_synchronous).
        db.execute("PRAGMA synchronous = FULL")
        version = int(db.execute("PRAGMA user_version").fetchone()[0])
        if version == 0:
            _create_schema(db, path)
        elif version < SCHEMA_VERSION:
            _migrate(db, path)
        elif version > SCHEMA_VERSION:
            raise OutboxError(
                f"{path}: the outbox was written by a newer dashkanban (schema {version}, this "
                f"one reads {SCHEMA_VERSION}); upgrade dashkanban or set [outbox] path"
            )
    except sqlite3.Error as exc:
        raise _translate(exc, path, "open") from None


def _journal_mode_wal(db: sqlite3.Connection) -> object:
    """`PRAGMA journal_mode = WAL`, tried again while another process holds the file: switching
    a new file to WAL needs an exclusive lock, and SQLite answers SQLITE_BUSY at once there
    instead of calling the busy handler (two first runs started together, issue 13)."""
    deadline = time.monotonic() + BUSY_TIMEOUT_MS / 1000
    while True:
        try:
            return db.execute("PRAGMA journal_mode = WAL").fetchone()[0]
        except sqlite3.OperationalError as exc:
            busy = str(getattr(exc, "sqlite_errorname", "")).startswith("SQLITE_BUSY")
            if not busy or time.monotonic() > deadline:
                raise
            time.sleep(0.01)


def _create_schema(db: sqlite3.Connection, path: Path) -> None:
    """Create the tables in one transaction taken with the write lock (`BEGIN IMMEDIATE`, which
    waits up to the busy timeout for another process's). What was read before the lock is read
    again under it: two first runs started together (two `replay`s on a new outbox) both arrive
    here, and the second finds the first one's finished schema and leaves it alone."""
    db.execute("BEGIN IMMEDIATE")
    try:
        version = int(db.execute("PRAGMA user_version").fetchone()[0])
        if version == 0:
            tables = db.execute("SELECT name FROM sqlite_master WHERE type = 'table'").fetchall()
            if tables:
                raise OutboxError(
                    f"{path}: is an SQLite database but not a dashkanban outbox; set [outbox] "
                    "path to another file"
                )
            for statement in _statements(_SCHEMA):
                db.execute(statement)
            db.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
        db.execute("COMMIT")
    except BaseException:
        if db.in_transaction:
            db.execute("ROLLBACK")
        raise
    if 0 < version < SCHEMA_VERSION:
        _migrate(db, path)


def _statements(script: str) -> Iterator[str]:
    """The statements of a script one by one (`executescript` would commit our transaction)."""
    pending = ""
    for line in script.splitlines(keepends=True):
        pending += line
        if sqlite3.complete_statement(pending):
            yield pending.strip()
            pending = ""


def _migrate(db: sqlite3.Connection, path: Path) -> None:
    """Schema 1 -> 2 -> 3 in one transaction: every queued row stays, as an event row (2) of
    kind "single" (3).

    The version is read again under the write lock: another process (a `replay` next to the
    daemon) may have migrated the file since we looked.
    """
    db.execute("BEGIN IMMEDIATE")
    try:
        version = int(db.execute("PRAGMA user_version").fetchone()[0])
        if 0 < version < SCHEMA_VERSION:
            steps = [_MIGRATE_1_TO_2] if version == 1 else []
            for script in [*steps, _MIGRATE_2_TO_3]:
                for statement in script.strip().split(";"):
                    if statement.strip():
                        db.execute(statement)
            if db.execute("SELECT 1 FROM sqlite_master WHERE type = 'table'"
                          " AND name = 'quarantine'").fetchone():
                db.execute(_MIGRATE_2_TO_3_QUARANTINE)
            db.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
            log.info("%s: outbox schema upgraded from %d to %d", path, version, SCHEMA_VERSION)
        db.execute("COMMIT")
    except BaseException:
        if db.in_transaction:
            db.execute("ROLLBACK")
        raise


def _corrupt(path: Path, detail: str) -> OutboxError:
    return OutboxError(
        f"{path}: the outbox is corrupt ({detail}); stop dashkanban, move it aside "
        f"(mv {path} {path}.corrupt) and start again: a new one is made; "
        f"`sqlite3 {path}.corrupt .recover` may save its events"
    )


def _translate(exc: sqlite3.Error, path: Path, action: str) -> DashkanbanError:
    """One line for the user from an SQLite error; nothing already committed is touched."""
    name = getattr(exc, "sqlite_errorname", "") or ""
    if name.startswith("SQLITE_FULL"):
        return OutboxError(
            f"{path}: the disk is full ({action} failed; everything queued before is kept); "
            f"free space on the file system of {path.parent}"
        )
    if name.startswith("SQLITE_READONLY"):
        return ConfigError(
            f"the outbox is read-only ({action} failed); make the file and its folder writable "
            "for the service user or set [outbox] path",
            path,
        )
    if name.startswith(("SQLITE_CORRUPT", "SQLITE_NOTADB")):
        return _corrupt(path, str(exc))
    if name.startswith("SQLITE_BUSY"):
        return OutboxError(
            f"{path}: the outbox stayed locked by another process for {BUSY_TIMEOUT_MS // 1000} s "
            f"({action}); is a stuck dashkanban running?"
        )
    if name.startswith("SQLITE_CANTOPEN"):
        return ConfigError(
            f"cannot open the outbox ({exc}); check the path and its permissions", path
        )
    return OutboxError(f"{path}: {action} failed: {exc} ({name or type(exc).__name__})")


# -- shared with the commands (commands/outbox.py) ---------------------------------------------


@contextlib.contextmanager
def delivery_lock(path: Path, *, wait: bool) -> Iterator[bool]:
    """Who carries this outbox to Cumulocity: True when we hold `<outbox>.lock`.

    Cumulocity allows one connection per client id and drops the older one (docs/protocol.md 1.3),
    so the daemon and a one-shot command (`replay`, `outbox flush`, `test-button`, `kanban
    refilled`) must not both connect as the gateway. The daemon holds the lock while it runs
    (`wait=True`: it waits for a command that is busy delivering); a command that finds it held
    (`wait=False` yields False) only queues, and the daemon sends what it queued.
    """
    lock_path = path.with_name(path.name + ".lock")
    fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            if not wait:
                yield False
                return
            log.info("waiting for another dashkanban command to finish with %s", path)
            fcntl.flock(fd, fcntl.LOCK_EX)
        yield True
    finally:
        os.close(fd)  # closing releases the lock


def format_status(path: Path, stats: OutboxStats, max_rows: int, max_bytes: int) -> str:
    lines = [
        f"outbox: {path}",
        f"queued: {plural(stats.rows, 'event')}, {stats.bytes} bytes "
        f"(cap {max_rows} events, {max_bytes} bytes; {stats.file_bytes} bytes on disk)",
    ]
    oldest = stats.oldest
    if oldest is None:
        lines.append("oldest: -")
    else:
        e = oldest.event
        what = (
            f"{len(oldest.other_lines)} SmartREST lines" if e is None
            else f"{e.c8y_time} {e.name} ({e.mac}){_kind_shown(e)}"
        )
        lines.append(
            f"oldest: {what}, queued "
            f"{oldest.queued_at.isoformat(timespec='seconds')}, {oldest.attempts} attempts"
        )
    lines.append(f"refused by the cap: {stats.refused}")
    if stats.quarantined:
        lines.append(
            f"quarantined: {stats.quarantined} unreadable rows (kept in the table quarantine of "
            f"{path})"
        )
    refused = f"refused by Cumulocity: {stats.c8y_refused}"
    if stats.c8y_last is not None:
        refused += f" (last: {escape_controls(stats.c8y_last)})"
    lines.append(refused)
    if stats.last_error is None:
        lines.append("last error: -")
    else:
        when = stats.last_error_at.isoformat(timespec="seconds") if stats.last_error_at else "?"
        lines.append(f"last error: {when} {stats.last_error}")
    return "\n".join(lines)


def _kind_shown(event: Event) -> str:
    """" long press" or " double press" after a row's button; nothing for a single press (all a
    network press is, and the only kind before issue 19)."""
    return "" if event.kind == "single" else f" {event.kind} press"


def plural(count: int, word: str) -> str:
    """"1 event", "2 events", "2 presses"."""
    if count == 1:
        return f"{count} {word}"
    return f"{count} {word}{'es' if word.endswith(('s', 'sh', 'ch', 'x')) else 's'}"
