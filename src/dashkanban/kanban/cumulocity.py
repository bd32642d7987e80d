"""Kanban over Cumulocity's REST API: the `c8y_Kanban` fragment on each button's child device, and
the presses of all gateways read back for `kanban report --from-cumulocity`.

Why REST for the fragment (docs/kanban.md has the whole argument): SmartREST 2.0's static templates
cannot carry a custom fragment, and `PUT /inventory/managedObjects/{id}` with only the fragment is
the documented update (protocol notes 3.3); the id comes from the identity API (3.2). It happens
once per button at start-up, not per press, so REST's cost does not matter. Events are read with
`GET /event/events`, paged with `pageSize=2000` (the maximum, 3.4) and `currentPage=N`.

Timeouts are explicit; 429 and 5xx are retried with a short backoff (3.5); other errors become one
`UplinkError` line with Cumulocity's own message and never the password.
"""

from __future__ import annotations

import logging
import ssl
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any
from urllib.parse import quote

import httpx

from dashkanban.buttons import Button
from dashkanban.errors import UplinkError
from dashkanban.kanban.analytics import BinInfo, Observation, classify
from dashkanban.kanban.bins import Bin, Bins

log = logging.getLogger(__name__)

FRAGMENT = "c8y_Kanban"
PAGE_SIZE = 2000  # Cumulocity's maximum page size (protocol notes 3.4)
MAX_PAGES = 10_000  # a bound on the paging loop: 20 million events
RETRIES = 3
TIMEOUT = httpx.Timeout(15.0, connect=5.0)
_RETRY_STATUS = frozenset({429, 500, 502, 503, 504})


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
        "gateway": gateway_serial,
    }
    return {FRAGMENT: {k: v for k, v in values.items() if v is not None}}


