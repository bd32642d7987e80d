"""Health you can see: the uplink's state next to the outbox, and systemd's notify protocol.

`dashkanban run` writes `<outbox>.uplink.json` whenever a connection changes state (connected,
refused, unreachable), on a thread of its own (`StateFile`): `outbox status`, run by anyone who
may read the outbox, shows it. The file holds states, times, counts and error lines (which never
contain a password), is replaced atomically, and has mode 0600 like the outbox.

`notify` speaks sd_notify(3) without libsystemd: one datagram to the unix socket named by
$NOTIFY_SOCKET (a leading `@` is the abstract namespace). With `Type=notify` systemd waits for
`READY=1`, and with `WatchdogSec=` it restarts a service whose `WATCHDOG=1` stops coming.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from dashkanban.files import write_atomic

if TYPE_CHECKING:
    from dashkanban.c8y.mqtt import LinkHealth

log = logging.getLogger(__name__)

STATE_MODE = 0o600  # like every file in the state folder (the outbox too)
FORMAT = 1


def state_path(outbox: Path) -> Path:
    return outbox.with_name(outbox.name + ".uplink.json")


class StateFile:
    """Writes the uplink's state. `snapshot` takes the state on the daemon's loop (its uplink's
    listeners); `flush` writes it off the loop (`run` has a thread for it: an fsync may take
    seconds on a failing SD card, and the loop must not wait for it).

    Only ever the newest snapshot is written, and never one older than what the file holds:
    `flush` holds a lock through the write, takes the latest under it, and skips it when a later
    or the same one is written already. So flushes may come late, twice, or from two threads,
    and the file still only moves forward. `snapshot` never waits for a write under way (its
    own lock is held only to swap the latest)."""

    def __init__(self, outbox: Path) -> None:
        self.path = state_path(outbox)
        self._failed = False
        # Held through a write, on whichever thread writes (the state thread, the loop at the end).
        self._writing = threading.Lock()
        self._latest_lock = threading.Lock()  # only to hand the latest snapshot over
        self._taken = 0  # snapshots taken, on the loop
        self._latest: tuple[int, bytes] | None = None  # (its number, the file's bytes)
        self._written = 0  # the number of the snapshot in the file

    def snapshot(self, links: Sequence[LinkHealth], *, running: bool = True,
                 presses_lost: int = 0) -> None:
        """The state as of now, for the next `flush`; cheap (no disk). `presses_lost`: presses
        the daemon's full press queue lost since it started (commands/run.py PRESS_QUEUE)."""
        data: dict[str, Any] = {
            "format": FORMAT,
            "pid": os.getpid(),
            "running": running,
            "written": time.time(),
            "links": [asdict(link) for link in links],
        }
        if presses_lost:
            data["presses_lost"] = presses_lost
        text = json.dumps(data, indent=1, sort_keys=True)
        self._taken += 1
        with self._latest_lock:
            self._latest = (self._taken, text.encode("utf-8"))

    def flush(self) -> None:
        """Write the newest snapshot unless it (or a later one) is in the file already."""
        with self._writing:
            with self._latest_lock:
                latest = self._latest
            if latest is None or latest[0] <= self._written:
                return
            try:
                write_atomic(self.path, latest[1], STATE_MODE)
                self._failed = False
            except OSError as exc:
                if not self._failed:  # once per failing stretch: a full disk logs enough
                    log.warning("cannot write the uplink state to %s: %s", self.path,
                                exc.strerror or exc)
                self._failed = True
                return
            self._written = latest[0]

    def write(self, links: Sequence[LinkHealth], *, running: bool = True,
              presses_lost: int = 0) -> None:
        """`snapshot` and `flush` at once, on the caller's thread."""
        self.snapshot(links, running=running, presses_lost=presses_lost)
        self.flush()


