"""Live capture: a raw AF_PACKET socket with a classic BPF program attached in the kernel.

Only candidate frames (ARP, UDP to port 67, ICMPv6 router/neighbour solicitation) ever reach
Python, so a busy LAN costs next to nothing here. The socket is created with protocol 0 (it
receives nothing), the filter attached, and only then bound to the interface with ETH_P_ALL: no
unfiltered frame can slip in between. The kernel strips an 802.1Q tag before the filter runs and
hands it over as PACKET_AUXDATA, so a tagged candidate still matches and keeps its VLAN id.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import logging
import os
import select
import socket
import struct
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path

from dashkanban.backoff import Backoff
from dashkanban.capture.bpf import Instruction, Program, candidate_program
from dashkanban.capture.frame import Frame
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


def attach_first(
    sock: socket.socket, programs: Sequence[Program], bridge: Program | None = None
) -> Program:
    """Attach the first program the kernel takes; on ENOMEM (a filter is charged to the socket's
    `net.core.optmem_max`, 20480 bytes on older kernels) try the next, less selective one.

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
                raise
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
                    raise
        if index == len(programs) - 1:
            raise failure
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


class LiveCapture:
    """Candidate frames from one interface, until `stop()` (callable from any thread).

    Socket errors (interface down or removed) are logged and the socket reopened with backoff;
    a missing CAP_NET_RAW raises PermissionDeniedError at once. `frames()` yields Frame values
    whose timestamp is the wall-clock receive time and whose vlan is the tag the kernel stripped.
    """

    def __init__(
        self,
        interface: str,
        detect: Iterable[str] = ("arp", "dhcp"),
        *,
        promiscuous: bool = False,
        wall_clock: Callable[[], float] = time.time,
        programs: Sequence[Program] | None = None,
    ) -> None:
        """`programs`: the kernel filters to try, most selective first (capture/bpf.py's
        `button_programs`); default: the candidate program of `detect`."""
        self.interface = interface
        self.detect = frozenset(detect)
        self._programs: tuple[Program, ...] = (
            tuple(programs) if programs else (candidate_program(self.detect),)
        )
        self.program: Program | None = None  # the one attached to the open socket
        self._sock: socket.socket | None = None
        self.promiscuous = promiscuous
        self.received = 0
        self.reopened = 0
        self._wall_clock = wall_clock
        # A plain flag and a pipe, not a threading.Event: stop() may run in a signal handler,
        # which must not take a lock the interrupted thread could hold.
        self._stopping = False
        self._wake_r, self._wake_w = os.pipe()
        os.set_blocking(self._wake_w, False)
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
        try:
            sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, 0)
        except PermissionError:
            raise self._refused() from None
        try:
            self.program = attach_first(sock, self._programs)
            sock.setsockopt(SOL_PACKET, PACKET_AUXDATA, 1)
            sock.bind((self.interface, ETH_P_ALL))
            if self.promiscuous:
                index = socket.if_nametoindex(self.interface)
                mreq = struct.pack("iHH8s", index, PACKET_MR_PROMISC, 0, b"")
                sock.setsockopt(SOL_PACKET, PACKET_ADD_MEMBERSHIP, mreq)
        except BaseException:
            sock.close()
            raise
        return sock

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
        no socket is open. An error other than ENOMEM keeps the old program and raises."""
        chain = (programs,) if isinstance(programs, Program) else tuple(programs)
        if not chain:
            raise ValueError("no program to attach")
        sock = self._sock
        attached: Program | None = None
        if sock is not None:
            attached = attach_first(sock, chain, bridge=chain[-1])
            self.program = attached
        self._programs = chain
        return attached

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
        """Wait for the backoff, or less when stop() is called."""
        select.select([self._wake_r], [], [], seconds)

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

    def frames(self) -> Iterator[Frame]:
        backoff = Backoff(RECOVER_MIN, RECOVER_MAX)
        failures = 0
        while not self._stopping:
            try:
                sock = self._open_socket()
            except PermissionDeniedError:
                raise
            except OSError as exc:
                if exc.errno in (errno.EPERM, errno.EACCES):
                    raise self._refused() from None
                failures += 1
                delay = backoff.delay(failures)
                log.warning(
                    "cannot capture on %s: %s; retrying in %.1f s",
                    self.interface, exc.strerror or exc, delay,
                )
                self._sleep(delay)
                continue
            log.info("capturing on %s (%s)", self.interface, ", ".join(sorted(self.detect)))
            if self.program is not None and self.program.note:
                log.info("%s", self.program.note)
            self._sock = sock
            try:
                sock.setblocking(False)
                while not self._stopping:
                    ready, _, _ = select.select([sock, self._wake_r], [], [], POLL_SECONDS)
                    if sock not in ready:
                        continue
                    # Drain the socket on each wake-up, not one select per frame: a burst costs
                    # one system call per frame instead of two.
                    while not self._stopping:
                        try:
                            data, vlan, pkttype = self._receive(sock)
                        except BlockingIOError:
                            break
                        if pkttype == PACKET_OUTGOING:
                            continue  # our own frames: never a button
                        self.received += 1
                        failures = 0
                        yield Frame(self._wall_clock(), data, vlan)
            except OSError as exc:
                failures += 1
                delay = backoff.delay(failures)
                log.warning(
                    "capture on %s failed: %s; reopening in %.1f s",
                    self.interface, exc.strerror or exc, delay,
                )
                self.reopened += 1
                self._sleep(delay)
            finally:
                self._sock = None
                sock.close()
