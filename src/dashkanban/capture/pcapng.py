"""pcapng files, streamed: sections in either byte order, several interfaces, EPB, SPB, OPB.

Format: https://www.ietf.org/archive/id/draft-ietf-opsawg-pcapng-02.html. Blocks are
`type, total length, body, total length`; a Section Header Block (SHB) sets the byte order, each
Interface Description Block (IDB) a link type and timestamp resolution (`if_tsresol`, default
microseconds) for the packets that name it.
"""

from __future__ import annotations

import struct
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, BinaryIO

from dashkanban.capture.frame import (
    CHUNK,
    LINKTYPE_ETHERNET,
    MAX_FRAME,
    CutOffError,
    Frame,
    maybe_candidate,
)
from dashkanban.errors import CaptureError

if TYPE_CHECKING:
    from dashkanban.capture import CaptureFile

SHB = 0x0A0D0D0A
IDB = 0x00000001
OPB = 0x00000002  # obsolete Packet Block, still written by old tools
SPB = 0x00000003
EPB = 0x00000006
BYTE_ORDER_MAGIC = 0x1A2B3C4D
OPT_END = 0
OPT_IF_TSRESOL = 9
OPT_IF_TSOFFSET = 14
MAX_BLOCK = MAX_FRAME + (1 << 16)  # a packet of the largest snapshot plus generous options
# Interfaces one section may describe. Each costs memory until the next section header; 4,000,000
# IDBs (80 MB of file) held 300 MB. A capture host has a handful; beyond this the file is hostile.
MAX_INTERFACES = 4096
# Packet times must lie in 1970-01-01 .. 9998-12-31 UTC (docs/capture.md): `datetime` ends at year
# 9999 and a later time (or a huge if_tsoffset) would fail far from the file, without its offset.
MIN_SECONDS = 0
NS_PER_SECOND = 1_000_000_000
UINT64 = 0xFFFF_FFFF_FFFF_FFFF
MAX_SECONDS = 253_370_764_800  # 9999-01-01T00:00:00Z, a year of headroom for date arithmetic


@dataclass(frozen=True, slots=True)
class Interface:
    linktype: int
    units: int  # timestamp ticks per second
    offset: int  # seconds added to every timestamp (if_tsoffset)
    binary: bool = False  # units is a power of 2 (if_tsresol with its top bit set)


def read_pcapng(source: CaptureFile) -> Iterator[Frame]:
    """Yield the frames of a pcapng file, reading it in chunks (memory stays flat)."""
    with source.path.open("rb") as f:
        counter = [0]
        try:
            yield from _blocks(f, source.path, source.prefilter, counter)
        finally:
            source.frames_read = counter[0]


def _blocks(f: BinaryIO, path: Path, prefilter: bool, counter: list[int]) -> Iterator[Frame]:
    buf = b""
    pos = 0
    base = 0  # file offset of buf[0]
    endian = "<"
    u32 = struct.Struct("<I").unpack_from
    interfaces: list[Interface] = []
    last_time = 0.0  # SPBs carry no timestamp: they get the previous packet's
    seen_shb = False
    eof = False
    while True:
        # Make sure the whole next block is in the buffer.
        if len(buf) - pos < 12 and not eof:
            chunk = f.read(CHUNK)
            buf = buf[pos:] + chunk
            base += pos
            pos = 0
            eof = not chunk
            continue
        if len(buf) - pos == 0 and eof:
            return
        if len(buf) - pos < 12:
            raise CutOffError(path, base + pos)
        btype = u32(buf, pos)[0]
        if btype == SHB:
            magic = buf[pos + 8 : pos + 12]
            if magic == b"\x4d\x3c\x2b\x1a":
                endian = "<"
            elif magic == b"\x1a\x2b\x3c\x4d":
                endian = ">"
            else:
                raise CaptureError(f"{path}: bad byte-order magic in the section header at byte "
                                   f"{base + pos + 8}")
            u32 = struct.Struct(endian + "I").unpack_from
            interfaces = []
            seen_shb = True
        elif not seen_shb:
            raise CaptureError(f"{path}: not a pcapng file (no section header at byte 0)")
        total = u32(buf, pos + 4)[0]
        if total < 12 or total % 4 or total > MAX_BLOCK:
            raise CaptureError(
                f"{path}: corrupt block at byte {base + pos}: length {total}"
            )
        while len(buf) - pos < total and not eof:
            chunk = f.read(max(CHUNK, total))
            buf = buf[pos:] + chunk
            base += pos
            pos = 0
            eof = not chunk
        if len(buf) - pos < total:
            raise CutOffError(path, base + pos)
        if u32(buf, pos + total - 4)[0] != total:
            raise CaptureError(
                f"{path}: corrupt block at byte {base + pos}: trailing length differs"
            )
        at = base + pos
        body = pos + 8
        end = pos + total - 4
        if btype == EPB:
            if end - body < 20:
                raise CaptureError(f"{path}: enhanced packet block too short at byte {at}")
            iface, hi, lo, caplen = struct.unpack_from(endian + "IIII", buf, body)
            if caplen > end - body - 20:
                raise CaptureError(f"{path}: packet longer than its block at byte {at}")
            last_time = _time(interfaces, iface, (hi << 32) | lo, path, at)
            counter[0] += 1
            if not prefilter or maybe_candidate(buf, body + 20, caplen):
                yield Frame(last_time, buf[body + 20 : body + 20 + caplen])
        elif btype == SPB:
            if end - body < 4:
                raise CaptureError(f"{path}: simple packet block too short at byte {at}")
            _time(interfaces, 0, 0, path, at)  # checks interface 0 exists and is Ethernet
            length = min(u32(buf, body)[0], end - body - 4)
            counter[0] += 1
            if not prefilter or maybe_candidate(buf, body + 4, length):
                yield Frame(last_time, buf[body + 4 : body + 4 + length])
        elif btype == OPB:
            if end - body < 20:
                raise CaptureError(f"{path}: packet block too short at byte {at}")
            iface = struct.unpack_from(endian + "H", buf, body)[0]
            hi, lo, caplen = struct.unpack_from(endian + "III", buf, body + 4)
            if caplen > end - body - 20:
                raise CaptureError(f"{path}: packet longer than its block at byte {at}")
            last_time = _time(interfaces, iface, (hi << 32) | lo, path, at)
            counter[0] += 1
            yield Frame(last_time, buf[body + 20 : body + 20 + caplen])
        elif btype == IDB:
            if len(interfaces) >= MAX_INTERFACES:
                raise CaptureError(
                    f"{path}: more than {MAX_INTERFACES} interfaces in one section (interface "
                    f"description block at byte {at})"
                )
            interfaces.append(_interface(buf, body, end, endian, path, at))
        # Any other block (name resolution, statistics, custom) carries no frames.
        pos += total


