"""Smart Rules in the sandbox: stored over REST, and the e-mail an `onAlarmSendEmail` rule would
send recorded (never sent) when a matching alarm is raised.

What it follows (docs/sandbox.md, "Smart Rules", has the sources):

- the REST shape of Cumulocity's Smart Rules microservice as its test client uses it
  (Cumulocity-IoT/apama-eplapps-tools, `testframework/apamax/eplapplications/smartrules.py`):
  `POST /service/smartrule/smartrules` (global) or
  `/service/smartrule/managedObjects/{id}/smartrules` (local, `c8y_Context`), body
  `{ruleTemplateName, name, config, enabled, enabledSources | disabledSources}`; the answer
  carries `id` and `cepModuleId`; `PUT .../smartrules/{id}` updates, `DELETE` removes;
  `GET /service/smartrule/smartrules?withPrivateRules=true` lists them as `{"rules": [...]}`;
- the `onAlarmSendEmail` config: `alarmType` (types joined by commas), `to`, `cc`, `bcc`,
  `replyTo`, `subject`, `text`, with placeholders such as `#{text}`, `#{severity}` and
  `#{source.name}` (the same file's `build_onAlarmSendEmail` defaults).

A rule fires when an alarm is *created*: a de-duplicated raise only counts up the existing alarm
(docs/protocol.md 2.5), which is not a new alarm to mail about.
"""

from __future__ import annotations

import itertools
import re
import threading
from typing import Any

from dashkanban.sandbox.store import Doc, Store, format_time

SEND_EMAIL = "onAlarmSendEmail"
MAX_EMAILS = 1000  # the record is for looking at, not an archive
_PLACEHOLDER = re.compile(r"#\{([A-Za-z0-9_.]+)\}")
_FIRST_RULE_ID = 90001


class RuleError(ValueError):
    """A rule body the sandbox refuses (422)."""


class SmartRules:
    """The tenant's Smart Rules and the e-mails they would have sent."""

    def __init__(self, store: Store) -> None:
        self.store = store
        self._lock = threading.RLock()
        self._ids = itertools.count(_FIRST_RULE_ID)
        self.rules: dict[str, Doc] = {}
        self.emails: list[Doc] = []
        self._seen = len(store.alarms)
        store.on_change(self._scan)

    # -- REST -------------------------------------------------------------------------------
    def create(self, body: Any, context: str | None) -> Doc:
        rule = _checked(body)
        with self._lock:
            rule_id = str(next(self._ids))
            rule.update({"id": rule_id, "cepModuleId": f"smartRule{rule_id}",
                         "type": "c8y_SmartRule"})
            if context is not None:
                rule["c8y_Context"] = {"id": context, "context": "device"}
            rule.setdefault("enabledSources", [])
            rule.setdefault("disabledSources", [])
            self.rules[rule_id] = rule
            return dict(rule)

    def update(self, rule_id: str, body: Any) -> Doc | None:
        if not isinstance(body, dict):
            raise RuleError("the body must be a JSON object")
        with self._lock:
            rule = self.rules.get(rule_id)
            if rule is None:
                return None
            for key in ("name", "config", "enabled", "enabledSources", "disabledSources"):
                if key in body:
                    rule[key] = body[key]
            _checked(rule)
            return dict(rule)

    def delete(self, rule_id: str) -> bool:
        with self._lock:
            return self.rules.pop(rule_id, None) is not None

    def get(self, rule_id: str) -> Doc | None:
        with self._lock:
            rule = self.rules.get(rule_id)
            return dict(rule) if rule else None

    def find(self, context: str | None = None, private: bool = True) -> list[Doc]:
        with self._lock:
            rules = [dict(r) for r in self.rules.values()]
        if context is not None:
            return [r for r in rules if r.get("c8y_Context", {}).get("id") == context]
        return rules if private else [r for r in rules if "c8y_Context" not in r]

    def recorded(self) -> list[Doc]:
        with self._lock:
            return [dict(e) for e in self.emails]

    # -- firing -----------------------------------------------------------------------------
    def _scan(self) -> None:
        """Called by the store after every change, inside its lock: new alarms fire rules."""
        alarms = self.store.alarms
        if len(alarms) < self._seen:  # the store was loaded from a file
            self._seen = len(alarms)
        fresh = alarms[self._seen:]
        self._seen = len(alarms)
        for alarm in fresh:
            self._fire(alarm)

    def _fire(self, alarm: Doc) -> None:
        with self._lock:
            rules = [r for r in self.rules.values() if _matches(r, alarm)]
            for rule in rules:
                config = rule.get("config") or {}
                values = self._values(alarm)
                email = {
                    "time": format_time(self.store.now()),
                    "rule": rule["name"],
                    "ruleId": rule["id"],
                    "alarmId": alarm["id"],
                    "to": str(config.get("to") or ""),
                    "cc": str(config.get("cc") or ""),
                    "bcc": str(config.get("bcc") or ""),
                    "replyTo": str(config.get("replyTo") or ""),
                    "subject": fill(str(config.get("subject") or ""), values),
                    "text": fill(str(config.get("text") or ""), values),
                }
                self.emails.append(email)
            del self.emails[:-MAX_EMAILS]

    def _values(self, alarm: Doc) -> Doc:
        source = self.store.managed_objects.get(alarm["source"], {})
        return {**alarm, "source": {"id": alarm["source"], "name": source.get("name", "")}}


def fill(template: str, values: Doc) -> str:
    """`#{text}`, `#{source.name}`: a placeholder naming nothing stays as written."""

    def value(match: re.Match[str]) -> str:
        current: Any = values
        for part in match.group(1).split("."):
            if not isinstance(current, dict) or part not in current:
                return match.group(0)
            current = current[part]
        return str(current)

    return _PLACEHOLDER.sub(value, template)


def _matches(rule: Doc, alarm: Doc) -> bool:
    if rule.get("ruleTemplateName") != SEND_EMAIL or not rule.get("enabled", True):
        return False
    config = rule.get("config") or {}
    types = {t.strip() for t in str(config.get("alarmType", "")).split(",") if t.strip()}
    if alarm["type"] not in types:
        return False
    source = alarm["source"]
    enabled = [str(s) for s in rule.get("enabledSources") or []]
    context = rule.get("c8y_Context", {}).get("id")
    if context is not None and source != context and source not in enabled:
        return False
    if enabled:
        return source in enabled
    return source not in [str(s) for s in rule.get("disabledSources") or []]


def _checked(body: Any) -> Doc:
    if not isinstance(body, dict):
        raise RuleError("the body must be a JSON object")
    missing = [k for k in ("ruleTemplateName", "name") if not isinstance(body.get(k), str)
               or not body.get(k)]
    if missing:
        raise RuleError("Following mandatory fields should be included: " + ",".join(missing))
    if "config" in body and not isinstance(body["config"], dict):
        raise RuleError("config must be a JSON object")
    for key in ("enabledSources", "disabledSources"):
        if key in body and not isinstance(body[key], list):
            raise RuleError(f"{key} must be a list of managed object ids")
    rule = {k: body[k] for k in ("ruleTemplateName", "name", "config", "enabled",
                                 "enabledSources", "disabledSources", "c8y_Context") if k in body}
    rule.setdefault("config", {})
    rule.setdefault("enabled", True)
    return rule
