"""`dashkanban discover --mqtt SECONDS`: which topics on the button broker look like buttons?

Listens to every topic (`#`) of the `[mqtt_buttons]` broker for SECONDS, retained messages
included (a button that was not pressed still shows with its last message), and lists the
topics whose messages one of the formats of payloads.py reads as a button: Shelly's
`input_event`, Tasmota's `ButtonN` results, ESPHome's binary sensors, zigbee2mqtt devices that
send an `action`. `--add-to MACID.csv` writes them as MQTT button rows, with the address where the
broker tells it: a Shelly's id holds its MAC, zigbee2mqtt's retained `bridge/devices` maps
friendly names to IEEE addresses, Tasmota's retained discovery message names its MAC. A topic
whose address is not known is listed but not written (the row needs one).
"""

from __future__ import annotations

import asyncio
import json
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

from dashkanban.config import MqttButtonsSettings
from dashkanban.detect.buttons import Registry, normalize_address
from dashkanban.errors import DashkanbanError
from dashkanban.mqtt_buttons.payloads import (
    MAX_PAYLOAD,
    SHELLY_INPUT,
    TASMOTA_BUTTON,
    BatteryLevel,
    ButtonPress,
    Format,
    read_message,
    recognise,
    topic_device,
)
from dashkanban.safetext import escape_controls

MAX_TOPICS = 10_000  # a broker with more topics than this is listed up to here
MAX_DIRECTORY = 4 << 20  # bytes of zigbee2mqtt's bridge/devices read at most

# The formats' topics are payloads.py's (TOPIC_PATTERNS): one set, for the daemon and for this.
_SHELLY_MAC = re.compile(r".*-([0-9A-Fa-f]{12})")
_TASMOTA_DISCOVERY = re.compile(r"tasmota/discovery/([0-9A-Fa-f]{12})/config")
_ZIGBEE_DEVICES = "zigbee2mqtt/bridge/devices"
# zigbee2mqtt's own topics, and the commands others send to a device: never a button's.
_ZIGBEE_NOT_DEVICE = re.compile(r"zigbee2mqtt/(?:bridge(?:/.*)?|.+/(?:set|get)(?:/.*)?)")


@dataclass(slots=True)
class TopicSeen:
    """A button-like topic: its format and what came on it (mutable: a running tally)."""

    topic: str
    format: Format
    messages: int = 0
    presses: dict[str, int] = field(default_factory=dict)  # kind -> count
    battery: float | None = None


def button_format(topic: str, payload: bytes) -> Format | None:
    """The format a message shows its topic is a button's, or None (pure)."""
    if _ZIGBEE_NOT_DEVICE.fullmatch(topic):
        return None
    reading = read_message(topic, payload, False)
    if isinstance(reading, ButtonPress):
        return reading.format
    shape = recognise(topic)
    if SHELLY_INPUT.fullmatch(topic):
        return "shelly"
    if shape == "esphome" and payload.strip() in (b"ON", b"OFF"):
        return "esphome"
    value = _object(payload)
    if not isinstance(value, dict):
        return None
    if shape == "tasmota" and any(TASMOTA_BUTTON.fullmatch(k) for k in value):
        return "tasmota"
    if shape == "zigbee2mqtt" and "action" in value:
        return "zigbee2mqtt"
    return None


def _object(payload: bytes, limit: int = MAX_PAYLOAD) -> Any:
    if len(payload) > limit:
        return None
    try:
        value = json.loads(payload)
    except (ValueError, RecursionError):
        return None
    return value


class MqttCensus:
    """Messages -> the button-like topics, and what the broker says of their addresses."""

    def __init__(self, max_topics: int = MAX_TOPICS) -> None:
        self.topics: dict[str, TopicSeen] = {}
        self.messages = 0
        self.max_topics = max_topics
        self._zigbee: dict[str, str] = {}  # friendly name -> IEEE address
        self._tasmota: dict[str, str] = {}  # topic -> MAC

    def add(self, topic: str, payload: bytes) -> None:
        self.messages += 1
        if topic == _ZIGBEE_DEVICES:
            self._zigbee_devices(payload)
            return
        found = _TASMOTA_DISCOVERY.fullmatch(topic)
        if found is not None:
            value = _object(payload)
            if isinstance(value, dict) and isinstance(value.get("t"), str):
                self._tasmota[value["t"]] = found.group(1)
            return
        seen = self.topics.get(topic)
        if seen is None:
            fmt = button_format(topic, payload)
            if fmt is None or len(self.topics) >= self.max_topics:
                return
            seen = self.topics[topic] = TopicSeen(topic, fmt)
        seen.messages += 1
        reading = read_message(topic, payload, False, seen.format)
        if isinstance(reading, ButtonPress):
            seen.presses[reading.kind] = seen.presses.get(reading.kind, 0) + 1
            if reading.battery is not None:
                seen.battery = reading.battery
        elif isinstance(reading, BatteryLevel):
            seen.battery = reading.percent

    def _zigbee_devices(self, payload: bytes) -> None:
        devices = _object(payload, MAX_DIRECTORY)
        for device in devices if isinstance(devices, list) else ():
            if isinstance(device, dict) and isinstance(device.get("friendly_name"), str) and (
                    isinstance(device.get("ieee_address"), str)):
                self._zigbee[device["friendly_name"]] = device["ieee_address"]

    def address(self, topic: str) -> str | None:
        """The button's MAC or EUI-64 (normalised), when the broker said it."""
        raw: str | None = None
        fmt, device = topic_device(topic) or (None, None)
        if device is None:
            return None
        if fmt == "shelly" and (mac := _SHELLY_MAC.fullmatch(device)):
            raw = mac.group(1)
        elif fmt == "zigbee2mqtt":
            raw = self._zigbee.get(device, device)
        elif fmt == "tasmota":
            raw = self._tasmota.get(device)
        if raw is None:
            return None
        try:
            return normalize_address(raw)
        except ValueError:
            return None


