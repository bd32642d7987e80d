"""The closed sets of words the program passes around, as `Literal` types (pure, no imports
of the package): mypy then knows that a trigger is one of a few words, and a new word is added
here once, with its tuple for parsing and messages beside it.

A new press source adds its trigger to `Trigger` (and, if `[capture] detect` can name it, to
`Detect`); a new kind of press adds to `PressKind` (CONTRIBUTING.md, "Add a press source").
"""

from __future__ import annotations

from typing import Literal, NamedTuple, get_args


class DeviceLine(NamedTuple):
    """One SmartREST line for one device of the gateway. The outbox stores them, the uplink
    sends each on `s/us/<serial>` (a child button) or `s/us` (`serial=None`: the gateway)."""

    serial: str | None
    line: str


# The kinds of packet detect/decode.py recognises as a device joining the network;
# `[capture] detect` names some of them.
Detect = Literal["arp", "dhcp", "ndp"]
# How a press was seen: its first packet's kind, `test-button` ("test"), or a button that told
# the press itself on MQTT ("mqtt", issue 19). In the event's text ({trigger}) and in `--jsonl`.
Trigger = Literal[Detect, "test", "mqtt"]
# How the button was pressed (issue 19: buttons that tell single, double and long presses apart).
PressKind = Literal["single", "double", "long"]
# A button's `role` column (MACID.csv): its press orders (reorder) or says the bin is full again.
Role = Literal["reorder", "refill"]
# An MQTT button's `long_press` column: what a long press on a reorder button means besides.
LongPress = Literal["refill"]
# An MQTT button's `format` column: how its payloads read (mqtt_buttons/payloads.py).
Format = Literal["auto", "shelly", "tasmota", "esphome", "zigbee2mqtt"]
# `[gateway] mode`: buttons as child devices of the gateway, or each button its own device.
GatewayMode = Literal["gateway", "per-device"]
# `[buttons] source`: MACID.csv, Cumulocity's inventory, or both.
ButtonSource = Literal["csv", "inventory", "both"]
# A Cumulocity alarm's severity (`[kanban] severity`, `overdue_severity`; docs/protocol.md 2.5).
Severity = Literal["CRITICAL", "MAJOR", "MINOR", "WARNING"]

DETECT: tuple[Detect, ...] = get_args(Detect)
GATEWAY_MODES: tuple[GatewayMode, ...] = get_args(GatewayMode)
BUTTON_SOURCES: tuple[ButtonSource, ...] = get_args(ButtonSource)
PRESS_KINDS: tuple[PressKind, ...] = get_args(PressKind)
ROLES: tuple[Role, ...] = get_args(Role)
LONG_PRESSES: tuple[LongPress, ...] = get_args(LongPress)
FORMATS: tuple[Format, ...] = get_args(Format)
SEVERITIES: tuple[Severity, ...] = get_args(Severity)
