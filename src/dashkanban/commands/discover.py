"""`dashkanban discover`: which devices join this network, and which of them are buttons?

Listens live (`-i IFACE --seconds N`) or reads a capture (`--pcap FILE`), and lists every device
seen by ARP, DHCP or IPv6 neighbour discovery with its vendor from an offline OUI list. Amazon's
devices are highlighted: a Dash button is usually the Amazon MAC that showed up when you pressed it.
`--csv` prints rows to paste into MACID.csv. The config file is optional here: with one, the
configured buttons are marked "known" and its [capture] interface is the default.
"""

from __future__ import annotations

import csv
import logging
import re
import sys
import threading
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, TextIO

from dashkanban.capture import Frame, open_capture
from dashkanban.capture.bpf import candidate_program
from dashkanban.config import DEFAULT_PATHS, Settings, load_settings
from dashkanban.detect.buttons import Registry
from dashkanban.detect.decode import TRIGGERS, Decoder, Sighting
from dashkanban.detect.vendors import is_amazon, vendor_of
from dashkanban.errors import CaptureError, ConfigError, DashkanbanError
from dashkanban.safetext import plain

if TYPE_CHECKING:
    from rich.text import Text

log = logging.getLogger(__name__)

MAX_DEVICES = 50_000  # a hostile flood of made-up MACs must not eat the memory


@dataclass(slots=True)
class Device:
    """What was seen of one MAC (mutable: a running tally)."""

    mac: str
    first: float
    last: float
    count: int = 0
    how: set[str] = field(default_factory=set)
    hostname: str | None = None
    vendor_class: str | None = None
    ip: str | None = None
    vlan: int | None = None


class Census:
    """Sightings -> one Device per MAC, in the order first seen (pure)."""

    def __init__(self, max_devices: int = MAX_DEVICES) -> None:
        self.devices: dict[str, Device] = {}
        self.max_devices = max_devices
        self.dropped = 0

    def add(self, sighting: Sighting) -> None:
        device = self.devices.get(sighting.mac)
        if device is None:
            if len(self.devices) >= self.max_devices:
                self.dropped += 1
                return
            device = self.devices[sighting.mac] = Device(
                sighting.mac, sighting.time, sighting.time
            )
        device.count += 1
        device.first = min(device.first, sighting.time)
        device.last = max(device.last, sighting.time)
        device.how.add(sighting.trigger)
        device.hostname = sighting.hostname or device.hostname
        device.vendor_class = sighting.vendor_class or device.vendor_class
        device.ip = sighting.ip or device.ip
        device.vlan = sighting.vlan if sighting.vlan is not None else device.vlan


def how_seen(device: Device) -> str:
    """e.g. "dhcp (iPhone-Kasse), arp" in the fixed order dhcp, arp, ndp."""
    parts = []
    for trigger in ("dhcp", "arp", "ndp"):
        if trigger in device.how:
            if trigger == "dhcp" and (device.hostname or device.vendor_class):
                parts.append(f"dhcp ({device.hostname or device.vendor_class})")
            else:
                parts.append(trigger)
    return ", ".join(parts)


def csv_name(device: Device, taken: set[str]) -> str:
    """A name for MACID.csv: the DHCP hostname if any, else button_<last 6 hex digits>."""
    base = re.sub(r"[^A-Za-z0-9_.\-]", "_", device.hostname or "") or (
        "button_" + device.mac.replace(":", "")[6:]
    )
    name, n = base, 2
    while name.casefold() in taken:
        name, n = f"{base}_{n}", n + 1
    taken.add(name.casefold())
    return name


def _time(t: float) -> str:
    return datetime.fromtimestamp(t, UTC).strftime("%Y-%m-%d %H:%M:%S")