def suggested_name(topic: str) -> str:
    """A MACID.csv name from the topic: the Shelly id, Tasmota topic, ESPHome sensor or
    zigbee2mqtt friendly name, in letters, digits, '_', '.', '-' and spaces."""
    found = topic_device(topic)
    if found is not None and found[1] is not None:
        topic = found[1]
    return re.sub(r"[^A-Za-z0-9_.\- ]", "_", topic).strip()[:60] or "mqtt_button"


async def listen(settings: MqttButtonsSettings, seconds: float, census: MqttCensus) -> None:
    """Everything on the broker for `seconds` (one connection; an error is a DashkanbanError)."""
    import aiomqtt

    from dashkanban.c8y.tls import verifying_context

    context = verifying_context(settings.ca_file) if settings.tls else None
    address = f"{settings.host}:{settings.port}"
    try:
        async with aiomqtt.Client(
            settings.host, settings.port, username=settings.user,
            password=settings.password.reveal() if settings.password else None,
            protocol=aiomqtt.ProtocolVersion.V311, clean_session=True, tls_context=context,
            timeout=10.0,
        ) as client:
            await client.subscribe("#")
            with _suppress_timeout():
                async with asyncio.timeout(seconds):
                    async for message in client.messages:
                        payload = message.payload if isinstance(message.payload, bytes) else b""
                        census.add(message.topic.value, payload)
    except aiomqtt.MqttError as exc:
        raise DashkanbanError(f"button broker {address}: {exc}") from None


class _suppress_timeout:  # noqa: N801 - used like contextlib.suppress
    def __enter__(self) -> None:
        return None

    def __exit__(self, kind: type[BaseException] | None, *_: object) -> bool:
        return kind is TimeoutError


def print_topics(topics: Iterable[TopicSeen], census: MqttCensus, registry: Registry,
                 out: TextIO, kept: Mapping[str, float] | None = None) -> None:
    """The table; `kept`: the last level the daemon kept per serial (batteries.json), shown
    for a known button that reported none while discover listened."""
    from rich.console import Console
    from rich.table import Table

    from dashkanban.safetext import plain

    console = Console(file=out, width=None if out.isatty() else 160, soft_wrap=False)
    table = Table(title="MQTT button topics", title_justify="left")
    for column in ("topic", "format", "address", "messages", "presses", "battery", "known"):
        table.add_column(column, overflow="fold")
    for seen in topics:
        known = registry.by_topic(seen.topic)
        presses = ", ".join(f"{kind} {n}" for kind, n in sorted(seen.presses.items()))
        battery = "" if seen.battery is None else f"{seen.battery:g} %"
        if not battery and known is not None and kept and known.serial in kept:
            battery = f"{kept[known.serial]:g} % (last kept)"
        table.add_row(plain(seen.topic), seen.format, census.address(seen.topic) or "?",
                      str(seen.messages), presses, battery, plain(known.name) if known else "")
    console.print(table)


