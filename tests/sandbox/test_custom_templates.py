"""Custom template collections over MQTT, with paho as a plain device, and the Kanban module's own
refill path end to end against the sandbox (docs/sandbox.md, docs/kanban.md)."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from dashkanban.c8y.smartrest import decode, join_lines
from dashkanban.config import KanbanSettings
from dashkanban.detect.buttons import Button
from dashkanban.detect.presses import Press
from dashkanban.kanban.alarms import (
    OPERATIONS_TOPIC,
    TEMPLATE_TOPIC,
    supported_operations,
    template_lines,
)
from dashkanban.kanban.bins import parse_bins
from dashkanban.kanban.loop import KanbanLoop
from dashkanban.sandbox import BrokerRules, Sandbox
from tests.sandbox_fixture import Device, Received, rest, sandbox_options

MakeDevice = Callable[..., Device]
KANBAN = "11,9101,,c8y_KanbanRefilled,c8y_KanbanRefilled.bin"
COLLECTION_ID = "c8y_SmartRest2DeviceIdentifier"


def operation_statuses(sandbox: Sandbox, device_id: str) -> list[tuple[str, list[str]]]:
    """(status, fragments c8y_*) of a device's operations, in the order REST lists them."""
    with rest(sandbox) as client:
        answer = client.get("/devicecontrol/operations",
                            params={"deviceId": device_id, "pageSize": 100})
    assert answer.status_code == 200
    ops: list[dict[str, Any]] = answer.json()["operations"]
    return [(op["status"], sorted(k for k in op if k.startswith("c8y_"))) for op in ops]


def post_operation(sandbox: Sandbox, device_id: str, fragments: dict[str, Any]) -> str:
    with rest(sandbox) as client:
        created = client.post("/devicecontrol/operations", headers={"Accept": "application/json"},
                              json={"deviceId": device_id, **fragments})
    assert created.status_code == 201
    assert created.json()["status"] == "PENDING"
    return str(created.json()["id"])


def test_collection_existence_delivery_after_500_and_status(
    sandbox: Sandbox, device_factory: MakeDevice
) -> None:
    gw = device_factory("gw-01")
    assert gw.connect() == "Success"
    gw.publish("s/us", "100\n101,btn-1")
    assert gw.subscribe("s/ds", "s/e", "s/dt", "s/dc/dashkanban") == [1, 1, 1, 1]
    gw.publish("s/ut/dashkanban", "")
    assert gw.expect() == Received("s/dt", "41,dashkanban")
    gw.publish("s/ut/dashkanban", KANBAN)
    gw.nothing_more()
    gw.publish("s/ut/dashkanban", b"")
    with rest(sandbox) as client:
        found = client.get(f"/identity/externalIds/{COLLECTION_ID}/dashkanban")
        assert found.status_code == 200
        collection_id = found.json()["managedObject"]["id"]
        doc = client.get(f"/inventory/managedObjects/{collection_id}").json()
    assert gw.expect() == Received("s/dt", f"20,dashkanban,{collection_id}")
    assert (doc["type"], doc["name"]) == ("c8y_SmartRest2Template", "dashkanban")
    assert [d["name"] for d in sandbox.devices()] == ["MQTT Device gw-01"]
    # Publishing it again changes nothing and says so.
    gw.publish("s/ut/dashkanban", "11,9102,,c8y_Other,c8y_Other.x")
    assert gw.expect() == Received(
        "s/e", "41,dashkanban,Cannot create templates for already existing template object"
    )

    btn = sandbox.device_id("btn-1") or ""
    gw_id = sandbox.device_id("gw-01") or ""
    post_operation(sandbox, btn, {"c8y_KanbanRefilled": {"bin": "A3"}})
    # Only on s/dc: no static template carries c8y_KanbanRefilled, so nothing on s/ds.
    assert gw.expect() == Received("s/dc/dashkanban", "9101,btn-1,A3")
    gw.nothing_more()
    post_operation(sandbox, gw_id, {"description": "Bin B1 refilled",
                                    "c8y_KanbanRefilled": {"bin": "B1"}})
    assert gw.expect() == Received("s/dc/dashkanban", "9101,gw-01,B1")
    # A static operation goes on s/ds only (it does not meet the template's condition).
    post_operation(sandbox, btn, {"c8y_Restart": {}})
    assert gw.expect() == Received("s/ds", "510,btn-1")
    gw.nothing_more()

    gw.publish("s/us", "500")
    assert [gw.expect() for _ in range(3)] == [
        Received("s/dc/dashkanban", "9101,btn-1,A3"),
        Received("s/dc/dashkanban", "9101,gw-01,B1"),
        Received("s/ds", "510,btn-1"),
    ]
    gw.nothing_more()

    gw.publish("s/us/btn-1", "501,c8y_KanbanRefilled")
    assert operation_statuses(sandbox, btn) == [
        ("PENDING", ["c8y_Restart"]), ("EXECUTING", ["c8y_KanbanRefilled"])
    ]
    gw.publish("s/us/btn-1", "503,c8y_KanbanRefilled")
    gw.publish("s/us", "501,c8y_KanbanRefilled\n502,c8y_KanbanRefilled,unknown bin 'B1'")
    assert operation_statuses(sandbox, btn) == [
        ("PENDING", ["c8y_Restart"]), ("SUCCESSFUL", ["c8y_KanbanRefilled"])
    ]
    assert operation_statuses(sandbox, gw_id) == [("FAILED", ["c8y_KanbanRefilled"])]
    with rest(sandbox) as client:
        failed = client.get("/devicecontrol/operations", params={"deviceId": gw_id}).json()
    assert failed["operations"][0]["failureReason"] == "unknown bin 'B1'"
    # Done operations are no longer pending: 500 sends only the restart.
    gw.publish("s/us", "500")
    assert gw.expect() == Received("s/ds", "510,btn-1")
    gw.nothing_more()


