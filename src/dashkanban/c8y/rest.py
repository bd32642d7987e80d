"""Cumulocity's REST API: one client for every REST call dashkanban makes, and the inventory source
for `[buttons] source = inventory | both` (docs/cumulocity.md "Buttons from the inventory").

`CumulocityRest` is the only place that speaks HTTP to Cumulocity, with one policy (docs/protocol.md
3.5): explicit timeouts; transport errors (connect, read timeout, reset) and 408, 429 and 5xx are
retried with backoff (0.5 s, then doubled); 401 and 403 fail at once with one line that never
holds the password (retrying a wrong password only risks locking the user); any other status is one
`RestError` line with Cumulocity's own message. 404 means "unknown" only for the identity look-up
(`managed_object_id`); a missing managed object is "gone" (`managed_object` returns None).

Two clients, one behaviour: every call is written once as an *exchange* (`RestCalls`: a generator
that yields the requests to send and the waits between attempts, and interprets the answers), and
carried out either blocking (`CumulocityRest`, httpx.Client: commands and replay) or on the
daemon's event loop (`AsyncCumulocityRest`, httpx.AsyncClient: inventory look-ups, the Kanban
fragments). Request building, auth (Basic, or a certificate device's Bearer token from
c8y/token.py), retries and error messages therefore cannot drift apart between the two.

`RestInventoryLookup` answers "is this MAC a button?" with a cache (TTL, positive and negative),
blocking (`source(mac)`, replay) or as a coroutine (`await source.look_up(mac)`, the daemon's
`inventory.LookupQueue`); live capture never waits for either.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import random
import ssl
import threading
import time
from collections.abc import Awaitable, Callable, Generator, Mapping
from dataclasses import dataclass
from typing import Any, Generic, Self, TypeVar
from urllib.parse import quote

import httpx

from dashkanban.backoff import Backoff
from dashkanban.c8y.smartrest import sendable
from dashkanban.c8y.token import TokenError, TokenSource, token_source_for
from dashkanban.config import C8yMqttSettings, Settings
from dashkanban.detect.buttons import Button, serial_of
from dashkanban.errors import UplinkError

log = logging.getLogger(__name__)

_T = TypeVar("_T")

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


# ---------------------------------------------------------------------------------------------
# The calls, without I/O. Each REST call is an *exchange*: a generator that yields what to do
# next (`Send` a request, `Wait` before a retry) and is sent what came of it. `RestCalls` holds
# the one copy of the request building, the auth header, the retry policy and the error
# translation; `CumulocityRest` carries exchanges out with httpx.Client (commands, replay),
# `AsyncCumulocityRest` with httpx.AsyncClient (the daemon's event loop). Exchanges compose with
# `yield from` (the inventory look-up is two calls), so a caller's logic is written once too.


@dataclass(frozen=True, slots=True)
class Send:
    """One HTTP request: `options` are httpx's request keywords (params, json, headers)."""

    method: str
    url: str
    options: Mapping[str, Any]
    bearer: TokenSource | None = None  # the Authorization header comes from this device token

    def with_authorization(self, authorization: str | None) -> dict[str, Any]:
        if authorization is None:
            return dict(self.options)
        headers = {**dict(self.options.get("headers") or {}), "Authorization": authorization}
        return {**self.options, "headers": headers}


@dataclass(frozen=True, slots=True)
class Wait:
    """Wait this long before the next attempt (the backoff of the retry policy)."""

    seconds: float


Step = Send | Wait
# What a step came to: a `Send` an answer or the error that stopped it; a `Wait` None.
Outcome = httpx.Response | httpx.HTTPError | TokenError | None
Exchange = Generator[Step, Outcome, _T]


