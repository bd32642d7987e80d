"""The SmartREST processor without a network: store + line in, replies out (notes 2 and 6.1)."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from dashkanban.sandbox.smartrest import Downlink, SmartRestProcessor
from dashkanban.sandbox.store import Store

NOW = datetime(2026, 11, 26, 8, 0, 0, 123000, tzinfo=UTC)


@pytest.fixture
def store() -> Store:
    return Store(clock=lambda: NOW)


@pytest.fixture
def proc(store: Store) -> SmartRestProcessor:
    return SmartRestProcessor(store, owner="dash-gateway")


def send(proc: SmartRestProcessor, payload: str, topic: str = "s/us",
         client: str = "gw-01") -> list[Downlink]:
    return proc.handle(client, topic, payload.encode())


def test_100_creates_the_device_once_then_41(store: Store, proc: SmartRestProcessor) -> None:
    assert send(proc, "100,Store 3 gateway,c8y_DashKanbanGateway") == []
    mo_id = store.find_external("c8y_Serial", "gw-01")
    doc = store.get_managed_object(mo_id or "")
    assert {k: doc[k] for k in ("id", "name", "type", "c8y_IsDevice", "owner")} == {
        "id": "10000", "name": "Store 3 gateway", "type": "c8y_DashKanbanGateway",
        "c8y_IsDevice": {}, "owner": "dash-gateway",
    }
    assert send(proc, "100,Store 3 gateway,c8y_DashKanbanGateway") == [
        Downlink("s/e", "41,100,Device already existing")
    ]
    assert len(store.managed_objects) == 1


def test_100_defaults_and_empty_trailing_fields(store: Store, proc: SmartRestProcessor) -> None:
    assert send(proc, "100,,") == []
    doc = store.get_managed_object(store.find_external("c8y_Serial", "gw-01") or "")
    assert (doc["name"], doc["type"]) == ("MQTT Device gw-01", "c8y_MQTTDevice")


def test_any_data_message_auto_creates_the_device(store: Store, proc: SmartRestProcessor) -> None:
    assert send(proc, '400,c8y_MAC_Event,"pressed",2026-11-26T09:00:01.234+01:00') == []
    mo_id = store.find_external("c8y_Serial", "gw-01")
    assert store.get_managed_object(mo_id or "")["name"] == "MQTT Device gw-01"
    assert [(e["source"], e["type"], e["text"], e["time"]) for e in store.events] == [
        (mo_id, "c8y_MAC_Event", "pressed", "2026-11-26T08:00:01.234Z")
    ]


def test_101_child_with_verbatim_serial_and_marker(store: Store, proc: SmartRestProcessor) -> None:
    assert send(proc, "100,gw\n101,ac63be123456,dashButton_1,c8y_DashButton\n"
                      "101,gw-01:device:x,x,t,false") == []
    gw = store.find_external("c8y_Serial", "gw-01") or ""
    child = store.find_external("c8y_Serial", "ac63be123456") or ""
    other = store.find_external("c8y_Serial", "gw-01:device:x") or ""
    assert store.children_ids(gw) == [child, other]
    doc = store.get_managed_object(child)
    assert (doc["name"], doc["type"], doc["c8y_IsDevice"], doc["_parents"]) == (
        "dashButton_1", "c8y_DashButton", {}, [gw]
    )
    assert "c8y_IsDevice" not in store.get_managed_object(other)
    # Again: nothing new, no error.
    assert send(proc, "101,ac63be123456,dashButton_1,c8y_DashButton") == []
    assert len(store.managed_objects) == 3


def test_data_on_an_unknown_child_topic_creates_a_first_level_child(
    store: Store, proc: SmartRestProcessor
) -> None:
    assert send(proc, "400,c8y_MAC_Event,hi", topic="s/us/btn-9") == []
    gw = store.find_external("c8y_Serial", "gw-01") or ""
    child = store.find_external("c8y_Serial", "btn-9") or ""
    assert store.children_ids(gw) == [child]
    doc = store.get_managed_object(child)
    assert (doc["name"], doc["type"]) == ("MQTT Device btn-9", "c8y_MQTTChildDevice")
    assert store.events[0]["source"] == child
    assert store.events[0]["time"] == "2026-11-26T08:00:00.123Z"  # server time when omitted


@pytest.mark.parametrize(("payload", "reply"), [
    ("999,I made this up", "40,999,No static template for this message id"),
    ("400,c8y_MAC_Event", "45,400,Wrong number of arguments"),
    ("400,c8y_MAC_Event,", "45,400,Wrong number of arguments"),
    ("400,,text", "45,400,Wrong number of arguments"),
    ("400,t,x,2026-11-26T08:00:00", "45,400,Value is not a DATE: 2026-11-26T08:00:00"),
    ("400,t,x,yesterday", "45,400,Value is not a DATE: yesterday"),
    ("400,t,x,2026-11-26T08:00:00Z,extra", "45,400,Wrong number of arguments"),
    ("101", "45,101,Wrong number of arguments"),
    ("200,c8y_Temperature,T,warm", "45,200,Value is not a NUMBER: warm"),
    ("117,often", "45,117,Value is not a INTEGER: often"),
    ("305,c8y_X,LOUD", "45,305,Value is not a SEVERITY: LOUD"),
    ("500,1", "45,500,Wrong number of arguments"),
])
def test_errors_on_s_e(proc: SmartRestProcessor, store: Store, payload: str, reply: str) -> None:
    assert send(proc, payload) == [Downlink("s/e", reply)]
    assert store.events == []


def test_several_lines_each_answered(proc: SmartRestProcessor, store: Store) -> None:
    replies = send(proc, '100\n999\n400,t,"a, ""quoted"" text"\n123')
    assert replies == [
        Downlink("s/e", "40,999,No static template for this message id"),
        Downlink("s/ds", "124,10000"),
    ]
    assert store.events[0]["text"] == 'a, "quoted" text'


def test_inventory_templates(proc: SmartRestProcessor, store: Store) -> None:
    send(proc, "100\n110,SN1,Pi,1.2\n114,c8y_Restart,c8y_Command\n117,60\n117,5\n"
               "101,c1\n101,c2")
    doc = store.get_managed_object("10000")
    assert doc["c8y_Hardware"] == {"serialNumber": "SN1", "model": "Pi", "revision": "1.2"}
    assert doc["c8y_SupportedOperations"] == ["c8y_Restart", "c8y_Command"]
    assert doc["c8y_RequiredAvailability"] == {"responseInterval": 60}  # never overwritten
    send(proc, "114,c8y_Restart")
    assert store.get_managed_object("10000")["c8y_SupportedOperations"] == ["c8y_Restart"]
    assert send(proc, "105") == [Downlink("s/ds", "106,c1,c2")]


def test_heartbeat_125_marks_the_device_available(proc: SmartRestProcessor, store: Store) -> None:
    assert send(proc, "100\n125") == []
    availability = store.get_managed_object("10000")["c8y_Availability"]
    assert availability["status"] == "AVAILABLE"
    assert availability["lastMessage"] == store.now()
    assert send(proc, "125,extra") == [Downlink("s/e", "45,125,Wrong number of arguments")]


def test_measurement_200(proc: SmartRestProcessor, store: Store) -> None:
    send(proc, "200,c8y_Temperature,T,25\n200,c8y_Temperature,T,25.5,C,2026-11-26T08:00:00Z")
    assert [(m["type"], m["c8y_Temperature"], m["time"]) for m in store.measurements] == [
        ("c8y_Temperature", {"T": {"value": 25}}, "2026-11-26T08:00:00.123Z"),
        ("c8y_Temperature", {"T": {"value": 25.5, "unit": "C"}}, "2026-11-26T08:00:00.000Z"),
    ]


def test_alarms_deduplicate_change_severity_and_clear(proc: SmartRestProcessor,
                                                      store: Store) -> None:
    send(proc, "301,c8y_Bin,Bin empty\n302,c8y_Bin,Bin still empty\n303,c8y_Other")
    assert [(a["type"], a["severity"], a["count"], a["status"], a["text"])
            for a in store.alarms] == [
        ("c8y_Bin", "CRITICAL", 2, "ACTIVE", "Bin empty"),  # a repeat changes only the count
        ("c8y_Other", "MINOR", 1, "ACTIVE", "Alarm of type c8y_Other raised"),
    ]
    send(proc, "305,c8y_Other,CRITICAL\n306,c8y_Bin")
    assert [(a["severity"], a["status"]) for a in store.alarms] == [
        ("CRITICAL", "CLEARED"), ("CRITICAL", "ACTIVE")
    ]
    send(proc, "304,c8y_Bin")  # a new ACTIVE alarm after the clear
    assert [(a["type"], a["status"], a["count"]) for a in store.alarms][2] == (
        "c8y_Bin", "ACTIVE", 1
    )


def test_operations_pending_500_and_status_updates(proc: SmartRestProcessor,
                                                   store: Store) -> None:
    send(proc, "100\n101,btn")
    child = store.find_external("c8y_Serial", "btn") or ""
    store.create_operation("10000", {"c8y_Restart": {}})
    store.create_operation(child, {"c8y_Command": {"text": 'say "hi", twice'}})
    store.create_operation(child, {"c8y_Custom": {}})  # no static template: not sent
    assert send(proc, "500") == [
        Downlink("s/ds", "510,gw-01"),
        Downlink("s/ds", '511,btn,"say ""hi"", twice"'),
    ]
    assert send(proc, "501,c8y_Command", topic="s/us/btn") == []
    assert send(proc, "503,c8y_Command,all done", topic="s/us/btn") == []
    assert send(proc, "501,c8y_Restart\n502,c8y_Restart,no power") == []
    ops = store.operations_of([child, "10000"])
    assert [(o["status"], o.get("failureReason"), o.get("c8y_Command")) for o in ops] == [
        ("FAILED", "no power", None),
        ("SUCCESSFUL", None, {"text": 'say "hi", twice', "result": "all done"}),
        ("PENDING", None, None),
    ]
    assert send(proc, "500") == []


def test_401_location_event(proc: SmartRestProcessor, store: Store) -> None:
    send(proc, "401,51.151977,6.95173,67")
    assert [(e["type"], e["c8y_Position"]) for e in store.events] == [
        ("c8y_LocationUpdate", {"lat": 51.151977, "lng": 6.95173, "alt": 67})
    ]


def test_other_topics_are_ignored(proc: SmartRestProcessor, store: Store) -> None:
    assert send(proc, "400,t,x", topic="s/uc/my-xid") == []
    assert store.managed_objects == {}
