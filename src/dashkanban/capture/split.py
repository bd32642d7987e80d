"""A big classic pcap file read as two halves on two threads, each through libpcap.

Why: replaying a big file is the kernel copying it from the page cache into libpcap's buffer
(tcpdump's whole time on the same file); the button program costs little next to it. Two cores
copy twice as fast, and ctypes releases the GIL inside `pcap_next_ex`, so half A (from the
file's start to the split) and half B (the split to the end) are read on two threads while the
calling thread takes their frames, A's first (docs/capture.md, "Replay in two halves").

The split offset is only a guess (a chain of plausible record headers found near the middle), and
need not be proved before reading: half A walks the records from the file's start, and its input
ends exactly at the split, so A reaching its end cleanly (`pcap_next_ex` -> -2) proves the split
is a record boundary. Otherwise (a record cut at the split: a header chain forged inside a
payload, say), or on any libpcap error in B, `failure` is set and the caller reads the file again
the ordinary way, skipping the frames already yielded.

Half A reads through `fopencookie` with a read callback that `pread`s [0, split) into stdio's
buffer (no `mmap`: a file truncated under us would kill the process with SIGBUS); half B reads
the file through `fdopen`, `fseeko64`'d to the split once libpcap has read the file header.

The read callback never runs on the main thread, so half A's FILE and Reader are made on A's own
thread (libpcap reads the file header through the callback as the Reader is made; B's Reader,
made on the caller's thread, has already read the same header). Python runs a pending signal
handler (Ctrl-C's KeyboardInterrupt) at a function's first instruction, so on the main thread
the handler's exception would escape the callback before its `try` (ctypes prints "Exception
ignored on calling ctypes callback function" and hands stdio an undefined return value: wrong
frames), or inside it be caught as a read error (the replay going on in one thread, the Ctrl-C
lost). Blocking signals around it would not do: a signal another thread takes is still handled
on the main thread. Only the main thread runs signal handlers: there it lands in ordinary Python
code, which closes all. The main thread never calls libpcap on A's handle: A's thread makes it
and closes it (a half `close()` takes before its thread does has no handle yet); and `fclose`
would not read anyway (of the cookie's functions only `read` is set).
"""

from __future__ import annotations

import contextlib
import ctypes
import logging
import os
import queue
import signal
import struct
import threading
from collections.abc import Generator, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Literal

from dashkanban.capture import libpcap
from dashkanban.capture.frame import MAX_FRAME, PCAP_MAGICS, Frame

if TYPE_CHECKING:
    from dashkanban.capture.bpf import Program

log = logging.getLogger(__name__)

SPLIT_MIN_BYTES = 64 << 20  # smaller files: one thread (a thread's start-up is not worth it)
QUEUE_BYTES = 16 << 20  # B's frames (bytes) held while A is read; then B waits for A's end
WINDOW = 256 << 10  # read at the middle to look for a record boundary
SEARCH = 64 << 10  # candidate offsets tried (from the window's start)
CHAIN = 16  # consecutive plausible record headers that make a candidate
# A's stdio buffer, a real one: glibc's setvbuf ignores the size when given no buffer (8 KiB).
# The larger, the fewer calls of A's read callback, each of which must take the GIL (about
# 840 for 44 % of the 503 MB benchmark file; 27,000 with 8 KiB).
STDIO_BUFFER = 256 << 10
# Where to look for the split, as a fraction of the file: A reads through a Python callback,
# about 30 % slower per byte than B's plain stdio (0.139 s against 0.110 s for each half of the
# 503 MB benchmark file), so A gets the smaller part and both end about together.
SPLIT_AT = 0.44
DAY = 86_400
SPAN = 400 * DAY  # a record's time at most this long after the first record's

# Signals blocked while a half's thread starts (and so in that thread): all but the
# synchronous ones, which the kernel sends to the thread that faulted.
_ASYNC_SIGNALS = frozenset(signal.valid_signals()) - {
    signal.SIGSEGV, signal.SIGBUS, signal.SIGFPE, signal.SIGILL, signal.SIGTRAP, signal.SIGSYS}

