"""Issue 13, holes 6 and 7: capture times out of range and interfaces without bound.

An unrepresentable time is a CaptureError naming its byte offset (pcapng, also through
`if_tsoffset`); a classic pcap cannot hold one (32-bit seconds end in 2106). A section may describe
at most MAX_INTERFACES interfaces. A property test feeds the pcapng reader arbitrary timestamps and
options: only CaptureError may escape, and every frame it yields has a time `datetime` can hold.
"""

from __future__ import annotations

import struct
from datetime import UTC, datetime
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from dashkanban.capture import open_capture
from dashkanban.capture.bpf import candidate_program
from dashkanban.capture.pcapng import MAX_INTERFACES, MAX_SECONDS
from dashkanban.errors import CaptureError
from tests import forge
from tests.file_readers import use_reader

ARP = forge.arp_frame(1, "ac:63:be:12:34:56", "0.0.0.0", "192.168.10.51")
HEADER = forge.pcapng_header()
HEADER_BYTES = len(HEADER)


def _block(btype: int, body: bytes) -> bytes:
    body += b"\x00" * (-len(body) % 4)
    total = len(body) + 12
    return struct.pack("<II", btype, total) + body + struct.pack("<I", total)


def _idb(options: bytes = b"") -> bytes:
    return _block(1, struct.pack("<HHI", 1, 0, 262144) + options)


def _option(code: int, value: bytes) -> bytes:
    return struct.pack("<HH", code, len(value)) + value + b"\x00" * (-len(value) % 4)


def _epb(interface: int, ticks: int, data: bytes = ARP) -> bytes:
    return _block(6, struct.pack("<IIIII", interface, ticks >> 32, ticks & 0xFFFFFFFF, len(data),
                                 len(data)) + data)


def _read(path: Path) -> list[float]:
    return [frame.timestamp for frame in open_capture(path)]


def test_a_time_beyond_year_9998_is_a_capture_error_with_its_offset(tmp_path: Path) -> None:
    path = tmp_path / "far.pcapng"
    idb = _idb()
    # 2^64 - 1 microseconds: year 586524, what `datetime` refused with a ValueError.
    path.write_bytes(HEADER + idb + _epb(0, 1_000_000) + _epb(0, 2**64 - 1))
    at = HEADER_BYTES + len(idb) + len(_epb(0, 1_000_000))
    with pytest.raises(CaptureError) as info:
        _read(path)
    assert str(info.value) == (
        f"{path}: packet at byte {at} has a time of 18446744073709 s since 1970 (interface 0, "
        "if_tsoffset 0 s), outside 1970 to 9998"
    )


@pytest.mark.parametrize(
    ("offset", "shown"),
    [(2**63 - 1, 9223372036854775808), (-(2**63), -9223372036854775807)],
    ids=["huge", "hugely negative"],
)
def test_a_huge_if_tsoffset_is_a_capture_error_with_its_offset(
    tmp_path: Path, offset: int, shown: int
) -> None:
    path = tmp_path / "offset.pcapng"
    idb = _idb(_option(14, struct.pack("<q", offset)))
    path.write_bytes(HEADER + idb + _epb(0, 1_000_000))
    with pytest.raises(CaptureError) as info:
        _read(path)
    assert str(info.value) == (
        f"{path}: packet at byte {HEADER_BYTES + len(idb)} has a time of {shown} s since 1970 "
        f"(interface 0, if_tsoffset {offset} s), outside 1970 to 9998"
    )


def test_the_last_representable_second_is_read(tmp_path: Path) -> None:
    path = tmp_path / "edge.pcapng"
    offset = _idb(_option(14, struct.pack("<q", MAX_SECONDS - 2)))
    path.write_bytes(HEADER + offset + _epb(0, 1_500_000))
    (time,) = _read(path)
    assert datetime.fromtimestamp(time, UTC) == datetime(9998, 12, 31, 23, 59, 59, 500000,
                                                         tzinfo=UTC)


