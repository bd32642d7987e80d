"""Cumulocity's SmartREST 2.0 static templates and custom template collections, as the sandbox
processes them (pure-ish).

A store and one upstream message in, the downstream lines (`s/ds`, `s/dc/<X-ID>`, `s/dt`, `s/e`)
for the publishing client out; the broker does all I/O. Behaviour and texts follow
docs/protocol.md, section 2 and the list in 6.1, and for collections Cumulocity's `smartrest-two.md`
(templates.py); each rule names its source, and docs/sandbox.md lists them.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from dashkanban.c8y.smartrest import SmartRestLine, decode, encode_field, encode_line
from dashkanban.sandbox.store import SERIAL, SEVERITIES, Doc, Store, parse_time
from dashkanban.sandbox.templates import (
    ALREADY_EXISTS as COLLECTION_EXISTS,
)
from dashkanban.sandbox.templates import (
    COLLECTION_FRAGMENT,
    COLLECTION_ID_TYPE,
    COLLECTION_TYPE,
    Collection,
    parse_collection,
    response_lines,
)

log = logging.getLogger(__name__)

DOWN_OPERATIONS = "s/ds"
DOWN_ERRORS = "s/e"
DOWN_TEMPLATES = "s/dt"
DOWN_CUSTOM = "s/dc/"  # + X-ID

# `s/us` and `s/us/<child>`, and the transient/quiescent/CEP forms (docs/protocol.md 2.1). The
# sandbox stores t/q/c data like s: it has no real-time notifications to skip.
_UPSTREAM = re.compile(r"^([stqc])/us(?:/(.+))?$")
# `s/ut/<X-ID>` creates a template collection or asks whether it exists (docs/protocol.md 2.1).
_TEMPLATES_UP = re.compile(r"^s/ut/([^/]+)$")

# Error texts (docs/protocol.md 2.7; built-in response messages).
NO_TEMPLATE = "No static template for this message id"
ALREADY_EXISTS = "Device already existing"
WRONG_ARGUMENTS = "Wrong number of arguments"
FINAL_STATUSES = ("SUCCESSFUL", "FAILED")


@dataclass(frozen=True, slots=True)
class Downlink:
    """One line for the publishing client: on `s/ds` (operations, replies) or `s/e` (errors)."""

    topic: str
    line: str


class TemplateError(Exception):
    """A line the platform answers with an error on `s/e`."""

    def __init__(self, code: int, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


@dataclass(slots=True)
class _Context:
    store: Store
    owner: str
    root_xid: str
    child_xid: str | None
    downlinks: list[Downlink]

    def reply(self, line: str) -> None:
        self.downlinks.append(Downlink(DOWN_OPERATIONS, line))

    def root(self) -> str:
        """The device of the client id, created on its first data message (docs/protocol.md
        1.10)."""
        mo_id = self.store.find_external(SERIAL, self.root_xid)
        if mo_id is None:
            mo_id = _create_device(
                self.store, self.owner, self.root_xid, None, None, "c8y_MQTTDevice"
            )
            log.info("created device %s for client id %s", mo_id, self.root_xid)
        return mo_id

    def target(self) -> str:
        """The device the topic names: the client's device, or a child on `s/us/<child>`.
        An unknown child becomes a first-level child of the client's device (docs/protocol.md
        1.10)."""
        root = self.root()
        if self.child_xid is None:
            return root
        mo_id = self.store.find_external(SERIAL, self.child_xid)
        if mo_id is None:
            mo_id = _create_device(
                self.store, self.owner, self.child_xid, None, None, "c8y_MQTTChildDevice"
            )
            self.store.link_child(root, mo_id)
            log.info("created child device %s (%s) under %s", mo_id, self.child_xid, root)
        return mo_id


def _create_device(store: Store, owner: str, xid: str, name: str | None, dtype: str | None,
                   default_type: str, is_device: bool = True) -> str:
    # Defaults of template 100/101: name "MQTT Device <serial>" (static.md, docs/protocol.md 2.3).
    fragments: Doc = {"name": name or f"MQTT Device {xid}", "type": dtype or default_type}
    if is_device:
        fragments["c8y_IsDevice"] = {}
    doc = store.create_managed_object(fragments, owner=owner)
    store.add_external(doc["id"], SERIAL, xid)
    return str(doc["id"])


def parse_topic(topic: str) -> tuple[str, str | None] | None:
    """("s", child or None) for an upstream static-template topic, else None."""
    match = _UPSTREAM.match(topic)
    if match is None:
        return None
    return match.group(1), match.group(2)


class SmartRestProcessor:
    """Applies static-template lines to the store, as the platform does for one client id."""

    def __init__(self, store: Store, owner: str = "") -> None:
        self.store = store
        self.owner = owner

    def handle(self, root_xid: str, topic: str, payload: bytes,
               owner: str | None = None) -> list[Downlink]:
        """`owner`: the user objects created now belong to (a certificate device's own user,
        `device_<CN>`); the processor's owner by default."""
        collection = _TEMPLATES_UP.match(topic)
        if collection is not None:
            return self.template_collection(root_xid, collection.group(1), payload)
        parsed = parse_topic(topic)
        if parsed is None:
            log.warning("%s published on %s, which the sandbox does not serve", root_xid, topic)
            return []
        _, child = parsed
        ctx = _Context(self.store, owner or self.owner, root_xid, child, [])
        for line in decode(payload):
            try:
                self._line(ctx, line)
            except TemplateError as exc:
                error = f"{exc.code},{line.template},{exc.message}"
                ctx.downlinks.append(Downlink(DOWN_ERRORS, error))
        return ctx.downlinks

    def _line(self, ctx: _Context, line: SmartRestLine) -> None:
        handler = _TEMPLATES.get(line.template)
        if handler is None:
            raise TemplateError(40, NO_TEMPLATE)
        low, high, function = handler
        fields = list(line.fields)
        while fields and fields[-1] == "":  # `100,,` equals `100` (docs/protocol.md 2.2)
            fields.pop()
        if len(fields) < low or (high is not None and len(fields) > high):
            raise TemplateError(45, WRONG_ARGUMENTS)
        function(self, ctx, fields + [""] * ((high or len(fields)) - len(fields)))

    # -- custom template collections ---------------------------------------------------------
    def template_collection(self, root_xid: str, xid: str, payload: bytes) -> list[Downlink]:
        """`s/ut/<X-ID>`: empty asks (`20,<X-ID>,<id>` / `41,<X-ID>` on `s/dt`), else creates.

        A collection cannot be changed over MQTT once created (docs/protocol.md 2.6); a bad line
        creates nothing and each bad line gets its `41` on `s/e` (built-in-messages.md).
        """
        lines = decode(payload)
        with self.store.lock:
            existing = self.store.find_external(COLLECTION_ID_TYPE, xid)
            if not lines:
                if existing is None:
                    return [Downlink(DOWN_TEMPLATES, encode_line(41, xid))]
                return [Downlink(DOWN_TEMPLATES, encode_line(20, xid, existing))]
            if existing is not None:
                return [Downlink(DOWN_ERRORS, f"41,{encode_field(xid)},{COLLECTION_EXISTS}")]
            collection, errors = parse_collection(xid, lines)
            if collection is None:
                log.warning("%s: template collection %s not created (%d bad lines)",
                            root_xid, xid, len(errors))
                return [Downlink(DOWN_ERRORS, error.line) for error in errors]
            doc = self.store.create_managed_object(
                {"name": xid, "type": COLLECTION_TYPE, "__externalId": xid,
                 COLLECTION_FRAGMENT: collection.fragment()},
                owner=self.owner,
            )
            self.store.add_external(doc["id"], COLLECTION_ID_TYPE, xid)
        log.info("%s created template collection %s (%s): %d request, %d response templates",
                 root_xid, xid, doc["id"], len(collection.requests), len(collection.responses))
        # [UNVERIFIED] whether creation itself answers on s/dt; clients ask with an empty publish.
        return []

    def collections(self) -> list[Collection]:
        """Every template collection of the tenant, oldest first."""
        with self.store.lock:
            found = []
            for (id_type, xid), mo_id in self.store.identities.items():
                doc = self.store.managed_objects.get(mo_id)
                if id_type == COLLECTION_ID_TYPE and doc is not None:
                    found.append((int(mo_id), xid, doc.get(COLLECTION_FRAGMENT) or {}))
            return [Collection.from_fragment(xid, fragment) for _, xid, fragment in sorted(found)]

    # -- operations -------------------------------------------------------------------------
    def operation_downlinks(self, op: Doc) -> list[Downlink]:
        """What an operation becomes downstream: its static line on `s/ds` if one fits, and the
        line of every response template whose condition it meets, on `s/dc/<X-ID>`.

        The two are independent: response templates "will be used for every operation"
        (smartrest-two.md; docs/sandbox.md, "Custom template collections"), static templates only
        for their fragments (docs/protocol.md 2.6). The broker delivers each line only to a client
        subscribed to its topic.
        """
        downlinks = []
        line = self.operation_line(op)
        if line is not None:
            downlinks.append(Downlink(DOWN_OPERATIONS, line))
        xid = self.store.serial_of(str(op["deviceId"])) or ""
        for collection in self.collections():
            downlinks.extend(Downlink(DOWN_CUSTOM + collection.xid, custom)
                             for custom in response_lines(collection, op, xid))
        return downlinks

    def pending_downlinks(self, root_id: str) -> list[Downlink]:
        """`operation_downlinks` of every PENDING operation of a device tree, oldest first."""
        ops = self.store.operations_of(self.store.tree_ids(root_id), status="PENDING")
        return [downlink for op in ops for downlink in self.operation_downlinks(op)]

    def operation_line(self, op: Doc) -> str | None:
        """The `s/ds` line of an operation (docs/protocol.md 2.6), or None if no static template
        fits."""
        xid = self.store.serial_of(str(op["deviceId"])) or ""
        if "c8y_Restart" in op:
            return encode_line(510, xid)
        if isinstance(op.get("c8y_Command"), dict):
            return encode_line(511, xid, op["c8y_Command"].get("text", ""))
        if isinstance(op.get("c8y_Configuration"), dict):
            return encode_line(513, xid, op["c8y_Configuration"].get("config", ""))
        if isinstance(op.get("c8y_Firmware"), dict):
            fw = op["c8y_Firmware"]
            return encode_line(
                515, xid, fw.get("name", ""), fw.get("version", ""), fw.get("url", "")
            )
        return None

    # -- templates --------------------------------------------------------------------------
    def _t100(self, ctx: _Context, f: list[str]) -> None:
        # Create the device if it does not exist, else `41,100,Device already existing`.
        xid = ctx.child_xid or ctx.root_xid
        if ctx.store.find_external(SERIAL, xid) is not None:
            raise TemplateError(41, ALREADY_EXISTS)
        if ctx.child_xid is None:
            mo_id = _create_device(ctx.store, ctx.owner, xid, f[0], f[1], "c8y_MQTTDevice")
            log.info("created device %s for client id %s", mo_id, xid)
        else:
            root = ctx.root()
            mo_id = _create_device(ctx.store, ctx.owner, xid, f[0], f[1], "c8y_MQTTChildDevice")
            ctx.store.link_child(root, mo_id)

    def _t101(self, ctx: _Context, f: list[str]) -> None:
        # The child's external id is `uniqueChildId` verbatim (docs/protocol.md 2.3).
        parent = ctx.target()
        child_xid, name, ctype, marker = f
        if not child_xid:
            raise TemplateError(45, WRONG_ARGUMENTS)
        existing = ctx.store.find_external(SERIAL, child_xid)
        if existing is not None:
            ctx.store.link_child(parent, existing)
            return
        is_device = marker.strip().lower() != "false"
        mo_id = _create_device(
            ctx.store, ctx.owner, child_xid, name, ctype, "c8y_MQTTChildDevice", is_device
        )
        ctx.store.link_child(parent, mo_id)
        log.info("created child device %s (%s) under %s", mo_id, child_xid, parent)

    def _t105(self, ctx: _Context, f: list[str]) -> None:
        target = ctx.target()
        names = [self.store.serial_of(c) or c for c in ctx.store.children_ids(target)]
        ctx.reply(encode_line(106, *names))

    def _t110(self, ctx: _Context, f: list[str]) -> None:
        keys = ("serialNumber", "model", "revision")
        hardware = {k: v for k, v in zip(keys, f, strict=True) if v}
        ctx.store.update_managed_object(ctx.target(), {"c8y_Hardware": hardware})

    def _t114(self, ctx: _Context, f: list[str]) -> None:
        # Replaces the whole list (static.md).
        ctx.store.update_managed_object(ctx.target(), {"c8y_SupportedOperations": f})

    def _t117(self, ctx: _Context, f: list[str]) -> None:
        # "This will only set the value if it does not exist. Values entered, for example,
        # through the UI, are not overwritten" (mqtt-static-templates.md, 117). The interval
        # lies in -32768..32767, "values out of range will be shrunk to the range borders", and
        # a device with `responseInterval` <= 0 "is considered in maintenance mode"
        # (device-availability.md).
        if not f[0]:
            return
        minutes = max(-32768, min(32767, _integer(f[0])))
        target = ctx.target()
        ctx.store.set_if_absent(target, "c8y_RequiredAvailability", {"responseInterval": minutes})
        _availability(ctx.store, target, heartbeat=False)

    def _t125(self, ctx: _Context, f: list[str]) -> None:
        # The heartbeat (static.md): no data, it only says the device is alive. The platform
        # computes availability itself; the sandbox records the fragment it would show.
        _availability(ctx.store, ctx.target(), heartbeat=True)

    def _t123(self, ctx: _Context, f: list[str]) -> None:
        ctx.reply(encode_line(124, ctx.target()))

    def _t200(self, ctx: _Context, f: list[str]) -> None:
        fragment, series, value, unit, time = f
        if not fragment or not series:
            raise TemplateError(45, WRONG_ARGUMENTS)
        number = _number(value)
        measurement: dict[str, Any] = {"value": number}
        if unit:
            measurement["unit"] = unit
        # [UNVERIFIED] the stored type; the fragment name is what the UI shows.
        ctx.store.create_measurement(
            ctx.target(), fragment, _time(ctx, time), {fragment: {series: measurement}}
        )

    def _alarm(self, ctx: _Context, f: list[str], severity: str) -> None:
        alarm_type, text, time = f
        if not alarm_type:
            raise TemplateError(45, WRONG_ARGUMENTS)
        ctx.store.raise_alarm(
            ctx.target(), alarm_type, text or f"Alarm of type {alarm_type} raised",
            _time(ctx, time), severity,
        )

    def _t301(self, ctx: _Context, f: list[str]) -> None:
        self._alarm(ctx, f, "CRITICAL")

    def _t302(self, ctx: _Context, f: list[str]) -> None:
        self._alarm(ctx, f, "MAJOR")

    def _t303(self, ctx: _Context, f: list[str]) -> None:
        self._alarm(ctx, f, "MINOR")

    def _t304(self, ctx: _Context, f: list[str]) -> None:
        self._alarm(ctx, f, "WARNING")

    def _t305(self, ctx: _Context, f: list[str]) -> None:
        alarm_type, severity = f
        if severity not in SEVERITIES:
            raise TemplateError(45, f"Value is not a SEVERITY: {severity}")
        ctx.store.update_active_alarm(ctx.target(), alarm_type, severity=severity)

    def _t306(self, ctx: _Context, f: list[str]) -> None:
        ctx.store.update_active_alarm(ctx.target(), f[0], status="CLEARED")

    def _t400(self, ctx: _Context, f: list[str]) -> None:
        # type and text are mandatory (static.md); the exact error is [UNVERIFIED], 45 per 6.1.
        event_type, text, time = f
        if not event_type or not text:
            raise TemplateError(45, WRONG_ARGUMENTS)
        ctx.store.create_event(ctx.target(), event_type, text, _time(ctx, time))

    def _t401(self, ctx: _Context, f: list[str]) -> None:
        keys = ("lat", "lng", "alt", "accuracy")
        position = {k: _number(v) for k, v in zip(keys, f[:4], strict=True) if v}
        # [UNVERIFIED] type and text of the location event.
        ctx.store.create_event(
            ctx.target(), "c8y_LocationUpdate", "Location updated", _time(ctx, f[4]),
            {"c8y_Position": position},
        )

    def _t500(self, ctx: _Context, f: list[str]) -> None:
        # Static lines on s/ds and custom ones on s/dc/<X-ID> (the broker filters by subscription).
        ctx.downlinks.extend(self.pending_downlinks(ctx.root()))

    def _t501(self, ctx: _Context, f: list[str]) -> None:
        ctx.store.advance_operation(ctx.target(), f[0], "PENDING", "EXECUTING")

    def _t502(self, ctx: _Context, f: list[str]) -> None:
        changes = {"failureReason": f[1]} if f[1] else {}
        ctx.store.advance_operation(ctx.target(), f[0], "EXECUTING", "FAILED", **changes)

    def _t503(self, ctx: _Context, f: list[str]) -> None:
        op = ctx.store.advance_operation(ctx.target(), f[0], "EXECUTING", "SUCCESSFUL")
        if op is not None and f[0] == "c8y_Command" and len(f) > 1:
            command = dict(op.get("c8y_Command") or {})
            command["result"] = f[1]
            ctx.store.set_operation_fragment(op["id"], "c8y_Command", command)


    # 504/505/506: "Set the operation with the given ID to EXECUTING/FAILED/SUCCESSFUL. The
    # operation must exist and must have the requesting device as the source"
    # (mqtt-static-templates.md). The requesting device is the topic's: `s/us/<child>` for a
    # child's operation. [unverified] the error Cumulocity answers otherwise, and whether it
    # refuses to move an operation out of SUCCESSFUL/FAILED; the sandbox answers 45 on `s/e`.
    def _by_id(self, ctx: _Context, op_id: str, to_status: str, **changes: Any) -> Doc:
        op = ctx.store.operation_by_id(op_id.strip())
        if op is None or op["deviceId"] != ctx.target():
            raise TemplateError(45, f"Operation {op_id} not found for this device")
        if op["status"] in FINAL_STATUSES:
            raise TemplateError(45, f"Operation {op_id} is already {op['status']}")
        return ctx.store.set_operation_status(op["id"], to_status, **changes)

    def _t504(self, ctx: _Context, f: list[str]) -> None:
        self._by_id(ctx, f[0], "EXECUTING")

    def _t505(self, ctx: _Context, f: list[str]) -> None:
        self._by_id(ctx, f[0], "FAILED", **({"failureReason": f[1]} if f[1] else {}))

    def _t506(self, ctx: _Context, f: list[str]) -> None:
        op = self._by_id(ctx, f[0], "SUCCESSFUL")
        if "c8y_Command" in op and len(f) > 1:
            # "c8y_Command: result will be added to operation" (Updating operations).
            command = dict(op.get("c8y_Command") or {})
            command["result"] = f[1]
            ctx.store.set_operation_fragment(op["id"], "c8y_Command", command)

