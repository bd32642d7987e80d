"""The sandbox's read-only status page: devices, children, recent events and the alarms
(active, acknowledged and cleared, with their counts).

`state()` is a pure view of the store as JSON; `render_html()` renders it on the server (so the
page works without JavaScript and a headless browser sees the data at once), and a small script
re-renders it from `/sandbox/state.json` every second. All text goes through escaping (server) or
`textContent` (browser): device names and event texts come from devices.
"""

from __future__ import annotations

import html
from typing import Any
from urllib.parse import quote

from dashkanban.sandbox.store import Store
from dashkanban.sandbox.templates import COLLECTION_TYPE

RECENT_EVENTS = 50
RECENT_MESSAGES = 30
RECENT_ALARMS = 100


def state(store: Store) -> dict[str, Any]:
    with store.lock:
        names = {mo_id: doc.get("name", "") for mo_id, doc in store.managed_objects.items()}
        serials = {mo_id: xid for (t, xid), mo_id in store.identities.items() if t == "c8y_Serial"}
        devices = []
        for mo_id, doc in store.managed_objects.items():
            if doc["_parents"] or doc.get("type") == COLLECTION_TYPE:
                continue
            devices.append({
                "id": mo_id, "name": doc.get("name", ""), "type": doc.get("type", ""),
                "serial": serials.get(mo_id, ""),
                "children": [
                    {"id": c, "name": names.get(c, ""), "serial": serials.get(c, "")}
                    for c in doc["_children"]
                ],
            })
        events = sorted(store.events, key=lambda e: (e["time"], int(e["id"])), reverse=True)
        recent = [
            {"id": e["id"], "time": e["time"], "type": e["type"], "text": e["text"],
             "source": e["source"], "sourceName": names.get(e["source"], ""),
             "sourceSerial": serials.get(e["source"], "")}
            for e in events[:RECENT_EVENTS]
        ]
        # Active first (the open Kanban cards), then acknowledged and cleared; newest first.
        order = {"ACTIVE": 0, "ACKNOWLEDGED": 1, "CLEARED": 2}
        listed = sorted(store.alarms, key=lambda a: (order.get(a["status"], 3),
                                                    -int(a["id"])))
        alarms = [
            {"id": a["id"], "type": a["type"], "text": a["text"], "severity": a["severity"],
             "count": a["count"], "status": a["status"], "time": a.get("time", ""),
             "sourceName": names.get(a["source"], "")}
            for a in listed[:RECENT_ALARMS]
        ]
        statuses = [a["status"] for a in store.alarms]
        alarm_counts = {status: statuses.count(status) for status in order}
        messages = [
            {"time": m.time, "client": m.client_id, "direction": m.direction, "topic": m.topic,
             "payload": m.payload}
            for m in list(store.messages)[-RECENT_MESSAGES:]
        ]
        return {"version": store.version, "devices": devices, "events": recent,
                "eventCount": len(store.events), "alarms": alarms, "alarmCounts": alarm_counts,
                "messages": messages}


def _e(value: object) -> str:
    return html.escape(str(value), quote=True)


def _device_rows(data: dict[str, Any]) -> str:
    rows = []
    for d in data["devices"]:
        children = ", ".join(f"{c['name']} ({c['serial']})" for c in d["children"]) or "–"
        rows.append(f"<tr><td>{_e(d['id'])}</td><td>{_e(d['name'])}</td><td>{_e(d['serial'])}</td>"
                    f"<td>{_e(d['type'])}</td><td>{_e(children)}</td></tr>")
    return "".join(rows) or '<tr><td colspan="5">no devices yet</td></tr>'


def _event_rows(data: dict[str, Any]) -> str:
    rows = []
    for ev in data["events"]:
        rows.append(f"<tr><td>{_e(ev['time'])}</td><td>{_e(ev['sourceName'])}</td>"
                    f"<td>{_e(ev['sourceSerial'])}</td><td>{_e(ev['type'])}</td>"
                    f"<td>{_e(ev['text'])}</td></tr>")
    return "".join(rows) or '<tr><td colspan="5">no events yet</td></tr>'


def _alarm_rows(data: dict[str, Any]) -> str:
    rows = []
    for a in data["alarms"]:
        rows.append(f"<tr><td>{_e(a['status'])}</td><td>{_e(a['severity'])}</td>"
                    f"<td>{_e(a['count'])}</td><td>{_e(a['sourceName'])}</td>"
                    f"<td>{_e(a['type'])}</td><td>{_e(a['text'])}</td></tr>")
    return "".join(rows) or '<tr><td colspan="6">no alarms yet</td></tr>'


def _alarm_counts(data: dict[str, Any]) -> str:
    counts = data["alarmCounts"]
    return ", ".join(f"{counts[s]} {s.lower()}" for s in ("ACTIVE", "ACKNOWLEDGED", "CLEARED"))


def _email_rows(data: dict[str, Any]) -> str:
    rows = []
    for m in data.get("emails", []):
        rows.append(f"<tr><td>{_e(m['time'])}</td><td>{_e(m['to'])}</td>"
                    f"<td>{_e(m['subject'])}</td><td>{_e(m['rule'])}</td></tr>")
    return "".join(rows) or '<tr><td colspan="4">no e-mails yet</td></tr>'


_STATUS_TEXT = {
    # The wording of Device Management > Registration (single-device-registration.md).
    "WAITING_FOR_CONNECTION": "Waiting for connection",
    "PENDING_ACCEPTANCE": "Pending acceptance",
    "ACCEPTED": "Accepted",
}