def test_only_subscribers_of_the_collection_in_the_tree_receive(
    sandbox: Sandbox, device_factory: MakeDevice
) -> None:
    a, b = device_factory("gw-a"), device_factory("gw-b")
    for device in (a, b):
        device.connect()
        device.publish("s/us", "100")
    a.subscribe("s/ds", "s/dc/#")
    b.subscribe("s/ds", "s/dc/dashkanban")
    a.publish("s/ut/dashkanban", KANBAN)
    a.publish("s/ut/other", "11,1,,c8y_KanbanRefilled,c8y_KanbanRefilled.bin,description")
    post_operation(sandbox, sandbox.device_id("gw-a") or "",
                   {"description": "refill", "c8y_KanbanRefilled": {"bin": "A3"}})
    # The wildcard subscriber gets the line of every collection; the other gateway nothing.
    got = sorted([a.expect(), a.expect()], key=lambda r: r.topic)
    assert got == [Received("s/dc/dashkanban", "9101,gw-a,A3"),
                   Received("s/dc/other", "1,gw-a,A3,refill")]
    a.nothing_more()
    b.nothing_more()


def test_push_on_subscribe_covers_only_the_topics_subscribed() -> None:
    with Sandbox(sandbox_options(rules=BrokerRules(push_pending_on_subscribe=True))) as sb:
        gw = Device(sb, "gw-01")
        try:
            gw.connect()
            gw.publish("s/us", "100")
            gw.publish("s/ut/dashkanban", KANBAN)
            gw_id = sb.device_id("gw-01") or ""
            post_operation(sb, gw_id, {"c8y_Restart": {}})
            post_operation(sb, gw_id, {"c8y_KanbanRefilled": {"bin": "A3"}})
            gw.subscribe("s/dc/dashkanban")
            assert gw.expect() == Received("s/dc/dashkanban", "9101,gw-01,A3")
            gw.nothing_more()
            gw.subscribe("s/ds")
            assert gw.expect() == Received("s/ds", "510,gw-01")
            gw.nothing_more()
        finally:
            gw.close()


