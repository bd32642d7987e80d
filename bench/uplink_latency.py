"""Uplink latency: from `Courier.put` (an event queued) to its PUBACK, over TLS on loopback.

The MQTT half of the live latency target (README.md, Performance: frame arrival to PUBACK, p99
under 10 ms). Baseline: a bare paho client publishing QoS 1 to the same broker and waiting for
PUBACK, so the ratio shows what the outbox, the Courier thread and the uplink add. Needs Debian's
mosquitto. Run: .venv/bin/python bench/uplink_latency.py [N]
"""

from __future__ import annotations

import statistics
import sys
import tempfile
import threading
import time
from datetime import UTC, datetime
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tests.brokers import Mosquitto, free_port, make_tls_files
from tests.running import RunningCourier, RunningUplink

from bench.baseline import paho_round_trips
from dashkanban.config import load_settings
from dashkanban.detect.events import Event
from dashkanban.outbox.store import Outbox

USER, PASSWORD = "t12345/bench", "bench-pw"
TARGET_P99_MS = 10.0
GAP = 0.002  # seconds between presses: one press at a time, not a burst


class TimedOutbox(Outbox):
    """The real SQLite outbox, noting when each row's PUBACK deleted it."""

    acked_at: dict[int, float]
    done: threading.Event
    expect: int

    @classmethod
    def timed(cls, path: Path, expect: int) -> TimedOutbox:
        outbox = cls.open(path)
        assert isinstance(outbox, TimedOutbox)
        outbox.acked_at, outbox.done, outbox.expect = {}, threading.Event(), expect
        return outbox

    def ack(self, row_id: int) -> None:
        self.acked_at[row_id] = time.perf_counter()
        super().ack(row_id)
        if len(self.acked_at) >= self.expect:
            self.done.set()


def percentiles(samples: list[float]) -> tuple[float, float]:
    ordered = sorted(samples)
    return statistics.median(ordered), ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))]


def bench_uplink(folder: Path, broker: Mosquitto, ca: Path, count: int) -> list[float]:
    config = folder / "config.ini"
    config.write_text(
        f"[C8YMQTT]\ntenant = 127.0.0.1\ntenantID = t12345\nuser = bench\npassword = {PASSWORD}\n"
        f"port = {broker.port}\nca_file = {ca}\n[gateway]\nserial = bench-gw\n"
    )
    config.chmod(0o600)
    settings = load_settings(config)
    outbox = TimedOutbox.timed(folder / "outbox.sqlite3", count)
    uplink = RunningUplink(settings)
    courier = RunningCourier(outbox, uplink)
    uplink.start()
    courier.start()
    try:
        if not uplink.wait_connected(10):
            raise SystemExit(f"cannot connect: {uplink.last_error}")
        put_at: dict[int, float] = {}
        for n in range(count):
            event = Event(datetime.now(UTC), "ac:63:be:12:34:56", "ac63be123456", "b1",
                          "c8y_MAC_Event", f"press {n}", "arp")
            started = time.perf_counter()
            put_at[courier.put(event)] = started
            time.sleep(GAP)
        if not outbox.done.wait(30):
            raise SystemExit("not all PUBACKs arrived")
        return [(outbox.acked_at[i] - t) * 1000 for i, t in put_at.items()]
    finally:
        courier.stop()
        uplink.stop()
        outbox.close()


def bench_paho(broker: Mosquitto, ca: Path, count: int) -> list[float]:
    return paho_round_trips(broker.port, ca, USER, PASSWORD, count, GAP)


def main() -> None:
    count = int(sys.argv[1]) if len(sys.argv) > 1 else 500
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        tls = make_tls_files(folder / "tls")
        broker = Mosquitto(folder / "mosquitto", free_port(), tls=tls, users={USER: PASSWORD})
        broker.start()
        try:
            base50, base99 = percentiles(bench_paho(broker, tls.ca_cert, count))
            ours50, ours99 = percentiles(bench_uplink(folder, broker, tls.ca_cert, count))
        finally:
            broker.stop()
    print(f"{count} presses, QoS 1 over TLS to mosquitto on loopback")
    print(f"bare paho publish->PUBACK      p50 {base50:.3f} ms  p99 {base99:.3f} ms")
    print(f"Courier.put->PUBACK (outbox)   p50 {ours50:.3f} ms  p99 {ours99:.3f} ms")
    print(f"overhead ratio p50 {ours50 / base50:.2f}x  p99 {ours99 / base99:.2f}x; "
          f"p99 is {ours99 / TARGET_P99_MS:.2f} of the 10 ms target")


if __name__ == "__main__":
    main()
