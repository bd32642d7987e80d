"""A PACKET_MMAP receive ring (TPACKET_V2) on a raw AF_PACKET socket: the kernel writes each
frame the socket filter passes into a slot of memory shared with this process, and Python reads
the slots in place, with no system call per frame (docs/capture.md, "The receive ring").

Why TPACKET_V2 and not V3 (libpcap's default): a V3 block is handed over, and poll() wakes the
reader, only when the block is full or its retire timer expires, so on a quiet LAN every press
would wait for that timer (a jiffy or more: 4 to 10 ms on kernels with HZ=250/100), against the
daemon's p99 < 10 ms from frame to PUBACK. libpcap itself falls back to V2 in its immediate mode
for this reason. V2 wakes the reader per frame, and a burst is still drained without a system
call. The cost is a fixed slot per frame, so the slots are small (256 bytes: an ARP or NDP frame
fits, which is what a flood is made of) and a frame that does not fit (a DHCP request) is also
queued whole on the socket (PACKET_COPY_THRESH, status TP_STATUS_COPY), where it is read with one
recv(). The kernel queues that copy only while the socket's receive buffer has room: when it is
full (a reader far behind), the frame is handed over cut to its slot's 190 bytes, counted in
`truncated` and logged (once at WARNING, then at DEBUG). 2 MiB hold 8,192 frames, about 40 times
what the socket's default receive buffer held.

The ring's pages are mapped into the process and count in its resident memory, all of them from
the start: hence 2 MiB behind the candidate filter (68 ms of a 120,000 frames/s flood with no
reader at all), and 256 KiB behind a button filter, which passes only the buttons' frames.

Layout (<linux/if_packet.h>): the ring is `tp_block_nr` blocks of `tp_block_size` bytes, each cut
into slots of `tp_frame_size` bytes. A slot starts with `struct tpacket2_hdr`; its `tp_status`
says who owns it (TP_STATUS_KERNEL = 0: free for the kernel; TP_STATUS_USER: a frame for us).
The kernel fills slots in order and drops a frame when the next slot is still ours; we read them
in the same order and hand each back by writing 0 to its status.
"""

from __future__ import annotations

import contextlib
import logging
import mmap
import socket
import struct
from collections.abc import Callable
from typing import NamedTuple

from dashkanban.capture.frame import Frame

log = logging.getLogger(__name__)
# <linux/if_packet.h>
SOL_PACKET = 263
PACKET_RX_RING = 5
PACKET_STATISTICS = 6
PACKET_COPY_THRESH = 7
PACKET_VERSION = 10
PACKET_IGNORE_OUTGOING = 23
TPACKET_V2 = 1
TP_STATUS_KERNEL = 0
TP_STATUS_USER = 1
TP_STATUS_COPY = 1 << 1  # the frame did not fit its slot; it is queued whole on the socket
TP_STATUS_VLAN_VALID = 1 << 4
PACKET_OUTGOING = 4  # sll_pkttype of frames this host sends

# struct tpacket2_hdr { u32 tp_status, tp_len, tp_snaplen; u16 tp_mac, tp_net;
#                       u32 tp_sec, tp_nsec; u16 tp_vlan_tci, tp_vlan_tpid; u8 pad[4]; }
_HEADER = struct.Struct("=IIIHHIIHH")
_PKTTYPE = 32 + 10  # struct sockaddr_ll follows at TPACKET_ALIGN(32); sll_pkttype at +10
_STATS = struct.Struct("=II")  # struct tpacket_stats { u32 tp_packets, tp_drops; }

FRAME_SIZE = 256  # a slot: the header, sockaddr_ll (66 bytes) and a frame of up to 190 bytes
BLOCK_SIZE = 1 << 16  # the kernel allocates blocks as physically contiguous pages
RING_BYTES = 2 << 20  # behind the candidate filter: 8,192 slots
BUTTON_RING_BYTES = 256 << 10  # behind a button filter: 1,024 slots, hundreds of presses at once
LARGEST = 65536  # the largest frame a candidate can be (the filter accepts no more)


class Statistics(NamedTuple):
    """PACKET_STATISTICS of a packet socket: frames its filter passed (delivered or dropped),
    and those dropped because its ring or receive buffer was full; and frames longer than a slot
    handed over cut short (the ring's `truncated`; the kernel does not count them)."""

    packets: int
    drops: int
    truncated: int = 0


def packet_statistics(sock: socket.socket) -> Statistics:
    """The counts since the last call: the kernel resets them on every read."""
    packets, drops = _STATS.unpack(sock.getsockopt(SOL_PACKET, PACKET_STATISTICS, _STATS.size))
    return Statistics(packets, drops)  # tp_packets includes the dropped frames


