"""SmartREST 2.0 static-template lines: encode and decode (pure).

Sending follows RFC 4180 as thin-edge does against real tenants (docs/protocol.md 2.2): a field is
quoted when it holds `,` `"` CR, LF, tab or edge whitespace, and an inner `"` is doubled. Other
control characters are stripped (thin-edge's `sanitize_for_smartrest`). Parsing accepts both `""`
and `\\"` inside quotes (the current docs use the backslash form) and newlines inside quoted fields,
with several lines per message.

A backslash is the one character no quoting protects: Cumulocity's MQTT docs ("SmartREST
escaping", mqtt/mqtt-implementation.md) say "Contained double-quotes (`"`) must be escaped by
prepending a backslash (`\\`)", so a `\\` in front of a `"` (our doubled one, or the closing quote)
would be read as an escape and shift every field after it. The docs say nothing of `\\\\`, so a
parser may read that as an escape too. A `\\` is therefore sent as itself only when an ordinary
character follows it; before `"`, `\\`, `,`, a line break or at the end of a value it is sent as
U+FF3C FULLWIDTH REVERSE SOLIDUS `＼`, which no parser reads as an escape (docs/cumulocity.md).
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass

# Cumulocity's limit is 16,184 bytes per message (docs/protocol.md 1.6); thin-edge keeps 16,000 as
# a buffer.
MAX_MESSAGE_BYTES = 16_000

_NEEDS_QUOTES = re.compile(r'[,"\r\n\t]|^\s|\s$')
_CONTROL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")
# A backslash a parser could take for the start of an escape (module docstring).
_RISKY_BACKSLASH = re.compile(r'\\(?=["\\,\r\n]|\Z)')
BACKSLASH_STAND_IN = "\uff3c"  # FULLWIDTH REVERSE SOLIDUS


@dataclass(frozen=True, slots=True)
class SmartRestLine:
    """One decoded line: the template id and its fields."""

    template: str
    fields: tuple[str, ...]

    def field(self, index: int) -> str:
        """Field `index` (0 = first after the template id), or "" when absent."""
        return self.fields[index] if index < len(self.fields) else ""


@dataclass(frozen=True, slots=True)
class ErrorLine:
    """A line on `s/e`: `<code>,<template>,<message>`; the message keeps its commas."""

    code: str
    template: str
    message: str


def sendable(text: str) -> str:
    """`text` as Cumulocity will store it: control characters other than tab, CR and LF removed,
    and a backslash it could read as an escape replaced by `＼` (module docstring)."""
    return _RISKY_BACKSLASH.sub(BACKSLASH_STAND_IN, _CONTROL.sub("", text))


def unsendable_reason(text: str) -> str | None:
    """Why `text` cannot reach Cumulocity unchanged, or None when it can."""
    control = _CONTROL.search(text)
    if control is not None:
        return f"it holds the control character U+{ord(control.group()):04X}"
    if _RISKY_BACKSLASH.search(text):
        return (
            "it holds a '\\' before '\"', '\\', ',', a line break or at its end, which "
            "Cumulocity's SmartREST parser could read as an escape"
        )
    return None


def encode_field(value: object) -> str:
    text = sendable("" if value is None else str(value))
    if _NEEDS_QUOTES.search(text):
        return '"' + text.replace('"', '""') + '"'
    return text


def encode_line(template: int | str, *fields: object) -> str:
    """`encode_line(400, "c8y_MAC_Event", 'a "b", c')` -> `400,c8y_MAC_Event,"a ""b"", c"`."""
    return ",".join([str(template), *(encode_field(f) for f in fields)])


def join_lines(lines: Iterable[str]) -> str:
    """Several lines in one PUBLISH, separated by `\\n` (docs/protocol.md 1.6)."""
    return "\n".join(lines)


def fits(payload: str) -> bool:
    return len(payload.encode("utf-8")) <= MAX_MESSAGE_BYTES


def decode(payload: str | bytes) -> list[SmartRestLine]:
    """Decode a message of one or more lines. Empty lines are skipped."""
    text = payload.decode("utf-8", errors="replace") if isinstance(payload, bytes) else payload
    records = _split_records(text)
    result = []
    for record in records:
        if not record or (len(record) == 1 and not record[0]):
            continue
        result.append(SmartRestLine(record[0].strip(), tuple(record[1:])))
    return result


def decode_error(line: str) -> ErrorLine:
    """An `s/e` line. Only the first two fields are split: the message is not comma-escaped
    (`50,100,Error on device creation, message: ...`, docs/protocol.md 2.7)."""
    code, _, rest = line.partition(",")
    template, _, message = rest.partition(",")
    return ErrorLine(code.strip(), template.strip(), message.strip())


def _split_records(text: str) -> list[list[str]]:
    records: list[list[str]] = []
    fields: list[str] = []
    current: list[str] = []
    i, n = 0, len(text)
    quoted = False
    while i < n:
        ch = text[i]
        if quoted:
            if ch == "\\" and i + 1 < n and text[i + 1] == '"':
                current.append('"')
                i += 2
                continue
            if ch == '"':
                if i + 1 < n and text[i + 1] == '"':
                    current.append('"')
                    i += 2
                    continue
                quoted = False
                i += 1
                continue
            current.append(ch)
            i += 1
            continue
        if ch == '"' and not "".join(current).strip():
            current = []
            quoted = True
        elif ch == ",":
            fields.append("".join(current))
            current = []
        elif ch in "\r\n":
            fields.append("".join(current))
            records.append(fields)
            fields, current = [], []
            if ch == "\r" and i + 1 < n and text[i + 1] == "\n":
                i += 1
        else:
            current.append(ch)
        i += 1
    if current or fields:
        fields.append("".join(current))
        records.append(fields)
    return records
