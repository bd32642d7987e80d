"""The sandbox's Smart Rules over REST (docs/sandbox.md, "Smart Rules"): create, list, update,
delete, refusals, and which alarms record an e-mail."""

from __future__ import annotations

from typing import Any

import httpx

from dashkanban.sandbox import Sandbox
from tests.sandbox_fixture import rest

RULES = "/service/smartrule/smartrules"


def device(client: httpx.Client, name: str) -> str:
    answer = client.post("/inventory/managedObjects", json={"name": name, "c8y_IsDevice": {}},
                         headers={"Accept": "application/json"})
    assert answer.status_code == 201, answer.text
    return str(answer.json()["id"])


def alarm(client: httpx.Client, source: str, alarm_type: str, text: str = "Reorder A3") -> None:
    answer = client.post("/alarm/alarms", json={
        "source": {"id": source}, "type": alarm_type, "text": text, "severity": "MAJOR",
        "time": "2026-11-26T08:00:00.000Z"})
    assert answer.status_code == 201, answer.text


def rule(name: str, alarm_types: str, **extra: Any) -> dict[str, Any]:
    return {"ruleTemplateName": "onAlarmSendEmail", "name": name,
            "config": {"alarmType": alarm_types, "to": f"{name}@example.com",
                       "subject": "#{severity} from #{source.name}", "text": "#{text}"},
            "enabled": True, **extra}


def test_rules_crud_and_refusals(sandbox: Sandbox) -> None:
    with rest(sandbox) as client:
        a = device(client, "screws")
        created = client.post(RULES, json=rule("r1", "c8y_KanbanReorder", enabledSources=[a]))
        assert created.status_code == 201, created.text
        body = created.json()
        assert (body["name"], body["enabledSources"], body["cepModuleId"]) == (
            "r1", [a], f"smartRule{body['id']}")
        assert client.get(RULES).json()["rules"] == [body]
        assert client.get(f"{RULES}/{body['id']}").json() == body
        changed = client.put(f"{RULES}/{body['id']}", json={"enabled": False})
        assert (changed.status_code, changed.json()["enabled"]) == (200, False)
        local = client.post(f"/service/smartrule/managedObjects/{a}/smartrules",
                            json=rule("r2", "x"))
        assert local.json()["c8y_Context"] == {"id": a, "context": "device"}
        assert [r["name"] for r in client.get(RULES).json()["rules"]] == ["r1"]
        assert [r["name"] for r in client.get(RULES, params={"withPrivateRules": "true"})
                .json()["rules"]] == ["r1", "r2"]
        missing = client.post(RULES, json={"config": {}})
        assert (missing.status_code, missing.json()["message"]) == (
            422, "Following mandatory fields should be included: ruleTemplateName,name")
        assert client.delete(f"{RULES}/{body['id']}").status_code == 204
        gone = client.get(f"{RULES}/{body['id']}")
        assert (gone.status_code, gone.json()["error"]) == (404, "smartrule/Not Found")
        assert client.get(RULES, auth=None).status_code == 401


def test_which_alarms_are_mailed(sandbox: Sandbox) -> None:
    with rest(sandbox) as client:
        a, b, c = (device(client, n) for n in ("screws", "ties", "gloves"))
        client.post(RULES, json=rule("only-a", "c8y_KanbanReorder,c8y_KanbanOverdue",
                                     enabledSources=[a]))
        client.post(RULES, json=rule("all-but-b", "c8y_KanbanReorder", disabledSources=[b]))
        client.post(RULES, json=rule("off", "c8y_KanbanReorder", enabled=False))
        client.post(RULES, json={**rule("sms", "c8y_KanbanReorder"),
                                 "ruleTemplateName": "onAlarmSendSms"})
        alarm(client, a, "c8y_KanbanReorder")
        alarm(client, a, "c8y_KanbanReorder")  # de-duplicated: counted, not mailed again
        alarm(client, b, "c8y_KanbanReorder")
        alarm(client, c, "c8y_KanbanOverdue", "late")  # no rule for c's overdue alarms
        alarm(client, a, "c8y_KanbanOverdue", "late")
        alarm(client, c, "c8y_Other")
    assert [(m["rule"], m["to"], m["subject"], m["text"]) for m in sandbox.emails()] == [
        ("only-a", "only-a@example.com", "MAJOR from screws", "Reorder A3"),
        ("all-but-b", "all-but-b@example.com", "MAJOR from screws", "Reorder A3"),
        ("only-a", "only-a@example.com", "MAJOR from screws", "late"),
    ]
    recorded = httpx.get(f"{sandbox.http_url}/sandbox/emails", timeout=5).json()["emails"]
    assert [m["rule"] for m in recorded] == ["only-a", "all-but-b", "only-a"]
    state = httpx.get(f"{sandbox.http_url}/sandbox/state.json", timeout=5).json()
    assert [m["rule"] for m in state["emails"]] == ["only-a", "all-but-b", "only-a"][::-1]