class CumulocityRest:
    """A few REST calls, Basic auth `tenantID/user`. Opens no connection until the first call."""

    def __init__(
        self,
        base_url: str,
        username: str,
        password: str,
        *,
        verify: ssl.SSLContext | bool = True,
        timeout: httpx.Timeout = TIMEOUT,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self._client = httpx.Client(
            base_url=base_url,
            auth=httpx.BasicAuth(username, password),
            timeout=timeout,
            verify=verify,
            headers={"Accept": "application/json"},
        )
        self._username = username
        self._sleep = sleep

    def close(self) -> None:
        self._client.close()

    def __enter__(self) -> CumulocityRest:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _request(self, method: str, url: str, **kwargs: Any) -> httpx.Response:
        delay = 0.5
        for attempt in range(1, RETRIES + 1):
            try:
                response = self._client.request(method, url, **kwargs)
            except httpx.TimeoutException:
                raise UplinkError(f"Cumulocity did not answer {method} {url} in time") from None
            except httpx.HTTPError as exc:
                raise UplinkError(f"cannot reach Cumulocity for {method} {url}: {exc}") from None
            if response.status_code in _RETRY_STATUS and attempt < RETRIES:
                log.info("%s %s: %d, retrying in %.1f s", method, url, response.status_code, delay)
                self._sleep(delay)
                delay *= 2
                continue
            return response
        raise AssertionError("unreachable")  # pragma: no cover

    def _check(self, response: httpx.Response, what: str) -> None:
        if response.is_success:
            return
        if response.status_code == 401:
            raise UplinkError(
                f"Cumulocity refused the login of {self._username} (401): check tenantID, user "
                "and password"
            )
        raise UplinkError(f"{what}: {response.status_code} {_error_message(response)}")

    def managed_object_id(self, serial: str) -> str | None:
        """The managed object of a c8y_Serial external id, or None when there is none (404)."""
        url = f"/identity/externalIds/c8y_Serial/{quote(serial, safe='')}"
        response = self._request("GET", url)
        if response.status_code == 404:
            return None
        self._check(response, f"identity look-up of {serial}")
        body = _json(response)
        try:
            return str(body["managedObject"]["id"])
        except (KeyError, TypeError):
            raise UplinkError(
                f"identity look-up of {serial}: no managedObject.id in the answer"
            ) from None

    def managed_object(self, mo_id: str) -> dict[str, Any] | None:
        """A managed object, or None when it is gone (404: a deleted button still has events)."""
        response = self._request("GET", f"/inventory/managedObjects/{quote(mo_id, safe='')}")
        if response.status_code == 404:
            return None
        self._check(response, f"reading managed object {mo_id}")
        body = _json(response)
        return body if isinstance(body, dict) else None

    def update_managed_object(self, mo_id: str, fragments: Mapping[str, Any]) -> None:
        """PUT only the fragments (never the name: "Do not update the name of a device from an
        agent!", protocol notes 3.3)."""
        response = self._request(
            "PUT",
            f"/inventory/managedObjects/{quote(mo_id, safe='')}",
            json=dict(fragments),
            headers={"Content-Type": "application/vnd.com.nsn.cumulocity.managedobject+json"},
        )
        self._check(response, f"updating managed object {mo_id}")

    def events(self, event_type: str, date_from: datetime) -> Iterator[dict[str, Any]]:
        """All events of a type since `date_from` (inclusive), page after page."""
        for page in range(1, MAX_PAGES + 1):
            params: dict[str, str | int] = {
                "type": event_type,
                "dateFrom": date_from.isoformat(timespec="milliseconds"),  # httpx sends + as %2B
                "pageSize": PAGE_SIZE,
                "currentPage": page,
            }
            response = self._request("GET", "/event/events", params=params)
            self._check(response, "reading events")
            body = _json(response)
            events = body.get("events") if isinstance(body, dict) else None
            if not isinstance(events, list):
                raise UplinkError(f"reading events: page {page} has no 'events' list")
            yield from (e for e in events if isinstance(e, dict))
            if len(events) < PAGE_SIZE:
                return
        log.warning("stopped reading events after %d pages", MAX_PAGES)


def publish_kanban_fragments(
    rest: CumulocityRest, bins: Bins, gateway_serial: str
) -> dict[str, str | None]:
    """PUT the c8y_Kanban fragment on each button of each bin. Returns serial -> managed object id
    (None for a button Cumulocity does not know yet: its child is created with its first press)."""
    done: dict[str, str | None] = {}
    for bin_ in bins:
        for button in bin_.buttons:
            mo_id = rest.managed_object_id(button.serial)
            done[button.serial] = mo_id
            if mo_id is None:
                log.info("%s (%s) is not in Cumulocity yet", button.name, button.serial)
                continue
            rest.update_managed_object(mo_id, kanban_fragment(button, bin_, gateway_serial))
    return done


@dataclass(frozen=True, slots=True)
class RemoteHistory:
    observations: tuple[Observation, ...]
    bins: Mapping[str, BinInfo]
    events: int  # events read
    skipped: int  # events of devices without a c8y_Kanban fragment
    first: datetime | None


def fetch_history(rest: CumulocityRest, event_type: str, date_from: datetime) -> RemoteHistory:
    """The presses of every gateway's buttons since `date_from`, as reorders and repeats.

    Each event's source is looked up once for its c8y_Kanban fragment. Bins are named `BIN`, or
    `GATEWAY/BIN` when the events come from more than one gateway (two stores may both have A3).
    """
    fragments: dict[str, dict[str, Any] | None] = {}
    presses: list[tuple[str, datetime, dict[str, Any]]] = []
    count = skipped = 0
    for event in rest.events(event_type, date_from):
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
            )
        rows.append((key, when, str(fragment.get("role", "reorder"))))
    first = min((when for _, when, _ in rows), default=None)
    return RemoteHistory(tuple(classify(rows)), infos, count, skipped, first)


def _json(response: httpx.Response) -> Any:
    try:
        return response.json()
    except ValueError:
        raise UplinkError(
            f"{response.request.method} {response.request.url.path}: the answer is not JSON"
        ) from None


def _error_message(response: httpx.Response) -> str:
    try:
        body = response.json()
    except ValueError:
        return response.reason_phrase
    if isinstance(body, dict) and body.get("message"):
        return f"{body.get('error', '')}: {body['message']}".lstrip(": ")
    return response.reason_phrase


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
