"""Parts of the end-to-end fault tests: many buttons, one press frame each, the exact `400` every
press must become, a daemon fed by the test (in this process or in a child), and the one check
every fault test ends with (`check_delivered`).
"""

from __future__ import annotations

import contextlib
import queue
import sqlite3
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from dashkanban.c8y.smartrest import encode_line
from dashkanban.capture import Frame
from dashkanban.commands.run import Daemon
from dashkanban.config import Settings, load_settings
from dashkanban.detect.buttons import Button
from tests import forge
from tests.brokers import Mosquitto
from tests.c8y import support
from tests.conftest import BROKER_PASSWORD, BROKER_USER
from tests.faults import REPO

T0 = 1_795_680_000.0  # 2026-11-26T08:00:00Z: every press time is known to the millisecond
EVENT_TYPE = "c8y_MAC_Event"
Message = tuple[str, str]  # (topic, payload) as the independent subscriber saw it


def button(i: int) -> Button:
    mac = f"02:00:5e:{i >> 16 & 255:02x}:{i >> 8 & 255:02x}:{i & 255:02x}"
    return Button(name=f"button_{i:05d}", mac=mac)


def buttons_csv(path: Path, count: int) -> Path:
    path.write_text("Name, MAC-Address\n" + "".join(
        f"{b.name}, {b.mac}\n" for b in map(button, range(count))))
    return path


@dataclass(frozen=True)
class Press:
    """Press number `i`: button i, one DHCP DISCOVER at T0 + i * 5 ms (10,000 in 50 s)."""

    i: int

    @property
    def stamp(self) -> float:
        return T0 + self.i / 200

    def frame(self) -> Frame:
        return Frame(self.stamp, forge.dhcp_client_frame(button(self.i).mac, forge.DISCOVER))

    def line(self) -> bytes:
        frame = self.frame()
        return f"{frame.timestamp!r} {frame.data.hex()}\n".encode()

    @property
    def message(self) -> Message:
        """The `400` the default event settings make of it, on the child's topic."""
        b = button(self.i)
        when = datetime.fromtimestamp(self.stamp, UTC).isoformat(timespec="milliseconds")
        return (f"s/us/{b.serial}",
                encode_line(400, EVENT_TYPE, f"{b.name} pressed ({b.mac})", when))


def presses(start: int, stop: int) -> list[Press]:
    return [Press(i) for i in range(start, stop)]


def by_serial(items: Iterable[Press]) -> dict[str, Message]:
    return {button(p.i).serial: p.message for p in items}


def write_config(folder: Path, broker: Mosquitto, *, port: int | None = None, buttons: int = 0,
                 outbox: Path | None = None, extra: str = "", user: str = BROKER_USER,
                 password: str = BROKER_PASSWORD) -> Path:
    """A config.ini (0600) for the TLS broker, `buttons` generated buttons, the outbox under
    `folder` unless given; `port` defaults to the broker's (pass a proxy's)."""
    folder.mkdir(parents=True, exist_ok=True)
    csv = buttons_csv(folder / "MACID.csv", buttons)
    return support.write_config(folder, broker, port=port, user=user, password=password,
                                buttons=csv, outbox=outbox, extra=extra)


# -- what arrived -------------------------------------------------------------------------------


def events_of(messages: Iterable[Message]) -> list[Message]:
    return [m for m in messages if m[1].startswith("400,")]


def check_delivered(messages: Iterable[Message], expected: Iterable[Press], *,
                    lost_pubacks: set[Message] | frozenset[Message] = frozenset(),
                    maybe: Iterable[Press] = ()) -> None:
    """The independent subscriber saw every expected press, first arrivals in press order, and
    nothing else; a press arrived twice only if the broker had it while its PUBACK was lost
    (`lost_pubacks`). A `maybe` press (being queued at the moment of a kill) may be absent."""
    arrived = events_of(messages)
    optional = {p.message for p in maybe}
    required = [p.message for p in expected]
    first = list(dict.fromkeys(arrived))
    wanted = [m for m in sorted({*required, *optional}, key=_order)
              if m not in optional or m in first]
    assert first == wanted, _diff(first, wanted)
    repeated = {m for m, n in Counter(arrived).items() if n > 1}
    assert repeated <= lost_pubacks, f"duplicates without a lost PUBACK: {repeated - lost_pubacks}"


def _order(message: Message) -> str:
    return message[1].rsplit(",", 1)[1]  # the press time, in milliseconds: one per press


def _diff(got: list[Message], want: list[Message]) -> str:
    missing = [m for m in want if m not in got]
    extra = [m for m in got if m not in want]
    return f"{len(got)} arrived, {len(want)} expected; missing {missing[:3]}, extra {extra[:3]}"


