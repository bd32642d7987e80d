"""Outbox throughput: queue N events durably, drain them with peek/ack, then the real thing: queue
N events while the broker is down, start it, and time the drain through the Courier and the
uplink (MQTT over TLS) to a local mosquitto; and the resident memory of a daemon process with
10,000 registered buttons.

    .venv/bin/python bench/outbox.py [--events 10000] [--buttons 10000] [--dir FOLDER]

Prints events per second for each phase, the ratio against bare SQLite inserts in one transaction
(what the per-event fsync costs), the bytes on disk per queued event (the cap's arithmetic in
docs/outbox.md uses it), the broker drain rate (issue 6 target: at least 1,000 events/s) and the
daemon's VmRSS/VmHWM (target: under 40 MB) next to a bare interpreter's. Runs on the real disk
under --dir (default: the system's temp folder). The broker part needs Debian's mosquitto.
"""

from __future__ import annotations

import argparse
import shutil
import sqlite3
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tests.brokers import Mosquitto, free_port, make_tls_files
from tests.running import RunningCourier, RunningUplink

from dashkanban.config import load_settings
from dashkanban.detect.events import Event
from dashkanban.outbox.store import Outbox, row_bytes

USER, PASSWORD = "t12345/bench", "bench-pw"
DRAIN_TARGET = 1_000  # events/s
RSS_TARGET_MB = 40.0

T0 = datetime(2026, 11, 26, 8, 0, 0, tzinfo=UTC)


def make_event(seq: int, buttons: int = 10_000) -> Event:
    """A realistic event: a replayed capture with many buttons, default text template."""
    b = seq % buttons
    mac = f"ac:63:be:{b >> 16 & 255:02x}:{b >> 8 & 255:02x}:{b & 255:02x}"
    name = f"dashButton_{b}"
    return Event(
        time=T0 + timedelta(milliseconds=6 * seq),
        mac=mac,
        serial=mac.replace(":", ""),
        name=name,
        type="c8y_MAC_Event",
        text=f"{name} pressed ({mac})",
        trigger="dhcp",
    )


def bench_put(path: Path, events: list[Event]) -> tuple[float, int]:
    with Outbox.open(path) as outbox:
        start = time.perf_counter()
        for event in events:
            outbox.put(event)
        elapsed = time.perf_counter() - start
        disk = outbox.stats().file_bytes
    return elapsed, disk


def bench_drain(path: Path, batch: int) -> tuple[float, int]:
    with Outbox.open(path) as outbox:
        start = time.perf_counter()
        drained = 0
        cursor = 0
        while True:
            queued = outbox.peek(limit=batch, after_id=cursor)
            if not queued:
                break
            for item in queued:
                outbox.ack(item.id)
                drained += 1
                cursor = item.id
        elapsed = time.perf_counter() - start
        assert outbox.count() == 0
    return elapsed, drained


def bench_bare_inserts(path: Path, events: list[Event]) -> float:
    """Baseline: the same rows in one transaction, no fsync per row (what durability costs)."""
    db = sqlite3.connect(path, isolation_level=None)
    db.execute("CREATE TABLE t (time, mac, serial, name, type, text, trigger)")
    start = time.perf_counter()
    db.execute("BEGIN")
    db.executemany(
        "INSERT INTO t VALUES (?, ?, ?, ?, ?, ?, ?)",
        [(e.time.isoformat(), e.mac, e.serial, e.name, e.type, e.text, e.trigger) for e in events],
    )
    db.execute("COMMIT")
    elapsed = time.perf_counter() - start
    db.close()
    return elapsed


def write_config(folder: Path, broker: Mosquitto, ca: Path, buttons: int) -> Path:
    csv = folder / "MACID.csv"
    csv.write_text("Name, MAC-Address\n" + "".join(
        f"{e.name}, {e.mac}\n" for e in (make_event(i, buttons) for i in range(buttons))))
    config = folder / "config.ini"
    config.write_text(
        f"[C8YMQTT]\ntenant = 127.0.0.1\ntenantID = t12345\nuser = bench\npassword = {PASSWORD}\n"
        f"port = {broker.port}\nca_file = {ca}\n"
        "[gateway]\nserial = dashkanban-bench\nname = bench gateway\n"
        f"[buttons]\nfile = {csv}\n[outbox]\npath = {folder / 'drain.sqlite3'}\n"
    )
    config.chmod(0o600)
    return config