def test_collections_are_kept_in_the_data_file(tmp_path: Path) -> None:
    data = tmp_path / "sandbox.json"
    with Sandbox(sandbox_options(data_file=data)) as first:
        device = Device(first, "gw-01")
        try:
            device.connect()
            device.subscribe("s/dt")
            device.publish("s/ut/dashkanban", KANBAN)
            device.publish("s/ut/dashkanban", "")
            created = device.expect()
        finally:
            device.close()
    assert created.payload.startswith("20,dashkanban,")
    with Sandbox(sandbox_options(data_file=data)) as second:
        device = Device(second, "gw-01")
        try:
            device.connect()
            device.subscribe("s/dt", "s/dc/dashkanban")
            device.publish("s/ut/dashkanban", "")
            assert device.expect() == created
            device.publish("s/us", "100")
            post_operation(second, second.device_id("gw-01") or "",
                           {"c8y_KanbanRefilled": {"bin": "A3"}})
            assert device.expect() == Received("s/dc/dashkanban", "9101,gw-01,A3")
        finally:
            device.close()


MACID = (
    "Name, MAC-Address, bin, part, quantity, location, supplier, lead_time_days, role\n"
    "screws, ac:63:be:12:34:56, A3, M6 screws, 50, Aisle 2, Würth, 2,\n"
    "screws-full, ac:63:be:12:34:58, A3, , , , , , refill\n"
    "ties, fc:a6:67:0a:0b:0c, B1, \"Cable ties, 200mm\", 100, Aisle 4, , 3,\n"
)
T0 = datetime(2026, 11, 26, 8, 0, 1, 234000, tzinfo=UTC)
ON = KanbanSettings(alarms=True, severity="MAJOR", safety=0.2, history_days=730)
GATEWAY = "dashkanban-gw-01"


def test_kanban_refill_operation_end_to_end(sandbox: Sandbox, device_factory: MakeDevice) -> None:
    registry, bins = parse_bins(MACID, Path("MACID.csv"))
    buttons: dict[str, Button] = {b.name: b for b in registry}
    loop = KanbanLoop(bins, ON, None)
    gw = device_factory(GATEWAY)
    gw.connect()
    assert gw.subscribe(OPERATIONS_TOPIC, "s/e") == [1, 1]
    gw.publish("s/us", "100")
    gw.publish(TEMPLATE_TOPIC, join_lines(template_lines()))
    for announce in supported_operations(bins):
        gw.publish(announce.topic, join_lines(announce.lines))
    # A reorder press raises the alarm on the button's child device.
    screws = buttons["screws"]
    signal = loop.on_press(Press(screws, T0, "dhcp"))
    for publish in signal.publishes:
        gw.publish(publish.topic, join_lines(publish.lines))
    child = sandbox.device_id(screws.serial) or ""
    with rest(sandbox) as client:
        alarms = client.get("/alarm/alarms", params={"source": child}).json()["alarms"]
        assert [(a["type"], a["status"], a["text"]) for a in alarms] == [
            ("c8y_KanbanReorder", "ACTIVE", "Reorder 50 x M6 screws for bin A3 (Aisle 2)")
        ]
        child_doc = client.get(f"/inventory/managedObjects/{child}").json()
    assert child_doc["c8y_SupportedOperations"] == ["c8y_KanbanRefilled"]
    assert loop.open_bins == frozenset({"A3"})

    # Someone marks the bin refilled in Cumulocity.
    op_id = post_operation(sandbox, child, {"description": "Bin A3 refilled",
                                            "c8y_KanbanRefilled": {"bin": "A3"}})
    received = gw.expect()
    assert received == Received(OPERATIONS_TOPIC, f"9101,{screws.serial},{op_id},A3")
    [line] = decode(received.payload)
    outcome = loop.on_operation(line, GATEWAY, T0)
    assert outcome is not None
    assert outcome.bin == "A3"
    for publish in outcome.publishes:
        gw.publish(publish.topic, join_lines(publish.lines))
    gw.nothing_more()
    # Delivered again (500 after a reconnect, before the 506 went out): handled once.
    assert loop.on_operation(line, GATEWAY, T0) is None

    with rest(sandbox) as client:
        alarms = client.get("/alarm/alarms", params={"source": child}).json()["alarms"]
        op = client.get(f"/devicecontrol/operations/{op_id}").json()
    assert [(a["type"], a["status"]) for a in alarms] == [("c8y_KanbanReorder", "CLEARED")]
    assert (op["status"], op["c8y_KanbanRefilled"]) == ("SUCCESSFUL", {"bin": "A3"})
    assert loop.open_bins == frozenset()
