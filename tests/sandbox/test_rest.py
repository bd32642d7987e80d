"""The sandbox's REST side: exact shapes, media types, status codes and error bodies (notes 3)."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator

import httpx
import pytest

from dashkanban.sandbox import Sandbox
from tests.sandbox_fixture import SANDBOX_PASSWORD, SANDBOX_USER, Device, rest

MakeDevice = Callable[..., Device]
ACCEPT = {"Accept": "application/vnd.com.nsn.cumulocity.managedobject+json"}
INFO = "https://www.cumulocity.com/guides/reference/#error_reporting"


def media(name: str) -> str:
    return f"application/vnd.com.nsn.cumulocity.{name}+json;charset=UTF-8;ver=0.9"


@pytest.fixture
def client(sandbox: Sandbox) -> Iterator[httpx.Client]:
    with rest(sandbox) as c:
        yield c


@pytest.fixture
def gateway(sandbox: Sandbox, device_factory: MakeDevice) -> Device:
    """gw-01 with children btn-1 and btn-2 and three events of btn-1, made over MQTT."""
    gw = device_factory("gw-01")
    gw.connect()
    gw.publish("s/us", "100,Store 3 gateway,c8y_DashKanbanGateway\n"
                       "101,btn-1,dashButton_1,c8y_DashButton\n101,btn-2,dashButton_2,c8y_DashButton")
    gw.publish("s/us/btn-1", "400,c8y_MAC_Event,first,2026-11-26T08:00:00.000+00:00\n"
                             "400,c8y_MAC_Event,third,2026-11-26T10:00:00.000+01:00\n"
                             "400,c8y_Other,second,2026-11-26T08:30:00.000Z")
    return gw


def test_identity_200_shape(sandbox: Sandbox, client: httpx.Client, gateway: Device) -> None:
    response = client.get("/identity/externalIds/c8y_Serial/gw-01")
    base = sandbox.http_url
    assert response.status_code == 200
    assert response.headers["content-type"] == media("externalid")
    assert response.json() == {
        "externalId": "gw-01",
        "managedObject": {"id": "10000", "self": f"{base}/inventory/managedObjects/10000"},
        "self": f"{base}/identity/externalIds/c8y_Serial/gw-01",
        "type": "c8y_Serial",
    }


def test_identity_404_shape(client: httpx.Client) -> None:
    response = client.get("/identity/externalIds/c8y_Serial/raspi-0000000017b769d6")
    assert response.status_code == 404
    assert response.headers["content-type"] == media("error")
    assert response.json() == {
        "error": "identity/Not Found",
        "message": "External id not found; external id = ID [type=c8y_Serial, "
                   "value=raspi-0000000017b769d6]",
        "info": INFO,
    }


def test_unauthorized_bodies(sandbox: Sandbox) -> None:
    security_info = "https://www.cumulocity.com/guides/reference-guide/#error_reporting"
    with rest(sandbox, auth=None) as anonymous:
        response = anonymous.get("/inventory/managedObjects")
    assert response.status_code == 401
    assert response.headers["www-authenticate"] == 'Basic realm="Cumulocity"'
    assert response.json() == {
        "error": "security/Unauthorized",
        "message": "Full authentication is required to access this resource",
        "info": security_info,
    }
    for auth in ((SANDBOX_USER, "wrong"), ("dash-gateway", SANDBOX_PASSWORD)):
        with rest(sandbox, auth=auth) as wrong:
            response = wrong.get("/event/events")
        assert response.status_code == 401
        assert response.json()["error"] == "security/Unauthorized"
        assert SANDBOX_PASSWORD not in response.text


def test_create_device_and_bind_identity(sandbox: Sandbox, client: httpx.Client) -> None:
    created = client.post("/inventory/managedObjects", headers=ACCEPT,
                          json={"name": "Pi", "type": "c8y_Linux", "c8y_IsDevice": {}})
    assert created.status_code == 201
    mo = created.json()
    base = sandbox.http_url
    assert created.headers["location"] == f"{base}/inventory/managedObjects/{mo['id']}"
    assert created.headers["content-type"] == media("managedobject")
    assert {k: mo[k] for k in ("name", "type", "c8y_IsDevice", "owner")} == {
        "name": "Pi", "type": "c8y_Linux", "c8y_IsDevice": {}, "owner": "dash-gateway"
    }
    assert mo["childDevices"] == {
        "self": f"{base}/inventory/managedObjects/{mo['id']}/childDevices", "references": []
    }
    bind = client.post(f"/identity/globalIds/{mo['id']}/externalIds",
                       json={"type": "c8y_Serial", "externalId": "pi-1"})
    assert bind.status_code == 201
    assert bind.json()["managedObject"]["id"] == mo["id"]
    other = client.post("/inventory/managedObjects", json={"name": "Other"})
    # Without Accept, the body is empty (http-usage.md) - httpx sends Accept */* by default.
    bare = httpx.post(f"{base}/inventory/managedObjects", json={"name": "Bare"},
                      auth=(SANDBOX_USER, SANDBOX_PASSWORD), headers={"Accept": ""})
    assert (bare.status_code, bare.content) == (201, b"")
    conflict = client.post(f"/identity/globalIds/{other.json()['id']}/externalIds",
                           json={"type": "c8y_Serial", "externalId": "pi-1"})
    assert conflict.status_code == 409
    assert conflict.json() == {
        "error": "identity/Conflict",
        "message": "Duplicate - Identity already bound to a different Global ID",
        "info": INFO,
    }
    listed = client.get(f"/identity/globalIds/{mo['id']}/externalIds").json()
    assert [(x["type"], x["externalId"]) for x in listed["externalIds"]] == [("c8y_Serial", "pi-1")]
    missing = client.post("/identity/globalIds/99/externalIds",
                          json={"type": "c8y_Serial", "externalId": "x"})
    assert missing.status_code == 404
    assert missing.json()["error"] == "inventory/Not Found"
    assert client.delete("/identity/externalIds/c8y_Serial/pi-1").status_code == 204
    assert client.get("/identity/externalIds/c8y_Serial/pi-1").status_code == 404


def test_put_merges_fragments(client: httpx.Client, gateway: Device) -> None:
    btn = client.get("/identity/externalIds/c8y_Serial/btn-1").json()["managedObject"]["id"]
    kanban = {"bin": "A-01", "part": "M6 nuts", "quantity": 500}
    response = client.put(f"/inventory/managedObjects/{btn}", json={"c8y_Kanban": kanban})
    assert response.status_code == 200
    doc = client.get(f"/inventory/managedObjects/{btn}").json()
    assert (doc["name"], doc["type"], doc["c8y_Kanban"], doc["c8y_IsDevice"]) == (
        "dashButton_1", "c8y_DashButton", kanban, {}
    )
    assert doc["deviceParents"]["references"][0]["managedObject"]["id"] == "10000"
    client.put(f"/inventory/managedObjects/{btn}", json={"c8y_Kanban": {"bin": "B"}, "x": 1})
    doc = client.get(f"/inventory/managedObjects/{btn}").json()
    assert (doc["c8y_Kanban"], doc["x"]) == ({"bin": "B"}, 1)
    missing = client.put("/inventory/managedObjects/424242", json={"a": 1})
    assert missing.status_code == 404
    assert missing.json() == {
        "error": "inventory/Not Found",
        "message": "Finding device data from database failed : No managedObject for id "
                   "'424242'!",
        "info": INFO,
    }


def test_inventory_queries_and_children(sandbox: Sandbox, client: httpx.Client,
                                        gateway: Device) -> None:
    listed = client.get("/inventory/managedObjects", params={"type": "c8y_DashButton"}).json()
    assert [m["name"] for m in listed["managedObjects"]] == ["dashButton_1", "dashButton_2"]
    assert listed["statistics"] == {"currentPage": 1, "pageSize": 5}
    children = client.get("/inventory/managedObjects/10000/childDevices").json()
    assert [r["managedObject"]["name"] for r in children["references"]] == [
        "dashButton_1", "dashButton_2"
    ]
    new = client.post("/inventory/managedObjects", json={"name": "btn-3", "c8y_IsDevice": {}})
    linked = client.post("/inventory/managedObjects/10000/childDevices",
                         json={"managedObject": {"id": new.json()["id"]}})
    assert linked.status_code == 201
    assert [c["name"] for c in sandbox.children("gw-01")] == [
        "dashButton_1", "dashButton_2", "btn-3"
    ]


def test_events_newest_first_filters_and_paging(client: httpx.Client, gateway: Device) -> None:
    btn = client.get("/identity/externalIds/c8y_Serial/btn-1").json()["managedObject"]["id"]
    response = client.get("/event/events", params={"source": btn})
    assert response.headers["content-type"] == media("eventcollection")
    assert [e["text"] for e in response.json()["events"]] == ["third", "second", "first"]
    assert [e["time"] for e in response.json()["events"]] == [
        "2026-11-26T09:00:00.000Z", "2026-11-26T08:30:00.000Z", "2026-11-26T08:00:00.000Z"
    ]
    reverted = client.get("/event/events", params={"source": btn, "revert": "true"}).json()
    assert [e["text"] for e in reverted["events"]] == ["first", "second", "third"]
    typed = client.get("/event/events", params={"type": "c8y_MAC_Event"}).json()
    assert [e["text"] for e in typed["events"]] == ["third", "first"]
    # Inclusive bounds; `+` encoded as %2B by httpx.
    window = client.get("/event/events", params={
        "dateFrom": "2026-11-26T09:30:00+01:00", "dateTo": "2026-11-26T09:00:00.000Z",
    }).json()
    assert [e["text"] for e in window["events"]] == ["third", "second"]
    page = client.get("/event/events", params={"pageSize": 2, "currentPage": 2}).json()
    assert [e["text"] for e in page["events"]] == ["first"]
    assert page["statistics"] == {"currentPage": 2, "pageSize": 2}
    assert "next" not in page
    assert page["prev"].endswith("pageSize=2&currentPage=1")
    first_page = client.get("/event/events", params={"pageSize": 2}).json()
    assert first_page["next"].endswith("pageSize=2&currentPage=2")
    gateway.publish("s/us/btn-2", "400,c8y_MAC_Event,fourth,2026-11-26T11:00:00Z")
    tree = client.get("/event/events", params={"source": "10000", "withSourceDevices": "true",
                                                "pageSize": 10}).json()
    assert [e["text"] for e in tree["events"]] == ["fourth", "third", "second", "first"]
    assert client.get("/event/events", params={"source": "10000"}).json()["events"] == []
    dated = client.get("/event/events", params={"dateFrom": "2026-11-26T08:00:00+00:00",
                                                 "pageSize": 1}).json()
    # `next` keeps the filter, with `+` encoded as %2B.
    assert dated["next"].endswith("?dateFrom=2026-11-26T08%3A00%3A00%2B00%3A00"
                                  "&pageSize=1&currentPage=2")
    following = client.get(dated["next"]).json()
    assert [e["text"] for e in following["events"]] == ["third"]
    huge = client.get("/event/events", params={"pageSize": 99999}).json()
    assert huge["statistics"]["pageSize"] == 2000


def test_raw_plus_in_a_date_is_refused(sandbox: Sandbox, client: httpx.Client) -> None:
    # A raw `+` is a space in a query string: the platform wants %2B (openapi; docs/protocol.md
    # 3.1).
    response = client.get(f"{sandbox.http_url}/event/events?dateFrom=2026-11-26T09:30:00+01:00")
    assert response.status_code == 422
    assert response.json()["error"] == "undefined/validationError"
    assert "encode + as %2B" in response.json()["message"]


def test_post_event_201_and_422(sandbox: Sandbox, client: httpx.Client, gateway: Device) -> None:
    created = client.post("/event/events", headers={"Accept": media("event")}, json={
        "source": {"id": "10000"}, "type": "c8y_Test", "text": "over REST",
        "time": "2026-11-26T08:00:01.234+02:00", "acme_Extra": {"a": 1},
    })
    assert created.status_code == 201
    body = created.json()
    assert created.headers["location"] == body["self"]
    assert {k: body[k] for k in ("source", "type", "text", "time", "acme_Extra")} == {
        "source": {"id": "10000", "self": f"{sandbox.http_url}/inventory/managedObjects/10000"},
        "type": "c8y_Test", "text": "over REST", "time": "2026-11-26T06:00:01.234Z",
        "acme_Extra": {"a": 1},
    }
    assert client.get(f"/event/events/{body['id']}").json()["text"] == "over REST"
    missing = client.post("/event/events", json={"source": {"id": "10000"}, "type": "t"})
    assert missing.status_code == 422
    assert missing.json() == {
        "error": "undefined/validationError",
        "message": "Following mandatory fields should be included: text,time",
        "info": INFO,
    }
    no_zone = client.post("/event/events", json={
        "source": {"id": "10000"}, "type": "t", "text": "x", "time": "2026-11-26T08:00:00"})
    assert no_zone.status_code == 422
    unknown = client.post("/event/events", json={
        "source": {"id": "999"}, "type": "t", "text": "x", "time": "2026-11-26T08:00:00Z"})
    assert unknown.status_code == 422
    bad_json = client.post("/event/events", content=b"{nope",
                           headers={"Content-Type": "application/json"})
    assert (bad_json.status_code, bad_json.json()["error"]) == (400, "general/badRequest")


def test_alarms_and_measurements(client: httpx.Client, gateway: Device) -> None:
    gateway.publish("s/us/btn-1", "301,c8y_BinEmpty,Bin A-01 empty\n301,c8y_BinEmpty,again\n"
                                  "304,c8y_Low\n200,c8y_Temperature,T,21.5,C")
    alarms = client.get("/alarm/alarms", params={"status": "ACTIVE"})
    assert alarms.headers["content-type"] == media("alarmcollection")
    rows = [(a["type"], a["severity"], a["count"], a["text"]) for a in alarms.json()["alarms"]]
    # The repeat counts; its text is ignored (alarm de-duplication, docs/sandbox.md).
    assert sorted(rows) == [("c8y_BinEmpty", "CRITICAL", 2, "Bin A-01 empty"),
                            ("c8y_Low", "WARNING", 1, "Alarm of type c8y_Low raised")]
    gateway.publish("s/us/btn-1", "306,c8y_BinEmpty")
    assert [a["type"] for a in client.get(
        "/alarm/alarms", params={"status": "CLEARED"}).json()["alarms"]] == ["c8y_BinEmpty"]
    assert [a["type"] for a in client.get(
        "/alarm/alarms", params={"severity": "WARNING"}).json()["alarms"]] == ["c8y_Low"]
    low = client.get("/alarm/alarms", params={"type": "c8y_Low"}).json()["alarms"][0]
    cleared = client.put(f"/alarm/alarms/{low['id']}", json={"status": "CLEARED"})
    assert cleared.json()["status"] == "CLEARED"
    measurements = client.get("/measurement/measurements").json()["measurements"]
    assert [m["c8y_Temperature"] for m in measurements] == [{"T": {"value": 21.5, "unit": "C"}}]


def test_openapi_and_unknown_paths(sandbox: Sandbox, client: httpx.Client) -> None:
    spec = httpx.get(f"{sandbox.http_url}/openapi.json").json()
    assert spec["openapi"] == "3.0.3"
    for path in ("/identity/externalIds/{type}/{externalId}", "/event/events",
                 "/inventory/managedObjects/{id}", "/devicecontrol/operations", "/alarm/alarms",
                 "/measurement/measurements", "/identity/globalIds/{id}/externalIds"):
        assert path in spec["paths"]
    missing = client.get("/tenant/options")
    assert (missing.status_code, missing.json()["error"]) == (404, "general/notFound")
    wrong = client.delete("/event/events")
    assert (wrong.status_code, wrong.json()["error"]) == (405, "general/methodNotAllowed")


def test_page_and_state_need_no_login(sandbox: Sandbox, gateway: Device) -> None:
    state = httpx.get(f"{sandbox.http_url}/sandbox/state.json").json()
    assert [(d["name"], [c["serial"] for c in d["children"]]) for d in state["devices"]] == [
        ("Store 3 gateway", ["btn-1", "btn-2"])
    ]
    assert [e["text"] for e in state["events"]] == ["third", "second", "first"]
    page = httpx.get(f"{sandbox.http_url}/")
    assert page.headers["content-type"] == "text/html; charset=utf-8"
    assert "<td>dashButton_1</td><td>btn-1</td><td>c8y_MAC_Event</td><td>third</td>" in page.text


def test_page_escapes_device_text(sandbox: Sandbox, device_factory: MakeDevice) -> None:
    gw = device_factory("gw-01")
    gw.connect()
    gw.publish("s/us", '100,<b>bold</b>\n400,t,"<script>alert(1)</script>"')
    page = httpx.get(f"{sandbox.http_url}/").text
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page
    assert "<b>bold</b>" not in page
    assert json.loads(httpx.get(f"{sandbox.http_url}/sandbox/state.json").text)["events"][0][
        "text"] == "<script>alert(1)</script>"
