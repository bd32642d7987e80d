"""The inventory source for `[buttons] source = inventory | both` (design section 3).

A MAC that is not in MACID.csv is a button when Cumulocity knows its serial as a `c8y_Serial`
external id: `GET /identity/externalIds/c8y_Serial/<serial>` (protocol notes 3.2), then the managed
object for its name. 404 means "not a button"; any other failure is retried with backoff and is
never taken as "not a button". Answers are cached for `[buttons] cache_ttl` seconds, positive and
negative, so a busy MAC costs one request per TTL; after a failed look-up the same MAC raises
without a request until the retry hold-off passes, so an outage does not stall capture on every
packet.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

import httpx

from dashkanban.buttons import Button, serial_of
from dashkanban.c8y.tls import rest_verify
from dashkanban.config import Settings
from dashkanban.errors import UplinkError

log = logging.getLogger(__name__)

TIMEOUT = httpx.Timeout(connect=5.0, read=10.0, write=10.0, pool=5.0)
ATTEMPTS = 3  # per look-up
BACKOFF = 0.5  # seconds before the 2nd attempt, doubled for each further one
HOLD_OFF = 30.0  # seconds a failed MAC raises from the cache before it is asked again
_RETRY_STATUS = {408, 429, 500, 502, 503, 504}


class InventoryError(UplinkError):
    """The inventory could not answer; the MAC is neither a button nor known not to be one."""


@dataclass(frozen=True, slots=True)
class _Entry:
    button: Button | None
    error: InventoryError | None
    until: float


class InventorySource:
    """A callable `(mac) -> Button | None` backed by Cumulocity's identity API, with a cache.

    Thread-safe. No network until the first call.
    """

    def __init__(self, settings: Settings, *, transport: httpx.BaseTransport | None = None,
                 clock: Callable[[], float] = time.monotonic,
                 sleep: Callable[[float], None] = time.sleep, attempts: int = ATTEMPTS,
                 backoff: float = BACKOFF, hold_off: float = HOLD_OFF) -> None:
        self._settings = settings
        self._transport = transport
        self._clock = clock
        self._sleep = sleep
        self._attempts = attempts
        self._backoff = backoff
        self._hold_off = hold_off
        self._ttl = settings.buttons.cache_ttl
        self._cache: dict[str, _Entry] = {}
        self._lock = threading.Lock()
        self._client: httpx.Client | None = None
        self.requests = 0

    def _http(self) -> httpx.Client:
        if self._client is None:
            c8y = self._settings.c8y
            auth = (c8y.username, c8y.password.reveal()) if c8y.password is not None else None
            verify = rest_verify(c8y)
            self._client = httpx.Client(
                base_url=c8y.rest_url, auth=auth, timeout=TIMEOUT, verify=verify,
                transport=self._transport,
                # Devices must not send X-Cumulocity-Application-Key (protocol notes 3.1).
                headers={"Accept": "application/json"},
            )
        return self._client

    def close(self) -> None:
        if self._client is not None:
            self._client.close()
            self._client = None

    def __call__(self, mac: str) -> Button | None:
        now = self._clock()
        with self._lock:
            entry = self._cache.get(mac)
            if entry is not None and entry.until > now:
                if entry.error is not None:
                    raise entry.error
                return entry.button
            try:
                button = self._look_up(mac)
            except InventoryError as exc:
                self._cache[mac] = _Entry(None, exc, self._clock() + self._hold_off)
                raise
            if self._ttl > 0:
                self._cache[mac] = _Entry(button, None, self._clock() + self._ttl)
            return button

    def _look_up(self, mac: str) -> Button | None:
        serial = serial_of(mac)
        response = self._get(f"/identity/externalIds/c8y_Serial/{serial}", expect_404=True)
        if response is None:
            log.info("%s (c8y_Serial %s) is not in Cumulocity's inventory", mac, serial)
            return None
        try:
            mo_id = str(response.json()["managedObject"]["id"])
        except (ValueError, KeyError, TypeError):
            raise InventoryError(
                f"unexpected answer to the identity look-up of {serial}: {response.text[:100]}"
            ) from None
        managed = self._get(f"/inventory/managedObjects/{mo_id}", expect_404=True)
        name = serial
        if managed is not None:
            try:
                name = str(managed.json().get("name") or serial)
            except ValueError:
                name = serial
        log.info("%s is button %r (c8y_Serial %s, managed object %s)", mac, name, serial, mo_id)
        return Button(name=name, mac=mac)

    def _get(self, path: str, *, expect_404: bool) -> httpx.Response | None:
        last = ""
        for attempt in range(1, self._attempts + 1):
            if attempt > 1:
                self._sleep(self._backoff * 2 ** (attempt - 2))
            self.requests += 1
            try:
                response = self._http().get(path)
            except httpx.HTTPError as exc:
                last = f"{type(exc).__name__}: {exc}"
                log.warning("GET %s failed (%s), attempt %d of %d", path, last, attempt,
                            self._attempts)
                continue
            if response.status_code == 200:
                return response
            if response.status_code == 404 and expect_404:
                return None
            last = f"HTTP {response.status_code} {_error_text(response)}"
            if response.status_code in (401, 403):
                raise InventoryError(
                    f"Cumulocity refused the inventory look-up ({last}); check user and password "
                    "in [C8YMQTT] and that the user has ROLE_IDENTITY_READ"
                )
            if response.status_code not in _RETRY_STATUS:
                break
            log.warning("GET %s: %s, attempt %d of %d", path, last, attempt, self._attempts)
        raise InventoryError(f"the inventory look-up GET {path} failed ({last})")


def _error_text(response: httpx.Response) -> str:
    try:
        body = response.json()
    except ValueError:
        return response.reason_phrase
    if isinstance(body, dict) and "error" in body:
        return f"{body.get('error')}: {body.get('message', '')}".strip()
    return response.reason_phrase
