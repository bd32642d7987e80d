"""`dashkanban kanban refilled` and `dashkanban kanban report`, through the real CLI entry point."""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from dashkanban.cli import main
from dashkanban.config import KanbanSettings
from dashkanban.detect.presses import Press
from dashkanban.kanban.bins import parse_bins
from dashkanban.kanban.cli import parse_since
from dashkanban.kanban.history import History
from dashkanban.kanban.loop import KanbanLoop
from dashkanban.outbox.store import Outbox
from tests.kanban.c8y_server import Store, c8y_server

MACID = (
    "Name, MAC-Address, bin, part, quantity, location, supplier, lead_time_days, role\n"
    "screws, ac:63:be:12:34:56, A3, M6 screws, 50, Aisle 2, Würth, 2,\n"
    "screws-full, ac:63:be:12:34:58, A3, , , , , , refill\n"
    "ties, fc:a6:67:0a:0b:0c, B1, Cable ties, 100, Aisle 4, , 3,\n"
)


def make_config(folder: Path, rest_url: str = "http://127.0.0.1:9") -> Path:
    (folder / "MACID.csv").write_text(MACID, encoding="utf-8")
    config = folder / "config.ini"
    config.write_text(
        "[C8YMQTT]\ntenant = 127.0.0.1\ntenantID = t12345\nuser = admin\n"
        "password = rest-pw-123\nport = 1883\ntls = no\nallow_insecure = yes\n"
        f"rest_url = {rest_url}\n\n[buttons]\nfile = MACID.csv\n\n"
        "[outbox]\npath = state/outbox.sqlite3\n\n[kanban]\nalarms = yes\n",
        encoding="utf-8",
    )
    config.chmod(0o600)
    return config


