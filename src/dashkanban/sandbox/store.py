"""The sandbox's tenant: managed objects, identities, events, alarms, measurements, operations.

Cumulocity's documents are open bags of fragments (any key may hold any JSON), so the store keeps
them as JSON-like dicts, exactly as the REST API shows them, and hands out deep copies. Typed values
are used where the shape is fixed (`MessageRecord`). One lock guards everything: the broker and the
REST server run on the sandbox's event loop, while tests and the demo read from other threads.
"""

from __future__ import annotations

import copy
import itertools
import json
import logging
import os
import threading
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

Doc = dict[str, Any]
Clock = Callable[[], datetime]

SERIAL = "c8y_Serial"
# Cumulocity's ids are strings of digits; the dynamic mapper's mocks start at 10000
# (docs/protocol.md 6).
FIRST_ID = 10000
MESSAGE_LOG_SIZE = 10_000
SEVERITIES = ("CRITICAL", "MAJOR", "MINOR", "WARNING")


class ConflictError(Exception):
    """An external id is already bound to a different managed object."""


class NotFoundError(Exception):
    """No such document."""


@dataclass(frozen=True, slots=True)
class MessageRecord:
    """One MQTT message the sandbox handled: `in` from a device, `out` to it."""

    time: str
    client_id: str
    direction: str
    topic: str
    payload: str


def utc_now() -> datetime:
    return datetime.now(UTC)