def bench_broker_drain(config: Path, broker: Mosquitto, events: list[Event]) -> tuple[float, float]:
    """Queue `events` with the broker down, start it, time until the outbox is empty.

    Returns (seconds from the broker's start, seconds from the uplink's CONNACK-ready)."""
    settings = load_settings(config)
    broker.stop()
    with Outbox.open(settings.outbox.path) as outbox:
        for event in events:
            outbox.put(event)
        uplink = RunningUplink(settings, backoff=(0.05, 0.1))
        courier = RunningCourier(outbox, uplink)
        uplink.start()
        courier.start()
        try:
            time.sleep(0.2)  # the uplink has failed to connect at least once: a real outage
            started = time.perf_counter()
            broker.start()
            if not uplink.wait_connected(30):
                raise RuntimeError(f"no connection to the broker: {uplink.last_error}")
            ready = time.perf_counter()
            if not courier.drain(120):
                raise RuntimeError(f"{outbox.count()} events not delivered within 120 s")
            done = time.perf_counter()
        finally:
            courier.stop()
            uplink.stop()
    return done - started, done - ready


DAEMON_RSS = """
import sys, threading, time
from pathlib import Path
from dashkanban.config import load_settings
from dashkanban.commands.run import Daemon

class Idle:
    def __init__(self): self.stopped = threading.Event()
    def frames(self):
        self.stopped.wait()
        yield from ()
    def stop(self): self.stopped.set()

daemon = Daemon(load_settings(Path(sys.argv[1])), Idle())
thread = threading.Thread(target=daemon.run)
thread.start()
while daemon.uplink is None or not daemon.uplink.connected:
    time.sleep(0.05)
time.sleep(0.5)
print(open("/proc/self/status").read())
daemon.stop()
thread.join()
"""

BARE_RSS = "print(open('/proc/self/status').read())"


def resident_mb(code: str, *args: str) -> tuple[float, float]:
    """(VmRSS, VmHWM) in MB of a child running `code`."""
    done = subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True,
                          check=False, timeout=120)
    if done.returncode != 0:
        raise RuntimeError(f"the measured child failed: {done.stderr.strip()[-500:]}")
    out = done.stdout
    fields = dict(line.split(":", 1) for line in out.splitlines() if ":" in line)
    return (int(fields["VmRSS"].split()[0]) / 1024, int(fields["VmHWM"].split()[0]) / 1024)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=10_000)
    parser.add_argument("--buttons", type=int, default=10_000)
    parser.add_argument("--dir", type=Path, default=None, help="folder on the disk to measure")
    args = parser.parse_args()
    folder = Path(tempfile.mkdtemp(prefix="bench-outbox-", dir=args.dir))
    try:
        events = [make_event(i) for i in range(args.events)]
        payload = sum(row_bytes(e, ()) for e in events) / len(events)
        path = folder / "outbox.sqlite3"

        put_s, disk = bench_put(path, events)
        file_only = path.stat().st_size
        drain_s, drained = bench_drain(path, batch=100)
        bare_s = bench_bare_inserts(folder / "bare.sqlite3", events)

        n = args.events
        print(f"outbox benchmark: {n} events, {payload:.0f} payload bytes each, in {folder}")
        print(f"  queue (put, one fsynced commit each): {n / put_s:10,.0f} events/s")
        print(f"  drain without network (peek 100 + ack each): {drained / drain_s:10,.0f} events/s")
        print(f"  baseline, bare inserts in one transaction: {n / bare_s:10,.0f} events/s "
              f"(put costs {put_s / bare_s:,.0f}x that for durability)")
        print(f"  on disk after queueing: {file_only / n:.0f} bytes/event in the database "
              f"({file_only / n / payload:.2f}x the payload), plus a WAL of "
              f"{(disk - file_only) / 1e6:.1f} MB (SQLite checkpoints it at 1000 pages)")
        # ---- BROKER DRAIN: Courier + Uplink over TLS to mosquitto, after an outage ----------
        tls = make_tls_files(folder / "tls")
        broker = Mosquitto(folder / "mosquitto", free_port(), tls=tls, users={USER: PASSWORD})
        broker.start()
        try:
            config = write_config(folder, broker, tls.ca_cert, args.buttons)
            events = [make_event(i, args.buttons) for i in range(n)]
            from_start, from_ready = bench_broker_drain(config, broker, events)
            rate = n / from_ready
            verdict = "met" if rate >= DRAIN_TARGET else "MISSED"
            print(f"  broker drain after an outage (Courier + uplink, TLS, mosquitto): "
                  f"{rate:10,.0f} events/s from CONNACK ({n / from_start:,.0f}/s counting the "
                  f"reconnect); target {DRAIN_TARGET:,}/s: {verdict} ({rate / DRAIN_TARGET:.1f}x)")
            rss, hwm = resident_mb(DAEMON_RSS, str(config))
            bare_rss, _ = resident_mb(BARE_RSS)
            print(f"  daemon with {args.buttons:,} buttons, connected and idle: "
                  f"VmRSS {rss:.1f} MB, VmHWM {hwm:.1f} MB (a bare python: {bare_rss:.1f} MB); "
                  "target "
                  f"< {RSS_TARGET_MB:.0f} MB: {'met' if hwm < RSS_TARGET_MB else 'MISSED'}")
        finally:
            broker.stop()
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
