"""One MQTT message of a button -> a press, a battery level, or nothing (pure).

The formats (docs/buttons.md has each firmware's set-up):

- Shelly Button1: `shellies/<id>/input_event/0`, `{"event":"S"|"SS"|"SSS"|"L","event_cnt":N}`;
  the battery (percent, plain number) on `shellies/<id>/sensor/battery`. `event_cnt` counts the
  presses: the same count again is the same press, re-sent (after a reconnect of the Shelly).
- Tasmota with `SetOption73 1`: `stat/<topic>/RESULT`,
  `{"Button1":{"Action":"SINGLE"|"DOUBLE"|"TRIPLE"|"HOLD"}}`.
- ESPHome: `<prefix>/binary_sensor/<name>/state`, `ON` (a press) or `OFF`.
- zigbee2mqtt: `zigbee2mqtt/<friendly name>`, a JSON object; `"action"` is a press, `"battery"`
  (percent) a level; a message without an action is the device's state, not a press.

Kinds: dashkanban knows `single`, `double` and `long`. A triple (or longer) click is `double`:
"pressed more than once" is what it means to a person, and a button's long press means
something else (e.g. "refilled"), so it must not become one. A hold is `long`.

A retained message is never a press (a restart of dashkanban, or of the broker, would replay the
last one). Hostile input is bounded: a payload over `MAX_PAYLOAD` bytes, text that is not UTF-8,
JSON nested too deep, a number of over 4,300 digits, or a shape no format knows give
`Unreadable` (the caller counts it as malformed and logs it at DEBUG); nothing here raises on
input.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass
from typing import Any

from dashkanban.values import FORMATS, PRESS_KINDS, Format, PressKind

__all__ = ["FORMATS", "Format"]  # values.py's, here too: the formats this module reads

KINDS: tuple[PressKind, ...] = PRESS_KINDS

# A button's message is a few hundred bytes (zigbee2mqtt's with every attribute under 2 KiB);
# anything larger is not a button, and is refused before it is decoded or parsed.
MAX_PAYLOAD = 8192

SHELLY_EVENTS: dict[str, PressKind] = {"S": "single", "SS": "double", "SSS": "double", "L": "long"}
TASMOTA_ACTIONS: dict[str, PressKind] = {
    "SINGLE": "single", "DOUBLE": "double", "TRIPLE": "double", "QUAD": "double",
    "PENTA": "double", "HOLD": "long",
}
# zigbee2mqtt's `action` values of the buttons docs/buttons.md names, as zigbee2mqtt's device
# pages list them (docs/buttons.md, "zigbee2mqtt's actions", has the sources):
# - SONOFF SNZB-01: `single`, `double`, `long`.
# - Aqara WXKG01LM: `single`, `double`, `triple`, `quadruple`, `many`, `hold`, `release`;
#   WXKG11LM the same without `many`; WXKG12LM `single`, `double`, `hold`, `release`, `shake`.
# - IKEA E1812 (TRADFRI shortcut button): `on` a single click, `off` a DOUBLE click,
#   `brightness_move_up` a hold, `brightness_stop` its release. So `off` is a double press:
#   read as "no press" it lost every double click of the E1812. (IKEA's two-button remotes,
#   E1743/E1810, also send `off`, from their second button: they are no one-bin button.)
# `toggle` and `press` are other single-button devices' single click. `release`,
# `brightness_stop`, `shake` and an empty action (zigbee2mqtt's legacy mode sends one after each
# press) are no presses.
ZIGBEE_ACTIONS: dict[str, PressKind] = {
    "single": "single", "on": "single", "toggle": "single", "press": "single",
    "double": "double", "off": "double", "triple": "double", "quadruple": "double",
    "many": "double",
    "long": "long", "hold": "long", "brightness_move_up": "long",
}

# The topics of each format, the one set `read_message` and `discover --mqtt` both use. Group
# `device` is the part that names the device: the Shelly's id, Tasmota's %topic%, the ESPHome
# sensor's name, the zigbee2mqtt friendly name (which may hold '/': `aisle2/bin B1`).
SHELLY_INPUT = re.compile(r"shellies/(?P<device>[^/]+)/input_event/\d+")
SHELLY_BATTERY = re.compile(r"shellies/(?P<device>[^/]+)/sensor/battery")
ZIGBEE_DEVICE = re.compile(r"zigbee2mqtt/(?P<device>.+)")
ESPHOME_STATE = re.compile(r"(?:.+/)?binary_sensor/(?P<device>[^/]+)/state")
TASMOTA_RESULT = re.compile(r"(?:(?:.*/)?(?P<device>[^/]+)/)?RESULT")  # stat/<topic>/RESULT
TASMOTA_BUTTON = re.compile(r"Button\d+")  # the key of a button's action in a RESULT
# In the order they are tried: the first whose pattern matches a topic says its format.
TOPIC_PATTERNS: tuple[tuple[Format, re.Pattern[str]], ...] = (
    ("shelly", SHELLY_INPUT), ("shelly", SHELLY_BATTERY), ("zigbee2mqtt", ZIGBEE_DEVICE),
    ("esphome", ESPHOME_STATE), ("tasmota", TASMOTA_RESULT),
)


@dataclass(frozen=True, slots=True)
class ButtonPress:
    """A press as the button reported it."""

    kind: PressKind
    format: Format  # the format that read it (never "auto")
    count: int | None = None  # Shelly's event_cnt: the press's identity on its topic
    battery: float | None = None  # a level sent in the same message (zigbee2mqtt)


@dataclass(frozen=True, slots=True)
class BatteryLevel:
    percent: float
    format: Format


@dataclass(frozen=True, slots=True)
class NoPress:
    """A well-formed message that is no press: state, a release, a retained message."""

    reason: str


@dataclass(frozen=True, slots=True)
class Unreadable:
    """A message no format can read: the caller counts it as malformed."""

    reason: str


Reading = ButtonPress | BatteryLevel | NoPress | Unreadable


def topic_device(topic: str) -> tuple[Format, str | None] | None:
    """The format a topic's shape says and the device it names (None when the topic names
    none: a bare `RESULT`), or None (then `auto` looks at the payload)."""
    for fmt, pattern in TOPIC_PATTERNS:
        found = pattern.fullmatch(topic)
        if found is not None:
            return fmt, found.group("device")
    return None


def recognise(topic: str) -> Format | None:
    """The format a topic's shape says, or None (then `auto` looks at the payload)."""
    found = topic_device(topic)
    return None if found is None else found[0]