def read_state(outbox: Path) -> Mapping[str, Any] | None:
    """The state the daemon wrote, or None (never written, unreadable, or not ours)."""
    try:
        data = json.loads(state_path(outbox).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        return None
    return data


def _clock(epoch: float) -> str:
    return datetime.fromtimestamp(epoch).astimezone().isoformat(timespec="seconds")


def duration(seconds: float) -> str:
    """41 s, 12 min, 3 h 5 min: how long, in the words of a log line."""
    seconds = max(0, round(seconds))
    if seconds < 60:
        return f"{seconds} s"
    minutes = seconds // 60
    if minutes < 60:
        return f"{minutes} min"
    hours, minutes = divmod(minutes, 60)
    return f"{hours} h {minutes} min" if minutes else f"{hours} h"


def status_lines(state: Mapping[str, Any] | None, *, running: bool,
                 now: float | None = None) -> list[str]:
    """What `outbox status` adds about the uplink (nothing when no state was ever written)."""
    if state is None:
        return []
    now = time.time() if now is None else now
    lost = int(state.get("presses_lost", 0))
    # Presses the running daemon could not even queue: its outbox writer was stuck
    # (commands/run.py).
    lost_lines = [f"presses lost: {lost} (the press queue was full: the outbox writer was "
                  "stuck; see the log)"] if lost else []
    if not running or not state.get("running", False):
        return [f"uplink: dashkanban run is not running (last state written "
                f"{_clock(float(state.get('written', 0)))})", *lost_lines]
    links = state.get("links", [])
    if not links:  # per-device mode opens a button's connection at its first press
        return ["uplink: no connection yet (per-device mode connects a button when it is "
                "first pressed)", *lost_lines]
    lines = []
    for link in links:
        who = link.get("client_id", "?")
        since = _clock(float(link.get("since", 0)))
        what = link.get("state")
        if what == "connected":
            text = f"connected since {since}"
        elif what == "refused":
            reason = link.get("reason")
            text = f"login refused since {since}" + (f" ({reason})" if reason else "")
        elif what == "unreachable":
            text = f"not connected since {since}"
        elif what == "gave up":
            text = f"gave up since {since}"
        else:
            text = f"connecting since {since}"
        retry_at = link.get("retry_at")
        if retry_at is not None and what != "connected":
            text += f", retrying in {max(0, round(float(retry_at) - now))} s"
        attempts = int(link.get("attempts", 0))
        if attempts:
            text += f", {attempts} failed attempts"
        refusals = int(link.get("refusals", 0))
        if refusals:
            text += f", {refusals} refused logins since start"
        lines.append(f"uplink {who}: {text}")
        if link.get("last_error") and what != "connected":
            lines.append(f"uplink last error: {link['last_error']}")
    return lines + lost_lines


# -- systemd -------------------------------------------------------------------------------------


def notify(message: str, environ: Mapping[str, str] | None = None) -> bool:
    """Send `message` (e.g. "READY=1") to systemd; False when not run by systemd with
    Type=notify (no $NOTIFY_SOCKET) or the socket is gone. Never raises."""
    address = (os.environ if environ is None else environ).get("NOTIFY_SOCKET", "")
    if not address or address[0] not in "/@":
        return False
    target = "\0" + address[1:] if address[0] == "@" else address
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
            sock.sendto(message.encode("utf-8"), target)
    except OSError as exc:
        log.debug("sd_notify %s failed: %s", message, exc)
        return False
    return True


def watchdog_interval(environ: Mapping[str, str] | None = None) -> float | None:
    """Seconds between two WATCHDOG=1 (half of $WATCHDOG_USEC, as sd_watchdog_enabled(3)
    advises), or None when systemd set no watchdog for this process."""
    env = os.environ if environ is None else environ
    usec = env.get("WATCHDOG_USEC", "")
    pid = env.get("WATCHDOG_PID", "")
    if not usec.isdigit() or int(usec) == 0:
        return None
    if pid and pid != str(os.getpid()):
        return None
    return int(usec) / 2_000_000
