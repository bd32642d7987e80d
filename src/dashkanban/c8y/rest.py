"""Cumulocity's REST API: one client for every REST call dashkanban makes, and the inventory source
for `[buttons] source = inventory | both` (docs/cumulocity.md "Buttons from the inventory").

`CumulocityRest` is the only place that speaks HTTP to Cumulocity, with one policy (docs/protocol.md
3.5): explicit timeouts; transport errors (connect, read timeout, reset) and 408, 429 and 5xx are
retried with backoff (0.5 s, then doubled); 401 and 403 fail at once with one line that never
holds the password (retrying a wrong password only risks locking the user); any other status is one
`RestError` line with Cumulocity's own message. 404 means "unknown" only for the identity look-up
(`managed_object_id`); a missing managed object is "gone" (`managed_object` returns None).

`InventorySource` answers "is this MAC a button?" with a cache (TTL, positive and negative). It
blocks while it asks Cumulocity, so live capture never calls it directly: `inventory.Lookups` runs
it on a worker thread.
"""

from __future__ import annotations

import logging
import random
import ssl
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

import httpx

from dashkanban.backoff import Backoff
from dashkanban.buttons import Button, serial_of
from dashkanban.c8y.smartrest import sendable
from dashkanban.c8y.token import TokenError, TokenSource, token_source_for
from dashkanban.config import C8yMqttSettings, Settings
from dashkanban.errors import UplinkError

log = logging.getLogger(__name__)

TIMEOUT = httpx.Timeout(15.0, connect=5.0)
ATTEMPTS = 3  # per call
BACKOFF = 0.5  # seconds: the longest wait before the 2nd attempt, doubled for each further one
BACKOFF_MAX = 30.0
RETRY_STATUS = frozenset({408, 429, 500, 502, 503, 504})
MAX_CACHED = 50_000  # MACs the inventory source remembers; every phone on the LAN is one


class RestError(UplinkError):
    """A REST call failed (after its retries); one line for the user, without the password."""


class RestRefusedError(RestError):
    """401 or 403: the credentials or the user's roles; not retried."""

    def __init__(self, message: str, status: int = 401) -> None:
        super().__init__(message)
        self.status = status


# The inventory source's failures are RestErrors: "could not tell", never "not a button".
InventoryError = RestError


