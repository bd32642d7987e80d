"""The button broker's client: MQTT buttons' messages -> presses and battery levels (issue 19).

One connection to the local broker of `[mqtt_buttons]`, subscribed to the topic of every MQTT
button of MACID.csv (and the Shelly battery topics next to them), clean session. Each message
is read by `payloads.read_message` (pure); a press goes to `on_press`, which debounces and
queues it like a network press (the daemon's `Pipeline.feed_mqtt`, then the outbox). A retained
message is never a press; a Shelly `event_cnt` seen before is the same press re-sent. A message
no format reads is counted (`malformed`) and logged at DEBUG, never raised on.

The connection is made again for ever with the project's backoff (backoff.py, capped by
`[C8YMQTT] retry_max` like the uplink's): a broker that restarts, or refuses the login for a
while, costs presses made in between only (MQTT buttons do not queue them), never the daemon.
`run()` returns only when cancelled; an exception from `on_press` (a bug, or an outbox that
cannot be written), or from the task that subscribes a reload's topics, ends it, so the daemon's
supervisor ends the process: both run in one TaskGroup per connection.

Without a topic in MACID.csv `run()` idles, connecting nowhere, until `use_registry` (SIGHUP)
brings one: a daemon started before the first MQTT button was listed needs a reload, not a
restart. With `metrics`, the messages, presses and malformed messages are counted there and the
connection is its `mqtt_buttons_connected` gauge (metrics.py).
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import logging
import ssl
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, TypeVar

import aiomqtt
from aiomqtt.exceptions import MqttConnectError

from dashkanban.backoff import RETRY_MAX, uplink_backoffs
from dashkanban.config import MqttButtonsSettings
from dashkanban.detect.buttons import Button, Registry
from dashkanban.mqtt_buttons.payloads import (
    MAX_PAYLOAD,
    BatteryLevel,
    ButtonPress,
    Reading,
    Repeats,
    Unreadable,
    battery_topic,
    read_message,
)
from dashkanban.values import PressKind

if TYPE_CHECKING:
    from dashkanban.metrics import ButtonCounterName, Metrics

log = logging.getLogger(__name__)

CONNECT_TIMEOUT = 10.0  # seconds for the CONNACK and the SUBACK
KEEPALIVE = 60
T = TypeVar("T")
# Messages received but not yet read; a flood beyond this is dropped by aiomqtt (with a WARNING).
# Each holds at most MAX_PAYLOAD bytes (`_Inbox`), so the queue holds at most ~2 MiB.
MAX_QUEUED = 256


class _Oversized(aiomqtt.Message):
    """A message over MAX_PAYLOAD, its payload dropped on arrival: only its size is kept."""

    def __init__(self, message: aiomqtt.Message, size: int) -> None:
        super().__init__(message.topic, b"", message.qos, message.retain, message.mid,
                         message.properties)
        self.size = size


class _Inbox(asyncio.Queue[aiomqtt.Message]):
    """aiomqtt's incoming queue (`queue_type`), holding no payload over MAX_PAYLOAD.

    MQTT 3.1.1 has no way for a client to refuse a large message (v5's Maximum Packet Size is
    not in it): paho reads each PUBLISH whole, up to the broker's limit (mosquitto's default is
    the protocol's 256 MB). That one message is unavoidable; keeping it queued is not. Its bytes
    go here, on arrival, so MAX_QUEUED messages cost at most MAX_QUEUED * MAX_PAYLOAD bytes.
    The broker's own limit bounds the one message read (docs/buttons.md, "Message size")."""

    def put_nowait(self, item: aiomqtt.Message) -> None:
        payload = item.payload
        if isinstance(payload, bytes | bytearray | str) and len(payload) > MAX_PAYLOAD:
            item = _Oversized(item, len(payload))
        super().put_nowait(item)


@dataclass(frozen=True, slots=True)
class MqttPress:
    """A press an MQTT button reported: before the dead time (the caller debounces it)."""

    button: Button
    kind: PressKind
    time: float  # epoch seconds of its arrival (the buttons' messages carry no time)
    topic: str


@dataclass(frozen=True, slots=True)
class Battery:
    button: Button
    percent: float
    time: float


OnPress = Callable[[MqttPress], Awaitable[None] | None]
OnBattery = Callable[[Battery], Awaitable[None] | None]


