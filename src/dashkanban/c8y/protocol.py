"""Cumulocity's MQTT protocol as pure values: the PUBLISHes an event becomes, and what the
platform's answers mean (CONNACK codes, `s/e` lines). No network, no threads (issue 11 split
c8y/mqtt.py by concern: this module, the connection in mqtt.py, the login probe in probe.py).

docs/cumulocity.md, and docs/protocol.md sections 1 and 2: per event
`101,<serial>,<name>,c8y_DashButton` once per button and connection, and `400,<type>,<text>,<time>`
on `s/us/<serial>` (gateway) or `s/us` (per-device), QoS 1."""

from __future__ import annotations

import logging
from collections.abc import Collection, Sequence
from dataclasses import dataclass

from dashkanban.c8y.smartrest import MAX_MESSAGE_BYTES, decode_error, encode_line, join_lines
from dashkanban.detect.events import Event
from dashkanban.errors import UplinkError
from dashkanban.safetext import escape_controls
from dashkanban.values import DeviceLine

log = logging.getLogger(__name__)

GATEWAY_TYPE = "c8y_DashKanbanGateway"
BUTTON_TYPE = "c8y_DashButton"

# CONNACK return codes (MQTT 3.1.1) with Cumulocity's meaning and the fix (docs/protocol.md 1.7).
# paho 2 reports them as MQTT 5 reason codes; both numberings are accepted.
_CONNACK: dict[int, tuple[str, str]] = {
    1: ("unacceptable protocol version", "Cumulocity speaks MQTT 3.1 and 3.1.1 only"),
    2: (
        "client id rejected",
        "check [gateway] serial (no ':' in it; Cumulocity reserves the colon)",
    ),
    3: ("server unavailable", "Cumulocity is temporarily unavailable; dashkanban retries"),
    4: ("bad user name or password", "check user and password in [C8YMQTT]"),
    # A certificate whose CN differs from the client id, or a chain without the trusted CA,
    # gives 5, not 2: "Thrown on any issue with certificate authentication (for example, wrong
    # common name, failed auto registration)" (implementation.md, MQTT return codes).
    5: (
        "not authorised",
        "check user and password in [C8YMQTT] and that the user may connect devices "
        "(with a certificate: that its CN equals [gateway] serial and the tenant trusts its CA)",
    ),
}
# Transient: the platform asks to come back later. Everything else counts as a refusal.
TRANSIENT_CONNACK = frozenset({3})

# s/e error codes (SmartREST built-in responses, docs/protocol.md 2.7).
_ERROR_MEANINGS = {
    "40": "no such static template",
    "41": "template or creation error",
    "42": "malformed request line",
    "43": "invalid message identifier",
    "45": "invalid arguments",
    "50": "server error between SmartREST and the platform",
    "70": "bootstrap credentials",
}



class LoginRefusedError(UplinkError):
    """The broker refused the CONNECT. `code` is the MQTT 3.1.1 CONNACK return code (1..5)."""

    def __init__(self, code: int, address: str, username: str | None) -> None:
        self.code = code
        meaning, hint = _CONNACK.get(code, (f"refused with code {code}", "see the broker's log"))
        who = f" for {username}" if username else ""
        super().__init__(f"{address} refused the login{who}: {meaning} (CONNACK {code}); {hint}")


class TlsFailedError(UplinkError):
    """The TLS handshake failed: an untrusted or expired certificate, or the wrong host name."""

    def __init__(self, address: str, what: str, hint: str, *, verification: bool = False) -> None:
        self.verification = verification  # the certificate was refused, not the handshake cut
        super().__init__(f"TLS to {address} failed: {what}; {hint}")


class UnreachableError(UplinkError):
    """No connection: name resolution, TCP, or the connection dropped."""


class UnsendableError(UplinkError):
    """A message this uplink can never send as it is: kept in the outbox, never retried."""


class MessageTooLargeError(UnsendableError):
    """A message over Cumulocity's size limit, refused locally instead of by the platform."""


_V5_TO_V3 = {132: 1, 133: 2, 136: 3, 134: 4, 135: 5}


def connack_code(reason: object) -> int:
    """The MQTT 3.1.1 CONNACK return code of what paho reports (an MQTT 5 reason code, which
    has a `value`, or a plain number)."""
    raw = getattr(reason, "value", reason)
    value = raw if isinstance(raw, int) else int(str(raw))
    return _V5_TO_V3.get(value, value)


def connack_meaning(code: int) -> str:
    """Cumulocity's meaning of an MQTT 3.1.1 CONNACK return code, in words."""
    return _CONNACK.get(code, (f"refused with code {code}", ""))[0]


def describe_error_line(payload: str) -> str:
    """One `s/e` line in words, for the log."""
    err = decode_error(payload)
    meaning = _ERROR_MEANINGS.get(err.code, "unknown error code")
    template = f" for template {err.template}" if err.template else ""
    return f"Cumulocity error {err.code} ({meaning}){template}: {err.message}"


@dataclass(frozen=True, slots=True)
class SentLine:
    """One SmartREST line we published, kept briefly (a ring per connection) so that an `s/e`
    error can name the line it refers to: the PUBACK usually comes first, and by then the
    outbox row is deleted."""

    number: int  # unique per connection, in publish order
    message: int  # the PUBLISH it went in (several lines may share one)
    topic: str
    line: str
    row: int | None = None  # the outbox row it came from
    press: str | None = None  # "dashButton_1 (ac:63:be:12:34:56) pressed at <time>"

    @property
    def template(self) -> str:
        return self.line.split(",", 1)[0].strip()


@dataclass(frozen=True, slots=True)
class Refusal:
    """An `s/e` error attributed to one of our lines: Cumulocity accepted it (PUBACK) and then
    refused to process it."""

    error: str  # the `s/e` line as received
    sent: SentLine