def print_table(devices: Iterable[Device], registry: Registry, out: TextIO,
                width: int | None = None, batteries: Mapping[str, float] | None = None) -> None:
    """The devices as a table. The MAC and the button's name are never cut, even at 80 columns
    (issue 14): vendor and "seen as" wrap instead, and the times shrink to the time of day.
    `batteries`: the last level of MQTT buttons by serial (batteries.json, issue 19), shown in a
    last column when a listed button has one."""
    from rich.console import Console
    from rich.table import Table

    width = width or (None if out.isatty() else 160)
    console = Console(file=out, width=width, soft_wrap=False)
    narrow = console.width < 120
    rows = list(devices)
    table = Table(title="Devices seen", title_justify="left", pad_edge=not narrow,
                  collapse_padding=narrow)
    table.add_column("MAC", no_wrap=True, min_width=17)
    table.add_column("vendor", ratio=1, overflow="fold")
    table.add_column("seen as", ratio=2, overflow="fold")
    table.add_column("count", justify="right", no_wrap=True)
    stamp = _clock if narrow else _time
    if not narrow:
        table.add_column("first seen (UTC)", no_wrap=True)
    table.add_column("last seen (UTC)" if not narrow else "last (UTC)", no_wrap=True)
    names = [b.name for d in rows if (b := registry.get(d.mac)) is not None]
    table.add_column("known", no_wrap=True, min_width=max((len(n) for n in names), default=5))
    levels = batteries or {}
    shown = any((b := registry.get(d.mac)) is not None and b.serial in levels for d in rows)
    if shown:
        table.add_column("battery", justify="right", no_wrap=True)
    for device in rows:
        vendor = vendor_of(device.mac)
        button = registry.get(device.mac)
        style = "bold yellow" if is_amazon(vendor) else None
        vlan = f" vlan {device.vlan}" if device.vlan is not None else ""
        # network and file strings are data, never markup (safetext)
        cells: list[str | Text] = [plain(device.mac), plain(vendor or "?"),
                                   plain(how_seen(device) + vlan), str(device.count)]
        if not narrow:
            cells.append(_time(device.first))
        cells += [stamp(device.last), plain(button.name) if button else ""]
        if shown:
            level = levels.get(button.serial) if button is not None else None
            cells.append("" if level is None else f"{level:g} %")
        table.add_row(*cells, style=style)
    console.print(table)


def _clock(t: float) -> str:
    return datetime.fromtimestamp(t, UTC).strftime("%H:%M:%S")


def fresh_rows(devices: Iterable[Device], registry: Registry) -> list[tuple[str, str]]:
    """(name, MAC) for the devices not in `registry`, Amazon's first (likely buttons)."""
    fresh = [d for d in devices if d.mac not in registry]
    fresh.sort(key=lambda d: not is_amazon(vendor_of(d.mac)))  # stable: first-seen order stays
    taken = {b.name.casefold() for b in registry}
    return [(csv_name(device, taken), device.mac) for device in fresh]


def print_csv(devices: Iterable[Device], registry: Registry, out: TextIO) -> None:
    """Rows for the devices not yet in MACID.csv, Amazon's first (likely buttons)."""
    writer = csv.writer(out, lineterminator="\n")
    out.write("Name, MAC-Address\n")
    for row in fresh_rows(devices, registry):
        writer.writerow(row)


def add_to(path: Path, devices: Iterable[Device], out: TextIO) -> int:
    """`--add-to MACID.csv`: append the devices not listed yet, in the file's own delimiter and
    line ends, never a second header; a missing file is made with the header. Prints each row
    added; returns how many."""
    from dashkanban.detect.buttons import delimiter_of, parse_buttons
    from dashkanban.files import read_buttons_text

    if path.exists():
        text = read_buttons_text(path)
        registry = parse_buttons(text, path)
        raw = path.read_bytes()
        newline = "\r\n" if b"\r\n" in raw else "\n"
        head = "" if not raw or raw.endswith(b"\n") else newline
        delimiter = delimiter_of(text)
    else:
        registry, newline, delimiter = Registry(), "\n", ","
        head = "Name, MAC-Address\n"
    rows = fresh_rows(devices, registry)
    lines = [delimiter.join(row) + newline for row in rows]
    if rows or head:
        try:
            with path.open("a", encoding="ascii", newline="") as f:  # names are made ASCII
                f.write(head + "".join(lines))
        except OSError as exc:
            raise DashkanbanError(f"cannot write {path}: {exc.strerror}") from None
    for name, mac in rows:
        out.write(f"added: {name}, {mac}\n")
    listed = len(registry)
    out.write(f"{path}: {len(rows)} device{'' if len(rows) == 1 else 's'} added, "
              f"{listed} listed before\n")
    return len(rows)


def empty_hint(interface: str | None, pcap: Path | None, seconds: float) -> str:
    """What to look at when nothing was seen."""
    if pcap is not None:
        return (f"no devices in {pcap}: it holds no ARP, DHCP or IPv6 neighbour discovery "
                "packets (was it captured with a filter, or on another network?)")
    return (
        f"no devices seen on {interface} in {seconds:g} s; likely causes: the buttons join "
        "another network than this interface's (-i IFACE); a raw socket that sees nothing but "
        "this host's own traffic (a switch port without the Wi-Fi's broadcasts); the button "
        "blocked (a router's MAC filter) or asleep: press it while discover listens"
    )


# ---------------------------------------------------------------------------------------------
# The command


def _settings(config: Path | None) -> Settings | None:
    if config is not None:
        return load_settings(config, uplink=False)  # discover connects nowhere
    for candidate in DEFAULT_PATHS:
        if candidate.exists():
            return load_settings(candidate, uplink=False)
    return None


@dataclass(frozen=True, slots=True)
class DiscoverOptions:
    """`dashkanban discover`'s arguments (cli.py builds them): live on `interface` (None:
    [capture] interface) for `seconds`, or from the `pcap` file; a table, `csv`, or `add_to`."""

    interface: str | None
    pcap: Path | None
    seconds: float
    csv: bool
    add_to: Path | None
    config: Path | None = None
    mqtt: float | None = None  # seconds listening on the [mqtt_buttons] broker instead (issue 19)


