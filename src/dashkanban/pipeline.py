"""Frames -> Sightings -> Presses -> Events: the stages that replay and the daemon share.

Only the frame source and the clock differ: a replay passes no clock, so each frame's own
timestamp is the clock and a replay is deterministic; live capture passes monotonic time.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass

from dashkanban.buttons import Registry
from dashkanban.capture import Frame
from dashkanban.config import EventSettings
from dashkanban.decode import Decoder
from dashkanban.events import Event, make_event
from dashkanban.presses import DEFAULT_DEAD_TIME, Debouncer, Lookup, Press


@dataclass(frozen=True, slots=True)
class Counts:
    packets: int
    candidates: int
    sightings: int
    malformed: int
    presses: int

    def summary(self) -> str:
        return (
            f"{self.packets} packets read, {self.candidates} candidates, "
            f"{self.malformed} malformed, {self.presses} presses"
        )


class Pipeline:
    """Feeds frames through decode, match and debounce, and makes the events."""

    __slots__ = ("_debouncer", "_decoder", "_event", "presses")

    def __init__(
        self,
        registry: Registry,
        event: EventSettings,
        *,
        detect: Iterable[str] = ("arp", "dhcp"),
        dead_time: float = DEFAULT_DEAD_TIME,
        lookup: Lookup | None = None,
    ) -> None:
        self._decoder = Decoder(detect)
        self._debouncer = Debouncer(registry, dead_time, lookup)
        self._event = event
        self.presses = 0

    def feed(self, frame: Frame, now: float | None = None) -> Event | None:
        """One frame; `now` is the pipeline clock (default: the frame's timestamp)."""
        sighting = self._decoder.decode(frame.data, frame.timestamp, frame.vlan)
        if sighting is None:
            return None
        press = self._debouncer.feed(sighting, frame.timestamp if now is None else now)
        if press is None:
            return None
        self.presses += 1
        return make_event(press, self._event)

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
        debounce = self._debouncer.feed
        for timestamp, data, vlan in frames:
            sighting = decode(data, timestamp, vlan)
            if sighting is None:
                continue
            press = debounce(sighting, timestamp if clock is None else clock())
            if press is not None:
                self.presses += 1
                yield press

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
