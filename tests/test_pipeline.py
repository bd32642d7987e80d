"""pipeline: frames -> events with the counters, replay clock and live clock."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import dashkanban
from dashkanban.buttons import Button, Registry
from dashkanban.capture import Frame
from dashkanban.config import EventSettings
from dashkanban.events import Event
from dashkanban.pipeline import Counts, Pipeline
from dashkanban.presses import Press
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


def test_press_handler_gives_what_run_presses_gives() -> None:
    """The per-frame handler LiveCapture.run calls: the same presses and counts as run_presses
    on the same frames (the bundled store capture and the frames above), on a live clock played
    by each frame's receive time less an offset. An MQTT button (a topic) joining the network is
    no press on either path: its broker reports its presses."""
    from collections.abc import Iterator

    from dashkanban.buttons import load_buttons
    from dashkanban.capture import open_capture
    from dashkanban.decode import TRIGGERS

    data = Path(dashkanban.__file__).parent / "data"
    registry = load_buttons(data / "MACID.csv")
    shelly = Button("shelly_1", "68:54:fd:aa:bb:cc", topic="shellies/button1/events")
    join = [Frame(T0 + 40, forge.dhcp_client_frame(shelly.mac, forge.DISCOVER)),
            Frame(T0 + 40.2, forge.arp_frame(1, shelly.mac, "0.0.0.0", "10.0.0.7"))]
    stream = [*open_capture(data / "sample-store.pcapng", libpcap=False), *frames(), *join]
    registry = Registry([*registry, B1, shelly])
    now = [0.0]

    def played() -> Iterator[Frame]:
        for frame in stream:
            now[0] = frame.timestamp - 1e9
            yield frame

    expected_pipeline = Pipeline(registry, EVENT, detect=TRIGGERS, dead_time=20)
    expected = list(expected_pipeline.run_presses(played(), lambda: now[0]))
    pipeline = Pipeline(registry, EVENT, detect=TRIGGERS, dead_time=20)
    got: list[Press] = []
    handle = pipeline.press_handler(got.append, lambda: now[0])
    for frame in played():
        handle(frame)
    assert len(expected) == 9  # the store capture's 7 presses and 2 of the frames above
    assert got == expected
    assert pipeline.presses == 9
    assert pipeline.counts() == expected_pipeline.counts()


def test_press_handler_with_inventory_parks_and_answers(tmp_path: Path) -> None:
    """With inventory look-ups the handler matches as run_presses does: a CSV button's press
    at once, an inventory button's parked until the tenant answers (tests/test_inventory.py's
    wiring and Cumulocity stand-in)."""
    from tests.kanban.c8y_server import c8y_server
    from tests.test_inventory import (
        CSV_BUTTON,
        INVENTORY_BUTTON,
        INVENTORY_MAC,
        PHONE,
        Wired,
        arp,
        at,
        config,
        dhcp,
        tenant,
    )
    from tests.test_inventory import T0 as I0

    with c8y_server(tenant()) as base:
        wired = Wired(config(tmp_path, base))
        try:
            got: list[Press] = []
            handle = wired.pipeline.press_handler(got.append, lambda: 0.0)
            for frame in (arp(INVENTORY_MAC, I0), arp(PHONE, I0 + 0.5),
                          dhcp(CSV_BUTTON.mac, I0 + 1.0)):
                handle(frame)
            assert got == [Press(CSV_BUTTON, at(I0 + 1.0), "dhcp")]
            answered = wired.collect(lambda: wired.lookups.pending == 0)
        finally:
            wired.close()
    assert answered == [Press(INVENTORY_BUTTON, at(I0), "arp")]
