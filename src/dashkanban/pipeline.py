"""Frames -> Sightings -> Presses -> Events: the stages that replay and the daemon share.

Only the frame source and the clock differ: a replay passes no clock, so each frame's own
timestamp is the clock and a replay is deterministic; live capture passes monotonic time.

Inventory buttons live (`inventory`, an `inventory.Lookups`): a MAC the cache cannot answer is
parked and looked up on a worker thread, so matching never waits for HTTP; `answered()` debounces
the parked sightings once the answers are in. The debouncer is then shared by two threads, so
matching takes a lock (only with `inventory`: the CSV-only hot path has none).
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING

from dashkanban.buttons import Button, Registry
from dashkanban.capture import Frame
from dashkanban.config import EventSettings
from dashkanban.decode import Decoder, Sighting
from dashkanban.events import Event, make_event
from dashkanban.presses import DEFAULT_DEAD_TIME, ButtonLookup, Debouncer, Press
from dashkanban.values import PressKind

if TYPE_CHECKING:
    from dashkanban.inventory import Lookups


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

    __slots__ = ("_debouncer", "_decoder", "_event", "_inventory", "_lock", "_registry", "presses")

    def __init__(
        self,
        registry: Registry,
        event: EventSettings,
        *,
        detect: Iterable[str] = ("arp", "dhcp"),
        dead_time: float = DEFAULT_DEAD_TIME,
        lookup: ButtonLookup | None = None,
        inventory: Lookups | None = None,
    ) -> None:
        """`lookup`: a synchronous look-up for MACs not in `registry` (replay); `inventory`: the
        asynchronous one (live). At most one of them."""
        if lookup is not None and inventory is not None:
            raise ValueError("give lookup or inventory, not both")
        self._decoder = Decoder(detect)
        self._debouncer = Debouncer(registry, dead_time, lookup)
        self._registry = registry
        self._inventory = inventory
        self._lock = threading.Lock()
        self._event = event
        self.presses = 0

    def feed(self, frame: Frame, now: float | None = None) -> Event | None:
        """One frame; `now` is the pipeline clock (default: the frame's timestamp)."""
        timestamp, data, vlan = frame  # one unpacking, not three NamedTuple look-ups: per frame
        sighting = self._decoder.decode(data, timestamp, vlan)
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
        if self._inventory is not None:
            for timestamp, data, vlan in frames:
                sighting = decode(data, timestamp, vlan)
                if sighting is not None:
                    press = self._match(sighting, timestamp if clock is None else clock())
                    if press is not None:
                        yield press
            return
        debounce = self._debouncer.feed
        for timestamp, data, vlan in frames:
            sighting = decode(data, timestamp, vlan)
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
        its steps once instead of going through feed and _match per frame."""
        decode = self._decoder.decode
        if self._inventory is not None:
            match = self._match

            def handle_with_inventory(frame: Frame) -> None:
                timestamp, data, vlan = frame
                sighting = decode(data, timestamp, vlan)
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
            sighting = decode(data, timestamp, vlan)
            if sighting is None:
                return
            button = button_for(sighting.mac)
            if button is not None:
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
        so the capture thread sees the old or the new registry, never half of one."""
        self._registry = registry
        self._debouncer.use_registry(registry)

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