def add_to(path: Path, topics: Iterable[TopicSeen], census: MqttCensus, out: TextIO) -> int:
    """`discover --mqtt N --add-to MACID.csv`: append the button topics not listed yet whose
    address is known, adding `topic` and `format` to the header when it lacks them (rows before
    keep theirs empty). Prints each row added and each topic left out; returns how many."""
    from dashkanban.detect.buttons import delimiter_of, header_columns, parse_buttons
    from dashkanban.files import UTF8_BOM, read_buttons_text

    if path.exists():
        text = read_buttons_text(path)
        registry = parse_buttons(text, path)
        raw = path.read_bytes()
        # Written back as it was: a BOM kept, Windows-1252 kept (what Excel made).
        encoding = ("utf-8-sig" if raw.startswith(UTF8_BOM) else "utf-8") if _is_utf8(raw) else (
            "cp1252")
        newline = "\r\n" if b"\r\n" in raw else "\n"
        delimiter = delimiter_of(text)
        line, columns = header_columns(text)
    else:
        registry, text, encoding, newline, delimiter = Registry(), "", "utf-8", "\n", ","
        line, columns = 0, ["name", "mac"]
    missing = [c for c in ("topic", "format") if c not in columns]
    columns = [*columns, *missing]
    taken = {b.name.casefold() for b in registry}
    rows: list[list[str]] = []
    for seen in topics:
        if registry.by_topic(seen.topic) is not None:
            continue
        address = census.address(seen.topic)
        why = None
        if address is None:
            why = "no address known"
        elif address in registry:
            why = f"{address} is listed already"
        else:
            why = _refused_topic(seen.topic)
        if why is None and seen.topic != seen.topic.strip():
            # MACID.csv's values are stripped (quoted ones too): the row would never match, and
            # no row by hand would either.
            out.write(f"left out: {escape_controls(repr(seen.topic))} (starts or ends with a "
                      "space, which MACID.csv drops: rename the device, e.g. its zigbee2mqtt "
                      "friendly name)\n")
            continue
        if why is not None or address is None:  # a network string: escaped, on one line
            out.write(f"left out: {escape_controls(seen.topic)} ({why}; add its row by "
                      "hand)\n")
            continue
        name, base, n = suggested_name(seen.topic), suggested_name(seen.topic), 2
        while name.casefold() in taken:
            name, n = f"{base}_{n}", n + 1
        taken.add(name.casefold())
        values = {"name": name, "mac": address, "topic": seen.topic, "format": seen.format}
        rows.append([values.get(c or "", "") for c in columns])
    if rows or not path.exists():
        _write(path, text, line, missing, rows, delimiter, newline, encoding)
    for row in rows:
        out.write(f"added: {row[columns.index('name')]}, {row[columns.index('mac')]}, "
                  f"{row[columns.index('topic')]}\n")
    out.write(f"{path}: {len(rows)} MQTT button{'' if len(rows) == 1 else 's'} added, "
              f"{len(registry)} listed before\n")
    return len(rows)


def _refused_topic(topic: str) -> str | None:
    """Why MACID.csv would refuse this topic (detect/buttons.py's rules), or None."""
    from dashkanban.detect.buttons import check_topic
    from dashkanban.errors import ConfigError

    try:
        check_topic(topic, Path("MACID.csv"), 0)
    except ConfigError as exc:
        return exc.message
    if '"' in topic or "\n" in topic:
        return "a topic MACID.csv cannot hold"

    return None


def _is_utf8(raw: bytes) -> bool:
    try:
        raw.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True


def _write(path: Path, text: str, header_line: int, missing: list[str], rows: list[list[str]],
           delimiter: str, newline: str, encoding: str) -> None:
    import csv
    import io
    import os

    buffer = io.StringIO()
    writer = csv.writer(buffer, delimiter=delimiter, lineterminator=newline)
    for row in rows:
        writer.writerow(row)
    sep = delimiter if delimiter != "," else ", "
    if header_line == 0:
        head = sep.join(["Name", "MAC-Address", "topic", "format"]) + newline
        body = ""
    else:
        lines = re.findall(r"[^\n]*\n|[^\n]+$", text)
        if missing:
            header = lines[header_line - 1]
            ending = header[len(header.rstrip("\r\n")):] or newline
            lines[header_line - 1] = header.rstrip("\r\n") + "".join(
                sep + m for m in missing) + ending
        body = "".join(lines)
        head = "" if not body or body.endswith("\n") else newline
    content = body + head + buffer.getvalue()
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        mode = path.stat().st_mode & 0o7777 if path.exists() else 0o644
        with temporary.open("w", encoding=encoding, newline="") as f:
            f.write(content)
        temporary.chmod(mode)
        os.replace(temporary, path)
    except (OSError, UnicodeEncodeError) as exc:
        temporary.unlink(missing_ok=True)
        raise DashkanbanError(f"cannot write {path}: {exc}") from None


def mqtt_command(settings: MqttButtonsSettings, registry: Registry, seconds: float,
                 add_to_path: Path | None, out: TextIO, err: TextIO,
                 kept: Mapping[str, float] | None = None) -> int:
    """The `--mqtt` part of `dashkanban discover`."""
    census = MqttCensus()
    asyncio.run(listen(settings, seconds, census))
    topics = sorted(census.topics.values(), key=lambda t: t.topic)
    if add_to_path is not None:
        add_to(add_to_path, topics, census, out)
    else:
        print_topics(topics, census, registry, out, kept)
    print(f"{len(topics)} button topic{'' if len(topics) == 1 else 's'}, "
          f"{census.messages} messages in {seconds:g} s from {settings.host}:{settings.port}",
          file=err)
    return 0
