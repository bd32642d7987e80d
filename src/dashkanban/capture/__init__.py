"""Frame sources: capture files (pcap, pcapng) and live raw sockets.

Every source yields `Frame` values; `open_capture` picks the file reader by the file's magic number.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import NamedTuple

from dashkanban.errors import CaptureError

LINKTYPE_ETHERNET = 1
CHUNK = 1 << 20  # file read size: large enough to amortise the read, small enough to stay flat
MAX_FRAME = 1 << 18  # 262144, libpcap's largest snapshot length; a bigger record is corruption


class Frame(NamedTuple):
    """One captured Ethernet frame.

    A NamedTuple rather than a dataclass: a reader makes one per packet, millions per file, and a
    tuple is built several times faster than a frozen dataclass while staying immutable and typed.
    """

    timestamp: float  # epoch seconds
    data: bytes  # the frame from the destination MAC on (FCS not included)
    vlan: int | None = None  # a VLAN id the kernel stripped into metadata (live capture only)


PCAP_MAGICS = frozenset(
    (b"\xd4\xc3\xb2\xa1", b"\xa1\xb2\xc3\xd4", b"\x4d\x3c\xb2\xa1", b"\xa1\xb2\x3c\x4d")
)
PCAPNG_MAGIC = b"\x0a\x0d\x0d\x0a"


def open_capture(path: Path) -> Iterator[Frame]:
    """Stream the frames of a pcap or pcapng file; the format is told by its first four bytes.

    Raises CaptureError (with the byte offset where it applies) for a missing, unreadable,
    unknown, corrupt or non-Ethernet file. Frames before a corrupt spot are yielded first.
    """
    from dashkanban.capture import pcap, pcapng

    try:
        with path.open("rb") as probe:
            magic = probe.read(4)
    except FileNotFoundError:
        raise CaptureError(f"{path}: no such capture file") from None
    except IsADirectoryError:
        raise CaptureError(f"{path}: is a folder, not a capture file") from None
    except OSError as exc:
        raise CaptureError(f"{path}: cannot read: {exc.strerror}") from None
    if magic in PCAP_MAGICS:
        return pcap.read_pcap(path)
    if magic == PCAPNG_MAGIC:
        return pcapng.read_pcapng(path)
    if len(magic) < 4:
        raise CaptureError(f"{path}: too short to be a capture file ({len(magic)} bytes)")
    raise CaptureError(
        f"{path}: not a pcap or pcapng file (starts with {magic.hex()}; at byte 0)"
    )
