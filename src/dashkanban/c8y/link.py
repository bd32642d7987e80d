"""One MQTT connection to Cumulocity for one client id, on the event loop (aiomqtt).

`Link.run()` connects for ever (or, for a one-shot command, until `max_refusals` refusals in a
row), with the one backoff of backoff.py, and after each CONNACK says what Cumulocity expects
(docs/protocol.md 1.10, recommended order):

    PUBLISH 100 (QoS 1) -> PUBACK -> SUBSCRIBE s/ds, s/e, ... -> SUBACK (a 0x80 is retried)
    -> template collections -> 114, 117 (gateway) -> 500 -> ready (-> s/uat for a token)

Every connection is a fresh client with a clean session (docs/protocol.md 1.4): nothing the broker
had is kept, and a re-send of what was in flight is the caller's (the Courier sends it again from
the outbox; thin-edge#3713 is the trap of letting the client do it as well).

`send()` starts the PUBLISHes of one outbox row at once and in order (each is a task whose first
step hands the packet to paho, and tasks start in the order they were made), and returns a
future that completes when every PUBLISH of the row has its PUBACK, or fails with
`ConnectionLostError` when the connection ends first. Inbound lines are dispatched on the loop:
`s/e` errors attributed to our lines (protocol.blame), operations, the `s/dat` token, and the
`s/dt` answers about template collections.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import math
import socket
import ssl
import sys
import time
from collections import deque
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import aiomqtt
from aiomqtt.exceptions import MqttCodeError, MqttConnectError
from paho.mqtt.reasoncodes import ReasonCode

from dashkanban.backoff import Backoff
from dashkanban.c8y.protocol import (
    _CONNACK,
    TRANSIENT_CONNACK,
    LoginRefusedError,
    Outgoing,
    Refusal,
    SentLine,
    TlsFailedError,
    UnreachableError,
    UnsendableError,
    blame,
    check_size,
    connack_code,
    connack_meaning,
    describe_error_line,
    describe_refusal,
    event_messages,
    expected_error,
    lines_messages,
    payload_lines,
)
from dashkanban.c8y.smartrest import SmartRestLine, decode, encode_line
from dashkanban.c8y.tls import describe_tls_failure
from dashkanban.c8y.token import TOKEN_REQUEST_TOPIC, TOKEN_TOPIC, TokenSource, token_line
from dashkanban.config import Settings
from dashkanban.detect.events import Event
from dashkanban.errors import UplinkError
from dashkanban.safetext import escape_controls
from dashkanban.values import DeviceLine

log = logging.getLogger(__name__)

QOS = 1
# Seconds for the CONNACK (and a SUBACK) to come: a broker that accepts TCP and then says
# nothing is transport trouble, retried with backoff.
CONNECT_TIMEOUT = 10.0
# A refused SUBSCRIBE (SUBACK 0x80, seen on brand-new device users) is retried this many times.
SUBSCRIBE_ATTEMPTS = 5
SUBSCRIBE_RETRY = 1.0
# The heartbeat (`125`, docs/protocol.md 2.3) goes out when the gateway published nothing on its own
# topic for this fraction of its required interval (`117`): Cumulocity marks a device unavailable
# when it sent nothing for the whole interval, and a quiet store is the normal case. Half leaves a
# full beat of margin for a reconnect or a late timer.
HEARTBEAT_FRACTION = 0.5
HEARTBEAT = "125"
# `117` sets the interval only when the device has none, so the tenant's interval may be shorter
# than ours (set in the UI) or exist although we send none: the beat does not rely on our setting
# and comes at least every 5 minutes (mqtt-static-templates.md 117; device-availability.md).
HEARTBEAT_MAX = 300.0
# Lines kept per connection to attribute `s/e` errors to (protocol.blame): ten full windows of
# the Courier; an error comes within a round trip or two of its line.
SENT_RING = 1000
TEMPLATE_STATUS_TOPIC = "s/dt"
# What a PUBLISH legitimately fails with when its connection fails or drops: aiomqtt's errors
# (MqttCodeError "not currently connected" when paho has lost the socket, its timeouts) and the
# socket's own (OSError; ssl.SSLError is one). The same everywhere: a row's PUBLISH, the link's own
# start-up PUBLISHes and SUBSCRIBEs (`_on_this_connection`), the token request. Anything else is a
# bug: it ends `run` with exit 1 (issue 11) instead of becoming a lost connection whose row is sent
# again for ever.
CONNECTION_ERRORS: tuple[type[Exception], ...] = (aiomqtt.MqttError, OSError)

OperationHandler = Callable[[SmartRestLine], None]
RefusalListener = Callable[[Refusal], None]
LinkState = Literal["connecting", "connected", "refused", "unreachable", "gave up"]


def heartbeat_period(required_interval: int) -> float:
    """Seconds between heartbeats of an idle gateway: at most 5 minutes and at most half of
    `required_interval` (minutes); 5 minutes when it is 0 (we send no `117`, the tenant may
    still have an interval)."""
    if required_interval <= 0:
        return HEARTBEAT_MAX
    return min(HEARTBEAT_MAX, required_interval * 60 * HEARTBEAT_FRACTION)


def availability_lines(required_interval: int) -> tuple[str, ...]:
    """`117,<minutes>`, or nothing for 0: a `responseInterval` <= 0 puts the device into
    MAINTENANCE (device-availability.md), so `117,0` is never sent."""
    if required_interval <= 0:
        return ()
    return (encode_line(117, required_interval),)


class ConnectionLostError(UplinkError):
    """The connection ended before every PUBLISH of a row had its PUBACK: its fate is unknown,
    and the Courier sends the row again from the outbox."""


@contextlib.asynccontextmanager
async def _on_this_connection() -> AsyncIterator[None]:
    """Around the link's own awaited PUBLISHes and SUBSCRIBEs: a socket error there (OSError) is
    a lost connection, as for a row's PUBLISH (CONNECTION_ERRORS), retried with backoff. Only
    here: `_serve` cannot tell an OSError from a bug that `_crash` put into its group (a
    PermissionError of a handler, say), which must end `run` (issue 11)."""
    try:
        yield
    except OSError as exc:
        raise ConnectionLostError(str(exc) or type(exc).__name__) from exc


@dataclass(frozen=True, slots=True)
class LinkHealth:
    """What one connection is doing, for `outbox status` and the metrics (no secrets)."""

    client_id: str
    state: LinkState
    since: float  # wall clock (epoch seconds) when this state began
    attempts: int  # failed connection attempts in a row (0 while connected)
    refusals: int  # refused logins since start
    last_error: str | None
    retry_at: float | None  # wall clock of the next attempt, when waiting for one
    reason: str | None = None  # why refused, in words: "bad user name or password, CONNACK 4"


@dataclass(frozen=True, slots=True)
class LinkPlan:
    """What one link says after each connect."""

    client_id: str
    hello: str  # the 100 line
    after_subscribe: tuple[str, ...]  # e.g. 114, 117, 500
    gateway: bool
    subscriptions: tuple[str, ...] = ("s/ds", "s/e")
    startup: tuple[Outgoing, ...] = ()  # published after the SUBACK, before after_subscribe
    heartbeat: float | None = None  # seconds without a publish on s/us before a `125`
    # Template collections to create only when the existence check says they are missing:
    # `s/ut/<X-ID>` with its templates (the start-up publishes only the empty question).
    templates: tuple[Outgoing, ...] = ()
    token: bool = False  # a certificate login: ask for the REST token (s/uat) after the SUBACK

    @property
    def collections(self) -> frozenset[str]:
        """The X-IDs of the template collections published at start-up (`s/ut/<X-ID>`)."""
        return frozenset(m.topic[5:] for m in self.startup if m.topic.startswith("s/ut/"))


def ensure_collections(startup: Sequence[Outgoing]) -> tuple[tuple[Outgoing, ...],
                                                              tuple[Outgoing, ...]]:
    """(start-up publishes, templates): each `s/ut/<X-ID>` with templates becomes the empty
    existence question, and its templates are kept for when the answer is `41,<X-ID>`. A
    collection "can no longer be modified through MQTT" after it is created, and an empty publish
    on `s/ut/<X-ID>` answers `20,<X-ID>,<id>` or `41,<X-ID>` on `s/dt` (docs/protocol.md 2.1)."""
    asked = tuple(Outgoing(m.topic, "") if m.topic.startswith("s/ut/") else m for m in startup)
    templates = tuple(m for m in startup if m.topic.startswith("s/ut/") and m.payload)
    return asked, templates


def collections_existing(payload: str, templates: Sequence[Outgoing]) -> list[str]:
    """The X-IDs of our collections that the `s/dt` answers in `payload` say exist (`20`)."""
    ours = {m.topic[5:] for m in templates}
    return [line.field(0) for line in decode(payload)
            if line.template == "20" and line.field(0) in ours]


def collections_to_create(payload: str, templates: Sequence[Outgoing]) -> list[Outgoing]:
    """The templates to publish for the `s/dt` answers in `payload` (the `41,<X-ID>` ones)."""
    wanted = {m.topic[5:]: m for m in templates}
    create = []
    for line in decode(payload):
        xid = line.field(0)
        if line.template == "41" and xid in wanted:
            create.append(wanted[xid])
        elif line.template == "20":
            log.info("Cumulocity: template collection %s exists (%s)", xid, line.field(1))
    return create


class _Client(aiomqtt.Client):
    """aiomqtt's client with two things it loses kept (both are what a log line needs):

    - the exception of a failed TCP/TLS connect (aiomqtt turns every OSError into a plain
      MqttError with its text; a refused certificate must be told from a handshake cut short);
    - an end of the connection before any CONNACK. paho 2 swallows CONNACK 1 when it may not
      reconnect by itself: it ends the connection with a protocol error instead of calling
      on_connect (client.py, _handle_connack: its MQTT 3.1 downgrade), and aiomqtt then waits
      for a CONNACK that never comes until its timeout.
    """

    connect_error: BaseException | None = None
    closed_before_connack: ReasonCode | int | None = None
    # Inbound messages go here at once, in the order they came off the wire, instead of into
    # aiomqtt's queue: an `s/e` error must be read before the PUBACK read after it (protocol.blame
    # tells a line still waiting for its PUBACK from an acknowledged one). Runs on the loop
    # (aiomqtt reads the socket with add_reader).
    dispatch: Callable[[str, bytes], None] | None = None

    # Told of each PUBACK as it is read, in wire order, for the same reason.
    acked: Callable[[], None] | None = None

    def _on_publish(self, client: Any, userdata: Any, mid: int,
                    reason_code: Any, properties: Any) -> None:
        if self.acked is not None:
            self.acked()
        super()._on_publish(client, userdata, mid, reason_code, properties)

    def _on_subscribe(self, client: Any, userdata: Any, mid: int, reason_codes: Any,
                      properties: Any = None) -> None:
        # A SUBACK for a subscribe no longer awaited: the link stopped (SIGTERM, a test's stop)
        # while it was in flight, which cancels the wait. aiomqtt logs that at ERROR with a
        # traceback; it is expected, so it is a DEBUG line here.
        if mid not in self._pending_subscribes:
            log.debug("SUBACK %d for a subscribe no longer awaited (the link stopped)", mid)
            return
        super()._on_subscribe(client, userdata, mid, reason_codes, properties)

    def _on_message(self, client: Any, userdata: Any,
                    message: Any) -> None:
        if self.dispatch is None:
            super()._on_message(client, userdata, message)
            return
        self.dispatch(str(message.topic), bytes(message.payload))

    # Set (on the loop) when the blocking connect on aiomqtt's executor thread has finished, with
    # or without a socket: a cancelled connect must not leave one behind (`_abandon`).
    connect_finished: asyncio.Event | None = None

    def _client_connect(self) -> None:
        try:
            super()._client_connect()
        except OSError as exc:  # runs on aiomqtt's executor thread; read after the await
            self.connect_error = exc
            raise
        finally:
            if self.connect_finished is not None:
                self._loop.call_soon_threadsafe(self.connect_finished.set)

    def _on_disconnect(self, client: Any, userdata: Any, flags: Any,
                       reason_code: ReasonCode, properties: Any = None) -> None:
        if not self._connected.done():
            self.closed_before_connack = reason_code
            self._connected.set_exception(aiomqtt.MqttError("closed before CONNACK"))
            # Marked as read: a connect that already gave up (its timeout replaced the future,
            # or a stop abandoned it) no longer awaits it, and asyncio would log "Future
            # exception was never retrieved" at ERROR; a connect still waiting gets it as ever.
            self._connected.exception()
            return
        if self._connected.cancelled():
            # A stop while waiting for the CONNACK cancelled it (asyncio.wait_for cancels what it
            # waits for); aiomqtt would raise that CancelledError into paho, and the socket would
            # never be closed.
            return
        super()._on_disconnect(client, userdata, flags, reason_code, properties)


@dataclass(eq=False, slots=True)  # kept in a set by identity
class _Row:
    """The PUBLISHes of one `send`: done when all have their PUBACK."""

    future: asyncio.Future[None]
    left: int


class Link:
    """One MQTT connection for one client id: connect, say hello, stay up, carry PUBLISHes."""

    def __init__(self, settings: Settings, plan: LinkPlan, context: ssl.SSLContext | None, *,
                 backoff: Backoff, refusal_backoff: Backoff, max_refusals: int | None = None,
                 on_state: Callable[[], None] | None = None,
                 on_operation: OperationHandler | None = None,
                 on_refused: RefusalListener | None = None,
                 tokens: TokenSource | None = None) -> None:
        self._settings = settings
        self.plan = plan
        self._context = context
        self._backoff = backoff
        self._refusal_backoff = refusal_backoff
        self._max_refusals = max_refusals
        self._on_state = on_state
        self._on_operation = on_operation
        self._on_refused = on_refused
        self._tokens = tokens
        self._address = f"{settings.c8y.tenant}:{settings.c8y.port}"
        self._client: _Client | None = None
        self._ready = False
        self._tasks: set[asyncio.Task[None]] = set()  # PUBLISHes awaiting their PUBACK
        self._rows: set[_Row] = set()
        self._announced: set[str] = set()
        # The lines of this connection, for `s/e` errors (protocol.blame): what was sent, which
        # PUBLISHes still wait for their PUBACK, and which lines were already blamed.
        self._sent: deque[SentLine] = deque(maxlen=SENT_RING)
        self._waiting: set[int] = set()
        # Our QoS 1 PUBLISHes in the order they went out: a broker acknowledges QoS 1 in order
        # (MQTT 3.1.1, 4.6), so each PUBACK read is the oldest of them.
        self._unacked: deque[int] = deque()
        self._blamed: set[int] = set()
        self._numbers = 0
        self._last_own_publish = time.monotonic()  # the last PUBLISH on s/us (the gateway's topic)
        self.failed: UplinkError | None = None
        self.last_error: UplinkError | None = None
        self._health = LinkHealth(plan.client_id, "connecting", time.time(), 0, 0, None, None)
        # The outage that ended with the last connect: (seconds it lasted, failed attempts).
        self.last_outage: tuple[float, int] | None = None
        self._outage_start: float | None = None  # monotonic, while connections fail
        # The task group of the connection being served (`_serve`): a bug in the link's own
        # work fails it (`_crash`). A bug seen after it ended waits in `_bug` for `run`, and
        # `_bugged` wakes `run` from its backoff wait for it; both are cleared when `run` raises
        # it (`_raise_bug`).
        self._group: asyncio.TaskGroup | None = None
        self._bug: BaseException | None = None
        self._bugged = asyncio.Event()

    @property
    def health(self) -> LinkHealth:
        return self._health

    @property
    def ready(self) -> bool:
        return self._ready

    def _set_health(self, state: LinkState, **changes: Any) -> None:
        current = self._health
        since = current.since if state == current.state else time.time()
        self._health = dataclasses.replace(current, state=state, since=since, **changes)

    def _changed(self) -> None:
        if self._on_state is not None:
            self._on_state()

    # -- the connection, for ever ------------------------------------------------------------

    async def run(self) -> None:
        """Connect, serve, reconnect with backoff; returns only when a one-shot command's
        `max_refusals` is reached (`failed` says why). Cancel it to stop."""
        attempt = 0
        refusals = 0
        logged: str | None = None  # the kind of trouble last logged: log each kind once
        while True:
            error, connected = await self._connect_and_serve()
            self._raise_bug()
            if connected:
                attempt = refusals = 0  # a connection that came up resets the backoff
                logged = None
            self.last_error = error
            if self._outage_start is None:
                self._outage_start = time.monotonic()
            refused = _is_refusal(error)
            attempt += 1
            health = self._health
            if refused:
                refusals += 1
                if self._max_refusals is not None and refusals >= self._max_refusals:
                    self.failed = error
                    log.error("%s; giving up after %d attempt(s)", error, refusals)
                    self._set_health("gave up", attempts=attempt, last_error=str(error),
                                     refusals=health.refusals + 1, retry_at=None)
                    self._changed()
                    return
            else:
                refusals = 0
            backoff = self._refusal_backoff if refused else self._backoff
            # Refusals count their own attempts: a refusal after transport trouble starts slow.
            delay = backoff.delay(refusals if refused else attempt)
            state: LinkState = "refused" if refused else "unreachable"
            self._set_health(state, attempts=attempt, last_error=str(error),
                             refusals=health.refusals + (1 if refused else 0),
                             retry_at=time.time() + delay, reason=_reason(error))
            kind = _kind(error)
            if kind == logged:
                log.debug("%s; attempt %d, next in %.1f s", error, attempt, delay)
            elif self._max_refusals is None and refused:
                since = time.strftime("%H:%M", time.localtime(self._health.since))
                log.error("%s", _refused_since(error, since, backoff.cap))
            else:
                log.warning("%s; reconnecting in %.1f s", error, delay)
            logged = kind
            self._changed()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(delay):
                    await self._bugged.wait()
            self._raise_bug()

    def _crash(self, exc: BaseException) -> None:
        """A bug in the link's own work (a PUBLISH, an inbound line): it fails the connection's
        task group and with it `run`, so that the supervisor logs it and exits 1 (issue 11)."""
        group = self._group
        if group is not None:
            failing = _fail(exc)
            try:
                group.create_task(failing)
                return
            except RuntimeError:  # the group is finishing: `run` raises it instead
                failing.close()
        if self._bug is None:
            self._bug = exc
        self._bugged.set()

    def _raise_bug(self) -> None:
        bug, self._bug = self._bug, None
        if bug is not None:
            # The wake-up goes with the bug it announced: left set, every backoff wait of a later
            # `run` of this link would return at once (a reconnect storm).
            self._bugged.clear()
            raise bug

    def _new_client(self) -> _Client:
        c8y = self._settings.c8y
        client = _Client(
            c8y.tenant, c8y.port,
            username=c8y.username if c8y.password is not None else None,
            password=c8y.password.reveal() if c8y.password is not None else None,
            identifier=self.plan.client_id,
            protocol=aiomqtt.ProtocolVersion.V311,
            clean_session=True,  # required by Cumulocity (docs/protocol.md 1.4)
            keepalive=c8y.keepalive,
            tls_context=self._context,
            timeout=CONNECT_TIMEOUT,
            # Cumulocity disconnects a client whose queue limit is exceeded (docs/protocol.md 1.6):
            # paho holds back what is over this window until PUBACKs come.
            max_inflight_messages=c8y.max_inflight,
            # Without TCP_NODELAY every QoS 1 publish waited 44 ms for Nagle against a broker
            # that does not set it either (measured with bench/latency.py).
            socket_options=((socket.IPPROTO_TCP, socket.TCP_NODELAY, 1),),
        )
        # aiomqtt warns at every publish beyond 10 waiting for a PUBACK; the Courier keeps up to
        # its window in flight on purpose.
        client.pending_calls_threshold = sys.maxsize
        client.connect_finished = asyncio.Event()
        return client

    async def _connect_and_serve(self) -> tuple[UplinkError, bool]:
        """One connection from CONNECT to its end: (why it ended, whether it came up)."""
        client = self._new_client()
        connected = False
        try:
            try:
                await client.__aenter__()
            except asyncio.CancelledError:
                await asyncio.shield(_abandon(client))
                raise
            except MqttConnectError as exc:
                return self._refused(connack_code(exc.rc)), False
            except aiomqtt.MqttError as exc:
                return self._not_connected(client, exc), False
            connected = True
            try:
                reason = await self._serve(client)
            finally:
                with contextlib.suppress(aiomqtt.MqttError):
                    # Cancelled (a stop) or lost: say goodbye if the socket still lets us.
                    await asyncio.shield(_goodbye(client))
            return UnreachableError(f"connection to {self._address} lost ({reason})"), True
        finally:
            self._lost(connected)

    def _refused(self, code: int) -> LoginRefusedError:
        username = self._settings.c8y.username if self._settings.c8y.password else None
        return LoginRefusedError(code, self._address, username)

    def _not_connected(self, client: _Client, exc: aiomqtt.MqttError) -> UplinkError:
        c8y = self._settings.c8y
        cause = client.connect_error
        if isinstance(cause, ssl.SSLCertVerificationError):
            what, hint = describe_tls_failure(cause, c8y.tenant)
            return TlsFailedError(self._address, what, hint, verification=True)
        if isinstance(cause, ssl.SSLError):
            what, hint = describe_tls_failure(cause, c8y.tenant)
            return TlsFailedError(self._address, what, hint)
        if isinstance(cause, socket.gaierror):
            return UnreachableError(
                f"cannot resolve {c8y.tenant!r} ({cause.strerror}); check [C8YMQTT] tenant")
        if isinstance(cause, OSError):
            reason = cause.strerror or str(cause)
            return UnreachableError(f"cannot connect to {self._address}: {reason}")
        closed = client.closed_before_connack
        if closed is not None:
            if _is_protocol_error(closed):
                return self._refused(1)  # see _Client: paho's swallowed CONNACK 1
            return UnreachableError(
                f"{self._address} closed the connection before CONNACK ({closed}); "
                "check port and tls, and cert_file if the broker requires a client certificate")
        return UnreachableError(f"no CONNACK from {self._address} ({exc})")

    async def _serve(self, client: _Client) -> str:
        """The connection is up: start-up sequence, inbound lines, heartbeat; returns why it
        ended (it ends only by the broker, the network or a cancellation)."""
        # A bug reported while this connection was being made (no group to fail then) ends
        # `run` now, not when this connection ends, which may be hours away.
        self._raise_bug()
        self.last_error = None
        if self._outage_start is not None:
            self.last_outage = (time.monotonic() - self._outage_start, self._health.attempts)
            self._outage_start = None
        log.info("connected to %s as client id %s", self._address, self.plan.client_id)
        self._client = client
        reason = "closed"
        try:
            async with asyncio.TaskGroup() as group:
                self._group = group
                group.create_task(self._startup(client, group))
                if self.plan.heartbeat:
                    group.create_task(self._heartbeat(self.plan.heartbeat))
                await self._receive(client, group)
        except* (aiomqtt.MqttError, ConnectionLostError) as trouble:
            # A socket error of the awaited hello or a SUBSCRIBE arrives as ConnectionLostError
            # (`_on_this_connection`); anything else still ends `run` (exit 1).
            reason = str(trouble.exceptions[0])
        finally:
            self._group = None
        return reason

    async def _startup(self, client: _Client, group: asyncio.TaskGroup) -> None:
        # Create (or confirm) the device first: Cumulocity refuses subscriptions of a client id
        # that has no device yet (docs/protocol.md 1.10).
        async with _on_this_connection():
            await self._publish_now(client, Outgoing("s/us", self.plan.hello))
        for attempt in range(1, SUBSCRIBE_ATTEMPTS + 1):
            async with _on_this_connection():
                codes = await client.subscribe(
                    [(topic, QOS) for topic in self.plan.subscriptions])
            refused = [c for c in codes if (isinstance(c, ReasonCode) and c.is_failure)
                       or (isinstance(c, int) and c >= 0x80)]
            if not refused:
                break
            if attempt == SUBSCRIBE_ATTEMPTS:
                log.error("subscription to s/ds and s/e refused %d times: operations and errors "
                          "from Cumulocity will not arrive; events still go out", attempt)
                break
            log.warning("subscription to s/ds and s/e refused (SUBACK 0x80), retrying in %g s",
                        SUBSCRIBE_RETRY)
            await asyncio.sleep(SUBSCRIBE_RETRY)
        # In order, without waiting for each PUBACK: the tasks hand their packets to paho in the
        # order they are made, and the first event of the Courier comes after them.
        for message in self.plan.startup:
            self._start(client, message)
        for line in self.plan.after_subscribe:
            self._start(client, Outgoing("s/us", line))
        if self.plan.token:
            # Through the token source, which keeps one request in flight: a REST call that
            # asked for a token at the same moment shares this `s/uat` instead of a second one.
            if self._tokens is not None:
                # A request of an earlier connection is void (clean session, QoS 0): taken for
                # one in flight, it kept this connection from asking until `wait` ran out.
                self._tokens.forget_request()
                self._tokens.renew_if_due()
            else:
                self.request_token()
        self._ready = True
        self._set_health("connected", attempts=0, retry_at=None, reason=None)
        log.info("%s ready", self.plan.client_id)
        self._changed()

    async def _heartbeat(self, interval: float) -> None:
        while True:
            wait = self._last_own_publish + interval - time.monotonic()
            if wait > 0:
                await asyncio.sleep(wait)
                continue
            client = self._client
            if not self._ready or client is None:
                await asyncio.sleep(interval)
                continue
            log.debug("%s: nothing sent for %g s: heartbeat", self.plan.client_id, interval)
            self._start(client, Outgoing("s/us", HEARTBEAT))

    async def _receive(self, client: _Client, group: asyncio.TaskGroup) -> None:
        def dispatch(topic: str, payload: bytes) -> None:
            try:
                self._dispatch(client, group, topic, payload)
            except Exception as exc:  # noqa: BLE001 - a bug fails the link (and `run`), not the socket
                self._crash(exc)

        client.dispatch = dispatch
        client.acked = self._puback
        async for _ in client.messages:  # nothing is queued (`dispatch`); ends with the connection
            pass
        raise aiomqtt.MqttError("the message stream ended")

    def _dispatch(self, client: _Client, group: asyncio.TaskGroup, topic: str,
                  payload: bytes) -> None:
        text = payload.decode("utf-8", errors="replace")
        if topic == TOKEN_TOPIC:
            self._on_token(text)
        elif topic == TEMPLATE_STATUS_TOPIC:
            self._on_template_status(client, group, text)
        elif topic == "s/e":
            for raw in text.splitlines():
                if raw.strip():
                    self._on_error_line(raw)
        else:
            self._on_operations(topic, text)

    def _lost(self, connected: bool) -> None:
        """The connection is gone: fail what was in flight, forget the session state."""
        was_ready = self._ready
        self._ready = False
        self._client = None
        tasks, self._tasks = self._tasks, set()
        rows, self._rows = self._rows, set()
        self._announced.clear()
        # Errors of a connection come on that connection: a new one starts a new ring.
        self._sent.clear()
        self._waiting.clear()
        self._unacked.clear()
        self._blamed.clear()
        for task in tasks:
            task.cancel()
        lost = [row for row in rows if not row.future.done()]
        for row in lost:
            row.future.set_exception(ConnectionLostError(
                f"{self.plan.client_id}: connection lost before PUBACK"))
        if lost:
            log.warning("%s: %d message(s) lost in flight (no PUBACK before the connection "
                        "dropped)", self.plan.client_id, len(lost))
        if was_ready or connected:
            self._changed()

    # -- sending -------------------------------------------------------------------------------

    def send(self, event: Event | None, extra_lines: Sequence[str] = (),
             other_lines: Sequence[DeviceLine] = (),
             row: int | None = None) -> asyncio.Future[None] | None:
        """Start the PUBLISHes of an event (or, with `event=None`, only `other_lines`); None
        while the connection is not ready. The future completes when all have their PUBACK,
        or fails with ConnectionLostError. Raises UnsendableError (MessageTooLargeError) for a
        row that can never go as it is."""
        client = self._client
        if not self._ready or client is None:
            return None
        announce = event is not None and self.plan.gateway and event.serial not in self._announced
        if event is None:
            if not self.plan.gateway:
                raise UnsendableError("lines without an event need [gateway] mode = gateway")
            messages = lines_messages(other_lines)
        else:
            messages = event_messages(event, extra_lines, gateway=self.plan.gateway,
                                      announce=announce, other_lines=other_lines)
        if not messages:
            raise UnsendableError("nothing to send: a row with neither an event nor lines")
        for message in messages:
            check_size(message)
        if announce and event is not None:
            self._announced.add(event.serial)
        press = None if event is None else (
            f"{event.name} ({event.mac}) pressed at {event.c8y_time}")
        done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        pending = _Row(done, len(messages))
        self._rows.add(pending)
        for message in messages:
            self._start(client, message, row, press, pending)
        return done

    def _start(self, client: _Client, message: Outgoing, row: int | None = None,
               press: str | None = None, pending: _Row | None = None) -> None:
        """One PUBLISH as a task; its packet goes to paho when the task first runs, in the order
        the tasks were made."""
        log.debug("publish %s %r", message.topic, message.payload)
        # Into the ring before the PUBLISH: an `s/e` answer may come before its PUBACK.
        number = self._remember(message, row, press)
        if message.topic == "s/us":
            # Only the gateway's own topic counts: a `400` on s/us/<child> keeps the *child*
            # available, not the gateway.
            self._last_own_publish = time.monotonic()
        task = asyncio.get_running_loop().create_task(self._publish(client, message))
        self._tasks.add(task)
        task.add_done_callback(lambda t: self._published(t, number, pending))

    async def _publish(self, client: _Client, message: Outgoing) -> None:
        # No timeout: it waits for its PUBACK as long as the connection lives, and `_lost` cancels
        # it. (aiomqtt's publish waits with asyncio.wait_for, which on Python 3.11 can drop a
        # cancellation that comes with the PUBACK when it has a timeout; without one it is a plain
        # await.)
        await client.publish(message.topic, message.payload, qos=QOS, timeout=math.inf)

    def _published(self, task: asyncio.Task[None], number: int, pending: _Row | None) -> None:
        self._tasks.discard(task)
        self._waiting.discard(number)
        exc = None if task.cancelled() else task.exception()
        if exc is not None and not isinstance(exc, CONNECTION_ERRORS):
            self._publish_bug(exc, pending)
            return
        failed = task.cancelled() or exc is not None
        if pending is None:
            if isinstance(exc, MqttCodeError):
                log.debug("a start-up PUBLISH failed: %s", exc)
            return
        if pending.future.done():
            return
        if failed:
            self._rows.discard(pending)
            pending.future.set_exception(ConnectionLostError(
                f"{self.plan.client_id}: PUBLISH failed ({exc or 'connection lost'})"))
            return
        pending.left -= 1
        if pending.left == 0:
            self._rows.discard(pending)
            pending.future.set_result(None)

    def _publish_bug(self, exc: BaseException, pending: _Row | None) -> None:
        """A PUBLISH failed with something no connection trouble raises: a bug. A row's goes to
        its owner as it is (the Courier's delivery loop fails with it, and `run` exits 1: sending
        the row again would only meet the bug again); the link's own PUBLISHes fail the link."""
        if pending is None:
            self._crash(exc)
            return
        future = pending.future
        if not future.done():
            self._rows.discard(pending)
            future.set_exception(exc)
            return
        if not future.cancelled() and not isinstance(future.exception(), ConnectionLostError):
            # An earlier PUBLISH of the same row already carries a bug to the row's owner: one
            # bug ends `run` once.
            log.debug("another PUBLISH of the same row failed: %r", exc)
            return
        self._crash(exc)

    async def _publish_now(self, client: _Client, message: Outgoing) -> None:
        """One start-up PUBLISH awaited until its PUBACK."""
        number = self._remember(message, None, None)
        try:
            await self._publish(client, message)
        finally:
            self._waiting.discard(number)

    def _remember(self, message: Outgoing, row: int | None, press: str | None) -> int:
        """Put the lines of a PUBLISH into the ring of sent lines; its number."""
        self._numbers += 1
        number = self._numbers
        for line in payload_lines(message.payload):
            self._numbers += 1
            self._sent.append(SentLine(self._numbers, number, message.topic, line, row, press))
        self._waiting.add(number)
        self._unacked.append(number)
        if self._sent:
            oldest = self._sent[0].number
            self._blamed = {n for n in self._blamed if n >= oldest}
        return number

    def _puback(self) -> None:
        if self._unacked:
            self._waiting.discard(self._unacked.popleft())

    def request_token(self) -> None:
        """Empty publish on `s/uat`; the JWT comes as `71,<token>` on `s/dat`. QoS 0, as
        thin-edge does (thin-edge#2417): a stale request must not be replayed. On the loop."""
        client = self._client
        if client is None:
            raise UplinkError(f"{self.plan.client_id} is not connected")
        # `_ask_token` ends with no exception but a cancellation (`_lost`): a connection error
        # leaves the request to the next connect, a bug is told to the token's waiter and fails
        # the link; nothing is left unretrieved.
        task = asyncio.get_running_loop().create_task(self._ask_token(client))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _ask_token(self, client: _Client) -> None:
        try:
            await client.publish(TOKEN_REQUEST_TOPIC, b"", qos=0)
        except CONNECTION_ERRORS as exc:
            # The connection is dropping: its reconnect asks again (`_startup`), and a REST call
            # waiting for the token gets it then, within its own `wait`, instead of failing now
            # (as `_ask_quietly` does when the link is already down).
            log.info("cannot ask Cumulocity for a device token on %s now (%s); the next "
                     "connect asks again", self.plan.client_id, exc)
            if self._tokens is not None:
                self._tokens.forget_request()
        except Exception as exc:  # noqa: BLE001 - a bug: the waiter is told, the link fails
            reason = (f"cannot ask Cumulocity for a device token on {self.plan.client_id}: "
                      f"the s/uat publish failed ({type(exc).__name__}, a bug)")
            log.warning("%s", reason)
            if self._tokens is not None:
                self._tokens.request_failed(reason)
            self._crash(exc)

    # -- what comes in -------------------------------------------------------------------------

    def _on_error_line(self, raw: str) -> None:
        """One `s/e` line: fine (`41,100`; `41,<X-ID>` for a collection we publish on every
        connect, docs/protocol.md 2.1), a refusal of one of our lines (ERROR, counted by the
        listener), or an error that names none of our lines (a warning)."""
        fine = expected_error(raw, self.plan.client_id, self.plan.collections)
        if fine is not None:
            log.info("%s", escape_controls(fine))
            return
        sent = blame(raw, self._sent, self._waiting, self._blamed)
        if sent is None:
            log.warning("%s", escape_controls(describe_error_line(raw)))
            return
        self._blamed.add(sent.number)
        refusal = Refusal(raw, sent)
        log.error("%s", describe_refusal(refusal))
        if self._on_refused is not None:
            self._on_refused(refusal)

    def _on_token(self, text: str) -> None:
        for raw in text.splitlines():
            jwt = token_line(raw)
            if jwt is not None and self._tokens is not None:
                self._tokens.offer(jwt)

    def _on_template_status(self, client: _Client, group: asyncio.TaskGroup, text: str) -> None:
        for message in collections_to_create(text, self.plan.templates):
            log.info("Cumulocity: template collection %s missing, creating it", message.topic[5:])
            self._start(client, message)
            self._start(client, Outgoing(message.topic, ""))  # ask again: `20` once it exists
        for xid in collections_existing(text, self.plan.templates):
            # Subscribe to s/dc/<X-ID> only once the collection exists (docs/protocol.md
            # 2.6); after its SUBACK `500` again: operations pushed for the first `500` had no
            # subscriber on it.
            subscribing = self._subscribe_collection(client, xid)
            try:
                group.create_task(subscribing)
            except RuntimeError:  # the connection is ending: the next connect asks again
                subscribing.close()

    async def _subscribe_collection(self, client: _Client, xid: str) -> None:
        async with _on_this_connection():
            await client.subscribe(f"s/dc/{xid}", QOS)
        self._start(client, Outgoing("s/us", "500"))

    def _on_operations(self, topic: str, text: str) -> None:
        # s/ds and any extra subscription (a custom template collection's s/dc/<X-ID>).
        for line in decode(text):
            log.info("operation from Cumulocity on %s: %s", topic,
                     ",".join([line.template, *line.fields]))
            if self._on_operation is not None:
                # A handler that raises has a bug (a line it cannot use is its to refuse, as
                # the daemon's does): it fails the link and `run` (`dispatch`, `_crash`),
                # instead of a log line and every later operation handled by a broken handler.
                self._on_operation(line)


