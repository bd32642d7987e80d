"""pipeline: frames -> events with the counters, replay clock and live clock."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

import dashkanban
from dashkanban.capture import Frame
from dashkanban.config import EventSettings
from dashkanban.detect.buttons import Button, Registry
from dashkanban.detect.events import Event
from dashkanban.detect.pipeline import Counts, Pipeline
from dashkanban.detect.presses import Press
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

    from dashkanban.capture import open_capture
    from dashkanban.compose import load_buttons
    from dashkanban.detect.decode import TRIGGERS

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


def _full_path_presses(registry: Registry, stream: list[Frame], dead_time: float,
                       clock: Callable[[Frame], float]) -> tuple[list[Press], Counts]:
    """The reference: every candidate decoded in full into a Sighting, then matched by its text
    MAC and debounced, as the pipeline did before it matched first (issue 16 item 3)."""
    from dashkanban.detect.decode import TRIGGERS, Decoder
    from dashkanban.detect.presses import Debouncer

    decoder = Decoder(TRIGGERS)
    debouncer = Debouncer(registry, dead_time)
    presses = []
    for frame in stream:
        sighting = decoder.decode(frame.data, frame.timestamp, frame.vlan)
        if sighting is not None:
            press = debouncer.feed(sighting, clock(frame))
            if press is not None:
                presses.append(press)
    counts = Counts(decoder.frames, decoder.candidates, decoder.sightings, decoder.malformed,
                    len(presses))
    return presses, counts


def _mixed_stream() -> tuple[Registry, list[Frame]]:
    """The store capture and forged frames of buttons and strangers, untagged, 802.1Q, QinQ,
    relayed DHCP, NDP, malformed and cut short; the registry has an MQTT button (matched by its
    broker, never by network join) and a MAC written in capitals (no Sighting's MAC equals it),
    both of which send frames here."""
    from dashkanban.capture import open_capture
    from dashkanban.compose import load_buttons

    data = Path(dashkanban.__file__).parent / "data"
    mqtt = Button("mqtt_1", "68:54:fd:aa:bb:cc", topic="zigbee2mqtt/button_1")
    capitals = Button("capitals", "AC:63:BE:00:00:01")
    registry = Registry([*load_buttons(data / "MACID.csv"), B1, mqtt, capitals])
    forged: list[bytes] = []
    for i, mac in enumerate((B1.mac, mqtt.mac, "ac:63:be:00:00:01", "3c:22:fb:8e:41:07")):
        for vlans in ((), (20,), (100, 20)):
            forged += [
                forge.arp_frame(1, mac, "0.0.0.0", f"10.0.0.{i + 5}", vlans=vlans),
                forge.dhcp_client_frame(mac, forge.DISCOVER, vlans=vlans, hostname="h"),
                forge.udp_frame("00:1b:21:aa:bb:cc", "00:0d:b9:4a:10:02", "192.168.30.1",
                                "192.168.10.2", 67, 67,
                                forge.dhcp(1, mac, forge.REQUEST, giaddr="192.168.30.1"),
                                vlans=vlans),
                forge.ndp_frame(133, mac, "fe80::1", vlans=vlans),
            ]
    forged += [forge.arp_frame(1, "00:00:00:00:00:00", "10.0.0.9", "10.0.0.1"), b"\x00" * 3]
    forged += [frame[:cut] for frame in forged[:8] for cut in (20, 41, 60, 300)]
    stream = list(open_capture(data / "sample-store.pcapng", libpcap=False))
    start = stream[-1].timestamp + 1
    # 11 s apart: with a dead time of 20 s, some repeats are one press and some two.
    stream += [Frame(start + 11 * i, frame, 7 if i % 5 == 0 else None)
               for i, frame in enumerate(forged)]
    return registry, stream


def test_matching_first_gives_what_the_full_path_gives() -> None:
    """press_handler, run_presses and feed (which match the sender's raw MAC before building a
    Sighting) against decode-then-match: the same presses and the same counts (the summary)."""
    from dashkanban.detect.decode import TRIGGERS

    registry, stream = _mixed_stream()
    expected, counts = _full_path_presses(registry, stream, 20, lambda f: f.timestamp)
    assert len(expected) > 9
    assert {p.button.name for p in expected} >= {"dashButton_1", "dashButton_2"}
    assert not {"mqtt_1", "capitals"} & {p.button.name for p in expected}
    assert counts.malformed > 0

    pipeline = Pipeline(registry, EVENT, detect=TRIGGERS, dead_time=20)
    assert list(pipeline.run_presses(stream)) == expected
    assert pipeline.counts() == counts

    pipeline = Pipeline(registry, EVENT, detect=TRIGGERS, dead_time=20)
    now = [0.0]
    got: list[Press] = []
    handle = pipeline.press_handler(got.append, lambda: now[0])
    for frame in stream:
        now[0] = frame.timestamp
        handle(frame)
    assert got == expected
    assert pipeline.counts() == counts

    pipeline = Pipeline(registry, EVENT, detect=TRIGGERS, dead_time=20)
    events = [pipeline.feed(frame) for frame in stream]
    assert [e for e in events if e is not None] == [pipeline.event_for(p) for p in expected]
    assert pipeline.counts() == counts


def test_a_bound_handler_matches_the_reloaded_registry() -> None:
    """use_registry (SIGHUP) swaps the raw MACs the handler matches first, too."""
    other = "3c:22:fb:8e:41:07"
    pipeline = Pipeline(Registry([B1]), EVENT, detect=("arp",), dead_time=10)
    got: list[Press] = []
    handle = pipeline.press_handler(got.append, lambda: 0.0)
    handle(Frame(T0, forge.arp_frame(1, other, "10.0.0.6", "10.0.0.1")))
    assert got == []
    added = Button("added", other)
    pipeline.use_registry(Registry([added]))
    handle(Frame(T0 + 1, forge.arp_frame(1, other, "10.0.0.6", "10.0.0.1")))
    handle(Frame(T0 + 2, forge.arp_frame(1, B1.mac, "10.0.0.5", "10.0.0.1")))  # removed
    assert got == [Press(added, datetime.fromtimestamp(T0 + 1, UTC), "arp")]
    assert pipeline.counts() == Counts(3, 3, 3, 0, 1)


def test_a_synchronous_lookup_still_sees_every_mac() -> None:
    """With a look-up for MACs not in the registry (replay with the inventory), nothing is
    dropped before the look-up is asked."""
    other = "3c:22:fb:8e:41:07"
    asked: list[str] = []
    found = Button("inventory_button", other)

    def lookup(mac: str) -> Button | None:
        asked.append(mac)
        return found if mac == other else None

    pipeline = Pipeline(Registry([B1]), EVENT, detect=("arp",), dead_time=10, lookup=lookup)
    got: list[Press] = []
    handle = pipeline.press_handler(got.append, lambda: 0.0)
    handle(Frame(T0, forge.arp_frame(1, other, "10.0.0.6", "10.0.0.1")))
    handle(Frame(T0 + 1, forge.arp_frame(1, "3c:22:fb:00:00:01", "10.0.0.7", "10.0.0.1")))
    assert asked == [other, "3c:22:fb:00:00:01"]
    assert got == [Press(found, datetime.fromtimestamp(T0, UTC), "arp")]


def test_press_handler_with_the_inventory_cache_matches_first(tmp_path: Path) -> None:
    """With the inventory source's cache (`cached`), a MAC it knows to be no button is dropped
    before its Sighting is built, and nothing else changes: the same presses, parked and
    answered, and the same counts as without it (the test above)."""
    from dashkanban.compose import build_pipeline, load_registry
    from dashkanban.detect.pipeline import InventoryCandidates
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

    def raw(mac: str) -> bytes:
        return bytes.fromhex(mac.replace(":", ""))

    with c8y_server(tenant()) as base:
        settings = config(tmp_path, base)
        wired = Wired(settings)
        try:
            wired.pipeline = build_pipeline(settings, load_registry(settings),
                                            inventory=wired.lookups, cached=wired.source.cached)
            candidates = InventoryCandidates(load_registry(settings), wired.lookups,
                                             wired.source.cached)
            got: list[Press] = []
            now = [0.0]
            handler = wired.pipeline.press_handler(got.append, lambda: now[0])

            def handle(frame: Frame) -> None:
                now[0] = frame.timestamp  # the live clock, played by the frames' times
                handler(frame)

            for frame in (arp(INVENTORY_MAC, I0), arp(PHONE, I0 + 0.5),
                          dhcp(CSV_BUTTON.mac, I0 + 1.0)):
                handle(frame)
            assert got == [Press(CSV_BUTTON, at(I0 + 1.0), "dhcp")]
            assert raw(PHONE) in candidates  # look-ups are waiting: every MAC the full way
            answered = wired.collect(lambda: wired.lookups.pending == 0)
            assert answered == [Press(INVENTORY_BUTTON, at(I0), "arp")]
            # Answered and cached: the phone is known to be no button, the others are wanted.
            assert raw(PHONE) not in candidates
            assert raw(INVENTORY_MAC) in candidates
            assert raw(CSV_BUTTON.mac) in candidates
            assert raw("3c:22:fb:00:00:01") in candidates  # never seen: must be looked up
            for frame in (arp(PHONE, I0 + 100), arp(PHONE, I0 + 101),
                          arp(INVENTORY_MAC, I0 + 102)):
                handle(frame)
            assert got == [Press(CSV_BUTTON, at(I0 + 1.0), "dhcp"),
                           Press(INVENTORY_BUTTON, at(I0 + 102), "arp")]
            assert wired.lookups.pending == 0
            assert wired.pipeline.counts() == Counts(6, 6, 6, 0, 3)
        finally:
            wired.close()