class RestCalls:
    """The REST calls dashkanban makes, as exchanges; shared by the sync and the async client.

    Basic auth is the httpx client's (`tenantID/user`); a certificate device's calls carry
    `Bearer <token>` from `tokens` instead (REST does not authenticate with the client
    certificate)."""

    def __init__(self, username: str, tokens: TokenSource | None, *, attempts: int,
                 backoff: float, jitter: Callable[[], float]) -> None:
        self.tokens = tokens
        self.username = username
        self._attempts = max(1, attempts)
        self._backoff = Backoff(backoff, BACKOFF_MAX)  # the shared policy (backoff.py)
        self._jitter = jitter
        self.requests = 0  # HTTP requests made, retries included

    def request(self, method: str, url: str, what: str, **kwargs: Any) -> Exchange[httpx.Response]:
        """One call with the retry policy. Returns any answer that is neither retryable nor a
        refusal (the caller decides what 404 means); raises RestError otherwise."""
        last = ""
        renewed = False  # a 401 with a device token renews it once, at once
        attempt = 0
        while attempt < self._attempts:
            attempt += 1
            if attempt > 1 and not (renewed and last == "token renewed"):
                yield Wait(self._backoff.delay(attempt - 1, self._jitter))
            self.requests += 1
            outcome = yield Send(method, url, kwargs, self.tokens)
            if isinstance(outcome, TokenError):
                raise RestError(f"{what}: {outcome}") from None
            if isinstance(outcome, httpx.TimeoutException):
                last = "no answer in time"
            elif isinstance(outcome, httpx.HTTPError):
                last = f"cannot reach Cumulocity: {type(outcome).__name__}: {_reason(outcome)}"
            elif isinstance(outcome, httpx.Response):
                if outcome.status_code == 401 and self.tokens is not None and not renewed:
                    # Expired or revoked: ask for a new token now (device-certificates.md).
                    renewed = True
                    last = "token renewed"
                    log.info("%s: Cumulocity refused the device token (401); renewing it", what)
                    self.tokens.invalidate()
                    attempt -= 1
                    continue
                if outcome.status_code in (401, 403):
                    raise self._refused(outcome, what)
                if outcome.status_code not in RETRY_STATUS:
                    return outcome
                last = f"{outcome.status_code} {_error_message(outcome)}"
            else:
                raise TypeError(f"a Send is answered with a response or an error, not {outcome!r}")
            if attempt < self._attempts:
                log.info("%s (%s %s): %s; attempt %d of %d", what, method, url, last, attempt,
                         self._attempts)
        raise RestError(f"{what}: {last} ({method} {url}, {self._attempts} attempts)")

    def _refused(self, response: httpx.Response, what: str) -> RestRefusedError:
        if response.status_code == 401 and self.tokens is not None:
            return RestRefusedError(
                "Cumulocity refused the device token (401) also after renewing it: check that "
                "the device's certificate is registered in the tenant"
            )
        if response.status_code == 401:
            return RestRefusedError(
                f"Cumulocity refused the login of {self.username} (401): check tenantID, user "
                "and password"
            )
        return RestRefusedError(
            f"{what}: Cumulocity refused it to {self.username} (403 {_error_message(response)}): "
            "the user lacks a role (identity and inventory read, or admin for updates)", 403
        )

    def managed_object_id(self, serial: str) -> Exchange[str | None]:
        """The managed object of a c8y_Serial external id, or None when there is none (404)."""
        what = f"identity look-up of {serial}"
        url = f"/identity/externalIds/c8y_Serial/{quote(serial, safe='')}"
        response = yield from self.request("GET", url, what)
        if response.status_code == 404:
            return None
        _check(response, what)
        body = _json(response, what)
        try:
            return str(body["managedObject"]["id"])
        except (KeyError, TypeError):
            raise RestError(f"{what}: no managedObject.id in the answer") from None

    def managed_object(self, mo_id: str, *, forbidden_is_none: bool = False) -> Exchange[
        dict[str, Any] | None
    ]:
        """A managed object, or None when it is gone (404: a deleted button still has events),
        and with `forbidden_is_none` also when the user may not read it (403: device users
        usually read only the objects they own, docs/protocol.md 3.1)."""
        what = f"reading managed object {mo_id}"
        try:
            response = yield from self.request(
                "GET", f"/inventory/managedObjects/{quote(mo_id, safe='')}", what)
        except RestRefusedError as exc:
            if forbidden_is_none and exc.status == 403:
                log.info("%s: not readable by this user (403)", what)
                return None
            raise
        if response.status_code == 404:
            return None
        _check(response, what)
        body = _json(response, what)
        return body if isinstance(body, dict) else None

    def update_managed_object(self, mo_id: str, fragments: Mapping[str, Any]) -> Exchange[None]:
        """PUT only the fragments (never the name: "Do not update the name of a device from an
        agent!", docs/protocol.md 3.3)."""
        what = f"updating managed object {mo_id}"
        response = yield from self.request(
            "PUT",
            f"/inventory/managedObjects/{quote(mo_id, safe='')}",
            what,
            json=dict(fragments),
            headers={"Content-Type": "application/vnd.com.nsn.cumulocity.managedobject+json"},
        )
        _check(response, what)

    def get_json(self, url: str, what: str, params: Mapping[str, str | int]) -> Exchange[Any]:
        """GET a collection (e.g. `/event/events`) and its JSON body; any non-2xx is an error."""
        response = yield from self.request("GET", url, what, params=dict(params))
        _check(response, what)
        return _json(response, what)