def queued_serials(outbox: Path) -> list[str]:
    """The serials of the rows in the outbox file, oldest first, after an integrity check."""
    db = sqlite3.connect(outbox)
    try:
        assert db.execute("PRAGMA integrity_check").fetchall() == [("ok",)]
        return [str(r[0]) for r in db.execute("SELECT serial FROM events ORDER BY id")]
    finally:
        db.close()


def lost_pubacks(outbox: Path, seen: Iterable[Message], pressed: Iterable[Press]) -> set[Message]:
    """Presses the broker routed (the subscriber saw them) that are still in the outbox: their
    PUBACK never made it into the file, so they are sent again and may arrive twice."""
    known = by_serial(pressed)
    arrived = set(events_of(seen))
    return {known[s] for s in queued_serials(outbox) if known[s] in arrived}


def wait_until(condition: object, timeout: float = 10.0, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while not condition():  # type: ignore[operator]
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out waiting for {what}")
        time.sleep(0.02)


# -- a daemon in this process -------------------------------------------------------------------


class QueueSource:
    """Frames the test puts, read by the daemon's capture loop; `consumed` counts frames taken."""

    def __init__(self) -> None:
        self._queue: queue.Queue[Frame | None] = queue.Queue()
        self.consumed = 0
        self.on_frame: list[object] = []

    def put(self, items: Iterable[Press]) -> None:
        for p in items:
            self._queue.put(p.frame())

    def put_frames(self, frames: Iterable[Frame]) -> None:
        for frame in frames:
            self._queue.put(frame)

    def frames(self) -> Iterator[Frame]:
        while (frame := self._queue.get()) is not None:
            yield frame
            self.consumed += 1
            for hook in self.on_frame:
                hook()  # type: ignore[operator]

    def stop(self) -> None:
        self._queue.put(None)


class RunningDaemon:
    """`Daemon.run()` on a thread over a QueueSource; `stop()` is what SIGTERM does."""

    def __init__(self, settings: Settings, **options: object) -> None:
        self.source = QueueSource()
        self.daemon = Daemon(settings, self.source, **options)  # type: ignore[arg-type]
        self.result: list[int] = []
        self._thread = threading.Thread(target=lambda: self.result.append(self.daemon.run()),
                                        daemon=True, name="daemon")
        self._thread.start()
        wait_until(lambda: self.daemon.courier is not None, what="the daemon to start")

    @classmethod
    def from_config(cls, config: Path, **options: object) -> RunningDaemon:
        return cls(load_settings(config), **options)

    def press(self, items: Iterable[Press]) -> None:
        self.source.put(items)

    def queued(self) -> int:
        return self.daemon.metrics.snapshot().queued

    def stop(self, timeout: float = 30.0) -> int:
        self.daemon.stop()
        self._thread.join(timeout)
        assert not self._thread.is_alive(), "the daemon did not stop"
        return self.result[0]


# -- a daemon in a child process ------------------------------------------------------------------


class ChildDaemon:
    """`python -m tests.daemon_child CONFIG`: frames on its stdin, `done N` lines on its stdout."""

    def __init__(self, config: Path, log: Path) -> None:
        self.log = log
        self._err = log.open("ab")
        self.process = subprocess.Popen(
            [sys.executable, "-m", "tests.daemon_child", str(config)],
            cwd=REPO, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self._err,
        )
        self.done = 0
        self._cond = threading.Condition()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:  # bounded: the child's lifetime
            with self._cond:
                self.done = int(line.split()[1])
                self._cond.notify_all()

    def press(self, items: Iterable[Press]) -> None:
        assert self.process.stdin is not None
        self.process.stdin.write(b"".join(p.line() for p in items))
        self.process.stdin.flush()

    def wait_done(self, count: int, timeout: float = 20.0) -> int:
        with self._cond:
            self._cond.wait_for(lambda: self.done >= count or self.process.poll() is not None,
                                timeout)
            return self.done

    def log_text(self) -> str:
        return self.log.read_text()

    def wait_log(self, text: str, timeout: float = 20.0) -> None:
        wait_until(lambda: text in self.log_text(), timeout, repr(text))

    def kill(self) -> None:
        self.process.kill()
        self.finish()

    def terminate(self, timeout: float = 30.0) -> int:
        self.process.terminate()
        return self.finish(timeout)

    def finish(self, timeout: float = 30.0) -> int:
        try:
            code = self.process.wait(timeout)
        finally:
            if self.process.poll() is None:
                self.process.kill()
                self.process.wait()
            self._reader.join(5)
            for stream in (self.process.stdin, self.process.stdout):
                if stream is not None:
                    with contextlib.suppress(BrokenPipeError):
                        stream.close()
            self._err.close()
        return code
