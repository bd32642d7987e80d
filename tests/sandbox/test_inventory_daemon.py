"""`dashkanban run` with `[buttons] source = both` against the sandbox as MQTT broker and REST API:
a button the sandbox knows (created with `100`, so it has its c8y_Serial) is found by the
inventory look-up on the worker thread, and its press goes the daemon's one way (pipeline ->
event -> outbox -> uplink) next to a CSV button's."""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path

from dashkanban.capture import Frame
from dashkanban.commands.run import Daemon
from dashkanban.config import load_settings
from dashkanban.detect.events import Event
from dashkanban.sandbox import Sandbox
from tests import forge
from tests.kanban.c8y_server import Store, c8y_server
from tests.sandbox_fixture import SANDBOX_PASSWORD, SANDBOX_USER, Device, sandbox_config

CSV_MAC = "ac:63:be:12:34:56"
INVENTORY_MAC, INVENTORY_SERIAL = "fc:a6:67:0a:0b:0c", "fca6670a0b0c"
PHONE = "3c:22:fb:8e:41:07"
WAIT = 10.0


class OpenSource:
    """A frame source that stays open until stopped, fed by the test."""

    def __init__(self) -> None:
        self._frames: queue.Queue[Frame | None] = queue.Queue()

    def put(self, frame: Frame) -> None:
        self._frames.put(frame)

    def frames(self) -> Iterator[Frame]:
        while (frame := self._frames.get()) is not None:
            yield frame

    def stop(self) -> None:
        self._frames.put(None)


def write_config(folder: Path, sandbox: Sandbox, rest_url: str | None = None) -> Path:
    (folder / "MACID.csv").write_text(f"Name, MAC-Address\nscrews, {CSV_MAC}\n")
    return sandbox_config(folder, sandbox, folder / "MACID.csv", source="both",
                          rest_url=rest_url)


def wait_until(check: Callable[[], bool], what: str) -> None:
    deadline = time.monotonic() + WAIT
    while not check():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


def looked_up(daemon: Daemon) -> bool:
    """Every MAC the capture asked the inventory about is answered and its parked sightings
    are handled (`Pipeline.answered` takes them off `pending` and hands any press to the press
    queue in one step, and the stop empties that queue into the outbox and drains it)."""
    pipeline = daemon.pipeline
    inventory = None if pipeline is None else pipeline._inventory
    return inventory is not None and inventory.pending == 0


def test_daemon_sends_presses_of_inventory_and_csv_buttons(
    tmp_path: Path, sandbox: Sandbox
) -> None:
    # The button registers itself as a device (the original's way): the sandbox then has a
    # managed object with c8y_Serial = its serial.
    button = Device(sandbox, INVENTORY_SERIAL)
    assert button.connect() == "Success"
    button.publish("s/us", "100,Aisle 4 ties,c8y_DashButton")
    button.close()
    assert sandbox.device_id(INVENTORY_SERIAL) is not None

    settings = load_settings(write_config(tmp_path, sandbox))
    source = OpenSource()
    delivered: list[Event] = []
    daemon = Daemon(settings, source, drain_on_stop=5.0, on_delivered=delivered.append)
    runner = threading.Thread(target=daemon.run, daemon=True)
    runner.start()
    t0 = time.time()
    try:
        source.put(Frame(t0, forge.arp_frame(1, PHONE, "0.0.0.0", "192.168.1.40")))
        source.put(Frame(t0 + 0.001, forge.arp_frame(1, INVENTORY_MAC, "0.0.0.0", "192.168.1.23")))
        source.put(Frame(t0 + 0.002, forge.dhcp_client_frame(INVENTORY_MAC, forge.DISCOVER)))
        source.put(Frame(t0 + 0.003, forge.dhcp_client_frame(CSV_MAC, forge.DISCOVER)))
        wait_until(lambda: len(delivered) >= 2, "two events acknowledged")
        # Nothing more may come (the phone is no button): its look-up is answered, so a press
        # of it would be queued now and delivered by the stop's drain.
        wait_until(lambda: looked_up(daemon), "the phone's look-up answered")
    finally:
        daemon.stop()
        runner.join(timeout=20)
    assert not runner.is_alive()
    got = sorted((e.time, e.name, e.mac, e.trigger) for e in delivered)
    assert got == [
        (datetime.fromtimestamp(t0 + 0.001, UTC), "Aisle 4 ties", INVENTORY_MAC, "arp"),
        (datetime.fromtimestamp(t0 + 0.003, UTC), "screws", CSV_MAC, "dhcp"),
    ]
    events = [m.payload for m in sandbox.messages()
              if m.direction == "in" and m.topic == f"s/us/{INVENTORY_SERIAL}"
              and m.payload.startswith("400,")]
    when = next(e.c8y_time for e in delivered if e.mac == INVENTORY_MAC)
    assert events == [f"400,c8y_MAC_Event,Aisle 4 ties pressed (fc:a6:67:0a:0b:0c),{when}"]


def test_a_slow_tenant_does_not_hold_up_the_csv_press_in_the_daemon(
    tmp_path: Path, sandbox: Sandbox
) -> None:
    """REST on a tenant that answers nothing until released, MQTT on the sandbox: the CSV
    button's press is acknowledged while the inventory look-up is still unanswered; after the
    release the inventory button's press follows, with its first packet's time."""
    store = Store(SANDBOX_USER, SANDBOX_PASSWORD)
    store.add_device("201", INVENTORY_SERIAL, name="Aisle 4 ties")
    store.hold = threading.Event()
    with c8y_server(store) as base:
        settings = load_settings(write_config(tmp_path, sandbox, base))
        source = OpenSource()
        delivered: list[Event] = []
        daemon = Daemon(settings, source, drain_on_stop=5.0, on_delivered=delivered.append)
        runner = threading.Thread(target=daemon.run, daemon=True)
        runner.start()
        t0 = time.time()
        try:
            source.put(Frame(t0, forge.arp_frame(1, INVENTORY_MAC, "0.0.0.0", "192.168.1.23")))
            source.put(Frame(t0 + 0.001, forge.dhcp_client_frame(CSV_MAC, forge.DISCOVER)))
            source.put(Frame(t0 + 0.002, forge.dhcp_client_frame(INVENTORY_MAC,
                                                                 forge.DISCOVER)))
            wait_until(lambda: len(delivered) >= 1, "the CSV press acknowledged")
            assert not store.hold.is_set()  # the look-up cannot have been answered
            assert [(e.name, e.mac) for e in delivered] == [("screws", CSV_MAC)]
            store.hold.set()
            wait_until(lambda: len(delivered) >= 2, "the inventory press acknowledged")
            # And no second press from the parked DHCP packet: every parked sighting is
            # handled, so one would be queued now and delivered by the stop's drain.
            wait_until(lambda: looked_up(daemon), "the parked sightings handled")
        finally:
            store.hold.set()
            daemon.stop()
            runner.join(timeout=20)
    assert not runner.is_alive()
    assert [(e.time, e.name, e.mac, e.trigger) for e in delivered] == [
        (datetime.fromtimestamp(t0 + 0.001, UTC), "screws", CSV_MAC, "dhcp"),
        (datetime.fromtimestamp(t0, UTC), "Aisle 4 ties", INVENTORY_MAC, "arp"),
    ]
    identity = [p for _, p, _ in store.requests if p.startswith("/identity/")]
    assert identity == [f"/identity/externalIds/c8y_Serial/{INVENTORY_SERIAL}"]
