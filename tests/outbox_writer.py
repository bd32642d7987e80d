"""A child process for the crash tests: queue events START..START+COUNT-1 into an outbox and print
each row id, flushed, right after its `put` returned. The parent kills it with SIGKILL mid-burst.

Usage: python -m tests.outbox_writer DB START COUNT
"""

from __future__ import annotations

import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path

from dashkanban.detect.events import Event
from dashkanban.outbox.store import Outbox

T0 = datetime(2026, 11, 26, 8, 0, 1, 234000, tzinfo=UTC)


def event_for(seq: int) -> Event:
    """The deterministic event number `seq`: the parent rebuilds it to check each row's content."""
    button = seq % 50
    mac = f"ac:63:be:00:{button // 256:02x}:{button % 256:02x}"
    return Event(
        time=T0 + timedelta(milliseconds=37 * seq),
        mac=mac,
        serial=mac.replace(":", ""),
        name=f"dashButton_{button}",
        type="c8y_MAC_Event",
        text=f"dashButton_{button} pressed ({mac}) #{seq}",
        trigger="dhcp" if seq % 3 else "arp",
    )


def main(argv: list[str]) -> int:
    db, start, count = Path(argv[0]), int(argv[1]), int(argv[2])
    outbox = Outbox.open(db)
    for seq in range(start, start + count):
        row_id = outbox.put(event_for(seq), extra_lines=(f"302,c8y_Kanban,seq {seq}",))
        sys.stdout.write(f"{row_id} {seq}\n")
        sys.stdout.flush()
    outbox.close()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