class Ring:
    """The receive ring of `sock` (a packet socket, not yet bound, so no frame arrives before
    the ring is there): `size` bytes, a multiple of the page size.

    Raises OSError when the kernel refuses (ENOMEM: no contiguous memory; EINVAL: a kernel
    without TPACKET_V2), and the socket is then left as it was, ring-less."""

    __slots__ = ("_count", "_map", "_next", "_outgoing", "_sock", "_words", "size", "truncated",
                 "warned")

    def __init__(self, sock: socket.socket, size: int = RING_BYTES) -> None:
        block = BLOCK_SIZE if size >= 4 * BLOCK_SIZE else mmap.PAGESIZE  # small: tests
        if size <= 0 or size % mmap.PAGESIZE or size % block or block % FRAME_SIZE:
            raise ValueError(f"a ring of {size} bytes: not a multiple of the page size")
        sock.setsockopt(SOL_PACKET, PACKET_VERSION, TPACKET_V2)
        sock.setsockopt(SOL_PACKET, PACKET_COPY_THRESH, 1)  # frames longer than a slot, whole
        request = struct.pack("=IIII", block, size // block, FRAME_SIZE, size // FRAME_SIZE)
        sock.setsockopt(SOL_PACKET, PACKET_RX_RING, request)
        try:
            ring = mmap.mmap(sock.fileno(), size, mmap.MAP_SHARED,
                             mmap.PROT_READ | mmap.PROT_WRITE)
        except BaseException:
            sock.setsockopt(SOL_PACKET, PACKET_RX_RING, bytes(16))  # unmapped: tear it down
            raise
        # Frames this host sends are never a button: leave them out of the ring when the
        # kernel can (4.20+); else the slot's sll_pkttype says which they are.
        self._outgoing = True
        with contextlib.suppress(OSError):
            sock.setsockopt(SOL_PACKET, PACKET_IGNORE_OUTGOING, 1)
            self._outgoing = False
        self._sock = sock
        self._map = ring
        self._words = memoryview(ring).cast("I")  # tp_status of slot i: words[i * 64]
        self._count = size // FRAME_SIZE
        self._next = 0  # the slot the kernel fills next, once we have read up to it
        self.size = size
        self.truncated = 0  # frames longer than a slot whose whole copy the kernel could not
        # queue (the socket's receive buffer full): handed over cut short
        self.warned = False  # a cut frame was logged at WARNING: later ones at DEBUG

    def read(self, handle: Callable[[Frame], None], limit: int) -> int:
        """Hand the frames waiting in the ring to `handle`, in order, reading at most `limit`
        slots; returns the number of frames handed (0: nothing was waiting, or only frames this
        host sent). Each slot is given back to the kernel before `handle` sees its frame, so an
        exception in `handle` loses nothing else and leaves the ring consistent."""
        words = self._words
        ring = self._map
        unpack = _HEADER.unpack_from
        index = self._next
        count = self._count
        step = FRAME_SIZE >> 2
        ours = self._outgoing  # our own frames may be in the ring: the kernel is older than 4.20
        new = tuple.__new__  # Frame(...) runs NamedTuple's Python-level __new__: 3x the cost
        done = 0
        skipped = 0
        try:
            while done < limit:
                # The status first, on its own, and the rest only once it says the slot is
                # ours: the kernel writes the slot, then (after a write barrier) its status.
                status = words[index * step]
                if not status & TP_STATUS_USER:
                    break
                base = index * FRAME_SIZE
                _status, length, snap, mac, _net, sec, nsec, tci, _tpid = unpack(ring, base)
                start = base + mac
                data = ring[start : start + snap]
                outgoing = ours and ring[base + _PKTTYPE] == PACKET_OUTGOING
                words[index * step] = TP_STATUS_KERNEL
                index += 1
                if index == count:
                    index = 0
                done += 1
                if outgoing:
                    skipped += 1
                    if snap < length and status & TP_STATUS_COPY:
                        # Its whole copy is queued on the socket too: read and drop it, or the
                        # next long frame would be handed over with this one's bytes.
                        with contextlib.suppress(OSError):  # failed: the next wake-up says so
                            self._sock.recv(1, socket.MSG_DONTWAIT)  # a datagram: all of it goes
                    continue
                if snap < length:
                    data = self._whole(data, status, length)
                # As PACKET_AUXDATA was read before the ring: the tag the kernel stripped.
                vlan = tci & 0x0FFF if status & TP_STATUS_VLAN_VALID or tci else None
                handle(new(Frame, (sec + nsec * 1e-9, data, vlan)))
        finally:
            self._next = index  # also when `handle` raised: its slot is given back already
        return done - skipped

    def waiting(self) -> bool:
        """Whether the next slot holds a frame for us (read() returns 0 also after a batch of
        only this host's own frames, with more behind them)."""
        return bool(self._words[self._next * (FRAME_SIZE >> 2)] & TP_STATUS_USER)

    def _whole(self, data: bytes, status: int, length: int) -> bytes:
        """The whole frame of a slot that holds only its start: the copy queued on the socket
        (in the same order as the slots), else the start."""
        if status & TP_STATUS_COPY:
            with contextlib.suppress(OSError):  # a failed socket: the next wake-up says so
                return self._sock.recv(LARGEST, socket.MSG_DONTWAIT)
        self.truncated += 1
        if self.warned:
            log.debug("a frame of %d bytes handed over cut to %d (receive buffer full)",
                      length, len(data))
        else:
            self.warned = True
            log.warning(
                "a frame of %d bytes was handed over cut to its first %d: the socket's receive "
                "buffer was full, so the kernel could not queue it whole; further ones are "
                "logged at DEBUG and counted (capture statistics: truncated)", length, len(data))
        return data

    def close(self) -> None:
        """Unmap the ring (the socket is the caller's to close)."""
        self._words.release()
        self._map.close()
