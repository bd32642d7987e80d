"""The uplink: a persistent MQTT 3.1.1 connection to Cumulocity speaking SmartREST 2.0.

Design section 4 and protocol notes 1 and 2. One `_Link` is one MQTT connection for one client id,
with its own network thread. Gateway mode (the default) has one link whose client id is the
gateway's serial; the buttons are its child devices. Per-device mode (the original example's) has
one link per button serial, opened when that button first sends.

Every connection attempt uses a **fresh** paho client. Cumulocity requires a clean session
(protocol notes 1.4), so nothing the broker had is kept, and paho's own re-send of unacknowledged
messages after a reconnect would only duplicate what the delivery loop re-sends from the outbox
(thin-edge#3713 is the same trap). What was in flight when a connection dropped is reported
through `on_lost`; the caller owns the retry.

Sequence after each CONNACK (protocol notes 1.10, recommended order):
    PUBLISH 100 (QoS 1) -> PUBACK -> SUBSCRIBE s/ds, s/e -> SUBACK (a 0x80 is retried)
    -> 114, 117 (gateway) -> 500 -> ready.
Then per event: `101,<serial>,<name>,c8y_DashButton` once per button and connection, and
`400,<type>,<text>,<time>` on `s/us/<serial>` (gateway) or `s/us` (per-device), QoS 1.

Hooks for features on top (the Kanban loop uses them; this module knows nothing of it):
`extra_subscriptions` are subscribed next to s/ds and s/e, `startup_publishes` are published after
the SUBACK and before 114/117/500 on every connect, and `on_operation` receives each line of any
subscribed downstream topic (everything but s/e). An event may carry lines for other child devices
of the gateway (`other_lines`), and `send_lines` sends such lines without an event.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import socket
import ssl
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion, MQTTErrorCode
from paho.mqtt.reasoncodes import ReasonCode

from dashkanban.backoff import Backoff, uplink_backoffs
from dashkanban.c8y import token as token_registry
from dashkanban.c8y.protocol import (
    _CONNACK,
    BUTTON_TYPE,
    GATEWAY_TYPE,
    TRANSIENT_CONNACK,
    DeviceLine,
    LoginRefusedError,
    MessageTooLargeError,
    Outgoing,
    Refusal,
    SentLine,
    TlsFailedError,
    UnreachableError,
    UnsendableError,
    blame,
    check_size,
    connack_meaning,
    describe_error_line,
    describe_refusal,
    event_messages,
    expected_error,
    lines_messages,
    payload_lines,
)
from dashkanban.c8y.smartrest import (
    SmartRestLine,
    decode,
    encode_line,
)
from dashkanban.c8y.tls import describe_tls_failure, make_tls_context
from dashkanban.c8y.token import TOKEN_REQUEST_TOPIC, TOKEN_TOPIC, TokenSource, token_line
from dashkanban.config import Settings
from dashkanban.errors import UplinkError
from dashkanban.events import Event
from dashkanban.safetext import escape_controls

log = logging.getLogger(__name__)

# What this module offers, including the protocol's names it re-exports for older imports.
__all__ = [
    "BUTTON_TYPE", "GATEWAY_TYPE", "MAX_REFUSALS", "DeviceLine", "LinkHealth", "LinkPlan",
    "LoginRefusedError", "MessageTooLargeError", "Outgoing", "Refusal", "TlsFailedError",
    "UnreachableError", "UnsendableError", "Uplink", "check_size", "connack_code",
    "connack_meaning", "describe_error_line", "event_messages", "lines_messages", "new_client",
    "service_options", "try_login",
]

QOS = 1

# Reconnect backoff of the one-shot commands (see backoff.py; `run` uses `[C8YMQTT] retry_max`).
BACKOFF_MIN = 1.0
BACKOFF_MAX = 60.0
# Consecutive refusals (bad credentials, not authorised, untrusted certificate) after which a
# one-shot command gives up (fail fast, exit 1). `run` never gives up (`service_options`):
# Cumulocity's CONNACK 5 can be transient ("repeat the connection a few times", protocol notes
# 1.7), a password can be fixed on the tenant, and nobody restarts a daemon that merely waits.
MAX_REFUSALS = 3
# A refused SUBSCRIBE (SUBACK 0x80, seen on brand-new device users) is retried this many times.
SUBSCRIBE_ATTEMPTS = 5
SUBSCRIBE_RETRY = 1.0
# How long the network thread blocks in select(); bounds how late a timer or stop() is seen.
LOOP_TICK = 0.2
# The heartbeat (`125`, protocol notes 2.3) goes out when the gateway published nothing on its own
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

_V5_TO_V3 = {132: 1, 133: 2, 136: 3, 134: 4, 135: 5}

DeliveryCallback = Callable[[], None]
OperationHandler = Callable[[SmartRestLine], None]
RefusalListener = Callable[[Refusal], None]

def connack_code(reason: ReasonCode | int) -> int:
    """The MQTT 3.1.1 CONNACK return code of what paho reports (an MQTT 5 reason code)."""
    value = reason.value if isinstance(reason, ReasonCode) else int(reason)
    return _V5_TO_V3.get(value, value)


def service_options(settings: Settings) -> dict[str, Any]:
    """The Uplink keywords of `run`: never give up; refusals retried from 30 s, transport
    trouble from 1 s, both at most every `[C8YMQTT] retry_max` seconds."""
    transport, refusal = uplink_backoffs(settings.c8y.retry_max)
    return {"max_refusals": None, "backoff": transport, "refusal_backoff": refusal}


LinkState = Literal["connecting", "connected", "refused", "unreachable", "gave up"]


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


@dataclass(slots=True)
class _Pending:
    on_delivered: DeliveryCallback | None
    on_lost: DeliveryCallback | None
    message: int = 0  # its number in the ring of sent lines


@dataclass(frozen=True, slots=True)
class LinkPlan:
    """What one link says after each connect."""

    client_id: str
    hello: str  # the 100 line
    after_subscribe: tuple[str, ...]  # e.g. 114, 117, 500
    gateway: bool
    subscriptions: tuple[str, ...] = ("s/ds", "s/e")
    startup: tuple[Outgoing, ...] = ()  # published after the SUBACK, before after_subscribe

    @property
    def collections(self) -> frozenset[str]:
        """The X-IDs of the template collections published at start-up (`s/ut/<X-ID>`)."""
        return frozenset(m.topic[5:] for m in self.startup if m.topic.startswith("s/ut/"))
    heartbeat: float | None = None  # seconds without a publish on s/us before a `125`
    # Template collections to create only when the existence check says they are missing:
    # `s/ut/<X-ID>` with its templates (the start-up publishes only the empty question).
    templates: tuple[Outgoing, ...] = ()
    token: bool = False  # a certificate login: ask for the REST token (s/uat) after the SUBACK


TEMPLATE_STATUS_TOPIC = "s/dt"


def ensure_collections(startup: Sequence[Outgoing]) -> tuple[tuple[Outgoing, ...],
                                                              tuple[Outgoing, ...]]:
    """(start-up publishes, templates): each `s/ut/<X-ID>` with templates becomes the empty
    existence question, and its templates are kept for when the answer is `41,<X-ID>`. A
    collection "can no longer be modified through MQTT" after it is created, and an empty publish
    on `s/ut/<X-ID>` answers `20,<X-ID>,<id>` or `41,<X-ID>` on `s/dt` (smartrest-two.md)."""
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


def new_client(settings: Settings, client_id: str,
               context: ssl.SSLContext | None = None) -> paho.Client:
    """A configured paho client (no network): MQTT 3.1.1, clean session, TLS, credentials."""
    c8y = settings.c8y
    client = paho.Client(
        CallbackAPIVersion.VERSION2,
        client_id=client_id,
        protocol=paho.MQTTv311,
        clean_session=True,  # required by Cumulocity (protocol notes 1.4)
        reconnect_on_failure=False,  # we reconnect ourselves, with a fresh client
    )
    if c8y.tls:
        client.tls_set_context(context if context is not None else make_tls_context(c8y))
    if c8y.password is not None:
        client.username_pw_set(c8y.username, c8y.password.reveal())
    client.on_socket_open = _nodelay
    return client


def _nodelay(client: paho.Client, userdata: Any, sock: Any) -> None:
    # paho does not set TCP_NODELAY; against a broker that doesn't either, every QoS 1 publish
    # waited 44 ms for Nagle (field notes, MQTT).
    raw = getattr(sock, "setsockopt", None)
    if raw is not None:
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


class _Link:
    """One MQTT connection for one client id: connect, say hello, stay up, report deliveries."""

    def __init__(self, settings: Settings, plan: LinkPlan, context: ssl.SSLContext | None, *,
                 on_state: Callable[[], None],
                 on_operation: OperationHandler | None, max_refusals: int | None,
                 backoff: Backoff, refusal_backoff: Backoff,
                 tokens: TokenSource | None = None) -> None:
        self._settings = settings
        self._tokens = tokens
        self.plan = plan
        self._context = context
        self._on_state = on_state
        self._on_operation = on_operation
        self._max_refusals = max_refusals
        self._backoff = backoff
        self._refusal_backoff = refusal_backoff
        self.on_failure: Callable[[BaseException], None] | None = None
        self.on_refused: RefusalListener | None = None  # an `s/e` error blamed on our line
        self._address = f"{settings.c8y.tenant}:{settings.c8y.port}"
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        # Guards the fields below. Never held while calling paho: paho calls on_publish while
        # holding its own message lock, and publish() takes that lock (a lock-order deadlock).
        self._lock = threading.Lock()
        self._client: paho.Client | None = None
        self._generation = 0
        self._ready = False
        self._pending: dict[int, _Pending] = {}
        self._early_acks: set[int] = set()
        self._announced: set[str] = set()
        # The lines of this connection, for `s/e` errors (protocol.blame): what was sent, which
        # PUBLISHes still wait for their PUBACK, and which lines were already blamed.
        self._sent: deque[SentLine] = deque(maxlen=SENT_RING)
        self._waiting: set[int] = set()
        self._blamed: set[int] = set()
        self._numbers = 0
        self._timers: list[tuple[float, Callable[[], None]]] = []
        self._down = threading.Event()  # set by on_disconnect: this connection is over
        self._down_reason = ""
        self._refusal: UplinkError | None = None
        self._subscribe_attempts = 0
        self._collection_mids: set[int] = set()  # SUBSCRIBEs to s/dc/<X-ID> after the `20`
        self._connected_once = False
        self._last_own_publish = time.monotonic()  # the last PUBLISH on s/us (the gateway's topic)
        self.failed: UplinkError | None = None
        self.last_error: UplinkError | None = None
        self._health = LinkHealth(plan.client_id, "connecting", time.time(), 0, 0, None, None)
        # The outage that ended with the last connect: (seconds it lasted, failed attempts).
        self.last_outage: tuple[float, int] | None = None
        self._outage_start: float | None = None  # monotonic, while connections fail

    @property
    def health(self) -> LinkHealth:
        return self._health

    @property
    def alive(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def _set_health(self, state: LinkState, **changes: Any) -> None:
        current = self._health
        since = current.since if state == current.state else time.time()
        self._health = dataclasses.replace(current, state=state, since=since, **changes)

    # -- lifecycle ---------------------------------------------------------------------------

    def start(self) -> None:
        if self._thread is not None:
            return
        # One thread per connection (docs/architecture.md): connecting, TLS and the backoff
        # block; capture and the Courier never wait for them.
        self._thread = threading.Thread(
            target=self._supervised, name=f"uplink-{self.plan.client_id}", daemon=True
        )
        self._thread.start()

    def _supervised(self) -> None:
        try:
            self._run()
        except Exception as exc:  # a bug: this connection would be gone for good, silently
            if self.on_failure is None:
                raise
            self.on_failure(exc)

    def stop(self, timeout: float) -> None:
        self._stop.set()
        with self._lock:
            client = self._client
        if client is not None:
            with contextlib.suppress(Exception):
                client.disconnect()
        if self._thread is not None:
            self._thread.join(timeout)

    @property
    def ready(self) -> bool:
        return self._ready

    # -- sending (any thread) ----------------------------------------------------------------

    def send(self, event: Event | None, extra_lines: Sequence[str],
             on_delivered: DeliveryCallback | None, on_lost: DeliveryCallback | None,
             other_lines: Sequence[DeviceLine] = (), row: int | None = None) -> bool:
        """Publish an event (or, with `event=None`, only `other_lines`); the PUBACK of the last
        message stands for all (a QoS 1 broker acknowledges in order, MQTT 3.1.1 4.6)."""
        with self._lock:
            if not self._ready or self._client is None:
                return False
            client, generation = self._client, self._generation
            announce = (
                event is not None and self.plan.gateway and event.serial not in self._announced
            )
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
            with self._lock:
                self._announced.add(event.serial)
        press = None if event is None else (
            f"{event.name} ({event.mac}) pressed at {event.c8y_time}"
        )
        for message in messages[:-1]:
            self._publish(client, generation, message, None, None, row, press)
        self._publish(client, generation, messages[-1], on_delivered, on_lost, row, press)
        return True

    def _publish(self, client: paho.Client, generation: int, message: Outgoing,
                 on_delivered: DeliveryCallback | None, on_lost: DeliveryCallback | None,
                 row: int | None = None, press: str | None = None) -> None:
        log.debug("publish %s %r", message.topic, message.payload)
        # Into the ring before the PUBLISH: an `s/e` answer may come before publish() returns.
        number = self._remember(message, row, press)
        info = client.publish(message.topic, message.payload, qos=QOS)
        if message.topic == "s/us":
            # Only the gateway's own topic counts: a `400` on s/us/<child> keeps the *child*
            # available, not the gateway.
            self._last_own_publish = time.monotonic()
        callback: DeliveryCallback | None = None
        with self._lock:
            if generation != self._generation or info.rc != MQTTErrorCode.MQTT_ERR_SUCCESS:
                callback = on_lost  # the connection died under us: its fate is unknown
                self._waiting.discard(number)
            elif info.mid in self._early_acks:
                self._early_acks.discard(info.mid)  # PUBACK overtook us
                callback = on_delivered
                self._waiting.discard(number)
            else:
                self._pending[info.mid] = _Pending(on_delivered, on_lost, number)
        _call(callback)

    def _remember(self, message: Outgoing, row: int | None, press: str | None) -> int:
        """Put the lines of a PUBLISH into the ring of sent lines; its number."""
        with self._lock:
            self._numbers += 1
            number = self._numbers
            for line in payload_lines(message.payload):
                self._numbers += 1
                self._sent.append(SentLine(self._numbers, number, message.topic, line, row, press))
            self._waiting.add(number)
            if self._sent:
                oldest = self._sent[0].number
                self._blamed = {n for n in self._blamed if n >= oldest}
        return number

    # -- the network thread ------------------------------------------------------------------

    def _run(self) -> None:
        attempt = 0
        refusals = 0
        logged: str | None = None  # the kind of trouble last logged: log each kind once
        while not self._stop.is_set():
            error = self._connect_and_serve()
            if self._connected_once:
                attempt = refusals = 0  # a connection that came up resets the backoff
                logged = None
                self._connected_once = False
            self._lost()
            if self._stop.is_set():
                break
            assert error is not None
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
                    self._on_state()
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
            self._on_state()
            self._stop.wait(delay)

    def _connect_and_serve(self) -> UplinkError | None:
        c8y = self._settings.c8y
        client = new_client(self._settings, self.plan.client_id, self._context)
        client.on_connect = self._on_connect
        client.on_publish = self._on_publish
        client.on_subscribe = self._on_subscribe
        client.on_message = self._on_message
        # Cumulocity disconnects a client whose queue limit is exceeded (smartrest-two.md): the
        # start-up lines and a drained backlog queue in paho behind this window.
        client.max_inflight_messages_set(c8y.max_inflight)
        client.on_disconnect = self._on_disconnect
        self._refusal = None
        self._down.clear()
        self._down_reason = "closed"
        with self._lock:
            self._timers = []
            self._client = client
            self._collection_mids = set()
        try:
            client.connect(c8y.tenant, c8y.port, keepalive=c8y.keepalive)
        except ssl.SSLCertVerificationError as exc:
            what, hint = describe_tls_failure(exc, c8y.tenant)
            return TlsFailedError(self._address, what, hint, verification=True)
        except ssl.SSLError as exc:
            what, hint = describe_tls_failure(exc, c8y.tenant)
            return TlsFailedError(self._address, what, hint)
        except socket.gaierror as exc:
            return UnreachableError(
                f"cannot resolve {c8y.tenant!r} ({exc.strerror}); check [C8YMQTT] tenant"
            )
        except (OSError, ValueError) as exc:
            reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
            return UnreachableError(f"cannot connect to {self._address}: {reason}")
        # paho's own network thread from here on: with it, publish() from other threads only
        # queues and wakes it, instead of writing to the (TLS) socket concurrently.
        client.loop_start()
        while not self._stop.is_set() and not self._down.is_set():
            self._down.wait(LOOP_TICK)
            self._run_timers()
            self._beat_if_idle()
        if self._stop.is_set():
            return None
        if self._refusal is not None:
            return self._refusal
        if not self._connected_once and self._down_reason == "Protocol error":
            # paho 2 swallows CONNACK 1 when it may not reconnect by itself: instead of calling
            # on_connect it ends the connection with a protocol error (client.py,
            # _handle_connack: its MQTT 3.1 downgrade). Nothing else before CONNACK does that.
            username = self._settings.c8y.username if self._settings.c8y.password else None
            return LoginRefusedError(1, self._address, username)
        if not self._connected_once:
            return UnreachableError(
                f"{self._address} closed the connection before CONNACK ({self._down_reason}); "
                "check port and tls, and cert_file if the broker requires a client certificate"
            )
        return UnreachableError(f"connection to {self._address} lost ({self._down_reason})")

    def _run_timers(self) -> None:
        now = time.monotonic()
        with self._lock:
            due = [action for at, action in self._timers if at <= now]
            self._timers = [(at, action) for at, action in self._timers if at > now]
        for action in due:
            action()

    def _beat_if_idle(self) -> None:
        interval = self.plan.heartbeat
        if not interval or not self._ready:
            return
        if time.monotonic() - self._last_own_publish < interval:
            return
        with self._lock:
            client = self._client
        if client is None:
            return
        log.debug("%s: nothing sent for %g s: heartbeat", self.plan.client_id, interval)
        self._internal(client, "s/us", HEARTBEAT)

    def _lost(self) -> None:
        """The connection is gone: report what was in flight, forget the session state."""
        with self._lock:
            was_ready = self._ready
            self._ready = False
            self._generation += 1
            pending, self._pending = self._pending, {}
            self._early_acks.clear()
            self._announced.clear()
            # Errors of a connection come on that connection: a new one starts a new ring.
            self._sent.clear()
            self._waiting.clear()
            self._blamed.clear()
            client, self._client = self._client, None
        if client is not None:
            with contextlib.suppress(Exception):
                client.disconnect()
            with contextlib.suppress(Exception):
                client.loop_stop()
        if pending and not self._stop.is_set():
            log.warning("%s: %d message(s) lost in flight (no PUBACK before the connection "
                        "dropped)", self.plan.client_id, len(pending))
        for item in pending.values():
            _call(item.on_lost)
        if was_ready or pending:
            self._on_state()

    # paho callbacks: all run in paho's network thread of the current client.

    def _on_connect(self, client: paho.Client, userdata: Any, flags: Any, reason: ReasonCode,
                    properties: Any) -> None:
        code = connack_code(reason)
        if code != 0:
            username = self._settings.c8y.username if self._settings.c8y.password else None
            self._refusal = LoginRefusedError(code, self._address, username)
            return
        self._connected_once = True
        self._subscribe_attempts = 0
        self.last_error = None
        if self._outage_start is not None:
            self.last_outage = (time.monotonic() - self._outage_start, self._health.attempts)
            self._outage_start = None
        log.info("connected to %s as client id %s", self._address, self.plan.client_id)
        # Create (or confirm) the device first: Cumulocity refuses subscriptions of a client id
        # that has no device yet (protocol notes 1.10).
        self._internal(client, "s/us", self.plan.hello, on_delivered=self._subscribe)

    def _subscribe(self) -> None:
        with self._lock:
            client = self._client
        if client is None:
            return
        self._subscribe_attempts += 1
        client.subscribe([(topic, QOS) for topic in self.plan.subscriptions])

    def _on_subscribe(self, client: paho.Client, userdata: Any, mid: int,
                      reasons: list[ReasonCode], properties: Any) -> None:
        if mid in self._collection_mids:
            self._collection_mids.discard(mid)
            # Operations pushed for `500` before this subscription had no subscriber: again.
            self._internal(client, "s/us", "500")
            return
        log.debug("SUBACK %s", [str(r) for r in reasons])
        refused = [r for r in reasons if r.is_failure]
        if refused and self._subscribe_attempts < SUBSCRIBE_ATTEMPTS:
            log.warning("subscription to s/ds and s/e refused (SUBACK 0x80), retrying in %g s",
                        SUBSCRIBE_RETRY)
            with self._lock:
                self._timers.append((time.monotonic() + SUBSCRIBE_RETRY, self._subscribe))
            return
        if refused:
            log.error("subscription to s/ds and s/e refused %d times: operations and errors "
                      "from Cumulocity will not arrive; events still go out",
                      self._subscribe_attempts)
        self._subscribe_attempts = 0
        for message in self.plan.startup:
            self._internal(client, message.topic, message.payload)
        for line in self.plan.after_subscribe:
            self._internal(client, "s/us", line)
        if self.plan.token:
            self.request_token()
        with self._lock:
            self._ready = True
        self._set_health("connected", attempts=0, retry_at=None, reason=None)
        log.info("%s ready", self.plan.client_id)
        self._on_state()

    def _internal(self, client: paho.Client, topic: str, payload: str,
                  on_delivered: DeliveryCallback | None = None) -> None:
        with self._lock:
            generation = self._generation
        self._publish(client, generation, Outgoing(topic, payload), on_delivered, None)

    def _on_disconnect(self, client: paho.Client, userdata: Any, flags: Any,
                       reason: ReasonCode, properties: Any) -> None:
        self._down_reason = str(reason)
        self._down.set()

    def _on_publish(self, client: paho.Client, userdata: Any, mid: int, reason: ReasonCode,
                    properties: Any) -> None:
        with self._lock:
            item = self._pending.pop(mid, None)
            if item is None:
                self._early_acks.add(mid)
                return
            self._waiting.discard(item.message)
        _call(item.on_delivered)

    def _on_error_line(self, raw: str) -> None:
        """One `s/e` line: fine (`41,100`; `41,<X-ID>` for a collection we publish on every
        connect, protocol notes 2.1), a refusal of one of our lines (ERROR, counted by the
        listener), or an error that names none of our lines (a warning, as before)."""
        fine = expected_error(raw, self.plan.client_id, self.plan.collections)
        if fine is not None:
            log.info("%s", escape_controls(fine))
            return
        with self._lock:
            sent = blame(raw, self._sent, self._waiting, self._blamed)
            if sent is not None:
                self._blamed.add(sent.number)
        if sent is None:
            log.warning("%s", escape_controls(describe_error_line(raw)))
            return
        refusal = Refusal(raw, sent)
        log.error("%s", describe_refusal(refusal))
        if self.on_refused is not None:
            try:
                self.on_refused(refusal)
            except Exception:  # counting must not kill the network thread
                log.exception("counting a refusal by Cumulocity failed")

    def request_token(self) -> None:
        """Empty publish on `s/uat`; the JWT comes as `71,<token>` on `s/dat`. QoS 0, as
        thin-edge does (thin-edge#2417): a stale request must not be replayed."""
        with self._lock:
            client = self._client
        if client is None:
            raise UplinkError(f"{self.plan.client_id} is not connected")
        client.publish(TOKEN_REQUEST_TOPIC, b"", qos=0)

    def _on_token(self, text: str) -> None:
        for raw in text.splitlines():
            jwt = token_line(raw)
            if jwt is not None and self._tokens is not None:
                self._tokens.offer(jwt)

    def _on_template_status(self, client: paho.Client, text: str) -> None:
        for message in collections_to_create(text, self.plan.templates):
            log.info("Cumulocity: template collection %s missing, creating it", message.topic[5:])
            self._internal(client, message.topic, message.payload)
            self._internal(client, message.topic, "")  # ask again: `20` once it exists
        for xid in collections_existing(text, self.plan.templates):
            # Subscribe to s/dc/<X-ID> only once the collection exists (smartrest-two.md; notes
            # 2.6); its SUBACK sends `500` again (`_on_subscribe`).
            _, mid = client.subscribe(f"s/dc/{xid}", QOS)
            if mid is not None:
                self._collection_mids.add(mid)

    def _on_message(self, client: paho.Client, userdata: Any, message: paho.MQTTMessage) -> None:
        text = message.payload.decode("utf-8", errors="replace")
        if message.topic == TOKEN_TOPIC:
            self._on_token(text)
            return
        if message.topic == TEMPLATE_STATUS_TOPIC:
            self._on_template_status(client, text)
            return
        if message.topic == "s/e":
            for raw in text.splitlines():
                if raw.strip():
                    self._on_error_line(raw)
            return
        # s/ds and any extra subscription (a custom template collection's s/dc/<X-ID>).
        for line in decode(text):
            log.info("operation from Cumulocity on %s: %s", message.topic,
                     ",".join([line.template, *line.fields]))
            if self._on_operation is not None:
                try:
                    self._on_operation(line)
                except Exception:
                    log.exception("the operation handler failed on %s", line.template)


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


def _call(callback: DeliveryCallback | None) -> None:
    if callback is None:
        return
    try:
        callback()
    except Exception:  # a failing callback must not kill the network thread
        log.exception("a delivery callback failed")


class Uplink:
    """Sends events to Cumulocity. No network until `start()` (gateway) or the first `send`
    (per-device).

    `send` returns False while the device's connection is not ready (the caller retries when a
    state listener fires); `on_delivered` runs exactly on PUBACK, `on_lost` when the connection
    dropped before it. Both run in a network thread and must be quick.

    `supported_operations` is sent as `114` after every connect (an empty list sends a bare
    `114`, which tells Cumulocity the gateway supports none); `on_operation` receives each
    line of s/ds and of the `extra_subscriptions`, in the network thread. `startup_publishes`
    ((topic, payload) pairs, e.g. a custom template collection on `s/ut/<X-ID>`) go out after
    the SUBACK and before 114/117/500 on every connect of the gateway link; a `41` refusal to
    re-create a collection published there is logged as fine.

    `heartbeat`: seconds without a publish on the gateway's own topic after which a `125` keeps
    it "available". None (the default) means `heartbeat_period(required_interval)`: at most 5
    minutes and at most half the interval; 0 turns it off. Gateway mode only: in per-device mode
    the buttons are the devices, and a button is rightly unavailable while asleep.
    """

    def __init__(self, settings: Settings, *, on_operation: OperationHandler | None = None,
                 supported_operations: Sequence[str] = (),
                 max_refusals: int | None = MAX_REFUSALS,
                 backoff: tuple[float, float] | Backoff = (BACKOFF_MIN, BACKOFF_MAX),
                 refusal_backoff: Backoff | None = None,
                 extra_subscriptions: Sequence[str] = (),
                 startup_publishes: Sequence[tuple[str, str]] = (),
                 heartbeat: float | None = None) -> None:
        if heartbeat is None:
            heartbeat = heartbeat_period(settings.gateway.required_interval)
        if heartbeat < 0:
            raise ValueError("heartbeat must be 0 (off) or a number of seconds")
        self.heartbeat = heartbeat
        self.settings = settings
        self.on_operation = on_operation
        self.extra_subscriptions = tuple(extra_subscriptions)
        self.startup_publishes = tuple(Outgoing(t, p) for t, p in startup_publishes)
        for message in self.startup_publishes:
            check_size(message)
        self.supported_operations = tuple(supported_operations)
        # REST needs a token when the login is a certificate (token.py); the uplink asks for it.
        self.tokens: TokenSource | None = None
        if settings.c8y.password is None and self.gateway_mode:
            self.tokens = TokenSource(self.request_token)
        self.max_refusals = max_refusals
        self.backoff = backoff if isinstance(backoff, Backoff) else Backoff(*backoff)
        self.refusal_backoff = refusal_backoff if refusal_backoff is not None else self.backoff
        self._links: dict[str, _Link] = {}
        # Told when a connection's thread fails unexpectedly (the daemon then exits 1).
        self.on_failure: Callable[[BaseException], None] | None = None
        self._listeners: list[Callable[[], None]] = []
        self._refusal_listeners: list[RefusalListener] = []
        self._lock = threading.Lock()
        self._state = threading.Condition()
        self._stopped = False
        self._context: ssl.SSLContext | None = None
        self._started = False

    @property
    def gateway_mode(self) -> bool:
        return self.settings.gateway.mode == "gateway"

    def gateway_plan(self) -> LinkPlan:
        gw = self.settings.gateway
        return LinkPlan(
            client_id=gw.serial,
            hello=encode_line(100, gw.name, GATEWAY_TYPE),
            after_subscribe=(
                encode_line(114, *self.supported_operations),
                *availability_lines(gw.required_interval),
                "500",
            ),
            gateway=True,
            subscriptions=self._subscriptions(),
            startup=ensure_collections(self.startup_publishes)[0],
            heartbeat=self.heartbeat or None,
            templates=ensure_collections(self.startup_publishes)[1],
            token=self.tokens is not None,
        )

    def _subscriptions(self) -> tuple[str, ...]:
        """s/ds, s/e, the extra ones, `s/dt` for the collection check and `s/dat` for the token
        (subscribed before `s/uat` is published, device-certificates.md)."""
        templates = ensure_collections(self.startup_publishes)[1]
        later = {f"s/dc/{m.topic[5:]}" for m in templates}  # after the collection exists
        extra: list[str] = [t for t in self.extra_subscriptions if t not in later]
        if templates:
            extra.append(TEMPLATE_STATUS_TOPIC)
        if self.tokens is not None:
            extra.append(TOKEN_TOPIC)
        return ("s/ds", "s/e", *extra)

    def request_token(self) -> None:
        """Ask Cumulocity for a device token on the gateway's connection (TokenSource calls it);
        UplinkError while it is not connected (the token source asks again later)."""
        link = self._links.get(self.settings.gateway.serial)
        if link is None or not link.ready:
            raise UplinkError("the uplink is not connected")
        link.request_token()

    @staticmethod
    def device_plan(serial: str, name: str) -> LinkPlan:
        return LinkPlan(
            client_id=serial,
            hello=encode_line(100, name, BUTTON_TYPE),
            after_subscribe=("500",),
            gateway=False,
        )

    def add_listener(self, listener: Callable[[], None]) -> None:
        """Called (from a network thread) whenever a connection becomes ready, drops or fails."""
        self._listeners.append(listener)

    def add_refusal_listener(self, listener: RefusalListener) -> None:
        """Told (from a network thread, after the ERROR line) of each `s/e` error that refers
        to one of our lines: the Courier counts it in the outbox file."""
        self._refusal_listeners.append(listener)

    def _refused(self, refusal: Refusal) -> None:
        for listener in list(self._refusal_listeners):
            try:
                listener(refusal)
            except Exception:  # a failing listener must not kill the network thread
                log.exception("a refusal listener failed")

    def start(self) -> None:
        """Check the TLS files (ConfigError if unusable) and, in gateway mode, connect."""
        if self.settings.c8y.tls and self._context is None:
            self._context = make_tls_context(self.settings.c8y)
        self._started = True
        if self.tokens is not None:
            token_registry.register(self.settings.gateway.serial, self.tokens)
        if self.gateway_mode:
            self._link(self.gateway_plan())

    def stop(self, timeout: float = 5.0) -> None:
        if self.tokens is not None:
            token_registry.unregister(self.settings.gateway.serial, self.tokens)
        with self._lock:
            self._stopped = True
            links = list(self._links.values())
        deadline = time.monotonic() + timeout
        for link in links:
            link.stop(max(0.0, deadline - time.monotonic()))

    def _link(self, plan: LinkPlan) -> _Link:
        with self._lock:
            link = self._links.get(plan.client_id)
            if link is None:
                if self._stopped or not self._started:
                    raise UplinkError("the uplink is not running (call start() first)")
                link = _Link(
                    self.settings, plan, self._context, on_state=self._changed,
                    on_operation=self.on_operation, max_refusals=self.max_refusals,
                    backoff=self.backoff, refusal_backoff=self.refusal_backoff,
                    tokens=self.tokens if plan.gateway else None,
                )
                link.on_failure = self.on_failure
                link.on_refused = self._refused
                self._links[plan.client_id] = link
                link.start()
        return link

    def _link_for(self, event: Event) -> _Link:
        if self.gateway_mode:
            return self._link(self.gateway_plan())
        return self._link(self.device_plan(event.serial, event.name))

    def _changed(self) -> None:
        with self._state:
            self._state.notify_all()
        for listener in list(self._listeners):
            _call(listener)

    def send(self, event: Event, extra_lines: Sequence[str] = (), *,
             on_delivered: DeliveryCallback | None = None,
             on_lost: DeliveryCallback | None = None,
             other_lines: Sequence[DeviceLine] = (), row: int | None = None) -> bool:
        """Publish one event (QoS 1), then `other_lines` for other child devices (gateway mode).
        Raises MessageTooLargeError for an oversized message, UnsendableError for other lines
        in per-device mode. `row`, the outbox row, is named when Cumulocity refuses a line."""
        return self._link_for(event).send(event, extra_lines, on_delivered, on_lost, other_lines,
                                          row)

    def send_lines(self, lines: Sequence[DeviceLine], *,
                   on_delivered: DeliveryCallback | None = None,
                   on_lost: DeliveryCallback | None = None, row: int | None = None) -> bool:
        """Publish SmartREST lines without an event, (child serial or None, line) in order, on
        the gateway's connection. UnsendableError in per-device mode."""
        if not self.gateway_mode:
            raise UnsendableError("lines without an event need [gateway] mode = gateway")
        return self._link(self.gateway_plan()).send(None, (), on_delivered, on_lost, lines, row)

    def prepare(self, event: Event) -> None:
        """Open the connection `event` will need (per-device mode opens links lazily)."""
        self._link_for(event)

    def wait_connected(self, timeout: float, event: Event | None = None) -> bool:
        """Wait until the connection (for `event`'s device in per-device mode) is ready.
        False on timeout or when the uplink gave up (see `failed`)."""
        deadline = time.monotonic() + timeout
        with self._state:
            while True:
                links = [self._link_for(event)] if event is not None else list(
                    self._links.values()
                )
                if links and all(link.ready for link in links):
                    return True
                if self.failed is not None:
                    return False
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return False
                self._state.wait(min(remaining, LOOP_TICK))

    @property
    def connected(self) -> bool:
        links = list(self._links.values())
        return bool(links) and all(link.ready for link in links)

    @property
    def alive(self) -> bool:
        """Every connection's thread still runs (for the systemd watchdog)."""
        return all(link.alive for link in list(self._links.values()))

    def health(self) -> list[LinkHealth]:
        """The state of each connection (one in gateway mode), for status and metrics."""
        return [link.health for link in list(self._links.values())]

    @property
    def last_outage(self) -> tuple[float, int] | None:
        """(seconds, failed attempts) of the longest outage that ended with the last connects."""
        outages = [link.last_outage for link in list(self._links.values())
                   if link.last_outage is not None]
        return max(outages) if outages else None

    @property
    def failed(self) -> UplinkError | None:
        """The fatal refusal after which a connection stopped retrying, if any."""
        for link in list(self._links.values()):
            if link.failed is not None:
                return link.failed
        return None

    @property
    def last_error(self) -> UplinkError | None:
        """The most recent connection error (None while all connections are up)."""
        for link in list(self._links.values()):
            if link.failed is not None or link.last_error is not None:
                return link.failed or link.last_error
        return None


def try_login(settings: Settings, timeout: float = 10.0) -> str:
    """The one-shot login probe of `check`; see probe.py (kept here for older imports)."""
    from dashkanban.c8y.probe import try_login as probe

    return probe(settings, timeout)
