"""The REST side against a real local HTTP server with Cumulocity's shapes."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from dashkanban.errors import UplinkError
from dashkanban.kanban.analytics import BinInfo, Observation
from dashkanban.kanban.bins import parse_bins
from dashkanban.kanban.cumulocity import (
    CumulocityRest,
    fetch_history,
    kanban_fragment,
    publish_kanban_fragments,
)
from tests.kanban.c8y_server import Store, c8y_server

USER = "t12345/admin"
PASSWORD = "rest-pw-123"
MACID = (
    "Name, MAC-Address, bin, part, quantity, location, supplier, lead_time_days, role\n"
    "screws, ac:63:be:12:34:56, A3, M6 screws, 50, Aisle 2, Würth, 2,\n"
    "screws-full, ac:63:be:12:34:58, A3, , , , , , refill\n"
    "ties, fc:a6:67:0a:0b:0c, B1, Cable ties, 100, , , 3,\n"
)
T0 = datetime(2026, 11, 1, tzinfo=UTC)


def rest(base: str, password: str = PASSWORD) -> CumulocityRest:
    return CumulocityRest(base, USER, password, sleep=lambda s: None)


def test_fragment_payload() -> None:
    _, bins = parse_bins(MACID, Path("MACID.csv"))
    a3 = bins.get("A3")
    assert a3 is not None
    assert kanban_fragment(a3.reorder[0], a3, "gw-1") == {
        "c8y_Kanban": {
            "bin": "A3",
            "role": "reorder",
            "part": "M6 screws",
            "quantity": 50,
            "location": "Aisle 2",
            "supplier": "Würth",
            "leadTimeDays": 2.0,
            "gateway": "gw-1",
        }
    }
    b1 = bins.get("B1")
    assert b1 is not None
    assert kanban_fragment(b1.reorder[0], b1, "gw-1") == {
        "c8y_Kanban": {"bin": "B1", "role": "reorder", "part": "Cable ties", "quantity": 100,
                       "leadTimeDays": 3.0, "gateway": "gw-1"}
    }


def test_publish_fragments_puts_once_per_known_button() -> None:
    _, bins = parse_bins(MACID, Path("MACID.csv"))
    store = Store(USER, PASSWORD)
    store.add_device("101", "ac63be123456")
    store.add_device("102", "ac63be123458")
    with c8y_server(store) as base, rest(base) as client:
        done = publish_kanban_fragments(client, bins, "gw-1")
    assert done == {"ac63be123456": "101", "ac63be123458": "102", "fca6670a0b0c": None}
    assert [(m, p) for m, p, _ in store.requests] == [
        ("GET", "/identity/externalIds/c8y_Serial/ac63be123456"),
        ("PUT", "/inventory/managedObjects/101"),
        ("GET", "/identity/externalIds/c8y_Serial/ac63be123458"),
        ("PUT", "/inventory/managedObjects/102"),
        ("GET", "/identity/externalIds/c8y_Serial/fca6670a0b0c"),
    ]
    assert store.objects["102"]["c8y_Kanban"] == {
        "bin": "A3", "role": "refill", "part": "M6 screws", "quantity": 50,
        "location": "Aisle 2", "supplier": "Würth", "leadTimeDays": 2.0, "gateway": "gw-1",
    }
    assert store.objects["102"]["name"] == "ac63be123458"  # the name is never touched


def test_wrong_password_is_one_line_without_the_password() -> None:
    store = Store(USER, PASSWORD)
    with (
        c8y_server(store) as base,
        rest(base, "wrong-pw") as client,
        pytest.raises(UplinkError) as caught,
    ):
        client.managed_object_id("ac63be123456")
    assert str(caught.value) == (
        "Cumulocity refused the login of t12345/admin (401): check tenantID, user and password"
    )
    assert "wrong-pw" not in str(caught.value)


def test_rate_limit_is_retried_then_reported() -> None:
    store = Store(USER, PASSWORD, fail_next=[429, 503])
    store.add_device("101", "ac63be123456")
    with c8y_server(store) as base, rest(base) as client:
        assert client.managed_object_id("ac63be123456") == "101"
        store.fail_next = [429, 429, 429]
        with pytest.raises(UplinkError) as caught:
            client.managed_object_id("ac63be123456")
    assert str(caught.value) == (
        "identity look-up of ac63be123456: 429 general/tooManyRequests: Requests rate exceeds "
        "the limit (GET /identity/externalIds/c8y_Serial/ac63be123456, 3 attempts)"
    )
    assert len(store.requests) == 2 + 1 + 3  # 429, 503, answer; then three 429s


def test_forbidden_is_not_retried() -> None:
    store = Store(USER, PASSWORD, fail_next=[403])
    with c8y_server(store) as base, rest(base) as client, pytest.raises(UplinkError) as caught:
        client.managed_object("101")
    assert str(caught.value) == (
        "reading managed object 101: Cumulocity refused it to t12345/admin (403 "
        "general/tooManyRequests: Requests rate exceeds the limit): the user lacks a role "
        "(identity and inventory read, or admin for updates)"
    )
    assert len(store.requests) == 1


def test_unreachable_is_retried_then_one_line() -> None:
    from tests.brokers import free_port

    slept: list[float] = []
    client = CumulocityRest(f"http://127.0.0.1:{free_port()}", USER, PASSWORD,
                            sleep=slept.append, jitter=lambda: 1.0)  # each wait its ceiling
    with client, pytest.raises(UplinkError) as caught:
        client.managed_object("1")
    message = str(caught.value)
    assert message.startswith("reading managed object 1: cannot reach Cumulocity: ConnectError: ")
    assert message.endswith(" (GET /inventory/managedObjects/1, 3 attempts)")
    assert (slept, client.requests) == ([0.5, 1.0], 3)


def test_fetch_history_pages_through_every_gateway() -> None:
    store = Store(USER, PASSWORD)
    frag = {"part": "M6 screws", "quantity": 50, "leadTimeDays": 2}
    store.add_device("201", "s1-a3", c8y_Kanban={"bin": "A3", "role": "reorder",
                                                 "gateway": "store-1", **frag})
    store.add_device("202", "s1-a3-full", c8y_Kanban={"bin": "A3", "role": "refill",
                                                      "gateway": "store-1"})
    store.add_device("301", "s2-a3", c8y_Kanban={"bin": "A3", "role": "reorder",
                                                 "gateway": "store-2", **frag})
    store.add_device("401", "no-kanban")
    # 2,100 presses of store 2's A3, one per hour: more than one page of 2,000.
    for hour in range(2100):
        store.add_event("301", (T0 + timedelta(hours=hour)).isoformat(timespec="milliseconds"))
    store.add_event("201", "2026-11-02T08:00:00.000Z")
    store.add_event("201", "2026-11-02T09:00:00.000Z")  # a repeat: no refill in between
    store.add_event("202", "2026-11-03T08:00:00.000Z")  # the refill button
    store.add_event("201", "2026-11-04T08:00:00.000Z")
    store.add_event("401", "2026-11-04T08:00:00.000Z")
    store.add_event("201", "2026-10-01T08:00:00.000Z")  # before dateFrom
    store.add_event("201", "2026-11-05T08:00:00.000Z", event_type="c8y_Other")
    store.add_event("999", "2026-11-04T08:00:00.000Z")  # a device since deleted: 404
    store.events.append({"id": "x", "type": "c8y_MAC_Event", "time": "2026-11-04T08:00:00Z",
                         "source": "not-an-object"})  # hostile: counted, skipped
    with c8y_server(store) as base, rest(base) as client:
        remote = fetch_history(client, "c8y_MAC_Event", T0, datetime(2026, 12, 1, tzinfo=UTC))
    pages = [q for m, p, q in store.requests if p == "/event/events"]
    # The same dateTo on every page (issue 15: new events must not shift the pages).
    assert pages == [
        {"type": ["c8y_MAC_Event"], "dateFrom": ["2026-11-01T00:00:00.000+00:00"],
         "dateTo": ["2026-12-01T00:00:00.000+00:00"], "pageSize": ["2000"],
         "currentPage": [str(n)]}
        for n in (1, 2)
    ]
    # Each source is looked up once.
    looked_up = [p for m, p, _ in store.requests if p.startswith("/inventory/")]
    assert sorted(looked_up) == [
        f"/inventory/managedObjects/{i}" for i in (201, 202, 301, 401, 999)
    ]
    assert (remote.events, remote.skipped) == (2107, 3)
    assert remote.first == T0
    assert remote.bins == {
        "store-1/A3": BinInfo("store-1/A3", "M6 screws", 50, None, 2.0),
        "store-2/A3": BinInfo("store-2/A3", "M6 screws", 50, None, 2.0),
    }
    store1 = [o for o in remote.observations if o.bin == "store-1/A3"]
    assert store1 == [
        Observation("store-1/A3", datetime(2026, 11, 2, 8, tzinfo=UTC), "reorder"),
        Observation("store-1/A3", datetime(2026, 11, 2, 9, tzinfo=UTC), "repeat"),
        Observation("store-1/A3", datetime(2026, 11, 4, 8, tzinfo=UTC), "reorder"),
    ]
    store2 = [o.kind for o in remote.observations if o.bin == "store-2/A3"]
    # Store 2 refills by command or operation, which leave no event: every press is a reorder.
    assert (store2.count("reorder"), store2.count("repeat")) == (2100, 0)
