"""Numbered marks for live capture tests: a frame of our own sent after the frames under test,
and waited for exactly, so that "everything before it has arrived".

A mark is an ARP request from SYNC (in every button list of these tests) whose target IP carries
its number. Frames on one veth pair reach one socket in the order they were sent, so once mark N
is read, every frame sent before it has been read too, including marks sent earlier that the
socket had not been bound for or that arrived late. Waiting for *a* mark, or sleeping a fixed
time and then draining, lets a late earlier mark end the wait too soon on a loaded machine.
"""

from __future__ import annotations

import queue
from collections.abc import Callable

import pytest

from dashkanban.capture import Frame
from tests import forge

SYNC = "02:dd:00:00:00:0a"
_FIRST = forge.arp_frame(1, SYNC, "10.9.9.9", "10.8.0.0")
_PREFIX = _FIRST[:38]  # Ethernet, ARP header and sender: the same in every mark
WAIT = 0.1  # seconds a frame is waited for before another mark is sent (sync) or looked again
TRIES = 100  # bounded: 10 s


def mark(number: int) -> bytes:
    """Mark `number` (0 to 65535)."""
    return forge.arp_frame(1, SYNC, "10.9.9.9", f"10.8.{number >> 8}.{number & 0xFF}")


def number(data: bytes) -> int | None:
    """The number of a mark, None for any other frame."""
    if len(data) != len(_FIRST) or data[:38] != _PREFIX or data[38:40] != b"\x0a\x08":
        return None
    return data[40] << 8 | data[41]


Send = Callable[[bytes], object]


class Marks:
    """Marks sent with `send` (a socket's) and read from `frames` (the queue the capture under
    test fills). `alive` is called while waiting (e.g. to fail at once if the reading thread
    died)."""

    def __init__(self, frames: queue.Queue[Frame],
                 alive: Callable[[], None] = lambda: None) -> None:
        self.frames = frames
        self._alive = alive
        self._next = 0

    def _new(self, send: Send) -> int:
        sent = self._next
        self._next += 1
        send(mark(sent))
        return sent

    def sync(self, send: Send) -> None:
        """Marks until the last one sent comes back (the socket is bound with its filter);
        every frame before it is dropped."""
        wanted = self._new(send)
        for _ in range(TRIES):
            try:
                frame = self.frames.get(timeout=WAIT)
            except queue.Empty:
                self._alive()
                wanted = self._new(send)  # the socket was not bound yet for the last one
                continue
            if number(frame.data) == wanted:
                return
        pytest.fail("the capture never received a frame")

    def exchange(self, send: Send, frames: list[bytes]) -> list[Frame]:
        """Send `frames` and a new mark; what arrived before exactly that mark (other marks,
        late ones, left out)."""
        for frame in frames:
            send(frame)
        wanted = self._new(send)
        got: list[Frame] = []
        for _ in range(TRIES):
            try:
                frame = self.frames.get(timeout=WAIT)
            except queue.Empty:
                self._alive()
                continue
            found = number(frame.data)
            if found == wanted:
                return got
            if found is None:
                got.append(frame)
        pytest.fail(f"the closing mark never arrived; got {len(got)} frames")
