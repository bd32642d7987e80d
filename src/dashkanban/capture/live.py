"""Live capture: a raw AF_PACKET socket with a classic BPF program attached in the kernel.

Only candidate frames (ARP, UDP to port 67, ICMPv6 router/neighbour solicitation) ever reach
Python, so a busy LAN costs next to nothing here. The socket is created with protocol 0 (it
receives nothing), the filter attached, its receive ring (capture/ring.py) mapped, and only then
bound to the interface with ETH_P_ALL: no unfiltered frame can slip in between. The kernel strips
an 802.1Q tag before the filter runs and hands it over in the ring's slot header (or, without a
ring, as PACKET_AUXDATA), so a tagged candidate still matches and keeps its VLAN id.

Two ways to read it: `run(handle)`, a coroutine for the daemon's event loop (the socket's fd
watched with `loop.add_reader`), and `frames()`, a blocking iterator for tools (discover).
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import errno
import logging
import os
import select
import socket
import struct
import threading
import time
from collections.abc import Callable, Generator, Iterable, Sequence
from pathlib import Path

from dashkanban.backoff import Backoff
from dashkanban.capture.bpf import Instruction, Program, candidate_program
from dashkanban.capture.frame import Frame
from dashkanban.capture.ring import (
    BUTTON_RING_BYTES,
    RING_BYTES,
    Ring,
    Statistics,
    packet_statistics,
)
from dashkanban.errors import CaptureError, PermissionDeniedError

log = logging.getLogger(__name__)

# <linux/if_ether.h>, <linux/if_packet.h>, <asm-generic/socket.h>
ETH_P_ALL = 0x0003
SOL_PACKET = 263
SO_ATTACH_FILTER = 26
PACKET_ADD_MEMBERSHIP = 1
PACKET_MR_PROMISC = 1
PACKET_AUXDATA = 8
PACKET_OUTGOING = 4  # sll_pkttype of frames this host sends
TP_STATUS_VLAN_VALID = 1 << 4
_AUXDATA = struct.Struct("=IIIHHHH")  # struct tpacket_auxdata

RECOVER_MIN = 0.5  # seconds: the longest first wait before reopening (backoff.py), doubling
RECOVER_MAX = 30.0
POLL_SECONDS = 1.0  # how long one wait for a frame may block before looking at stop() again
RECEIVE_BUFFER = 65536  # the largest frame a candidate can be (the filter accepts no more)
# Frames read per wake-up at most: about 1 ms of work at saturation, so that the event loop's
# other tasks (the uplink, timers) get their turn during a flood; the rest waits in the ring.
BATCH = 256
# A socket retired by reopen(): its filter swapped for this one (BPF_RET|BPF_K 0: pass nothing),
# so the frames it still holds are finite; read in at most this many batches (the 2 MiB ring
# holds 8,192 frames), then closed.
PASS_NOTHING: tuple[Instruction, ...] = ((0x06, 0, 0, 0),)
RETIRE_BATCHES = 64


# ---------------------------------------------------------------------------------------------
# The kernel filter: classic BPF, built in capture/bpf.py (no libpcap needed at run time)


def candidate_filter(detect: Iterable[str] = ("arp", "dhcp", "ndp")) -> list[Instruction]:
    """The candidate program's instructions (kept for callers from before capture/bpf.py)."""
    return list(candidate_program(detect).instructions)


def attach_filter(sock: socket.socket, program: Sequence[Instruction]) -> None:
    """SO_ATTACH_FILTER: struct sock_fprog { unsigned short len; struct sock_filter *filter; }."""
    raw = b"".join(struct.pack("HBBI", *ins) for ins in program)
    buffer = ctypes.create_string_buffer(raw, len(raw))
    fprog = struct.pack("HL", len(program), ctypes.addressof(buffer))  # native padding
    sock.setsockopt(socket.SOL_SOCKET, SO_ATTACH_FILTER, fprog)  # the kernel copies it


class FilterRefusedError(OSError):
    """The kernel took no program of the chain (errno and strerror as it said). `filtering`: the
    program the socket filters with now, when that is no longer the one it had (the bridge,
    swapped in before the refusal); None when the socket kept its old program, or when it had
    none (a fresh socket) or was closed (EBADF)."""

    def __init__(self, error: OSError, filtering: Program | None = None) -> None:
        super().__init__(error.errno, error.strerror)
        self.filtering = filtering


