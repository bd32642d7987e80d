"""MACID.csv -> a Registry of Button values (README.md "MACID.csv"), and MAC address notation.

The original example's file is a header and one button a line, `Name, MAC-Address`. Optional columns
carry a per-button dead time and, for Kanban, the bin the button belongs to.
"""

from __future__ import annotations

import csv
import re
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

from dashkanban.errors import ConfigError
from dashkanban.values import FORMATS, LONG_PRESSES, ROLES, Format, LongPress, Role

# Column names as a user may spell them -> our field. Matching ignores case, spaces, '-' and '_'.
_COLUMN_ALIASES: Mapping[str, str] = {
    "name": "name",
    "macaddress": "mac",
    "mac": "mac",
    "deadtime": "dead_time",
    "bin": "bin",
    "part": "part",
    "quantity": "quantity",
    "location": "location",
    "supplier": "supplier",
    "leadtimedays": "lead_time_days",
    "role": "role",
    "cards": "cards",
    "supplieremail": "supplier_email",
    "topic": "topic",
    "format": "format",
    "longpress": "long_press",
}
_Word = TypeVar("_Word", bound=str)

_HEX12 = re.compile(r"[0-9a-f]{12}")
_SEPARATED = re.compile(r"[0-9a-f]{1,2}([:-])(?:[0-9a-f]{1,2}\1){4}[0-9a-f]{1,2}")
_CISCO = re.compile(r"[0-9a-f]{4}\.[0-9a-f]{4}\.[0-9a-f]{4}")
_HEX16 = re.compile(r"(?:0x)?([0-9a-f]{16})")
_SEPARATED8 = re.compile(r"[0-9a-f]{2}([:-])(?:[0-9a-f]{2}\1){6}[0-9a-f]{2}")


def normalize_mac(text: str) -> str:
    """Return the MAC in `aa:bb:cc:dd:ee:ff` form, accepting every common notation.

    Accepted: `ac:63:be:12:34:56`, `AC-63-BE-12-34-56`, `ac63.be12.3456`, `ac63be123456`, and octets
    without a leading zero (`a:b:c:d:e:f`). Raises ValueError with the reason otherwise.
    """
    raw = text.strip().lower()
    if _HEX12.fullmatch(raw):
        digits = raw
    elif _SEPARATED.fullmatch(raw):
        digits = "".join(part.zfill(2) for part in re.split(r"[:-]", raw))
    elif _CISCO.fullmatch(raw):
        digits = raw.replace(".", "")
    else:
        raise ValueError(f"{text.strip()!r} is not a MAC address (expected e.g. ac:63:be:12:34:56)")
    return ":".join(digits[i : i + 2] for i in range(0, 12, 2))


def normalize_address(text: str) -> str:
    """A MAC in any notation of `normalize_mac`, or an EUI-64 (a Zigbee device's IEEE address:
    16 hex digits, as zigbee2mqtt writes it `0x00124b001ca1b2c3`, or 8 octets with ':' or '-'),
    as `00:12:4b:00:1c:a1:b2:c3`. EUI-64 addresses are for MQTT buttons only (MACID.csv's
    `topic`): network join sees MACs. Raises ValueError with the reason otherwise."""
    raw = text.strip().lower()
    whole = _HEX16.fullmatch(raw)
    if whole is not None:
        digits = whole.group(1)
    elif _SEPARATED8.fullmatch(raw):
        digits = re.sub(r"[:-]", "", raw)
    else:
        try:
            return normalize_mac(text)
        except ValueError:
            raise ValueError(f"{text.strip()!r} is neither a MAC address (e.g. ac:63:be:12:34:56) "
                             "nor an EUI-64 (e.g. 0x00124b001ca1b2c3)") from None
    return ":".join(digits[i : i + 2] for i in range(0, 16, 2))


def is_eui64(address: str) -> bool:
    """Whether a normalised address is an EUI-64 (8 octets) rather than a MAC (6)."""
    return len(address) == 23


def serial_of(mac: str) -> str:
    """A button's c8y_Serial: its MAC in lower-case hex without separators, as the original did.

    A colon is not allowed in an MQTT client id (docs/protocol.md 1.3), hence no separators.
    """
    return mac.replace(":", "")


@dataclass(frozen=True, slots=True)
class Button:
    """A known button: who it is and, optionally, the Kanban bin it signals for."""

    name: str
    mac: str
    dead_time: float | None = None
    bin: str | None = None
    part: str | None = None
    quantity: int | None = None
    location: str | None = None
    supplier: str | None = None
    lead_time_days: float | None = None
    role: Role = "reorder"
    cards: int | None = None  # Kanban cards the bin circulates today
    supplier_email: str | None = None  # who the Smart Rules mail (kanban rules install)
    topic: str | None = None  # an MQTT button's topic (issue 19): then no network join
    format: Format = "auto"  # how its payloads read (mqtt_buttons/payloads.py)
    long_press: LongPress | None = None  # "refill": a long press on this reorder button refills

    @property
    def serial(self) -> str:
        return serial_of(self.mac)


