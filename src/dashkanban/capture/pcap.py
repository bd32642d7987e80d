"""Classic pcap files, streamed: both byte orders, micro- and nanosecond timestamps.

Format: https://www.ietf.org/archive/id/draft-ietf-opsawg-pcap-04.html. A 24-byte file header,
then records of a 16-byte header (seconds, fraction, captured length, original length) and data.
"""

from __future__ import annotations

import struct
import sys
from collections.abc import Iterator
from typing import TYPE_CHECKING, BinaryIO

from dashkanban.capture.frame import (
    CHUNK,
    LINKTYPE_ETHERNET,
    MAX_FRAME,
    PCAP_MAGICS,
    CutOffError,
    Frame,
)
from dashkanban.errors import CaptureError

if TYPE_CHECKING:
    from dashkanban.capture import CaptureFile

# EtherTypes (as read little-endian) the prefilter hands on to the decoder: ARP, IPv4 with
# options, 802.1Q (a second tag), 802.1ad, old QinQ.
_PASS = frozenset((0x0608, 0x0008, 0x0081, 0xA888, 0x0091))


def read_pcap(source: CaptureFile) -> Iterator[Frame]:
    """Yield the frames of a classic pcap file, reading it in chunks (memory stays flat)."""
    path = source.path
    with path.open("rb") as f:
        header = f.read(24)
        if len(header) < 24:
            raise CaptureError(f"{path}: pcap file header cut short at byte {len(header)}")
        if header[:4] not in PCAP_MAGICS:
            raise CaptureError(f"{path}: not a pcap file (bad magic at byte 0)")
        endian, units = PCAP_MAGICS[header[:4]]
        scale = 1 / units  # exactly 1e-6 or 1e-9 (a correctly rounded division)
        linktype = struct.unpack_from(endian + "I", header, 20)[0] & 0xFFFF
        if linktype != LINKTYPE_ETHERNET:
            raise CaptureError(
                f"{path}: link type {linktype} at byte 20 is not Ethernet (1); capture on an "
                "Ethernet or Wi-Fi interface, not 'any'"
            )
        yield from _records(f, source, endian, scale)


def _records(f: BinaryIO, source: CaptureFile, endian: str, scale: float) -> Iterator[Frame]:
    # The hot loop of a replay, run once per record of a file of millions: the record length is
    # read through memoryviews cast to native 32-bit integers (one at each of the four byte
    # alignments: an index instead of a struct call), and the test of capture.maybe_candidate
    # is inlined, so ordinary traffic never becomes a Python object.
    path = source.path
    prefilter = source.prefilter
    native = (endian == "<") == (sys.byteorder == "little")
    read = f.read
    unpack = struct.Struct(endian + "IIII").unpack_from
    length = struct.Struct(endian + "I").unpack_from
    le32 = struct.Struct("<I").unpack_from
    buf = b""
    pos = 0
    base = 24  # file offset of buf[0]
    count = 0
    try:
        while True:
            chunk = read(CHUNK)
            if not chunk:
                break
            buf = buf[pos:] + chunk
            base += pos
            pos = 0
            end = len(buf)
            limit = end - 16
            if native:
                whole = memoryview(buf)
                views = [whole[k : k + (end - k) // 4 * 4].cast("I") for k in range(4)]
            while pos <= limit:
                q = pos + 8
                incl = views[q & 3][q >> 2] if native else length(buf, q)[0]
                nxt = pos + 16 + incl
                if nxt > end or incl > MAX_FRAME:
                    if incl > MAX_FRAME:
                        raise CaptureError(
                            f"{path}: corrupt record at byte {base + pos}: captured length "
                            f"{incl} exceeds {MAX_FRAME}"
                        )
                    break
                count += 1
                if prefilter and incl >= 46:
                    # EtherType and the IPv4 version/length byte in one little-endian read.
                    s = pos + 16
                    r = pos + 28
                    w = (views[r & 3][r >> 2] if native else le32(buf, r)[0]) & 0xFFFFFF
                    if (w & 0xFFFF) == 0x0081:  # one 802.1Q tag: test what it carries
                        s += 4
                        r += 4
                        w = (views[r & 3][r >> 2] if native else le32(buf, r)[0]) & 0xFFFFFF
                    if w == 0x450008:  # IPv4, 20-byte header: only UDP to port 67 counts
                        if buf[s + 23] != 17 or buf[s + 36] != 0 or buf[s + 37] != 67:
                            pos = nxt
                            continue
                    elif (w & 0xFFFF) == 0xDD86:  # IPv6: only ICMPv6
                        if s + 54 <= nxt and buf[s + 20] != 58:
                            pos = nxt
                            continue
                    elif (w & 0xFFFF) not in _PASS:
                        pos = nxt
                        continue
                sec, frac, _incl, _orig = unpack(buf, pos)
                yield Frame(sec + frac * scale, buf[pos + 16 : nxt])
                pos = nxt
        if pos < len(buf):
            raise CutOffError(path, base + pos)
    finally:
        source.frames_read = count
