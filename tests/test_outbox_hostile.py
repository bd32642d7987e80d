"""Issue 13, holes 4 and 5: a poison row is quarantined and delivery goes on behind it; two
first runs creating the outbox together both succeed."""

from __future__ import annotations

import logging
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

from dashkanban.cli import main
from dashkanban.metrics import Metrics
from dashkanban.outbox.courier import deliver
from dashkanban.outbox.store import Outbox
from tests.brokers import Mosquitto
from tests.c8y.support import Recorder, settings_for
from tests.outbox_writer import event_for

POISONS = {
    "undecodable UTF-8": "UPDATE events SET name = CAST(x'ff41fe' AS TEXT) WHERE id = ?",
    "bad JSON": "UPDATE events SET extra_lines = '[\"302,x\"' WHERE id = ?",
    "bad time": "UPDATE events SET time = 'year 586524' WHERE id = ?",
    "JSON of the wrong shape": "UPDATE events SET other_lines = '[1]' WHERE id = ?",
    "a blob": "UPDATE events SET attempts = x'00' WHERE id = ?",
}


def _poison(path: Path, row_id: int, statement: str) -> None:
    db = sqlite3.connect(path)
    with db:
        assert db.execute(statement, (row_id,)).rowcount == 1
    db.close()


def _quarantine_rows(path: Path) -> list[tuple[object, ...]]:
    db = sqlite3.connect(path)
    db.text_factory = bytes
    try:
        return db.execute("SELECT id, serial, reason FROM quarantine ORDER BY id").fetchall()
    finally:
        db.close()


@pytest.mark.parametrize("statement", POISONS.values(), ids=list(POISONS))
def test_a_poison_row_is_quarantined_and_the_rows_behind_it_are_read(
    tmp_path: Path, statement: str, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "outbox.sqlite3"
    metrics = Metrics()
    with Outbox.open(path, metrics=metrics) as outbox:
        ids = [outbox.put(event_for(n)) for n in range(5)]
    _poison(path, ids[1], statement)
    with Outbox.open(path, metrics=metrics) as outbox, caplog.at_level(logging.ERROR):
        assert [q.id for q in outbox.peek(3)] == [ids[0], ids[2], ids[3]]
        assert outbox.count() == 4
        assert outbox.quarantined() == 1
        assert [q.id for q in outbox.peek(10)] == [ids[0], ids[2], ids[3], ids[4]]
    assert metrics.snapshot().quarantined == 1
    errors = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert len(errors) == 1
    assert errors[0].getMessage().startswith(f"outbox row {ids[1]} cannot be read (")
    assert errors[0].getMessage().endswith(
        f"): moved to the quarantine table of {path}, delivery goes on with the next row"
    )
    (kept,) = _quarantine_rows(path)
    assert kept[:2] == (ids[1], event_for(1).serial.encode())


def test_status_never_fails_on_a_row_and_shows_the_quarantine(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "outbox.sqlite3"
    with Outbox.open(path) as outbox:
        ids = [outbox.put(event_for(n)) for n in range(3)]
    _poison(path, ids[0], POISONS["undecodable UTF-8"])
    config = tmp_path / "config.ini"
    config.write_text(
        "[C8YMQTT]\ntenant = example.cumulocity.com\ntenantID = t1\nuser = u\n"
        f"password = p\n\n[outbox]\npath = {path}\nmax_rows = 1000\n"
    )
    config.chmod(0o600)
    assert main(["outbox", "status", "-c", str(config)]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[1].startswith("queued: 2 events, ")
    assert out[2].startswith(f"oldest: {event_for(1).c8y_time} {event_for(1).name} (")
    assert out[4] == (
        f"quarantined: 1 unreadable rows (kept in the table quarantine of {path})"
    )
    db = sqlite3.connect(path)  # a damaged error time in the stats row is shown as unknown
    with db:
        db.execute("UPDATE stats SET last_error = 'reset', last_error_at = 'never'")
    db.close()
    assert main(["outbox", "status", "-c", str(config)]) == 0
    assert capsys.readouterr().out.splitlines()[-1] == "last error: ? reset"


def test_delivery_goes_on_behind_a_poison_row(
    tmp_path: Path, mosquitto_tls: Mosquitto, recorder: Recorder
) -> None:
    path = tmp_path / "outbox.sqlite3"
    with Outbox.open(path) as outbox:
        ids = [outbox.put(event_for(n)) for n in range(1000)]
    _poison(path, ids[0], POISONS["undecodable UTF-8"])
    settings = settings_for(tmp_path, mosquitto_tls)
    with Outbox.open(path) as outbox:
        assert deliver(settings, outbox, [], timeout=60) == 999
        assert outbox.count() == 0
        assert outbox.quarantined() == 1
    sent = [p for t, p in recorder.wait_for(999 + 4) if t.startswith("s/us/")]
    assert [p.split(",")[2] for p in sent if p.startswith("400,")] == [
        event_for(n).text for n in range(1, 1000)
    ]
    assert [row[0] for row in _quarantine_rows(path)] == [ids[0]]


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
