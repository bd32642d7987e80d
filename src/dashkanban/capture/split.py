"""A big classic pcap file read as two halves on two threads, each through libpcap.

Why: replaying a big file is the kernel copying it from the page cache into libpcap's buffer
(tcpdump's whole time on the same file); the button program costs little next to it. Two cores
copy twice as fast, and ctypes releases the GIL inside `pcap_next_ex`, so half A (from the
file's start to the split) is read on the calling thread while half B (the split to the end) is
read on a second one (docs/capture.md, "Replay in two halves").

The split offset is only a guess (a chain of plausible record headers found near the middle), and
need not be proved before reading: half A walks the records from the file's start, and its input
ends exactly at the split, so A reaching its end cleanly (`pcap_next_ex` -> -2) proves the split
is a record boundary. Otherwise (a record cut at the split: a header chain forged inside a
payload, say), or on any libpcap error in B, `failure` is set and the caller reads the file again
the ordinary way, skipping the frames already yielded.

Half A reads through `fopencookie` with a read callback that `pread`s [0, split) into stdio's
buffer (no `mmap`: a file truncated under us would kill the process with SIGBUS); half B reads
the file through `fdopen`, `fseeko64`'d to the split once libpcap has read the file header.
"""

from __future__ import annotations

import ctypes
import logging
import os
import struct
import threading
from collections import deque
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

from dashkanban.capture import libpcap
from dashkanban.capture.frame import MAX_FRAME, Frame

if TYPE_CHECKING:
    from dashkanban.capture.bpf import Program

log = logging.getLogger(__name__)

SPLIT_MIN_BYTES = 64 << 20  # smaller files: one thread (a thread's start-up is not worth it)
QUEUE_BYTES = 16 << 20  # B's frames (bytes) held while A is read; then B waits for A's end
WINDOW = 256 << 10  # read at the middle to look for a record boundary
SEARCH = 64 << 10  # candidate offsets tried (from the window's start)
CHAIN = 16  # consecutive plausible record headers that make a candidate
# A's stdio buffer: 8 KiB to 256 KiB read alike (4 KiB slower); the larger, the fewer calls of
# A's read callback, each of which must take the GIL (about 1,000 for half of a 503 MB file).
STDIO_BUFFER = 256 << 10
# Where to look for the split, as a fraction of the file: A reads through a Python callback,
# about 30 % slower per byte than B's plain stdio (0.139 s against 0.110 s for each half of the
# 503 MB benchmark file), so A gets the smaller part and both end about together.
SPLIT_AT = 0.44
DAY = 86_400
SPAN = 400 * DAY  # a record's time at most this long after the first record's

_MAGICS = {
    b"\xd4\xc3\xb2\xa1": ("<", 1_000_000),
    b"\xa1\xb2\xc3\xd4": (">", 1_000_000),
    b"\x4d\x3c\xb2\xa1": ("<", 1_000_000_000),
    b"\xa1\xb2\x3c\x4d": (">", 1_000_000_000),
}


def find_split(head: bytes, window: bytes, at: int, size: int) -> int | None:
    """The first offset in `window` (read at file offset `at`) where CHAIN consecutive record
    headers (or fewer that end exactly at the file's end) look like real ones, judged by the
    file's header and first record (`head`: the file's first 40 bytes); None if there is none.

    Only a guess: Halves proves it by half A's clean end."""
    if len(head) < 40 or head[:4] not in _MAGICS:
        return None
    endian, units = _MAGICS[head[:4]]
    snaplen = struct.unpack_from(endian + "I", head, 16)[0]
    limit = min(snaplen, MAX_FRAME) if snaplen else MAX_FRAME
    first = struct.unpack_from(endian + "I", head, 24)[0]
    high = first + SPAN
    record = struct.Struct(endian + "IIII").unpack_from
    end = len(window)

    def plausible_chain(pos: int) -> bool:
        sec_before = first  # a record's time: at most a day before any earlier one's
        for count in range(CHAIN):
            if count and at + pos == size:
                return True  # the chain ends exactly at the end of the file
            if pos + 16 > end:
                return False
            sec, frac, caplen, length = record(window, pos)
            if not (caplen <= limit and caplen <= length <= MAX_FRAME and frac < units
                    and sec_before - DAY <= sec <= high and at + pos + 16 + caplen <= size):
                return False
            sec_before = max(sec_before, sec)
            pos += 16 + caplen
        return True

    for start in range(max(0, 24 + 16 - at), min(SEARCH, end - 15)):
        if at + start < size and plausible_chain(start):
            return at + start
    return None


