"""A daemon in a process of its own, for the crash and signal tests: `Daemon.run()` exactly as
`dashkanban run` wires it (same signal handlers), with frames read from stdin instead of a raw
socket so that the test decides when each one arrives.

Usage: python -m tests.daemon_child CONFIG

With $DASHKANBAN_CHILD_FAILURE set, a bug is injected for the supervision tests: `courier` makes
the delivery loop's send of a row raise, `capture` makes the frame source raise after its first
frame. Either must end the process with exit 1 (issue 11).

stdin: one frame a line, `<epoch seconds> <frame in hex>`. After the daemon has asked for frame
N+1, i.e. finished everything frame N caused (a press is committed to the outbox when its `put`
returned), the child prints `done N` on stdout, flushed. End of stdin ends the capture (the
daemon then drains and exits); SIGTERM stops it as it stops `dashkanban run`. Logs go to stderr.
"""

from __future__ import annotations

import logging
import os
import select
import signal
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

from dashkanban.capture import Frame
from dashkanban.commands.run import Daemon, _on_signals
from dashkanban.config import load_settings

POLL = 0.05  # seconds; how late a stop() is seen while stdin is quiet
FAILURE = "DASHKANBAN_CHILD_FAILURE"


class StdinFrames:
    """Frames from a file descriptor, one hex line each; `stop()` is signal-safe (a flag)."""

    def __init__(self, fd: int, *, fail_after: int | None = None) -> None:
        self._fd = fd
        self._stop = threading.Event()
        self._fail_after = fail_after

    def stop(self) -> None:
        self._stop.set()

    def frames(self) -> Iterator[Frame]:
        done = 0
        pending = b""
        while not self._stop.is_set():
            readable, _, _ = select.select([self._fd], [], [], POLL)
            if not readable:
                continue
            chunk = os.read(self._fd, 1 << 16)
            if not chunk:
                return
            pending += chunk
            *lines, pending = pending.split(b"\n")
            for line in lines:
                stamp, data = line.split()
                yield Frame(float(stamp), bytes.fromhex(data.decode()))
                done += 1
                sys.stdout.write(f"done {done}\n")
                sys.stdout.flush()
                if self._fail_after is not None and done >= self._fail_after:
                    raise RuntimeError("injected: a bug in the capture")


def main(argv: list[str]) -> int:
    logging.basicConfig(level=logging.INFO, stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    settings = load_settings(Path(argv[0]))
    failure = os.environ.get(FAILURE, "")
    if failure == "courier":
        _break_the_courier()
    frames = StdinFrames(sys.stdin.fileno(), fail_after=1 if failure == "capture" else None)
    daemon = Daemon(settings, frames, signals=True)
    _on_signals(daemon.stop, (signal.SIGTERM, signal.SIGINT))
    return daemon.run()


def _break_the_courier() -> None:
    from dashkanban.c8y.mqtt import Uplink

    def broken(self: Uplink, *args: object, **kwargs: object) -> object:
        raise RuntimeError("injected: a bug in sending a row")

    Uplink.send = broken  # type: ignore[method-assign,assignment]


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
