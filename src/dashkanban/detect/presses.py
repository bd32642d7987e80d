"""Sightings -> Presses: matching against the known buttons and the per-MAC dead time (pure).

A press wakes the button, which then sends several packets within a few seconds, and Amazon's
buttons a second burst 15 to 20 seconds later. All sightings of one MAC within the dead time after
the first one are one press; its time and trigger are those of that first packet. The clock is
passed in: packet timestamps in a replay (deterministic), monotonic time live.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime

from dashkanban.detect.buttons import Button, Registry
from dashkanban.detect.decode import Sighting
from dashkanban.values import PressKind, Trigger

DEFAULT_DEAD_TIME = 30.0
MAX_TRACKED = 100_000  # per-MAC state kept at most; beyond it the oldest windows are forgotten

# A MAC not in MACID.csv -> its button, asked synchronously (c8y.rest.RestInventoryLookup is one).
ButtonLookup = Callable[[str], Button | None]


@dataclass(frozen=True, slots=True)
class Press:
    """One press of a known button: the first packet of a burst from its MAC."""

    button: Button
    time: datetime  # timezone-aware, the time of the first packet of the press
    trigger: Trigger  # the kind of that first packet, or "test" (test-button)
    kind: PressKind = "single"  # what the button says it was; network join sees only "single"


class Debouncer:
    """Known button + outside its dead time = a press.

    `lookup` is asked for MACs that are not in the registry; it must answer at once (a replay's
    cached inventory, a test). Live capture resolves inventory buttons asynchronously instead
    (inventory.LookupQueue) and hands the answer to `feed_button` with the sighting's own clock
    reading.
    """

    __slots__ = ("_dead_time", "_lookup", "_max_tracked", "_registry", "_started")

    def __init__(
        self,
        registry: Registry,
        dead_time: float = DEFAULT_DEAD_TIME,
        lookup: ButtonLookup | None = None,
        max_tracked: int = MAX_TRACKED,
    ) -> None:
        if not dead_time > 0:
            raise ValueError("dead_time must be positive")
        self._registry = registry
        self._lookup = lookup
        self._dead_time = dead_time
        self._max_tracked = max(1, max_tracked)
        # MAC -> clock reading of the first packet of its current press; insertion-ordered, so the
        # first entries are the oldest presses (an entry is re-inserted when a new press starts).
        self._started: dict[str, float] = {}

    def use_registry(self, registry: Registry) -> None:
        """Match against `registry` from now on (MACID.csv re-read); dead times running stay."""
        self._registry = registry

    def button_for(self, mac: str) -> Button | None:
        """The button a network join of `mac` presses (its row, else the look-up's answer), or
        None. The one place every path matches a sighting (feed, Pipeline.press_handler and
        _match): an MQTT button (one with a `topic`) is not matched by network join, as its
        messages say more (the kind) and sooner, and both together would count a press twice."""
        button = self._registry.get(mac)
        if button is None and self._lookup is not None:
            button = self._lookup(mac)
        if button is not None and button.topic is not None:
            return None
        return button

    def feed(self, sighting: Sighting, now: float) -> Press | None:
        """A Press when this sighting starts a new press of a known button, else None (also
        for an MQTT button: `button_for`)."""
        button = self.button_for(sighting.mac)
        if button is None:
            return None
        return self.feed_button(sighting, button, now)

    def feed_button(self, sighting: Sighting, button: Button, now: float) -> Press | None:
        """Debounce a sighting already known to be `button`'s (`now`: its clock reading)."""
        if not self._starts(button, button.mac, now):
            return None
        return Press(button, datetime.fromtimestamp(sighting.time, UTC), sighting.trigger)

    def feed_mqtt(self, button: Button, kind: PressKind, time: float, now: float) -> Press | None:
        """An MQTT button's press of `kind` at epoch `time` (`now`: the clock reading), unless
        one of the same kind started within the button's dead time (a message sent twice).
        Kinds are apart: a long press just after a single one is a second press."""
        key = button.mac if kind == "single" else f"{button.mac}/{kind}"
        if not self._starts(button, key, now):
            return None
        return Press(button, datetime.fromtimestamp(time, UTC), "mqtt", kind)

    def _starts(self, button: Button, key: str, now: float) -> bool:
        """Whether `now` starts a new press of `key` (the MAC, or the MAC and a kind)."""
        dead_time = button.dead_time or self._dead_time
        started = self._started.get(key)
        # abs(): packets of several pcapng interfaces may come slightly out of order.
        if started is not None and abs(now - started) < dead_time:
            return False
        if started is not None:
            self._started.pop(key, None)
        elif len(self._started) >= self._max_tracked:
            self._forget(now)
        self._started[key] = now
        return True

    def _forget(self, now: float) -> None:
        """Drop ended windows; if all are live, drop the oldest quarter (bounded memory)."""
        longest = max(self._dead_time, *(b.dead_time or 0.0 for b in self._registry))
        # Copies and pop(): capture and the button broker both get here (in `run`, on the loop);
        # their keys never meet (a button is matched by network join or by MQTT, never both), but
        # this sweep sees all of them. list() of a dict is one step under the GIL.
        ended = [mac for mac, t in list(self._started.items()) if abs(now - t) >= longest]
        for mac in ended:
            self._started.pop(mac, None)
        if len(self._started) >= self._max_tracked:
            for mac in list(self._started)[: max(1, self._max_tracked // 4)]:
                self._started.pop(mac, None)

    def __len__(self) -> int:
        return len(self._started)
