from __future__ import annotations

import sqlite3
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from dashkanban.detect.buttons import Button
from dashkanban.detect.presses import Press
from dashkanban.kanban.alarms import DevicePublish
from dashkanban.kanban.analytics import Observation
from dashkanban.kanban.history import History, HistoryError, history_path

NOW = datetime(2026, 11, 26, 12, tzinfo=UTC)
SCREWS = Button("screws", "ac:63:be:12:34:56", bin="A3", quantity=50)


def test_path_is_next_to_the_outbox() -> None:
    assert history_path(Path("/var/lib/dashkanban/outbox.sqlite3")) == Path(
        "/var/lib/dashkanban/history.sqlite3"
    )


def test_retention_prunes_old_rows_but_keeps_pending_clears(tmp_path: Path) -> None:
    path = tmp_path / "state" / "history.sqlite3"
    old = NOW - timedelta(days=40)
    with History.open(path, 730, NOW) as history:
        history.record_press(Press(SCREWS, old, "dhcp"), "reorder", "A3")
        history.record_press(Press(SCREWS, NOW - timedelta(days=1), "dhcp"), "repeat", "A3")
        history.record_refill("A3", old, "operation")
        pending = history.record_refill(
            "A3", old, "cli", [DevicePublish("ac63be123456", ("306,c8y_KanbanReorder",))]
        )
    assert path.stat().st_mode & 0o777 == 0o600
    assert path.parent.stat().st_mode & 0o777 == 0o750  # made as the outbox makes it
    with History.open(path, 30, NOW) as history:  # a shorter retention: 30 days
        assert history.observations() == [
            Observation("A3", NOW - timedelta(days=1), "repeat")
        ]
        assert [c.id for c in history.pending_clears()] == [pending]
        assert history.observations(since=NOW) == []
    rows = sqlite3.connect(path).execute("SELECT source FROM refills").fetchall()
    assert rows == [("cli",)]


def test_naive_times_are_refused(tmp_path: Path) -> None:
    with (
        History.open(tmp_path / "h.sqlite3", 730, NOW) as history,
        pytest.raises(ValueError, match="history times must be timezone-aware"),
    ):
        history.record_refill("A3", datetime(2026, 11, 26, 12), "cli")


def test_unusable_location_is_one_line(tmp_path: Path) -> None:
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("")
    with pytest.raises(HistoryError) as caught:
        History.open(blocker / "history.sqlite3", 730, NOW)
    assert str(caught.value).startswith(
        f"cannot open the Kanban history {blocker / 'history.sqlite3'}: "
    )
