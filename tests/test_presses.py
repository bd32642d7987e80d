"""presses: matching and the per-MAC dead time, clock passed in."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from dashkanban.detect.buttons import Button, Registry
from dashkanban.detect.decode import Sighting
from dashkanban.detect.presses import Debouncer, Press

B1 = Button("dashButton_1", "ac:63:be:12:34:56")
B3 = Button("dashButton_3", "68:54:fd:01:02:03", dead_time=20.0)
T0 = 1764144001.25


def seen(mac: str, t: float, trigger: str = "dhcp") -> Sighting:
    return Sighting(mac, trigger, t, None, None)


def at(t: float) -> datetime:
    return datetime.fromtimestamp(t, UTC)


def test_burst_and_second_burst_are_one_press() -> None:
    debouncer = Debouncer(Registry([B1, B3]))
    results = [
        debouncer.feed(seen(B1.mac, T0 + dt, trigger), T0 + dt)
        for dt, trigger in ((0, "dhcp"), (0.3, "arp"), (17.0, "dhcp"), (29.9, "arp"))
    ]
    assert results == [Press(B1, at(T0), "dhcp"), None, None, None]
    assert debouncer.feed(seen(B1.mac, T0 + 30, "arp"), T0 + 30) == Press(B1, at(T0 + 30), "arp")


def test_window_is_fixed_from_the_first_packet() -> None:
    """A chatty device does not stretch its window forever."""
    debouncer = Debouncer(Registry([B1]))
    presses = [debouncer.feed(seen(B1.mac, T0 + s), T0 + s) for s in range(0, 70, 10)]
    assert [p.time if p else None for p in presses] == [
        at(T0), None, None, at(T0 + 30), None, None, at(T0 + 60)
    ]


def test_per_button_dead_time_and_default() -> None:
    debouncer = Debouncer(Registry([B1, B3]), dead_time=10)
    assert debouncer.feed(seen(B3.mac, T0), T0) is not None
    assert debouncer.feed(seen(B3.mac, T0 + 19.9), T0 + 19.9) is None
    assert debouncer.feed(seen(B3.mac, T0 + 20), T0 + 20) == Press(B3, at(T0 + 20), "dhcp")
    assert debouncer.feed(seen(B1.mac, T0), T0) is not None
    assert debouncer.feed(seen(B1.mac, T0 + 10), T0 + 10) is not None


def test_clock_is_separate_from_packet_time() -> None:
    """Live: the window runs on the monotonic clock; the press keeps the packet's time."""
    debouncer = Debouncer(Registry([B1]))
    assert debouncer.feed(seen(B1.mac, T0), 100.0) == Press(B1, at(T0), "dhcp")
    assert debouncer.feed(seen(B1.mac, T0 + 3600), 110.0) is None  # wall clock jumped
    assert debouncer.feed(seen(B1.mac, T0 + 3601), 131.0) == Press(B1, at(T0 + 3601), "dhcp")


def test_unknown_macs_and_the_lookup_hook() -> None:
    other = Button("from-inventory", "fc:a6:67:0a:0b:0c")
    asked: list[str] = []

    def lookup(mac: str) -> Button | None:
        asked.append(mac)
        return other if mac == other.mac else None

    debouncer = Debouncer(Registry([B1]), lookup=lookup)
    assert debouncer.feed(seen("3c:22:fb:8e:41:07", T0), T0) is None
    assert debouncer.feed(seen(other.mac, T0, "arp"), T0) == Press(other, at(T0), "arp")
    assert debouncer.feed(seen(B1.mac, T0), T0) is not None
    assert asked == ["3c:22:fb:8e:41:07", other.mac]  # the CSV is asked first
    assert Debouncer(Registry([B1])).feed(seen(other.mac, T0), T0) is None


def test_memory_stays_bounded() -> None:
    buttons = [Button(f"b{i}", f"02:00:00:00:{i >> 8:02x}:{i & 255:02x}") for i in range(1000)]
    debouncer = Debouncer(Registry(buttons), max_tracked=100)
    for i, button in enumerate(buttons):
        assert debouncer.feed(seen(button.mac, T0 + i * 0.001), T0 + i * 0.001) is not None
        assert len(debouncer) <= 100
    # windows that ended are dropped first
    later = T0 + 100
    assert debouncer.feed(seen(buttons[0].mac, later), later) is not None
    assert len(debouncer) <= 100


def test_dead_time_must_be_positive() -> None:
    with pytest.raises(ValueError, match="dead_time must be positive"):
        Debouncer(Registry(), dead_time=0)
