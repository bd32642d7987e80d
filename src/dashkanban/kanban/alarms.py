"""The reorder signal as SmartREST lines (pure): raise, repeat, clear, and the refill operation.

A Cumulocity alarm is unique per (device, type) while ACTIVE: raising it again only increments its
count (docs/protocol.md 2.5, `handling-of-ids.md`). That makes an active alarm of type
`c8y_KanbanReorder` on a button's child device a natural Kanban card: it is "out" until the bin is
refilled and the alarm is cleared with `306`.

Nothing here sends anything. Each function returns `DevicePublish` in the order they must be
published: `serial=None` means the gateway's own topic `s/us`, a serial the child's `s/us/<serial>`.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Final, Literal

from dashkanban.c8y.smartrest import SmartRestLine, encode_line
from dashkanban.config import KanbanSettings
from dashkanban.detect.presses import Press
from dashkanban.kanban.bins import Bin, Bins

log = logging.getLogger(__name__)

ALARM_TYPE = "c8y_KanbanReorder"
OVERDUE_TYPE = "c8y_KanbanOverdue"  # a reorder open longer than the bin's lead time
OPERATION = "c8y_KanbanRefilled"
# Static alarm templates by severity (docs/protocol.md 2.5, static.md).
SEVERITY_TEMPLATES = {"CRITICAL": 301, "MAJOR": 302, "MINOR": 303, "WARNING": 304}
CLEAR_TEMPLATE = 306

# The operation arrives through a custom SmartREST 2.0 template collection: static templates exist
# only for Cumulocity's own fragments (510 c8y_Restart, 511 c8y_Command, ...), so a fragment of
# our own needs a response template. docs/kanban.md explains the choice and its sources.
# A collection "can no longer be modified through MQTT" once created (docs/protocol.md 2.6), so the
# X-ID carries a version: bump it whenever template_lines() changes (v1 was `dashkanban`, whose
# template gave no operation id).
TEMPLATE_XID = "dashkanban-v2"
TEMPLATE_TOPIC = f"s/ut/{TEMPLATE_XID}"  # publish template_lines() here once
OPERATIONS_TOPIC = f"s/dc/{TEMPLATE_XID}"  # subscribe: `9101,<serial>,<op id>,<bin>` arrives here
REFILLED_TEMPLATE_ID = "9101"
# The device shell's c8y_Command `kanban refilled A3`, with its operation id: `9102,<serial>,<op
# id>,<text>`. Response templates apply to every operation (docs/protocol.md 2.6, from
# smartrest-two.md), so the command also arrives as static `511` on s/ds, which has no id and is
# left alone.
COMMAND_TEMPLATE_ID = "9102"
_COMMAND = re.compile(r"\s*kanban\s+refilled\s+(\S.*?)\s*", re.IGNORECASE)

# What a press means for its bin: it orders (reorder), orders again while the bin's reorder is
# open (repeat), says the bin is full again (refill), or has no bin (press: an event only). The
# history stores it per press (kanban/history.py); it is Kanban's word, so it lives here, not in
# values.py.
SignalKind = Literal["reorder", "repeat", "refill", "press"]
KIND_REORDER: Final = "reorder"
KIND_REPEAT: Final = "repeat"
KIND_REFILL: Final = "refill"
KIND_NONE: Final = "press"  # a button without a bin: an event only


@dataclass(frozen=True, slots=True)
class DevicePublish:
    """One PUBLISH: SmartREST lines for one device, the gateway (`serial=None`) or a child button,
    on its own topic (`s/us` or `s/us/<serial>`)."""

    serial: str | None
    lines: tuple[str, ...]

    @property
    def topic(self) -> str:
        return "s/us" if self.serial is None else f"s/us/{self.serial}"


@dataclass(frozen=True, slots=True)
class Signal:
    """What a press means for its bin, and the lines that say so to Cumulocity."""

    kind: SignalKind
    bin: str | None
    publishes: tuple[DevicePublish, ...] = ()

    def lines_for(self, serial: str | None) -> tuple[str, ...]:
        """The lines for one device: `extra_lines` next to that button's event."""
        return tuple(line for p in self.publishes if p.serial == serial for line in p.lines)

    def lines_elsewhere(self, serial: str | None) -> tuple[DevicePublish, ...]:
        """The lines for the other devices (a refill clears the reorder buttons' alarms)."""
        return tuple(p for p in self.publishes if p.serial != serial)


