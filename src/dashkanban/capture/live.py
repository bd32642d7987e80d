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
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path

from dashkanban.backoff import Backoff
from dashkanban.capture import Frame
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
# The kernel filter: classic BPF, assembled here (no libpcap needed at run time)

_LDH_ABS = 0x28  # A = ntohs(pkt[k:k+2])
_LDB_ABS = 0x30  # A = pkt[k]
_LDXB_MSH = 0xB1  # X = 4 * (pkt[k] & 0xf): the IPv4 header length
_LDH_IND = 0x48  # A = ntohs(pkt[X+k:X+k+2])
_JEQ = 0x15
_JSET = 0x45
_RET = 0x06

Instruction = tuple[int, int, int, int]  # code, jump if true, jump if false, k


def candidate_filter(detect: Iterable[str] = ("arp", "dhcp", "ndp")) -> list[Instruction]:
    """The BPF program that accepts candidates of the given methods, untagged or with one tag
    left in the frame (QinQ: the kernel strips only the outer one)."""
    methods = frozenset(detect)
    program: list[tuple[int, str | int, str | int, int]] = []
    labels: dict[str, int] = {}

    def label(name: str) -> None:
        labels[name] = len(program)

    def emit(code: int, k: int, jt: str | int = 0, jf: str | int = 0) -> None:
        program.append((code, jt, jf, k))

    for d in (0, 4):
        tag = f"t{d}"
        label(f"eth{d}")
        emit(_LDH_ABS, 12 + d)
        if "arp" in methods:
            emit(_JEQ, 0x0806, "accept", 0)
        if "dhcp" in methods:
            emit(_JEQ, 0x0800, f"ipv4{tag}", 0)
        if "ndp" in methods:
            emit(_JEQ, 0x86DD, f"ipv6{tag}", 0)
        if d == 0:
            emit(_JEQ, 0x8100, "eth4", 0)
            emit(_JEQ, 0x88A8, "eth4", "reject")
        else:
            emit(_RET, 0)
        if "dhcp" in methods:
            label(f"ipv4{tag}")
            emit(_LDB_ABS, 23 + d)  # IPv4 protocol
            emit(_JEQ, 17, 0, "reject")
            emit(_LDH_ABS, 20 + d)  # flags and fragment offset
            emit(_JSET, 0x1FFF, "reject", 0)  # a later fragment has no UDP header
            emit(_LDXB_MSH, 14 + d)
            emit(_LDH_IND, 16 + d)  # UDP destination port
            emit(_JEQ, 67, "accept", "reject")
        if "ndp" in methods:
            label(f"ipv6{tag}")
            emit(_LDB_ABS, 20 + d)  # IPv6 next header
            emit(_JEQ, 58, 0, "reject")
            emit(_LDB_ABS, 54 + d)  # ICMPv6 type
            emit(_JEQ, 133, "accept", 0)
            emit(_JEQ, 135, "accept", "reject")
    label("accept")
    emit(_RET, RECEIVE_BUFFER)
    label("reject")
    emit(_RET, 0)

    assembled: list[Instruction] = []
    for index, (code, jt, jf, k) in enumerate(program):
        def target(jump: str | int, index: int = index) -> int:
            if isinstance(jump, int):
                return jump
            offset = labels[jump] - index - 1
            assert 0 <= offset < 256, "BPF jumps go forward, at most 255 instructions"
            return offset

        assembled.append((code, target(jt), target(jf), k))
    return assembled


def attach_filter(sock: socket.socket, program: list[Instruction]) -> None:
    """SO_ATTACH_FILTER: struct sock_fprog { unsigned short len; struct sock_filter *filter; }."""
    raw = b"".join(struct.pack("HBBI", *ins) for ins in program)
    buffer = ctypes.create_string_buffer(raw, len(raw))
    fprog = struct.pack("HL", len(program), ctypes.addressof(buffer))  # native padding
    sock.setsockopt(socket.SOL_SOCKET, SO_ATTACH_FILTER, fprog)  # the kernel copies it


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
    ) -> None:
        self.interface = interface
        self.detect = frozenset(detect)
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
            attach_filter(sock, candidate_filter(self.detect))
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
                sock.close()
