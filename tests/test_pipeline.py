"""pipeline: frames -> events with the counters, replay clock and live clock."""

from __future__ import annotations

from datetime import UTC, datetime

from dashkanban.buttons import Button, Registry
from dashkanban.capture import Frame
from dashkanban.config import EventSettings
from dashkanban.events import Event
from dashkanban.pipeline import Counts, Pipeline
from tests import forge

B1 = Button("dashButton_1", "ac:63:be:12:34:56", bin="A3")
EVENT = EventSettings("c8y_MAC_Event", "{name} ({bin}) via {trigger}")
T0 = 1764144001.5


def frames() -> list[Frame]:
    probe = forge.arp_frame(1, B1.mac, "0.0.0.0", "10.0.0.5")
    discover = forge.dhcp_client_frame(B1.mac, forge.DISCOVER, vlans=(20,))
    other = forge.arp_frame(1, "3c:22:fb:8e:41:07", "10.0.0.6", "10.0.0.1")
    tcp = forge.tcp_frame(B1.mac, "00:0d:b9:4a:10:01", "10.0.0.5", "1.2.3.4", 5000, 443)
    return [Frame(T0, discover), Frame(T0 + 0.2, probe), Frame(T0 + 1, other),
            Frame(T0 + 2, tcp), Frame(T0 + 31, probe), Frame(T0 + 32, b"\x00" * 3)]


def test_replay_clock() -> None:
    pipeline = Pipeline(Registry([B1]), EVENT, detect=("arp", "dhcp"))
    events = list(pipeline.run(frames()))
    assert events == [
        Event(datetime.fromtimestamp(T0, UTC), B1.mac, B1.serial, B1.name, "c8y_MAC_Event",
              "dashButton_1 (A3) via dhcp", "dhcp"),
        Event(datetime.fromtimestamp(T0 + 31, UTC), B1.mac, B1.serial, B1.name, "c8y_MAC_Event",
              "dashButton_1 (A3) via arp", "arp"),
    ]
    assert pipeline.counts() == Counts(6, 4, 4, 1, 2)
    assert pipeline.counts(packets=10).summary() == (
        "10 packets read, 4 candidates, 1 malformed, 2 presses"
    )


def test_live_clock_and_feed() -> None:
    """Live, the dead time runs on the given clock, not on the frames' wall-clock stamps."""
    pipeline = Pipeline(Registry([B1]), EVENT, detect=("arp",), dead_time=10)
    got = [pipeline.feed(f, now=100.0) for f in frames()]
    assert [e.trigger if e else None for e in got] == [None, "arp", None, None, None, None]
    assert pipeline.feed(frames()[1], now=110.0) is not None