@dataclass(frozen=True, slots=True)
class OperationOutcome:
    """The handling of one `c8y_KanbanRefilled` (or shell) operation."""

    bin: str | None  # the bin refilled, None when the operation failed
    publishes: tuple[DevicePublish, ...]
    operation: str | None = None  # its id (504-506), once the loop has recorded it as handled


def alarm_text(bin_: Bin) -> str:
    """`Reorder 50 x M6 screws for bin A3 (Aisle 2)`; parts left out when MACID.csv has none."""
    if bin_.part and bin_.quantity is not None:
        text = f"Reorder {bin_.quantity} x {bin_.part} for bin {bin_.name}"
    elif bin_.part:
        text = f"Reorder {bin_.part} for bin {bin_.name}"
    elif bin_.quantity is not None:
        text = f"Reorder {bin_.quantity} for bin {bin_.name}"
    else:
        text = f"Reorder bin {bin_.name}"
    return f"{text} ({bin_.location})" if bin_.location else text


def raise_line(bin_: Bin, severity: str, time: datetime) -> str:
    """`302,c8y_KanbanReorder,<text>,<time>`: the press time, so a replay is deterministic."""
    template = SEVERITY_TEMPLATES[severity.upper()]
    when = time.isoformat(timespec="milliseconds")
    return encode_line(template, ALARM_TYPE, alarm_text(bin_), when)


def clear_line() -> str:
    return encode_line(CLEAR_TEMPLATE, ALARM_TYPE)


def _days_text(days: float) -> str:
    rounded = round(days, 1)
    number = str(int(rounded)) if rounded.is_integer() else f"{rounded:.1f}"
    return f"{number} day" if number == "1" else f"{number} days"


def overdue_text(bin_: Bin, reordered: datetime, lead_days: float, late_days: float) -> str:
    """`Bin A3 (M6 screws, Würth) overdue by 1.5 days: reordered 2026-11-26 08:00 UTC, lead
    time 2 days`; part and supplier left out when MACID.csv has none."""
    about = ", ".join(v for v in (bin_.part, bin_.supplier) if v)
    name = f"Bin {bin_.name} ({about})" if about else f"Bin {bin_.name}"
    when = reordered.astimezone(UTC).strftime("%Y-%m-%d %H:%M UTC")
    return (f"{name} overdue by {_days_text(late_days)}: reordered {when}, "
            f"lead time {_days_text(lead_days)}")


def overdue_lines(
    bin_: Bin, serial: str, severity: str, reordered: datetime, lead_days: float, now: datetime
) -> DevicePublish:
    """`301,c8y_KanbanOverdue,<text>,<now>` on the device of the button that made the reorder."""
    late = (now - reordered).total_seconds() / 86_400.0 - lead_days
    template = SEVERITY_TEMPLATES[severity.upper()]
    text = overdue_text(bin_, reordered, lead_days, late)
    when = now.isoformat(timespec="milliseconds")
    return DevicePublish(serial, (encode_line(template, OVERDUE_TYPE, text, when),))


def overdue_clear(serial: str) -> DevicePublish:
    """`306,c8y_KanbanOverdue` on the device that carries the overdue alarm."""
    return DevicePublish(serial, (encode_line(CLEAR_TEMPLATE, OVERDUE_TYPE),))


def clear_lines(bin_: Bin) -> tuple[DevicePublish, ...]:
    """`306,c8y_KanbanReorder` on every reorder button of the bin (the alarm lives on each)."""
    return tuple(DevicePublish(b.serial, (clear_line(),)) for b in bin_.reorder)


def signal_for(
    press: Press, bins: Bins, settings: KanbanSettings, active: Iterable[str]
) -> Signal:
    """Classify a press against the bins whose reorder is open (`active`) and give its lines.

    A reorder press of a bin that is already open is a repeat: the alarm line is sent all the same
    (Cumulocity de-duplicates it and counts the repeat on the alarm), but the history records it
    as a repeat, not as a new reorder. With `[kanban] alarms = no` nothing is sent.
    """
    button = press.button
    bin_ = bins.of(button)
    if bin_ is None:
        return Signal(KIND_NONE, None)
    # `long_press = refill` (MACID.csv, issue 19): a long press on the reorder button says the
    # bin is refilled, as a press of a refill button or `kanban refilled` would.
    if button.role == "refill" or (button.long_press == "refill" and press.kind == "long"):
        return Signal(KIND_REFILL, bin_.name, clear_lines(bin_) if settings.alarms else ())
    kind: SignalKind = KIND_REPEAT if bin_.name in set(active) else KIND_REORDER
    publishes: tuple[DevicePublish, ...] = ()
    if settings.alarms:
        line = raise_line(bin_, settings.severity, press.time)
        publishes = (DevicePublish(button.serial, (line,)),)
    return Signal(kind, bin_.name, publishes)