def attach_first(
    sock: socket.socket, programs: Sequence[Program], bridge: Program | None = None
) -> Program:
    """Attach the first program the kernel takes; on ENOMEM (a filter is charged to the socket's
    `net.core.optmem_max`, 20480 bytes on older kernels) try the next, less selective one.
    Raises FilterRefusedError when none is taken (another error than ENOMEM at once).

    SO_ATTACH_FILTER on a socket that has a filter swaps the old one out atomically, but charges
    both for a moment: with `bridge` (a small program), a refused one is tried again after the
    bridge replaced the old, so a reload never needs room for two big lists at once and the
    socket is never without a filter."""
    bridged = False  # the bridge is attached
    for index, program in enumerate(programs):
        if bridged and program is bridge:
            return program
        try:
            attach_filter(sock, program.instructions)
            return program
        except OSError as exc:
            if exc.errno != errno.ENOMEM:
                raise FilterRefusedError(exc, bridge if bridged else None) from exc
            failure = exc
        if bridge is not None and bridge is not program:
            try:
                if not bridged:
                    attach_filter(sock, bridge.instructions)
                    bridged = True
                attach_filter(sock, program.instructions)
                return program
            except OSError as exc:
                if exc.errno != errno.ENOMEM:
                    raise FilterRefusedError(exc, bridge if bridged else None) from exc
        if index == len(programs) - 1:
            raise FilterRefusedError(failure, bridge if bridged else None) from failure
        log.warning(
            "the kernel refused %s (%d instructions): %s (net.core.optmem_max); trying %s",
            program.describe(), len(program), failure.strerror, programs[index + 1].describe(),
        )
    raise ValueError("no program to attach")


# ---------------------------------------------------------------------------------------------
# Interface selection


def default_interface(route_table: Path = Path("/proc/net/route")) -> str:
    """The interface of the default IPv4 route (lowest metric), as `interface = auto` asks."""
    try:
        lines = route_table.read_text().splitlines()[1:]
    except OSError as exc:
        raise CaptureError(f"cannot read {route_table}: {exc.strerror}") from None
    best: tuple[int, str] | None = None
    for line in lines:
        fields = line.split()
        if len(fields) < 8:
            continue
        iface, destination, flags, metric = fields[0], fields[1], int(fields[3], 16), fields[6]
        if destination == "00000000" and flags & 0x1:  # RTF_UP
            candidate = (int(metric), iface)
            if best is None or candidate < best:
                best = candidate
    if best is None:
        raise CaptureError(
            "no default route, so 'interface = auto' finds no interface; name one in "
            "[capture] interface or with -i"
        )
    return best[1]


def resolve_interface(name: str) -> str:
    return default_interface() if name == "auto" else name


# ---------------------------------------------------------------------------------------------
# The capture


class SocketFailedError(Exception):
    """The capture socket failed (interface down or removed): reopened with backoff. Anything
    else raised while reading (a bug in the frame handler) is not this, and is not retried."""

    def __init__(self, error: OSError) -> None:
        super().__init__(error.strerror or str(error))
        self.error = error


