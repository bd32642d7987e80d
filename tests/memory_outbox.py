"""A list-backed outbox with the agreed interface (issue 6), for the delivery tests.

The lead switches these tests to the SQLite outbox once both branches land.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from dataclasses import dataclass, replace
from datetime import UTC, datetime

from dashkanban.events import Event


@dataclass(frozen=True, slots=True)
class QueuedEvent:
    id: int
    event: Event
    extra_lines: tuple[str, ...]
    queued_at: datetime
    attempts: int


class MemoryOutbox:
    def __init__(self) -> None:
        self._rows: list[QueuedEvent] = []
        self._next = 1
        self._lock = threading.Lock()
        self._last_error: str | None = None
        self.acked: list[int] = []

    def put(self, event: Event, extra_lines: Sequence[str] = ()) -> int:
        with self._lock:
            row = QueuedEvent(self._next, event, tuple(extra_lines), datetime.now(UTC), 0)
            self._next += 1
            self._rows.append(row)
            return row.id

    def peek(self, limit: int = 100, after_id: int = 0) -> list[QueuedEvent]:
        with self._lock:
            return [r for r in self._rows if r.id > after_id][:limit]

    def ack(self, row_id: int) -> None:
        with self._lock:
            before = len(self._rows)
            self._rows = [r for r in self._rows if r.id != row_id]
            if len(self._rows) != before:
                self.acked.append(row_id)

    def mark_attempt(self, row_id: int, error: str | None = None) -> None:
        with self._lock:
            self._rows = [
                replace(r, attempts=r.attempts + 1) if r.id == row_id else r for r in self._rows
            ]
            if error is not None:
                self._last_error = error

    def count(self) -> int:
        with self._lock:
            return len(self._rows)

    def oldest(self) -> QueuedEvent | None:
        with self._lock:
            return self._rows[0] if self._rows else None

    def last_error(self) -> str | None:
        return self._last_error

    def close(self) -> None:
        pass
