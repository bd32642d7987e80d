"""The MQTT buttons wired into `run`: the ButtonBroker with its press and battery handlers.

Kept out of daemon.py so that the daemon only starts `broker.run()` (a thread of its own today,
a task of its TaskGroup once `run` is one asyncio loop) and hands over what a press needs.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from datetime import UTC, datetime

from dashkanban.buttons import Registry
from dashkanban.config import Settings
from dashkanban.metrics import Metrics
from dashkanban.mqtt_buttons.battery import LOW, BatteryFile, BatteryPolicy, measurement_lines
from dashkanban.mqtt_buttons.source import Battery, ButtonBroker, MqttPress
from dashkanban.pipeline import Pipeline
from dashkanban.presses import Press

log = logging.getLogger(__name__)

PutLines = Callable[[Sequence[tuple[str | None, str]], datetime], object]


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


def battery_handler(settings: Settings, put_lines: PutLines) -> Callable[[Battery], None]:
    """An MQTT button's battery level: kept for `outbox status`, a warning once when low, and
    `c8y_Battery` through the outbox at most once an hour (battery.py)."""
    from dashkanban.outbox import OutboxError

    policy = BatteryPolicy()
    kept = BatteryFile(settings.outbox.path)

    def on_battery(level: Battery) -> None:
        button, when = level.button, datetime.fromtimestamp(level.time, UTC)
        decision = policy.report(button.serial, level.percent, time.monotonic())
        kept.record(button, level.percent, when)
        if decision.warn:
            log.warning("%s (%s): battery at %g %%, under %g %%: replace it soon",
                        button.name, button.serial, level.percent, LOW)
        # A row of lines only goes in gateway mode (c8y/mqtt.py); per-device mode keeps the
        # level locally.
        if decision.send and settings.gateway.mode == "gateway":
            try:
                put_lines(measurement_lines(button, level.percent, when), when)
            except OutboxError as exc:
                log.warning("%s: battery level %g %% not queued: %s", button.name,
                            level.percent, exc)

    return on_battery
