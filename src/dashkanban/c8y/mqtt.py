"""The uplink: MQTT 3.1.1 connections to Cumulocity speaking SmartREST 2.0, on the event loop.

docs/cumulocity.md, and docs/protocol.md sections 1 and 2. Gateway mode (the default) has one
connection (a `Link`, c8y/link.py) whose client id is the gateway's serial; the buttons are its
child devices. Per-device mode (the original example's) has one link per button serial, opened when
that button first sends. `Uplink.run()` owns the links as tasks of one group: it returns only when
cancelled, and raises when a link fails unexpectedly (a bug), which ends `run` with exit 1.

Hooks for features on top (the Kanban loop uses them; this module knows nothing of it):
`extra_subscriptions` are subscribed next to s/ds and s/e, `startup_publishes` are published after
the SUBACK and before 114/117/500 on every connect, and `on_operation` receives each line of any
subscribed downstream topic (everything but s/e), on the loop (a handler that raises has a bug: it
ends `run`; a line it cannot use is its to refuse). An event may carry lines for other
child devices of the gateway (`other_lines`), and `send_lines` sends such lines without an event.

Pure message building is c8y/protocol.py; the one-shot login probe of `check` is c8y/probe.py.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import ssl
import time
from collections.abc import Callable, Sequence
from typing import Any

from dashkanban.backoff import Backoff, uplink_backoffs
from dashkanban.c8y import token as token_registry
from dashkanban.c8y.link import (
    TEMPLATE_STATUS_TOPIC,
    ConnectionLostError,
    Link,
    LinkHealth,
    LinkPlan,
    LinkState,
    OperationHandler,
    RefusalListener,
    availability_lines,
    collections_existing,
    collections_to_create,
    ensure_collections,
    heartbeat_period,
)
from dashkanban.c8y.protocol import (
    BUTTON_TYPE,
    GATEWAY_TYPE,
    LoginRefusedError,
    MessageTooLargeError,
    Outgoing,
    Refusal,
    TlsFailedError,
    UnreachableError,
    UnsendableError,
    check_size,
    connack_code,
    connack_meaning,
    describe_error_line,
    event_messages,
    lines_messages,
)
from dashkanban.c8y.smartrest import encode_line
from dashkanban.c8y.tls import make_tls_context
from dashkanban.c8y.token import TOKEN_TOPIC, TokenSource
from dashkanban.config import Settings
from dashkanban.detect.events import Event
from dashkanban.errors import UplinkError
from dashkanban.values import DeviceLine

log = logging.getLogger(__name__)

# What this module offers, including the names it re-exports for older imports.
__all__ = [
    "BUTTON_TYPE", "GATEWAY_TYPE", "MAX_REFUSALS", "TEMPLATE_STATUS_TOPIC",
    "ConnectionLostError", "DeviceLine", "LinkHealth", "LinkPlan", "LinkState",
    "LoginRefusedError", "MessageTooLargeError", "Outgoing", "Refusal", "TlsFailedError",
    "UnreachableError", "UnsendableError", "Uplink", "availability_lines", "check_size",
    "collections_existing", "collections_to_create", "connack_code", "connack_meaning",
    "describe_error_line", "ensure_collections", "event_messages", "heartbeat_period",
    "lines_messages", "service_options", "try_login",
]

# Reconnect backoff of the one-shot commands (see backoff.py; `run` uses `[C8YMQTT] retry_max`).
BACKOFF_MIN = 1.0
BACKOFF_MAX = 60.0
# Consecutive refusals (bad credentials, not authorised, untrusted certificate) after which a
# one-shot command gives up (fail fast, exit 1). `run` never gives up (`service_options`):
# Cumulocity's CONNACK 5 can be transient ("repeat the connection a few times", docs/protocol.md
# 1.7), a password can be fixed on the tenant, and nobody restarts a daemon that merely waits.
MAX_REFUSALS = 3

StateListener = Callable[[], None]


def service_options(settings: Settings) -> dict[str, Any]:
    """The Uplink keywords of `run`: never give up; refusals retried from 30 s, transport
    trouble from 1 s, both at most every `[C8YMQTT] retry_max` seconds."""
    transport, refusal = uplink_backoffs(settings.c8y.retry_max)
    return {"max_refusals": None, "backoff": transport, "refusal_backoff": refusal}


class Uplink:
    """Sends events to Cumulocity. No network until `run()` (gateway) or the first `send`
    (per-device). Everything but `request_token` is called on the event loop that runs `run()`.

    `send` returns None while the device's connection is not ready (the caller tries again when
    a state listener fires), else a future that completes on the PUBACKs of the row, or fails
    with ConnectionLostError when the connection dropped before them.

    `supported_operations` is sent as `114` after every connect (an empty list sends a bare
    `114`, which tells Cumulocity the gateway supports none). `startup_publishes` ((topic,
    payload) pairs, e.g. a custom template collection on `s/ut/<X-ID>`) go out after the SUBACK
    and before 114/117/500 on every connect of the gateway link.

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
        self._links: dict[str, Link] = {}
        self._listeners: list[StateListener] = []
        self._refusal_listeners: list[RefusalListener] = []
        self._context: ssl.SSLContext | None = None
        self._group: asyncio.TaskGroup | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._changed_event: asyncio.Event | None = None

    @property
    def gateway_mode(self) -> bool:
        return self.settings.gateway.mode == "gateway"

    def gateway_plan(self) -> LinkPlan:
        gw = self.settings.gateway
        startup, templates = ensure_collections(self.startup_publishes)
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
            startup=startup,
            heartbeat=self.heartbeat or None,
            templates=templates,
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

    @staticmethod
    def device_plan(serial: str, name: str) -> LinkPlan:
        return LinkPlan(
            client_id=serial,
            hello=encode_line(100, name, BUTTON_TYPE),
            after_subscribe=("500",),
            gateway=False,
        )

    def add_listener(self, listener: StateListener) -> None:
        """Called (on the loop) whenever a connection becomes ready, drops or fails."""
        self._listeners.append(listener)

    def add_refusal_listener(self, listener: RefusalListener) -> None:
        """Told (on the loop, after the ERROR line) of each `s/e` error that refers to one of
        our lines: the Courier counts it in the outbox file."""
        self._refusal_listeners.append(listener)

    def _refused(self, refusal: Refusal) -> None:
        for listener in list(self._refusal_listeners):
            listener(refusal)

    def _changed(self) -> None:
        if self._changed_event is not None:
            self._changed_event.set()
        for listener in list(self._listeners):
            listener()

    # -- running ---------------------------------------------------------------------------------

    async def run(self) -> None:
        """Check the TLS files (ConfigError if unusable), connect (gateway mode) and keep the
        links up until cancelled. Raises what a link raises unexpectedly."""
        if self.settings.c8y.tls and self._context is None:
            self._context = make_tls_context(self.settings.c8y)
        self._loop = asyncio.get_running_loop()
        self._changed_event = asyncio.Event()
        if self.tokens is not None:
            token_registry.register(self.settings.gateway.serial, self.tokens)
        try:
            async with asyncio.TaskGroup() as group:
                self._group = group
                if self.gateway_mode:
                    self._link(self.gateway_plan())
                # The group ends when cancelled; a link that fails takes the group with it.
                await asyncio.Event().wait()
        finally:
            self._group = None
            if self.tokens is not None:
                token_registry.unregister(self.settings.gateway.serial, self.tokens)

    @property
    def running(self) -> bool:
        return self._group is not None

    def _link(self, plan: LinkPlan) -> Link:
        link = self._links.get(plan.client_id)
        if link is None:
            if self._group is None:
                raise UplinkError("the uplink is not running (await run() first)")
            link = Link(
                self.settings, plan, self._context, backoff=self.backoff,
                refusal_backoff=self.refusal_backoff, max_refusals=self.max_refusals,
                on_state=self._changed, on_operation=self.on_operation,
                on_refused=self._refused, tokens=self.tokens if plan.gateway else None,
            )
            self._links[plan.client_id] = link
            self._group.create_task(link.run(), name=f"uplink-{plan.client_id}")
        return link

    def _link_for(self, event: Event) -> Link:
        if self.gateway_mode:
            return self._link(self.gateway_plan())
        return self._link(self.device_plan(event.serial, event.name))

    def send(self, event: Event, extra_lines: Sequence[str] = (), *,
             other_lines: Sequence[DeviceLine] = (),
             row: int | None = None) -> asyncio.Future[None] | None:
        """Publish one event (QoS 1), then `other_lines` for other child devices (gateway mode).
        Raises MessageTooLargeError for an oversized message, UnsendableError for other lines
        in per-device mode. `row`, the outbox row, is named when Cumulocity refuses a line."""
        return self._link_for(event).send(event, extra_lines, other_lines, row)

    def send_lines(self, lines: Sequence[DeviceLine], *,
                   row: int | None = None) -> asyncio.Future[None] | None:
        """Publish SmartREST lines without an event, (child serial or None, line) in order, on
        the gateway's connection. UnsendableError in per-device mode."""
        if not self.gateway_mode:
            raise UnsendableError("lines without an event need [gateway] mode = gateway")
        return self._link(self.gateway_plan()).send(None, (), lines, row)

    async def wait_connected(self, timeout: float, event: Event | None = None) -> bool:
        """Wait until the connection (for `event`'s device in per-device mode) is ready.
        False on timeout or when the uplink gave up (see `failed`)."""
        deadline = time.monotonic() + timeout
        while True:
            links = [self._link_for(event)] if event is not None else list(self._links.values())
            if links and all(link.ready for link in links):
                return True
            if self.failed is not None:
                return False
            remaining = deadline - time.monotonic()
            if remaining <= 0 or self._changed_event is None:
                return False
            self._changed_event.clear()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(remaining):
                    await self._changed_event.wait()

    def request_token(self) -> None:
        """Ask Cumulocity for a device token on the gateway's connection (TokenSource calls it,
        from the REST client's thread or the loop); UplinkError while it is not running."""
        loop = self._loop
        if loop is None or loop.is_closed() or self._group is None:
            raise UplinkError("the uplink is not connected")
        link = self._links.get(self.settings.gateway.serial)
        if link is None:
            raise UplinkError("the uplink is not connected")
        try:
            running: asyncio.AbstractEventLoop | None = asyncio.get_running_loop()
        except RuntimeError:
            running = None
        if running is loop:
            link.request_token()
            return
        # From a thread that REST work was handed off to: the link lives on the loop. The token
        # source waits for the answer (`offer`) and asks again if none comes.
        loop.call_soon_threadsafe(_ask_quietly, link, self.tokens)

    @property
    def connected(self) -> bool:
        links = list(self._links.values())
        return bool(links) and all(link.ready for link in links)

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


def _ask_quietly(link: Link, tokens: TokenSource | None) -> None:
    try:
        link.request_token()
    except UplinkError as exc:  # the connection dropped meanwhile: the token source asks again
        log.info("cannot ask for a device token now: %s", exc)
        if tokens is not None:
            # Not asked after all: the next connect asks (its start-up sequence), instead of
            # taking this request for one in flight until `wait` runs out.
            tokens.forget_request()


def try_login(settings: Settings, timeout: float = 10.0) -> str:
    """The one-shot login probe of `check`; see probe.py (kept here for older imports)."""
    from dashkanban.c8y.probe import try_login as probe

    return probe(settings, timeout)