def find_split(head: bytes, window: bytes, at: int, size: int) -> int | None:
    """The first offset in `window` (read at file offset `at`) where CHAIN consecutive record
    headers (or fewer that end exactly at the file's end) look like real ones, judged by the
    file's header and first record (`head`: the file's first 40 bytes); None if there is none.

    Only a guess: Halves proves it by half A's clean end."""
    if len(head) < 40 or head[:4] not in PCAP_MAGICS:
        return None
    endian, units = PCAP_MAGICS[head[:4]]
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
    possible (smaller than `min_bytes`, one core, no record boundary found, no fopencookie, no
    libpcap): then the caller reads the file in one, as ever."""
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
        libpcap.library()  # before any FILE is made: none to close when it is missing
        return Halves(path, fd, split, program, nanoseconds, queue_bytes)
    except (libpcap.UnavailableError, OSError) as exc:
        log.debug("%s: not read in two halves (%s)", path, exc)
        os.close(fd)
        return None
    except BaseException:  # Ctrl-C, MemoryError: the descriptor is still ours
        os.close(fd)
        raise


class _SignalsHeld:
    """`with _SignalsHeld():` the asynchronous signals are blocked for this thread inside, so
    no signal handler (only the main thread runs them) raises in the block; one that came
    meanwhile runs as the block ends. The mask is restored whatever raises, also a handler
    already pending on entry (it runs at the return of the call that blocks)."""

    def __enter__(self) -> None:
        self._before = signal.pthread_sigmask(signal.SIG_BLOCK, ())  # unchanged: only read
        try:
            signal.pthread_sigmask(signal.SIG_BLOCK, _ASYNC_SIGNALS)
        except BaseException:
            signal.pthread_sigmask(signal.SIG_SETMASK, self._before)
            raise

    def __exit__(self, *_exc: object) -> None:
        signal.pthread_sigmask(signal.SIG_SETMASK, self._before)


class _Window:
    """[0, end) of a file as a stdio FILE (fopencookie): libpcap sees the end of file at `end`."""

    def __init__(self, fd: int, end: int) -> None:
        self.fd = fd
        self.end = end
        self.offset = 0
        self.error: BaseException | None = None
        self._views: dict[tuple[int, int], memoryview] = {}
        self.callback = libpcap.COOKIE_READ(self._read)  # kept: C holds only its address
        # stdio's buffer, kept with the callback until the FILE is closed (glibc does not free
        # a buffer it was given).
        self.buffer = ctypes.create_string_buffer(STDIO_BUFFER)

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
    """A half's last item: how its read ended."""

    __slots__ = ("exception", "failure")

    def __init__(self, failure: str | None, exception: BaseException | None = None) -> None:
        self.failure = failure
        self.exception = exception


class _Half:
    """One half: its reader, the frames it read not yet taken, and who closes its reader:
    whoever takes it first, its thread or `Halves.close()` (under `Halves._lock`)."""

    def __init__(self, name: Literal["first", "second"], reader: libpcap.Reader | None,
                 fd: int = -1) -> None:
        self.name = name
        self.reader = reader  # None for A until its thread has made it
        self.fd = fd  # half A's descriptor (its callback preads it); B's is inside its FILE
        # C queues only: the main thread never holds a lock written in Python, which a signal
        # handler's exception could leave held (and the other threads stuck on it).
        self.items: queue.SimpleQueue[Frame | _End] = queue.SimpleQueue()
        self.credits: queue.SimpleQueue[int] = queue.SimpleQueue()  # bytes taken by the caller
        self.held = 0  # the thread's count of bytes of frames in `items`
        self.taken = False
        self.thread: threading.Thread | None = None  # set once start() has returned
        self.end: _End | None = None
        self.crash: BaseException | None = None  # the thread could not even hand over its end

    def release(self) -> None:
        """Close the reader (and A's descriptor); only by whoever took the half."""
        reader, self.reader = self.reader, None
        try:
            if reader is not None:
                reader.close()
        finally:
            fd, self.fd = self.fd, -1
            if fd >= 0:
                os.close(fd)