# The two clients differ in their httpx client, its transport and how they wait; the rest of
# the constructor is one (it was two twins, one per client).
_Http = TypeVar("_Http", httpx.Client, httpx.AsyncClient)
_Transport = TypeVar("_Transport", httpx.BaseTransport, httpx.AsyncBaseTransport)
_Sleep = TypeVar("_Sleep", Callable[[float], None], Callable[[float], Awaitable[None]])


class _Client(Generic[_Http, _Transport, _Sleep]):
    """What both clients share: the calls, the httpx client's options, and the constructor."""

    def __init__(
        self,
        base_url: str,
        username: str,
        password: str | None,
        *,
        verify: ssl.SSLContext | bool = True,
        timeout: httpx.Timeout = TIMEOUT,
        sleep: _Sleep | None = None,
        attempts: int = ATTEMPTS,
        backoff: float = BACKOFF,
        transport: _Transport | None = None,
        tokens: TokenSource | None = None,
        jitter: Callable[[], float] = random.random,
    ) -> None:
        """`tokens`: a certificate device's JWT source; REST does not authenticate with the
        client certificate, so without a password every call sends `Bearer <token>`. `sleep`:
        how the retries wait (default: `time.sleep`, or `asyncio.sleep` on the loop);
        `transport`: httpx's (tests). Opens no connection."""
        tokens = tokens if password is None else None
        shown = username if password is not None or tokens is None else "device token"
        self.calls = RestCalls(shown, tokens, attempts=attempts, backoff=backoff, jitter=jitter)
        self._http_options: dict[str, Any] = {
            "base_url": base_url,
            "auth": httpx.BasicAuth(username, password) if password is not None else None,
            "timeout": timeout,
            "verify": verify,
            # Devices must not send X-Cumulocity-Application-Key (docs/protocol.md 3.1).
            "headers": {"Accept": "application/json"},
        }
        self._client: _Http = self._open(transport, self._http_options)
        self._sleep: _Sleep = sleep if sleep is not None else self._default_sleep()

    def _open(self, transport: _Transport | None, options: dict[str, Any]) -> _Http:
        raise NotImplementedError  # pragma: no cover - each client has its own

    def _default_sleep(self) -> _Sleep:
        raise NotImplementedError  # pragma: no cover - each client has its own

    @classmethod
    def from_settings(cls, c8y: C8yMqttSettings, **kwargs: Any) -> Self:
        """The client for `[C8YMQTT]`: rest_url, `tenantID/user`, and the same TLS as MQTT; a
        certificate-only config needs `tokens=` (a `TokenSource`) for its Bearer token."""
        from dashkanban.c8y.tls import rest_verify

        password = c8y.password.reveal() if c8y.password is not None else None
        return cls(c8y.rest_url, c8y.username, password, verify=rest_verify(c8y), **kwargs)

    @property
    def requests(self) -> int:
        """HTTP requests made, retries included."""
        return self.calls.requests