async def _fail(exc: BaseException) -> None:
    raise exc


async def _abandon(client: _Client) -> None:
    """A connect cancelled half-way (a stop): let the blocking part finish, then close what it
    opened, so that neither a socket nor aiomqtt's housekeeping task outlives the loop."""
    finished = client.connect_finished
    if finished is not None:
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(CONNECT_TIMEOUT):
                await finished.wait()
    paho = client._client  # aiomqtt offers no way to drop a half-open client but its paho one
    if paho.socket() is None:
        return
    paho.disconnect()
    for _ in range(100):  # bounded: the DISCONNECT is written and the socket closed by paho
        if paho.socket() is None:
            break
        await asyncio.sleep(0.01)
    await asyncio.sleep(0)  # aiomqtt cancels its housekeeping task with call_soon_threadsafe


async def _goodbye(client: _Client) -> None:
    await client.__aexit__(None, None, None)


def _is_protocol_error(reason: ReasonCode | int) -> bool:
    if isinstance(reason, ReasonCode):
        return reason.value == 130 or "protocol" in str(reason).lower()
    return int(reason) == 2  # MQTT_ERR_PROTOCOL


def _is_refusal(error: UplinkError) -> bool:
    """A refused login, or a certificate the other side does not accept: retried slowly. A TLS
    handshake merely closed (a load balancer in trouble) is transport trouble."""
    if isinstance(error, LoginRefusedError):
        return error.code not in TRANSIENT_CONNACK
    return isinstance(error, TlsFailedError) and error.verification


