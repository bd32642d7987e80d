"""What every frame source yields (`Frame`) and the rules the file readers share: the cut-off
error, the size limits and the candidate pre-filter.

Apart from the package's `open_capture` so that the readers (pcap.py, pcapng.py, libpcap.py) and
live capture depend only on this module, not on the dispatcher that picks them.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Final, Literal, NamedTuple

from dashkanban.errors import CaptureError


class CutOffError(CaptureError):
    """The file ends inside its last record (an interrupted tcpdump, a full disk): a reader
    raises it, and `CaptureFile` turns it into `cut_off` (a warning, docs/capture.md)."""

    def __init__(self, path: Path, offset: int) -> None:
        super().__init__(f"{path}: ends inside a record at byte {offset} (the capture was cut off)")
        self.offset = offset

LINKTYPE_ETHERNET = 1
CHUNK = 1 << 20  # file read size: large enough to amortise the read, small enough to stay flat
MAX_FRAME = 1 << 18  # 262144, libpcap's largest snapshot length; a bigger record is corruption
NANOSECONDS = 1_000_000_000
# A classic pcap file's first four bytes -> the byte order of its header fields and how many
# units of a second its records' sub-second field counts (draft-ietf-opsawg-pcap, "File
# Header": 0xA1B2C3D4 microseconds, 0xA1B23C4D nanoseconds, each in either byte order). The
# one table: the pure reader, open_capture's dispatch and the two-halves split all read it.
PCAP_MAGICS: Final[Mapping[bytes, tuple[Literal["<", ">"], int]]] = {
    b"\xd4\xc3\xb2\xa1": ("<", 1_000_000),
    b"\xa1\xb2\xc3\xd4": (">", 1_000_000),
    b"\x4d\x3c\xb2\xa1": ("<", NANOSECONDS),
    b"\xa1\xb2\x3c\x4d": (">", NANOSECONDS),
}


class Frame(NamedTuple):
    """One captured Ethernet frame.

    A NamedTuple rather than a dataclass: a reader makes one per packet, millions per file, and a
    tuple is built several times faster than a frozen dataclass while staying immutable and typed.
    """

    timestamp: float  # epoch seconds
    data: bytes  # the frame from the destination MAC on (FCS not included)
    vlan: int | None = None  # a VLAN id the kernel stripped into metadata (live capture only)


def maybe_candidate(buf: bytes, s: int, n: int) -> bool:
    """False only for a frame (at buf[s:s+n]) that the decoder would ignore without counting it.

    The readers inline this same test in their loops (a call per frame costs as much as the
    test); this function is its reference, and the tests hold the readers to it.
    """
    if n < 46:
        return True
    end = s + n
    ethertype = (buf[s + 12] << 8) | buf[s + 13]
    if ethertype == 0x8100:  # one 802.1Q tag: test what it carries
        s += 4
        ethertype = (buf[s + 12] << 8) | buf[s + 13]
    if ethertype == 0x0800:
        # IPv4 with a plain 20-byte header: only UDP to port 67 is worth a look
        return not (
            buf[s + 14] == 0x45
            and (buf[s + 23] != 17 or buf[s + 36] != 0 or buf[s + 37] != 67)
        )
    if ethertype == 0x86DD:
        return not (s + 54 <= end and buf[s + 20] != 58)
    return ethertype in (0x0806, 0x8100, 0x88A8, 0x9100)
