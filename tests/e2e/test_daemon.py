"""`dashkanban run` wired for real: frames on a veth pair in namespaces the test makes, the
kernel-filtered capture, the SQLite outbox, the uplink over TLS to mosquitto on loopback.

The capture's socket lives in namespace B (a thread there feeds the daemon's frame source);
the daemon and its uplink stay in the test's own namespace, where mosquitto listens on 127.0.0.1.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from dashkanban.capture import Frame
from dashkanban.capture.live import LiveCapture
from dashkanban.cli import main
from dashkanban.commands.run import Daemon
from dashkanban.config import load_settings
from dashkanban.detect.events import Event
from dashkanban.outbox.store import Outbox
from tests import forge
from tests.brokers import Mosquitto
from tests.c8y.support import Recorder, write_config
from tests.e2e.netns import Pair, enter, sender

pytestmark = pytest.mark.netns

BUTTON = "ac:63:be:12:34:56"
OTHER = "fc:a6:67:0a:0b:0c"


class NamespacedSource:
    """LiveCapture inside namespace `ns`, read from a thread there, handed to the daemon."""

    def __init__(self, pair: Pair) -> None:
        self.capture = LiveCapture(pair.if_b, ("arp", "dhcp"))
        self._frames: queue.Queue[Frame | None] = queue.Queue()
        self.ready = threading.Event()
        self._thread = threading.Thread(target=self._run, args=(pair.ns_b,), daemon=True)
        self._thread.start()

    def _run(self, ns: str) -> None:
        enter(ns)
        try:
            self.ready.set()
            for frame in self.capture.frames():
                self._frames.put(frame)
        finally:
            self._frames.put(None)

    def frames(self) -> Iterator[Frame]:
        while (frame := self._frames.get()) is not None:
            yield frame

    def stop(self) -> None:
        self.capture.stop()



def test_burst_becomes_one_event_delivered_and_removed_from_the_outbox(
    tmp_path: Path, veth_pair: Pair, mosquitto_tls: Mosquitto, recorder: Recorder,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level("INFO")
    settings = load_settings(write_config(tmp_path, mosquitto_tls))
    source = NamespacedSource(veth_pair)
    observed: list[Event] = []
    daemon = Daemon(settings, source, on_delivered=observed.append)
    runner = threading.Thread(target=daemon.run, daemon=True)
    runner.start()
    frames_out = sender(veth_pair)
    try:
        assert source.ready.wait(10)
        hello = recorder.wait_for(4)
        assert hello[0] == ("s/us", "100,Store 3 button gateway,c8y_DashKanbanGateway")
        # A wake-up burst: ARP probe, DHCP DISCOVER, REQUEST, gratuitous ARP: one press. The
        # capture may bind a moment after the thread starts, so the burst repeats (bounded)
        # until the event shows; every repeat falls inside the dead time.
        burst = [
            forge.arp_frame(1, BUTTON, "0.0.0.0", "192.168.10.51"),
            forge.dhcp_client_frame(BUTTON, forge.DISCOVER),
            forge.dhcp_client_frame(BUTTON, forge.REQUEST),
            forge.arp_frame(1, BUTTON, "192.168.10.51", "192.168.10.51"),
            forge.arp_frame(1, "02:00:00:00:99:99", "0.0.0.0", "192.168.10.77"),  # unknown MAC
        ]
        messages: list[tuple[str, str]] = []
        for _ in range(50):
            for frame in burst:
                frames_out.send(frame)
            messages = recorder.wait_for(6, timeout=0.2)
            if len(messages) >= 6:
                break
        assert messages[4] == ("s/us", "101,ac63be123456,dashButton_1,c8y_DashButton")
        topic, payload = messages[5]
        assert topic == "s/us/ac63be123456"
        assert payload.startswith("400,c8y_MAC_Event,dashButton_1 pressed (ac:63:be:12:34:56),")
        # Another button presses once: its own child and event; still nothing for the unknown.
        for _ in range(3):
            frames_out.send(forge.dhcp_client_frame(OTHER, forge.DISCOVER))
        more = recorder.wait_for(8)
        assert more[6] == ("s/us", "101,fca6670a0b0c,dashButton_2,c8y_DashButton")
        assert more[7][1].startswith("400,c8y_MAC_Event,dashButton_2 pressed (fc:a6:67:0a:0b:0c),")
    finally:
        daemon.stop()
        runner.join(timeout=20)
        frames_out.close()
    assert not runner.is_alive()
    assert len(recorder.messages) == 8, recorder.messages  # exactly one event per press
    with Outbox.open(settings.outbox.path) as outbox:
        assert outbox.count() == 0
    delivered = [r.getMessage() for r in caplog.records if r.getMessage().endswith(": delivered")]
    assert [m.split(" pressed at ")[0] for m in delivered] == [
        f"dashButton_1 ({BUTTON})", f"dashButton_2 ({OTHER})"]
    # The observer saw each event on its PUBACK (bench/latency.py stamps it there).
    assert [(e.name, e.mac, e.c8y_time) for e in observed] == [
        ("dashButton_1", BUTTON, messages[5][1].rsplit(",", 1)[1]),
        ("dashButton_2", OTHER, more[7][1].rsplit(",", 1)[1]),
    ]
    snapshot = daemon.metrics.snapshot()
    assert (snapshot.presses, snapshot.queued, snapshot.delivered) == (2, 2, 2)


def test_run_as_root_is_refused(tmp_path: Path, mosquitto_tls: Mosquitto,
                                capsys: pytest.CaptureFixture[str]) -> None:
    import os

    if os.geteuid() != 0:
        pytest.skip("this test is about running as root")
    config = write_config(tmp_path, mosquitto_tls)
    assert main(["run", "-c", str(config)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1
    assert err[0].startswith("error: refusing to run as root: ")
