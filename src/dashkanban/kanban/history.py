"""The local press history (SQLite, next to the outbox): presses, refills, pending clears.

Every press of a known button is kept with what it meant for its bin (reorder, repeat, refill),
and every refill with where it came from (the refill button, `dashkanban kanban refilled`, or the
`c8y_KanbanRefilled` operation). A refill made on the command line is stored with its `306`
lines as "pending clear" until the uplink has sent them. Rows older than `[kanban] history_days`
are pruned when the history is opened; pending clears are kept until sent. Operations are kept
by id (the last OPERATIONS_KEPT), each with its answer until the outbox has it, so a re-delivered
operation is answered once, also after a restart.
"""

from __future__ import annotations

import json
import logging
import os
import sqlite3
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

from dashkanban.detect.presses import Press
from dashkanban.errors import DashkanbanError
from dashkanban.kanban.alarms import KIND_REFILL, DevicePublish, SignalKind
from dashkanban.kanban.analytics import Observation

log = logging.getLogger(__name__)

FILE_NAME = "history.sqlite3"

_SCHEMA = """
CREATE TABLE IF NOT EXISTS presses (
    id     INTEGER PRIMARY KEY,
    time   TEXT NOT NULL,   -- ISO 8601 with offset, as pressed
    ts     REAL NOT NULL,   -- the same instant in epoch seconds, for ranges and retention
    serial TEXT NOT NULL,
    name   TEXT NOT NULL,
    bin    TEXT,
    kind   TEXT NOT NULL    -- reorder, repeat, refill or press
);
CREATE INDEX IF NOT EXISTS presses_ts ON presses (ts);
CREATE TABLE IF NOT EXISTS refills (
    id      INTEGER PRIMARY KEY,
    time    TEXT NOT NULL,
    ts      REAL NOT NULL,
    bin     TEXT NOT NULL,
    source  TEXT NOT NULL,  -- button, cli or operation
    pending TEXT            -- JSON [[serial or null, [line, ...]], ...] to send; NULL once sent
);
CREATE INDEX IF NOT EXISTS refills_ts ON refills (ts);
CREATE TABLE IF NOT EXISTS overdue (
    id       INTEGER PRIMARY KEY,
    bin      TEXT NOT NULL,
    serial   TEXT NOT NULL, -- the reorder button whose device carries the c8y_KanbanOverdue alarm
    reorder  REAL NOT NULL, -- epoch seconds of the open reorder it is about
    time     TEXT NOT NULL, -- when it was raised
    ts       REAL NOT NULL,
    cleared  INTEGER NOT NULL DEFAULT 0  -- 1 once a refill cleared it
);
CREATE TABLE IF NOT EXISTS operations (
    seq     INTEGER PRIMARY KEY,  -- in the order handled: the oldest are forgotten first
    id      TEXT NOT NULL UNIQUE, -- Cumulocity's operation id
    time    TEXT NOT NULL,        -- when it was handled
    pending TEXT                  -- JSON [[serial or null, [line, ...]], ...] of its answer
                                  -- (504, clears, 505/506) until the outbox has it; then NULL
);
"""

# Operation ids kept (issue 15: an operation is answered once, also across a restart). `500`
# re-delivers only operations still PENDING, whose answer is at most a backlog old, so the
# last 10,000 are plenty; the ones whose answer is not yet queued are never forgotten.
OPERATIONS_KEPT = 10_000


class HistoryError(DashkanbanError):
    """The history file could not be opened or written."""


@dataclass(frozen=True, slots=True)
class PendingClear:
    """A refill whose lines the uplink has still to send."""

    id: int
    bin: str
    time: datetime
    source: str
    publishes: tuple[DevicePublish, ...]


def history_path(outbox_path: Path) -> Path:
    """`history.sqlite3` in the outbox's folder."""
    return outbox_path.parent / FILE_NAME


