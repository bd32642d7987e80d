"""Frames -> Sightings -> Presses -> Events: the stages that replay and the daemon share.

Only the frame source and the clock differ: a replay passes no clock, so each frame's own
timestamp is the clock and a replay is deterministic; live capture passes monotonic time.

Inventory buttons live (`inventory`, an `inventory.LookupQueue`): a MAC the cache cannot answer is
parked and looked up by the loop's look-up task, so matching never waits for HTTP; `answered()`
debounces the parked sightings once the answers are in. Matching then takes a lock, so a caller
on another thread stays safe (only with `inventory`: the CSV-only hot path has none).

Match first: a frame's sender MAC is looked up as raw bytes before anything is formatted
(`Decoder.sight`), so another device's ARP request costs a header comparison and a set look-up,
not a Sighting: in `network_macs(registry)` with the registry alone, in `InventoryCandidates`
(the registry, then the inventory's cache) with inventory look-ups given `cached`. A synchronous
`lookup` sees every Sighting, as before.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Container, Iterable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING

from dashkanban.capture import Frame
from dashkanban.config import EventSettings
from dashkanban.detect.buttons import Button, Registry
from dashkanban.detect.decode import Decoder, Sighting
from dashkanban.detect.events import Event, make_event
from dashkanban.detect.presses import DEFAULT_DEAD_TIME, ButtonLookup, Debouncer, Press
from dashkanban.values import PressKind

if TYPE_CHECKING:
    from dashkanban.c8y.inventory import LookupQueue


def _raw_macs(registry: Registry) -> dict[bytes, Button]:
    """The registry keyed by raw MAC: exactly those `raw` for which `registry.get(raw.hex(":"))`
    is a button, so matching the raw bytes first gives what matching the Sighting's text gives
    (an EUI-64, or an address not in the decoder's notation, which no Sighting's MAC would equal,
    is left out)."""
    return dict(_raw_items(registry))


def _raw_items(registry: Registry) -> Iterator[tuple[bytes, Button]]:
    for button in registry:
        try:
            raw = bytes.fromhex(button.mac.replace(":", ""))
        except ValueError:
            continue
        if len(raw) == 6 and raw.hex(":") == button.mac:
            yield raw, button


def network_macs(registry: Registry) -> Container[bytes]:
    """The raw MACs of the buttons matched by network join: the registry as `Decoder.sight`'s
    `wanted`. An MQTT button (a `topic`) is not matched by network join (Debouncer.feed).
    A dict's keys, not a frozenset: its table is about half a set's (0.25 MB less for 10,000
    buttons: the daemon's memory, issue 16), and `in` is as fast."""
    return dict.fromkeys(raw for raw, button in _raw_items(registry) if button.topic is None)


class InventoryCandidates:
    """`Decoder.sight`'s `wanted` with inventory look-ups (live): the MACs whose sighting
    `_match` does not drop at once. A registry button matched by network join is wanted, an
    MQTT button is not; any other MAC is wanted unless the inventory's cache knows it is no
    button, which is the one answer `LookupQueue.ask` gives without parking or looking up. That
    holds only while no look-up waits (`pending` does not say for which MAC), so then every
    unknown MAC goes the full way; the capture's own thread is the only one that adds a waiting
    MAC, so a 0 read here is still 0 when `ask` would run."""

    __slots__ = ("_buttons", "_cached", "_inventory")

    def __init__(self, registry: Registry, inventory: LookupQueue,
                 cached: Callable[[str], object]) -> None:
        self._buttons = {raw: b.topic is None for raw, b in _raw_macs(registry).items()}
        self._inventory = inventory
        self._cached = cached  # RestInventoryLookup.cached: Button, None (no button), or a miss

    def __contains__(self, mac: object) -> bool:
        if not isinstance(mac, bytes):
            return True
        network = self._buttons.get(mac)
        if network is not None:
            return network
        if self._inventory.pending:
            return True
        return self._cached(mac.hex(":")) is not None


@dataclass(frozen=True, slots=True)
class Counts:
    packets: int
    candidates: int
    sightings: int
    malformed: int
    presses: int

    def summary(self, read: str | None = None) -> str:
        """`read` replaces "N packets read" (CaptureFile.read_summary: what a filter passed)."""
        head = f"{self.packets} packets read" if read is None else read
        return (
            f"{head}, {self.candidates} candidates, "
            f"{self.malformed} malformed, {self.presses} presses"
        )


class Pipeline:
    """Feeds frames through decode, match and debounce, and makes the events."""

    __slots__ = ("_cached", "_debouncer", "_decoder", "_event", "_inventory", "_lock",
                 "_lookup", "_registry", "_wanted", "presses")

    def __init__(
        self,
        registry: Registry,
        event: EventSettings,
        *,
        detect: Iterable[str] = ("arp", "dhcp"),
        dead_time: float = DEFAULT_DEAD_TIME,
        lookup: ButtonLookup | None = None,
        inventory: LookupQueue | None = None,
        cached: Callable[[str], object] | None = None,
    ) -> None:
        """`lookup`: a synchronous look-up for MACs not in `registry` (replay); `inventory`: the
        asynchronous one (live). At most one of them. `cached`: with `inventory`, its source's
        cached answer (RestInventoryLookup.cached), so that a MAC known to be no button is dropped
        before its Sighting is built (InventoryCandidates); without it every unknown MAC is
        decoded in full."""
        if lookup is not None and inventory is not None:
            raise ValueError("give lookup or inventory, not both")
        self._decoder = Decoder(detect)
        self._debouncer = Debouncer(registry, dead_time, lookup)
        self._registry = registry
        self._inventory = inventory
        self._lookup = lookup
        self._cached = cached
        self._wanted = self._wanted_of(registry)
        self._lock = threading.Lock()
        self._event = event
        self.presses = 0

    def _wanted_of(self, registry: Registry) -> Container[bytes] | None:
        """What to build a Sighting for (Decoder.sight), or None: decode everything in full, as
        a look-up must see every unknown MAC's Sighting (a synchronous one; the asynchronous one
        without its cache)."""
        if self._inventory is not None:
            if self._cached is None:
                return None
            return InventoryCandidates(registry, self._inventory, self._cached)
        return network_macs(registry) if self._lookup is None else None

    def feed(self, frame: Frame, now: float | None = None) -> Event | None:
        """One frame; `now` is the pipeline clock (default: the frame's timestamp)."""
        timestamp, data, vlan = frame  # one unpacking, not three NamedTuple look-ups: per frame
        wanted = self._wanted
        if wanted is None:
            sighting = self._decoder.decode(data, timestamp, vlan)
        else:
            sighting = self._decoder.sight(data, timestamp, vlan, wanted)
        if sighting is None:
            return None
        press = self._match(sighting, timestamp if now is None else now)
        return None if press is None else make_event(press, self._event)

    def run(
        self, frames: Iterable[Frame], clock: Callable[[], float] | None = None
    ) -> Iterator[Event]:
        """Every event of a stream of frames, as it happens."""
        for press in self.run_presses(frames, clock):
            yield make_event(press, self._event)

    def run_presses(
        self, frames: Iterable[Frame], clock: Callable[[], float] | None = None
    ) -> Iterator[Press]:
        """Every press of a stream of frames (for stages that need the button, such as Kanban)."""
        decode = self._decoder.decode  # bound once: this loop sees every frame of a capture
        sight = self._decoder.sight
        if self._inventory is not None:
            for timestamp, data, vlan in frames:
                wanted = self._wanted
                if wanted is None:
                    sighting = decode(data, timestamp, vlan)
                else:
                    sighting = sight(data, timestamp, vlan, wanted)
                if sighting is not None:
                    press = self._match(sighting, timestamp if clock is None else clock())
                    if press is not None:
                        yield press
            return
        debounce = self._debouncer.feed
        for timestamp, data, vlan in frames:
            wanted = self._wanted  # per frame: use_registry may swap it (a reload)
            if wanted is None:
                sighting = decode(data, timestamp, vlan)
            else:
                sighting = sight(data, timestamp, vlan, wanted)
            if sighting is None:
                continue
            press = debounce(sighting, timestamp if clock is None else clock())
            if press is not None:
                with self._lock:  # as feed_mqtt counts, from the button broker's thread
                    self.presses += 1
                yield press

    def press_handler(
        self, on_press: Callable[[Press], None], clock: Callable[[], float]
    ) -> Callable[[Frame], None]:
        """A per-frame callable for `LiveCapture.run`: what run_presses does with each frame
        (decode, match, debounce on `clock`), handing each press to `on_press`. Behind the
        candidate filter it runs for every ARP request on the LAN, so the CSV-only case binds
        its steps once instead of going through feed and _match per frame, and matches first
        (`Decoder.sight`: no Sighting for another device's frame)."""
        decode = self._decoder.decode
        sight = self._decoder.sight
        if self._inventory is not None:
            match = self._match

            def handle_with_inventory(frame: Frame) -> None:
                timestamp, data, vlan = frame
                wanted = self._wanted
                if wanted is None:
                    sighting = decode(data, timestamp, vlan)
                else:
                    sighting = sight(data, timestamp, vlan, wanted)
                if sighting is not None:
                    press = match(sighting, clock())
                    if press is not None:
                        on_press(press)

            return handle_with_inventory
        # Debouncer.feed in two steps, so that other devices' frames cost no clock reading;
        # use_registry swaps the debouncer's registry in place, so these stay current.
        button_for = self._debouncer.button_for
        debounce = self._debouncer.feed_button

        def handle(frame: Frame) -> None:
            timestamp, data, vlan = frame
            wanted = self._wanted  # read per frame: use_registry swaps it on a reload
            if wanted is None:  # a synchronous look-up: every sighting in full
                sighting = decode(data, timestamp, vlan)
            else:
                sighting = sight(data, timestamp, vlan, wanted)
            if sighting is None:
                return
            button = button_for(sighting.mac)
            # An MQTT button's broker reports its presses (Debouncer.feed): not network join.
            if button is not None and button.topic is None:
                press = debounce(sighting, button, clock())
                if press is not None:
                    with self._lock:  # as feed_mqtt counts, from the button broker's thread
                        self.presses += 1
                    on_press(press)

        return handle

    def _match(self, sighting: Sighting, now: float) -> Press | None:
        if self._inventory is None:
            press = self._debouncer.feed(sighting, now)
            if press is not None:
                with self._lock:  # as feed_mqtt counts, from the button broker's thread
                    self.presses += 1
            return press
        with self._lock:
            button = self._debouncer.button_for(sighting.mac)  # None for an MQTT button too
            if button is None:
                if self._registry.get(sighting.mac) is not None:
                    return None  # an MQTT button: its broker reports its presses
                answer = self._inventory.ask(sighting, now)  # never blocks
                if not isinstance(answer, Button):  # None: not a button; PENDING: parked
                    return None
                button = answer
            press = self._debouncer.feed_button(sighting, button, now)
            if press is not None:
                self.presses += 1
            return press

    def answered(self, handle: Callable[[Press], None]) -> int:
        """Debounce the parked sightings of the inventory's answers, in order, and hand each
        press to `handle` (under the matching lock: a later sighting of the same MAC cannot
        overtake it). Returns the number of presses; 0 without `inventory`."""
        if self._inventory is None:
            return 0
        count = 0
        with self._lock:
            for answer in self._inventory.answers():
                if answer.button is None:
                    continue
                for parked in answer.parked:
                    press = self._debouncer.feed_button(parked.sighting, answer.button,
                                                        parked.now)
                    if press is not None:
                        self.presses += 1
                        count += 1
                        handle(press)
        return count

    def feed_mqtt(self, button: Button, kind: PressKind, time: float,
                  now: float) -> Press | None:
        """An MQTT button's press (mqtt_buttons.source), through the same dead time as the
        network's, under the matching lock (it comes from the button broker's thread)."""
        with self._lock:
            press = self._debouncer.feed_mqtt(button, kind, time, now)
            if press is not None:
                self.presses += 1
            return press

    def use_registry(self, registry: Registry) -> None:
        """Match against `registry` from now on (SIGHUP re-read MACID.csv); a reference swap,
        so capture sees the old or the new registry, never half of one."""
        self._registry = registry
        self._debouncer.use_registry(registry)
        self._wanted = self._wanted_of(registry)

    @property
    def tracked(self) -> int:
        """MACs whose dead time the debouncer remembers (bounded by presses.MAX_TRACKED)."""
        return len(self._debouncer)

    def event_for(self, press: Press) -> Event:
        return make_event(press, self._event)

    def counts(self, packets: int | None = None) -> Counts:
        """The counters so far; `packets` = frames read, when a prefiltering reader skipped some."""
        d = self._decoder
        read = d.frames if packets is None else packets
        return Counts(read, d.candidates, d.sightings, d.malformed, self.presses)