class Registry:
    """The known buttons, looked up by MAC (the hot path), by name and by serial."""

    __slots__ = ("_by_mac", "_by_name", "_by_topic")

    def __init__(self, buttons: Iterable[Button] = ()) -> None:
        self._by_mac: dict[str, Button] = {}
        self._by_name: dict[str, Button] = {}
        self._by_topic: dict[str, Button] = {}
        for button in buttons:
            self._by_mac[button.mac] = button
            self._by_name[_name_key(button.name)] = button
            if button.topic is not None:
                self._by_topic[button.topic] = button

    def _add(self, button: Button) -> Button | None:
        """Add `button` unless its topic, MAC or name (any case) is taken, checked in that order:
        then the button that has it, and nothing added (MACID.csv's duplicates)."""
        key = _name_key(button.name)
        taken = ((self._by_topic.get(button.topic) if button.topic is not None else None)
                 or self._by_mac.get(button.mac) or self._by_name.get(key))
        if taken is not None:
            return taken
        self._by_mac[button.mac] = button
        self._by_name[key] = button
        if button.topic is not None:
            self._by_topic[button.topic] = button
        return None

    def by_topic(self, topic: str) -> Button | None:
        """The MQTT button publishing its presses on `topic`."""
        return self._by_topic.get(topic)

    @property
    def topics(self) -> tuple[str, ...]:
        """The MQTT buttons' topics, in file order."""
        return tuple(self._by_topic)

    def get(self, mac: str) -> Button | None:
        return self._by_mac.get(mac)

    def __contains__(self, mac: object) -> bool:
        return mac in self._by_mac

    def __len__(self) -> int:
        return len(self._by_mac)

    def __iter__(self) -> Iterator[Button]:
        return iter(self._by_mac.values())

    def find(self, name_or_mac: str) -> Button | None:
        """A button by its name (case-insensitive), MAC in any notation, or serial."""
        by_name = self._by_name.get(name_or_mac.strip().casefold())
        if by_name is not None:
            return by_name
        try:
            return self._by_mac.get(normalize_address(name_or_mac))
        except ValueError:
            return None


def _name_key(name: str) -> str:
    """The name look-up's key: the name's own string when it is already case-folded (10,000
    buttons then keep 10,000 strings fewer: the daemon's memory, issue 16)."""
    key = name.casefold()
    return name if key == name else key


_LINE = re.compile(r"[^\n\r\x0b\x0c\x1c\x1d\x1e\x85\u2028\u2029]+")  # between splitlines()'s ends


def delimiter_of(text: str) -> str:
    """The delimiter the header line uses: ',' (the original's), ';' (Excel where the decimal
    separator is a comma, e.g. German) or a tab; the one that splits the header most."""
    # The lines one at a time (10,000 buttons' lines are 0.9 MB as a list: the daemon's peak
    # memory, issue 16), split at each of splitlines()'s line ends: "\r\n" is two of them with
    # nothing between, and blank lines are skipped, so the first line found is splitlines()'s.
    for found in _LINE.finditer(text):
        line = found.group().strip()
        if line and not line.startswith("#"):
            counts = {d: line.count(d) for d in (",", ";", "\t")}
            best = max(counts, key=lambda d: counts[d])  # ties keep the first: ','
            return best if counts[best] else ","
    return ","


def _lines(text: str) -> Iterator[str]:
    """The lines of `text` as `io.StringIO(text)` reads them (each up to and with its '\\n'),
    one at a time: a StringIO holds a copy of the text at 4 bytes a character, 1.2 MB for
    10,000 buttons at the daemon's start (issue 16)."""
    start, end = 0, len(text)
    while start < end:
        stop = text.find("\n", start) + 1 or end
        yield text[start:stop]
        start = stop


def _rows(text: str, path: Path | None = None) -> Iterator[tuple[int, list[str]]]:
    """(line number, fields) of every row that is neither blank nor a `#` comment, streamed:
    a file of 10,000 buttons is never held as a list of rows (the daemon's memory, issue 6)."""
    reader = csv.reader(_lines(text), delimiter=delimiter_of(text), skipinitialspace=True)
    while True:
        try:
            row = next(reader)
        except StopIteration:
            return
        except csv.Error as exc:  # e.g. a field over csv.field_size_limit() (131,072 characters)
            raise ConfigError(f"unreadable CSV: {exc}", path, reader.line_num) from None
        if any(cell.strip() for cell in row) and not row[0].lstrip().startswith("#"):
            yield reader.line_num, row