def _interface(buf: bytes, body: int, end: int, endian: str, path: Path, at: int) -> Interface:
    if end - body < 8:
        raise CaptureError(f"{path}: interface description block too short at byte {at}")
    linktype = struct.unpack_from(endian + "H", buf, body)[0]
    units = 1_000_000
    binary = False
    offset = 0
    p = body + 8
    while p + 4 <= end:
        code, length = struct.unpack_from(endian + "HH", buf, p)
        if code == OPT_END:
            break
        if p + 4 + length > end:
            raise CaptureError(f"{path}: interface option overruns its block at byte {at}")
        if code == OPT_IF_TSRESOL and length >= 1:
            res = buf[p + 4]
            exponent = res & 0x7F
            if exponent > 60:
                raise CaptureError(f"{path}: unusable if_tsresol {res} at byte {p + 4 - body + at}")
            binary = bool(res & 0x80)
            units = 2**exponent if binary else 10**exponent
        elif code == OPT_IF_TSOFFSET and length >= 8:
            offset = struct.unpack_from(endian + "q", buf, p + 4)[0]
        p += 4 + ((length + 3) & ~3)
    return Interface(linktype, units, offset, binary)


def _time(interfaces: list[Interface], index: int, ticks: int, path: Path, at: int) -> float:
    if index >= len(interfaces):
        raise CaptureError(
            f"{path}: packet at byte {at} names interface {index}, which is not described"
        )
    iface = interfaces[index]
    if iface.linktype != LINKTYPE_ETHERNET:
        raise CaptureError(
            f"{path}: interface {index} has link type {iface.linktype}, not Ethernet (1) "
            f"(packet at byte {at}); capture on an Ethernet or Wi-Fi interface, not 'any'"
        )
    seconds, rest = divmod(ticks, iface.units)
    seconds += iface.offset  # integers: no overflow, and the range check below is exact
    if not MIN_SECONDS <= seconds < MAX_SECONDS:
        raise CaptureError(
            f"{path}: packet at byte {at} has a time of {seconds} s since 1970 (interface "
            f"{index}, if_tsoffset {iface.offset} s), outside 1970 to 9998"
        )
    # The fraction in whole nanoseconds, computed as libpcap computes it (sf-pcapng.c,
    # pcap_ng_next_packet, asked for nanoseconds): cut below a nanosecond, and for a power-of-2
    # resolution multiplied by 10^9 in 64 bits first, which wraps for resolutions finer than
    # 2^-34 s (no real capture has one). So both readers give the same float for every file,
    # even a hostile one (issue 16: results identical with and without libpcap).
    units = iface.units
    if iface.binary:
        nanoseconds = ((rest * NS_PER_SECOND) & UINT64) // units
    elif units > NS_PER_SECOND:
        nanoseconds = rest // (units // NS_PER_SECOND)
    else:
        nanoseconds = rest * (NS_PER_SECOND // units)
    return seconds + nanoseconds / NS_PER_SECOND