def _cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def open_halves(path: Path, program: Program, nanoseconds: bool, *,
                min_bytes: int = SPLIT_MIN_BYTES, queue_bytes: int = QUEUE_BYTES
                ) -> Halves | None:
    """Two halves of the classic pcap file at `path`, or None where it is not worth it or not
    possible (smaller than `min_bytes`, one core, no record boundary found, no fopencookie):
    then the caller reads the file in one, as ever."""
    if _cores() < 2:
        return None
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except OSError:
        return None  # the ordinary reader reports it
    try:
        size = os.fstat(fd).st_size
        if size < min_bytes:
            os.close(fd)
            return None
        middle = int(size * SPLIT_AT)
        split = find_split(os.pread(fd, 40, 0), os.pread(fd, WINDOW, middle), middle, size)
        if split is None:
            log.debug("%s: no record boundary found near the middle: read in one", path)
            os.close(fd)
            return None
        return Halves(path, fd, split, program, nanoseconds, queue_bytes)
    except (libpcap.UnavailableError, OSError) as exc:
        log.debug("%s: not read in two halves (%s)", path, exc)
        os.close(fd)
        return None


class _Window:
    """[0, end) of a file as a stdio FILE (fopencookie): libpcap sees the end of file at `end`."""

    def __init__(self, fd: int, end: int) -> None:
        self.fd = fd
        self.end = end
        self.offset = 0
        self.error: BaseException | None = None
        self._views: dict[tuple[int, int], memoryview] = {}
        self.callback = libpcap.COOKIE_READ(self._read)  # kept: C holds only its address

    def _read(self, _cookie: int | None, buffer: int | None, size: int) -> int:
        try:
            n = min(size, self.end - self.offset)
            if n <= 0 or buffer is None:
                return 0
            view = self._views.get((buffer, n))
            if view is None:  # stdio reuses one buffer: a handful of (address, size) pairs
                if len(self._views) > 8:
                    self._views.clear()
                view = memoryview((ctypes.c_char * n).from_address(buffer)).cast("B")
                self._views[(buffer, n)] = view
            got = os.preadv(self.fd, [view], self.offset)
            if got == 0:  # shorter than when the split was chosen: the proof would not hold
                raise OSError(f"the file ends at byte {self.offset}, before the split")
            self.offset += got
            return got
        except BaseException as exc:  # noqa: BLE001 (a C callback must not raise: kept for A)
            self.error = exc
            return -1  # libpcap sees a read error and stops half A


class _End:
    """B's last item: how its read ended."""

    __slots__ = ("exception", "failure")

    def __init__(self, failure: str | None, exception: BaseException | None = None) -> None:
        self.failure = failure
        self.exception = exception