def header_columns(text: str) -> tuple[int, list[str | None]]:
    """(line number, the field of each header cell, None for an unknown one) of MACID.csv's
    header; (0, []) for a file without one."""
    first = next(_rows(text), None)
    if first is None:
        return 0, []
    keys = (re.sub(r"[\s_\-]", "", cell.strip().lower()) for cell in first[1])
    return first[0], [_COLUMN_ALIASES.get(k) for k in keys]


def header_fields(text: str) -> frozenset[str]:
    """The fields the header names (`name`, `mac`, `bin`, ...), without reading the rows."""
    first = next(_rows(text), None)
    if first is None:
        return frozenset()
    keys = (re.sub(r"[\s_\-]", "", cell.strip().lower()) for cell in first[1])
    return frozenset(_COLUMN_ALIASES[k] for k in keys if k in _COLUMN_ALIASES)


def parse_buttons(text: str, path: Path) -> Registry:
    rows = _rows(text, path)
    first = next(rows, None)
    if first is None:
        raise ConfigError("empty buttons file: expected the header 'Name, MAC-Address'", path, 1)
    header_line, header = first
    columns = _read_header(header, path, header_line)
    # Straight into the registry, whose own look-ups find a duplicate: no second set of keys and
    # line numbers for 10,000 buttons (the daemon's peak memory, issue 16). The line of the
    # first one is looked for again only for the error.
    registry = Registry()
    for line_no, row in rows:
        button = _read_row(row, columns, path, line_no)
        taken = registry._add(button)  # the registry's own module: a private helper
        if taken is not None:
            raise ConfigError(_duplicate(button, taken, text, path, columns), path, line_no)
    return registry


def _duplicate(button: Button, taken: Button, text: str, path: Path, columns: list[str]) -> str:
    """What `button` shares with `taken`, an earlier row: its topic, MAC or name (checked in
    that order, as ever), and the line `taken` is on."""
    if button.topic is not None and button.topic == taken.topic:
        what = f"duplicate topic {button.topic!r}"
    elif button.mac == taken.mac:
        what = f"duplicate MAC {button.mac}"
    else:
        what = f"duplicate name {button.name!r}"
    rows = _rows(text, path)
    next(rows)  # the header
    line = next(n for n, row in rows if _read_row(row, columns, path, n) == taken)
    return f"{what} (already on line {line})"


def _read_header(header: list[str], path: Path, line: int) -> list[str]:
    if len(header) == 1:
        for delimiter, label in (("|", "'|'"),):
            if delimiter in header[0]:
                raise ConfigError(
                    f"the header uses {label} as the delimiter; MACID.csv is separated by "
                    "commas, semicolons or tabs ('Name, MAC-Address')",
                    path,
                    line,
                )
    columns: list[str] = []
    for cell in header:
        key = re.sub(r"[\s_\-]", "", cell.strip().lower())
        field = _COLUMN_ALIASES.get(key)
        if field is None:
            known = "Name, MAC-Address, dead_time, bin, part, quantity, location, supplier, "
            known += "lead_time_days, role, cards, supplier_email, topic, format, long_press"
            raise ConfigError(f"unknown column {cell.strip()!r} (known: {known})", path, line)
        if field in columns:
            raise ConfigError(f"column {cell.strip()!r} appears twice", path, line)
        columns.append(field)
    for required, label in (("name", "Name"), ("mac", "MAC-Address")):
        if required not in columns:
            raise ConfigError(
                f"missing column {label!r}: the header must start 'Name, MAC-Address'", path, line
            )
    return columns


def _read_row(row: list[str], columns: list[str], path: Path, line: int) -> Button:
    if len(row) > len(columns):
        raise ConfigError(
            f"{len(row)} fields but the header has {len(columns)} columns", path, line
        )
    values = {col: row[i].strip() if i < len(row) else "" for i, col in enumerate(columns)}
    name = values["name"]
    if not name:
        raise ConfigError("empty Name", path, line)
    _check_sendable(name, path, line)
    if not values["mac"]:
        raise ConfigError(f"button {name!r} has no MAC-Address", path, line)
    topic = check_topic(values.get("topic"), path, line)
    try:
        mac = normalize_address(values["mac"]) if topic else normalize_mac(values["mac"])
    except ValueError as exc:
        hint = ("" if topic or not _HEX16.fullmatch(values["mac"].lower()) else
                "; an EUI-64 (16 hex digits) is for MQTT buttons only: give the row a topic")
        raise ConfigError(f"{exc}{hint}", path, line) from None
    role = _choice(values.get("role"), "role", ROLES, path, line) or "reorder"
    fmt = _choice(values.get("format"), "format", FORMATS, path, line) or "auto"
    long_press = _choice(values.get("long_press"), "long_press", LONG_PRESSES, path, line)
    if topic is None:
        for key, given in (("format", values.get("format")),
                           ("long_press", values.get("long_press"))):
            if given:
                raise ConfigError(f"{key} {given!r} is for MQTT buttons: the row has no topic",
                                  path, line)
    if long_press is not None and (role != "reorder" or not values.get("bin")):
        raise ConfigError(f"long_press {long_press!r} needs a reorder button of a bin (a bin "
                          "column and role reorder)", path, line)
    return Button(
        name=name,
        mac=mac,
        dead_time=_number(values.get("dead_time"), "dead_time", path, line, positive=True),
        bin=values.get("bin") or None,
        part=values.get("part") or None,
        quantity=_integer(values.get("quantity"), "quantity", path, line),
        location=values.get("location") or None,
        supplier=values.get("supplier") or None,
        lead_time_days=_number(values.get("lead_time_days"), "lead_time_days", path, line),
        role=role,
        cards=_integer(values.get("cards"), "cards", path, line),
        supplier_email=_email(values.get("supplier_email"), path, line),
        topic=topic,
        format=fmt,
        long_press=long_press,
    )