def _availability(store: Store, mo_id: str, *, heartbeat: bool) -> None:
    """`c8y_Availability` as the platform would show it: MAINTENANCE while the required
    interval is <= 0 (device-availability.md), else AVAILABLE on a heartbeat. [unverified] the
    exact moment the platform switches the status; it computes availability on its own."""
    doc = store.get_managed_object(mo_id)
    required = doc.get("c8y_RequiredAvailability")
    interval = required.get("responseInterval") if isinstance(required, dict) else None
    maintenance = isinstance(interval, int) and interval <= 0
    if not maintenance and not heartbeat:
        return
    status = "MAINTENANCE" if maintenance else "AVAILABLE"
    store.update_managed_object(mo_id, {"c8y_Availability": {"status": status,
                                                             "lastMessage": store.now()}})


def _integer(value: str) -> int:
    try:
        return int(value)
    except ValueError:
        raise TemplateError(45, f"Value is not a INTEGER: {value}") from None


def _number(value: str) -> float | int:
    try:
        number = float(value)
    except ValueError:
        raise TemplateError(45, f"Value is not a NUMBER: {value}") from None
    return int(number) if number.is_integer() and "." not in value else number


def _time(ctx: _Context, value: str) -> datetime:
    """An omitted time means server time (docs/protocol.md 2.2); a time needs an offset."""
    if not value:
        return ctx.store.now()
    moment = parse_time(value)
    if moment is None:
        raise TemplateError(45, f"Value is not a DATE: {value}")
    return moment