def discover_command(args: DiscoverOptions) -> int:
    from dashkanban.compose import load_buttons

    settings = _settings(args.config)
    registry = load_buttons(settings.buttons.file) if settings else Registry()
    if args.mqtt is not None:  # MQTT buttons' topics (issue 19)
        from dashkanban.mqtt_buttons.discover import mqtt_command

        if args.csv:
            raise ConfigError("--csv is for network devices; with --mqtt use --add-to")
        if settings is None or settings.mqtt_buttons is None:
            raise ConfigError("discover --mqtt needs a [mqtt_buttons] section (the broker the "
                              "buttons publish to; docs/buttons.md)",
                              settings.path if settings else None)
        from dashkanban.mqtt_buttons.battery import read_levels

        kept = {level.serial: level.percent for level in read_levels(settings.outbox.path)}
        return mqtt_command(settings.mqtt_buttons, registry, args.mqtt, args.add_to,
                            sys.stdout, sys.stderr, kept)
    decoder = Decoder(TRIGGERS)
    census = Census()
    failure: CaptureError | None = None
    cut_off: int | None = None
    interface: str | None = None
    if args.pcap is not None:
        # The same candidate program as live, run in libpcap when it is installed.
        capture = open_capture(args.pcap, prefilter=True, program=candidate_program(TRIGGERS))
        try:
            for frame in capture:
                _feed(decoder, census, frame)
        except CaptureError as exc:  # show what was read before the file went bad, then fail
            failure = exc
        read = capture.read_summary()
        cut_off = capture.cut_off
    else:
        from dashkanban.capture.live import resolve_interface

        name = args.interface or (settings.capture.interface if settings else "auto")
        interface = resolve_interface(name)
        promiscuous = settings.capture.promiscuous if settings else False
        packets = listen(interface, args.seconds, decoder, census, promiscuous, sys.stderr)
        read = f"{packets} packets read"
    devices = sorted(census.devices.values(), key=lambda d: d.first)
    if args.add_to is not None:
        add_to(args.add_to, devices, sys.stdout)
    elif args.csv:
        print_csv(devices, registry, sys.stdout)
    else:
        from dashkanban.mqtt_buttons.battery import read_levels

        kept = ({level.serial: level.percent for level in read_levels(settings.outbox.path)}
                if settings is not None else {})
        print_table(devices, registry, sys.stdout, batteries=kept)
    extra = f", {census.dropped} sightings beyond {census.max_devices} devices dropped" if (
        census.dropped) else ""
    print(
        f"{len(devices)} devices, {read}, {decoder.malformed} malformed{extra}",
        file=sys.stderr,
    )
    if cut_off is not None:
        print(f"warning: {args.pcap}: ends inside a record at byte {cut_off} "
              "(the capture was cut off)", file=sys.stderr)
    if failure is not None:
        raise failure
    if not devices:
        print(empty_hint(interface, args.pcap, args.seconds), file=sys.stderr)
    return 0


def _feed(decoder: Decoder, census: Census, frame: Frame) -> None:
    sighting = decoder.decode(frame.data, frame.timestamp, frame.vlan)
    if sighting is not None:
        census.add(sighting)


def listen(
    interface: str,
    seconds: float,
    decoder: Decoder,
    census: Census,
    promiscuous: bool,
    progress: TextIO,
) -> int:
    """Capture live for `seconds`, showing a progress line; returns the frames received."""
    from dashkanban.capture.live import LiveCapture

    if not seconds > 0:
        raise DashkanbanError("--seconds must be a positive number")
    failure: list[BaseException] = []
    with LiveCapture(interface, TRIGGERS, promiscuous=promiscuous) as live:

        def work() -> None:
            try:
                for frame in live.frames():
                    _feed(decoder, census, frame)
            except BaseException as exc:  # noqa: BLE001 - handed to the main thread
                failure.append(exc)

        thread = threading.Thread(target=work, name="discover-capture", daemon=True)
        thread.start()
        tty = progress.isatty()
        deadline = time.monotonic() + seconds
        if not tty:
            progress.write(f"listening on {interface} for {seconds:g} s...\n")
        try:
            while thread.is_alive():
                left = deadline - time.monotonic()
                if left <= 0:
                    break
                if tty:
                    progress.write(
                        f"\rlistening on {interface}: {left:4.0f} s left, "
                        f"{live.received} packets, {len(census.devices)} devices "
                    )
                    progress.flush()
                time.sleep(min(0.5, left))
        finally:
            live.stop()
            thread.join(timeout=5)
            if tty:
                progress.write("\n")
        if failure:
            raise failure[0]
        return live.received