def read_message(topic: str, payload: bytes, retained: bool, fmt: Format = "auto") -> Reading:
    """One message on a button's topic -> what it says. Never raises on input."""
    if retained:
        return NoPress("retained")
    if len(payload) > MAX_PAYLOAD:
        return Unreadable(f"{len(payload)} bytes, over {MAX_PAYLOAD}")
    try:
        text = payload.decode("utf-8")
    except UnicodeDecodeError as exc:
        return Unreadable(f"not UTF-8 (byte {exc.start})")
    chosen = recognise(topic) if fmt == "auto" else fmt
    if chosen == "esphome" or (chosen is None and text.strip() in ("ON", "OFF")):
        return _esphome(text)
    value = _json(text)
    if isinstance(value, Unreadable):
        return value
    if chosen is None:
        chosen = _shape(value)
        if chosen is None:
            return Unreadable("no known button format")
    if chosen == "shelly":
        return _shelly(topic, value)
    if chosen == "tasmota":
        return _tasmota(value)
    return _zigbee(value)


def _json(text: str) -> Any:
    try:
        return json.loads(text)
    except RecursionError:  # `[[[[...` deeper than the interpreter's stack: hostile
        return Unreadable("JSON nested too deep")
    except json.JSONDecodeError as exc:
        return Unreadable(f"not JSON ({exc.msg})")
    except ValueError:
        # Not a JSONDecodeError: Python 3.11+ refuses to convert an integer of over 4,300 digits
        # (sys.get_int_max_str_digits(), CVE-2020-10735), and a 4,400-digit number fits in
        # MAX_PAYLOAD. Anyone who can publish on a button's topic can send one.
        return Unreadable("not JSON (a number of over 4300 digits)")


