"""Custom template collections without a network: `s/ut` lines in, replies and `s/dc` lines out.

The expected lines are the examples of Cumulocity's `smartrest-two.md` and the `41` texts of
`built-in-messages.md` (docs/sandbox.md lists what is verified and what is not).
"""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from dashkanban.c8y.smartrest import decode
from dashkanban.sandbox.smartrest import Downlink, SmartRestProcessor
from dashkanban.sandbox.store import Store
from dashkanban.sandbox.templates import Collection, parse_collection, resolve, response_lines

NOW = datetime(2026, 11, 26, 8, 0, 0, 123000, tzinfo=UTC)
KANBAN = "11,9101,,c8y_KanbanRefilled,c8y_KanbanRefilled.bin"


@pytest.fixture
def store() -> Store:
    return Store(clock=lambda: NOW)


@pytest.fixture
def proc(store: Store) -> SmartRestProcessor:
    return SmartRestProcessor(store, owner="dash-gateway")


def send(proc: SmartRestProcessor, topic: str, payload: str) -> list[Downlink]:
    return proc.handle("gw-01", topic, payload.encode())


def collection(text: str, xid: str = "x") -> Collection:
    parsed, errors = parse_collection(xid, decode(text))
    assert errors == []
    assert parsed is not None
    return parsed


def test_the_documented_custom_operation_example() -> None:
    # smartrest-two.md, "Parsing custom operations", verbatim: 111, 222 and 333 come back,
    # 444 does not (its condition is not in the operation).
    templates = collection(
        "11,111,c8y_CustomConfiguration,deviceId,val1,val2,customValues[*]\n"
        "11,222,,deviceId,c8y_CustomConfiguration.val1,c8y_CustomConfiguration.val2\n"
        "11,333,,deviceId,val1,val2,customValues[*]\n"
        "11,444,c8y_CustomConfiguration,c8y_CustomConfiguration.val3,val1,val2,customValues[*]"
    )
    op = {
        "id": "12345", "deviceId": "67890", "agentId": "67890", "status": "PENDING",
        "c8y_CustomConfiguration": {"val1": "1", "val2": "2", "customValues": ["a", "b", "c"]},
        "description": "Send custom configuration",
    }
    assert response_lines(templates, op, "myMqttTestDevice") == [
        "111,myMqttTestDevice,1,2,a,b,c",
        "222,myMqttTestDevice,1,2",
        "333,myMqttTestDevice,,,",
    ]


def test_the_kanban_template_line() -> None:
    templates = collection(KANBAN, "dashkanban")
    op = {"deviceId": "10001", "c8y_KanbanRefilled": {"bin": "A3"}}
    assert response_lines(templates, op, "ac63be123456") == ["9101,ac63be123456,A3"]
    # No bin (the operation names the button): an empty field, still a line.
    assert response_lines(templates, {"c8y_KanbanRefilled": {}}, "b") == ["9101,b,"]
    assert response_lines(templates, {"c8y_Restart": {}}, "b") == []


def test_values_are_encoded_as_smartrest_fields() -> None:
    # The base prefixes every pattern, also one written from `$` [unverified].
    templates = collection("11,7,c8y_X,,text,n,flag,obj,$.list[1]")
    op = {"c8y_X": {"text": 'a, "b"', "n": 2.5, "flag": True, "obj": {"k": 1}, "list": [1, 2]}}
    assert response_lines(templates, op, "dev") == [
        '7,dev,"a, ""b""",2.5,true,"{""k"":1}",2'
    ]


def test_resolve_paths() -> None:
    doc = {"a": {"b": [{"c": 1}, {"c": 2}], "d": None}, "x-y": {"z": "w"}}
    assert resolve(doc, "$.a.b[*].c") == [1, 2]
    assert resolve(doc, "a.b[0].c") == [1]
    assert resolve(doc, "a.b[5].c") == []
    assert resolve(doc, "$['x-y'].z") == ["w"]
    assert resolve(doc, "a.d") == [None]
    assert resolve(doc, "a.missing") == []


def test_existence_then_creation_then_existence(store: Store, proc: SmartRestProcessor) -> None:
    assert send(proc, "s/ut/dashkanban", "") == [Downlink("s/dt", "41,dashkanban")]
    assert send(proc, "s/ut/dashkanban",
                "10,999,POST,MEASUREMENT,,c8y_MyMeasurement,,c8y_MyMeasurement.M.value,NUMBER,\n"
                + KANBAN) == []
    mo_id = store.find_external("c8y_SmartRest2DeviceIdentifier", "dashkanban")
    assert mo_id == "10000"
    doc = store.get_managed_object(mo_id)
    assert (doc["name"], doc["type"], doc["__externalId"], doc["owner"]) == (
        "dashkanban", "c8y_SmartRest2Template", "dashkanban", "dash-gateway"
    )
    assert doc["com_cumulocity_model_smartrest_csv_CsvSmartRestTemplate"] == {
        "requestTemplates": [{
            "msgId": "999", "method": "POST", "api": "MEASUREMENT", "response": "",
            "values": ["c8y_MyMeasurement", "", "c8y_MyMeasurement.M.value", "NUMBER", ""],
        }],
        "responseTemplates": [{
            "msgId": "9101", "base": "", "condition": "c8y_KanbanRefilled",
            "pattern": ["c8y_KanbanRefilled.bin"],
        }],
    }
    assert send(proc, "s/ut/dashkanban", "") == [Downlink("s/dt", "20,dashkanban,10000")]
    # Once created it cannot be changed over MQTT (docs/protocol.md 2.6).
    assert send(proc, "s/ut/dashkanban", "11,9102,,c8y_Other,c8y_Other.x") == [
        Downlink("s/e", "41,dashkanban,Cannot create templates for already existing template "
                        "object")
    ]
    assert [c.xid for c in proc.collections()] == ["dashkanban"]
    assert [r.msg_id for r in proc.collections()[0].responses] == ["9101"]
    # Template collections are no devices: data messages still create the device as before.
    assert store.find_external("c8y_Serial", "gw-01") is None


