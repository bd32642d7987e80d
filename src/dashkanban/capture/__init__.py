"""Frame sources: capture files (pcap, pcapng) and live raw sockets.

Every source yields `Frame` values; `open_capture` picks the file reader by the file's magic number.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING

from dashkanban.capture.frame import (
    CHUNK,
    LINKTYPE_ETHERNET,
    MAX_FRAME,
    NANOSECONDS,
    PCAP_MAGICS,
    CutOffError,
    Frame,
    maybe_candidate,
)
from dashkanban.errors import CaptureError, ConfigError

if TYPE_CHECKING:
    from dashkanban.capture.bpf import Program
    from dashkanban.capture.split import Halves

log = logging.getLogger(__name__)

PCAPNG_MAGIC = b"\x0a\x0d\x0d\x0a"


class CaptureFile:
    """The frames of a capture file, streamed; `frames_read` counts every frame read so far.

    With `prefilter`, frames that cannot be a sighting (TCP, UDP to other ports than 67, IPv6
    other than ICMPv6, other EtherTypes) are skipped inside the reader's loop and never become a
    `Frame`: the file-replay equivalent of the live kernel filter, and where replay's speed comes
    from. Every frame the decoder could count as a candidate or as malformed still comes through.

    With `program` (capture/bpf.py), only the frames it passes come through: filtered in C by
    libpcap when it is installed (`libpcap`), else by the pure reader and bpf.run, with the same
    frames either way. libpcap does not count what its filter skips: `read_summary` says what
    was counted.
    """

    __slots__ = ("_libpcap", "_reader", "cut_off", "frames_read", "in_libpcap", "passed", "path",
                 "prefilter", "program", "split_min", "split_queue")

    def __init__(
        self,
        path: Path,
        reader: Callable[[CaptureFile], Iterator[Frame]],
        prefilter: bool = False,
        program: Program | None = None,
        libpcap: bool = False,
        split_min: int | None = None,
        split_queue: int | None = None,
    ) -> None:
        self.path = path
        # Two halves on two threads from this size (bytes; None: split.SPLIT_MIN_BYTES), with
        # at most split_queue bytes of the second half's frames held (None: split.QUEUE_BYTES).
        self.split_min = split_min
        self.split_queue = split_queue
        self.prefilter = prefilter
        self.frames_read = 0
        self.cut_off: int | None = None  # the byte where a cut-off file ends inside a record
        self._reader = reader
        self.program = program
        self.passed = 0  # frames the program passed
        self.in_libpcap = False  # read (to the end) by libpcap: frames_read is not known
        self._libpcap = libpcap

    def __iter__(self) -> Iterator[Frame]:
        try:
            if self.program is None:
                yield from self._reader(self)
            else:
                yield from self._filtered(self.program)
        except CutOffError as exc:
            # Every frame before the cut has been yielded; the caller warns (docs/capture.md).
            self.cut_off = exc.offset

    def _filtered(self, program: Program) -> Iterator[Frame]:
        skip = 0
        if self._libpcap:
            from dashkanban.capture import libpcap

            try:
                magic = _magic(self.path)
                pcapng = magic == PCAPNG_MAGIC
                nanoseconds = magic in PCAP_MAGICS and PCAP_MAGICS[magic][1] == NANOSECONDS
                halves = None if pcapng else self._halves(program, nanoseconds)
                reader = None if halves else libpcap.Reader(self.path, program, pcapng,
                                                             nanoseconds)
            except (libpcap.UnavailableError, OSError) as exc:  # OSError: the pure reader says
                log.debug("%s: not read with libpcap (%s): the pure reader filters it",
                          self.path, exc)
            else:
                self.in_libpcap = True
                if halves is not None:
                    try:
                        for frame in halves.frames():
                            self.passed += 1
                            yield frame
                    finally:
                        halves.close()
                    if halves.failure is None:
                        return
                    skip = self.passed
                    if halves.failed == "second":
                        # A ended cleanly at a record boundary and libpcap stopped in B: it
                        # would stop at the same record in one thread, which then hands over
                        # to the pure reader, as here, without reading the file a third time.
                        log.debug("%s: libpcap stopped after %d frames (%s): the pure reader "
                                  "goes on", self.path, self.passed, halves.failure)
                    else:
                        # Read again in one (frames already yielded are skipped): any fault,
                        # and its message, is then exactly what the one-thread path finds.
                        log.debug("%s: the two halves stopped after %d frames (%s): read in one",
                                  self.path, self.passed, halves.failure)
                        try:
                            reader = libpcap.Reader(self.path, program, pcapng, nanoseconds)
                        except (libpcap.UnavailableError, OSError) as exc:
                            log.debug("%s: not read again with libpcap (%s)", self.path, exc)
                if reader is not None:
                    try:
                        for frame in reader.frames():
                            if skip:
                                skip -= 1
                                continue
                            self.passed += 1
                            yield frame
                    finally:
                        reader.close()
                    if reader.failure is None:
                        return
                    # The pure reader goes on from there, and reports the problem in its words.
                    log.debug("%s: libpcap stopped after %d frames (%s): the pure reader goes on",
                              self.path, self.passed, reader.failure)
                self.in_libpcap = False
                skip = self.passed
        from dashkanban.capture.bpf import run

        instructions = program.instructions
        for frame in self._reader(self):
            snap = run(instructions, frame.data)
            if not snap:
                continue
            if skip:
                skip -= 1
                continue
            if snap < len(frame.data):
                frame = frame._replace(data=frame.data[:snap])
            self.passed += 1
            yield frame

    def _halves(self, program: Program, nanoseconds: bool) -> Halves | None:
        """A big classic pcap file in two halves on two threads (capture/split.py)."""
        from dashkanban.capture import split

        return split.open_halves(
            self.path, program, nanoseconds,
            min_bytes=split.SPLIT_MIN_BYTES if self.split_min is None else self.split_min,
            queue_bytes=split.QUEUE_BYTES if self.split_queue is None else self.split_queue)

    def read_summary(self) -> str:
        """What was read, as the summary line starts: "1211 packets read", and with a program
        how many it passed (with libpcap only that: it does not count what it skips)."""
        if self.program is None:
            return f"{self.frames_read} packets read"
        what = self.program.describe()
        if self.in_libpcap:
            return f"{self.passed} packets passed {what} in libpcap"
        return f"{self.frames_read} packets read, {self.passed} passed {what}"


def _magic(path: Path) -> bytes:
    with path.open("rb") as f:
        return f.read(4)


def open_capture(
    path: Path,
    *,
    prefilter: bool = False,
    program: Program | None = None,
    libpcap: bool = True,
    split_min: int | None = None,
    split_queue: int | None = None,
) -> CaptureFile:
    """Stream the frames of a pcap or pcapng file; the format is told by its first four bytes.

    With `program`, only the frames it passes (see CaptureFile); `libpcap = False` forces the
    pure reader. A classic pcap file of at least `split_min` bytes is read by libpcap in two
    halves on two threads (capture/split.py; None: its SPLIT_MIN_BYTES, 64 MiB), with the same
    frames; `split_queue` bounds the second half's frames held meanwhile (tests make it tiny).

    Raises CaptureError (with the byte offset where it applies) for a missing, unreadable,
    unknown, corrupt or non-Ethernet file. Frames before a corrupt spot are yielded first.
    """
    try:
        with path.open("rb") as probe:
            magic = probe.read(4)
    except FileNotFoundError:
        # A wrong argument, like any usage error: exit code 2.
        raise ConfigError("no such capture file", path) from None
    except IsADirectoryError:
        raise ConfigError("is a folder, not a capture file", path) from None
    except OSError as exc:
        raise CaptureError(f"{path}: cannot read: {exc.strerror}") from None
    if program is not None:
        prefilter = True  # it passes a superset of what any program passes: only faster
    # Only the reader of the file's format is imported: a replay's start-up is part of its time.
    if magic in PCAP_MAGICS:
        from dashkanban.capture import pcap

        return CaptureFile(path, pcap.read_pcap, prefilter, program, libpcap, split_min,
                           split_queue)
    if magic == PCAPNG_MAGIC:
        from dashkanban.capture import pcapng

        return CaptureFile(path, pcapng.read_pcapng, prefilter, program, libpcap)
    if len(magic) < 4:
        raise CaptureError(f"{path}: too short to be a capture file ({len(magic)} bytes)")
    raise CaptureError(
        f"{path}: not a pcap or pcapng file (starts with {magic.hex()}; at byte 0)"
    )


__all__ = [
    "CHUNK",
    "LINKTYPE_ETHERNET",
    "MAX_FRAME",
    "CaptureFile",
    "CutOffError",
    "Frame",
    "maybe_candidate",
    "open_capture",
]