def _shape(value: Any) -> Format | None:
    """`auto` on a topic of no known shape: the payload's."""
    if isinstance(value, dict):
        if "event" in value and "event_cnt" in value:
            return "shelly"
        if any(TASMOTA_BUTTON.fullmatch(k) for k in value):
            return "tasmota"
        if "action" in value or "battery" in value:
            return "zigbee2mqtt"
    return None


def _esphome(text: str) -> Reading:
    state = text.strip()
    if state == "ON":
        return ButtonPress("single", "esphome")
    if state == "OFF":
        return NoPress("released (OFF)")
    return Unreadable("ESPHome state is neither ON nor OFF")


def _level(value: Any) -> float | None:
    """A battery percentage, or None when `value` is no number from 0 to 100."""
    if isinstance(value, bool) or not isinstance(value, int | float | str):
        return None
    try:
        number = float(value)
    except (ValueError, OverflowError):
        return None
    return number if math.isfinite(number) and 0 <= number <= 100 else None


def _shelly(topic: str, value: Any) -> Reading:
    if SHELLY_BATTERY.fullmatch(topic):
        level = _level(value)
        if level is None:
            return Unreadable("Shelly battery is no percentage")
        return BatteryLevel(level, "shelly")
    if not isinstance(value, dict):
        return Unreadable("Shelly input_event is no JSON object")
    event, count = value.get("event"), value.get("event_cnt")
    if not isinstance(event, str) or isinstance(count, bool) or not isinstance(count, int):
        return Unreadable("Shelly input_event without event and event_cnt")
    kind = SHELLY_EVENTS.get(event)
    if kind is None:
        return NoPress(f"Shelly event {event[:20]!r}")
    return ButtonPress(kind, "shelly", count=count)


def _tasmota(value: Any) -> Reading:
    if not isinstance(value, dict):
        return Unreadable("Tasmota RESULT is no JSON object")
    for key, inner in value.items():
        if TASMOTA_BUTTON.fullmatch(key):
            action = inner.get("Action") if isinstance(inner, dict) else None
            if not isinstance(action, str):
                return Unreadable(f"Tasmota {key} without Action")
            kind = TASMOTA_ACTIONS.get(action.upper())
            if kind is None:
                return NoPress(f"Tasmota action {action[:20]!r}")
            return ButtonPress(kind, "tasmota")
    return NoPress("Tasmota RESULT of no button")  # e.g. {"POWER":"ON"} on the same topic


def _zigbee(value: Any) -> Reading:
    if not isinstance(value, dict):
        return Unreadable("zigbee2mqtt message is no JSON object")
    battery = _level(value.get("battery"))
    action = value.get("action")
    if action is None or action == "":
        if battery is not None:
            return BatteryLevel(battery, "zigbee2mqtt")
        return NoPress("zigbee2mqtt state without action")
    if not isinstance(action, str):
        return Unreadable("zigbee2mqtt action is no string")
    kind = ZIGBEE_ACTIONS.get(action.lower())
    if kind is None:
        return NoPress(f"zigbee2mqtt action {action[:20]!r}")
    return ButtonPress(kind, "zigbee2mqtt", battery=battery)


def battery_topic(topic: str, fmt: Format) -> str | None:
    """The topic a button reports its battery on, when that is not its press topic (Shelly)."""
    match = SHELLY_INPUT.fullmatch(topic)
    if match is not None and fmt in ("auto", "shelly"):
        return f"shellies/{match.group('device')}/sensor/battery"
    return None


@dataclass(slots=True)
class Repeats:
    """Shelly's `event_cnt` per topic: the same count again is the same press re-sent.

    Not frozen: the one piece of state of reading messages, kept by the source. Bounded by the
    number of topics subscribed (one per button)."""

    last: dict[str, int]

    def __init__(self) -> None:
        self.last = {}

    def seen(self, topic: str, press: ButtonPress) -> bool:
        """Whether this press was seen before (and remember it when not)."""
        if press.count is None:
            return False
        if self.last.get(topic) == press.count:
            return True
        self.last[topic] = press.count
        return False