def template_lines() -> tuple[str, ...]:
    """The custom template collection, published on `s/ut/dashkanban-v2` when it is missing.

    `11,<msgId>,<base>,<condition>,<value paths>`: an operation with the fragment
    `c8y_KanbanRefilled` reaches the agent on `s/dc/dashkanban-v2` as
    `9101,<device serial>,<operation id>,<bin>`, a `c8y_Command` as
    `9102,<device serial>,<operation id>,<command text>`. The id lets the status go by id
    (504/505/506): 501/503 act on "the oldest" operation with the fragment, which may be another
    bin's (mqtt-static-templates.md).
    """
    return (
        encode_line(11, REFILLED_TEMPLATE_ID, "", OPERATION, "id", f"{OPERATION}.bin"),
        encode_line(11, COMMAND_TEMPLATE_ID, "", "c8y_Command", "id", "c8y_Command.text"),
    )


def supported_operations(bins: Bins) -> tuple[DevicePublish, ...]:
    """`114,c8y_KanbanRefilled` on each reorder button, so the UI offers the operation there."""
    return tuple(
        DevicePublish(button.serial, (encode_line(114, OPERATION),))
        for bin_ in bins
        for button in bin_.reorder
    )


def operation_id(line: SmartRestLine) -> str | None:
    """The operation id of one of our operation lines (9101, 9102), else None."""
    if line.template in (REFILLED_TEMPLATE_ID, COMMAND_TEMPLATE_ID):
        return line.field(1).strip() or None
    return None


def status_lines(op_id: str | None) -> tuple[str, str, str]:
    """The executing/failed/successful templates and their first field: by operation id
    (504/505/506) when there is one, else by fragment (501/502/503, "the oldest" operation)."""
    if op_id:
        return "504", "505", "506"
    return "501", "502", "503"


def handle_operation(
    line: SmartRestLine, bins: Bins, gateway_serial: str
) -> OperationOutcome | None:
    """A downstream line -> the status and clear lines to publish, or None if not ours.

    `9101,<serial>,<op id>,<bin>` (our template; the bin may be empty when the operation targets
    a button of the bin) or `9102,<serial>,<op id>,kanban refilled <bin>` (the shell). Status
    lines go to the device the operation was created for, by operation id (504/506); a failure
    (an unknown bin) is reported with 505 and the reason.
    """
    if line.template == REFILLED_TEMPLATE_ID:
        fragment = OPERATION
        wanted = line.field(2).strip()
    elif line.template == COMMAND_TEMPLATE_ID:
        match = _COMMAND.fullmatch(line.field(2))
        if match is None:
            return None
        fragment = "c8y_Command"
        wanted = match.group(1)
    else:
        return None
    target = line.field(0)
    op_id = operation_id(line)
    key = op_id if op_id else fragment
    executing_t, failed_t, done_t = status_lines(op_id)
    device = None if target in ("", gateway_serial) else target
    executing = DevicePublish(device, (encode_line(executing_t, key),))
    bin_ = bins.find(wanted) if wanted else _bin_of_serial(bins, target)
    if bin_ is None:
        if wanted:
            reason = f"unknown bin {wanted!r} (known: {', '.join(bins.names) or 'none'})"
        else:
            reason = f"device {target!r} is not a button of any bin; give the bin"
        log.warning("%s operation %s failed: %s", fragment, op_id or "", reason)
        failed = DevicePublish(device, (encode_line(failed_t, key, reason),))
        return OperationOutcome(None, (executing, failed))
    result: tuple[object, ...] = (f"bin {bin_.name} refilled",) if fragment == "c8y_Command" else ()
    done = DevicePublish(device, (encode_line(done_t, key, *result),))
    return OperationOutcome(bin_.name, (executing, *clear_lines(bin_), done))


def _bin_of_serial(bins: Bins, serial: str) -> Bin | None:
    for bin_ in bins:
        if any(b.serial == serial for b in bin_.buttons):
            return bin_
    return None
