"""Capture files through libpcap (ctypes), filtered in C by the project's own BPF program.

`pcap_open_offline` + `pcap_setfilter` with a `struct bpf_program` built from capture/bpf.py's
instructions (not compiled from a filter expression, so no `libpcap-dev` and no `tcpdump`), then
`pcap_next_ex`: only the records the program passes ever become Python objects. Debian's
`libpcap0.8` package ships the library as `libpcap.so.0.8`; scapy binds it the same way.

libpcap does not count the records its filter skips, so a file read here knows how many frames
passed, not how many were read. On any error libpcap reports part-way (a cut-off or corrupt
record, a second pcapng section it does not take), the caller continues with the pure reader,
whose messages and byte offsets are the project's.
"""

from __future__ import annotations

import ctypes
import logging
from collections.abc import Iterator
from pathlib import Path

from dashkanban.capture.bpf import Program
from dashkanban.capture.frame import LINKTYPE_ETHERNET, Frame

log = logging.getLogger(__name__)

NAMES = ("libpcap.so.0.8", "libpcap.so.1")
PCAP_ERRBUF_SIZE = 256
PCAP_TSTAMP_PRECISION_MICRO = 0
PCAP_TSTAMP_PRECISION_NANO = 1


class _Insn(ctypes.Structure):
    _fields_ = (
        ("code", ctypes.c_ushort),
        ("jt", ctypes.c_ubyte),
        ("jf", ctypes.c_ubyte),
        ("k", ctypes.c_uint32),
    )


class _Program(ctypes.Structure):
    _fields_ = (("bf_len", ctypes.c_uint), ("bf_insns", ctypes.POINTER(_Insn)))


class _Header(ctypes.Structure):  # struct pcap_pkthdr: a struct timeval, then two lengths
    _fields_ = (
        ("sec", ctypes.c_long),
        ("frac", ctypes.c_long),  # microseconds, or nanoseconds when opened with NANO
        ("caplen", ctypes.c_uint32),
        ("len", ctypes.c_uint32),
    )


class UnavailableError(Exception):
    """libpcap cannot read this file (or is not installed); the reason is the message."""


_library: ctypes.CDLL | None = None
_missing: str | None = None


def library() -> ctypes.CDLL:
    """libpcap, loaded once; UnavailableError when it is not installed."""
    global _library, _missing
    if _library is not None:
        return _library
    if _missing is not None:
        raise UnavailableError(_missing)
    if _pointer_bytes() != 8:
        # 32-bit Debian trixie / Raspberry Pi OS build libpcap0.8t64 with a 64-bit time_t:
        # `struct pcap_pkthdr` is then 24 bytes with two 64-bit time fields, where c_long reads
        # two 32-bit ones (caplen from the wrong word). Which one a library has cannot be asked
        # at run time, so a 32-bit build uses the pure reader (same frames, slower).
        _missing = ("a 32-bit build: the packet header's layout depends on how libpcap was "
                    "built")
        raise UnavailableError(_missing)
    for name in (*NAMES, None):
        if name is None:
            from ctypes.util import find_library  # only now: it imports subprocess

            name = find_library("pcap")
            if name is None or name in NAMES:
                break
        try:
            lib = ctypes.CDLL(name)
        except OSError:
            continue
        if not hasattr(lib, "pcap_open_offline_with_tstamp_precision"):
            continue  # libpcap before 1.5
        _declare(lib)
        _library = lib
        return lib
    _missing = f"libpcap is not installed ({' or '.join(NAMES)}; Debian: libpcap0.8)"
    raise UnavailableError(_missing)


def _pointer_bytes() -> int:
    return ctypes.sizeof(ctypes.c_void_p)


def _declare(lib: ctypes.CDLL) -> None:
    handle = ctypes.c_void_p
    lib.pcap_open_offline_with_tstamp_precision.argtypes = (
        ctypes.c_char_p, ctypes.c_uint, ctypes.c_char_p)
    lib.pcap_open_offline_with_tstamp_precision.restype = handle
    lib.pcap_datalink.argtypes = (handle,)
    lib.pcap_datalink.restype = ctypes.c_int
    lib.pcap_setfilter.argtypes = (handle, ctypes.POINTER(_Program))
    lib.pcap_setfilter.restype = ctypes.c_int
    lib.pcap_next_ex.argtypes = (
        handle, ctypes.POINTER(ctypes.POINTER(_Header)), ctypes.POINTER(ctypes.c_void_p))
    lib.pcap_next_ex.restype = ctypes.c_int
    lib.pcap_geterr.argtypes = (handle,)
    lib.pcap_geterr.restype = ctypes.c_char_p
    lib.pcap_close.argtypes = (handle,)
    lib.pcap_close.restype = None
    lib.pcap_fopen_offline_with_tstamp_precision.argtypes = (
        ctypes.c_void_p, ctypes.c_uint, ctypes.c_char_p)
    lib.pcap_fopen_offline_with_tstamp_precision.restype = handle


_libc: ctypes.CDLL | None = None


def libc() -> ctypes.CDLL:
    """The C library's stdio, for the FILE objects capture/split.py hands to libpcap."""
    global _libc
    if _libc is None:
        c = ctypes.CDLL(None)  # the process's own symbols: the C library Python runs on
        if not hasattr(c, "fopencookie"):
            raise UnavailableError("the C library has no fopencookie")
        c.fopencookie.argtypes = (ctypes.c_void_p, ctypes.c_char_p, CookieFunctions)
        c.fopencookie.restype = ctypes.c_void_p
        c.fdopen.argtypes = (ctypes.c_int, ctypes.c_char_p)
        c.fdopen.restype = ctypes.c_void_p
        c.setvbuf.argtypes = (ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int, ctypes.c_size_t)
        c.setvbuf.restype = ctypes.c_int
        # fseeko64: a 64-bit offset also where off_t is 32 bits (32-bit Raspberry Pi OS)
        seek = c.fseeko64 if hasattr(c, "fseeko64") else c.fseeko
        seek.argtypes = (ctypes.c_void_p, ctypes.c_int64, ctypes.c_int)
        seek.restype = ctypes.c_int
        setattr(c, "seek64", seek)  # noqa: B010 (CDLL attributes are its symbols)
        c.fclose.argtypes = (ctypes.c_void_p,)
        c.fclose.restype = ctypes.c_int
        _libc = c
    return _libc