def _choice(text: str | None, column: str, choices: tuple[_Word, ...], path: Path,
            line: int) -> _Word | None:
    """One of a Literal's words (any case), typed as it: `choices` is the Literal's tuple."""
    if not text:
        return None
    for choice in choices:
        if text.lower() == choice:
            return choice
    raise ConfigError(f"{column} {text!r} is not one of: {', '.join(choices)}", path, line)


MAX_TOPIC_BYTES = 1024  # MQTT allows 65,535; no button's topic comes near this


def check_topic(text: str | None, path: Path, line: int) -> str | None:
    """An MQTT topic to subscribe to as it is: one button's, so no wildcard (`+`, `#`), and
    nothing a broker refuses (empty levels are allowed by MQTT, NUL is not)."""
    if not text:
        return None
    problem = None
    if "+" in text or "#" in text:
        problem = "has a wildcard ('+' or '#'); name the one topic the button publishes on"
    elif not text.isprintable():
        problem = "has a control character"
    elif text.startswith("$"):
        problem = "starts with '$', which brokers keep for themselves"
    elif len(text.encode("utf-8")) > MAX_TOPIC_BYTES:
        problem = f"is over {MAX_TOPIC_BYTES} bytes"
    if problem is not None:
        raise ConfigError(f"topic {text[:80]!r} {problem}", path, line)
    return text


def _check_sendable(name: str, path: Path, line: int) -> None:
    """Refuse a name Cumulocity would not receive as written (issue 13): it becomes a field of
    the button's `101` line, and a press must never be stuck behind a line that cannot be sent."""
    from dashkanban.c8y import smartrest

    reason = smartrest.unsendable_reason(name)
    if reason is not None:
        raise ConfigError(f"Name {name[:60]!r} cannot be sent to Cumulocity as written: {reason}; "
                          "change it", path, line)
    # The uplink's 101: `101,<serial>,<name>,c8y_DashButton` (c8y/mqtt.py, BUTTON_TYPE).
    size = len(smartrest.encode_line(101, "0" * 12, name, "c8y_DashButton").encode("utf-8"))
    if size > smartrest.MAX_MESSAGE_BYTES:
        raise ConfigError(
            f"Name is {len(name)} characters: the line that creates its device in Cumulocity "
            f"would be {size} bytes, over the {smartrest.MAX_MESSAGE_BYTES} bytes dashkanban sends "
            "in one message (Cumulocity's limit is 16,184); shorten it",
            path,
            line,
        )


def _number(
    text: str | None, column: str, path: Path, line: int, *, positive: bool = False
) -> float | None:
    if not text:
        return None
    try:
        value = float(text)
    except ValueError:
        raise ConfigError(f"{column} {text!r} is not a number", path, line) from None
    if value != value or value < 0 or (positive and value == 0) or value == float("inf"):
        raise ConfigError(f"{column} {text!r} must be a positive number", path, line)
    return value


def _email(text: str | None, path: Path, line: int) -> str | None:
    """An address a Smart Rule can send to: one `local@domain`, nothing that could add a header."""
    if not text:
        return None
    if not re.fullmatch(r"[^@\s,;<>\"]+@[^@\s,;<>\"]+\.[^@\s,;<>\"]+", text):
        raise ConfigError(
            f"supplier_email {text!r} is not an e-mail address (expected e.g. orders@example.com)",
            path,
            line,
        )
    return text


def _integer(text: str | None, column: str, path: Path, line: int) -> int | None:
    if not text:
        return None
    try:
        value = int(text)
    except ValueError:
        raise ConfigError(f"{column} {text!r} is not a whole number", path, line) from None
    if value <= 0:
        raise ConfigError(f"{column} {text!r} must be at least 1", path, line)
    return value