class LiveCapture:
    """Candidate frames from one interface: `await run(handle)` on an event loop, or `frames()`
    until `stop()` (callable from any thread).

    Socket errors (interface down or removed) are logged and the socket reopened with backoff;
    a missing CAP_NET_RAW raises PermissionDeniedError at once. Frames carry the kernel's receive
    time (wall clock) and as vlan the tag the kernel stripped.

    `ring_bytes`: the size of the PACKET_MMAP receive ring (capture/ring.py); None: by the
    program attached when the socket opens (RING_BYTES behind the candidate filter,
    BUTTON_RING_BYTES behind a button filter); 0 reads with one recvmsg() per frame instead, as
    before the ring (and as when the kernel refuses a ring).
    """

    def __init__(
        self,
        interface: str,
        detect: Iterable[str] = ("arp", "dhcp"),
        *,
        promiscuous: bool = False,
        wall_clock: Callable[[], float] = time.time,
        programs: Sequence[Program] | None = None,
        ring_bytes: int | None = None,
    ) -> None:
        """`programs`: the kernel filters to try, most selective first (capture/bpf.py's
        `button_programs`); default: the candidate program of `detect`. `wall_clock`: the
        receive time of a frame read without a ring."""
        self.interface = interface
        self.detect = frozenset(detect)
        self._programs: tuple[Program, ...] = (
            tuple(programs) if programs else (candidate_program(self.detect),)
        )
        self.program: Program | None = None  # the one attached to the open socket
        self._sock: socket.socket | None = None
        self._ring: Ring | None = None
        self.ring_bytes = ring_bytes
        self._ring_refused = False
        self.promiscuous = promiscuous
        self.received = 0
        self.reopened = 0
        self._failures = 0  # failed opens or reads since the last frame
        self._backoff = Backoff(RECOVER_MIN, RECOVER_MAX)
        self._packets = 0  # PACKET_STATISTICS added up: sockets closed, reads of the open one
        self._drops = 0
        self._truncated = 0  # the rings' `truncated` added up, of the sockets closed
        # statistics() runs on the reading thread (closing a socket) and on whoever reports the
        # counts (the daemon's metrics): its additions must not be lost between the two.
        self._statistics_lock = threading.RLock()  # _close_socket calls statistics()
        # Between a reload's set_filter (a worker thread) and opening a socket (the reading one).
        self._filter_lock = threading.Lock()
        self._wall_clock = wall_clock
        # A plain flag and a pipe, not a threading.Event: stop() may run in a signal handler,
        # which must not take a lock the interrupted thread could hold.
        self._stopping = False
        self._wake_r, self._wake_w = os.pipe()
        os.set_blocking(self._wake_r, False)
        os.set_blocking(self._wake_w, False)
        self._reopen_wanted = False  # reopen(): a plain flag too, set from the reload's thread
        self._closed = False

    # -- the two places that touch the system (tests may swap exactly these) --------------------

    def _refused(self) -> PermissionDeniedError:
        from dashkanban.privileges import capture_permission_message

        return PermissionDeniedError(capture_permission_message(self.interface))

    def check_permission(self) -> None:
        """Raise PermissionDeniedError now if a raw socket is refused, so that `run` says so
        before it connects anywhere. Any other problem (no such interface yet) is left to
        frames(), which retries."""
        try:
            socket.socket(socket.AF_PACKET, socket.SOCK_RAW, 0).close()
        except PermissionError:
            raise self._refused() from None

    def _open_socket(self) -> socket.socket:
        sock, self._ring, self.program = self._new_socket()
        return sock

    def _new_socket(self) -> tuple[socket.socket, Ring | None, Program]:
        """A socket bound to the interface with the first program of the chain the kernel
        takes, and its ring."""
        try:
            sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, 0)
        except PermissionError:
            raise self._refused() from None
        ring: Ring | None = None
        try:
            program = attach_first(sock, self._programs)
            ring = self._make_ring(sock, program)
            if ring is None:
                sock.setsockopt(SOL_PACKET, PACKET_AUXDATA, 1)
            sock.bind((self.interface, ETH_P_ALL))
            if self.promiscuous:
                index = socket.if_nametoindex(self.interface)
                mreq = struct.pack("iHH8s", index, PACKET_MR_PROMISC, 0, b"")
                sock.setsockopt(SOL_PACKET, PACKET_ADD_MEMBERSHIP, mreq)
            sock.setblocking(False)
        except BaseException:
            if ring is not None:
                ring.close()
            sock.close()
            raise
        return sock, ring, program

    def _make_ring(self, sock: socket.socket, program: Program) -> Ring | None:
        """The socket's receive ring; None (read with recvmsg) when `ring_bytes` is 0 or the
        kernel refuses one (said once, at WARNING: the capture works, at a higher cost)."""
        size = self.ring_bytes
        if size is None:
            buttons = program.kind != "candidates"
            size = BUTTON_RING_BYTES if buttons else RING_BYTES
        if not size:
            return None
        try:
            ring = Ring(sock, size)
        except OSError as exc:
            if not self._ring_refused:
                log.warning("no receive ring on %s (%s): reading frames one system call at a "
                            "time", self.interface, exc.strerror or exc)
            self._ring_refused = True
            return None
        ring.warned = self._truncated > 0  # a cut frame is said at WARNING once per capture
        return ring

    def _receive(self, sock: socket.socket) -> tuple[bytes, int | None, int]:
        data, ancillary, _flags, address = sock.recvmsg(
            RECEIVE_BUFFER, socket.CMSG_SPACE(_AUXDATA.size)
        )
        vlan: int | None = None
        for level, kind, payload in ancillary:
            if level == SOL_PACKET and kind == PACKET_AUXDATA and len(payload) >= _AUXDATA.size:
                status, _len, _snap, _mac, _net, tci, _tpid = _AUXDATA.unpack_from(payload)
                if status & TP_STATUS_VLAN_VALID or tci:
                    vlan = tci & 0x0FFF
        return data, vlan, address[2]

    def set_filter(self, programs: Program | Sequence[Program]) -> Program | None:
        """Use these programs from now on (most selective first): attached to the open socket at
        once, where the kernel swaps the old one out atomically (no frame is lost or let through
        unfiltered), and to every socket reopened later. Returns the program attached, None when
        no socket is open. When the kernel refuses every one of them on the open socket (or the
        socket was closed meanwhile, EBADF), FilterRefusedError is raised, its `filtering` the
        program that socket filters with now (None: closed); the next socket opened gets the new
        ones all the same, and reopen() opens one now."""
        chain = (programs,) if isinstance(programs, Program) else tuple(programs)
        if not chain:
            raise ValueError("no program to attach")
        with self._filter_lock:
            # Kept before the attach, whatever it does: the caller has switched its matching to
            # the new list already, so a socket opened after a failure (or the one the reading
            # thread is reopening now) must not get the old program, which would drop a new
            # button's frames in the kernel without a word.
            self._programs = chain
            sock = self._sock
            if sock is None:
                return None
            try:
                attached = attach_first(sock, chain, bridge=chain[-1])
            except FilterRefusedError as exc:
                if exc.errno == errno.EBADF:
                    exc.filtering = None  # closed: the reading side opens the next with `chain`
                else:
                    exc.filtering = exc.filtering or self.program
                    self.program = exc.filtering
                raise
            self.program = attached
            return attached

    def reopen(self) -> None:
        """Open a new socket with the programs set last, as soon as the reading side wakes
        (run() or frames()), and retire the open one without losing what it holds (see
        _replace). For a set_filter the open socket refused: callable from any thread."""
        self._reopen_wanted = True
        with contextlib.suppress(OSError):  # a full pipe wakes the reader all the same
            os.write(self._wake_w, b"r")

    def _clear_wake(self) -> None:
        with contextlib.suppress(OSError):  # empty (BlockingIOError) or closed
            while os.read(self._wake_r, 4096):
                pass

    def _replace(self, old: socket.socket, handle: Callable[[Frame], None]) -> socket.socket:
        """reopen(), on the reading side: a new socket with the programs set last (falling back
        down the chain as at start), bound before the old one stops receiving; then the old
        one's filter is swapped for PASS_NOTHING, the frames it still holds are handed to
        `handle`, and it is closed. A frame arriving between the bind and the swap may be read
        from both sockets (a press's frames are debounced: docs/capture.md); none is lost. Under
        the filter lock throughout, so a set_filter meanwhile reaches the socket that stays.
        When no new socket can be had, the old one stays (one ERROR saying what it filters
        with). Returns the socket to read."""
        with self._filter_lock:
            self._reopen_wanted = False
            try:
                new, ring, program = self._new_socket()
            except (OSError, PermissionDeniedError) as exc:  # the old socket goes on
                reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else exc
                kept = self.program
                if kept is None or kept.kind == "candidates":
                    meaning = "which passes every candidate: Python matches the new list"
                else:
                    meaning = ("so a button only the new list has is not heard; a reload "
                               "(systemctl reload dashkanban) tries again")
                log.error(
                    "cannot open a new capture socket on %s for the new button list (%s): the "
                    "open one keeps filtering with %s, %s", self.interface, reason,
                    kept.describe() if kept else "the candidate filter", meaning)
                return old
            try:
                with contextlib.suppress(OSError):
                    attach_filter(old, PASS_NOTHING)
                with contextlib.suppress(SocketFailedError):
                    for _ in range(RETIRE_BATCHES):
                        # Until the old ring is empty, not until a batch hands nothing over: on
                        # a kernel before 4.20 a batch may hold only our own frames, and a
                        # button's behind them would be lost with the old socket.
                        if not self._drain(old, handle, BATCH) and not (
                                self._ring is not None and self._ring.waiting()):
                            break
            except BaseException:  # `handle` failed: that ends the reading, old socket and all
                if ring is not None:
                    ring.close()
                new.close()
                raise
            self._close_socket(old)
            self._sock, self._ring, self.program = new, ring, program
        log.info("reopened the capture socket on %s with %s", self.interface,
                 program.describe())
        if program.note:
            log.info("%s", program.note)
        return new

    def statistics(self) -> Statistics:
        """PACKET_STATISTICS added up over every socket opened so far: frames the kernel filter
        passed (delivered or dropped) and frames dropped because the ring (or, without one, the
        receive buffer) was full; and frames handed over cut short (the rings' `truncated`).
        Callable from any thread; every count only grows."""
        with self._statistics_lock:
            sock, ring = self._sock, self._ring
            if sock is not None:
                with contextlib.suppress(OSError):  # closed by the reading thread meanwhile
                    counts = packet_statistics(sock)
                    self._packets += counts.packets
                    self._drops += counts.drops
            truncated = self._truncated + (ring.truncated if ring is not None else 0)
            return Statistics(self._packets, self._drops, truncated)

    # -- reading --------------------------------------------------------------------------------

    def _drain(self, sock: socket.socket, handle: Callable[[Frame], None], limit: int) -> int:
        """Hand up to `limit` waiting frames to `handle`, without blocking; the number read.
        Raises SocketFailedError when the socket failed."""
        ring = self._ring
        if ring is not None:
            got = ring.read(handle, limit)
            if not got:
                # Woken with nothing in the ring: poll() says POLLERR when the interface went
                # down (the socket's pending error, which reading it clears).
                error = sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
                if error:
                    raise SocketFailedError(OSError(error, os.strerror(error)))
        else:
            got = 0
            receive = self._receive
            clock = self._wall_clock
            while got < limit:
                try:
                    data, vlan, pkttype = receive(sock)
                except BlockingIOError:
                    break
                except OSError as exc:
                    raise SocketFailedError(exc) from exc
                if pkttype == PACKET_OUTGOING:
                    continue  # our own frames: never a button
                got += 1
                handle(Frame(clock(), data, vlan))
        if got:
            self.received += got
            self._failures = 0
        return got

    def _open(self) -> socket.socket | float:
        """Open the socket, or say how long to wait before the next attempt (logged)."""
        try:
            # With the lock from the attach to `_sock`: a set_filter meanwhile would find no
            # socket open and the new socket would keep the programs it was opened with.
            with self._filter_lock:
                self._reopen_wanted = False  # a fresh socket: it has the programs set last
                sock = self._open_socket()
                self._sock = sock
        except PermissionDeniedError:
            raise
        except OSError as exc:
            if exc.errno in (errno.EPERM, errno.EACCES):
                raise self._refused() from None
            self._failures += 1
            delay = self._backoff.delay(self._failures)
            log.warning(
                "cannot capture on %s: %s; retrying in %.1f s",
                self.interface, exc.strerror or exc, delay,
            )
            return delay
        log.info("capturing on %s (%s)", self.interface, ", ".join(sorted(self.detect)))
        if self.program is not None and self.program.note:
            log.info("%s", self.program.note)
        return sock

    def _failed(self, failure: SocketFailedError) -> float:
        """Log a failed socket; the wait before reopening it."""
        self._failures += 1
        delay = self._backoff.delay(self._failures)
        log.warning(
            "capture on %s failed: %s; reopening in %.1f s", self.interface, failure, delay
        )
        self.reopened += 1
        return delay

    def _close_socket(self, sock: socket.socket) -> None:
        with self._statistics_lock:
            self.statistics()  # its counts, before they go with it
            self._sock = None
            ring, self._ring = self._ring, None
            if ring is not None:
                self._truncated += ring.truncated
        if ring is not None:
            ring.close()
        sock.close()

    async def run(self, handle: Callable[[Frame], None]) -> None:
        """Read frames on the running event loop and call `handle(frame)` for each, on the
        loop's thread, until cancelled. The socket's fd is watched with `loop.add_reader`; each
        wake-up drains up to BATCH waiting frames. A failed socket is reopened with backoff;
        PermissionDeniedError, and whatever `handle` raises, end it (raised here)."""
        loop = asyncio.get_running_loop()
        sock: socket.socket | None = None
        try:
            while True:
                if sock is None:
                    opened = self._open()
                    if not isinstance(opened, socket.socket):
                        await asyncio.sleep(opened)
                        continue
                    sock = opened
                reading, fd = sock, sock.fileno()
                # Done with None: reopen() was called; with an exception: the socket failed.
                outcome: asyncio.Future[None] = loop.create_future()

                def readable(sock: socket.socket = reading, fd: int = fd,
                             outcome: asyncio.Future[None] = outcome) -> None:
                    try:
                        self._drain(sock, handle, BATCH)
                    except Exception as exc:  # noqa: BLE001 - raised again by `await outcome`
                        loop.remove_reader(fd)
                        if not outcome.done():
                            outcome.set_exception(exc)

                def woken(outcome: asyncio.Future[None] = outcome) -> None:
                    self._clear_wake()
                    if self._reopen_wanted and not outcome.done():
                        outcome.set_result(None)

                loop.add_reader(fd, readable)
                loop.add_reader(self._wake_r, woken)
                if self._reopen_wanted:  # asked before the reader was watching the pipe
                    outcome.set_result(None)
                failure: SocketFailedError | None = None
                try:
                    await outcome
                except SocketFailedError as exc:
                    failure = exc
                finally:
                    loop.remove_reader(fd)
                    loop.remove_reader(self._wake_r)
                if failure is None:
                    sock = self._replace(sock, handle)
                    continue
                delay = self._failed(failure)
                self._close_socket(sock)
                sock = None
                await asyncio.sleep(delay)
        finally:
            if sock is not None:
                self._close_socket(sock)

    # -- lifecycle ------------------------------------------------------------------------------

    def stop(self) -> None:
        """Make frames() return soon; safe from another thread or a signal handler."""
        self._stopping = True
        with contextlib.suppress(OSError):  # a full or closed pipe: the flag alone is enough
            os.write(self._wake_w, b"x")

    @property
    def stopped(self) -> bool:
        return self._stopping

    def _sleep(self, seconds: float) -> None:
        """Wait for the backoff, or less when stop() is called. A reopen() meanwhile does not
        shorten it: the socket opened after it has the programs set last anyway."""
        deadline = time.monotonic() + seconds
        while not self._stopping:
            left = deadline - time.monotonic()
            if left <= 0:
                return
            ready, _, _ = select.select([self._wake_r], [], [], left)
            if ready:
                self._clear_wake()

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            os.close(self._wake_r)
            os.close(self._wake_w)

    def __enter__(self) -> LiveCapture:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
        self.close()

    def frames(self) -> Generator[Frame, None, None]:
        """The frames, blocking, until stop(): for tools that read in a thread of their own."""
        batch: list[Frame] = []
        while not self._stopping:
            opened = self._open()
            if not isinstance(opened, socket.socket):
                self._sleep(opened)
                continue
            sock = opened
            try:
                while not self._stopping:
                    ready, _, _ = select.select([sock, self._wake_r], [], [], POLL_SECONDS)
                    if self._wake_r in ready:
                        self._clear_wake()
                        if self._reopen_wanted and not self._stopping:
                            sock = self._replace(sock, batch.append)
                            try:
                                yield from batch
                            finally:
                                batch.clear()
                            continue
                    if sock not in ready:
                        continue
                    # Drain on each wake-up, not one select per frame: a burst costs no
                    # system call per frame with the ring, one without.
                    self._drain(sock, batch.append, BATCH)
                    try:
                        yield from batch
                    finally:
                        batch.clear()
            except SocketFailedError as failure:
                delay = self._failed(failure)
                self._close_socket(sock)
                self._sleep(delay)
            finally:
                if self._sock is sock:
                    self._close_socket(sock)
