"""Issue 18, end to end against the sandbox: measured lead times and cards in `kanban report
--json`, the overdue alarm raised once and cleared by the refill, and the Smart Rules that mail
the supplier (installed once, unchanged the second time, an e-mail recorded for a reorder)."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from dashkanban.cli import main
from dashkanban.sandbox import Sandbox
from tests import forge
from tests.sandbox_fixture import rest, sandbox_config

MACID = (
    "Name, MAC-Address, bin, part, quantity, location, supplier, lead_time_days, role, cards, "
    "supplier_email\n"
    "screws, ac:63:be:12:34:56, A3, M6 screws, 50, Aisle 2, Würth, 2, , 3, orders@wuerth.example\n"
    "screws-full, ac:63:be:12:34:58, A3, , , , , , refill, ,\n"
    'ties, fc:a6:67:0a:0b:0c, B1, "Cable ties, 200mm", 100, Aisle 4, Hellermann, 3, , 1, '
    "sales@hellermann.example\n"
)
SCREWS, SCREWS_FULL, TIES = "ac:63:be:12:34:56", "ac:63:be:12:34:58", "fc:a6:67:0a:0b:0c"
T0 = datetime(2026, 11, 2, 8, 0, tzinfo=UTC).timestamp()
DAY = 86400.0
GATEWAY = "dashkanban-gw-01"


def write_config(folder: Path, sandbox: Sandbox, *, alarms: bool = True) -> Path:
    (folder / "MACID.csv").write_text(MACID, encoding="utf-8")
    kanban = (f"[kanban]\nalarms = {'yes' if alarms else 'no'}\nhistory_days = 36500\n"
              "min_samples = 3\n")
    return sandbox_config(folder, sandbox, folder / "MACID.csv", gateway=GATEWAY, extra=kanban)


def capture(folder: Path, name: str, frames: list[tuple[str, float]]) -> Path:
    path = folder / name
    with path.open("wb") as out:
        forge.write_pcap(out, [(at, forge.dhcp_client_frame(mac, forge.DISCOVER))
                               for mac, at in frames])
    return path


def alarms(sandbox: Sandbox, alarm_type: str) -> list[tuple[str, str, str, str, int]]:
    """(device name, status, severity, text, count) of every alarm of a type, over REST."""
    with rest(sandbox) as client:
        found = client.get("/alarm/alarms", params={"type": alarm_type, "pageSize": 100})
    assert found.status_code == 200, found.text
    names = {d["id"]: d["name"] for serial in ("ac63be123456", "fca6670a0b0c")
             if (d := sandbox.device(serial)) is not None}
    return sorted((names.get(a["source"]["id"], "?"), a["status"], a["severity"], a["text"],
                   a["count"]) for a in found.json()["alarms"])


def test_measured_lead_time_and_cards_in_report_json(
    tmp_path: Path, sandbox: Sandbox, capsys: pytest.CaptureFixture[str]
) -> None:
    """A3 reordered and refilled four times at known times:

    reorder day 0 -> refill day 1 (1 day), 2 -> 4 (2), 5 -> 6.5 (1.5), 8 -> 9 (1).
    Measured lead time: median(1, 2, 1.5, 1) = 1.25 days from 4 samples (>= min_samples 3),
    used instead of the configured 2. The data covers day 0 to day 9: 9 days.
    D = 4 reorders x 50 / 9 days = 22.222 a day.
    Cards = ceil(22.222 x 1.25 x 1.2 / 50) = ceil(0.667) = 1; the loop has 3: "remove 2 cards".
    (With the configured 2 days it would be ceil(1.067) = 2.)
    B1: one reorder on day 3, never refilled: D = 100 / 9 = 11.111; 0 samples, the configured
    3 days; cards = ceil(11.111 x 3 x 1.2 / 100) = ceil(0.4) = 1; the loop has 1: "ok".
    Overdue: B1's reorder is 6 days old at the end of the data, more than 3.
    """
    config = write_config(tmp_path, sandbox, alarms=False)
    pcap = capture(tmp_path, "store.pcap", [
        (SCREWS, T0), (SCREWS_FULL, T0 + 1 * DAY),
        (SCREWS, T0 + 2 * DAY), (TIES, T0 + 3 * DAY), (SCREWS_FULL, T0 + 4 * DAY),
        (SCREWS, T0 + 5 * DAY), (SCREWS_FULL, T0 + 6.5 * DAY),
        (SCREWS, T0 + 8 * DAY), (SCREWS_FULL, T0 + 9 * DAY),
    ])
    assert main(["replay", "-c", str(config), str(pcap), "--timeout", "10"]) == 0
    capsys.readouterr()
    assert main(["kanban", "report", "-c", str(config), "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["from"] == "2026-11-02T08:00:00+00:00"
    assert report["to"] == "2026-11-11T08:00:00+00:00"
    assert report["source"] == "local history"
    a3, b1 = report["bins"]
    assert a3 == {
        "bin": "A3", "part": "M6 screws", "location": "Aisle 2", "supplier": "Würth",
        "reorders": 4, "repeats": 0, "demand_per_day": round(4 * 50 / 9, 6),
        "lead_time_days": {"configured": 2.0, "measured": 1.25, "samples": 4, "used": "measured"},
        "overdue": False,
        "cards": {"current": 3, "recommended": 1, "action": "remove 2 cards"},
    }
    assert b1 == {
        "bin": "B1", "part": "Cable ties, 200mm", "location": "Aisle 4", "supplier": "Hellermann",
        "reorders": 1, "repeats": 0, "demand_per_day": round(100 / 9, 6),
        "lead_time_days": {"configured": 3.0, "measured": None, "samples": 0, "used": "configured"},
        "overdue": True,
        "cards": {"current": 1, "recommended": 1, "action": "ok"},
    }
    # The same figures on any later day: the period is the data's, not up to today.
    assert main(["kanban", "report", "-c", str(config), "--json"]) == 0
    assert json.loads(capsys.readouterr().out) == report


def test_overdue_alarm_raised_once_and_cleared_by_the_refill(
    tmp_path: Path, sandbox: Sandbox, capsys: pytest.CaptureFixture[str]
) -> None:
    """A3 (lead time 2 days) reordered on day 0. On the packet clock, checked at every frame:
    another device's frame on day 2.5 is the first frame after A3's deadline (day 2): A3's
    overdue alarm, 0.5 days late, at that frame's time. B1's reorder on day 3 and its repeat on
    day 3.5 check again: nothing new. A3's refill on day 4 clears both of A3's alarms. The
    capture ends with a frame on day 7: B1 (lead 3 days, reordered day 3) is 1 day late there,
    raised at the end of the capture and still active."""
    config = write_config(tmp_path, sandbox)
    other = "02:00:00:00:00:99"  # someone else's device: frames, not presses
    pcap = capture(tmp_path, "store.pcap", [
        (SCREWS, T0), (other, T0 + 2.5 * DAY), (TIES, T0 + 3 * DAY), (TIES, T0 + 3.5 * DAY),
        (SCREWS_FULL, T0 + 4 * DAY), (other, T0 + 7 * DAY),
    ])
    assert main(["replay", "-c", str(config), str(pcap), "--timeout", "10"]) == 0
    # 4 presses and 2 rows of overdue lines (deliver counts outbox rows).
    assert capsys.readouterr().err.splitlines()[-1] == "delivered 6 events to 127.0.0.1"
    assert alarms(sandbox, "c8y_KanbanOverdue") == [
        ("screws", "CLEARED", "CRITICAL", "Bin A3 (M6 screws, Würth) overdue by 0.5 days: "
         "reordered 2026-11-02 08:00 UTC, lead time 2 days", 1),
        ("ties", "ACTIVE", "CRITICAL", "Bin B1 (Cable ties, 200mm, Hellermann) overdue by 1 day: "
         "reordered 2026-11-05 08:00 UTC, lead time 3 days", 1),
    ]
    assert alarms(sandbox, "c8y_KanbanReorder") == [
        ("screws", "CLEARED", "MAJOR", "Reorder 50 x M6 screws for bin A3 (Aisle 2)", 1),
        ("ties", "ACTIVE", "MAJOR", "Reorder 100 x Cable ties, 200mm for bin B1 (Aisle 4)", 2),
    ]
    # The lines on the wire, in order: raised at the packet time of the check, cleared with
    # the reorder by the refill press's row.
    overdue = [(m.topic, m.payload) for m in sandbox.messages()
               if m.direction == "in" and "c8y_KanbanOverdue" in m.payload]
    a3_text = ('"Bin A3 (M6 screws, Würth) overdue by 0.5 days: reordered 2026-11-02 08:00 '
               'UTC, lead time 2 days"')  # quoted: the text has commas (SmartREST CSV)
    b1_text = ('"Bin B1 (Cable ties, 200mm, Hellermann) overdue by 1 day: reordered '
               '2026-11-05 08:00 UTC, lead time 3 days"')
    assert overdue == [
        ("s/us/ac63be123456", f"301,c8y_KanbanOverdue,{a3_text},2026-11-04T20:00:00.000+00:00"),
        ("s/us/ac63be123456", "306,c8y_KanbanReorder\n306,c8y_KanbanOverdue"),
        ("s/us/fca6670a0b0c", f"301,c8y_KanbanOverdue,{b1_text},2026-11-09T08:00:00.000+00:00"),
    ]


def test_rules_install_twice_then_a_reorder_is_mailed(
    tmp_path: Path, sandbox: Sandbox, capsys: pytest.CaptureFixture[str]
) -> None:
    config = write_config(tmp_path, sandbox)
    # The buttons' devices exist after their first press (the rules are enabled for them).
    first = capture(tmp_path, "first.pcap", [(SCREWS, T0), (TIES, T0 + 60),
                                             (SCREWS_FULL, T0 + 120)])
    assert main(["replay", "-c", str(config), str(first), "--timeout", "10"]) == 0
    assert sandbox.emails() == []
    screws_id, ties_id = sandbox.device_id("ac63be123456"), sandbox.device_id("fca6670a0b0c")
    capsys.readouterr()

    assert main(["kanban", "rules", "install", "-c", str(config), "--dry-run"]) == 0
    assert capsys.readouterr().out.splitlines() == [
        f"would create: dashkanban {GATEWAY}: {kind} mail to {email} (1 button, bins {b})"
        for email, b in (("orders@wuerth.example", "A3"), ("sales@hellermann.example", "B1"))
        for kind in ("reorder", "overdue")
    ]
    with rest(sandbox) as client:
        assert client.get("/service/smartrule/smartrules").json() == {"rules": []}

    assert main(["kanban", "rules", "install", "-c", str(config)]) == 0
    assert capsys.readouterr().out.splitlines() == [
        f"create: dashkanban {GATEWAY}: {kind} mail to {email} (1 button, bins {b})"
        for email, b in (("orders@wuerth.example", "A3"), ("sales@hellermann.example", "B1"))
        for kind in ("reorder", "overdue")
    ]
    with rest(sandbox) as client:
        rules = client.get("/service/smartrule/smartrules").json()["rules"]
    assert [(r["name"], r["ruleTemplateName"], r["enabled"], r["enabledSources"],
             r["config"]["alarmType"], r["config"]["to"]) for r in rules] == [
        (f"dashkanban {GATEWAY}: reorder mail to orders@wuerth.example", "onAlarmSendEmail",
         True, [screws_id], "c8y_KanbanReorder", "orders@wuerth.example"),
        (f"dashkanban {GATEWAY}: overdue mail to orders@wuerth.example", "onAlarmSendEmail",
         True, [screws_id], "c8y_KanbanOverdue", "orders@wuerth.example"),
        (f"dashkanban {GATEWAY}: reorder mail to sales@hellermann.example", "onAlarmSendEmail",
         True, [ties_id], "c8y_KanbanReorder", "sales@hellermann.example"),
        (f"dashkanban {GATEWAY}: overdue mail to sales@hellermann.example", "onAlarmSendEmail",
         True, [ties_id], "c8y_KanbanOverdue", "sales@hellermann.example"),
    ]

    # A second run changes nothing: found by name, equal, left alone.
    assert main(["kanban", "rules", "install", "-c", str(config)]) == 0
    assert [line.split(":")[0] for line in capsys.readouterr().out.splitlines()] == [
        "unchanged"] * 4
    with rest(sandbox) as client:
        assert client.get("/service/smartrule/smartrules").json()["rules"] == rules

    # A3 was refilled in the first capture; its next reorder raises a new alarm: mailed.
    second = capture(tmp_path, "second.pcap", [(SCREWS, T0 + DAY)])
    assert main(["replay", "-c", str(config), str(second), "--timeout", "10"]) == 0
    text = "Reorder 50 x M6 screws for bin A3 (Aisle 2)"
    assert [(m["to"], m["subject"], m["text"], m["rule"]) for m in sandbox.emails()] == [
        ("orders@wuerth.example", f"Kanban reorder: {text}",
         f"{text}\n\nPlease deliver. Reported by the Kanban button screws.",
         f"dashkanban {GATEWAY}: reorder mail to orders@wuerth.example"),
    ]
    with rest(sandbox, auth=None) as client:
        recorded: list[dict[str, Any]] = client.get("/sandbox/emails").json()["emails"]
    assert [m["to"] for m in recorded] == ["orders@wuerth.example"]
    with rest(sandbox, auth=None) as client:
        page = client.get("/").text
    assert (f"<td>orders@wuerth.example</td><td>Kanban reorder: {text}</td>"
            f"<td>dashkanban {GATEWAY}: reorder mail to orders@wuerth.example</td>") in page

    capsys.readouterr()
    assert main(["kanban", "rules", "uninstall", "-c", str(config)]) == 0
    assert capsys.readouterr().out.splitlines() == [f"remove: {r['name']}" for r in rules]
    with rest(sandbox) as client:
        assert client.get("/service/smartrule/smartrules").json() == {"rules": []}