class History:
    """The history file. Open with `History.open(path, history_days, now)`; close when done.

    Thread-safe: one connection behind a lock. In `run` presses and operations both reach it on
    the daemon's writer thread (commands/run.py).
    """

    def __init__(self, connection: sqlite3.Connection, path: Path) -> None:
        self._db = connection
        self.path = path
        self._lock = threading.RLock()

    @classmethod
    def open(cls, path: Path, history_days: int, now: datetime | None = None) -> History:
        try:
            _make_private_folders(path.parent)
            if not path.exists():
                # Owner-only: the history says when a store runs out of what.
                os.close(os.open(path, os.O_CREAT | os.O_WRONLY, 0o600))
            db = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
            db.execute("PRAGMA journal_mode=WAL")
            db.execute("PRAGMA synchronous=NORMAL")
            db.executescript(_SCHEMA)
        except (OSError, sqlite3.Error) as exc:
            raise HistoryError(f"cannot open the Kanban history {path}: {exc}") from None
        history = cls(db, path)
        history.prune(now or datetime.now(UTC), history_days)
        return history

    def close(self) -> None:
        with self._lock:
            self._db.close()

    def __enter__(self) -> History:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- writing

    def record_press(self, press: Press, kind: SignalKind, bin_name: str | None) -> None:
        """Keep a press; a refill-button press also closes its bin's open reorder."""
        button = press.button
        with self._transaction():
            self._db.execute(
                "INSERT INTO presses (time, ts, serial, name, bin, kind) VALUES (?,?,?,?,?,?)",
                (_iso(press.time), press.time.timestamp(), button.serial, button.name, bin_name,
                 kind),
            )
            if kind == KIND_REFILL and bin_name:
                self._db.execute(
                    "INSERT INTO refills (time, ts, bin, source, pending) VALUES (?,?,?,?,NULL)",
                    (_iso(press.time), press.time.timestamp(), bin_name, "button"),
                )
                self._clear_overdue(bin_name)

    def record_refill(
        self, bin_name: str, time: datetime, source: str, pending: Sequence[DevicePublish] = ()
    ) -> int:
        """Keep a refill; `pending` are the lines still to be sent (NULL when none)."""
        payload = _lines_json(pending) if pending else None
        with self._transaction():
            cursor = self._db.execute(
                "INSERT INTO refills (time, ts, bin, source, pending) VALUES (?,?,?,?,?)",
                (_iso(time), time.timestamp(), bin_name, source, payload),
            )
            self._clear_overdue(bin_name)
        return int(cursor.lastrowid or 0)

    def record_overdue(self, bin_name: str, serial: str, reordered: datetime,
                       time: datetime) -> None:
        """Keep a raised c8y_KanbanOverdue alarm, so it is raised once per open reorder, also
        across a restart, and the refill knows which device's alarm to clear."""
        with self._transaction():
            self._db.execute(
                "INSERT INTO overdue (bin, serial, reorder, time, ts) VALUES (?,?,?,?,?)",
                (bin_name, serial, reordered.timestamp(), _iso(time), time.timestamp()),
            )

    def record_operation(self, op_id: str, time: datetime, publishes: Sequence[DevicePublish],
                         refilled: str | None) -> None:
        """Keep an operation as handled, with its answer pending until the outbox has it
        (`answer_queued`), and the refill it made (`refilled`: the bin, None when it failed):
        one transaction, so a restart knows both or neither. The oldest ids beyond
        OPERATIONS_KEPT whose answers went out are forgotten."""
        with self._transaction():
            self._db.execute(
                "INSERT INTO operations (id, time, pending) VALUES (?,?,?)",
                (op_id, _iso(time), _lines_json(publishes)),
            )
            if refilled is not None:
                self._db.execute(
                    "INSERT INTO refills (time, ts, bin, source, pending) VALUES (?,?,?,?,NULL)",
                    (_iso(time), time.timestamp(), refilled, "operation"),
                )
                self._clear_overdue(refilled)
            self._db.execute(
                "DELETE FROM operations WHERE pending IS NULL AND seq <= "
                "(SELECT MAX(seq) FROM operations) - ?", (OPERATIONS_KEPT,),
            )

    def operation(self, op_id: str) -> tuple[DevicePublish, ...] | None:
        """None for an operation not handled (or long forgotten); else its answer's lines
        while they are still to be queued, () once the outbox has them."""
        with self._lock:
            row = self._db.execute(
                "SELECT pending FROM operations WHERE id = ?", (op_id,)
            ).fetchone()
        if row is None:
            return None
        return () if row[0] is None else _lines_from_json(row[0])

    def answer_queued(self, op_id: str) -> None:
        """The outbox has the operation's answer: only its id is kept."""
        with self._transaction():
            self._db.execute("UPDATE operations SET pending = NULL WHERE id = ?", (op_id,))

    def pending_answers(self) -> list[tuple[str, datetime, tuple[DevicePublish, ...]]]:
        """(id, time, lines) of the operations whose answer is not in the outbox yet (a crash or
        a full outbox in between), oldest first."""
        with self._lock:
            rows = self._db.execute(
                "SELECT id, time, pending FROM operations WHERE pending IS NOT NULL ORDER BY seq"
            ).fetchall()
        return [(op_id, datetime.fromisoformat(time), _lines_from_json(pending))
                for op_id, time, pending in rows]

    def _clear_overdue(self, bin_name: str) -> None:
        self._db.execute("UPDATE overdue SET cleared = 1 WHERE bin = ? AND cleared = 0",
                         (bin_name,))

    def mark_sent(self, refill_id: int) -> None:
        with self._transaction():
            self._db.execute("UPDATE refills SET pending = NULL WHERE id = ?", (refill_id,))

    def prune(self, now: datetime, history_days: int) -> int:
        cutoff = (now - timedelta(days=history_days)).timestamp()
        with self._transaction():
            gone = self._db.execute("DELETE FROM presses WHERE ts < ?", (cutoff,)).rowcount
            gone += self._db.execute(
                "DELETE FROM refills WHERE ts < ? AND pending IS NULL", (cutoff,)
            ).rowcount
            gone += self._db.execute(
                "DELETE FROM overdue WHERE ts < ? AND cleared = 1", (cutoff,)
            ).rowcount
        if gone:
            log.info("pruned %d history rows older than %d days", gone, history_days)
        return int(gone)

    # -- reading

    def active_bins(self) -> frozenset[str]:
        """Bins whose last reorder came after their last refill: the open Kanban cards."""
        with self._lock:
            last_reorder = dict(
                self._db.execute(
                    "SELECT bin, MAX(ts) FROM presses WHERE kind = 'reorder' GROUP BY bin"
                ).fetchall()
            )
            last_refill = dict(
                self._db.execute("SELECT bin, MAX(ts) FROM refills GROUP BY bin").fetchall()
            )
        return frozenset(
            bin_ for bin_, ts in last_reorder.items() if ts > last_refill.get(bin_, float("-inf"))
        )

    def observations(self, since: datetime | None = None) -> list[Observation]:
        """Reorder and repeat presses, oldest first."""
        with self._lock:
            rows = self._db.execute(
                "SELECT bin, time, kind FROM presses WHERE kind IN ('reorder', 'repeat') "
                "AND bin IS NOT NULL AND ts >= ? ORDER BY ts, id",
                (since.timestamp() if since else float("-inf"),),
            ).fetchall()
        return [Observation(bin_, datetime.fromisoformat(time), kind) for bin_, time, kind in rows]

    def reorder_presses(self) -> list[tuple[str, datetime, str]]:
        """(bin, time, serial) of every reorder press (repeats are not reorders), oldest first."""
        with self._lock:
            rows = self._db.execute(
                "SELECT bin, time, serial FROM presses WHERE kind = 'reorder' AND bin IS NOT NULL "
                "ORDER BY ts, id"
            ).fetchall()
        return [(b, datetime.fromisoformat(t), serial) for b, t, serial in rows]

    def refill_times(self) -> list[tuple[str, datetime]]:
        """(bin, time) of every refill, from any source, oldest first."""
        with self._lock:
            rows = self._db.execute("SELECT bin, time FROM refills ORDER BY ts, id").fetchall()
        return [(b, datetime.fromisoformat(t)) for b, t in rows]

    def last_refills(self) -> dict[str, datetime]:
        """Bin -> its latest refill, from any source (for a daemon's view of `kanban refilled`)."""
        with self._lock:
            rows = self._db.execute(
                "SELECT bin, time FROM refills r WHERE ts = "
                "(SELECT MAX(ts) FROM refills WHERE bin = r.bin)"
            ).fetchall()
        return {b: datetime.fromisoformat(t) for b, t in rows}

    def open_overdue(self) -> dict[str, str]:
        """Bin -> the serial carrying its raised, not yet cleared c8y_KanbanOverdue alarm."""
        with self._lock:
            rows = self._db.execute(
                "SELECT bin, serial FROM overdue WHERE cleared = 0 ORDER BY ts, id"
            ).fetchall()
        return dict(rows)

    def last_record(self) -> datetime | None:
        """The latest press or refill on record: where the data ends."""
        with self._lock:
            rows = [
                self._db.execute("SELECT time FROM presses ORDER BY ts DESC, id DESC LIMIT 1")
                .fetchone(),
                self._db.execute("SELECT time FROM refills ORDER BY ts DESC, id DESC LIMIT 1")
                .fetchone(),
            ]
        times = [datetime.fromisoformat(r[0]) for r in rows if r]
        return max(times) if times else None

    def first_press(self) -> datetime | None:
        with self._lock:
            row = self._db.execute("SELECT time FROM presses ORDER BY ts, id LIMIT 1").fetchone()
        return datetime.fromisoformat(row[0]) if row else None

    def pending_clears(self) -> list[PendingClear]:
        with self._lock:
            rows = self._db.execute(
                "SELECT id, bin, time, source, pending FROM refills WHERE pending IS NOT NULL "
                "ORDER BY ts, id"
            ).fetchall()
        return [
            PendingClear(
                id=row_id,
                bin=bin_,
                time=datetime.fromisoformat(time),
                source=source,
                publishes=_lines_from_json(pending),
            )
            for row_id, bin_, time, source, pending in rows
        ]

    def counts(self) -> dict[str, int]:
        """Rows per press kind (for `kanban report` and logs)."""
        with self._lock:
            return dict(self._db.execute("SELECT kind, COUNT(*) FROM presses GROUP BY kind"))

    def _transaction(self) -> _Transaction:
        return _Transaction(self._db, self._lock)


