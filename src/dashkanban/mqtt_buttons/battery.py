"""Battery levels of MQTT buttons (issue 19): when to send one, when to warn, the last ones.

A button reports its level with many of its messages (zigbee2mqtt with each, a Shelly Button1 on
every wake-up). Cumulocity gets it as the button's measurement `c8y_Battery` (series `level`,
unit `%`) at most once an hour per button; a level under `LOW` logs one warning, given again
only after the level was back up to `REARM` (a new battery; a level wavering around `LOW`
warns once). The last level of each button is kept next to the outbox, for
`outbox status` and `discover`.
"""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from dashkanban.detect.buttons import Button
from dashkanban.files import write_atomic
from dashkanban.values import DeviceLine

log = logging.getLogger(__name__)

SEND_EVERY = 3600.0  # seconds: one measurement an hour per button at most
LOW = 15.0  # percent: under this, one warning
# Percent: the warning is given again only after the level was back up to this. A level read
# near LOW wavers (14, 15, 14 with the temperature and the load of the last radio message);
# re-arming at LOW itself warned at each dip. 20 %: more than such a reading wavers, less than
# any fresh battery shows.
REARM = 20.0
FILE_NAME = "batteries.json"
FILE_MODE = 0o644
FORMAT = 1
MAX_FILE_BYTES = 4 << 20  # 10,000 buttons fit; a larger file is not ours


@dataclass(frozen=True, slots=True)
class Decision:
    send: bool  # queue the measurement now
    warn: bool  # log the low-battery warning now


class BatteryPolicy:
    """Per button: when its level was last sent (the caller's monotonic clock), and whether its
    low level was warned about. Pure state, no I/O."""

    __slots__ = ("_low", "_sent")

    def __init__(self) -> None:
        self._sent: dict[str, float] = {}
        self._low: set[str] = set()

    def report(self, serial: str, percent: float, now: float) -> Decision:
        last = self._sent.get(serial)
        send = last is None or now - last >= SEND_EVERY
        if send:
            self._sent[serial] = now
        warn = False
        if percent < LOW:
            warn = serial not in self._low
            self._low.add(serial)
        elif percent >= REARM:
            self._low.discard(serial)
        return Decision(send, warn)


def measurement_lines(button: Button, percent: float, time: datetime) -> tuple[DeviceLine, ...]:
    """The outbox lines of one level: the child's `101` on the gateway (a row of lines does not
    announce it, and the button may not have been pressed yet; `101` creates the child only "if
    it does not exist", docs/protocol.md 2.3, else the measurement would create it
    with a default name) and `200` on the child."""
    from dashkanban.c8y.protocol import BUTTON_TYPE
    from dashkanban.c8y.smartrest import encode_line

    return (
        DeviceLine(None, encode_line(101, button.serial, button.name, BUTTON_TYPE)),
        DeviceLine(button.serial, encode_line(200, "c8y_Battery", "level", f"{percent:g}", "%",
                                              time.isoformat(timespec="milliseconds"))),
    )


@dataclass(frozen=True, slots=True)
class LastLevel:
    serial: str
    name: str
    percent: float
    time: datetime


def battery_path(outbox: Path) -> Path:
    return outbox.with_name(FILE_NAME)


class BatteryFile:
    """The last level of each button, rewritten whole (temporary file, rename) on a change."""

    def __init__(self, outbox: Path) -> None:
        self.path = battery_path(outbox)
        self._lock = threading.Lock()
        self._levels: dict[str, LastLevel] = {level.serial: level for level in read_levels(outbox)}
        self._failed = False

    def record(self, button: Button, percent: float, time: datetime) -> None:
        with self._lock:
            old = self._levels.get(button.serial)
            self._levels[button.serial] = LastLevel(button.serial, button.name, percent, time)
            if old is not None and old.percent == percent and old.name == button.name and (
                    (time - old.time).total_seconds() < SEND_EVERY):
                return  # nothing new worth a write
            self._write()

    def _write(self) -> None:
        data = {"format": FORMAT, "buttons": {
            level.serial: {"name": level.name, "percent": level.percent,
                           "time": level.time.isoformat(timespec="seconds")}
            for level in self._levels.values()}}
        try:
            write_atomic(self.path, json.dumps(data, indent=1, sort_keys=True).encode("utf-8"),
                         FILE_MODE)
            self._failed = False
        except OSError as exc:
            if not self._failed:
                log.warning("cannot write the battery levels to %s: %s", self.path,
                            exc.strerror or exc)
            self._failed = True


def read_levels(outbox: Path) -> list[LastLevel]:
    """The levels kept next to the outbox, by name; [] when none (or the file is not ours)."""
    path = battery_path(outbox)
    try:
        if path.stat().st_size > MAX_FILE_BYTES:
            return []
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError, RecursionError):
        return []
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        return []
    found = []
    buttons = data.get("buttons")
    for serial, entry in (buttons.items() if isinstance(buttons, dict) else ()):
        try:
            found.append(LastLevel(str(serial), str(entry["name"]), float(entry["percent"]),
                                   datetime.fromisoformat(entry["time"]).astimezone(UTC)))
        except (KeyError, TypeError, ValueError):
            continue
    return sorted(found, key=lambda level: level.name.casefold())


def status_lines(levels: Sequence[LastLevel]) -> list[str]:
    """`outbox status`'s lines for the levels: `battery: NAME (SERIAL) 87 % at TIME`."""
    lines = []
    for level in levels:
        low = f" (under {LOW:g} %: replace it)" if level.percent < LOW else ""
        lines.append(f"battery: {level.name} ({level.serial}) {level.percent:g} % at "
                     f"{level.time.isoformat(timespec='seconds')}{low}")
    return lines