def test_a_classic_pcap_time_is_always_representable(tmp_path: Path) -> None:
    """32-bit seconds and fraction at their largest: 2106, nothing to refuse."""
    for nanoseconds in (False, True):
        path = tmp_path / f"max-{nanoseconds}.pcap"
        magic = 0xA1B23C4D if nanoseconds else 0xA1B2C3D4
        path.write_bytes(
            struct.pack("<IHHiIII", magic, 2, 4, 0, 0, 262144, 1)
            + struct.pack("<IIII", 0xFFFFFFFF, 0xFFFFFFFF, len(ARP), len(ARP)) + ARP
        )
        (time,) = _read(path)
        assert datetime.fromtimestamp(time, UTC).year == 2106


def test_the_interfaces_of_a_section_are_bounded(tmp_path: Path) -> None:
    """4,000,000 IDBs held 300 MB; the reader now stops at the first one over the bound."""
    idb = _idb()
    path = tmp_path / "idbs.pcapng"
    path.write_bytes(HEADER + idb * (MAX_INTERFACES + 1000) + _epb(0, 1_000_000))
    with pytest.raises(CaptureError) as info:
        _read(path)
    assert str(info.value) == (
        f"{path}: more than {MAX_INTERFACES} interfaces in one section (interface description "
        f"block at byte {HEADER_BYTES + MAX_INTERFACES * len(idb)})"
    )


def test_a_new_section_starts_the_count_again(tmp_path: Path) -> None:
    idb = _idb()
    section = HEADER + idb * MAX_INTERFACES + _epb(MAX_INTERFACES - 1, 1_000_000)
    path = tmp_path / "sections.pcapng"
    path.write_bytes(section * 3)
    assert _read(path) == [1.0, 1.0, 1.0]


def _options() -> st.SearchStrategy[bytes]:
    tsresol = st.integers(0, 255).map(lambda r: _option(9, bytes((r,))))
    tsoffset = st.integers(-(2**63), 2**63 - 1).map(lambda o: _option(14, struct.pack("<q", o)))
    other = st.tuples(st.integers(1, 20), st.binary(max_size=12)).map(lambda o: _option(*o))
    raw = st.binary(max_size=12)  # not even an option
    return st.lists(st.one_of(tsresol, tsoffset, other, raw), max_size=4).map(b"".join)


@settings(max_examples=300, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    interfaces=st.lists(_options(), min_size=0, max_size=3),
    packets=st.lists(st.tuples(st.integers(0, 3), st.integers(0, 2**64 - 1)), max_size=6),
)
def test_pcapng_reader_lets_only_capture_errors_escape(
    tmp_path: Path, interfaces: list[bytes], packets: list[tuple[int, int]]
) -> None:
    path = tmp_path / "fuzz.pcapng"
    blocks = [HEADER, *(_idb(options) for options in interfaces)]
    blocks += [_epb(interface, ticks) for interface, ticks in packets]
    path.write_bytes(b"".join(blocks))
    try:
        times = _read(path)
    except CaptureError:
        return
    for time in times:  # what the pipeline does with each: it must hold
        datetime.fromtimestamp(time, UTC)


@pytest.mark.parametrize("reader", ["libpcap", "pure"])
def test_replay_reading_with_a_filter_refuses_the_same_times(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, reader: str
) -> None:
    """Replay reads through libpcap with the project's filter: libpcap hands over any time, so
    the pure reader takes over at that packet and refuses it with the same message."""
    use_reader(reader, monkeypatch)
    path = tmp_path / "far.pcapng"
    idb = _idb()
    path.write_bytes(HEADER + idb + _epb(0, 1_000_000) + _epb(0, 2**64 - 1))
    at = HEADER_BYTES + len(idb) + len(_epb(0, 1_000_000))
    capture = open_capture(path, program=candidate_program(("arp", "dhcp", "ndp")))
    frames: list[float] = []
    with pytest.raises(CaptureError) as info:
        frames.extend(frame.timestamp for frame in capture)
    assert frames == [1.0]
    assert str(info.value) == (
        f"{path}: packet at byte {at} has a time of 18446744073709 s since 1970 (interface 0, "
        "if_tsoffset 0 s), outside 1970 to 9998"
    )