def payload_lines(payload: str) -> list[str]:
    """The SmartREST lines of one of our payloads, as sent: split at the line breaks outside
    quotes (a quoted text may hold one). Our encoder doubles `"` and never sends a `\\` before
    one (smartrest.py), so counting quotes is exact for what we publish."""
    if '"' not in payload:  # the usual case, without a character loop per PUBLISH
        return [line for line in payload.split("\n") if line.strip()]
    lines: list[str] = []
    start = 0
    quoted = False
    for i, ch in enumerate(payload):
        if ch == '"':
            quoted = not quoted
        elif ch == "\n" and not quoted:
            lines.append(payload[start:i])
            start = i + 1
    lines.append(payload[start:])
    return [line for line in lines if line.strip()]


def expected_error(payload: str, client_id: str, collections: Collection[str]) -> str | None:
    """The log text of an `s/e` line that is part of the normal start-up, or None: `41,100`
    answers our `100` on every connect, and `41,<X-ID>` our publish of a template collection
    that exists (docs/protocol.md 2.7 and 2.1). Neither refuses a press."""
    err = decode_error(payload)
    if err.code == "41" and err.template == "100":
        return f"Cumulocity: device {client_id} already exists (fine)"
    xid = err.template.strip('"')
    if err.code == "41" and xid in collections:
        return f"Cumulocity: template collection {xid} already exists (fine)"
    return None


def blame(payload: str, sent: Sequence[SentLine], waiting: Collection[int],
          blamed: Collection[int]) -> SentLine | None:
    """The line an `s/e` error refers to, or None when none of `sent` has its template.

    The error names a template, not a message (`<code>,<template>,<message>`, docs/protocol.md
    2.7). Among our lines with that template not yet blamed for an error: the latest one
    acknowledged (Cumulocity acknowledges on acceptance and processes afterwards,
    docs/protocol.md 1.5, so the error of a line follows its PUBACK and comes before the PUBACKs
    of the lines sent after it that are still `waiting`), else the oldest still waiting for its
    PUBACK (a broker that processes before acknowledging). With several lines of one template
    in flight it is the best guess the protocol allows."""
    template = decode_error(payload).template
    candidates = [s for s in sent if s.template == template and s.number not in blamed]
    if not template or not candidates:
        return None
    acknowledged = [line for line in candidates if line.message not in waiting]
    return acknowledged[-1] if acknowledged else candidates[0]


def describe_refusal(refusal: Refusal) -> str:
    """The one ERROR line of a refused line: what was refused, on which topic, from which row,
    and Cumulocity's answer, with control characters escaped (names come from users)."""
    sent = refusal.sent
    origin = []
    if sent.row is not None:
        origin.append(f"outbox row {sent.row}")
    if sent.press is not None:
        origin.append(sent.press)
    where = f" ({', '.join(origin)})" if origin else ""
    err = decode_error(refusal.error)
    meaning = _ERROR_MEANINGS.get(err.code, "unknown error code")
    text = (f"Cumulocity refused {sent.line} on {sent.topic}{where}: error {err.code} "
            f"({meaning}): {err.message}; not sent again")
    return escape_controls(text)


@dataclass(frozen=True, slots=True)
class Outgoing:
    """One PUBLISH: topic and payload (one or more SmartREST lines)."""

    topic: str
    payload: str


def event_messages(event: Event, extra_lines: Sequence[str], *, gateway: bool,
                   announce: bool, other_lines: Sequence[DeviceLine] = ()) -> list[Outgoing]:
    """The PUBLISHes for one event (pure). Gateway: `101` on `s/us` when `announce`, then the
    `400` (and any extra lines, e.g. a Kanban alarm) on `s/us/<serial>`, then `other_lines`.
    Per-device: on `s/us`, and no other lines (they belong to other connections)."""
    line = encode_line(400, event.type, event.text, event.c8y_time)
    payload = join_lines([line, *extra_lines])
    if not gateway:
        if other_lines:
            raise UnsendableError(
                "lines for other devices need [gateway] mode = gateway (in per-device mode each "
                "button has its own connection)"
            )
        return [Outgoing("s/us", payload)]
    messages = []
    if announce:
        messages.append(Outgoing("s/us", encode_line(101, event.serial, event.name, BUTTON_TYPE)))
    messages.append(Outgoing(f"s/us/{event.serial}", payload))
    return messages + lines_messages(other_lines)


def lines_messages(lines: Sequence[DeviceLine]) -> list[Outgoing]:
    """(serial, line) pairs as PUBLISHes, in order: consecutive lines of one device share one
    message (`s/us/<serial>`, or `s/us` for None, the gateway)."""
    messages: list[Outgoing] = []
    group: list[str] = []
    current: str | None = None
    for serial, line in lines:
        if group and serial != current:
            messages.append(Outgoing(_topic(current), join_lines(group)))
            group = []
        current = serial
        group.append(line)
    if group:
        messages.append(Outgoing(_topic(current), join_lines(group)))
    return messages


def _topic(serial: str | None) -> str:
    return "s/us" if serial is None else f"s/us/{serial}"


def check_size(message: Outgoing) -> None:
    size = len(message.payload.encode("utf-8"))
    if size > MAX_MESSAGE_BYTES:
        first = message.payload.split("\n", 1)[0][:60]
        log.error(
            "refusing to publish %d bytes on %s (Cumulocity's limit is %d): %s...",
            size, message.topic, MAX_MESSAGE_BYTES, first,
        )
        raise MessageTooLargeError(
            f"a message of {size} bytes for {message.topic} is over Cumulocity's limit of "
            f"{MAX_MESSAGE_BYTES} bytes; shorten [event] text"
        )
