"""The store: persistence round trip, id continuity, times, and refusal of foreign files."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path

import pytest

from dashkanban.sandbox.smartrest import SmartRestProcessor
from dashkanban.sandbox.store import ConflictError, Store, format_time, parse_time


def test_round_trip_keeps_everything_and_ids_continue(tmp_path: Path) -> None:
    store = Store()
    proc = SmartRestProcessor(store)
    proc.handle("gw", "s/us", b"100,GW\n101,btn\n301,c8y_A,empty\n200,c8y_T,T,1")
    proc.handle("gw", "s/us/btn", b"400,c8y_MAC_Event,pressed,2026-11-26T08:00:00Z")
    store.create_operation("10000", {"c8y_Restart": {}})
    store.record_message("gw", "in", "s/us", b"100,GW")
    path = tmp_path / "data.json"
    store.save(path)
    assert path.stat().st_mode & 0o777 == 0o600
    again = Store()
    again.load_json(path.read_text())
    assert again.to_json() == store.to_json()
    assert again.find_external("c8y_Serial", "btn") == "10001"
    assert again.children_ids("10000") == ["10001"]
    new = again.create_managed_object({"name": "later"})
    assert int(new["id"]) > max(int(e["id"]) for e in again.events + again.operations)


def test_foreign_files_are_refused() -> None:
    with pytest.raises(ValueError, match="not a dashkanban sandbox data file"):
        Store().load_json('{"format": "something else"}')


def test_external_id_conflict() -> None:
    store = Store()
    a = store.create_managed_object({"name": "a"})["id"]
    b = store.create_managed_object({"name": "b"})["id"]
    store.add_external(a, "c8y_Serial", "x")
    store.add_external(a, "c8y_Serial", "x")  # the same binding again is fine
    with pytest.raises(ConflictError):
        store.add_external(b, "c8y_Serial", "x")


def test_times() -> None:
    plus_one = timezone(timedelta(hours=1))
    assert format_time(datetime(2026, 11, 26, 9, 0, 1, 234567, tzinfo=plus_one)) == (
        "2026-11-26T08:00:01.234Z"
    )
    assert parse_time("2026-11-26T08:00:01.234Z") == datetime(2026, 11, 26, 8, 0, 1, 234000,
                                                              tzinfo=UTC)
    assert parse_time("2026-11-26T08:00:01") is None
    assert parse_time("2026-11-26T08:00:01", zone_required=False) == datetime(
        2026, 11, 26, 8, 0, 1, tzinfo=UTC
    )
    assert parse_time("soon") is None
