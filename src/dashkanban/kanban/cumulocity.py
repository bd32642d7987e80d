"""Kanban over Cumulocity's REST API: the `c8y_Kanban` fragment on each button's child device, and
the presses of all gateways read back for `kanban report --from-cumulocity`.

Why REST for the fragment (docs/kanban.md has the whole argument): SmartREST 2.0's static templates
cannot carry a custom fragment, and `PUT /inventory/managedObjects/{id}` with only the fragment is
the documented update (docs/protocol.md 3.3); the id comes from the identity API (3.2). It happens
once per button at start-up, not per press, so REST's cost does not matter. Events are read with
`GET /event/events`, paged with `pageSize=2000` (the maximum, 3.4) and `currentPage=N`.

The HTTP client is `dashkanban.c8y.rest.CumulocityRest`, shared with the inventory source: one
timeout and retry policy for every REST call (see that module).
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from dashkanban.c8y.rest import CumulocityRest, Exchange, RestCalls, RestError
from dashkanban.detect.buttons import Button
from dashkanban.kanban.alarms import ALARM_TYPE
from dashkanban.kanban.analytics import BinInfo, Observation, Replenishment, classify
from dashkanban.kanban.bins import Bin, Bins

log = logging.getLogger(__name__)

FRAGMENT = "c8y_Kanban"
PAGE_SIZE = 2000  # Cumulocity's maximum page size (docs/protocol.md 3.4)
MAX_PAGES = 10_000  # a bound on the paging loop: 20 million events

__all__ = [
    "CumulocityRest",
    "RemoteHistory",
    "fetch_history",
    "kanban_fragment",
    "kanban_fragment_calls",
    "publish_kanban_fragments",
    "read_events",
]


def kanban_fragment(button: Button, bin_: Bin, gateway_serial: str) -> dict[str, Any]:
    """The `c8y_Kanban` fragment for a button's child device (pure). Absent values are left out;
    `gateway` tells the bins of different stores apart in a company-wide report."""
    values: dict[str, Any] = {
        "bin": bin_.name,
        "role": button.role,
        "part": bin_.part,
        "quantity": bin_.quantity,
        "location": bin_.location,
        "supplier": bin_.supplier,
        "leadTimeDays": bin_.lead_time_days,
        "cards": bin_.cards,
        "gateway": gateway_serial,
    }
    return {FRAGMENT: {k: v for k, v in values.items() if v is not None}}


def read_events(
    rest: CumulocityRest, event_type: str, date_from: datetime, date_to: datetime
) -> Iterator[dict[str, Any]]:
    """All events of a type from `date_from` to `date_to` (both inclusive), page after page.

    The collection is newest first (docs/protocol.md 3.4): a fixed `dateTo`, taken once before the
    first page, keeps events that arrive during the read from shifting the pages (which would
    read one event twice and skip none, or, with deletions, skip one)."""
    return _read_pages(rest, "/event/events", "events", event_type, date_from, date_to)


def read_alarms(
    rest: CumulocityRest, alarm_type: str, date_from: datetime, date_to: datetime
) -> Iterator[dict[str, Any]]:
    """All alarms of a type from `date_from` to `date_to`, any status, page after page (newest
    first, with a fixed `dateTo` as `read_events`)."""
    return _read_pages(rest, "/alarm/alarms", "alarms", alarm_type, date_from, date_to)


def _read_pages(
    rest: CumulocityRest, url: str, key: str, item_type: str, date_from: datetime,
    date_to: datetime,
) -> Iterator[dict[str, Any]]:
    for page in range(1, MAX_PAGES + 1):
        params: dict[str, str | int] = {
            "type": item_type,
            "dateFrom": date_from.isoformat(timespec="milliseconds"),  # httpx sends + as %2B
            "dateTo": date_to.isoformat(timespec="milliseconds"),
            "pageSize": PAGE_SIZE,
            "currentPage": page,
        }
        body = rest.get_json(url, f"reading {key}", params)
        events = body.get(key) if isinstance(body, dict) else None
        if not isinstance(events, list):
            raise RestError(f"reading {key}: page {page} has no '{key}' list")
        yield from (e for e in events if isinstance(e, dict))
        if len(events) < PAGE_SIZE:
            return
    log.warning("stopped reading %s after %d pages", key, MAX_PAGES)


def publish_kanban_fragments(
    rest: CumulocityRest, bins: Bins, gateway_serial: str
) -> dict[str, str | None]:
    """PUT the c8y_Kanban fragment on each button of each bin. Returns serial -> managed object id
    (None for a button Cumulocity does not know yet: its child is created with its first press)."""
    return rest.run(kanban_fragment_calls(rest.calls, bins, gateway_serial))


def kanban_fragment_calls(
    calls: RestCalls, bins: Bins, gateway_serial: str
) -> Exchange[dict[str, str | None]]:
    """`publish_kanban_fragments` as an exchange, for either REST client (the daemon's loop
    awaits it with `AsyncCumulocityRest.run`)."""
    done: dict[str, str | None] = {}
    for bin_ in bins:
        for button in bin_.buttons:
            mo_id = yield from calls.managed_object_id(button.serial)
            done[button.serial] = mo_id
            if mo_id is None:
                log.info("%s (%s) is not in Cumulocity yet", button.name, button.serial)
                continue
            yield from calls.update_managed_object(
                mo_id, kanban_fragment(button, bin_, gateway_serial))
    return done


@dataclass(frozen=True, slots=True)
class RemoteHistory:
    observations: tuple[Observation, ...]
    bins: Mapping[str, BinInfo]
    events: int  # events read
    skipped: int  # events of devices without a c8y_Kanban fragment
    first: datetime | None
    cleared: tuple[Replenishment, ...] = ()  # from the c8y_KanbanReorder alarms
    open_reorders: Mapping[str, datetime] | None = None  # bin -> oldest active reorder alarm
    last: datetime | None = None  # the latest event or alarm change: where the data ends


def fetch_history(rest: CumulocityRest, event_type: str, date_from: datetime,
                  date_to: datetime | None = None) -> RemoteHistory:
    """The presses of every gateway's buttons since `date_from`, as reorders and repeats.

    Each event's source is looked up once for its c8y_Kanban fragment. Bins are named `BIN`, or
    `GATEWAY/BIN` when the events come from more than one gateway (two stores may both have A3).
    """
    fragments: dict[str, dict[str, Any] | None] = {}
    presses: list[tuple[str, datetime, dict[str, Any]]] = []
    count = skipped = 0
    until = date_to if date_to is not None else datetime.now(UTC)
    for event in read_events(rest, event_type, date_from, until):
        count += 1
        origin = event.get("source")
        source = str(origin.get("id", "")) if isinstance(origin, dict) else ""
        if source not in fragments:
            device = rest.managed_object(source) if source else None
            fragment = device.get(FRAGMENT) if device else None
            fragments[source] = fragment if isinstance(fragment, dict) else None
        fragment = fragments[source]
        when = _parse_time(event.get("time"))
        if fragment is None or not fragment.get("bin") or when is None:
            skipped += 1
            continue
        presses.append((source, when, fragment))
    gateways = {str(f.get("gateway", "")) for _, _, f in presses}
    several = len(gateways) > 1
    infos: dict[str, BinInfo] = {}
    rows = []
    for _, when, fragment in presses:
        name = str(fragment["bin"])
        key = f"{fragment.get('gateway', '')}/{name}" if several else name
        if fragment.get("role", "reorder") == "reorder" and key not in infos:
            infos[key] = BinInfo(
                name=key,
                part=_str(fragment.get("part")),
                quantity=_int(fragment.get("quantity")),
                location=_str(fragment.get("location")),
                lead_time_days=_float(fragment.get("leadTimeDays")),
                supplier=_str(fragment.get("supplier")),
                cards=_int(fragment.get("cards")),
            )
        rows.append((key, when, str(fragment.get("role", "reorder"))))
    first = min((when for _, when, _ in rows), default=None)
    last = max((when for _, when, _ in rows), default=None)
    cleared, opened, alarm_last = _replenishments(rest, date_from, until, fragments, several)
    if alarm_last is not None and (last is None or alarm_last > last):
        last = alarm_last
    return RemoteHistory(tuple(classify(rows)), infos, count, skipped, first, tuple(cleared),
                         opened, last)


def _replenishments(
    rest: CumulocityRest,
    date_from: datetime,
    date_to: datetime,
    fragments: dict[str, dict[str, Any] | None],
    several: bool,
) -> tuple[list[Replenishment], dict[str, datetime], datetime | None]:
    """Replenishment times from the reorder alarms: `firstOccurrenceTime` is the reorder (the
    first raise; repeats only count up), and a CLEARED alarm's `lastUpdated` its refill: the
    306 clear is the alarm's last change, and Cumulocity has no field of its own for the time
    of clearing (docs/kanban.md). Active alarms are the open reorders."""
    cleared: list[Replenishment] = []
    opened: dict[str, datetime] = {}
    last: datetime | None = None
    for alarm in read_alarms(rest, ALARM_TYPE, date_from, date_to):
        origin = alarm.get("source")
        source = str(origin.get("id", "")) if isinstance(origin, dict) else ""
        if source not in fragments:
            device = rest.managed_object(source) if source else None
            fragment = device.get(FRAGMENT) if device else None
            fragments[source] = fragment if isinstance(fragment, dict) else None
        fragment = fragments[source]
        first = _parse_time(alarm.get("firstOccurrenceTime") or alarm.get("time"))
        if fragment is None or not fragment.get("bin") or first is None:
            continue
        name = str(fragment["bin"])
        key = f"{fragment.get('gateway', '')}/{name}" if several else name
        if alarm.get("status") == "CLEARED":
            done = _parse_time(alarm.get("lastUpdated"))
            if done is not None and done >= first:
                cleared.append(Replenishment(key, first, done))
                last = done if last is None or done > last else last
        elif key not in opened or first < opened[key]:
            opened[key] = first
    return cleared, opened, last


def _parse_time(value: object) -> datetime | None:
    if not isinstance(value, str):
        return None
    try:
        parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return None
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)


def _str(value: object) -> str | None:
    return None if value is None else str(value)


def _int(value: object) -> int | None:
    try:
        return None if value is None else int(str(value))
    except ValueError:
        return None


def _float(value: object) -> float | None:
    try:
        return None if value is None else float(str(value))
    except ValueError:
        return None
