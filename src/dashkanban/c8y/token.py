"""The device token (JWT) a certificate device needs for Cumulocity's REST API.

REST does not authenticate with a TLS client certificate: a certificate device subscribes to
`s/dat`, publishes an empty message on `s/uat`, receives `71,<JWT>` and sends
`Authorization: Bearer <JWT>`. A token lasts `device-token.lifespan.seconds` (1 h by default, at
least 5 min), and a new one may be fetched once half of its lifetime has passed
(c8y-docs `device-certificates.md`, "JWT token retrieval"; docs/protocol.md 1.8 and 3.1).

`TokenSource` holds the token for the one REST client (`c8y/rest.py`): it asks for a new one at
half the lifetime, and at once after a 401 (`invalidate`). How a token is asked for is given to it
(`request`): the uplink publishes on `s/uat` on its connection and hands the answer to `offer`;
a command without an uplink uses `fetch_token` (one short MQTT connection). The token is a secret:
it never appears in a log line or an exception message.
"""

from __future__ import annotations

import base64
import binascii
import json
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from dashkanban.errors import UplinkError

if TYPE_CHECKING:
    from dashkanban.config import Settings

log = logging.getLogger(__name__)

TOKEN_REQUEST_TOPIC = "s/uat"  # noqa: S105 - topic names, not secrets
TOKEN_TOPIC = "s/dat"  # noqa: S105
JWT_LINE_ID = "71"  # the template id of `71,<token>`
# "The default value is 1 hour" (device-certificates.md): used when the JWT says nothing.
DEFAULT_LIFETIME = 3600.0
RENEW_FRACTION = 0.5  # "if it request a JWT token after half of the token's lifetime has passed"
WAIT = 30.0  # seconds a REST call waits for a token before it fails


class TokenError(UplinkError):
    """No device token: the uplink is down, or Cumulocity did not answer `s/uat`."""


@dataclass(frozen=True, slots=True)
class _Token:
    value: str
    renew_at: float  # monotonic


def token_line(payload: str) -> str | None:
    """The JWT of an `s/dat` line `71,<token>`, else None."""
    template, _, rest = payload.strip().partition(",")
    if template != JWT_LINE_ID or not rest.strip():
        return None
    return rest.strip().strip('"')


def lifetime_of(jwt: str) -> float:
    """Seconds the token lives, from its `iat`/`exp` claims (read, not verified: only Cumulocity
    can verify it); DEFAULT_LIFETIME when it does not say."""
    parts = jwt.split(".")
    if len(parts) != 3:
        return DEFAULT_LIFETIME
    try:
        claims = json.loads(base64.urlsafe_b64decode(parts[1] + "=" * (-len(parts[1]) % 4)))
    except (binascii.Error, ValueError, UnicodeDecodeError):
        return DEFAULT_LIFETIME
    if not isinstance(claims, dict):
        return DEFAULT_LIFETIME
    iat, exp = claims.get("iat"), claims.get("exp")
    if isinstance(iat, int | float) and isinstance(exp, int | float) and exp > iat:
        return float(exp - iat)
    return DEFAULT_LIFETIME


class TokenSource:
    """The current device token; thread-safe. `request()` is called (from any thread) whenever a
    new token is needed; whoever gets the answer calls `offer(jwt)`."""

    def __init__(self, request: Callable[[], None] | None = None, *,
                 clock: Callable[[], float] = time.monotonic, wait: float = WAIT) -> None:
        self._request = request
        self._clock = clock
        self._wait = wait
        self._cond = threading.Condition()
        self._token: _Token | None = None
        self._asked_at: float | None = None
        # Why the request in flight could not be sent because of a bug (`request_failed`): a
        # waiter is told at once instead of waiting out `wait`. Cleared by the next request or
        # token. A request lost with its connection is `forget_request` instead.
        self._failure: str | None = None
        self.received = 0  # tokens offered, for `check` and tests

    def set_request(self, request: Callable[[], None]) -> None:
        with self._cond:
            self._request = request

    def offer(self, jwt: str) -> None:
        lifetime = lifetime_of(jwt)
        with self._cond:
            self._token = _Token(jwt, self._clock() + lifetime * RENEW_FRACTION)
            self._asked_at = None
            self._failure = None
            self.received += 1
            self._cond.notify_all()
        log.info("device token received (valid %d s; renewed after %d s)", lifetime,
                 lifetime * RENEW_FRACTION)

    def request_failed(self, reason: str) -> None:
        """The request just made could not be sent, and no reconnect will change that (its
        publish failed with a bug): a caller waiting in `authorization` gets TokenError(reason)
        at once, and the next call asks again. A connection error is `forget_request`."""
        with self._cond:
            self._asked_at = None
            self._failure = reason
            self._cond.notify_all()

    def forget_request(self) -> None:
        """No answer can come to the request in flight: it could not be started or sent (the
        connection is down or dropping), or its connection is gone (the answer is QoS 0 on that
        connection only). The next `renew_if_due` (the uplink's next connect) asks again; a
        waiter keeps waiting, up to its `wait`, for that answer instead of for one that will
        not come."""
        with self._cond:
            self._asked_at = None

    def invalidate(self) -> None:
        """Cumulocity refused the token (401): ask for a new one at once."""
        with self._cond:
            self._token = None
            self._asked_at = None
        self._ask()

    def due(self) -> bool:
        """True when there is no token or it is past half its lifetime."""
        with self._cond:
            return self._token is None or self._clock() >= self._token.renew_at

    def renew_if_due(self) -> None:
        """Ask for a new token when it is due (the uplink calls this on its timer)."""
        if self.due():
            self._ask()

    def authorization(self) -> str:
        """`Bearer <jwt>`, asking for a token first if needed; waits up to `wait` seconds for
        one. The old token stays usable until the new one arrives (it lives twice as long)."""
        self.renew_if_due()
        deadline = self._clock() + self._wait
        with self._cond:
            while self._token is None:
                if self._failure is not None:
                    raise TokenError(self._failure)
                remaining = deadline - self._clock()
                if remaining <= 0:
                    raise TokenError(
                        f"no device token from Cumulocity within {self._wait:g} s (s/uat "
                        "unanswered, or the MQTT connection is down): REST needs one with a "
                        "client certificate")
                self._cond.wait(min(remaining, 0.5))
            return f"Bearer {self._token.value}"

    def _ask(self) -> None:
        with self._cond:
            request = self._request
            now = self._clock()
            # One request in flight at a time; ask again if no answer came within `wait`.
            pending = self._asked_at is not None and now - self._asked_at < self._wait
            if request is None or pending:
                return
            self._asked_at = now
            self._failure = None
        log.debug("asking Cumulocity for a device token (s/uat)")
        try:
            request()
        except (UplinkError, OSError, RuntimeError) as exc:  # the uplink may be down: ask later
            log.info("cannot ask for a device token now: %s", exc)
            with self._cond:
                self._asked_at = None


