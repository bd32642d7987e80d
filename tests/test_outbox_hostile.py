"""Issue 13, holes 4 and 5: a poison row is quarantined and delivery goes on behind it; two
first runs creating the outbox together both succeed."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from dashkanban.outbox import Outbox
from tests.outbox_writer import event_for


def test_two_first_runs_create_the_outbox_together(tmp_path: Path) -> None:
    """Hole 5: both processes queue their events, 20 times over (each on a new file)."""
    for attempt in range(20):
        path = tmp_path / f"outbox-{attempt}.sqlite3"
        writers = [
            subprocess.Popen(
                [sys.executable, "-m", "tests.outbox_writer", str(path), str(start), "10"],
                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
            )
            for start in (0, 100)
        ]
        results = [w.communicate(timeout=60) for w in writers]
        assert [(w.returncode, err) for w, (_, err) in zip(writers, results, strict=True)] == [
            (0, ""), (0, "")
        ]
        with Outbox.open(path) as outbox:
            queued = outbox.peek(100)
        assert sorted(q.event.text for q in queued if q.event is not None) == sorted(
            event_for(n).text for n in [*range(10), *range(100, 110)]
        )