class ButtonBroker:
    """`await ButtonBroker(settings, registry, on_press).run()`: nothing happens before `run`."""

    def __init__(self, settings: MqttButtonsSettings, registry: Registry, on_press: OnPress, *,
                 on_battery: OnBattery | None = None, retry_max: float = RETRY_MAX,
                 clock: Callable[[], float] = time.time, metrics: Metrics | None = None) -> None:
        """`on_press`/`on_battery` may be plain functions or coroutine functions (then awaited:
        e.g. `writer.call(...)`, so the loop never waits on the outbox's fsync). `metrics`: the
        daemon's, which then show this broker's counters and gauge."""
        self.settings = settings
        self.metrics = metrics
        if metrics is not None:
            metrics.track_buttons()
        self.registry = registry
        self.on_press = on_press
        self.on_battery = on_battery
        self._transport, self._refusal = uplink_backoffs(retry_max)
        self._clock = clock
        self._repeats = Repeats()
        self._battery_topics: dict[str, Button] = {}
        self._context: ssl.SSLContext | None = None
        self._loop: asyncio.AbstractEventLoop | None = None  # run()'s, for use_registry
        self._wake: asyncio.Event | None = None
        self.connected = asyncio.Event()  # set while subscribed; for tests and health
        self.subscribed: frozenset[str] = frozenset()  # the topics of the open connection
        self.messages = 0
        self.presses = 0
        self.repeats = 0
        self.malformed = 0
        self.connections = 0
        self.last_error: str | None = None

    def topics(self) -> list[str]:
        """What to subscribe to: each MQTT button's topic, and its battery topic if apart."""
        found: list[str] = []
        self._battery_topics = {}
        for topic in self.registry.topics:
            button = self.registry.by_topic(topic)
            if button is None:  # pragma: no cover - topics come from the registry
                continue
            found.append(topic)
            extra = battery_topic(topic, button.format)
            if extra is not None and self.registry.by_topic(extra) is None:
                self._battery_topics[extra] = button
                found.append(extra)
        return found

    def tls_context(self) -> ssl.SSLContext | None:
        """The TLS context of `tls = yes` (None without): built once, and a ConfigError for a
        ca_file that cannot be used (the daemon asks before starting, so that is exit 2)."""
        if self._context is None and self.settings.tls:
            from dashkanban.c8y.tls import verifying_context

            self._context = verifying_context(self.settings.ca_file)
        return self._context

    def use_registry(self, registry: Registry) -> None:
        """Listen to `registry`'s buttons from now on (SIGHUP re-read MACID.csv): the topics are
        subscribed and unsubscribed on the open connection. Safe from any thread."""
        self.registry = registry
        loop, wake = self._loop, self._wake
        if loop is not None and wake is not None:
            with contextlib.suppress(RuntimeError):  # the loop has ended: nothing to tell
                loop.call_soon_threadsafe(wake.set)

    async def _follow(self, client: aiomqtt.Client, subscribed: set[str]) -> None:
        """On the open connection: the topics of each new registry (use_registry)."""
        assert self._wake is not None
        while True:
            await self._wake.wait()
            self._wake.clear()
            wanted = set(self.topics())
            added, gone = sorted(wanted - subscribed), sorted(subscribed - wanted)
            try:
                if added:
                    await client.subscribe([(t, 1) for t in added])
                if gone:
                    await client.unsubscribe(gone)
            except aiomqtt.MqttError as exc:  # the message loop sees the connection go
                log.warning("button broker: the new topics are not subscribed yet (%s); they "
                            "are at the next connect", exc)
                continue
            subscribed.clear()
            subscribed.update(wanted)
            self.subscribed = frozenset(wanted)
            log.info("button broker: %d MQTT button topic(s) after the reload (%d new, %d "
                     "dropped)", len(wanted), len(added), len(gone))

    async def run(self) -> None:
        self._loop, self._wake = asyncio.get_running_loop(), asyncio.Event()
        settings = self.settings
        address = f"{settings.host}:{settings.port}"
        context = self.tls_context()
        attempt = 0
        idle_said = False
        while True:
            topics = self.topics()
            if not topics:
                # Nothing to listen to: no connection until a reload lists an MQTT button.
                if not idle_said:
                    log.info("button broker %s: no button has a topic; not connecting until a "
                             "reload (SIGHUP) lists one", address)
                    idle_said = True
                self.subscribed = frozenset()
                await self._wake.wait()
                self._wake.clear()
                continue
            idle_said = False
            backoff = self._transport
            try:
                async with aiomqtt.Client(
                    settings.host, settings.port, username=settings.user,
                    password=settings.password.reveal() if settings.password else None,
                    protocol=aiomqtt.ProtocolVersion.V311, clean_session=True,
                    keepalive=KEEPALIVE, tls_context=context, timeout=CONNECT_TIMEOUT,
                    max_queued_incoming_messages=MAX_QUEUED, queue_type=_Inbox,
                ) as client:
                    await client.subscribe([(t, 1) for t in topics])
                    self.subscribed = frozenset(topics)
                    attempt = 0
                    self.connections += 1
                    self.last_error = None
                    self.connected.set()
                    if self.metrics is not None:
                        self.metrics.buttons_connected(True)
                    log.info("button broker %s: listening to %d MQTT button topic(s)", address,
                             len(topics))
                    await self._listen(client, set(topics))
            except MqttConnectError as exc:
                backoff = self._refusal  # a refused login: slowly, as the uplink does
                self.last_error = f"refused the login ({exc})"
            except aiomqtt.MqttError as exc:
                self.last_error = str(exc) or type(exc).__name__
            finally:
                self.connected.clear()
                if self.metrics is not None:
                    self.metrics.buttons_connected(False)
            attempt += 1
            delay = backoff.delay(attempt)
            log.warning("button broker %s: %s; connecting again in %.1f s", address,
                        self.last_error, delay)
            await asyncio.sleep(delay)

    async def _listen(self, client: aiomqtt.Client, subscribed: set[str]) -> None:
        """The open connection's two tasks, supervised together: the messages, and the topics
        of each reload (`_follow`). The first to fail ends both and raises its exception as it
        is (an MqttError: connect again; anything else, a bug: `run` ends). Without the group a
        follower that failed ended unobserved, and later reloads were never subscribed."""
        try:
            async with asyncio.TaskGroup() as group:
                group.create_task(self._follow(client, subscribed))
                await self._read(client)
        except BaseExceptionGroup as failed:
            raise _outcome(failed) from None

    async def _read(self, client: aiomqtt.Client) -> None:
        async for message in client.messages:
            if isinstance(message, _Oversized):
                await self.handle(message.topic.value, b"", bool(message.retain),
                                  size=message.size)
                continue
            payload = message.payload if isinstance(message.payload, bytes) else b""
            await self.handle(message.topic.value, payload, bool(message.retain))
        raise aiomqtt.MqttError("the connection closed")

    async def handle(self, topic: str, payload: bytes, retained: bool, *,
                     size: int | None = None) -> None:
        """One message (also what tests feed directly). `size`: a message over MAX_PAYLOAD
        whose payload was dropped on arrival (`_Inbox`); it reads as payloads' oversize."""
        self.messages += 1
        self._count("mqtt_messages")
        button = self.registry.by_topic(topic)
        owner = button if button is not None else self._battery_topics.get(topic)
        if owner is None:
            return  # not ours (a topic dropped by a reload)
        if size is not None and not retained:
            reading: Reading = Unreadable(f"{size} bytes, over {MAX_PAYLOAD}")
        else:
            reading = read_message(topic, payload, retained, owner.format)
        now = self._clock()
        if isinstance(reading, Unreadable):
            self.malformed += 1
            self._count("mqtt_malformed")
            log.debug("button broker: unreadable message on %r (%d bytes): %s", topic,
                      len(payload) if size is None else size, reading.reason)
            return
        if isinstance(reading, BatteryLevel):
            await self._battery(Battery(owner, reading.percent, now))
            return
        if not isinstance(reading, ButtonPress):
            log.debug("button broker: no press on %r: %s", topic, reading.reason)
            return
        if button is None:
            return  # a press format on a battery topic: nothing to count
        if self._repeats.seen(topic, reading):
            self.repeats += 1
            log.debug("button broker: %s event_cnt %s again: the same press", button.name,
                      reading.count)
            return
        self.presses += 1
        self._count("mqtt_presses")
        if reading.battery is not None:
            await self._battery(Battery(button, reading.battery, now))
        await _call(self.on_press, MqttPress(button, reading.kind, now, topic))

    def _count(self, name: ButtonCounterName) -> None:
        if self.metrics is not None:
            self.metrics.add(name)

    async def _battery(self, level: Battery) -> None:
        if self.on_battery is not None:
            await _call(self.on_battery, level)