def fetch_token(settings: Settings, timeout: float = WAIT) -> str:
    """One short MQTT connection with the gateway's client id and certificate: subscribe
    `s/dat`, publish an empty `s/uat` (QoS 0, as thin-edge does: a stale request must not be
    replayed), return the JWT. For commands that run without the daemon's uplink; like `check`,
    it takes over the gateway's connection for that moment."""
    import paho.mqtt.client as paho
    from paho.mqtt.enums import MQTTErrorCode

    from dashkanban.c8y.protocol import LoginRefusedError, connack_code

    c8y = settings.c8y
    address = f"{c8y.tenant}:{c8y.port}"
    client = _paho_client(settings, settings.gateway.serial)
    got: list[str] = []
    refused: list[int] = []

    def on_connect(c: paho.Client, _u: object, _f: object, reason: object, _p: object) -> None:
        code = connack_code(reason)
        if code != 0:
            refused.append(code)
            return
        c.subscribe(TOKEN_TOPIC, qos=0)

    def on_subscribe(c: paho.Client, *_args: object) -> None:
        c.publish(TOKEN_REQUEST_TOPIC, b"", qos=0)

    def on_message(_c: paho.Client, _u: object, message: paho.MQTTMessage) -> None:
        jwt = token_line(message.payload.decode("utf-8", errors="replace"))
        if jwt is not None:
            got.append(jwt)

    client.on_connect = on_connect
    client.on_subscribe = on_subscribe
    client.on_message = on_message
    try:
        client.connect(c8y.tenant, c8y.port, keepalive=c8y.keepalive)
    except OSError as exc:
        raise TokenError(f"cannot connect to {address} for a device token: {exc}") from None
    try:
        deadline = time.monotonic() + timeout
        while not got and not refused and time.monotonic() < deadline:
            if client.loop(timeout=0.2) != MQTTErrorCode.MQTT_ERR_SUCCESS:
                raise TokenError(f"{address} closed the connection before sending a token")
        if refused:
            raise LoginRefusedError(refused[0], address, None)
        if not got:
            raise TokenError(f"no device token on s/dat from {address} within {timeout:g} s")
        return got[0]
    finally:
        client.disconnect()
        client.loop(timeout=0)


def _paho_client(settings: Settings, client_id: str) -> Any:
    """A paho client for the one short connection of `fetch_token` (no network yet): MQTT
    3.1.1, clean session, TLS, credentials. A blocking one-shot tool, not the daemon's uplink."""
    import paho.mqtt.client as paho
    from paho.mqtt.enums import CallbackAPIVersion

    from dashkanban.c8y.tls import make_tls_context

    c8y = settings.c8y
    client = paho.Client(CallbackAPIVersion.VERSION2, client_id=client_id,
                         protocol=paho.MQTTv311, clean_session=True,  # docs/protocol.md 1.4
                         reconnect_on_failure=False)
    if c8y.tls:
        client.tls_set_context(make_tls_context(c8y))
    if c8y.password is not None:
        client.username_pw_set(c8y.username, c8y.password.reveal())
    return client


# The uplink's token source per gateway serial: inside the daemon the REST client asks the running
# uplink (its connection publishes `s/uat`) instead of opening a second connection with the same
# client id, which Cumulocity would answer by closing the first (docs/protocol.md 1.3).
_UPLINK_SOURCES: dict[str, TokenSource] = {}
_REGISTRY_LOCK = threading.Lock()


def register(serial: str, source: TokenSource) -> None:
    with _REGISTRY_LOCK:
        _UPLINK_SOURCES[serial] = source


def unregister(serial: str, source: TokenSource) -> None:
    with _REGISTRY_LOCK:
        if _UPLINK_SOURCES.get(serial) is source:
            del _UPLINK_SOURCES[serial]


def token_source_for(settings: Settings) -> TokenSource:
    """The running uplink's token source for this gateway if there is one; else one for a
    command without the daemon's uplink, where each request runs `fetch_token` on a thread of its
    own (a REST call waits for it in `authorization`)."""
    with _REGISTRY_LOCK:
        running = _UPLINK_SOURCES.get(settings.gateway.serial)
    if running is not None:
        return running
    source = TokenSource()

    def fetch() -> None:
        try:
            source.offer(fetch_token(settings))
        except UplinkError as exc:
            log.warning("no device token: %s", exc)

    source.set_request(lambda: threading.Thread(target=fetch, name="device-token",
                                                daemon=True).start())
    return source