class _Transaction:
    """BEGIN IMMEDIATE ... COMMIT, so a refill from the CLI and the daemon never interleave;
    the lock keeps this process's threads apart on the one connection."""

    def __init__(self, db: sqlite3.Connection, lock: threading.RLock) -> None:
        self._db = db
        self._lock = lock

    def __enter__(self) -> None:
        self._lock.acquire()
        try:
            self._db.execute("BEGIN IMMEDIATE")
        except BaseException:
            self._lock.release()
            raise

    def __exit__(self, exc_type: object, *rest: object) -> None:
        try:
            self._db.execute("ROLLBACK" if exc_type else "COMMIT")
        finally:
            self._lock.release()


def _make_private_folders(folder: Path) -> None:
    """Missing folders 0750, as the outbox makes them (docs/outbox.md): whichever of the two is
    opened first, the state folder is not left readable by others."""
    missing = []
    current = folder
    while not current.exists() and current.parent != current:
        missing.append(current)
        current = current.parent
    for item in reversed(missing):
        try:
            item.mkdir(mode=0o750)
        except FileExistsError:
            continue
        item.chmod(0o750)  # mkdir's mode is subject to the umask


def _lines_json(publishes: Sequence[DevicePublish]) -> str:
    return json.dumps([[p.serial, list(p.lines)] for p in publishes])


def _lines_from_json(text: str) -> tuple[DevicePublish, ...]:
    return tuple(DevicePublish(serial, tuple(lines)) for serial, lines in json.loads(text))


def _iso(time: datetime) -> str:
    if time.tzinfo is None:
        raise ValueError("history times must be timezone-aware")
    return time.isoformat(timespec="microseconds")