def _outcome(failed: BaseExceptionGroup[BaseException]) -> BaseException:
    """What `_listen` raises for its TaskGroup's errors, as itself (so `run`'s `except
    MqttError` sees a lost connection). Usually one: a failure cancels the other task, and a
    cancelled task adds nothing. Both fail in the same loop iteration now and then (a lost
    connection that also breaks the other task), and the group lists them in no useful order:
    a bug (anything but an MqttError) wins, so it ends `run` instead of being dropped for a
    reconnect; further bugs are logged. With MqttErrors only, a cancel from outside that
    arrived in that iteration is in none of them (TaskGroup lets errors take priority over
    it, Python 3.11's taskgroups.py) and must still end `run`: a CancelledError then."""
    bugs = [e for e in failed.exceptions if not isinstance(e, aiomqtt.MqttError)]
    for other in bugs[1:]:
        log.error("button broker: a further failure at the same moment", exc_info=other)
    if bugs:
        return bugs[0]
    task = asyncio.current_task()
    if task is not None and task.cancelling():
        return asyncio.CancelledError()
    return failed.exceptions[0]


async def _call(callback: Callable[[T], Awaitable[None] | None], value: T) -> None:
    result = callback(value)
    if inspect.isawaitable(result):
        await result


async def try_broker(settings: MqttButtonsSettings, timeout: float = CONNECT_TIMEOUT) -> None:
    """Connect and log in once, then leave (`dashkanban check`); an MqttError says why not."""
    from dashkanban.c8y.tls import verifying_context

    context = verifying_context(settings.ca_file) if settings.tls else None
    async with aiomqtt.Client(
        settings.host, settings.port, username=settings.user,
        password=settings.password.reveal() if settings.password else None,
        protocol=aiomqtt.ProtocolVersion.V311, clean_session=True, tls_context=context,
        timeout=timeout,
    ):
        pass