# ssize_t read(void *cookie, char *buf, size_t size), as fopencookie calls it
COOKIE_READ = ctypes.CFUNCTYPE(ctypes.c_ssize_t, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_size_t)


class CookieFunctions(ctypes.Structure):  # cookie_io_functions_t: only `read` is set
    _fields_ = (
        ("read", COOKIE_READ),
        ("write", ctypes.c_void_p),
        ("seek", ctypes.c_void_p),
        ("close", ctypes.c_void_p),
    )


class Reader:
    """One file opened in libpcap with `program` set as its filter. `frames()` yields what
    passes; `failure` is libpcap's message when it stopped before the end of the file."""

    def __init__(self, path: Path, program: Program, pcapng: bool, nanoseconds: bool,
                 file: int | None = None) -> None:
        """`file`: a stdio `FILE *` to read instead of opening `path` (capture/split.py); the
        Reader owns it from here on (pcap_close closes it), also when this raises."""
        self._handle: int | None = None
        try:
            lib = library()
            self._lib = lib
            # Timestamps are made exactly as the pure readers make them, so both give equal
            # floats: pcap: sec + frac * 1e-6 (or 1e-9); pcapng: sec + ns / 1e9 (= ticks / units,
            # correctly rounded both ways).
            nano = pcapng or nanoseconds
            errbuf = ctypes.create_string_buffer(PCAP_ERRBUF_SIZE)
            precision = PCAP_TSTAMP_PRECISION_NANO if nano else PCAP_TSTAMP_PRECISION_MICRO
            if file is None:
                handle = lib.pcap_open_offline_with_tstamp_precision(bytes(path), precision,
                                                                     errbuf)
            else:
                handle = lib.pcap_fopen_offline_with_tstamp_precision(file, precision, errbuf)
            if not handle:
                raise UnavailableError(errbuf.value.decode("utf-8", "replace"))
            self._handle = handle  # from here pcap_close closes `file`
            linktype = lib.pcap_datalink(handle)
            if linktype != LINKTYPE_ETHERNET:
                raise UnavailableError(f"link type {linktype}")
            insns = (_Insn * len(program.instructions))(
                *(_Insn(*i) for i in program.instructions))
            fprog = _Program(len(program.instructions), insns)
            if lib.pcap_setfilter(handle, ctypes.byref(fprog)) != 0:
                raise UnavailableError(f"pcap_setfilter: {self._error()}")
        except BaseException:
            # Whatever stops it (libpcap missing, a bad program, Ctrl-C): nothing left open.
            if self._handle is not None:
                self.close()
            elif file is not None:
                libc().fclose(file)
            raise
        self._pcapng = pcapng
        self._scale = 1e-9 if nano else 1e-6
        self.failure: str | None = None

    def _error(self) -> str:
        raw = self._lib.pcap_geterr(self._handle)
        return raw.decode("utf-8", "replace") if raw else "unknown error"

    def frames(self) -> Iterator[Frame]:
        handle = self._handle
        if handle is None:
            return
        next_ex = self._lib.pcap_next_ex
        header = ctypes.POINTER(_Header)()
        data = ctypes.c_void_p()
        header_ref = ctypes.byref(header)
        data_ref = ctypes.byref(data)
        string_at = ctypes.string_at
        pcapng = self._pcapng
        scale = self._scale
        low = high = 0
        if pcapng:  # pcapng.py's time bounds: a pcap file's replay does not import that reader
            from dashkanban.capture.pcapng import MAX_SECONDS, MIN_SECONDS

            low, high = MIN_SECONDS, MAX_SECONDS
        while True:
            status = next_ex(handle, header_ref, data_ref)
            if status != 1:
                if status == -1:
                    self.failure = self._error()
                return  # -2: end of file
            h = header.contents
            if pcapng and h.sec == 0 and h.frac == 0:
                # A simple packet block has no time; the pure reader gives it the previous
                # packet's, which may be one libpcap's filter skipped: let it go on from here.
                self.failure = "a packet without a timestamp (simple packet block)"
                return
            if pcapng and not low <= h.sec < high:
                # A time `datetime` cannot hold (a hostile timestamp or if_tsoffset): the pure
                # reader goes on from here and refuses it with its byte offset (issue 13).
                self.failure = f"a packet time of {h.sec} s since 1970"
                return
            # A pcap record's two time fields are unsigned 32 bits; libpcap sign-extends them.
            timestamp = (h.sec + h.frac / 1e9 if pcapng
                         else (h.sec & 0xFFFFFFFF) + (h.frac & 0xFFFFFFFF) * scale)
            yield Frame(timestamp, string_at(data.value, h.caplen) if data.value else b"")

    def close(self) -> None:
        if self._handle is not None:
            self._lib.pcap_close(self._handle)
            self._handle = None

    def __del__(self) -> None:
        # A Reader lost without close(): a signal handler's exception (Ctrl-C) raised between
        # its constructor's return and the assignment of the result (capture/split.py).
        if getattr(self, "_handle", None) is not None:
            self.close()