def format_time(moment: datetime) -> str:
    """Cumulocity's normalised form: UTC, milliseconds, `Z` (c8y_api fixture, docs/protocol.md
    3.4)."""
    moment = moment.astimezone(UTC)
    return moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{moment.microsecond // 1000:03d}Z"


def parse_time(text: str, *, zone_required: bool = True) -> datetime | None:
    """An ISO 8601 time; None when it is not one (or has no offset where one is required)."""
    try:
        moment = datetime.fromisoformat(text.strip())
    except ValueError:
        return None
    if moment.tzinfo is None:
        if zone_required:
            return None
        # A date without a zone in a query is taken as UTC (openapi, docs/protocol.md 3.1).
        moment = moment.replace(tzinfo=UTC)
    return moment


class Store:
    """The in-memory tenant. Every method is thread-safe and returns copies."""

    def __init__(self, clock: Clock = utc_now) -> None:
        self._clock = clock
        self.lock = threading.RLock()
        self._ids = itertools.count(FIRST_ID)
        self.managed_objects: dict[str, Doc] = {}
        self.identities: dict[tuple[str, str], str] = {}
        self.events: list[Doc] = []
        self.alarms: list[Doc] = []
        self.measurements: list[Doc] = []
        self.operations: list[Doc] = []
        self.messages: deque[MessageRecord] = deque(maxlen=MESSAGE_LOG_SIZE)
        self.version = 0
        self._listeners: list[Callable[[], None]] = []

    # -- bookkeeping ------------------------------------------------------------------------
    def now(self) -> datetime:
        return self._clock()

    def _new_id(self) -> str:
        return str(next(self._ids))

    def _changed(self) -> None:
        self.version += 1
        for listener in self._listeners:
            listener()

    def on_change(self, listener: Callable[[], None]) -> None:
        self._listeners.append(listener)

    def record_message(self, client_id: str, direction: str, topic: str, payload: bytes) -> None:
        text = payload.decode("utf-8", errors="replace")
        with self.lock:
            self.messages.append(
                MessageRecord(format_time(self.now()), client_id, direction, topic, text)
            )
            self.version += 1

    # -- identity ---------------------------------------------------------------------------
    def find_external(self, id_type: str, external_id: str) -> str | None:
        with self.lock:
            return self.identities.get((id_type, external_id))

    def add_external(self, mo_id: str, id_type: str, external_id: str) -> None:
        with self.lock:
            if mo_id not in self.managed_objects:
                raise NotFoundError(mo_id)
            bound = self.identities.get((id_type, external_id))
            if bound is not None and bound != mo_id:
                raise ConflictError(f"{id_type}={external_id} is bound to {bound}")
            self.identities[(id_type, external_id)] = mo_id
            self._changed()

    def remove_external(self, id_type: str, external_id: str) -> None:
        with self.lock:
            if self.identities.pop((id_type, external_id), None) is None:
                raise NotFoundError(external_id)
            self._changed()

    def external_ids_of(self, mo_id: str) -> list[tuple[str, str]]:
        with self.lock:
            return [key for key, value in self.identities.items() if value == mo_id]

    def serial_of(self, mo_id: str) -> str | None:
        for id_type, external_id in self.external_ids_of(mo_id):
            if id_type == SERIAL:
                return external_id
        return None

    # -- inventory --------------------------------------------------------------------------
    def create_managed_object(self, fragments: Doc, owner: str = "") -> Doc:
        with self.lock:
            now = format_time(self.now())
            doc: Doc = {k: copy.deepcopy(v) for k, v in fragments.items() if k not in _READ_ONLY}
            doc.update(
                id=self._new_id(), creationTime=now, lastUpdated=now, owner=owner,
                _children=[], _parents=[],
            )
            self.managed_objects[doc["id"]] = doc
            self._changed()
            return _public(doc)

    def get_managed_object(self, mo_id: str) -> Doc:
        with self.lock:
            doc = self.managed_objects.get(mo_id)
            if doc is None:
                raise NotFoundError(mo_id)
            return _public(doc)

    def update_managed_object(self, mo_id: str, fragments: Doc) -> Doc:
        """PUT semantics: the given fragments replace theirs; others stay (docs/protocol.md 3.3)."""
        with self.lock:
            doc = self.managed_objects.get(mo_id)
            if doc is None:
                raise NotFoundError(mo_id)
            for key, value in fragments.items():
                if key in _READ_ONLY:
                    continue
                if value is None:
                    doc.pop(key, None)  # Cumulocity removes a fragment set to null
                else:
                    doc[key] = copy.deepcopy(value)
            doc["lastUpdated"] = format_time(self.now())
            self._changed()
            return _public(doc)

    def set_if_absent(self, mo_id: str, key: str, value: Any) -> None:
        with self.lock:
            doc = self.managed_objects[mo_id]
            if key not in doc:
                doc[key] = copy.deepcopy(value)
                doc["lastUpdated"] = format_time(self.now())
                self._changed()

    def link_child(self, parent_id: str, child_id: str) -> None:
        with self.lock:
            parent = self.managed_objects.get(parent_id)
            child = self.managed_objects.get(child_id)
            if parent is None or child is None:
                raise NotFoundError(child_id if parent else parent_id)
            if child_id not in parent["_children"]:
                parent["_children"].append(child_id)
            if parent_id not in child["_parents"]:
                child["_parents"].append(parent_id)
            self._changed()

    def children_ids(self, mo_id: str) -> list[str]:
        with self.lock:
            doc = self.managed_objects.get(mo_id)
            return list(doc["_children"]) if doc else []

    def tree_ids(self, root_id: str) -> list[str]:
        """The root and all its descendants, root first."""
        with self.lock:
            seen: list[str] = []
            stack = [root_id]
            while stack:
                current = stack.pop(0)
                if current in seen or current not in self.managed_objects:
                    continue
                seen.append(current)
                stack.extend(self.managed_objects[current]["_children"])
            return seen

    def root_of(self, mo_id: str) -> str:
        with self.lock:
            current, seen = mo_id, {mo_id}
            while True:
                parents = self.managed_objects.get(current, {}).get("_parents", [])
                if not parents or parents[0] in seen:
                    return current
                current = parents[0]
                seen.add(current)

    def list_managed_objects(self) -> list[Doc]:
        with self.lock:
            return [_public(doc) for doc in self.managed_objects.values()]

    # -- events -----------------------------------------------------------------------------
    def create_event(self, source: str, event_type: str, text: str, time: datetime,
                     fragments: Doc | None = None) -> Doc:
        with self.lock:
            now = format_time(self.now())
            doc: Doc = dict(copy.deepcopy(fragments or {}))
            doc.update(
                id=self._new_id(), source=source, type=event_type, text=text,
                time=format_time(time), creationTime=now, lastUpdated=now,
            )
            self.events.append(doc)
            self._changed()
            return _public(doc)

    # -- alarms -----------------------------------------------------------------------------
    def raise_alarm(self, source: str, alarm_type: str, text: str, time: datetime,
                    severity: str) -> Doc:
        """A repeat of an ACTIVE **or ACKNOWLEDGED** alarm of the same source and type is
        de-duplicated into it: `count` + 1 and the new `time`; "any other changes are ignored"
        (text and severity stay those of the first raise). A CLEARED alarm does not take repeats
        (Cumulocity's alarm de-duplication rule, docs/protocol.md 2.5 correction;
        docs/sandbox.md)."""
        with self.lock:
            now = format_time(self.now())
            alarm = self._open_alarm(source, alarm_type)
            if alarm is not None:
                alarm["count"] += 1
                alarm["time"] = format_time(time)
                alarm["lastUpdated"] = now
                self._changed()
                return _public(alarm)
            doc: Doc = {
                "id": self._new_id(), "source": source, "type": alarm_type, "text": text,
                "time": format_time(time), "firstOccurrenceTime": format_time(time),
                "creationTime": now, "lastUpdated": now, "severity": severity,
                "status": "ACTIVE", "count": 1,
            }
            self.alarms.append(doc)
            self._changed()
            return _public(doc)

    def _open_alarm(self, source: str, alarm_type: str) -> Doc | None:
        """The alarm a template for (source, type) acts on: the ACTIVE one, else the
        ACKNOWLEDGED one ("It will first check the ACTIVE alarms and, if there is no ACTIVE
        alarm, it will check the ACKNOWLEDGED alarms", smartrest-two.md; docs/protocol.md 2.5).
        Caller holds the lock."""
        for status in ("ACTIVE", "ACKNOWLEDGED"):
            for alarm in self.alarms:
                if (alarm["source"], alarm["type"], alarm["status"]) == (
                    source, alarm_type, status
                ):
                    return alarm
        return None

    def update_active_alarm(self, source: str, alarm_type: str, **changes: str) -> bool:
        """305/306: the ACTIVE alarm of the type, else the ACKNOWLEDGED one."""
        with self.lock:
            alarm = self._open_alarm(source, alarm_type)
            if alarm is None:
                return False
            alarm.update(changes)
            alarm["lastUpdated"] = format_time(self.now())
            self._changed()
            return True

    def update_alarm(self, alarm_id: str, changes: dict[str, str]) -> Doc:
        with self.lock:
            for alarm in self.alarms:
                if alarm["id"] == alarm_id:
                    alarm.update(changes)
                    alarm["lastUpdated"] = format_time(self.now())
                    self._changed()
                    return _public(alarm)
            raise NotFoundError(alarm_id)

    def set_operation_fragment(self, op_id: str, key: str, value: Any) -> None:
        with self.lock:
            for op in self.operations:
                if op["id"] == op_id:
                    op[key] = copy.deepcopy(value)
                    self._changed()
                    return
            raise NotFoundError(op_id)

    # -- measurements -----------------------------------------------------------------------
    def create_measurement(self, source: str, mtype: str, time: datetime, fragments: Doc) -> Doc:
        with self.lock:
            doc: Doc = copy.deepcopy(fragments)
            doc.update(id=self._new_id(), source=source, type=mtype, time=format_time(time))
            self.measurements.append(doc)
            self._changed()
            return _public(doc)

    # -- operations -------------------------------------------------------------------------
    def create_operation(self, device_id: str, fragments: Doc) -> Doc:
        with self.lock:
            if device_id not in self.managed_objects:
                raise NotFoundError(device_id)
            now = format_time(self.now())
            doc: Doc = {
                k: copy.deepcopy(v) for k, v in fragments.items()
                if k not in _READ_ONLY and k not in ("status", "deviceId")
            }
            doc.update(
                id=self._new_id(), deviceId=device_id, status="PENDING",
                creationTime=now, lastUpdated=now,
            )
            self.operations.append(doc)
            self._changed()
            return _public(doc)

    def operations_of(self, device_ids: Iterable[str], status: str | None = None) -> list[Doc]:
        wanted = set(device_ids)
        with self.lock:
            return [
                _public(op) for op in self.operations
                if op["deviceId"] in wanted and (status is None or op["status"] == status)
            ]

    def advance_operation(self, device_id: str, fragment: str, from_status: str,
                          to_status: str, **changes: Any) -> Doc | None:
        """The oldest operation of the device in `from_status` holding `fragment`."""
        with self.lock:
            for op in self.operations:
                if op["deviceId"] == device_id and op["status"] == from_status and fragment in op:
                    op["status"] = to_status
                    op.update(changes)
                    op["lastUpdated"] = format_time(self.now())
                    self._changed()
                    return _public(op)
            return None

    def operation_by_id(self, op_id: str) -> Doc | None:
        with self.lock:
            for op in self.operations:
                if op["id"] == op_id:
                    return _public(op)
            return None

    def set_operation_status(self, op_id: str, to_status: str, **changes: Any) -> Doc:
        """504/505/506: the operation with this id, whatever its fragment."""
        with self.lock:
            for op in self.operations:
                if op["id"] == op_id:
                    op["status"] = to_status
                    op.update(changes)
                    op["lastUpdated"] = format_time(self.now())
                    self._changed()
                    return _public(op)
            raise NotFoundError(op_id)

    # -- persistence ------------------------------------------------------------------------
    def to_json(self) -> str:
        with self.lock:
            data = {
                "format": "dashkanban-sandbox/1",
                "next_id": self._peek_next_id(),
                "managed_objects": list(self.managed_objects.values()),
                "identities": [
                    {"type": t, "externalId": x, "id": i} for (t, x), i in self.identities.items()
                ],
                "events": self.events,
                "alarms": self.alarms,
                "measurements": self.measurements,
                "operations": self.operations,
                "messages": [asdict(m) for m in self.messages],
            }
            return json.dumps(data, ensure_ascii=False)

    def _peek_next_id(self) -> int:
        value = next(self._ids)
        self._ids = itertools.count(value)
        return value

    def load_json(self, text: str) -> None:
        data = json.loads(text)
        if not isinstance(data, dict) or data.get("format") != "dashkanban-sandbox/1":
            raise ValueError("not a dashkanban sandbox data file")
        with self.lock:
            self._ids = itertools.count(int(data["next_id"]))
            self.managed_objects = {doc["id"]: doc for doc in data["managed_objects"]}
            self.identities = {
                (row["type"], row["externalId"]): row["id"] for row in data["identities"]
            }
            self.events = list(data["events"])
            self.alarms = list(data["alarms"])
            self.measurements = list(data["measurements"])
            self.operations = list(data["operations"])
            self.messages.clear()
            self.messages.extend(MessageRecord(**m) for m in data.get("messages", []))
            self.version += 1

    def save(self, path: Path) -> None:
        """Atomically, readable by the owner only (it may name devices of a real site)."""
        text = self.to_json()
        tmp = path.with_name(path.name + ".tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(text)
        os.replace(tmp, path)


_READ_ONLY = frozenset(
    {"id", "self", "creationTime", "lastUpdated", "owner", "_children", "_parents",
     "childDevices", "deviceParents", "childAssets", "assetParents", "childAdditions",
     "additionParents"}
)


def _public(doc: Doc) -> Doc:
    return copy.deepcopy(doc)
