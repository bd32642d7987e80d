"""Issue 6, item 5: a running daemon (its own process) serves its counters on loopback in
Prometheus text format, logs the summary line, and on SIGTERM waits for the PUBACKs of what is
in flight before it exits 0. The heartbeat (`125`) is tested on the uplink (tests/c8y)."""

from __future__ import annotations

import signal
import subprocess
import sys
import urllib.request
from datetime import UTC, datetime
from pathlib import Path

from dashkanban.detect.events import Event
from dashkanban.outbox.store import Outbox
from tests.brokers import Mosquitto, free_port
from tests.c8y.support import Recorder
from tests.e2e.faultkit import (
    ChildDaemon,
    Press,
    button,
    by_serial,
    check_delivered,
    events_of,
    presses,
    queued_serials,
    wait_until,
    write_config,
)
from tests.faults import REPO, ResetProxy


def scrape(port: int) -> dict[str, float]:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
        text = response.read().decode()
    values = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            name, value = line.split()
            values[name] = float(value)
    return values


def counters(**values: int) -> dict[str, float]:
    names = ("frames", "candidates", "malformed", "presses", "queued", "delivered",
             "reconnects", "refused", "quarantined", "c8y_refused")
    return {**{f"dashkanban_{n}_total": float(values.get(n, 0)) for n in names},
            # issue 11: the uplink's health
            "dashkanban_uplink_connected": float(values.get("connected", 1)),
            "dashkanban_uplink_refusals_total": float(values.get("refusals", 0)),
            "dashkanban_outbox_events": float(values.get("outbox", 0))}


def test_metrics_of_a_running_daemon_and_sigterm_drains_before_exit_0(
    tmp_path: Path, mosquitto_tls: Mosquitto, recorder: Recorder
) -> None:
    port = free_port()
    outbox = tmp_path / "outbox.sqlite3"
    with ResetProxy(mosquitto_tls.port) as proxy:
        config = write_config(tmp_path, mosquitto_tls, port=proxy.port, buttons=5,
                              extra=f"[metrics]\nport = {port}\nlog_interval = 0.3\n")
        child = ChildDaemon(config, tmp_path / "daemon.log")
        try:
            child.wait_log("dashkanban-gw-01 ready")
            child.wait_log(f"metrics on http://127.0.0.1:{port}/metrics")
            child.press(presses(0, 3))
            wait_until(lambda: len(events_of(recorder.messages)) == 3, what="3 events")
            wait_until(lambda: queued_serials(outbox) == [], what="the outbox to empty")
            want = counters(frames=3, candidates=3, presses=3, queued=3, delivered=3)
            wait_until(lambda: scrape(port) == want, what=f"the metrics {want}")
            child.wait_log("counters: frames=3 candidates=3 malformed=0 presses=3 queued=3 "
                           "delivered=3 reconnects=0 refused=0 quarantined=0 c8y_refused=0 "
                           "outbox=0")

            # Two presses reach the broker, their PUBACKs are held: SIGTERM must wait for them.
            proxy.hold(True)
            child.press(presses(3, 5))
            wait_until(lambda: len(events_of(recorder.messages)) == 5, what="5 events")
            assert queued_serials(outbox) == list(by_serial(presses(3, 5)))
            child.process.send_signal(signal.SIGTERM)
            child.wait_log("SIGTERM: stopping")
            assert child.process.poll() is None  # still waiting for the PUBACKs
            assert scrape(port) == counters(frames=5, candidates=5, presses=5, queued=5,
                                            delivered=3, outbox=2)
            proxy.hold(False)
            assert child.finish() == 0
        finally:
            if child.process.poll() is None:
                child.kill()
    assert queued_serials(outbox) == []
    check_delivered(recorder.messages, presses(0, 5))  # delivered once each: nothing resent
    log = child.log_text().splitlines()
    assert log[-1].endswith("dashkanban.commands.run: dashkanban stopped")
    assert log[-2].endswith("counters: frames=5 candidates=5 malformed=0 presses=5 queued=5 "
                            "delivered=5 reconnects=0 refused=0 quarantined=0 c8y_refused=0 "
                            "outbox=0")


def test_dashkanban_run_on_sigterm_waits_for_in_flight_pubacks_and_exits_0(
    tmp_path: Path, mosquitto_tls: Mosquitto, recorder: Recorder
) -> None:
    """The real `dashkanban run` process (live capture on `lo`, which no test frame reaches):
    events another process queued are picked up, reach the broker, their PUBACKs are held; on
    SIGTERM it waits for them, and exits 0 once they come, with the outbox empty."""
    outbox = tmp_path / "outbox.sqlite3"
    log = tmp_path / "run.log"
    with ResetProxy(mosquitto_tls.port) as proxy, log.open("wb") as err:
        config = write_config(tmp_path, mosquitto_tls, port=proxy.port, buttons=3)
        run = subprocess.Popen(
            [sys.executable, "-m", "dashkanban", "run", "-c", str(config), "-i", "lo",
             "--allow-root"],
            cwd=REPO, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=err,
        )
        try:
            wait_until(lambda: "dashkanban-gw-01 ready" in log.read_text(), 20, "ready")
            proxy.hold(True)
            with Outbox.open(outbox) as queue:  # another process queues (a replay, say)
                for press in presses(0, 3):
                    queue.put(event_of(press))
            wait_until(lambda: len(events_of(recorder.messages)) == 3, what="3 events")
            assert queued_serials(outbox) == list(by_serial(presses(0, 3)))
            run.send_signal(signal.SIGTERM)
            wait_until(lambda: "SIGTERM: stopping" in log.read_text(), what="the signal")
            assert run.poll() is None  # waiting for the PUBACKs
            proxy.hold(False)
            assert run.wait(30) == 0
        finally:
            if run.poll() is None:
                run.kill()
                run.wait()
    assert queued_serials(outbox) == []
    check_delivered(recorder.messages, presses(0, 3))
    lines = log.read_text().splitlines()
    assert lines[-1].endswith("dashkanban.commands.run: dashkanban stopped")
    assert any(line.endswith("dashkanban.commands.run: capturing on lo (arp, dhcp)")
               for line in lines)


def event_of(press: Press) -> Event:
    b = button(press.i)
    return Event(time=datetime.fromtimestamp(press.stamp, UTC), mac=b.mac, serial=b.serial,
                 name=b.name, type="c8y_MAC_Event", text=f"{b.name} pressed ({b.mac})",
                 trigger="dhcp")