class CumulocityRest:
    """A few REST calls, Basic auth `tenantID/user`. Opens no connection until the first call.

    Thread-safe as far as httpx.Client is (one connection pool; calls may come from any thread).
    """

    def __init__(
        self,
        base_url: str,
        username: str,
        password: str | None,
        *,
        verify: ssl.SSLContext | bool = True,
        timeout: httpx.Timeout = TIMEOUT,
        sleep: Callable[[float], None] = time.sleep,
        attempts: int = ATTEMPTS,
        backoff: float = BACKOFF,
        transport: httpx.BaseTransport | None = None,
        tokens: TokenSource | None = None,
        jitter: Callable[[], float] = random.random,
    ) -> None:
        """`tokens`: a certificate device's JWT source; REST does not authenticate with the
        client certificate, so without a password every call sends `Bearer <token>`."""
        self._tokens = tokens if password is None else None
        self._client = httpx.Client(
            base_url=base_url,
            auth=httpx.BasicAuth(username, password) if password is not None else None,
            timeout=timeout,
            verify=verify,
            transport=transport,
            # Devices must not send X-Cumulocity-Application-Key (docs/protocol.md 3.1).
            headers={"Accept": "application/json"},
        )
        self._username = username if password is not None or tokens is None else "device token"
        self._sleep = sleep
        self._attempts = max(1, attempts)
        self._backoff = Backoff(backoff, BACKOFF_MAX)  # the shared policy (backoff.py)
        self._jitter = jitter
        self.requests = 0  # HTTP requests made, retries included

    @classmethod
    def from_settings(cls, c8y: C8yMqttSettings, **kwargs: Any) -> CumulocityRest:
        """The client for `[C8YMQTT]`: rest_url, `tenantID/user`, and the same TLS as MQTT; a
        certificate-only config needs `tokens=` (a `TokenSource`) for its Bearer token."""
        from dashkanban.c8y.tls import rest_verify

        password = c8y.password.reveal() if c8y.password is not None else None
        return cls(c8y.rest_url, c8y.username, password, verify=rest_verify(c8y), **kwargs)

    def close(self) -> None:
        self._client.close()

    def __enter__(self) -> CumulocityRest:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def request(self, method: str, url: str, what: str, **kwargs: Any) -> httpx.Response:
        """One call with the retry policy. Returns any answer that is neither retryable nor a
        refusal (the caller decides what 404 means); raises RestError otherwise."""
        last = ""
        renewed = False  # a 401 with a device token renews it once, at once
        attempt = 0
        while attempt < self._attempts:
            attempt += 1
            if attempt > 1 and not (renewed and last == "token renewed"):
                self._sleep(self._backoff.delay(attempt - 1, self._jitter))
            self.requests += 1
            call = dict(kwargs)
            if self._tokens is not None:
                try:
                    bearer = self._tokens.authorization()
                except TokenError as exc:
                    raise RestError(f"{what}: {exc}") from None
                call["headers"] = {**dict(kwargs.get("headers") or {}), "Authorization": bearer}
            try:
                response = self._client.request(method, url, **call)
            except httpx.TimeoutException:
                last = "no answer in time"
            except httpx.HTTPError as exc:
                last = f"cannot reach Cumulocity: {type(exc).__name__}: {exc}"
            else:
                if response.status_code == 401 and self._tokens is not None and not renewed:
                    # Expired or revoked: ask for a new token now (device-certificates.md).
                    renewed = True
                    last = "token renewed"
                    log.info("%s: Cumulocity refused the device token (401); renewing it", what)
                    self._tokens.invalidate()
                    attempt -= 1
                    continue
                if response.status_code in (401, 403):
                    raise self._refused(response, what)
                if response.status_code not in RETRY_STATUS:
                    return response
                last = f"{response.status_code} {_error_message(response)}"
            if attempt < self._attempts:
                log.info("%s (%s %s): %s; attempt %d of %d", what, method, url, last, attempt,
                         self._attempts)
        raise RestError(f"{what}: {last} ({method} {url}, {self._attempts} attempts)")

    def _refused(self, response: httpx.Response, what: str) -> RestRefusedError:
        if response.status_code == 401 and self._tokens is not None:
            return RestRefusedError(
                "Cumulocity refused the device token (401) also after renewing it: check that "
                "the device's certificate is registered in the tenant"
            )
        if response.status_code == 401:
            return RestRefusedError(
                f"Cumulocity refused the login of {self._username} (401): check tenantID, user "
                "and password"
            )
        return RestRefusedError(
            f"{what}: Cumulocity refused it to {self._username} (403 {_error_message(response)}): "
            "the user lacks a role (identity and inventory read, or admin for updates)", 403
        )

    def _check(self, response: httpx.Response, what: str) -> None:
        if not response.is_success:
            raise RestError(f"{what}: {response.status_code} {_error_message(response)}")

    def managed_object_id(self, serial: str) -> str | None:
        """The managed object of a c8y_Serial external id, or None when there is none (404)."""
        what = f"identity look-up of {serial}"
        url = f"/identity/externalIds/c8y_Serial/{quote(serial, safe='')}"
        response = self.request("GET", url, what)
        if response.status_code == 404:
            return None
        self._check(response, what)
        body = _json(response, what)
        try:
            return str(body["managedObject"]["id"])
        except (KeyError, TypeError):
            raise RestError(f"{what}: no managedObject.id in the answer") from None

    def managed_object(self, mo_id: str, *, forbidden_is_none: bool = False) -> (
        dict[str, Any] | None
    ):
        """A managed object, or None when it is gone (404: a deleted button still has events),
        and with `forbidden_is_none` also when the user may not read it (403: device users
        usually read only the objects they own, docs/protocol.md 3.1)."""
        what = f"reading managed object {mo_id}"
        try:
            response = self.request("GET", f"/inventory/managedObjects/{quote(mo_id, safe='')}",
                                    what)
        except RestRefusedError as exc:
            if forbidden_is_none and exc.status == 403:
                log.info("%s: not readable by this user (403)", what)
                return None
            raise
        if response.status_code == 404:
            return None
        self._check(response, what)
        body = _json(response, what)
        return body if isinstance(body, dict) else None

    def update_managed_object(self, mo_id: str, fragments: Mapping[str, Any]) -> None:
        """PUT only the fragments (never the name: "Do not update the name of a device from an
        agent!", docs/protocol.md 3.3)."""
        what = f"updating managed object {mo_id}"
        response = self.request(
            "PUT",
            f"/inventory/managedObjects/{quote(mo_id, safe='')}",
            what,
            json=dict(fragments),
            headers={"Content-Type": "application/vnd.com.nsn.cumulocity.managedobject+json"},
        )
        self._check(response, what)

    def get_json(self, url: str, what: str, params: Mapping[str, str | int]) -> Any:
        """GET a collection (e.g. `/event/events`) and its JSON body; any non-2xx is an error."""
        response = self.request("GET", url, what, params=dict(params))
        self._check(response, what)
        return _json(response, what)


def _json(response: httpx.Response, what: str) -> Any:
    try:
        return response.json()
    except ValueError:
        raise RestError(f"{what}: the answer is not JSON") from None