def test_refilled_queues_the_clears_in_the_outbox_exit_3_when_not_delivered(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = make_config(tmp_path)
    assert main(["kanban", "refilled", "-c", str(config), "a3", "--timeout", "0"]) == 3
    captured = capsys.readouterr()
    out = captured.out.splitlines()
    history = tmp_path / "state" / "history.sqlite3"
    outbox_path = tmp_path / "state" / "outbox.sqlite3"
    assert re.fullmatch(r"bin A3 refilled at \d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\+00:00", out[0])
    assert out[1:] == [
        "  clear: s/us/ac63be123456 306,c8y_KanbanReorder",
        f"1 refill(s) queued in {outbox_path}",
    ]
    last = captured.err.splitlines()[-1]
    assert last.startswith("error: not delivered within 0 s")
    assert last.endswith(f"; 1 event stays queued in {outbox_path}: `dashkanban outbox flush` "
                         "delivers it, `dashkanban outbox drop --all` (or --button NAME|MAC, "
                         "--before TIME) discards it")
    assert history.stat().st_mode & 0o777 == 0o600
    with History.open(history, 730) as h:
        assert h.pending_clears() == []  # handed to the outbox
    with Outbox.open(outbox_path) as outbox:
        [row] = outbox.peek()
    assert (row.event, row.other_lines) == (None, (("ac63be123456", "306,c8y_KanbanReorder"),))


def test_refilled_without_alarms_records_only(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = make_config(tmp_path)
    config.write_text(config.read_text().replace("alarms = yes", "alarms = no"))
    assert main(["kanban", "refilled", "-c", str(config), "B1"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[1:] == ["[kanban] alarms = no: no alarm to clear"]
    with History.open(tmp_path / "state" / "history.sqlite3", 730) as h:
        assert h.pending_clears() == []
        assert h.active_bins() == frozenset()
    assert not (tmp_path / "state" / "outbox.sqlite3").exists()


def test_refilled_unknown_bin_is_a_usage_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = make_config(tmp_path)
    assert main(["kanban", "refilled", "-c", str(config), "Z9"]) == 2
    assert capsys.readouterr().err == "error: unknown bin 'Z9' (known bins: A3, B1)\n"


def test_report_without_history(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    config = make_config(tmp_path)
    assert main(["kanban", "report", "-c", str(config)]) == 1
    assert capsys.readouterr().err == (
        f"error: no Kanban history yet at {tmp_path / 'state' / 'history.sqlite3'} "
        "(the daemon and replay keep one with every press)\n"
    )


def test_report_bad_since(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    config = make_config(tmp_path)
    assert main(["kanban", "report", "-c", str(config), "--since", "last week"]) == 2
    assert capsys.readouterr().err == (
        "error: --since 'last week': expected a date (YYYY-MM-DD) or days back (e.g. 30d)\n"
    )


def test_parse_since() -> None:
    now = datetime(2026, 11, 26, 12, tzinfo=UTC)
    assert parse_since("30d", now) == now - timedelta(days=30)
    assert parse_since("7", now) == now - timedelta(days=7)
    assert parse_since("2026-11-01", now) == datetime(2026, 11, 1, tzinfo=UTC)
    assert parse_since("2026-11-01T08:00:00+01:00", now) == datetime(2026, 11, 1, 7, tzinfo=UTC)
    assert parse_since(None, now) is None


def test_report_from_local_history(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Five A3 reorders two days apart, each refilled by its button a day later, the first 10
    days ago. The data covers 9 days (first press to last refill): D = 5 x 50 / 9 = 27.78 a
    day. Five replenishments of 1 day (>= min_samples 3): L = 1 measured, not the configured 2.
    Cards = ceil(27.78 x 1 x 1.2 / 50) = ceil(0.67) = 1."""
    config = make_config(tmp_path)
    registry, bins = parse_bins(MACID, Path("MACID.csv"))
    button = {b.name: b for b in registry}
    now = datetime.now(UTC)
    settings = KanbanSettings(alarms=True, severity="MAJOR", safety=0.2, history_days=730)
    with History.open(tmp_path / "state" / "history.sqlite3", 730) as history:
        loop = KanbanLoop(bins, settings, history)
        for days in (10, 8, 6, 4, 2):
            loop.on_press(Press(button["screws"], now - timedelta(days=days), "dhcp"))
            loop.on_press(Press(button["screws"], now - timedelta(days=days - 0.1), "dhcp"))
            loop.on_press(Press(button["screws-full"], now - timedelta(days=days - 1), "arp"))
    out_file = tmp_path / "report.html"
    assert main(["kanban", "report", "-c", str(config), "--out", str(out_file)]) == 0
    out = capsys.readouterr().out
    assert re.search(
        r"│ A3 +│ M6 screws +│ Aisle 2 +│ Würth +│ +5 │ +5 │ +2\.0 │ +0\.0 │ +27\.78 │ "
        r"1 measured \(5\) +│ +no │ +50 │ +— │ +1 │ — +│", out
    ), out
    assert re.search(
        r"│ B1 +│ Cable ties +│ Aisle 4 +│ — +│ +0 │ +0 │ +— │ +— │ +0 │ 3 configured +│ +no │ "
        r"+100 │ +— │ +— │ — +│", out
    ), out
    assert out.rstrip().endswith(f"wrote {out_file}")
    page = out_file.read_text(encoding="utf-8")
    assert page.count('src="data:image/png;base64,') == 3
    assert '<td class="cards n">1</td>' in page


def test_report_from_cumulocity(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    store = Store("t12345/admin", "rest-pw-123")
    now = datetime.now(UTC)
    store.add_device("201", "ac63be123456", c8y_Kanban={
        "bin": "A3", "role": "reorder", "part": "M6 screws", "quantity": 50, "location": "Aisle 2",
        "leadTimeDays": 2, "gateway": "gw-1"})
    def ago(days: float) -> str:
        return (now - timedelta(days=days)).isoformat(timespec="milliseconds")

    for days in (9, 6, 3):
        store.add_event("201", ago(days))
    # The three reorder alarms, cleared 1, 0.5 and 1 day after they were raised.
    for raised, cleared in ((9, 8), (6, 5.5), (3, 2)):
        store.add_alarm("201", ago(raised), "CLEARED", ago(cleared))
    with c8y_server(store) as base:
        config = make_config(tmp_path, base)
        assert main(["kanban", "report", "-c", str(config), "--from-cumulocity", "--since",
                     "30d"]) == 0
    out = capsys.readouterr().out
    assert "from Cumulocity (3 events)" in out
    # The data covers the first press 9 days ago to the last clear 2 days ago: 7 days.
    # D = 3 x 50 / 7 = 21.43; L = median(1, 0.5, 1) = 1 measured (3 samples);
    # cards = ceil(21.43 x 1 x 1.2 / 50) = ceil(0.51) = 1.
    assert re.search(
        r"│ A3 +│ M6 screws +│ Aisle 2 +│ — +│ +3 │ +0 │ +3\.0 │ +0\.0 │ +21\.43 │ "
        r"1 measured \(3\) +│ +no │ +50 │ +— │ +1 │ — +│", out
    ), out
    [(_, _, query)] = [r for r in store.requests if r[1] == "/event/events"]
    assert query["pageSize"] == ["2000"]
