"""Issue 6, item 4: 10,000 presses within a minute, from a capture file replayed through the daemon
with the live clock. The broker is down during the burst: the capture side must not wait for it
(the file is read to the end and every press is in the outbox); then the broker comes back and
all 10,000 arrive in press order. Memory stays bounded: the debouncer's per-MAC state and the
Courier's in-flight window are sampled throughout.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from dashkanban.capture import Frame, open_capture
from dashkanban.commands.run import Daemon
from dashkanban.config import load_settings
from dashkanban.detect.presses import MAX_TRACKED
from dashkanban.outbox.courier import WINDOW
from tests import forge
from tests.brokers import Mosquitto, TlsFiles
from tests.c8y.support import Recorder
from tests.e2e.faultkit import (
    check_delivered,
    events_of,
    presses,
    queued_serials,
    wait_until,
    write_config,
)
from tests.faults import ResetProxy

PRESSES = 10_000
# Not a time budget: this test checks that every press is queued, then delivered in order. The
# waits below only guard against a hang, generously, since a loaded 2-core CI machine may take
# minutes for what takes seconds alone (throughput is bench/outbox.py's job, issue 12).
HANG_GUARD = 600.0


class CaptureThenIdle:
    """The frames of a capture file, then nothing until stopped: a live source after a burst."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.consumed = 0
        self.samples: list[int] = []
        self.tracked = lambda: 0
        self._stop = threading.Event()

    def frames(self) -> Iterator[Frame]:
        for frame in open_capture(self.path, prefilter=True):
            yield frame
            self.consumed += 1
            if self.consumed % 500 == 0:
                self.samples.append(self.tracked())
        self._stop.wait()

    def stop(self) -> None:
        self._stop.set()


@pytest.mark.timeout(3 * HANG_GUARD)
def test_ten_thousand_presses_in_a_minute_are_all_queued_then_delivered_in_order(
    tmp_path: Path, mosquitto_tls: Mosquitto, tls_files: TlsFiles
) -> None:
    burst = presses(0, PRESSES)
    assert burst[-1].stamp - burst[0].stamp < 60
    capture = tmp_path / "burst.pcap"
    with capture.open("wb") as f:
        assert forge.write_pcap(f, ((p.stamp, p.frame().data) for p in burst)) == PRESSES
    recorder = Recorder(mosquitto_tls, tls_files)
    proxy = ResetProxy(mosquitto_tls.port)
    proxy.start()
    config = write_config(tmp_path, mosquitto_tls, port=proxy.port, buttons=PRESSES)
    mosquitto_tls.stop()
    source = CaptureThenIdle(capture)
    daemon = Daemon(load_settings(config), source)
    result: list[int] = []
    thread = threading.Thread(target=lambda: result.append(daemon.run()), daemon=True)
    thread.start()
    in_flight: list[int] = []
    try:
        wait_until(lambda: daemon.pipeline is not None, what="the daemon to start")
        assert daemon.pipeline is not None
        source.tracked = lambda: daemon.pipeline.tracked  # type: ignore[union-attr]
        # The broker is down the whole time: the capture must still get through the file.
        wait_until(lambda: source.consumed == PRESSES, HANG_GUARD, "the capture to be read")
        assert daemon.outbox is not None
        assert daemon.courier is not None
        assert daemon.outbox.count() == PRESSES
        assert daemon.metrics.snapshot().delivered == 0
        assert queued_serials(tmp_path / "outbox.sqlite3")[:3] == [
            p.message[0].removeprefix("s/us/") for p in burst[:3]]

        proxy.refuse(True)  # the subscriber first, then the daemon
        mosquitto_tls.start()
        recorder.wait_subscribed(2)
        proxy.refuse(False)
        courier = daemon.courier

        def drained() -> bool:
            in_flight.append(courier.in_flight)
            return daemon.outbox.count() == 0  # type: ignore[union-attr]

        wait_until(drained, HANG_GUARD, "the outbox to drain")
        wait_until(lambda: len(events_of(recorder.messages)) >= PRESSES, HANG_GUARD, "every event")
    finally:
        daemon.stop()
        thread.join(30)
        proxy.stop()
        recorder.close()
    assert result == [0]
    check_delivered(recorder.messages, burst)
    snapshot = daemon.metrics.snapshot()
    assert (snapshot.frames, snapshot.presses, snapshot.queued, snapshot.delivered) == (
        PRESSES, PRESSES, PRESSES, PRESSES)
    # Bounded state: one dead-time entry per button at most, never more than the cap ...
    assert source.samples == list(range(500, PRESSES + 1, 500))
    assert max(source.samples) <= MAX_TRACKED
    # ... and never more than the window in flight, which the drain did fill.
    assert max(in_flight) <= WINDOW
    assert max(in_flight) > 1
