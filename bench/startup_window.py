"""A large store's start-up against a sandbox with a queue limit: how many QoS 1 messages the
gateway has unacknowledged at once, and how often the limit throws it out, per window size.

Run: .venv/bin/python bench/startup_window.py [BUTTONS] [LIMIT]   (defaults 2000 and 20)
For `max_inflight` 20 (the default) and 1000 (the window before issue 15) it prints the start-up
time, the sandbox's peak of unacknowledged messages and its count of queue-limit disconnects.
Cumulocity disconnects a client over its queue limit (docs/protocol.md 1.6); its number is not
published, so LIMIT is a stand-in.
"""

from __future__ import annotations

import dataclasses
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tests.running import RunningUplink
from tests.sandbox.test_fidelity_daemon import macid_with_bins
from tests.sandbox_fixture import sandbox_config, sandbox_options

from dashkanban.config import load_settings
from dashkanban.kanban import wiring
from dashkanban.kanban.bins import load_bins
from dashkanban.sandbox import BrokerRules, Sandbox

GATEWAY = "dashkanban-gw-01"
DEADLINE = 60.0


def run(buttons: int, limit: int, window: int) -> tuple[float | None, int, int]:
    """(seconds until every 114 arrived or None, peak unacknowledged, disconnects)."""
    folder = Path(tempfile.mkdtemp(prefix="dk-window-"))
    rules = BrokerRules(queue_limit=limit, ack_delay=0.0005)
    with Sandbox(sandbox_options(rules=rules)) as sandbox:
        macid = macid_with_bins(folder / "MACID.csv", buttons)
        settings = load_settings(sandbox_config(folder, sandbox, macid,
                                                extra="[kanban]\nalarms = yes\n"))
        settings = dataclasses.replace(
            settings, c8y=dataclasses.replace(settings.c8y, max_inflight=window))
        _, bins = load_bins(settings.buttons.file)
        uplink = RunningUplink(settings, startup_publishes=wiring.startup_publishes(bins),
                        backoff=(0.2, 1.0))
        start = time.monotonic()
        uplink.start()
        took: float | None = None
        try:
            while time.monotonic() - start < DEADLINE:
                if sum(1 for m in sandbox.messages()
                       if m.payload == "114,c8y_KanbanRefilled") >= buttons:
                    took = time.monotonic() - start
                    break
                time.sleep(0.1)
        finally:
            uplink.stop()
        stats = sandbox.stats()
        return took, sandbox.unacknowledged_peak(GATEWAY), stats.get("queue_exceeded", 0)


def main() -> int:
    buttons = int(sys.argv[1]) if len(sys.argv) > 1 else 2000
    limit = int(sys.argv[2]) if len(sys.argv) > 2 else 20
    print(f"{buttons} bin buttons, sandbox queue limit {limit}")
    for window in (20, 1000):
        took, peak, dropped = run(buttons, limit, window)
        done = f"{took:.1f} s" if took is not None else f"not done in {DEADLINE:g} s"
        print(f"  max_inflight {window:4d}: start-up {done}, peak unacknowledged {peak}, "
              f"disconnected {dropped} time(s)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