class Halves:
    """Half A and half B, each read on its own thread into a buffer of at most `queue_bytes` of
    frames; `frames()` (on the caller's thread) yields A's frames, then B's. `failure` says why
    the caller must read on the ordinary way, `failed` in which half; `close()` always."""

    def __init__(self, path: Path, fd: int, split: int, program: Program, nanoseconds: bool,
                 queue_bytes: int) -> None:
        c = libpcap.libc()
        # `fd` stays the caller's until this constructor returns.
        self.path = path
        self.split = split
        self.failure: str | None = None
        self.failed: Literal["first", "second"] | None = None
        self._program = program
        self._nanoseconds = nanoseconds
        self._queue_bytes = queue_bytes
        self._window = _Window(fd, split)
        self._lock = threading.Lock()  # a C lock: `with` it is safe from signals
        self._stopped = False
        # Half A's Reader is made on A's thread (_open_first): its read callback never runs here.
        b: libpcap.Reader | None = None
        b_fd = -1  # the duplicate while nothing else owns it
        try:
            # From the dup to B's Reader the duplicate is owned by a local, then a FILE, then
            # the Reader: a signal handler's exception at a call's return (where Python runs
            # it) would lose the one just made, so signals wait until the Reader has it.
            with _SignalsHeld():
                b_fd = os.dup(fd)
                b_file = c.fdopen(b_fd, b"rb")
                if not b_file:
                    raise OSError("fdopen failed")
                b_fd = -1  # the FILE's now: fclose closes it
                b = libpcap.Reader(path, program, False, nanoseconds, file=b_file)  # owns it
            if c.seek64(b_file, split, os.SEEK_SET) != 0:
                raise OSError(f"cannot seek to byte {split}")
        except BaseException:
            try:
                if b_fd >= 0:
                    os.close(b_fd)
            finally:
                if b is not None:
                    b.close()  # the caller closes `fd`
            raise
        self._a = _Half("first", None, fd)
        self._b = _Half("second", b)

    def frames(self) -> Iterator[Frame]:
        a, b = self._a, self._b
        self._start(a)
        self._start(b)
        end = yield from self._take(a)
        if end.exception is not None:
            raise end.exception  # MemoryError, a bug: in A's thread or its read callback
        if end.failure is not None:
            # Not a record boundary (or the file changed): B's frames are not to be trusted.
            self.failure = f"the first half: {end.failure}"
            self.failed = "first"
            self._stop_second()
            return
        # A ended cleanly exactly at the split: a record boundary, B's frames follow A's.
        end = yield from self._take(b)
        if end.exception is not None:
            raise end.exception
        if end.failure is not None:
            self.failure = f"the second half: {end.failure}"
            self.failed = "second"

    def _start(self, half: _Half) -> None:
        thread = threading.Thread(target=self._read, args=(half,), daemon=True,
                                  name=f"pcap-{half.name}-half")
        # No signal handler inside start(): one raising right after the thread was made leaves
        # CPython's bookkeeping half done (the thread dies with "Exception ignored in thread
        # started by"). The thread inherits the mask: it never takes a process signal either.
        # (_SignalsHeld, not a bare SIG_BLOCK before `try`: a handler pending already runs at
        # that call's return, which left the main thread's signals blocked for good.)
        with _SignalsHeld():
            thread.start()
            half.thread = thread  # only now: close() joins it (a thread not started cannot be)

    def _take(self, half: _Half) -> Generator[Frame, None, _End]:
        """Yield `half`'s frames as its thread reads them; return its end. Waits in C
        (SimpleQueue.get), which runs a signal handler and raises its exception (Ctrl-C)."""
        get = half.items.get
        credit = half.credits.put
        thread = half.thread
        assert thread is not None
        while True:
            try:
                item = get(timeout=1.0)
            except queue.Empty:
                if thread.is_alive() or not half.items.empty():
                    continue
                raise half.crash or RuntimeError(
                    f"{self.path}: the {half.name} half's reader stopped") from None
            if isinstance(item, _End):
                return item
            credit(len(item.data) + 64)
            yield item

    def _stop_second(self) -> None:
        """After A's failure: stop B; a bug in B (not a libpcap or I/O error) is raised, not
        replaced by the one-thread read (docs/capture.md)."""
        b = self._b
        self._stopped = True
        b.credits.put(0)  # wakes B if it waits for room
        if b.thread is not None:
            b.thread.join()
        end = b.end
        if end is not None and end.exception is not None:
            if not isinstance(end.exception, (OSError, libpcap.UnavailableError)):
                raise end.exception
            log.debug("%s: the second half also failed: %r", self.path, end.exception)
        elif end is not None and end.failure is not None:
            log.debug("%s: the second half also failed: %s", self.path, end.failure)

    def _read(self, half: _Half) -> None:
        with self._lock:
            taken, half.taken = half.taken, True
        if taken:
            return  # close() took it first and closes it
        end = _End(None)
        try:
            reader = half.reader
            if reader is None and not self._stopped:
                try:
                    reader = half.reader = self._open_first()
                except (libpcap.UnavailableError, OSError) as exc:
                    end = self._window_end(str(exc))  # read in one, as after any A failure
            if reader is not None and not self._stopped:
                for frame in reader.frames():
                    if not self._put(half, frame):
                        break
                else:
                    if half is self._a:
                        end = self._window_end(reader.failure)
                    elif reader.failure is not None:
                        end = _End(reader.failure)
        except BaseException as exc:  # noqa: BLE001 (handed to the main thread, which raises it)
            end = _End(None, exc)
        finally:
            try:
                half.release()
            except BaseException as exc:  # noqa: BLE001 (as above)
                end = _End(None, exc)
            half.end = end
            try:
                half.items.put(end)
            except BaseException as exc:  # noqa: BLE001 (the main thread raises it)
                half.crash = exc

    def _open_first(self) -> libpcap.Reader:
        """Half A's FILE and Reader, on A's thread: libpcap reads the file header through the
        read callback right away (the module's docstring says why never on the main thread)."""
        c = libpcap.libc()
        cookie = c.fopencookie(None, b"r", libpcap.CookieFunctions(self._window.callback))
        if not cookie:
            raise OSError("fopencookie failed")
        c.setvbuf(cookie, self._window.buffer, 0, STDIO_BUFFER)  # _IOFBF
        return libpcap.Reader(self.path, self._program, False, self._nanoseconds,
                              file=cookie)  # closes cookie, also when it raises

    def _window_end(self, failure: str | None) -> _End:
        """How half A ended, libpcap's `failure` (None: cleanly) judged by its read callback's
        error: one that is not an I/O error (MemoryError, a bug) is raised, not read around."""
        error = self._window.error
        if error is not None and not isinstance(error, OSError):
            return _End(None, error)
        return _End(None if failure is None else f"{error or failure}")

    def _put(self, half: _Half, frame: Frame) -> bool:
        """Hold `frame` for the main thread, then wait while the half's buffer is full (a
        hostile file where every record passes must not be held whole); False once closed."""
        if self._stopped:
            return False
        half.held += len(frame.data) + 64
        half.items.put(frame)
        while half.held >= self._queue_bytes:
            if self._stopped:
                return False
            with contextlib.suppress(queue.Empty):
                half.held -= half.credits.get(timeout=0.5)
        return True

    def close(self) -> None:
        """Stop both threads and close both handles and the file; idempotent. A half its
        thread has not taken is closed here; a thread closes its own half."""
        a, b = self._a, self._b
        self._stopped = True
        with self._lock:  # plain stores only: no Python call a signal could cut
            mine_a, a.taken = not a.taken, True
            mine_b, b.taken = not b.taken, True
        a.credits.put(0)  # wakes a thread waiting for room
        b.credits.put(0)
        try:
            if mine_a:
                a.release()
        finally:
            try:
                if mine_b:
                    b.release()
            finally:
                for half in (a, b):
                    if half.thread is not None:
                        half.thread.join()
