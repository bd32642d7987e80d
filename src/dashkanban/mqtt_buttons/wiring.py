"""The MQTT buttons wired into `run`: the ButtonBroker with its press and battery handlers, and
the frame source of a `run` whose buttons are all MQTT buttons (no raw socket).

Kept out of commands/run.py so that the daemon only starts `broker.run()` (a thread of its own
today, a task of its TaskGroup once `run` is one asyncio loop) and hands over what a press needs.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
import threading
import time
from collections.abc import Awaitable, Callable, Iterator, Sequence
from datetime import UTC, datetime
from typing import TYPE_CHECKING

from dashkanban.config import Settings
from dashkanban.detect.buttons import Registry
from dashkanban.detect.pipeline import Pipeline
from dashkanban.detect.presses import Press
from dashkanban.mqtt_buttons.battery import LOW, BatteryFile, BatteryPolicy, measurement_lines
from dashkanban.mqtt_buttons.source import Battery, ButtonBroker, MqttPress
from dashkanban.values import DeviceLine

if TYPE_CHECKING:
    from dashkanban.capture import Frame
    from dashkanban.capture.bpf import Program
    from dashkanban.capture.live import LiveCapture
    from dashkanban.metrics import Metrics

log = logging.getLogger(__name__)

STOP_POLL = 0.5  # seconds; how late NoCapture.frames() sees stop() (also from a signal handler)

PutLines = Callable[[Sequence[DeviceLine], datetime], object]


def make_broker(settings: Settings, registry: Registry, pipeline: Pipeline,
                handle: Callable[[Press], None], put_lines: PutLines, *,
                metrics: Metrics | None = None) -> ButtonBroker | None:
    """The button broker of `[mqtt_buttons]`, or None without the section (said once when
    MACID.csv has topics). Without topics it is made all the same and idles, so that a reload
    (SIGHUP) that lists the first MQTT button starts it. `handle` queues a press (the daemon's,
    as for network presses), `put_lines` a row of lines (`Courier.put_lines`); `metrics` (the
    daemon's) shows the broker's counters. Raises ConfigError for an unusable ca_file, before
    anything runs."""
    if settings.mqtt_buttons is None:
        if registry.topics:
            log.warning("%d button(s) in %s have a topic, but config.ini has no "
                        "[mqtt_buttons] section: their presses are not received",
                        len(registry.topics), settings.buttons.file)
        return None
    if not registry.topics:
        log.warning("[mqtt_buttons] is set, but no button in %s has a topic (yet: a reload "
                    "that adds one starts listening)", settings.buttons.file)

    def on_press(reported: MqttPress) -> None:
        # The same dead time as network presses, on the daemon's monotonic clock.
        press = pipeline.feed_mqtt(reported.button, reported.kind, reported.time,
                                   time.monotonic())
        if press is not None:
            handle(press)

    broker = ButtonBroker(settings.mqtt_buttons, registry, on_press,
                          on_battery=battery_handler(settings, put_lines),
                          retry_max=settings.c8y.retry_max, metrics=metrics)
    broker.tls_context()  # a ca_file that cannot be used: a ConfigError now (exit 2)
    return broker


def battery_handler(settings: Settings,
                    put_lines: PutLines) -> Callable[[Battery], Awaitable[None]]:
    """An MQTT button's battery level: kept for `outbox status`, a warning once when low, and
    `c8y_Battery` through the outbox at most once an hour (battery.py)."""
    from dashkanban.outbox.store import OutboxError

    policy = BatteryPolicy()
    kept = BatteryFile(settings.outbox.path)

    async def on_battery(level: Battery) -> None:
        button, when = level.button, datetime.fromtimestamp(level.time, UTC)
        decision = policy.report(button.serial, level.percent, time.monotonic())
        # On a worker thread: the file's write is fsynced, and the loop must not wait for the
        # disk (docs/architecture.md). Awaited, so the broker's messages keep their order.
        await asyncio.to_thread(kept.record, button, level.percent, when)
        if decision.warn:
            log.warning("%s (%s): battery at %g %%, under %g %%: replace it soon",
                        button.name, button.serial, level.percent, LOW)
        # A row of lines only goes in gateway mode (c8y/mqtt.py); per-device mode keeps the
        # level locally.
        if decision.send and settings.gateway.mode == "gateway":
            try:
                queued = put_lines(measurement_lines(button, level.percent, when), when)
                if inspect.isawaitable(queued):  # the daemon's Courier.put_lines
                    await queued
            except OutboxError as exc:
                log.warning("%s: battery level %g %% not queued: %s", button.name,
                            level.percent, exc)

    return on_battery


def mqtt_only(settings: Settings, registry: Registry) -> bool:
    """Whether network join has nothing to catch: `[buttons] source = csv` and every button of
    MACID.csv (at least one) has a topic. An empty MACID.csv still captures, as before: its
    buttons are to come, and most are network-join buttons."""
    return (settings.buttons.source == "csv" and len(registry) > 0
            and all(button.topic is not None for button in registry))


class NoCapture:
    """The frame source of `run` when every button is an MQTT button: no raw socket is opened,
    so `run` needs no CAP_NET_RAW. `frames()` yields nothing until `stop()`; `run()` (the
    asyncio daemon's) awaits until cancelled. A reload that lists a network-join button is told
    to restart: there is no socket to put its filter on."""

    def __init__(self) -> None:
        self._stopped = threading.Event()

    def frames(self) -> Iterator[Frame]:
        while not self._stopped.wait(STOP_POLL):
            pass
        yield from ()

    async def run(self, handle: Callable[[Frame], None]) -> None:
        await asyncio.Event().wait()  # until cancelled: no frame ever comes

    def stop(self) -> None:
        self._stopped.set()

    def set_filter(self, programs: Program | Sequence[Program]) -> Program | None:
        """The reload's new filter: nothing to attach it to. When it compares MACs, MACID.csv
        now has network-join buttons, which only a restart captures (one WARNING)."""
        first = programs if not isinstance(programs, Sequence) else programs[0]
        if first.buttons:
            log.warning("MACID.csv now lists %d network-join button(s) (without a topic); "
                        "`run` started with MQTT buttons only and opened no capture socket: "
                        "restart it (systemctl restart dashkanban) to catch their presses",
                        first.buttons)
        return None


def frame_source(settings: Settings, interface: str | None,
                 registry: Registry | None = None) -> LiveCapture | NoCapture:
    """What `run` reads presses from: the live capture on `interface` (or `[capture]
    interface`), built as `run` built it, its permission checked now (exit 2 with the fix
    before connecting anywhere), or NoCapture when every button is an MQTT button
    (`mqtt_only`), said in one INFO line. `registry`: MACID.csv when already read (else read
    here, for `source = csv` only)."""
    from dashkanban.capture.filters import kernel_programs
    from dashkanban.capture.live import LiveCapture, resolve_interface

    if settings.buttons.source != "csv":
        registry = None
    elif registry is None:
        from dashkanban.detect.buttons import parse_buttons
        from dashkanban.files import read_buttons_text

        registry = parse_buttons(read_buttons_text(settings.buttons.file), settings.buttons.file)
    if registry is not None and mqtt_only(settings, registry):
        log.info("every button in %s is an MQTT button: no network capture (no raw "
                 "socket, CAP_NET_RAW not needed)", settings.buttons.file)
        return NoCapture()
    name = resolve_interface(interface or settings.capture.interface)
    capture = LiveCapture(name, settings.capture.detect,
                          promiscuous=settings.capture.promiscuous,
                          programs=kernel_programs(settings, registry))
    capture.check_permission()  # before connecting anywhere: exit 2 with the fix
    return capture  # `run` says "capturing on ..." (its own logger: a line tests look for)