def _reason(error: UplinkError) -> str | None:
    """A refusal's reason in a few words, for `outbox status`."""
    if isinstance(error, LoginRefusedError):
        return f"{connack_meaning(error.code)}, CONNACK {error.code}"
    if isinstance(error, TlsFailedError) and error.verification:
        return "TLS certificate refused"
    return None


def _kind(error: UplinkError) -> str:
    if isinstance(error, LoginRefusedError):
        return f"refused {error.code}"
    if isinstance(error, TlsFailedError):
        return f"tls {error.verification}"
    return "unreachable"


def _refused_since(error: UplinkError, since: str, every: float) -> str:
    """The one line that says a login is refused and will be retried (issue 11)."""
    if isinstance(error, LoginRefusedError):
        meaning, hint = _CONNACK.get(error.code, (f"refused with code {error.code}", ""))
        return (f"login refused since {since} ({meaning}, CONNACK {error.code}); "
                f"retrying every {every:g} s; {hint}")
    return f"{error} since {since}; retrying every {every:g} s"


async def connect_once(settings: Settings, context: ssl.SSLContext | None,
                       timeout: float) -> str:
    """Connect once with the gateway's client id, wait for the CONNACK, disconnect; publish
    nothing (the login probe of `check`). Returns the client id; raises LoginRefusedError,
    TlsFailedError or UnreachableError."""
    plan = LinkPlan(settings.gateway.serial, "", (), gateway=True)
    link = Link(settings, plan, context, backoff=Backoff(0, 0), refusal_backoff=Backoff(0, 0))
    client = link._new_client()
    client.timeout = timeout
    try:
        await client.__aenter__()
    except MqttConnectError as exc:
        raise link._refused(connack_code(exc.rc)) from None
    except aiomqtt.MqttError as exc:
        raise link._not_connected(client, exc) from None
    with contextlib.suppress(aiomqtt.MqttError):
        await client.__aexit__(None, None, None)
    return plan.client_id