_Handler = Callable[[SmartRestProcessor, _Context, list[str]], None]

# template id -> (fewest fields, most fields or None for a list, handler)
_TEMPLATES: dict[str, tuple[int, int | None, _Handler]] = {
    "100": (0, 2, SmartRestProcessor._t100),
    "101": (1, 4, SmartRestProcessor._t101),
    "105": (0, 0, SmartRestProcessor._t105),
    "110": (0, 3, SmartRestProcessor._t110),
    "114": (0, None, SmartRestProcessor._t114),
    "117": (0, 1, SmartRestProcessor._t117),
    "123": (0, 0, SmartRestProcessor._t123),
    "125": (0, 0, SmartRestProcessor._t125),
    "200": (3, 5, SmartRestProcessor._t200),
    "301": (1, 3, SmartRestProcessor._t301),
    "302": (1, 3, SmartRestProcessor._t302),
    "303": (1, 3, SmartRestProcessor._t303),
    "304": (1, 3, SmartRestProcessor._t304),
    "305": (2, 2, SmartRestProcessor._t305),
    "306": (1, 1, SmartRestProcessor._t306),
    "400": (2, 3, SmartRestProcessor._t400),
    "401": (0, 5, SmartRestProcessor._t401),
    "500": (0, 0, SmartRestProcessor._t500),
    "501": (1, 1, SmartRestProcessor._t501),
    "502": (1, 2, SmartRestProcessor._t502),
    "503": (1, None, SmartRestProcessor._t503),
    "504": (1, 1, SmartRestProcessor._t504),
    "505": (1, 2, SmartRestProcessor._t505),
    "506": (1, None, SmartRestProcessor._t506),
}
