"""Cumulocity Smart Rules that mail the supplier (`dashkanban kanban rules install | uninstall`,
whose commands are in kanban/cli.py).

Per `supplier_email` in MACID.csv, two global `onAlarmSendEmail` rules: one on
`c8y_KanbanReorder` (a card is out: please deliver) and one on `c8y_KanbanOverdue` (the delivery
is late), each enabled only for the reorder buttons of that supplier's bins. The body and the
config follow Cumulocity's own Smart Rules client (Cumulocity-IoT/apama-eplapps-tools,
`testframework/apamax/eplapplications/smartrules.py`: `{ruleTemplateName, name, config, enabled,
enabledSources}` to `POST /service/smartrule/smartrules`, `PUT .../smartrules/{id}` to update,
`DELETE` to remove, `GET ...?withPrivateRules=true` to list; config `alarmType`, `to`, `subject`,
`text` with `#{text}`-style placeholders). docs/kanban.md, "The supplier told", has the rest.

A rule is found by its name, which names the gateway and the address: a second `install` updates
what changed and leaves the rest alone; a rule of this gateway whose address left MACID.csv is
removed. Rules of other gateways and anything not named by dashkanban are never touched.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, Literal

from dashkanban.c8y.rest import CumulocityRest, RestError
from dashkanban.kanban.alarms import ALARM_TYPE, OVERDUE_TYPE
from dashkanban.kanban.bins import Bins

log = logging.getLogger(__name__)

TEMPLATE = "onAlarmSendEmail"
RULES_URL = "/service/smartrule/smartrules"
Kind = Literal["reorder", "overdue"]
_JSON = {"Content-Type": "application/json", "Accept": "application/json"}

# The alarm's text names bin, part, quantity and location (`Reorder 50 x M6 screws for bin A3
# (Aisle 2)`), the overdue alarm's bin, part, supplier and how late: the mail quotes it.
SUBJECTS: dict[Kind, str] = {
    "reorder": "Kanban reorder: #{text}",
    "overdue": "Kanban delivery overdue: #{text}",
}
TEXTS: dict[Kind, str] = {
    "reorder": "#{text}\n\nPlease deliver. Reported by the Kanban button #{source.name}.",
    "overdue": "#{text}\n\nThe bin is still waiting for this delivery. Reported by the Kanban "
               "button #{source.name}.",
}


@dataclass(frozen=True, slots=True)
class RuleSpec:
    """One rule to have: which alarm, to whom, for which buttons (serials)."""

    name: str
    kind: Kind
    to: str
    bins: tuple[str, ...]
    serials: tuple[str, ...]

    def body(self, source_ids: Iterable[str]) -> dict[str, Any]:
        alarm = ALARM_TYPE if self.kind == "reorder" else OVERDUE_TYPE
        return {
            "ruleTemplateName": TEMPLATE,
            "name": self.name,
            "config": {"alarmType": alarm, "to": self.to, "subject": SUBJECTS[self.kind],
                       "text": TEXTS[self.kind]},
            "enabled": True,
            "enabledSources": sorted(source_ids),
        }


def prefix(gateway_serial: str) -> str:
    return f"dashkanban {gateway_serial}: "


def rule_specs(bins: Bins, gateway_serial: str) -> list[RuleSpec]:
    """Two rules per supplier address, in address order (pure)."""
    by_email: dict[str, list[str]] = {}
    serials: dict[str, list[str]] = {}
    for bin_ in sorted(bins, key=lambda b: b.name):
        if bin_.supplier_email:
            by_email.setdefault(bin_.supplier_email, []).append(bin_.name)
            serials.setdefault(bin_.supplier_email, []).extend(b.serial for b in bin_.reorder)
    specs = []
    for email in sorted(by_email):
        for kind in ("reorder", "overdue"):
            specs.append(RuleSpec(f"{prefix(gateway_serial)}{kind} mail to {email}", kind, email,
                                  tuple(by_email[email]), tuple(serials[email])))
    return specs


def _same(existing: dict[str, Any], wanted: dict[str, Any]) -> bool:
    """Equal in everything we set (Cumulocity may add keys of its own to the config)."""
    config = existing.get("config") or {}
    return (
        existing.get("ruleTemplateName") == wanted["ruleTemplateName"]
        and all(config.get(k) == v for k, v in wanted["config"].items())
        and existing.get("enabled") == wanted["enabled"]
        and sorted(str(s) for s in existing.get("enabledSources") or []) == wanted["enabledSources"]
        and "c8y_Context" not in existing
    )


def existing_rules(rest: CumulocityRest) -> list[dict[str, Any]]:
    body = rest.get_json(RULES_URL, "listing Smart Rules", {"withPrivateRules": "true"})
    rules = body.get("rules") if isinstance(body, dict) else None
    if not isinstance(rules, list):
        raise RestError("listing Smart Rules: the answer has no 'rules' list")
    return [r for r in rules if isinstance(r, dict)]


def install(
    rest: CumulocityRest, bins: Bins, gateway_serial: str, dry_run: bool
) -> list[str]:
    """Create, update or remove rules until Cumulocity has exactly `rule_specs`. Returns one
    line per rule: `created: NAME (2 buttons)`, `updated: ...`, `unchanged: ...`, `removed: ...`
    (`would create: ...` with `dry_run`)."""
    specs = rule_specs(bins, gateway_serial)
    ours = prefix(gateway_serial)
    found = {str(r.get("name")): r for r in existing_rules(rest)
             if str(r.get("name", "")).startswith(ours)}
    would = "would " if dry_run else ""
    lines = []
    ids: dict[str, str | None] = {}
    for spec in specs:
        for serial in spec.serials:
            if serial not in ids:
                ids[serial] = rest.managed_object_id(serial)
        known = [i for s in spec.serials if (i := ids[s]) is not None]
        missing = [s for s in spec.serials if ids[s] is None]
        plural = "s" if len(known) != 1 else ""
        note = f"({len(known)} button{plural}, bins {', '.join(spec.bins)})"
        if missing:
            note += f"; not in Cumulocity yet: {', '.join(missing)} (run install again later)"
        current = found.pop(spec.name, None)
        if not known:
            # An empty enabledSources would enable a global rule for every device (the
            # reference client: "empty for a global smart rule that is enabled for all
            # devices"): never install one without its buttons.
            lines.append(f"skipped: {spec.name}: none of its buttons is in Cumulocity yet "
                         f"({', '.join(spec.serials)}); run install again after their first press")
            if current is not None:
                found[spec.name] = current  # stale now: removed below
            continue
        wanted = spec.body(known)
        if current is None:
            if not dry_run:
                _send(rest, "POST", RULES_URL, wanted, f"creating Smart Rule {spec.name!r}")
            lines.append(f"{would}create: {spec.name} {note}")
        elif _same(current, wanted):
            lines.append(f"unchanged: {spec.name} {note}")
        else:
            if not dry_run:
                _send(rest, "PUT", f"{RULES_URL}/{current['id']}", wanted,
                      f"updating Smart Rule {spec.name!r}")
            lines.append(f"{would}update: {spec.name} {note}")
    for name, rule in sorted(found.items()):  # this gateway's, for an address no longer listed
        if not dry_run:
            _delete(rest, rule, name)
        lines.append(f"{would}remove: {name}")
    return lines


def uninstall(rest: CumulocityRest, gateway_serial: str, dry_run: bool) -> list[str]:
    """Remove every rule this gateway's `install` made (found by the name's prefix)."""
    ours = prefix(gateway_serial)
    lines = []
    for rule in existing_rules(rest):
        name = str(rule.get("name", ""))
        if name.startswith(ours):
            if not dry_run:
                _delete(rest, rule, name)
            lines.append(f"{'would ' if dry_run else ''}remove: {name}")
    return lines


def _send(rest: CumulocityRest, method: str, url: str, body: dict[str, Any], what: str) -> None:
    response = rest.request(method, url, what, json=body, headers=_JSON)
    if not response.is_success:
        raise RestError(f"{what}: {response.status_code} {response.text[:200]}")


def _delete(rest: CumulocityRest, rule: dict[str, Any], name: str) -> None:
    what = f"removing Smart Rule {name!r}"
    context = rule.get("c8y_Context")
    base = RULES_URL
    if isinstance(context, dict) and context.get("id"):
        base = f"/service/smartrule/managedObjects/{context['id']}/smartrules"
    response = rest.request("DELETE", f"{base}/{rule.get('id')}", what)
    if not response.is_success and response.status_code != 404:
        raise RestError(f"{what}: {response.status_code} {response.text[:200]}")