def _registration_rows(data: dict[str, Any]) -> str:
    rows = []
    for r in data.get("registrations", []):
        action = ""
        if r["status"] == "PENDING_ACCEPTANCE":
            # A plain form: the browser asks for the tenant user's password (Basic auth).
            target = "/sandbox/registrations/" + quote(str(r["id"]), safe="") + "/accept"
            action = (f'<form method="post" action="{_e(target)}">'
                      '<button type="submit">Accept</button></form>')
        rows.append(f"<tr><td>{_e(r['id'])}</td>"
                    f"<td>{_e(_STATUS_TEXT.get(r['status'], r['status']))}</td>"
                    f"<td>{_e(r.get('username', ''))}</td><td>{action}</td></tr>")
    return "".join(rows) or '<tr><td colspan="4">no registrations yet</td></tr>'


def render_html(data: dict[str, Any]) -> str:
    return _TEMPLATE.format(
        devices=_device_rows(data), events=_event_rows(data), count=_e(data["eventCount"]),
        alarms=_alarm_rows(data), alarm_counts=_e(_alarm_counts(data)),
        emails=_email_rows(data),
        registrations=_registration_rows(data),
    )


_TEMPLATE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>dashkanban sandbox</title>
<style>
body {{ font-family: system-ui, sans-serif; margin: 1.5em; color: #222; }}
h1 {{ font-size: 1.4em; }} h2 {{ font-size: 1.1em; margin-top: 1.5em; }}
table {{ border-collapse: collapse; width: 100%; }}
th, td {{ border-bottom: 1px solid #ddd; padding: 4px 8px; text-align: left; font-size: 0.9em; }}
th {{ background: #f3f3f3; }} .note {{ color: #666; font-size: 0.85em; }}
</style></head>
<body>
<h1>dashkanban sandbox</h1>
<p class="note">A local stand-in for Cumulocity IoT, not the platform. Refreshes every second.</p>
<h2>Devices and children</h2>
<table><thead><tr><th>id</th><th>name</th><th>c8y_Serial</th><th>type</th><th>children</th></tr>
</thead><tbody id="devices">{devices}</tbody></table>
<h2>Device registration</h2>
<p class="note">Register a gateway's serial, start <code>dashkanban register</code> on it, and
accept it when it shows "Pending acceptance".</p>
<form method="post" action="/sandbox/registrations"><input name="id" placeholder="device ID"
 required> <button type="submit">Register device</button></form>
<table><thead><tr><th>device ID</th><th>status</th><th>device user</th><th></th></tr>
</thead><tbody id="registrations">{registrations}</tbody></table>
<h2>Recent events (<span id="count">{count}</span> in all)</h2>
<table><thead><tr><th>time</th><th>device</th><th>c8y_Serial</th><th>type</th><th>text</th></tr>
</thead><tbody id="events">{events}</tbody></table>
<h2>Alarms (<span id="alarm-counts">{alarm_counts}</span>)</h2>
<table><thead><tr><th>status</th><th>severity</th><th>count</th><th>device</th><th>type</th>
<th>text</th></tr></thead><tbody id="alarms">{alarms}</tbody></table>
<h2>E-mails Smart Rules would send (recorded, not sent)</h2>
<table><thead><tr><th>time</th><th>to</th><th>subject</th><th>rule</th></tr>
</thead><tbody id="emails">{emails}</tbody></table>
<script>
"use strict";
function row(cells) {{
  const tr = document.createElement("tr");
  for (const c of cells) {{
    const td = document.createElement("td"); td.textContent = c; tr.appendChild(td);
  }}
  return tr;
}}
function fill(id, rows, empty, span = 5) {{
  const body = document.getElementById(id);
  body.replaceChildren();
  if (!rows.length) {{ body.appendChild(row([empty])).firstChild.colSpan = span; return; }}
  for (const r of rows) body.appendChild(row(r));
}}
let version = -1;
async function refresh() {{
  try {{
    const r = await fetch("/sandbox/state.json", {{cache: "no-store"}});
    const s = await r.json();
    if (s.version !== version) {{
      version = s.version;
      fill("devices", s.devices.map(d => [d.id, d.name, d.serial, d.type,
        d.children.map(c => c.name + " (" + c.serial + ")").join(", ") || "–"]), "no devices yet");
      fill("events", s.events.map(e => [e.time, e.sourceName, e.sourceSerial, e.type, e.text]),
        "no events yet");
      fill("emails", (s.emails || []).map(m => [m.time, m.to, m.subject, m.rule]),
        "no e-mails yet", 4);
      document.getElementById("count").textContent = s.eventCount;
      fill("alarms", s.alarms.map(a => [a.status, a.severity, a.count, a.sourceName, a.type,
        a.text]), "no alarms yet", 6);
      const n = s.alarmCounts;
      document.getElementById("alarm-counts").textContent = n.ACTIVE + " active, " +
        n.ACKNOWLEDGED + " acknowledged, " + n.CLEARED + " cleared";
      const texts = {{WAITING_FOR_CONNECTION: "Waiting for connection",
        PENDING_ACCEPTANCE: "Pending acceptance", ACCEPTED: "Accepted"}};
      fill("registrations", (s.registrations || []).map(r => [r.id, texts[r.status] || r.status,
        r.username || "", ""]), "no registrations yet", 4);
      (s.registrations || []).forEach((r, i) => {{
        if (r.status !== "PENDING_ACCEPTANCE") return;
        const form = document.createElement("form");
        form.method = "post";
        form.action = "/sandbox/registrations/" + encodeURIComponent(r.id) + "/accept";
        const button = document.createElement("button");
        button.type = "submit"; button.textContent = "Accept";
        form.appendChild(button);
        document.getElementById("registrations").rows[i].cells[3].appendChild(form);
      }});
      document.body.dataset.version = s.version;
    }}
  }} catch (e) {{ /* the sandbox stopped; try again */ }}
}}
refresh();
setInterval(refresh, 1000);
</script>
</body></html>
"""