class CumulocityRest(_Client[httpx.Client, httpx.BaseTransport, Callable[[float], None]]):
    """The blocking client (commands, replay). Opens no connection until the first call.

    Thread-safe as far as httpx.Client is (one connection pool; calls may come from any thread).
    """

    def _open(self, transport: httpx.BaseTransport | None,
              options: dict[str, Any]) -> httpx.Client:
        return httpx.Client(transport=transport, **options)

    def _default_sleep(self) -> Callable[[float], None]:
        return time.sleep

    def close(self) -> None:
        self._client.close()

    def __enter__(self) -> CumulocityRest:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def run(self, exchange: Exchange[_T]) -> _T:
        """Carry out an exchange: its requests on this client, its waits with `sleep`."""
        outcome: Outcome = None
        with contextlib.closing(exchange):  # an exchange left half-way is closed, not leaked
            while True:
                try:
                    step = exchange.send(outcome)
                except StopIteration as done:
                    result: _T = done.value
                    return result
                if isinstance(step, Wait):
                    self._sleep(step.seconds)
                    outcome = None
                    continue
                try:
                    authorization = step.bearer.authorization() if step.bearer else None
                    outcome = self._client.request(step.method, step.url,
                                                   **step.with_authorization(authorization))
                except (httpx.HTTPError, TokenError) as exc:
                    outcome = exc

    def request(self, method: str, url: str, what: str, **kwargs: Any) -> httpx.Response:
        """`RestCalls.request`: any answer that is neither retryable nor a refusal."""
        return self.run(self.calls.request(method, url, what, **kwargs))

    def managed_object_id(self, serial: str) -> str | None:
        return self.run(self.calls.managed_object_id(serial))

    def managed_object(self, mo_id: str, *, forbidden_is_none: bool = False) -> (
        dict[str, Any] | None
    ):
        return self.run(self.calls.managed_object(mo_id, forbidden_is_none=forbidden_is_none))

    def update_managed_object(self, mo_id: str, fragments: Mapping[str, Any]) -> None:
        self.run(self.calls.update_managed_object(mo_id, fragments))

    def get_json(self, url: str, what: str, params: Mapping[str, str | int]) -> Any:
        return self.run(self.calls.get_json(url, what, params))


class AsyncCumulocityRest(_Client[httpx.AsyncClient, httpx.AsyncBaseTransport,
                                  Callable[[float], Awaitable[None]]]):
    """The client on the daemon's event loop: the same calls (`RestCalls`) over
    httpx.AsyncClient, waits with `asyncio.sleep`. Opens no connection until the first call;
    close it with `await aclose()` on the loop that used it."""

    def _open(self, transport: httpx.AsyncBaseTransport | None,
              options: dict[str, Any]) -> httpx.AsyncClient:
        return httpx.AsyncClient(transport=transport, **options)

    def _default_sleep(self) -> Callable[[float], Awaitable[None]]:
        return asyncio.sleep

    async def aclose(self) -> None:
        await self._client.aclose()

    async def __aenter__(self) -> AsyncCumulocityRest:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def run(self, exchange: Exchange[_T]) -> _T:
        """Carry out an exchange on the loop (a cancelled caller aborts the request under way)."""
        outcome: Outcome = None
        with contextlib.closing(exchange):  # also when cancelled half-way
            while True:
                try:
                    step = exchange.send(outcome)
                except StopIteration as done:
                    result: _T = done.value
                    return result
                if isinstance(step, Wait):
                    await self._sleep(step.seconds)
                    outcome = None
                    continue
                try:
                    authorization = await _authorization(step.bearer) if step.bearer else None
                    outcome = await self._client.request(step.method, step.url,
                                                         **step.with_authorization(authorization))
                except (httpx.HTTPError, TokenError) as exc:
                    outcome = exc

    async def request(self, method: str, url: str, what: str, **kwargs: Any) -> httpx.Response:
        return await self.run(self.calls.request(method, url, what, **kwargs))

    async def managed_object_id(self, serial: str) -> str | None:
        return await self.run(self.calls.managed_object_id(serial))

    async def managed_object(self, mo_id: str, *, forbidden_is_none: bool = False) -> (
        dict[str, Any] | None
    ):
        return await self.run(self.calls.managed_object(mo_id,
                                                        forbidden_is_none=forbidden_is_none))

    async def update_managed_object(self, mo_id: str, fragments: Mapping[str, Any]) -> None:
        await self.run(self.calls.update_managed_object(mo_id, fragments))


async def _authorization(tokens: TokenSource) -> str:
    """The device token's header without blocking the loop: a valid token is there at once;
    otherwise `authorization` waits (up to token.WAIT) for the uplink's answer on `s/dat`, a
    blocking wait handed off to a worker thread."""
    if not tokens.due():
        return tokens.authorization()
    return await asyncio.to_thread(tokens.authorization)