class Halves:
    """Half A (read on the caller's thread as `frames()` is iterated) and half B (read on a
    thread into a buffer of at most `queue_bytes`); `frames()` yields A's frames, then B's.
    `failure` says why the caller must read on the ordinary way; `close()` always."""

    def __init__(self, path: Path, fd: int, split: int, program: Program, nanoseconds: bool,
                 queue_bytes: int) -> None:
        c = libpcap.libc()
        self._fd = fd  # the caller's until this constructor returns
        self.path = path
        self.split = split
        self.failure: str | None = None
        self._queue_bytes = queue_bytes
        self._window = _Window(fd, split)
        self._stop = threading.Event()
        self._ready = threading.Condition()
        self._items: deque[Frame | _End] = deque()
        self._held = 0
        self._thread: threading.Thread | None = None
        self._b: libpcap.Reader | None = None
        self._crash: BaseException | None = None  # B's thread could not even hand over its end
        cookie = c.fopencookie(None, b"r", libpcap.CookieFunctions(self._window.callback))
        if not cookie:
            raise OSError(ctypes.get_errno(), "fopencookie failed")
        c.setvbuf(cookie, None, 0, STDIO_BUFFER)  # _IOFBF
        self._a = libpcap.Reader(path, program, False, nanoseconds, file=cookie)
        try:
            b_fd = os.dup(fd)
            b_file = c.fdopen(b_fd, b"rb")
            if not b_file:
                os.close(b_fd)
                raise OSError("fdopen failed")
            self._b = libpcap.Reader(path, program, False, nanoseconds, file=b_file)
            if c.seek64(b_file, split, os.SEEK_SET) != 0:
                raise OSError(f"cannot seek to byte {split}")
        except BaseException:
            self._fd = -1  # the caller closes it
            self._close_readers()
            raise

    def frames(self) -> Iterator[Frame]:
        b = self._b
        assert b is not None
        self._thread = threading.Thread(target=self._read_b, args=(b,), name="pcap-half-b",
                                        daemon=True)
        self._thread.start()
        yield from self._a.frames()
        error = self._window.error
        if error is not None and not isinstance(error, OSError):
            raise error  # KeyboardInterrupt, MemoryError: inside the read callback
        if self._a.failure is not None:
            # Not a record boundary (or the file changed): B's frames are not to be trusted.
            self.failure = f"the first half: {error or self._a.failure}"
            return
        # A ended cleanly exactly at the split: a record boundary, B's frames follow A's.
        ready = self._ready
        items = self._items
        while True:
            with ready:
                while not items:
                    if not ready.wait(1.0) and not self._thread.is_alive() and not items:
                        raise self._crash or RuntimeError(
                            f"{self.path}: the second half's reader stopped")
                item = items.popleft()
                if not isinstance(item, _End):
                    self._held -= len(item.data) + 64
                ready.notify()
            if isinstance(item, _End):
                if item.exception is not None:
                    raise item.exception
                if item.failure is not None:
                    self.failure = f"the second half: {item.failure}"
                return
            yield item

    def _read_b(self, b: libpcap.Reader) -> None:
        end = _End(None)
        try:
            for frame in b.frames():
                if not self._put(frame):
                    return
            end = _End(b.failure)
        except BaseException as exc:  # noqa: BLE001 (handed to the main thread, which raises it)
            end = _End(None, exc)
        finally:
            b.close()
            try:
                self._put(end)
            except BaseException as exc:  # noqa: BLE001 (the main thread raises it)
                self._crash = exc

    def _put(self, item: Frame | _End) -> bool:
        """Hold `item` for the main thread, waiting while the buffer is full (a hostile file
        where every record passes must not be held whole); False once closed."""
        ready = self._ready
        with ready:
            if isinstance(item, Frame):
                while self._held >= self._queue_bytes and not self._stop.is_set():
                    ready.wait(0.5)
                self._held += len(item.data) + 64
            if self._stop.is_set():
                return False
            self._items.append(item)
            ready.notify()
        return True

    def close(self) -> None:
        """Stop B's thread and close both handles and the file; idempotent."""
        self._stop.set()
        with self._ready:
            self._items.clear()
            self._ready.notify_all()
        thread = self._thread
        if thread is not None:
            thread.join()
        self._close_readers()

    def _close_readers(self) -> None:
        self._a.close()  # the cookie FILE: its callback does not close the descriptor
        if self._b is not None and self._thread is None:
            self._b.close()  # else B's thread closed it
        self._b = None
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1