def _error_message(response: httpx.Response) -> str:
    """Cumulocity's error body (`{"error": ..., "message": ...}`) as one line, else the reason."""
    try:
        body = response.json()
    except ValueError:
        return response.reason_phrase
    if isinstance(body, dict) and body.get("message"):
        return f"{body.get('error', '')}: {body['message']}".lstrip(": ")
    return response.reason_phrase


# ---------------------------------------------------------------------------------------------
# The inventory source


class _Miss:
    """The cache has no answer (or only an expired one) for a MAC."""

    __slots__ = ()

    def __repr__(self) -> str:
        return "MISS"


MISS = _Miss()


@dataclass(frozen=True, slots=True)
class _Entry:
    button: Button | None
    until: float


class InventorySource:
    """`(mac) -> Button | None` backed by Cumulocity's identity API, with a cache.

    A call may block (HTTP, with retries): it is meant for a worker thread (`inventory.Lookups`).
    `cached(mac)` never blocks. Thread-safe; the lock guards only the cache, never an HTTP call,
    so `cached` answers at once while a look-up is in flight. No network until the first call.
    """

    def __init__(
        self,
        settings: Settings,
        *,
        rest: CumulocityRest | None = None,
        clock: Callable[[], float] = time.monotonic,
        tokens: TokenSource | None = None,
    ) -> None:
        """`tokens`: the daemon's device-token source, for a certificate-only config."""
        self._settings = settings
        self._rest = rest
        self._tokens = tokens
        self._clock = clock
        self._ttl = settings.buttons.cache_ttl
        self._cache: dict[str, _Entry] = {}
        self._lock = threading.Lock()

    @property
    def rest(self) -> CumulocityRest:
        if self._rest is None:
            tokens = self._tokens
            if tokens is None and self._settings.c8y.password is None:
                tokens = token_source_for(self._settings)
            self._rest = CumulocityRest.from_settings(self._settings.c8y, tokens=tokens)
        return self._rest

    @property
    def requests(self) -> int:
        return self._rest.requests if self._rest is not None else 0

    def close(self) -> None:
        if self._rest is not None:
            self._rest.close()

    def cached(self, mac: str) -> Button | _Miss | None:
        """The cached answer, or MISS; never blocks on the network."""
        with self._lock:
            entry = self._cache.get(mac)
            if entry is None:
                return MISS
            if entry.until <= self._clock():
                del self._cache[mac]
                return MISS
            return entry.button

    def __call__(self, mac: str) -> Button | None:
        """A Button, None when Cumulocity does not know the serial; raises RestError when it
        could not tell (nothing is cached then: the caller decides when to ask again)."""
        answer = self.cached(mac)
        if not isinstance(answer, _Miss):
            return answer
        button = self._look_up(mac)  # no lock held: HTTP may take seconds
        if self._ttl > 0:
            with self._lock:
                now = self._clock()
                if len(self._cache) >= MAX_CACHED:
                    self._evict(now)
                self._cache[mac] = _Entry(button, now + self._ttl)
        return button

    def _evict(self, now: float) -> None:
        """Bounded memory: drop expired answers; if none expired, the oldest quarter."""
        expired = [mac for mac, entry in self._cache.items() if entry.until <= now]
        for mac in expired or list(self._cache)[: MAX_CACHED // 4]:
            del self._cache[mac]

    def _look_up(self, mac: str) -> Button | None:
        serial = serial_of(mac)
        mo_id = self.rest.managed_object_id(serial)
        if mo_id is None:
            log.info("%s (c8y_Serial %s) is not in Cumulocity's inventory", mac, serial)
            return None
        # A device user usually may not read a button it does not own (403): the serial is the
        # name then, as for a deleted one (404), instead of retrying for 10 minutes.
        managed = self.rest.managed_object(mo_id, forbidden_is_none=True)
        name = str(managed.get("name") or serial) if managed is not None else serial
        name = _sendable_name(name, mac)
        log.info("%s is button %r (c8y_Serial %s, managed object %s)", mac, name, serial, mo_id)
        return Button(name=name, mac=mac)


# A name from the inventory goes back to Cumulocity in the button's 101 line and event texts.
MAX_INVENTORY_NAME = 1000


def _sendable_name(name: str, mac: str) -> str:
    """An inventory name as dashkanban can send it back (issue 13): control characters removed,
    a backslash Cumulocity could read as an escape replaced (c8y/smartrest.py), at most 1,000
    characters; one warning when that changed it."""
    cleaned = sendable(name)[:MAX_INVENTORY_NAME]
    if cleaned != name:
        log.warning(
            "%s: its name in Cumulocity's inventory, %r, cannot be sent back as written; using %r",
            mac, name[:100], cleaned[:100],
        )
    return cleaned