@pytest.mark.parametrize(("payload", "errors"), [
    ("12,1,x", ["41,12,Not a valid message identifier for template creation"]),
    ("400,t,x", ["41,400,Not a valid message identifier for template creation"]),
    ("11,9101,,c8y_X", ["41,11,Bad response template definition"]),
    ("11,9101,,c8y_X,", ["41,11,Bad response template definition"]),
    ("11,,,c8y_X,a", ["41,11,Bad response template definition"]),
    ("11,1,,c8y_X,a,,b", ["41,11,Bad response template definition"]),
    ("11,1,,c8y_X,a[?(@.b)]", ["41,11,Using Filters (?) in JsonPath is not allowed for SmartRest"]),
    ("11,1,,c8y_X,a..b", ["41,11,Invalid JsonPath"]),
    ("11,1,,c8y_X,.a", ["41,11,Invalid JsonPath"]),
    ("11,1,,c8y_X,a[x]", ["41,11,Invalid JsonPath"]),
    ("10,1,DELETE,INVENTORY", ["41,10,Bad request template definition"]),
    ("10,1,GET,EVENT", ["41,10,Bad request template definition"]),
    ("10,1,POST", ["41,10,Bad request template definition"]),
    ("10,1,POST,EVENT,maybe,t,x,", ["41,10,Bad request template definition"]),
    ("11,1,,,a\n11,1,,,b", ["41,11,Duplicate message identifiers are not allowed"]),
    # Every bad line is reported, and a good line next to them is not created either.
    (KANBAN + "\n12,1\n11,2,,c8y_X", [
        "41,12,Not a valid message identifier for template creation",
        "41,11,Bad response template definition",
    ]),
])
def test_bad_template_lines_create_nothing(store: Store, proc: SmartRestProcessor,
                                           payload: str, errors: list[str]) -> None:
    assert send(proc, "s/ut/kb", payload) == [Downlink("s/e", e) for e in errors]
    assert send(proc, "s/ut/kb", "") == [Downlink("s/dt", "41,kb")]
    assert store.managed_objects == {}


def test_operations_go_to_s_ds_and_or_s_dc(store: Store, proc: SmartRestProcessor) -> None:
    assert send(proc, "s/us", "100\n101,btn-1") == []
    assert send(proc, "s/ut/dashkanban", KANBAN) == []
    assert send(proc, "s/ut/other", "11,5,,c8y_Restart,c8y_Restart.delay") == []
    btn = store.find_external("c8y_Serial", "btn-1") or ""
    refill = store.create_operation(btn, {"c8y_KanbanRefilled": {"bin": "A3"}})
    restart = store.create_operation(btn, {"c8y_Restart": {"delay": 3}})
    # A fragment of our own matches no static template: s/dc only.
    assert proc.operation_downlinks(refill) == [Downlink("s/dc/dashkanban", "9101,btn-1,A3")]
    # A static fragment goes to s/ds, and to every collection whose condition it meets.
    assert proc.operation_downlinks(restart) == [
        Downlink("s/ds", "510,btn-1"), Downlink("s/dc/other", "5,btn-1,3")
    ]
    assert send(proc, "s/us", "500") == [
        Downlink("s/dc/dashkanban", "9101,btn-1,A3"),
        Downlink("s/ds", "510,btn-1"),
        Downlink("s/dc/other", "5,btn-1,3"),
    ]


def test_an_x_id_with_a_comma_is_quoted(proc: SmartRestProcessor) -> None:
    assert send(proc, "s/ut/a,b", "") == [Downlink("s/dt", '41,"a,b"')]
    assert send(proc, "s/ut/a,b", KANBAN) == []
    assert send(proc, "s/ut/a,b", "") == [Downlink("s/dt", '20,"a,b",10000')]
    assert send(proc, "s/ut/a,b", KANBAN) == [
        Downlink("s/e", '41,"a,b",Cannot create templates for already existing template object')
    ]


def test_collections_survive_the_data_file(store: Store, proc: SmartRestProcessor) -> None:
    assert send(proc, "s/ut/dashkanban", KANBAN) == []
    again = Store(clock=lambda: NOW)
    again.load_json(store.to_json())
    reloaded = SmartRestProcessor(again)
    assert reloaded.handle("gw-01", "s/ut/dashkanban", b"") == [
        Downlink("s/dt", "20,dashkanban,10000")
    ]
    assert reloaded.collections() == proc.collections()