def _reason(exc: httpx.HTTPError) -> str:
    """httpx's text, or the system's reason where httpx's async backend hides it behind "All
    connection attempts failed": both clients then say e.g. "[Errno 111] Connection refused"."""
    reason = str(exc)
    cause: BaseException | None = exc
    for _ in range(8):  # a bounded walk down the chain of causes
        if cause is None:
            break
        if (isinstance(cause, OSError) and not isinstance(cause, ssl.SSLError)
                and isinstance(cause.errno, int) and cause.errno > 0):
            reason = f"[Errno {cause.errno}] {os.strerror(cause.errno)}"
        cause = cause.__cause__ or cause.__context__
    return reason


def _check(response: httpx.Response, what: str) -> None:
    if not response.is_success:
        raise RestError(f"{what}: {response.status_code} {_error_message(response)}")


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


class RestInventoryLookup:
    """`(mac) -> Button | None` backed by Cumulocity's identity API, with a cache.

    Two ways to ask, one look-up (`_look_up`, an exchange): `source(mac)` blocks (replay asks
    synchronously: packet time is its clock), `await source.look_up(mac)` runs on the daemon's
    event loop (`inventory.LookupQueue`). `cached(mac)` never waits. No network until the first
    call.
    """

    def __init__(
        self,
        settings: Settings,
        *,
        rest: CumulocityRest | None = None,
        async_rest: AsyncCumulocityRest | None = None,
        clock: Callable[[], float] = time.monotonic,
        tokens: TokenSource | None = None,
    ) -> None:
        """`tokens`: the daemon's device-token source, for a certificate-only config."""
        self._settings = settings
        self._rest = rest
        self._async_rest = async_rest
        self._tokens = tokens
        self._clock = clock
        self._ttl = settings.buttons.cache_ttl
        self._cache: dict[str, _Entry] = {}
        self._closed_requests = 0  # made by async clients closed since
        # Only around the cache, never an HTTP call. `run` uses it from the loop only; the lock
        # keeps a caller on another thread safe and costs nothing on one loop.
        self._lock = threading.Lock()

    def _token_source(self) -> TokenSource | None:
        if self._tokens is None and self._settings.c8y.password is None:
            self._tokens = token_source_for(self._settings)
        return self._tokens

    @property
    def rest(self) -> CumulocityRest:
        if self._rest is None:
            self._rest = CumulocityRest.from_settings(self._settings.c8y,
                                                      tokens=self._token_source())
        return self._rest

    @property
    def async_rest(self) -> AsyncCumulocityRest:
        if self._async_rest is None:
            self._async_rest = AsyncCumulocityRest.from_settings(self._settings.c8y,
                                                                 tokens=self._token_source())
        return self._async_rest

    @property
    def requests(self) -> int:
        return self._closed_requests + sum(
            client.requests for client in (self._rest, self._async_rest) if client is not None)

    def close(self) -> None:
        """Close the blocking client (the async one: `aclose`, on its loop)."""
        if self._rest is not None:
            self._rest.close()

    async def aclose(self) -> None:
        if self._async_rest is not None:
            client, self._async_rest = self._async_rest, None  # a later loop makes a new one
            self._closed_requests += client.requests
            await client.aclose()

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
        rest = self.rest
        return self._remember(mac, rest.run(self._look_up(mac, rest.calls)))

    async def look_up(self, mac: str) -> Button | None:
        """`source(mac)` on the event loop; the same answers, errors and cache."""
        answer = self.cached(mac)
        if not isinstance(answer, _Miss):
            return answer
        rest = self.async_rest
        return self._remember(mac, await rest.run(self._look_up(mac, rest.calls)))

    def _remember(self, mac: str, button: Button | None) -> Button | None:
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

    def _look_up(self, mac: str, calls: RestCalls) -> Exchange[Button | None]:
        serial = serial_of(mac)
        mo_id = yield from calls.managed_object_id(serial)
        if mo_id is None:
            log.info("%s (c8y_Serial %s) is not in Cumulocity's inventory", mac, serial)
            return None
        # A device user usually may not read a button it does not own (403): the serial is the
        # name then, as for a deleted one (404), instead of retrying for 10 minutes.
        managed = yield from calls.managed_object(mo_id, forbidden_is_none=True)
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

