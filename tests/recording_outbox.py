"""The real SQLite outbox, recording the order of the acks that deleted a row (delivery tests)."""

from __future__ import annotations

import itertools
import tempfile
import threading
from pathlib import Path

from dashkanban.outbox.store import Outbox

_counter = itertools.count()


class RecordingOutbox(Outbox):
    """`Outbox` with `acked`: the ids whose ack deleted a row, in the order the acks came."""

    acked: list[int]
    _ack_lock: threading.Lock

    def ack(self, row_id: int) -> None:
        before = self.count()
        super().ack(row_id)
        if self.count() < before:
            with self._ack_lock:
                self.acked.append(row_id)


def recording_outbox(folder: Path | None = None) -> RecordingOutbox:
    folder = folder or Path(tempfile.mkdtemp(prefix="outbox-"))
    outbox = RecordingOutbox.open(folder / f"outbox-{next(_counter)}.sqlite3")
    assert isinstance(outbox, RecordingOutbox)
    outbox.acked = []
    outbox._ack_lock = threading.Lock()
    return outbox
